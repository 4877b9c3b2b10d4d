"""The document state machine, in one place.

A document moves ``received → translated → matched → posted → forwarded → done``. Each arrow is a
stage: a small function that takes the document and returns an :class:`Outcome`. Besides the
happy path a document can be ``failed`` (keeping the stage it failed at, so reprocess resumes
there), ``needs_attention`` (a person must choose, e.g. the Plex supplier), ``duplicate`` or
``ignored`` (not a purchase order or invoice).

:func:`apply_outcome` is the only code that changes a document's state; it also writes the audit
event, so the trail and the state can never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import String, bindparam, update

from gateway.store.db import insert_many
from gateway.store.models import Document, Event, utcnow


class State(StrEnum):
    RECEIVED = "received"
    TRANSLATED = "translated"
    MATCHED = "matched"
    POSTED = "posted"
    FORWARDED = "forwarded"
    DONE = "done"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs_attention"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


class StageName(StrEnum):
    TRANSLATE = "translate"
    MATCH = "match"
    POST = "post"
    FORWARD = "forward"
    CONFIRM = "confirm"


# The happy path: the stage that runs from each state, and the state it leads to.
PATH: tuple[tuple[State, StageName, State], ...] = (
    (State.RECEIVED, StageName.TRANSLATE, State.TRANSLATED),
    (State.TRANSLATED, StageName.MATCH, State.MATCHED),
    (State.MATCHED, StageName.POST, State.POSTED),
    (State.POSTED, StageName.FORWARD, State.FORWARDED),
    (State.FORWARDED, StageName.CONFIRM, State.DONE),
)
STAGE_FROM: dict[State, StageName] = {s: stage for s, stage, _ in PATH}
STAGE_TO: dict[StageName, State] = {stage: t for _, stage, t in PATH}
STATE_BEFORE: dict[StageName, State] = {stage: s for s, stage, _ in PATH}
STAGE_ORDER: tuple[StageName, ...] = tuple(stage for _, stage, _ in PATH)

# Stages a worker runs straight after the one before succeeded, on the same claim (one claim and one
# commit instead of two). Confirm too: a document forwarded into an import that is already over is
# confirmed at once; one whose import still runs waits for it there.
CHAINED: frozenset[StageName] = frozenset({StageName.MATCH, StageName.POST, StageName.FORWARD, StageName.CONFIRM})

WORKING = frozenset(STAGE_FROM)  # states a worker picks up
RESTING = frozenset({State.DONE, State.FAILED, State.NEEDS_ATTENTION, State.DUPLICATE, State.IGNORED})
STATES: tuple[str, ...] = tuple(s.value for s in State)
_STAGE_VALUES = frozenset(s.value for s in StageName)


class OutcomeKind(StrEnum):
    OK = "ok"  # the stage did its work: on to the next state
    RETRY = "retry"  # a transient fault: the same stage again later, with backoff, up to a limit
    FAIL = "fail"  # a permanent fault: failed at this stage until someone reprocesses
    ATTENTION = "attention"  # a person must decide (unmatched or ambiguous supplier, ...)
    WAIT = "wait"  # not ready yet (e.g. an Anaplan batch still filling or running): no attempt used
    IGNORE = "ignore"  # not a document the gateway delivers
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a stage says happened. ``changes`` are document columns to set (e.g. the canonical JSON)."""

    kind: OutcomeKind
    detail: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    code: str | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)
    after: float | None = None  # seconds until the next try (RETRY, WAIT) or next stage (OK); None: default

    @classmethod
    def ok(cls, detail: Mapping[str, Any] | None = None, *, after: float | None = None, **changes: Any) -> Outcome:
        """Done; ``after``: the next stage is not due for that many seconds (e.g. an import still running)."""
        return cls(OutcomeKind.OK, detail or {}, changes=changes, after=after)

    @classmethod
    def retry(cls, error: str, *, code: str | None = None, after: float | None = None,
              detail: Mapping[str, Any] | None = None, **changes: Any) -> Outcome:
        return cls(OutcomeKind.RETRY, detail or {}, error=error, code=code, after=after, changes=changes)

    @classmethod
    def fail(cls, error: str, *, code: str | None = None, detail: Mapping[str, Any] | None = None,
             **changes: Any) -> Outcome:
        return cls(OutcomeKind.FAIL, detail or {}, error=error, code=code, changes=changes)

    @classmethod
    def attention(cls, reason: str, *, code: str | None = None, detail: Mapping[str, Any] | None = None,
                  **changes: Any) -> Outcome:
        return cls(OutcomeKind.ATTENTION, detail or {}, error=reason, code=code, changes=changes)

    @classmethod
    def wait(cls, after: float | None = None, detail: Mapping[str, Any] | None = None, **changes: Any) -> Outcome:
        return cls(OutcomeKind.WAIT, detail or {}, after=after, changes=changes)

    @classmethod
    def ignore(cls, reason: str, detail: Mapping[str, Any] | None = None, **changes: Any) -> Outcome:
        return cls(OutcomeKind.IGNORE, detail or {}, error=reason, changes=changes)

    @classmethod
    def duplicate(cls, reason: str, detail: Mapping[str, Any] | None = None, **changes: Any) -> Outcome:
        return cls(OutcomeKind.DUPLICATE, detail or {}, error=reason, changes=changes)


