"""The worker's deliveries: routing a matched document, claiming due deliveries, running them through
their destination and storing what came of them — and the one place a routed document's state is
derived again (:func:`settle_documents`).

Claims are fair: the due deliveries that have waited longest come first (by ``next_attempt_at``,
then id). A batched destination's deliveries are not sent one by one: each joins the open batch of
its key (one event), and the batch answers for it from then on (see :mod:`gateway.pipeline.batches`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from gateway.integrations.base import BatchedDestination, DeliveryItem, Outcome, OutcomeKind
from gateway.pipeline.machine import (
    DELIVERY_LIMITS,
    DUE,
    FINISHED,
    BatchState,
    DeliveryRow,
    DeliveryState,
    State,
    delivery_transition,
    derive,
    store_rows,
)
from gateway.pipeline.routing import route
from gateway.store.db import insert_many, reader, transaction
from gateway.store.models import Batch, Delivery, Document, Event

__all__ = ["ClaimedDelivery", "claim_deliveries", "deliver", "route_documents", "settle_documents",
           "store_delivery_results"]

_D = Delivery.__table__
_DOC = Document.__table__
_B = Batch.__table__

_ITEM_COLUMNS = (_D.c.id, _D.c.document_id, _D.c.destination, _D.c.position, _D.c.state, _D.c.attempts,
                 _D.c.waits, _D.c.reference, _D.c.batch_id, _D.c.error, _D.c.error_code, _DOC.c.interchange_id,
                 _DOC.c.kind, _DOC.c.partner, _DOC.c.standard, _DOC.c.message_type, _DOC.c.canonical,
                 _DOC.c.supplier_code, _DOC.c.test)


@dataclass(slots=True)
class ClaimedDelivery:
    """A delivery this worker holds: its row (what the state machine moves) and its item (what the
    destination sees)."""

    row: DeliveryRow
    item: DeliveryItem
    interchange_id: int | None


@dataclass(slots=True)
class DeliveryResult:
    claimed: ClaimedDelivery
    outcome: Outcome
    duration_ms: float
    batch_key: str | None = None  # set: join the open batch of this key


# ------------------------------------------------------------------------------------------ routing


def route_documents(conn: Any, docs: Sequence[Any], *, routes: Mapping[str, Sequence[str]],
                    configured: Iterable[str], partners: Any, now: datetime) -> None:
    """Give documents that have just been matched their deliveries (``docs``: ``id``, ``kind``,
    ``partner``, ``test``), in the caller's transaction, and derive their state. Deliveries a
    reprocessed document already has keep their reference; those no longer routed are skipped."""
    if not docs:
        return
    names = list(configured)
    ids = [d.id for d in docs]
    existing: dict[int, dict[str, Any]] = {}
    for r in conn.execute(select(_D.c.id, _D.c.document_id, _D.c.destination, _D.c.state).where(
            _D.c.document_id.in_(ids))):
        existing.setdefault(r.document_id, {})[r.destination] = r
    inserts: list[dict[str, Any]] = []
    changes: dict[int, dict[str, Any]] = {}
    for d in docs:
        partner = partners.get(d.partner) if d.partner else None
        wanted = route(d.kind, partner, test=bool(d.test), routes=routes, configured=names)
        had = existing.get(d.id, {})
        for position, name in enumerate(wanted, 1):
            if name in had:
                changes[had[name].id] = {"position": position, "updated_at": now}
            else:
                inserts.append({"document_id": d.id, "destination": name, "position": position,
                                "state": DeliveryState.BLOCKED.value, "attempts": 0, "waits": 0,
                                "created_at": now, "updated_at": now})
        for name, r in had.items():
            if name not in wanted and r.state not in FINISHED:
                changes[r.id] = {"state": DeliveryState.SKIPPED.value, "error": f"no longer routed to {name}",
                                 "next_attempt_at": None, "updated_at": now}
    store_rows(conn, _D, changes, DELIVERY_LIMITS)
    insert_many(conn, _D, inserts)
    settle_documents(conn, ids, now, routed=True)


def settle_documents(conn: Any, doc_ids: Iterable[int], now: datetime, *, routed: bool = False) -> None:
    """Derive the state of these routed documents from their deliveries (:func:`~gateway.pipeline.machine.derive`)
    and make pending the deliveries whose turn has come. ``routed``: documents without deliveries
    are done (nothing to deliver); otherwise they are left alone."""
    ids = sorted(set(doc_ids))
    if not ids:
        return
    found: dict[int, list[Any]] = {i: [] for i in ids} if routed else {}
    for chunk in _chunks(ids, 1000):
        for r in conn.execute(select(_D.c.id, _D.c.document_id, _D.c.destination, _D.c.position, _D.c.state,
                                     _D.c.error, _D.c.error_code).where(_D.c.document_id.in_(chunk))):
            found.setdefault(r.document_id, []).append(r)
    unblock: list[int] = []
    documents: dict[int, dict[str, Any]] = {}
    for doc_id, rows in found.items():
        derived = derive(rows)
        unblock += derived.unblock
        values = {"state": derived.state.value, "stage": derived.stage, "error": derived.error,
                  "error_code": derived.error_code, "lease_owner": None, "lease_until": None, "updated_at": now}
        if derived.state is not State.DELIVERING:
            values["next_attempt_at"] = None
        documents[doc_id] = values
    if unblock:
        for chunk in _chunks(unblock, 1000):
            conn.execute(update(_D).where(_D.c.id.in_(chunk), _D.c.state == DeliveryState.BLOCKED.value).values(
                state=DeliveryState.PENDING.value, next_attempt_at=now, updated_at=now))
    store_rows(conn, _DOC, documents, ())


def _chunks(seq: Sequence[int], n: int) -> Iterable[Sequence[int]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


# ------------------------------------------------------------------------------------------ claims


def claim_deliveries(worker: Any, limit: int) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due deliveries to destinations this process has, the longest waiting first."""
    names = list(worker.pipeline.destinations)
    if not names:
        return []
    now = worker.clock()
    where = (_D.c.state.in_(DUE), _D.c.destination.in_(names), _D.c.next_attempt_at <= now,
             or_(_D.c.lease_until.is_(None), _D.c.lease_until < now))
    # Most cycles find nothing: ask a reader first, so an empty claim writes nothing.
    with reader(worker.engine).connect() as conn:
        if conn.execute(select(_D.c.id).where(*where).limit(1)).first() is None:
            return []
    pick = select(_D.c.id).where(*where).order_by(_D.c.next_attempt_at, _D.c.id).limit(limit)
    if worker.postgres:
        pick = pick.with_for_update(skip_locked=True)
    with transaction(worker.engine) as s:
        ids = s.connection().execute(update(_D).where(_D.c.id.in_(pick)).values(
            lease_owner=worker.name, lease_until=now + worker.lease).returning(_D.c.id)).scalars().all()
    if not ids:
        return []
    return load_deliveries(worker.engine, ids)


