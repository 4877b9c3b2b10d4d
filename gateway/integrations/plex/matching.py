"""Which Plex supplier (or, for customer orders, which customer) a document is from.

Rules, in order: an operator's earlier choice for the same sender (a ``SupplierAlias``); then the
partner file's ``plex.match_by`` list, by default

1. ``supplier_code`` — the code the partner's mapping file names;
2. ``edi_id`` — the party's id in the document (N104 / NAD), the interchange sender and the
   partner's EDI identifiers, compared with Plex supplier codes and old codes;
3. ``tax_id`` — the party's tax id (REF*TJ / RFF+VA) against the suppliers' financials;
4. ``name`` — the normalised name, scored with rapidfuzz; it must reach the threshold and beat
   the next best by the margin (two suppliers called "Midwest Plastics" are never auto-picked).

Anything else waits for a person (``needs_attention``) with the candidates stored on the
document; :func:`choose_supplier` records their choice as aliases used from then on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz, process
from sqlalchemy import or_, tuple_
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from gateway.integrations.plex.suppliers import Counterparty, Snapshot, SupplierMaster, normalize_name, normalize_tax_id
from gateway.integrations.plex.client import PlexError, SupplierMatching
from gateway.integrations.base import Outcome
from gateway.integrations.plex.context import plex_context
from gateway.pipeline.machine import StageName, State, reprocess
from gateway.store.db import reading, transaction
from gateway.store.models import Document, Event, Supplier, SupplierAlias, utcnow
from translators.mapping import PartnerDirectory, PartnerMapping, PlexRouting

SUPPLIER, CUSTOMER = "supplier", "customer"
DEFAULT_RULES = ("supplier_code", "edi_id", "tax_id", "name")
MAX_CANDIDATES = 5


def role_of(kind: str | None, partner: PartnerMapping | None) -> str:
    """Customer orders (a partner routing its 850s to sales orders) are matched to Plex customers."""
    routing = partner.plex if partner else PlexRouting()
    return CUSTOMER if kind == "purchase_order" and routing.purchase_orders == "sales_order" else SUPPLIER


@dataclass
class Evidence:
    """What a document says about its counterparty."""

    role: str
    partner: str  # '' for an unknown sender
    names: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    tax_id: str | None = None
    sender_id: str | None = None
    party_id: str | None = None
    supplier_code: str | None = None  # from the partner's mapping file
    rules: tuple[str, ...] = DEFAULT_RULES

    def alias_keys(self) -> list[str]:
        """Alias keys, most specific first: the party's id, the sender, the name."""
        keys = []
        if self.party_id:
            keys.append(f"{self.role}:id:{self.party_id.strip().upper()}")
        if self.sender_id:
            keys.append(f"{self.role}:sender:{self.sender_id.strip().upper()}")
        if self.names and normalize_name(self.names[0]):
            keys.append(f"{self.role}:name:{normalize_name(self.names[0])}")
        return [k[:300] for k in keys]


def _party(canonical: Mapping[str, Any], role: str) -> Mapping[str, Any]:
    parties = canonical.get("parties") or {}
    if role == CUSTOMER:
        return parties.get("buyer") or {}
    return parties.get("supplier") or parties.get("remit_to") or {}


def evidence(doc: Document, canonical: Mapping[str, Any], partner: PartnerMapping | None) -> Evidence:
    role = role_of(doc.kind, partner)
    party = _party(canonical, role)
    ev = Evidence(role=role, partner=doc.partner or "", sender_id=doc.sender_id or canonical.get("sender_id"),
                  party_id=party.get("id"), tax_id=party.get("tax_id"))
    if party.get("name"):
        ev.names.append(party["name"])
    if partner is not None:
        ev.names.append(partner.name)
        ev.rules = tuple(partner.plex.match_by)
        if role == SUPPLIER:
            ev.supplier_code = partner.plex.supplier_code
    ids = [party.get("id"), ev.sender_id]
    if partner is not None:
        ids += [i.id for i in (*partner.identifiers.x12, *partner.identifiers.edifact)]
    ev.ids = list(dict.fromkeys(i.strip().upper() for i in ids if i and i.strip()))
    return ev


