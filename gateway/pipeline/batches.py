"""Batches as work items: the worker claims a due batch like any other work, sends it or looks at
its run outside any transaction (keeping its lease), and stores what came of it — the batch and,
once it is over, every member's delivery — in one transaction.

An open batch is due when it is full, or ``max_age`` old, or ``min_age`` old with nothing more on
its way to its destination. Batches sharing an exclusive name (one Anaplan data file) are sent one
at a time: a named lease (``gateway.leases``) held by the batch from its send until it is over.
A batch whose holder died is claimable again as soon as the holder's lease expires: it is sent
again (a batched destination's send must be safe to repeat, as an Anaplan import is an upsert).
Members write no event while they wait: one when they join, one when the batch concludes them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import exists, or_, select, update
from sqlalchemy.engine import Engine

from gateway import leases
from gateway.integrations.base import BatchItem, BatchOutcome, BatchOutcomeKind, Outcome, OutcomeKind
from gateway.pipeline.deliveries import ClaimedDelivery, load_deliveries, settle_documents
from gateway.pipeline.machine import DELIVERY_LIMITS, BatchState, DeliveryState, State, delivery_transition, store_rows
from gateway.store.db import insert_many, reader, retry_conflicts, transaction
from gateway.store.models import Batch, Delivery, Document, Event, Interchange

__all__ = ["run_batches"]

_B = Batch.__table__
_D = Delivery.__table__
_DOC = Document.__table__
_ICH = Interchange.__table__
_ACTIVE = (BatchState.OPEN.value, BatchState.SENDING.value, BatchState.RUNNING.value)
_LOOK_AGAIN = 1.0  # seconds before an open batch that may still fill is looked at again
_EXCLUSIVE_TTL = 7 * 24 * 3600.0  # released when the batch is over; a backstop only


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)


def _owner(batch_id: int) -> str:
    return f"batch:{batch_id}"


def run_batches(worker: Any, limit: int = 4) -> int:
    """Claim and work up to ``limit`` due batches, one at a time; returns how many were worked."""
    names = [n for n in worker.pipeline.destinations if worker.pipeline.batched(n)]
    if not names:
        return 0
    worked = 0
    for _ in range(limit):
        row = _claim(worker, names)
        if row is None:
            break
        worked += 1
        try:
            _work(worker, row)
        except Exception:  # noqa: BLE001 - the store went away, say: the lease expires, it is taken again
            worker.log.exception("batch_failed_to_run", batch=row["id"])
    return worked


def _claim(worker: Any, names: list[str]) -> Mapping[str, Any] | None:
    now = worker.clock()
    other = _B.alias("other")
    busy_key = exists().where(other.c.destination == _B.c.destination, other.c.key == _B.c.key,
                              other.c.id != _B.c.id,
                              other.c.state.in_((BatchState.SENDING.value, BatchState.RUNNING.value)))
    where = (_B.c.state.in_(_ACTIVE), _B.c.destination.in_(names), _B.c.next_attempt_at <= now,
             or_(_B.c.lease_until.is_(None), _B.c.lease_until < now),
             or_(_B.c.state != BatchState.OPEN.value, ~busy_key))  # an open batch waits for the one being sent
    with reader(worker.engine).connect() as conn:
        found = conn.execute(select(_B.c.id).where(*where).order_by(_B.c.next_attempt_at, _B.c.id).limit(1)).scalar()
    if found is None:
        return None
    with transaction(worker.engine) as s:
        row = s.connection().execute(update(_B).where(_B.c.id == found, *where).values(
            lease_owner=worker.name, lease_until=now + worker.lease).returning(*_B.c)).mappings().first()
    return dict(row) if row is not None else None


def _item(row: Mapping[str, Any]) -> BatchItem:
    try:
        result = json.loads(row["result"] or "{}")
    except ValueError:
        result = {}
    return BatchItem(id=row["id"], destination=row["destination"], key=row["key"], state=row["state"],
                     member_count=row["member_count"], created_at=_aware(row["created_at"]),
                     attempts=row["attempts"], waits=row["waits"], reference=row["reference"], result=result)


def _work(worker: Any, row: Mapping[str, Any]) -> None:
    destination = worker.pipeline.destinations[row["destination"]]
    batch = _item(row)
    if batch.state == BatchState.OPEN.value and not _sendable(worker, batch, destination):
        return
    if batch.state in (BatchState.OPEN.value, BatchState.SENDING.value):
        if not leases.acquire(worker.engine, destination.exclusive(batch.key), _owner(batch.id), _EXCLUSIVE_TTL):
            _later(worker, batch.id, _LOOK_AGAIN)  # the batch before it on the same file is not over yet
            return
        _set(worker, batch.id, state=BatchState.SENDING.value)
        members = load_deliveries(worker.engine, (), batch_id=batch.id)
        with _renewing(worker, batch.id):
            outcome = _run(worker, destination.send, batch, members)
    else:
        members = load_deliveries(worker.engine, (), batch_id=batch.id)
        with _renewing(worker, batch.id):
            outcome = _run(worker, destination.poll, batch, members)
    retry_conflicts(lambda: _store(worker, destination, batch, members, outcome))


def _run(worker: Any, call: Any, batch: BatchItem, members: Sequence[ClaimedDelivery]) -> BatchOutcome:
    try:
        outcome = call(batch, [m.item for m in members])
    except Exception as exc:  # noqa: BLE001 - every fault becomes the batch's outcome
        as_delivery = worker.outcome_of(exc, batch.destination, [m.row.document_id for m in members[:20]])
        if as_delivery.kind is OutcomeKind.RETRY:
            return BatchOutcome.retry(as_delivery.error or "transient fault", after=as_delivery.after,
                                      code=as_delivery.code)
        return BatchOutcome.fail(as_delivery.error or "failed", code=as_delivery.code)
    if not isinstance(outcome, BatchOutcome):
        return BatchOutcome.fail(f"{batch.destination} returned {type(outcome).__name__}, not a batch outcome",
                                 code="batch.bad_result")
    return outcome


def _sendable(worker: Any, batch: BatchItem, destination: Any) -> bool:
    """Whether an open batch goes now; if not, when it is looked at again is stored."""
    now = worker.clock()
    age = (now - batch.created_at).total_seconds()
    if batch.member_count >= destination.max_members or age >= destination.max_age:
        return True
    if age >= destination.min_age and not _more_coming(worker.engine, batch.destination):
        return True
    _later(worker, batch.id, min(_LOOK_AGAIN, max(0.05, destination.max_age - age)))
    return False


def _more_coming(engine: Engine, destination: str) -> bool:
    """Whether anything may still join a batch of ``destination`` soon: its deliveries not yet batched
    (of documents on their way), documents at their steps, interchanges not yet split."""
    with reader(engine).connect() as conn:
        for q in (
            select(_D.c.id).join(_DOC, _DOC.c.id == _D.c.document_id).where(
                _D.c.destination == destination,
                _D.c.state.in_((DeliveryState.BLOCKED.value, DeliveryState.PENDING.value,
                                DeliveryState.WAITING.value)),
                _DOC.c.state == State.DELIVERING.value),
            select(_DOC.c.id).where(_DOC.c.state.in_((State.RECEIVED.value, State.TRANSLATED.value))),
            select(_ICH.c.id).where(_ICH.c.state == "received"),
        ):
            if conn.execute(q.limit(1)).first() is not None:
                return True
    return False


def _later(worker: Any, batch_id: int, seconds: float) -> None:
    now = worker.clock()
    with transaction(worker.engine) as s:
        s.connection().execute(update(_B).where(_B.c.id == batch_id, _B.c.lease_owner == worker.name).values(
            next_attempt_at=now + timedelta(seconds=seconds), lease_owner=None, lease_until=None))


def _set(worker: Any, batch_id: int, **values: Any) -> None:
    with transaction(worker.engine) as s:
        s.connection().execute(update(_B).where(_B.c.id == batch_id, _B.c.lease_owner == worker.name).values(
            updated_at=worker.clock(), **values))


@contextmanager
def _renewing(worker: Any, batch_id: int) -> Iterator[None]:
    """Keep the batch's lease while it is sent or looked at (an upload may take a while)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(max(0.05, worker.lease.total_seconds() / 3)):
            try:
                _set(worker, batch_id, lease_until=worker.clock() + worker.lease)
            except Exception:  # noqa: BLE001 - the lease then expires: another worker takes the batch
                worker.log.exception("batch_lease_not_renewed", batch=batch_id)

    thread = threading.Thread(target=renew, name=f"batch-lease-{batch_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _event(worker: Any, batch: BatchItem, outcome: str, detail: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    return {"document_id": None, "interchange_id": None, "delivery_id": None, "batch_id": batch.id,
            "stage": batch.destination, "outcome": outcome, "attempt": None, "duration_ms": None,
            "detail": json.dumps(detail, default=str, sort_keys=True), "actor": worker.name, "at": now}


