"""The state machine, in one place: documents, their deliveries, batches and interchanges.

A document moves ``received → translated → delivering → done`` . The first two arrows are its
document steps (``translate`` — on reprocess; splitting translates a new one — and ``match``,
the supplier, when an integration provides it). Then it is *routed*: one delivery per
destination its kind and partner go to, in order, and from then on its state is **derived** from
its deliveries (:func:`derive`): ``delivering`` while any is under way, ``done`` when all are done
or skipped, ``failed`` when one failed (its ``stage`` names the destination). Besides, a document
can be ``failed`` or ``needs_attention`` at a step, ``duplicate`` or ``ignored``.

A delivery moves ``blocked → pending → [waiting] → [batched] → done | failed | skipped``; it
becomes pending when every delivery before it is done or skipped. A batch moves ``open → sending
→ running → done | failed`` (back to ``open`` to be sent again).

Steps and destinations return :class:`~gateway.integrations.base.Outcome` values; only the
worker writes state, through the functions here, each writing the audit event with the change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import String, bindparam, update

from gateway.integrations.base import Outcome, OutcomeKind
from gateway.retry import WAIT, Backoff
from gateway.store.db import insert_many
from gateway.store.models import Delivery, Document, Event, utcnow

__all__ = [
    "BatchState", "DeliveryState", "InterchangeState", "KINDS", "LEGACY_STAGES", "Outcome", "OutcomeKind", "RESTING",
    "STATES", "StageName", "State", "apply_outcome", "delivery_transition", "derive", "initial_state", "plan_outcomes",
    "reprocess", "store_outcomes", "transition",
]

#: The kinds of business document the gateway delivers (the canonical ``kind``).
KINDS: tuple[str, ...] = ("purchase_order", "invoice")


class State(StrEnum):
    """A document's overall state."""

    RECEIVED = "received"
    TRANSLATED = "translated"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs_attention"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


class StageName(StrEnum):
    """The document steps, before any delivery. A document's ``stage`` is one of these or a destination."""

    TRANSLATE = "translate"
    MATCH = "match"


class DeliveryState(StrEnum):
    BLOCKED = "blocked"  # a delivery before it is not done yet
    PENDING = "pending"  # due at next_attempt_at
    WAITING = "waiting"  # the destination is busy, locked or throttling: due at next_attempt_at, no attempt used
    BATCHED = "batched"  # in a batch (batch_id) that answers for it
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # nothing to send there (e.g. no import for its kind)


class BatchState(StrEnum):
    OPEN = "open"  # taking members; due to be sent at next_attempt_at
    SENDING = "sending"  # a worker is sending it (lease); a dead worker's is sent again when its lease expires
    RUNNING = "running"  # sent; its run is looked at again at next_attempt_at
    DONE = "done"
    FAILED = "failed"


class InterchangeState(StrEnum):
    RECEIVED = "received"
    SPLIT = "split"
    FAILED = "failed"
    DUPLICATE = "duplicate"


# The document steps: the state each runs from and leads to.
STEP_FROM: dict[State, StageName] = {State.RECEIVED: StageName.TRANSLATE, State.TRANSLATED: StageName.MATCH}
STEP_TO: dict[StageName, State] = {StageName.TRANSLATE: State.TRANSLATED, StageName.MATCH: State.DELIVERING}
STATE_BEFORE: dict[StageName, State] = {step: state for state, step in STEP_FROM.items()}
STEP_ORDER: tuple[StageName, ...] = (StageName.TRANSLATE, StageName.MATCH)

RESTING = frozenset({State.DONE, State.FAILED, State.NEEDS_ATTENTION, State.DUPLICATE, State.IGNORED})
STATES: tuple[str, ...] = tuple(s.value for s in State)
FINISHED = frozenset({DeliveryState.DONE.value, DeliveryState.SKIPPED.value})
DUE = (DeliveryState.PENDING.value, DeliveryState.WAITING.value)

#: Stage names of the release before deliveries, as operators and old audit events know them.
LEGACY_STAGES: dict[str, str] = {"post": "plex", "forward": "anaplan", "confirm": "anaplan"}


def _dump(detail: Mapping[str, Any]) -> str | None:
    return json.dumps(detail, default=str, ensure_ascii=False, sort_keys=True) if detail else None