@dataclass
class Result:
    code: str | None
    rule: str | None = None
    reason: str | None = None
    error_code: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    party: Counterparty | None = None

    @property
    def matched(self) -> bool:
        return self.code is not None

    def outcome(self, ev: Evidence) -> Outcome:
        if self.matched:
            assert self.party is not None
            return Outcome.ok({"rule": self.rule, "role": ev.role, "supplier_code": self.code,
                               "name": self.party.name, "plex_id": self.party.plex_id},
                              supplier_code=self.code, candidates=None)
        return Outcome.attention(self.reason or "no Plex supplier matches", code=self.error_code,
                                 detail={"role": ev.role, "candidates": self.candidates, "names": ev.names,
                                         "ids": ev.ids, "tax_id": ev.tax_id},
                                 candidates=json.dumps(self.candidates, ensure_ascii=False), supplier_code=None)


def _candidate(p: Counterparty, reason: str, score: float | None = None) -> dict[str, Any]:
    return {"code": p.code, "name": p.name, "kind": p.kind, "score": None if score is None else round(score, 1),
            "reason": reason, "plex_id": p.plex_id}


def _name_scores(name: str, snap: Snapshot, scorer: Any, limit: int) -> list[tuple[Counterparty, float]]:
    norm = normalize_name(name)
    if not norm or not snap.parties:
        return []
    return [(snap.parties[i], score) for _, score, i in process.extract(norm, snap.names, scorer=scorer, limit=limit)]


def match(ev: Evidence, snap: Snapshot, aliases: Mapping[str, str], settings: SupplierMatching) -> Result:
    """Apply the rules to one document's evidence; never raises."""
    what = "customer" if ev.role == CUSTOMER else "supplier"
    for key in ev.alias_keys():
        party = snap.get(aliases.get(key))
        if party is not None:
            return Result(party.code, f"alias ({key.split(':', 2)[1]})", party=party)
    notes: list[str] = []
    offered: dict[str, dict[str, Any]] = {}
    for rule in ev.rules:
        if rule == "supplier_code" and ev.supplier_code:
            party = snap.get(ev.supplier_code)
            if party is not None:
                return Result(party.code, rule, party=party)
            notes.append(f"the mapping file names supplier {ev.supplier_code}, which Plex does not have (or not active)")
        elif rule == "edi_id" and ev.ids:
            hits = {p.code: p for i in ev.ids for p in ([snap.by_code[i]] if i in snap.by_code else [])
                    + snap.by_old_code.get(i, [])}
            if len(hits) == 1:
                party = next(iter(hits.values()))
                return Result(party.code, rule, party=party)
            if hits:
                notes.append(f"EDI identifiers {', '.join(ev.ids)} fit {len(hits)} {what}s")
                offered.update({c: _candidate(p, "EDI identifier") for c, p in hits.items()})
        elif rule == "tax_id" and ev.tax_id:
            hits = {p.code: p for p in snap.by_tax_id.get(normalize_tax_id(ev.tax_id), [])}
            if len(hits) == 1:
                party = next(iter(hits.values()))
                return Result(party.code, rule, party=party)
            if hits:
                notes.append(f"tax id {ev.tax_id} belongs to {len(hits)} {what}s")
                offered.update({c: _candidate(p, "tax id") for c, p in hits.items()})
        elif rule == "name":
            for name in ev.names:
                scored = _name_scores(name, snap, fuzz.token_sort_ratio, 3)
                good = [(p, s) for p, s in scored if s >= settings.name_threshold]
                if not good:
                    continue
                best, score = good[0]
                if len(good) > 1 and score - good[1][1] < settings.ambiguity_margin:
                    notes.append(f"the name {name!r} fits {len(good)} {what}s equally well")
                    offered.update({p.code: _candidate(p, "name", s) for p, s in good})
                    break
                return Result(best.code, rule, party=best)
    for name in ev.names[:1]:
        for p, s in _name_scores(name, snap, fuzz.WRatio, MAX_CANDIDATES):
            offered.setdefault(p.code, _candidate(p, "similar name", s))
    candidates = list(offered.values())[:MAX_CANDIDATES * 2]
    ambiguous = any("fit" in n or "belongs to" in n for n in notes)
    who = ev.names[0] if ev.names else (ev.sender_id or "the sender")
    reason = (f"{'several' if ambiguous else 'no'} Plex {what}s match {who!r}"
              + (f": {'; '.join(notes)}" if notes else "") + "; choose one")
    return Result(None, reason=reason, error_code="match.ambiguous" if ambiguous else "match.unmatched",
                  candidates=candidates)