def load_deliveries(engine: Any, ids: Sequence[int], *, batch_id: int | None = None) -> list[ClaimedDelivery]:
    """Deliveries (by ids, or a batch's members) with their documents, as the destinations see them."""
    where = _D.c.batch_id == batch_id if batch_id is not None else _D.c.id.in_(list(ids))
    if batch_id is not None:
        where = and_(where, _D.c.state == DeliveryState.BATCHED.value)
    with reader(engine).connect() as conn:
        rows = conn.execute(select(*_ITEM_COLUMNS).join(_DOC, _DOC.c.id == _D.c.document_id).where(where)
                            .order_by(_D.c.id)).all()
        doc_ids = sorted({r.document_id for r in rows})
        references: dict[int, dict[str, str]] = {}
        for chunk in _chunks(doc_ids, 1000):
            for r in conn.execute(select(_D.c.document_id, _D.c.destination, _D.c.reference).where(
                    _D.c.document_id.in_(chunk), _D.c.state == DeliveryState.DONE.value,
                    _D.c.reference.is_not(None))):
                references.setdefault(r.document_id, {})[r.destination] = r.reference
    parsed: dict[str | None, Any] = {}  # one document's canonical JSON is parsed once
    claimed = []
    for r in rows:
        canonical = parsed.get(r.canonical)
        if canonical is None:
            canonical = parsed[r.canonical] = json.loads(r.canonical) if r.canonical else {}
        row = DeliveryRow(r.id, r.document_id, r.destination, r.position, r.state, r.attempts, r.waits,
                          r.reference, r.batch_id, r.error, r.error_code)
        item = DeliveryItem(delivery_id=r.id, document_id=r.document_id, destination=r.destination, kind=r.kind,
                            partner=r.partner, standard=r.standard, message_type=r.message_type, canonical=canonical,
                            supplier_code=r.supplier_code, references=references.get(r.document_id, {}),
                            attempts=r.attempts, waits=r.waits, test=bool(r.test), reference=r.reference,
                            batch_id=r.batch_id)
        claimed.append(ClaimedDelivery(row, item, r.interchange_id))
    return claimed