def _store(worker: Any, destination: Any, batch: BatchItem, members: Sequence[ClaimedDelivery],
           outcome: BatchOutcome) -> None:
    """Write the batch and, when it is over, its members — only while this worker holds the batch."""
    now = worker.clock()
    release = False
    with transaction(worker.engine) as s:
        conn = s.connection()
        q = select(_B.c.state).where(_B.c.id == batch.id, _B.c.lease_owner == worker.name)
        state = conn.execute(q.with_for_update() if worker.postgres else q).scalar()
        if state is None:
            worker.log.warning("batch_outcome_dropped_lease_lost", batch=batch.id, outcome=outcome.kind.value)
            return
        result = {**batch.result, **outcome.result}
        values: dict[str, Any] = {"lease_owner": None, "lease_until": None, "updated_at": now,
                                  "result": json.dumps(result, default=str)}
        events: list[dict[str, Any]] = []
        kind = outcome.kind
        attempts = batch.attempts + (1 if kind is BatchOutcomeKind.RETRY else 0)
        if kind is BatchOutcomeKind.RETRY and attempts >= worker.retry.attempts:
            kind, outcome = BatchOutcomeKind.FAIL, BatchOutcome.fail(
                f"{outcome.error} (gave up after {attempts} attempts)", code=outcome.code)
        if kind is BatchOutcomeKind.RUNNING:
            values.update(state=BatchState.RUNNING.value, reference=outcome.reference or batch.reference,
                          next_attempt_at=now + timedelta(seconds=outcome.after or 1.0), waits=0, error=None)
            if state == BatchState.SENDING.value:
                events.append(_event(worker, batch, "sent", {k: result.get(k) for k in (
                    "rows", "chunks", "bytes", "requests") if k in result} | {"members": len(members),
                                                                              "reference": values["reference"]}, now))
        elif kind is BatchOutcomeKind.WAIT:
            waits = batch.waits + 1
            after = outcome.after if outcome.after is not None else worker.wait.delay(waits)
            values.update(state=BatchState.RUNNING.value if state == BatchState.RUNNING.value else BatchState.OPEN.value,
                          waits=waits, error=outcome.error, next_attempt_at=now + timedelta(seconds=after))
            release = values["state"] == BatchState.OPEN.value
            if batch.waits == 0:  # one event when the wait starts; the batch shows the reason meanwhile
                events.append(_event(worker, batch, "wait", {"error": outcome.error, "code": outcome.code,
                                                             "next_look_in_s": round(after, 3)}, now))
        elif kind is BatchOutcomeKind.RETRY:
            after = outcome.after if outcome.after is not None else worker.retry.delay(attempts)
            values.update(state=BatchState.OPEN.value, attempts=attempts, waits=0, error=outcome.error,
                          reference=None, next_attempt_at=now + timedelta(seconds=after))
            release = True
            events.append(_event(worker, batch, "retry", {"error": outcome.error, "code": outcome.code,
                                                          "next_attempt_in_s": round(after, 3)}, now))
        else:  # DONE or FAIL: the members are concluded here, in this transaction
            values.update(state=BatchState.DONE.value if kind is BatchOutcomeKind.DONE else BatchState.FAILED.value,
                          next_attempt_at=None, error=outcome.error, attempts=attempts)
            release = True
            events += _conclude(worker, conn, batch, members, outcome, now)
            events.append(_event(worker, batch, kind.value, {"error": outcome.error, "members": len(members),
                                                             "status": result.get("status")}, now))
        conn.execute(update(_B).where(_B.c.id == batch.id).values(**values))
        insert_many(conn, Event.__table__, events)
    if release:
        leases.release(worker.engine, destination.exclusive(batch.key), _owner(batch.id))


