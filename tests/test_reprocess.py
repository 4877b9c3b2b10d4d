"""Reprocessing and forcing: by id and by filter, from the failed stage or a chosen one, audited; bad input refused."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from gateway import operations
from gateway.operations import (
    Selection,
    force_duplicate,
    parse_when,
    reprocess_documents,
    retry_interchange,
    select_documents,
)
from gateway.integrations.base import Outcome
from gateway.pipeline.worker import Worker
from gateway.store import Document, Event, Interchange, transaction, utcnow
from tests.pipeline_fixtures import ROOT, FakeDestination, make_runtime, pipeline as make_pipeline, store_payload, x12_850

DEMO = ROOT / "fixtures" / "edi" / "demo"


@pytest.fixture
def runtime(store_url, tmp_path):
    rt = make_runtime(store_url, tmp_path)
    yield rt
    rt.engine.dispose()


def _failing_match(doc, _rt):
    # Invoices match; purchase orders "fail at Plex" so there is something to reprocess.
    return Outcome.ok(supplier_code="S-1") if doc.kind == "invoice" else Outcome.fail("supplier not found in Plex")


def _worker(runtime, match=_failing_match) -> Worker:
    """Matching as given; Plex busy (its deliveries wait), so a matched document stays delivering."""
    busy = FakeDestination("plex", lambda i: Outcome.wait(3600, reason="Plex busy"))
    return Worker(runtime, pipeline=make_pipeline(match=match, destinations=[busy]))


@pytest.fixture
def pipeline(runtime):
    """Northwind POs (one broken), an Acme invoice and a Europa order, driven to delivering / failed."""
    nw = store_payload(runtime.engine, x12_850(900, ["NW-1", "NW-2", "NW-3"], broken=(3,)), "nw.x12")
    acme = store_payload(runtime.engine, (DEMO / "acme-fasteners-810-INV-10234.x12").read_bytes(), "acme.x12")
    eu = store_payload(runtime.engine, (DEMO / "europa-components-ORDERS-EC-7781.edi").read_bytes(), "eu.edi")
    _worker(runtime).run_until_idle()
    return {"nw": nw, "acme": acme, "eu": eu}


def _snapshot(engine):
    with Session(engine) as s:
        docs = [(d.id, d.state, d.stage, d.error, d.attempts, d.lease_owner) for d in
                s.exec(select(Document).order_by(Document.id)).all()]
        events = len(s.exec(select(Event)).all())
        ichs = [(i.id, i.state, i.forced) for i in s.exec(select(Interchange).order_by(Interchange.id)).all()]
    return docs, events, ichs


def _doc(engine, **where) -> Document:
    with Session(engine) as s:
        q = select(Document)
        for k, v in where.items():
            q = q.where(getattr(Document, k) == v)
        return s.exec(q).one()


def test_the_pipeline_fixture_has_what_the_tests_need(runtime, pipeline):
    docs = _snapshot(runtime.engine)[0]
    states = sorted((d[1], d[2]) for d in docs)
    assert states == [("delivering", "plex"), ("failed", "match"), ("failed", "match"), ("failed", "match"),
                      ("failed", "translate")]


def test_reprocess_by_id_resumes_at_the_failed_stage_with_an_audit_event(runtime, pipeline):
    doc = _doc(runtime.engine, po_number="NW-1")
    report = reprocess_documents(runtime.engine, [doc.id], actor="alice", reason="supplier added in Plex")
    assert (report.matched, report.done, report.skipped) == (1, 1, [])
    after = _doc(runtime.engine, id=doc.id)
    assert (after.state, after.stage, after.error, after.attempts) == ("translated", "match", None, 0)
    with Session(runtime.engine) as s:
        ev = s.exec(select(Event).where(Event.document_id == doc.id).order_by(Event.id.desc())).first()
    assert (ev.stage, ev.outcome, ev.actor) == ("match", "reprocess", "alice")
    assert json.loads(ev.detail) == {"reason": "supplier added in Plex", "from_state": "failed", "from_stage": "match"}
    # And the worker takes it from there.
    _worker(runtime, match=lambda d, rt: Outcome.ok()).run_until_idle()
    assert _doc(runtime.engine, id=doc.id).state == "delivering"


def test_reprocess_by_filter_touches_only_the_matching_documents(runtime, pipeline):
    seen = []
    sel = Selection(partner="northwind-retail", state="failed", stage="match")
    report = reprocess_documents(runtime.engine, sel, actor="bob", reason="retry after fix",
                                 progress=lambda done, total: seen.append((done, total)))
    with Session(runtime.engine) as s:
        nw = s.exec(select(Document).where(Document.partner == "northwind-retail").order_by(Document.id)).all()
    assert report.done == 2 and report.skipped == []
    assert [(d.po_number, d.state, d.stage) for d in nw] == [
        ("NW-1", "translated", "match"), ("NW-2", "translated", "match"), ("NW-3", "failed", "translate")]
    assert _doc(runtime.engine, partner="europa-components").state == "failed"  # other partner untouched
    assert seen == [(2, 2)]
    by_kind = reprocess_documents(runtime.engine, Selection(kind="purchase_order", state="failed", stage="match"),
                                  actor="bob", reason="the Europa one too")
    assert by_kind.done == 1 and _doc(runtime.engine, partner="europa-components").state == "translated"


def test_reprocess_from_a_chosen_stage(runtime, pipeline):
    inv = _doc(runtime.engine, kind="invoice")
    assert inv.state == "delivering"
    report = reprocess_documents(runtime.engine, [inv.id], actor="carol", reason="re-derive after mapping change",
                                 from_stage="translate")
    assert report.done == 1
    after = _doc(runtime.engine, id=inv.id)
    assert (after.state, after.stage) == ("received", "translate")
    _worker(runtime).run_until_idle()
    assert _doc(runtime.engine, id=inv.id).state == "delivering"


def test_reprocess_by_date_range(runtime, pipeline):
    past = utcnow() - timedelta(days=3)
    nw1 = _doc(runtime.engine, po_number="NW-1")
    with transaction(runtime.engine) as s:
        s.get(Document, nw1.id).created_at = past
    sel = Selection(state="failed", stage="match", until=past + timedelta(hours=1))
    report = reprocess_documents(runtime.engine, sel, actor="dave", reason="old ones first")
    assert report.document_ids == [nw1.id]
    sel2 = Selection(state="failed", stage="match", since=past + timedelta(hours=1))
    with Session(runtime.engine) as s:
        assert len(s.exec(sel2.query(s)).all()) == 2


def test_a_filter_skips_documents_it_cannot_reprocess_and_says_why(runtime, pipeline):
    nw1 = _doc(runtime.engine, po_number="NW-1")
    with transaction(runtime.engine) as s:
        d = s.get(Document, nw1.id)
        d.lease_owner, d.lease_until = "worker-7", utcnow() + timedelta(minutes=1)
    report = reprocess_documents(runtime.engine, Selection(partner="northwind-retail"), actor="erin",
                                 reason="everything from Northwind", from_stage="match")
    assert report.matched == 3 and report.done == 1
    reasons = dict(report.skipped)
    assert "being worked on by worker-7" in reasons[nw1.id]
    broken = _doc(runtime.engine, po_number="NW-3")
    assert "has not got past translate" in reasons[broken.id] and "cannot skip ahead to match" in reasons[broken.id]


def test_large_selections_go_in_batches(runtime, pipeline, monkeypatch):
    monkeypatch.setattr(operations, "BATCH", 2)
    seen = []
    report = reprocess_documents(runtime.engine, Selection(state="failed"), actor="f", reason="all failed",
                                 progress=lambda done, total: seen.append((done, total)))
    assert report.done == 4 and seen == [(2, 4), (4, 4)]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e, ids: reprocess_documents(e, ids[:1], actor="x", reason="  "), "a reason is required"),
        (lambda e, ids: reprocess_documents(e, [ids[0], 999_999], actor="x", reason="r"), "no document with id 999999"),
        (lambda e, ids: reprocess_documents(e, ids[:1], actor="x", reason="r", from_stage="polish"), "unknown stage 'polish'"),
        (lambda e, ids: reprocess_documents(e, Selection(), actor="x", reason="r"), "name the documents"),
        (lambda e, ids: reprocess_documents(e, Selection(state="lost"), actor="x", reason="r"), "unknown state 'lost'"),
        (lambda e, ids: reprocess_documents(e, Selection(kind="asn"), actor="x", reason="r"), "unknown kind 'asn'"),
        (lambda e, ids: reprocess_documents(e, Selection(since=utcnow(), until=utcnow() - timedelta(days=1)),
                                            actor="x", reason="r"), "the range is reversed"),
        # Named by id, the never-translated one cannot start at match: the whole request is refused.
        (lambda e, ids: reprocess_documents(e, ids, actor="x", reason="r", from_stage="match"), "nothing was changed"),
    ],
)
def test_bad_input_is_refused_and_nothing_changes(runtime, pipeline, call, message):
    with Session(runtime.engine) as s:
        ids = list(s.exec(select(Document.id).order_by(Document.id)).all())
    before = _snapshot(runtime.engine)
    with pytest.raises(ValueError, match=message):
        call(runtime.engine, ids)
    assert _snapshot(runtime.engine) == before


def test_a_document_in_flight_named_by_id_is_refused(runtime, pipeline):
    nw1, nw2 = _doc(runtime.engine, po_number="NW-1"), _doc(runtime.engine, po_number="NW-2")
    with transaction(runtime.engine) as s:
        d = s.get(Document, nw2.id)
        d.lease_owner, d.lease_until = "worker-3", utcnow() + timedelta(minutes=1)
    before = _snapshot(runtime.engine)
    with pytest.raises(ValueError, match=f"document {nw2.id} is being worked on by worker-3"):
        reprocess_documents(runtime.engine, [nw1.id, nw2.id], actor="x", reason="r")
    assert _snapshot(runtime.engine) == before


def test_force_duplicate_rules(runtime):
    data = x12_850(950, ["PO-1"])
    first = store_payload(runtime.engine, data, "a.x12")
    second = store_payload(runtime.engine, x12_850(950, ["PO-1", "PO-2"]), "b.x12")
    _worker(runtime).split_interchanges()
    before = _snapshot(runtime.engine)
    with pytest.raises(ValueError, match="no interchange with id 424242"):
        force_duplicate(runtime.engine, 424242, actor="x", reason="r")
    with pytest.raises(ValueError, match=f"interchange {first} is not a duplicate"):
        force_duplicate(runtime.engine, first, actor="x", reason="r")
    with pytest.raises(ValueError, match="a reason is required"):
        force_duplicate(runtime.engine, second, actor="x", reason="")
    assert _snapshot(runtime.engine) == before
    ich = force_duplicate(runtime.engine, second, actor="x", reason="wanted")
    assert (ich.state, ich.forced) == ("received", True)


def test_retry_interchange_only_for_a_failed_one_without_documents(runtime):
    junk = store_payload(runtime.engine, b"not edi", "junk.txt")
    good = store_payload(runtime.engine, x12_850(960, ["PO-1"]), "good.x12")
    _worker(runtime).split_interchanges()
    with pytest.raises(ValueError, match="has not failed"):
        retry_interchange(runtime.engine, good, actor="x", reason="r")
    ich = retry_interchange(runtime.engine, junk, actor="x", reason="translator fixed")
    assert ich.state == "received"
    _worker(runtime).split_interchanges()
    with Session(runtime.engine) as s:
        assert s.get(Interchange, junk).state == "failed"
        assert [e.outcome for e in s.exec(select(Event).where(Event.interchange_id == junk).order_by(Event.id))] == [
            "fail", "retry", "fail"]


def test_select_documents_and_parse_when(runtime, pipeline):
    with Session(runtime.engine) as s:
        assert len(s.exec(select_documents(s, partner="northwind-retail")).all()) == 3
        assert len(s.exec(select_documents(s, kind="invoice")).all()) == 1
        assert len(s.exec(select_documents(s, state="failed", stage="translate")).all()) == 1
    assert parse_when("2026-11-20").isoformat() == "2026-11-20T00:00:00+00:00"
    assert parse_when("2026-11-20", end=True).isoformat().startswith("2026-11-20T23:59:59")
    assert parse_when("2026-11-20T09:30+01:00").isoformat() == "2026-11-20T09:30:00+01:00"
    with pytest.raises(ValueError, match="is not a date"):
        parse_when("yesterday")