class Stage(Protocol):
    """A stage: one document in, one outcome out. ``ctx`` carries the clients and settings it needs."""

    def __call__(self, doc: Document, ctx: Any) -> Outcome: ...


BatchStage = Callable[[list[Document], Any], dict[int, Outcome]]
"""A stage that works on many documents at once (e.g. one Anaplan import for a whole batch).

A callable marked ``batch = True`` (an attribute on the function or object) is given every
claimed document of its stage and returns an outcome per document id.
"""


def is_batch(stage: Any) -> bool:
    return bool(getattr(stage, "batch", False))


def settler(stage: Any) -> Callable[[Any, list[int], datetime], None] | None:
    """A stage's ``settle(connection, document_ids, now)``, if it has one: run in the transaction that
    stores its outcomes, after them, to correct what the world changed meanwhile (an Anaplan batch
    that finished while its members' "wait" outcomes were on their way to the store)."""
    return getattr(stage, "settle", None)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient faults; after ``max_attempts`` at one stage the document fails."""

    max_attempts: int = 8
    initial: float = 2.0
    maximum: float = 600.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))


DEFAULT_RETRY = RetryPolicy()


def _dump(detail: Mapping[str, Any]) -> str | None:
    return json.dumps(detail, default=str, ensure_ascii=False, sort_keys=True) if detail else None


def _detail_text(outcome: Outcome, detail: dict[str, Any], texts: dict[int, Any] | None) -> str | None:
    if texts is None or len(detail) != len(outcome.detail):
        return _dump(detail)
    # Nothing was added to the outcome's own detail: the same text for every document it is given to
    # (the outcome is kept with it, so its id cannot be another's while the cache lives).
    hit = texts.get(id(outcome))
    if hit is None:
        hit = texts[id(outcome)] = (outcome, _dump(detail))
    return hit[1]


def apply_outcome(
    doc: Document,
    stage: StageName,
    outcome: Outcome,
    *,
    actor: str = "gateway",
    duration_ms: float | None = None,
    now: datetime | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> Event:
    """Move ``doc`` according to what ``stage`` returned; return the audit event to add.

    The caller adds both to its session and commits them together.
    """
    return Event(**transition(doc, stage, outcome, actor=actor, duration_ms=duration_ms, now=now, retry=retry))


def transition(
    doc: Any,
    stage: StageName,
    outcome: Outcome,
    *,
    actor: str = "gateway",
    duration_ms: float | None = None,
    now: datetime | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    texts: dict[int, Any] | None = None,
) -> dict[str, Any]:
    """What :func:`apply_outcome` does, returning the audit event as column values.

    For bulk writers (the worker applies hundreds of outcomes a second with Core inserts, where
    building an ORM event per outcome would cost more than the insert itself). ``texts`` keeps the
    JSON of an outcome's detail for the next document given the same outcome object.
    """
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
        target = STAGE_TO[stage]
        doc.state = target.value
        doc.stage = STAGE_FROM[target].value if target in STAGE_FROM else None
        doc.error = doc.error_code = None
        doc.attempts = 0
        doc.next_attempt_at = now + timedelta(seconds=outcome.after) if outcome.after else None
    elif kind is OutcomeKind.RETRY:
        if attempt >= retry.max_attempts:
            kind = OutcomeKind.FAIL
            detail["gave_up_after"] = attempt
            doc.state = State.FAILED.value
            doc.stage = stage.value
            doc.error = f"{outcome.error} (gave up after {attempt} attempts)"
            doc.error_code = outcome.code
            doc.attempts = attempt
            doc.next_attempt_at = None
        else:
            doc.state = STATE_BEFORE[stage].value
            doc.stage = stage.value
            doc.error = outcome.error
            doc.error_code = outcome.code
            doc.attempts = attempt
            wait = outcome.after if outcome.after is not None else retry.delay(attempt)
            doc.next_attempt_at = now + timedelta(seconds=wait)
            detail["next_attempt_in_s"] = round(wait, 3)
    elif kind is OutcomeKind.WAIT:
        doc.state = STATE_BEFORE[stage].value
        doc.stage = stage.value
        doc.next_attempt_at = now + timedelta(seconds=outcome.after or 1.0)
    elif kind is OutcomeKind.FAIL:
        doc.state = State.FAILED.value
        doc.stage = stage.value
        doc.error = outcome.error
        doc.error_code = outcome.code
        doc.attempts = attempt
        doc.next_attempt_at = None
    elif kind is OutcomeKind.ATTENTION:
        doc.state = State.NEEDS_ATTENTION.value
        doc.stage = stage.value
        doc.error = outcome.error
        doc.error_code = outcome.code
        doc.attempts = 0
        doc.next_attempt_at = None
    elif kind is OutcomeKind.IGNORE:
        doc.state = State.IGNORED.value
        doc.stage = None
        doc.error = outcome.error
        doc.next_attempt_at = None
    elif kind is OutcomeKind.DUPLICATE:
        doc.state = State.DUPLICATE.value
        doc.stage = None
        doc.error = outcome.error
        doc.next_attempt_at = None
    if outcome.error and kind is not OutcomeKind.OK:
        detail.setdefault("error", outcome.error)
        if outcome.code:
            detail.setdefault("code", outcome.code)
    return {
        "document_id": doc.id,
        "interchange_id": doc.interchange_id,
        "stage": stage.value,
        "outcome": kind.value,
        "detail": _detail_text(outcome, detail, texts),
        "actor": actor,
        "at": now,
        "duration_ms": duration_ms,
        "attempt": attempt if kind is not OutcomeKind.WAIT else None,
    }


def string_limits(model: Any) -> tuple[tuple[str, int], ...]:
    """(column, length) of a table's length-limited string columns."""
    return tuple(
        (c.name, c.type.length) for c in model.__table__.columns
        if isinstance(getattr(c.type, "impl", c.type), String) and isinstance(getattr(c.type, "length", None), int)
    )


