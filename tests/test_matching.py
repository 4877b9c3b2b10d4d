"""Supplier matching: each rule, ambiguity, the operator's choice stored as an alias and used afterwards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from gateway.integrations.plex.matching import (
    CUSTOMER, SUPPLIER, ChoiceError, MatchStep, choose_supplier, evidence, match,
)
from gateway.integrations.plex.suppliers import Counterparty, Snapshot, SupplierMaster, normalize_name
from gateway.integrations.plex.client import PlexClient, PlexConfig, SupplierMatching
from gateway.partners import load_partner_directory
from gateway.pipeline.machine import OutcomeKind, StageName, State, apply_outcome
from gateway.integrations.plex.simulator.app import PCN_MAIN, SIM_API_KEY, run_plex_sim
from gateway.store import Document, Event, Interchange, transaction, utcnow
from gateway.store.models import SourceStatus, Supplier, SupplierAlias
from translators.mapping import PartnerMapping

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = SupplierMatching()


@pytest.fixture(scope="module")
def partners():
    return load_partner_directory(ROOT / "partners")


def party(code: str, name: str, *, tax_id: str | None = None, old_code: str | None = None,
          kind: str = SUPPLIER) -> Counterparty:
    return Counterparty(code=code, name=name, normalized=normalize_name(name), plex_id=f"id-{code}",
                        old_code=old_code, tax_id=tax_id, status="Active", kind=kind)


SNAP = Snapshot([
    party("ACME01", "Acme Fasteners Inc.", tax_id="34-1234567"),
    party("EUROCOMP", "Europa Components GmbH", tax_id="DE811234567"),
    party("MIDPL1", "Midwest Plastics Inc"),
    party("MIDPL2", "Midwest Plastics, Inc."),  # the same company name twice: never auto-picked
    party("BORST", "Borealis Steel", tax_id="11-2223334", old_code="BOREALIS"),
    party("SHARE1", "Shared Tax One", tax_id="99-0000001"),
    party("SHARE2", "Shared Tax Two", tax_id="99-0000001"),
])


def doc(kind: str = "invoice", *, partner: str | None = None, sender: str | None = "SOMEONE",
        supplier: dict[str, Any] | None = None, buyer: dict[str, Any] | None = None, doc_id: int = 1) -> tuple:
    canonical = {"kind": kind, "parties": {"supplier": supplier, "buyer": buyer, "remit_to": None},
                 "invoice_number": "INV-1", "lines": []}
    return Document(id=doc_id, interchange_id=1, position=1, kind=kind, standard="x12", partner=partner,
                    sender_id=sender, canonical=json.dumps(canonical)), canonical


def run(d: Document, canonical: dict, partner: PartnerMapping | None = None, snap: Snapshot = SNAP,
        aliases: dict[str, str] | None = None, settings: SupplierMatching = SETTINGS):
    ev = evidence(d, canonical, partner)
    return ev, match(ev, snap, aliases or {}, settings)


# ------------------------------------------------------------------------------ each rule

def test_supplier_code_named_by_the_mapping_file_wins(partners):
    d, c = doc(partner="acme-fasteners", sender="ACMEFAST", supplier={"name": "Something Else Entirely"})
    _, res = run(d, c, partners.get("acme-fasteners"))
    assert (res.code, res.rule) == ("ACME01", "supplier_code")


def test_a_code_plex_lacks_falls_through_to_the_next_rules(partners):
    acme = partners.get("acme-fasteners").model_copy(
        update={"plex": partners.get("acme-fasteners").plex.model_copy(update={"supplier_code": "GONE99"})})
    d, c = doc(partner="acme-fasteners", sender="ACMEFAST", supplier={"name": "ACME FASTENERS INC"})
    _, res = run(d, c, acme)
    assert (res.code, res.rule) == ("ACME01", "name")
    # With the name unknown too, the person is told the mapping names a code Plex does not have.
    d, c = doc(partner="acme-fasteners", sender="ACMEFAST", supplier={"name": "Zzyzx Holdings"})
    acme_unnamed = acme.model_copy(update={"name": "Zzyzx Holdings"})
    _, res = run(d, c, acme_unnamed)
    assert res.code is None and "GONE99" in res.reason and res.error_code == "match.unmatched"


def test_edi_identifier_matches_a_supplier_code_or_old_code():
    d, c = doc(sender="X", supplier={"name": "nobody", "id": "acme01"})
    _, res = run(d, c)
    assert (res.code, res.rule) == ("ACME01", "edi_id")
    d, c = doc(sender="BOREALIS", supplier={"name": "nobody"})  # interchange sender = Plex old code
    _, res = run(d, c)
    assert (res.code, res.rule) == ("BORST", "edi_id")


def test_tax_id_is_compared_normalised():
    d, c = doc(supplier={"name": "Unknown Name", "tax_id": "de 811-234-567"})
    _, res = run(d, c)
    assert (res.code, res.rule) == ("EUROCOMP", "tax_id")


def test_name_above_the_threshold_matches_and_below_it_does_not():
    d, c = doc(supplier={"name": "EUROPA COMPONENTS GMBH"})
    _, res = run(d, c)
    assert (res.code, res.rule) == ("EUROCOMP", "name")
    d, c = doc(supplier={"name": "Europa Komponenten Handel"})
    _, res = run(d, c)
    assert res.code is None and res.error_code == "match.unmatched"
    assert res.candidates and res.candidates[0]["code"] == "EUROCOMP"  # offered, not chosen
    # The threshold is a setting: a loose one lets the same name through.
    _, res = run(d, c, settings=SupplierMatching(name_threshold=40))
    assert res.code == "EUROCOMP"


def test_rules_follow_the_partner_files_order(partners):
    acme = partners.get("acme-fasteners")
    by_name_only = acme.model_copy(update={"plex": acme.plex.model_copy(update={"match_by": ["name"]})})
    d, c = doc(partner="acme-fasteners", sender="ACMEFAST", supplier={"name": "Borealis Steel"})
    _, res = run(d, c, by_name_only)
    assert (res.code, res.rule) == ("BORST", "name")


# ------------------------------------------------------------------------------ ambiguity

def test_two_suppliers_with_the_same_name_are_never_auto_picked():
    d, c = doc(supplier={"name": "MIDWEST PLASTICS INC"})
    ev, res = run(d, c)
    assert res.code is None and res.error_code == "match.ambiguous"
    assert {x["code"] for x in res.candidates} >= {"MIDPL1", "MIDPL2"}
    out = res.outcome(ev)
    assert out.kind is OutcomeKind.ATTENTION
    stored = json.loads(out.changes["candidates"])
    assert {x["code"] for x in stored} >= {"MIDPL1", "MIDPL2"} and all(x["kind"] == SUPPLIER for x in stored)


def test_a_tax_id_two_suppliers_share_is_ambiguous():
    d, c = doc(supplier={"name": "nothing like it", "tax_id": "99-0000001"})
    _, res = run(d, c)
    assert res.code is None and res.error_code == "match.ambiguous"
    assert {x["code"] for x in res.candidates} >= {"SHARE1", "SHARE2"}


def test_customer_orders_are_matched_to_customers(partners):
    customers = Snapshot([party("NWRETAIL", "Northwind Retail Group", kind=CUSTOMER),
                          party("OTHER", "Other Buyer Corp", kind=CUSTOMER)])
    d, c = doc("purchase_order", partner="northwind-retail", sender="2065550147",
               buyer={"name": "NORTHWIND RETAIL GROUP", "id": "NW-HQ"})
    ev, res = run(d, c, partners.get("northwind-retail"), snap=customers)
    assert ev.role == CUSTOMER and (res.code, res.rule) == ("NWRETAIL", "name")


def test_an_alias_beats_every_rule():
    d, c = doc(sender="GLOBEXIND", supplier={"name": "ACME FASTENERS INC"})
    ev = evidence(d, c, None)
    res = match(ev, SNAP, {f"{SUPPLIER}:sender:GLOBEXIND": "BORST"}, SETTINGS)
    assert (res.code, res.rule) == ("BORST", "alias (sender)")


# ------------------------------------------------------------------------------ in the store

def _add_doc(engine, *, partner: str | None, sender: str, supplier_name: str, state: str = "translated",
             stage: str = "match") -> int:
    canonical = {"kind": "invoice", "invoice_number": "77-5510", "parties": {"supplier": {"name": supplier_name}}}
    with transaction(engine) as s:
        ich = Interchange(sha256=hashlib.sha256(sender.encode() + supplier_name.encode()).hexdigest(), size=1,
                          source="test")
        s.add(ich)
        s.flush()
        n = s.exec(select(Document).where(Document.interchange_id == ich.id)).all()
        d = Document(interchange_id=ich.id, position=len(n) + 1, partner=partner, kind="invoice", standard="x12",
                     sender_id=sender, state=state, stage=stage, canonical=json.dumps(canonical))
        s.add(d)
        s.flush()
        return d.id


def _suppliers_in_store(engine) -> None:
    now = utcnow()
    with transaction(engine) as s:
        for p in SNAP.parties:
            s.add(Supplier(code=p.code, plex_id=p.plex_id, name=p.name, normalized_name=p.normalized, tax_id=p.tax_id,
                           status="Active", refreshed_at=now))
        # A fresh poll on record, so the stage matches against the store without calling Plex.
        s.add(SourceStatus(source="plex:suppliers", last_success_at=now, last_poll_at=now))


class _NoPlex:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Plex was called ({name}) although the cache is fresh")


def _stage(engine, partners) -> MatchStep:
    master = SupplierMaster(engine, _NoPlex(), SETTINGS, owner="test")  # type: ignore[arg-type]
    return MatchStep(engine, master, SETTINGS, lambda: partners)


def _apply(engine, doc_id: int, stage: MatchStep) -> Document:
    with Session(engine, expire_on_commit=False) as s:  # stages run outside transactions, as in the worker
        d = s.get(Document, doc_id)
    out = stage([d])[doc_id]
    with transaction(engine) as s:
        d = s.get(Document, doc_id)
        s.add(apply_outcome(d, StageName.MATCH, out))
    with Session(engine) as s:
        return s.get(Document, doc_id)


def test_operator_choice_is_stored_and_used_from_then_on(engine, partners):
    _suppliers_in_store(engine)
    stage = _stage(engine, partners)
    first = _apply(engine, _add_doc(engine, partner=None, sender="GLOBEXIND", supplier_name="GLOBEX INDUSTRIAL SUPPLY"),
                   stage)
    assert first.state == State.NEEDS_ATTENTION and first.stage == StageName.MATCH
    assert first.error_code == "match.unmatched" and json.loads(first.candidates)
    # A second one from the same sender waits too.
    second_id = _add_doc(engine, partner=None, sender="GLOBEXIND", supplier_name="Globex Industrial Supply")
    assert _apply(engine, second_id, stage).state == State.NEEDS_ATTENTION

    chosen = choose_supplier(engine, first.id, "BORST", actor="alice")
    # Back to matching with the choice on record: the worker's match finds the alias and routes it.
    assert chosen.state == State.TRANSLATED and chosen.stage == StageName.MATCH and chosen.supplier_code == "BORST"
    with Session(engine) as s:
        aliases = s.exec(select(SupplierAlias)).all()
        events = s.exec(select(Event).where(Event.document_id == first.id).order_by(Event.id)).all()
        second = s.get(Document, second_id)
    assert {a.key for a in aliases} == {"supplier:sender:GLOBEXIND", "supplier:name:globex industrial supply"}
    assert all(a.supplier_code == "BORST" and a.created_by == "alice" and a.partner == "" for a in aliases)
    assert events[-1].actor == "alice" and events[-1].outcome == "chosen" and "operator" in events[-1].detail
    rematched = _apply(engine, first.id, stage)
    assert rematched.state == State.DELIVERING and rematched.supplier_code == "BORST"
    # The other waiting document went back to matching, and now matches through the alias.
    assert second.state == State.TRANSLATED and second.stage == StageName.MATCH
    again = _apply(engine, second_id, stage)
    assert again.state == State.DELIVERING and again.supplier_code == "BORST"
    # ... and so does every later document from that sender.
    third = _apply(engine, _add_doc(engine, partner=None, sender="GLOBEXIND", supplier_name="GX SUPPLY"), stage)
    assert third.state == State.DELIVERING and third.supplier_code == "BORST"
    with Session(engine) as s:
        last = s.exec(select(Event).where(Event.document_id == third.id).order_by(Event.id.desc())).first()
    assert json.loads(last.detail)["rule"] == "alias (sender)"


def test_choose_supplier_refuses_what_it_cannot_do(engine, partners):
    _suppliers_in_store(engine)
    waiting = _apply(engine, _add_doc(engine, partner=None, sender="NEW1", supplier_name="Nobody Known"),
                     _stage(engine, partners))
    with pytest.raises(ChoiceError, match="not in Plex's supplier master"):
        choose_supplier(engine, waiting.id, "NOPE42", actor="bob")
    with pytest.raises(ChoiceError, match="does not exist"):
        choose_supplier(engine, 987654, "ACME01", actor="bob")
    done_id = _add_doc(engine, partner=None, sender="NEW2", supplier_name="x", state="delivering", stage="plex")
    with pytest.raises(ChoiceError, match="delivering at plex"):
        choose_supplier(engine, done_id, "ACME01", actor="bob")
    with Session(engine) as s:
        assert s.exec(select(SupplierAlias)).all() == []
        assert s.get(Document, waiting.id).state == State.NEEDS_ATTENTION


def test_the_cache_is_refreshed_by_modified_date(engine):
    with run_plex_sim(rate_limit_per_minute=None) as sim:
        client = PlexClient(PlexConfig(connect_url=sim.base_url, api_key=SIM_API_KEY))
        settings = SupplierMatching(refresh_seconds=0.01, overlap_seconds=60)
        master = SupplierMaster(engine, client, settings, owner="test", reload_seconds=0)
        assert master.refresh() == 24  # the first poll reads everything, tax ids included
        snap = master.snapshot()
        active = {r["code"] for r in sim.state(log=False)["suppliers"]
                  if r["_tenant"] == PCN_MAIN and r["status"] == "Active"}
        assert {p.code for p in snap.parties} == active and len(active) < 24  # inactive ones never match
        assert all(p.tax_id for p in snap.parties)
        requests_before = sim.state(log=False)["counters"]["requests"]["rest"]
        sim.add_supplier("NEWSUP", "Newly Added Supplies", tax_id="55-5555555")
        assert master.refresh() == 1  # only the change comes back (the overlap re-read is de-duplicated)
        assert sim.state(log=False)["counters"]["requests"]["rest"] - requests_before == 2  # list + financials
        snap = master.snapshot()
        assert snap.get("NEWSUP").tax_id == "55-5555555" and snap.get("newsup").name == "Newly Added Supplies"
        with Session(engine) as s:
            status = s.get(SourceStatus, "plex:suppliers")
        assert status.last_success_at is not None and status.cursor and status.last_error is None
        client.close()


def test_an_empty_cache_makes_matching_wait_not_fail(engine, partners):
    stage = _stage(engine, partners)
    with transaction(engine) as s:
        s.add(SourceStatus(source="plex:suppliers", last_success_at=utcnow(), last_poll_at=utcnow()))
    d_id = _add_doc(engine, partner=None, sender="S", supplier_name="Acme Fasteners")
    with Session(engine, expire_on_commit=False) as s:
        d = s.get(Document, d_id)
    out = stage([d])[d_id]
    assert out.kind is OutcomeKind.RETRY and "not been read" in out.error