# ------------------------------------------------------------------------------------------ running


def deliver(worker: Any, claimed: Sequence[ClaimedDelivery]) -> list[DeliveryResult]:
    """Run each destination over its claimed deliveries, outside any transaction."""
    by_destination: dict[str, list[ClaimedDelivery]] = {}
    for c in claimed:
        by_destination.setdefault(c.row.destination, []).append(c)
    results: list[DeliveryResult] = []
    for name, group in by_destination.items():
        destination = worker.pipeline.destinations[name]
        t0 = time.perf_counter()
        if isinstance(destination, BatchedDestination):
            for c in group:
                try:
                    key = destination.batch_key(c.item)
                except Exception as exc:  # noqa: BLE001 - a fault in the destination fails this delivery
                    results.append(DeliveryResult(c, worker.outcome_of(exc, name, [c.row.document_id]), 0.0))
                    continue
                if key is None:
                    results.append(DeliveryResult(c, Outcome.skip(f"nothing to send to {name} for {c.item.kind}"), 0.0))
                else:
                    results.append(DeliveryResult(c, Outcome.ok({"batch_key": key}), 0.0, batch_key=key))
            continue
        results += _deliver(worker, name, destination, group, t0)
    return results


def _deliver(worker: Any, name: str, destination: Any, group: Sequence[ClaimedDelivery],
             t0: float) -> list[DeliveryResult]:
    try:
        outcomes = destination.deliver([c.item for c in group]) or {}
        missing = Outcome.fail(f"{name} gave no outcome for this delivery", code="delivery.no_outcome")
    except Exception as exc:  # noqa: BLE001 - every fault becomes the deliveries' outcome
        if len(group) > 1:  # one delivery's fault is not the others': each alone, then
            return [r for c in group for r in _deliver(worker, name, destination, [c], time.perf_counter())]
        outcomes, missing = {}, worker.outcome_of(exc, name, [c.row.document_id for c in group])
    each = (time.perf_counter() - t0) * 1000 / max(1, len(group))
    results = []
    for c in group:
        outcome = outcomes.get(c.row.id, missing)
        if not isinstance(outcome, Outcome):
            outcome = Outcome.fail(f"{name} returned {type(outcome).__name__}, not an outcome",
                                   code="delivery.bad_result")
        results.append(DeliveryResult(c, outcome, round(each, 3)))
    return results


# ------------------------------------------------------------------------------------------ storing