def _conclude(worker: Any, conn: Any, batch: BatchItem, members: Sequence[ClaimedDelivery], outcome: BatchOutcome,
              now: datetime) -> list[dict[str, Any]]:
    """Each member's delivery outcome (the batch's verdict on it), the members' documents derived again."""
    failed = Outcome.fail(outcome.error or f"the {batch.destination} batch failed", code=outcome.code or "batch.failed")
    missing = Outcome.fail(f"{batch.destination} gave no outcome for this member", code="batch.no_outcome")
    current = {r for r in conn.execute(select(_D.c.id).where(
        _D.c.batch_id == batch.id, _D.c.state == DeliveryState.BATCHED.value)).scalars()}
    rows: dict[int, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    texts: dict[int, Any] = {}
    for m in members:
        if m.row.id not in current:
            continue  # reprocessed or moved meanwhile: not this batch's to conclude
        verdict = outcome.members.get(m.row.id, missing) if outcome.kind is BatchOutcomeKind.DONE else failed
        values, event = delivery_transition(m.row, verdict, now=now, retry=worker.retry, wait=worker.wait,
                                            actor=worker.name, interchange_id=m.interchange_id, texts=texts)
        rows[m.row.id] = values
        if event is not None:
            events.append(event)
    store_rows(conn, _D, rows, DELIVERY_LIMITS)
    settle_documents(conn, {m.row.document_id for m in members}, now)
    return events