DOCUMENT_LIMITS = string_limits(Document)
_DOCUMENT_COLUMNS = frozenset(c.name for c in Document.__table__.columns) - {"id"}


def fit_values(values: dict[str, Any], limits: tuple[tuple[str, int], ...]) -> None:
    """Cut strings to their column's length: a partner may send a 300-character PO number, which
    PostgreSQL would refuse. The full value stays in the canonical JSON and the raw bytes."""
    for name, length in limits:
        value = values.get(name)
        if isinstance(value, str) and len(value) > length:
            values[name] = value[:length]


class _Target:
    """What :func:`transition` moves when outcomes are stored in bulk: the document's id and
    attempts, and every field the outcomes set, written back with one UPDATE per value set."""

    def __init__(self, id: int, interchange_id: int, attempts: int) -> None:
        self.id = id
        self.interchange_id = interchange_id
        self.attempts = attempts

    def values(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("id", "interchange_id")}


# A document's new column values and its audit events, by document id.
Planned = dict[int, tuple[_Target, list[dict[str, Any]]]]


def plan_outcomes(results: Any, *, actor: str, now: datetime, retry: RetryPolicy = DEFAULT_RETRY) -> Planned:
    """What storing ``results`` — ``(document, stage, outcome, duration_ms)``, a document's in stage
    order — writes, decided by :func:`transition` without touching the store (``document`` needs
    ``id``, ``interchange_id`` and ``attempts``)."""
    planned: Planned = {}
    texts: dict[int, Any] = {}
    for doc, stage, outcome, duration_ms in results:
        entry = planned.get(doc.id)
        if entry is None:
            entry = planned[doc.id] = (_Target(doc.id, doc.interchange_id, doc.attempts), [])
        target, events = entry
        events.append(transition(target, stage, outcome, actor=actor, duration_ms=duration_ms, now=now, retry=retry,
                                 texts=texts))
        unknown = set(target.values()) - _DOCUMENT_COLUMNS
        if unknown:
            raise ValueError(f"the {stage.value} stage set unknown document fields: {', '.join(sorted(unknown))}")
    return planned