def store_delivery_results(worker: Any, s: Any, results: Sequence[DeliveryResult]) -> tuple[int, int]:
    """Store the outcomes of the deliveries this worker still holds, in the caller's transaction:
    the deliveries, their events, the batches joined and the documents' derived state. (applied, lost)."""
    conn = s.connection()
    now = worker.clock()
    q = select(_D.c.id).where(_D.c.id.in_([r.claimed.row.id for r in results]), _D.c.lease_owner == worker.name)
    if worker.postgres:
        q = q.order_by(_D.c.id).with_for_update()
    held = set(conn.execute(q).scalars())
    kept = [r for r in results if r.claimed.row.id in held]
    for r in results:
        if r.claimed.row.id not in held:
            worker.log.warning("outcome_dropped_lease_lost", delivery=r.claimed.row.id,
                               destination=r.claimed.row.destination)
    rows: dict[int, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    texts: dict[int, Any] = {}
    joins: dict[tuple[str, str], list[DeliveryResult]] = {}
    for r in kept:
        if r.batch_key is not None and r.outcome.kind is OutcomeKind.OK:
            joins.setdefault((r.claimed.row.destination, r.batch_key), []).append(r)
            continue
        values, event = delivery_transition(r.claimed.row, r.outcome, now=now, retry=worker.retry, wait=worker.wait,
                                            actor=worker.name, interchange_id=r.claimed.interchange_id,
                                            duration_ms=r.duration_ms, texts=texts)
        rows[r.claimed.row.id] = values
        if event is not None:
            events.append(event)
    for (name, key), group in joins.items():
        events += _join(worker, conn, name, key, group, now)
    store_rows(conn, _D, rows, DELIVERY_LIMITS)
    insert_many(conn, Event.__table__, events)
    settle_documents(conn, {r.claimed.row.document_id for r in kept}, now)
    return len(kept), len(results) - len(kept)


def _join(worker: Any, conn: Any, name: str, key: str, group: list[DeliveryResult], now: datetime) -> list[dict]:
    """Put deliveries into the open batch of ``key`` (opening one if needed); one event each."""
    destination = worker.pipeline.destinations[name]
    ids = [r.claimed.row.id for r in group]
    batch_id = None
    for _ in range(5):
        batch_id = conn.execute(select(_B.c.id).where(_B.c.destination == name, _B.c.key == key,
                                                      _B.c.state == BatchState.OPEN.value).order_by(_B.c.id)
                                .limit(1)).scalar()
        if batch_id is None:
            # Due once it is old enough to go early; sooner when it fills (below).
            batch_id = conn.execute(_B.insert().values(
                destination=name, key=key, state=BatchState.OPEN.value, member_count=0, attempts=0, waits=0,
                next_attempt_at=now + timedelta(seconds=destination.min_age), created_at=now, updated_at=now,
            )).inserted_primary_key[0]
        # Conditional on still open: a batch being sent takes no new members.
        count = conn.execute(update(_B).where(_B.c.id == batch_id, _B.c.state == BatchState.OPEN.value).values(
            member_count=_B.c.member_count + len(ids), updated_at=now).returning(_B.c.member_count)).scalar()
        if count is not None:
            if count >= destination.max_members:
                conn.execute(update(_B).where(_B.c.id == batch_id).values(next_attempt_at=now))
            break
    else:  # pragma: no cover - five batches closed under us in one transaction
        raise RuntimeError(f"no open {name} batch could be joined")
    conn.execute(update(_D).where(_D.c.id.in_(ids)).values(
        state=DeliveryState.BATCHED.value, batch_id=batch_id, lease_owner=None, lease_until=None,
        next_attempt_at=None, waits=0, error=None, error_code=None, updated_at=now))
    detail = json.dumps({"batch": batch_id, "key": key})
    return [{"document_id": r.claimed.row.document_id, "interchange_id": r.claimed.interchange_id,
             "delivery_id": r.claimed.row.id, "batch_id": batch_id, "stage": name, "outcome": "join",
             "detail": detail, "actor": worker.name, "at": now, "duration_ms": None, "attempt": None}
            for r in group]