def _detail_text(outcome: Outcome, detail: dict[str, Any], texts: dict[int, Any] | None) -> str | None:
    if texts is None or len(detail) != len(outcome.detail):
        return _dump(detail)
    # Nothing was added to the outcome's own detail: the same text for every item it is given to
    # (the outcome is kept with it, so its id cannot be another's while the cache lives).
    hit = texts.get(id(outcome))
    if hit is None:
        hit = texts[id(outcome)] = (outcome, _dump(detail))
    return hit[1]


def _with_error(detail: dict[str, Any], outcome: Outcome, kind: OutcomeKind) -> None:
    if outcome.error and kind is not OutcomeKind.OK:
        detail.setdefault("error", outcome.error)
        if outcome.code:
            detail.setdefault("code", outcome.code)


# ----------------------------------------------------------------------------------- document steps


def transition(doc: Any, step: StageName, outcome: Outcome, *, actor: str = "gateway",
               duration_ms: float | None = None, now: datetime | None = None,
               retry: Backoff = Backoff(), texts: dict[int, Any] | None = None) -> dict[str, Any]:
    """Move ``doc`` by what ``step`` returned; returns the audit event as column values.

    An OK from ``match`` leaves the document ``delivering`` with no stage: the caller routes it
    (creates its deliveries) in the same transaction. ``texts`` keeps the JSON of an outcome's
    detail for the next document given the same outcome object (bulk writers)."""
    now = now or utcnow()
    for name, value in outcome.changes.items():
        setattr(doc, name, value)
    kind = outcome.kind
    attempt = doc.attempts + (0 if kind is OutcomeKind.WAIT else 1)
    detail = dict(outcome.detail)
    doc.lease_owner = None
    doc.lease_until = None
    doc.updated_at = now
    if kind is OutcomeKind.OK:
        target = STEP_TO[step]
        doc.state = target.value
        doc.stage = STEP_FROM[target].value if target in STEP_FROM else None
        doc.error = doc.error_code = None
        doc.attempts = 0
        doc.next_attempt_at = now + timedelta(seconds=outcome.after) if outcome.after else now
    elif kind is OutcomeKind.RETRY and attempt < retry.attempts:
        doc.state, doc.stage = STATE_BEFORE[step].value, step.value
        doc.error, doc.error_code, doc.attempts = outcome.error, outcome.code, attempt
        wait = outcome.after if outcome.after is not None else retry.delay(attempt)
        doc.next_attempt_at = now + timedelta(seconds=wait)
        detail["next_attempt_in_s"] = round(wait, 3)
    elif kind is OutcomeKind.RETRY or kind is OutcomeKind.FAIL:
        if kind is OutcomeKind.RETRY:
            kind = OutcomeKind.FAIL
            detail["gave_up_after"] = attempt
        doc.state, doc.stage = State.FAILED.value, step.value
        doc.error = outcome.error if "gave_up_after" not in detail else (
            f"{outcome.error} (gave up after {attempt} attempts)")
        doc.error_code, doc.attempts, doc.next_attempt_at = outcome.code, attempt, None
    elif kind is OutcomeKind.WAIT:
        doc.state, doc.stage = STATE_BEFORE[step].value, step.value
        doc.next_attempt_at = now + timedelta(seconds=outcome.after or 1.0)
    elif kind is OutcomeKind.ATTENTION:
        doc.state, doc.stage = State.NEEDS_ATTENTION.value, step.value
        doc.error, doc.error_code, doc.attempts, doc.next_attempt_at = outcome.error, outcome.code, 0, None
    else:  # IGNORE, DUPLICATE, SKIP
        doc.state = State.DUPLICATE.value if kind is OutcomeKind.DUPLICATE else State.IGNORED.value
        doc.stage, doc.error, doc.next_attempt_at = None, outcome.error, None
    _with_error(detail, outcome, kind)
    return {
        "document_id": doc.id,
        "interchange_id": doc.interchange_id,
        "stage": step.value,
        "outcome": kind.value,
        "detail": _detail_text(outcome, detail, texts),
        "actor": actor,
        "at": now,
        "duration_ms": duration_ms,
        "attempt": attempt if kind is not OutcomeKind.WAIT else None,
    }