def store_outcomes(conn: Any, planned: Planned) -> int:
    """Write planned outcomes with Core statements on ``conn`` (in the caller's transaction, over
    documents it holds); returns the number of audit events written.

    Not the ORM: this runs for every document at every stage, hundreds a second. Most documents
    of a batch get the same values (ok: next state, no error, no lease): one UPDATE ... IN each;
    those that differ only in their values (a Plex key each) but set the same columns share one
    executemany UPDATE."""
    table = Document.__table__
    updates: dict[Any, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    for doc_id, (target, doc_events) in planned.items():
        events += doc_events
        values = target.values()
        fit_values(values, DOCUMENT_LIMITS)
        try:
            key: Any = tuple(sorted(values.items()))
            hash(key)
        except TypeError:
            key = (("_row", doc_id),)
        group = updates.setdefault(key, {"values": values, "ids": []})
        group["ids"].append(doc_id)
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
        stmt = update(table).where(table.c.id == bindparam("_doc_id")).values(
            {c: bindparam(f"_v_{c}") for c in columns})
        conn.execute(stmt, [{"_doc_id": g["ids"][0], **{f"_v_{c}": g["values"][c] for c in columns}}
                            for g in groups])
    insert_many(conn, Event.__table__, events)
    return len(events)


def reprocess(
    doc: Document,
    *,
    actor: str,
    reason: str,
    from_stage: StageName | None = None,
    now: datetime | None = None,
) -> Event:
    """Send ``doc`` back through the pipeline from the stage it failed at (or ``from_stage``).

    Raises ValueError when the document cannot be reprocessed from there (e.g. it is in flight).
    """
    now = now or utcnow()
    if not reason or not reason.strip():
        raise ValueError("a reason is required to reprocess")
    stage = from_stage
    if stage is None:
        # Nothing recorded (done, ignored, duplicate): start again from translation.
        stage = StageName(doc.stage) if doc.stage in _STAGE_VALUES else StageName.TRANSLATE
    if doc.lease_owner and doc.lease_until and doc.lease_until > now:
        raise ValueError(f"document {doc.id} is being worked on by {doc.lease_owner}; try again shortly")
    previous = doc.state
    doc.state = STATE_BEFORE[stage].value
    doc.stage = stage.value
    doc.error = doc.error_code = None
    doc.attempts = 0
    doc.next_attempt_at = None
    doc.updated_at = now
    return Event(
        document_id=doc.id,
        interchange_id=doc.interchange_id,
        stage=stage.value,
        outcome="reprocess",
        detail=_dump({"reason": reason.strip(), "from_state": previous, "from_stage": stage.value}),
        actor=actor,
        at=now,
    )


def initial_state(translated: bool, ignored: bool) -> tuple[State, StageName | None]:
    """Where a document starts after its interchange is split and translated."""
    if ignored:
        return State.IGNORED, None
    if translated:
        return State.TRANSLATED, StageName.MATCH
    return State.FAILED, StageName.TRANSLATE