def load_aliases(engine: Engine, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """{(partner, key): supplier code} for the (partner, key) pairs asked (one query)."""
    pairs = list(dict.fromkeys(wanted))
    if not pairs:
        return {}
    with reading(engine) as s:
        rows = s.exec(select(SupplierAlias).where(
            tuple_(SupplierAlias.partner, SupplierAlias.key).in_(pairs))).all()
    return {(r.partner, r.key): r.supplier_code for r in rows}


class MatchStep:
    """``match``, the document step Plex provides: the claimed documents' suppliers (or customers)
    found in Plex's master, with one alias query and one supplier snapshot for the whole claim."""

    def __init__(self, engine: Engine, master: SupplierMaster, settings: SupplierMatching,
                 partners: Callable[[], PartnerDirectory]) -> None:
        self.engine, self.master, self.settings, self.partners = engine, master, settings, partners

    @classmethod
    def configure(cls, runtime: Any) -> MatchStep | None:
        context = plex_context(runtime)
        if context is None:
            return None
        return cls(runtime.engine, context.master, runtime.settings.plex.matching, runtime.partners)

    def __call__(self, docs: list[Document], runtime: Any = None) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        directory = self.partners()
        evs: dict[int, Evidence] = {}
        for doc in docs:
            if not doc.canonical:
                outcomes[doc.id] = Outcome.fail("the document has no canonical form to match", code="match.no_document")
                continue
            evs[doc.id] = evidence(doc, json.loads(doc.canonical), directory.get(doc.partner) if doc.partner else None)
        snapshots: dict[str, Snapshot | str] = {}
        if any(ev.role == SUPPLIER for ev in evs.values()):
            self.master.ensure_fresh()
            snap = self.master.snapshot()
            snapshots[SUPPLIER] = snap if snap.parties else "Plex's supplier master has not been read yet"
        if any(ev.role == CUSTOMER for ev in evs.values()):
            try:
                snapshots[CUSTOMER] = self.master.customers()
            except PlexError as exc:
                snapshots[CUSTOMER] = f"Plex's customers could not be read: {exc}"
        aliases = load_aliases(self.engine, [(ev.partner, k) for ev in evs.values() for k in ev.alias_keys()])
        for doc_id, ev in evs.items():
            snap = snapshots[ev.role]
            if isinstance(snap, str):
                outcomes[doc_id] = Outcome.retry(snap, code="match.master_unavailable")
                continue
            mine = {k: aliases[(ev.partner, k)] for k in ev.alias_keys() if (ev.partner, k) in aliases}
            outcomes[doc_id] = match(ev, snap, mine, self.settings).outcome(ev)
        return outcomes


# ------------------------------------------------------------------ the operator's choice


class ChoiceError(ValueError):
    """The choice cannot be applied; the message says why."""


def _role_from(doc: Document, session: Session) -> str:
    for candidate in json.loads(doc.candidates or "[]"):
        if isinstance(candidate, dict) and candidate.get("kind"):
            return str(candidate["kind"])
    last = session.exec(select(Event).where(Event.document_id == doc.id, Event.stage == StageName.MATCH.value)
                        .order_by(Event.id.desc()).limit(1)).first()
    if last is not None and last.detail:
        role = json.loads(last.detail).get("role")
        if role in (SUPPLIER, CUSTOMER):
            return role
    return SUPPLIER


def _keys_of(doc: Document, role: str) -> list[str]:
    canonical = json.loads(doc.canonical or "{}")
    party = _party(canonical, role)
    ev = Evidence(role=role, partner=doc.partner or "", sender_id=doc.sender_id, party_id=party.get("id"),
                  names=[party["name"]] if party.get("name") else [])
    return ev.alias_keys()


def choose_supplier(engine: Engine, document_id: int, supplier_code: str, *, actor: str,
                    note: str | None = None) -> Document:
    """An operator picks the Plex supplier (or customer) of a document waiting in ``needs_attention``.

    The choice is stored as aliases (partner + the document's party id, sender and name) that
    matching uses from then on; the document goes back to matching (which finds the alias) with an
    audit event naming the actor, and so do other documents waiting for the same choice.
    Raises :class:`ChoiceError` (a ValueError) with a message for the person."""
    code = (supplier_code or "").strip()
    if not code:
        raise ChoiceError("a supplier code is required")
    now = utcnow()
    with transaction(engine) as s:
        doc = s.get(Document, document_id, with_for_update=True)
        if doc is None:
            raise ChoiceError(f"document {document_id} does not exist")
        if doc.stage != StageName.MATCH.value or doc.state not in (State.NEEDS_ATTENTION.value, State.FAILED.value):
            raise ChoiceError(f"document {document_id} is {doc.state}"
                              + (f" at {doc.stage}" if doc.stage else "")
                              + "; only a document waiting for its supplier can be given one")
        until = doc.lease_until
        if until is not None and until.tzinfo is None:
            until = until.replace(tzinfo=now.tzinfo)
        if doc.lease_owner and until and until > now:
            raise ChoiceError(f"document {document_id} is being worked on by {doc.lease_owner}; try again shortly")
        role = _role_from(doc, s)
        offered = {c.get("code") for c in json.loads(doc.candidates or "[]") if isinstance(c, dict)}
        if role == SUPPLIER and s.get(Supplier, code) is None and code not in offered:
            raise ChoiceError(f"supplier {code} is not in Plex's supplier master (as last read)")
        if role == CUSTOMER and code not in offered:
            raise ChoiceError(f"customer {code} is not one of the candidates offered for document {document_id}")
        keys = _keys_of(doc, role)
        partner = doc.partner or ""
        for key in keys:
            alias = s.exec(select(SupplierAlias).where(SupplierAlias.partner == partner,
                                                       SupplierAlias.key == key)).first()
            if alias is None:
                alias = SupplierAlias(partner=partner, key=key, supplier_code=code, created_by=actor, created_at=now)
            else:
                alias.supplier_code, alias.created_by, alias.created_at = code, actor, now
            s.add(alias)
        detail = {"rule": "operator", "role": role, "supplier_code": code, "aliases": keys}
        if note:
            detail["note"] = note
        # Back to matching, which now finds the alias: the worker routes the document from there.
        s.add(Event(document_id=doc.id, interchange_id=doc.interchange_id, stage=StageName.MATCH.value,
                    outcome="chosen", actor=actor, at=now, detail=json.dumps(detail, sort_keys=True)))
        doc.state, doc.stage = State.TRANSLATED.value, StageName.MATCH.value
        doc.supplier_code, doc.candidates = code, None
        doc.error = doc.error_code = None
        doc.attempts, doc.next_attempt_at, doc.updated_at = 0, now, now
        s.add(doc)
        waiting = s.exec(select(Document).where(
            Document.state == State.NEEDS_ATTENTION.value, Document.stage == StageName.MATCH.value,
            Document.id != doc.id,
            Document.partner == doc.partner if doc.partner else or_(Document.partner.is_(None), Document.partner == ""),
        ).limit(1000)).all()
        for other in waiting:
            if set(_keys_of(other, role)) & set(keys):
                try:
                    s.add(reprocess(other, [], actor=actor, reason=f"supplier {code} chosen for document {doc.id}",
                                    now=now))
                    s.add(other)
                except ValueError:
                    continue  # in flight: the alias reaches it on its next match anyway
    return doc


__all__ = ["CUSTOMER", "SUPPLIER", "ChoiceError", "Evidence", "MatchStep", "Result", "choose_supplier", "evidence",
           "load_aliases", "match", "role_of"]