def apply_outcome(doc: Document, step: StageName, outcome: Outcome, *, actor: str = "gateway",
                  duration_ms: float | None = None, now: datetime | None = None, retry: Backoff = Backoff()) -> Event:
    """:func:`transition` on an ORM document; returns the audit event for the caller to add with it."""
    return Event(**transition(doc, step, outcome, actor=actor, duration_ms=duration_ms, now=now, retry=retry))


def string_limits(model: Any) -> tuple[tuple[str, int], ...]:
    """(column, length) of a table's length-limited string columns."""
    return tuple(
        (c.name, c.type.length) for c in model.__table__.columns
        if isinstance(getattr(c.type, "impl", c.type), String) and isinstance(getattr(c.type, "length", None), int)
    )


DOCUMENT_LIMITS = string_limits(Document)
DELIVERY_LIMITS = string_limits(Delivery)
_DOCUMENT_COLUMNS = frozenset(c.name for c in Document.__table__.columns) - {"id"}


def fit_values(values: dict[str, Any], limits: tuple[tuple[str, int], ...]) -> None:
    """Cut strings to their column's length: a partner may send a 300-character PO number, which
    PostgreSQL would refuse. The full value stays in the canonical JSON and the raw bytes."""
    for name, length in limits:
        value = values.get(name)
        if isinstance(value, str) and len(value) > length:
            values[name] = value[:length]


class _Target:
    """What :func:`transition` moves when outcomes are stored in bulk: the row's id and attempts,
    and every field the outcomes set, written back with one UPDATE per value set."""

    def __init__(self, id: int, interchange_id: int | None, attempts: int) -> None:
        self.id = id
        self.interchange_id = interchange_id
        self.attempts = attempts

    def values(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("id", "interchange_id")}


# A row's new column values and its audit events, by id.
Planned = dict[int, tuple[_Target, list[dict[str, Any]]]]


def plan_outcomes(results: Any, *, actor: str, now: datetime, retry: Backoff = Backoff()) -> Planned:
    """What storing ``results`` — ``(document, step, outcome, duration_ms)`` — writes, decided by
    :func:`transition` without touching the store (``document`` needs ``id``, ``interchange_id`` and
    ``attempts``)."""
    planned: Planned = {}
    texts: dict[int, Any] = {}
    for doc, step, outcome, duration_ms in results:
        entry = planned.get(doc.id)
        if entry is None:
            entry = planned[doc.id] = (_Target(doc.id, doc.interchange_id, doc.attempts), [])
        target, events = entry
        events.append(transition(target, step, outcome, actor=actor, duration_ms=duration_ms, now=now, retry=retry,
                                 texts=texts))
        unknown = set(target.values()) - _DOCUMENT_COLUMNS
        if unknown:
            raise ValueError(f"the {step.value} step set unknown document fields: {', '.join(sorted(unknown))}")
    return planned


def store_rows(conn: Any, table: Any, rows: Mapping[int, dict[str, Any]], limits: tuple[tuple[str, int], ...]) -> None:
    """Write each row's new values with Core statements on ``conn``: rows given the same values share
    one ``UPDATE ... WHERE id IN``; rows setting the same columns to their own values one executemany."""
    updates: dict[Any, dict[str, Any]] = {}
    for row_id, values in rows.items():
        fit_values(values, limits)
        try:
            key: Any = tuple(sorted(values.items()))
            hash(key)
        except TypeError:
            key = (("_row", row_id),)
        group = updates.setdefault(key, {"values": values, "ids": []})
        group["ids"].append(row_id)
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for group in updates.values():
        if len(group["ids"]) > 1:
            conn.execute(update(table).where(table.c.id.in_(group["ids"])).values(group["values"]))
        else:
            by_columns.setdefault(tuple(sorted(group["values"])), []).append(group)
    for columns, groups in by_columns.items():
        if len(groups) == 1:
            conn.execute(update(table).where(table.c.id.in_(groups[0]["ids"])).values(groups[0]["values"]))
            continue
        stmt = update(table).where(table.c.id == bindparam("_row_id")).values(
            {c: bindparam(f"_v_{c}") for c in columns})
        conn.execute(stmt, [{"_row_id": g["ids"][0], **{f"_v_{c}": g["values"][c] for c in columns}} for g in groups])


def store_outcomes(conn: Any, planned: Planned) -> int:
    """Write planned document outcomes on ``conn`` (in the caller's transaction, over documents it
    holds); returns the number of audit events written."""
    events: list[dict[str, Any]] = []
    rows = {}
    for doc_id, (target, doc_events) in planned.items():
        events += doc_events
        rows[doc_id] = target.values()
    store_rows(conn, Document.__table__, rows, DOCUMENT_LIMITS)
    insert_many(conn, Event.__table__, events)
    return len(events)


# ------------------------------------------------------------------------------------------ deliveries


@dataclass(slots=True)
class DeliveryRow:
    """A delivery as the worker holds it: what :func:`delivery_transition` reads and moves."""

    id: int
    document_id: int
    destination: str
    position: int
    state: str
    attempts: int = 0
    waits: int = 0
    reference: str | None = None
    batch_id: int | None = None
    error: str | None = None
    error_code: str | None = None


def delivery_transition(row: DeliveryRow, outcome: Outcome, *, now: datetime, retry: Backoff = Backoff(),
                        wait: Backoff = WAIT, actor: str = "gateway", interchange_id: int | None = None,
                        duration_ms: float | None = None,
                        texts: dict[int, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A delivery's new column values and its audit event (None: nothing worth recording — a wait
    that goes on). A WAIT uses no attempt: its backoff grows with the waits in a row, up to the cap."""
    kind = outcome.kind
    detail = dict(outcome.detail)
    values: dict[str, Any] = {"lease_owner": None, "lease_until": None, "updated_at": now}
    attempt = row.attempts + (1 if kind in (OutcomeKind.RETRY, OutcomeKind.FAIL) else 0)
    record = True
    if outcome.detail:
        values["response"] = _dump(outcome.detail)
    if kind is OutcomeKind.OK:
        values.update(state=DeliveryState.DONE.value, error=None, error_code=None, next_attempt_at=None, waits=0)
        if outcome.reference is not None:
            values["reference"] = outcome.reference
    elif kind is OutcomeKind.SKIP:
        values.update(state=DeliveryState.SKIPPED.value, error=outcome.error, error_code=None, next_attempt_at=None,
                      waits=0)
    elif kind is OutcomeKind.WAIT:
        waits = row.waits + 1
        after = outcome.after if outcome.after is not None else wait.delay(waits)
        values.update(state=DeliveryState.WAITING.value, waits=waits, error=outcome.error, error_code=outcome.code,
                      next_attempt_at=now + timedelta(seconds=after))
        detail["next_look_in_s"] = round(after, 3)
        record = row.state != DeliveryState.WAITING.value  # one event when the wait starts, one when it ends
    elif kind is OutcomeKind.RETRY and attempt < retry.attempts:
        after = outcome.after if outcome.after is not None else retry.delay(attempt)
        values.update(state=DeliveryState.PENDING.value, attempts=attempt, waits=0, error=outcome.error,
                      error_code=outcome.code, next_attempt_at=now + timedelta(seconds=after))
        detail["next_attempt_in_s"] = round(after, 3)
    else:  # FAIL, RETRY with no attempts left, ATTENTION, IGNORE, DUPLICATE
        error = outcome.error or "failed"
        if kind is OutcomeKind.RETRY:
            detail["gave_up_after"] = attempt
            error = f"{error} (gave up after {attempt} attempts)"
        kind = OutcomeKind.FAIL
        values.update(state=DeliveryState.FAILED.value, attempts=attempt, error=error, error_code=outcome.code,
                      next_attempt_at=None)
    _with_error(detail, outcome, kind)
    event = None
    if record:
        event = {"document_id": row.document_id, "interchange_id": interchange_id, "delivery_id": row.id,
                 "batch_id": row.batch_id, "stage": row.destination, "outcome": kind.value,
                 "detail": _detail_text(outcome, detail, texts) if outcome.detail or detail else None,
                 "actor": actor, "at": now, "duration_ms": duration_ms,
                 "attempt": attempt if kind in (OutcomeKind.RETRY, OutcomeKind.FAIL) else None}
    return values, event


@dataclass(frozen=True, slots=True)
class Derived:
    """A routed document's state as its deliveries say, and which blocked deliveries may go now."""

    state: State
    stage: str | None
    error: str | None
    error_code: str | None
    unblock: tuple[int, ...]


def derive(deliveries: Sequence[Any]) -> Derived:
    """The overall state of a routed document from its deliveries (``position``, ``destination``,
    ``state``, ``error``, ``error_code``, ``id``): failed when one failed, done when all are done or
    skipped, else delivering at the first not finished; blocked ones whose predecessors all finished
    are to become pending."""
    ordered = sorted(deliveries, key=lambda d: (d.position, d.id))
    failed = next((d for d in ordered if d.state == DeliveryState.FAILED.value), None)
    unblock = tuple(d.id for d in ordered if d.state == DeliveryState.BLOCKED.value
                    and all(o.state in FINISHED for o in ordered if o.position < d.position))
    if failed is not None:
        return Derived(State.FAILED, failed.destination, failed.error, failed.error_code, ())
    open_ = [d for d in ordered if d.state not in FINISHED]
    if not open_:
        return Derived(State.DONE, None, None, None, ())
    return Derived(State.DELIVERING, open_[0].destination, None, None, unblock)


# -------------------------------------------------------------------------------------- reprocessing


def reprocess(doc: Document, deliveries: Sequence[Delivery], *, actor: str, reason: str,
              from_stage: str | None = None, now: datetime | None = None) -> Event:
    """Send ``doc`` back from the step or destination it failed at (or ``from_stage``): a step
    sends its deliveries back to ``blocked`` (routed again after it), a destination sends its own
    delivery back to ``pending`` and the ones after it to ``blocked``. Returns the audit event.

    Raises ValueError when the document cannot go back there (in flight, or never got there)."""
    now = now or utcnow()
    if not reason or not reason.strip():
        raise ValueError("a reason is required to reprocess")
    stage = LEGACY_STAGES.get(from_stage, from_stage) if from_stage else None
    if doc.lease_owner and doc.lease_until and _aware(doc.lease_until) > now:
        raise ValueError(f"document {doc.id} is being worked on by {doc.lease_owner}; try again shortly")
    busy = next((d for d in deliveries if d.state == DeliveryState.BATCHED.value
                 or (d.lease_owner and d.lease_until and _aware(d.lease_until) > now)), None)
    if busy is not None:
        raise ValueError(f"document {doc.id} is on its way to {busy.destination}; try again once that is over")
    if stage is None:
        # Nothing recorded (done, ignored, duplicate): start again from translation.
        stage = doc.stage if doc.stage else StageName.TRANSLATE.value
    by_destination = {d.destination: d for d in deliveries}
    previous = doc.state
    if stage in (StageName.TRANSLATE.value, StageName.MATCH.value):
        step = StageName(stage)
        doc.state, doc.stage = STATE_BEFORE[step].value, step.value
        for d in deliveries:
            _reset(d, DeliveryState.BLOCKED, now)
    elif stage in by_destination:
        chosen = by_destination[stage]
        for d in deliveries:
            if d.position >= chosen.position:
                _reset(d, DeliveryState.PENDING if d is chosen else DeliveryState.BLOCKED, now)
        doc.state, doc.stage = State.DELIVERING.value, stage
    else:
        raise ValueError(f"document {doc.id} never went to {stage}; reprocess it from "
                         f"{doc.stage or StageName.TRANSLATE.value} or earlier")
    doc.error = doc.error_code = None
    doc.attempts = 0
    doc.next_attempt_at = now
    doc.updated_at = now
    return Event(document_id=doc.id, interchange_id=doc.interchange_id, stage=stage, outcome="reprocess",
                 detail=_dump({"reason": reason.strip(), "from_state": previous, "from_stage": stage}),
                 actor=actor, at=now)


def _reset(d: Delivery, state: DeliveryState, now: datetime) -> None:
    d.state = state.value
    d.attempts = d.waits = 0
    d.error = d.error_code = None
    d.batch_id = None
    d.lease_owner = d.lease_until = None
    d.next_attempt_at = now if state is DeliveryState.PENDING else None
    d.updated_at = now


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def initial_state(translated: bool, ignored: bool) -> tuple[State, StageName | None]:
    """Where a document starts after its interchange is split and translated."""
    if ignored:
        return State.IGNORED, None
    if translated:
        return State.TRANSLATED, StageName.MATCH
    return State.FAILED, StageName.TRANSLATE
