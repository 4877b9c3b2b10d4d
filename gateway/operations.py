"""What an operator does to documents and interchanges: the CLI and the web panel both call these.

* :func:`select_documents` — the documents matching ids and/or filters (partner, kind, state,
  stage, date range), as a query;
* :func:`reprocess_documents` — send a selection back through the pipeline from the stage it
  failed at (or a chosen one), one audit event per document naming the actor and the reason;
* :func:`force_duplicate` — push an interchange recorded as a duplicate through after all.

Bad input is refused with a :class:`ValueError` whose message a person can act on, and then
nothing has changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone

from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select
from sqlmodel import Session, select

from gateway.integrations import DESTINATIONS
from gateway.pipeline.machine import KINDS, LEGACY_STAGES, STATES, DeliveryState, InterchangeState, StageName, reprocess
from gateway.store.db import is_postgres, transaction
from gateway.store.models import Delivery, Document, Event, Interchange, utcnow

__all__ = [
    "KINDS", "ReprocessReport", "Selection", "force_duplicate", "parse_when", "reprocess_documents",
    "retry_interchange", "select_documents",
]

BATCH = 500  # documents per transaction when reprocessing a large selection


def stage_names() -> tuple[str, ...]:
    """Where a document can be, and be sent back to: its steps, then every registered destination."""
    return (*(s.value for s in StageName), *DESTINATIONS)


def stage_name(value: str | None) -> str | None:
    """A stage as operators may name it (``post``, ``forward`` and ``confirm`` as before deliveries)."""
    if value is None:
        return None
    value = LEGACY_STAGES.get(value, value)
    if value not in stage_names():
        raise ValueError(f"unknown stage {value!r}; choose from {', '.join(stage_names())}")
    return value


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


def parse_when(text: str, *, end: bool = False) -> datetime:
    """``2026-11-20`` or ``2026-11-20T09:30[:00][+01:00]`` → an aware datetime (UTC when no zone given).

    A bare date as the end of a range means the end of that day.
    """
    value = text.strip()
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime.combine(d, time.max if end else time.min, tzinfo=timezone.utc)
        return _aware(datetime.fromisoformat(value))
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or date and time (YYYY-MM-DDTHH:MM)") from None


def _check_choice(what: str, value: str | None, choices: Sequence[str]) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")


def select_documents(
    session: Session,
    *,
    ids: Iterable[int] | None = None,
    partner: str | None = None,
    kind: str | None = None,
    state: str | None = None,
    stage: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select:
    """A query for the documents matching every given criterion (dates on ``created_at``), oldest first.

    Raises ValueError for an unknown kind, state or stage, a reversed date range, or ids that name
    no document.
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("state", state, STATES)
    stage = stage_name(stage)
    if since is not None and until is not None and _aware(since) > _aware(until):
        raise ValueError(f"the range is reversed: since {since.isoformat()} is after until {until.isoformat()}")
    stmt = select(Document)
    if ids is not None:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            raise ValueError("no document ids given")
        found = set()
        for chunk in _chunks(wanted, 1000):
            found.update(session.exec(select(Document.id).where(Document.id.in_(chunk))).all())
        missing = [i for i in wanted if i not in found]
        if missing:
            shown = ", ".join(str(i) for i in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ValueError(f"no document with id {shown}")
        stmt = stmt.where(Document.id.in_(wanted))
    if partner is not None:
        stmt = stmt.where(Document.partner == partner)
    if kind is not None:
        stmt = stmt.where(Document.kind == kind)
    if state is not None:
        stmt = stmt.where(Document.state == state)
    if stage is not None:
        stmt = stmt.where(Document.stage == stage)
    if since is not None:
        stmt = stmt.where(Document.created_at >= _aware(since))
    if until is not None:
        stmt = stmt.where(Document.created_at <= _aware(until))
    return stmt.order_by(Document.id)


@dataclass(frozen=True)
class Selection:
    """Documents named by id and/or filter, as the CLI and the panel describe them."""

    ids: tuple[int, ...] = ()
    partner: str | None = None
    kind: str | None = None
    state: str | None = None
    stage: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def empty(self) -> bool:
        return not self.ids and all(v is None for v in (self.partner, self.kind, self.state, self.stage,
                                                        self.since, self.until))

    def query(self, session: Session) -> Select:
        return select_documents(session, ids=self.ids or None, partner=self.partner, kind=self.kind,
                                state=self.state, stage=self.stage, since=self.since, until=self.until)

    def describe(self) -> str:
        parts = []
        if self.ids:
            parts.append("ids " + ", ".join(map(str, self.ids[:10])) + (" …" if len(self.ids) > 10 else ""))
        for name in ("partner", "kind", "state", "stage"):
            if getattr(self, name) is not None:
                parts.append(f"{name} {getattr(self, name)}")
        if self.since is not None:
            parts.append(f"since {self.since.isoformat()}")
        if self.until is not None:
            parts.append(f"until {self.until.isoformat()}")
        return ", ".join(parts) or "every document"


@dataclass
class ReprocessReport:
    """What :func:`reprocess_documents` did: how many were sent back, and which were skipped and why."""

    matched: int = 0
    done: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    document_ids: list[int] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.done} document(s) sent back for reprocessing"
        if self.skipped:
            s += f", {len(self.skipped)} skipped"
        return s


def _chunks(seq: Sequence[int], n: int):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _why_not(doc: Document, deliveries: list[Delivery], from_stage: str | None, now: datetime) -> str | None:
    """Why ``doc`` cannot be reprocessed (from ``from_stage``), or None when it can."""
    if doc.lease_owner and doc.lease_until and _aware(doc.lease_until) > now:
        return f"document {doc.id} is being worked on by {doc.lease_owner}; try again shortly"
    busy = next((d for d in deliveries if d.state == DeliveryState.BATCHED.value
                 or (d.lease_owner and d.lease_until and _aware(d.lease_until) > now)), None)
    if busy is not None:
        return f"document {doc.id} is on its way to {busy.destination}; try again once that is over"
    if from_stage is None or from_stage == StageName.TRANSLATE.value:
        return None  # back to the step or destination it is at or failed at, or from the start
    if from_stage == StageName.MATCH.value:
        if doc.state in ("received", "ignored", "duplicate") or (doc.stage == StageName.TRANSLATE.value):
            return (f"document {doc.id} has not got past translate; it cannot skip ahead to match "
                    "(reprocess it from translate or earlier)")
        return None
    if from_stage not in {d.destination for d in deliveries}:
        reached = doc.stage or StageName.TRANSLATE.value
        return (f"document {doc.id} has not got past {reached}; it cannot skip ahead to {from_stage} "
                f"(reprocess it from {reached} or earlier)")
    return None


def _deliveries(s: Session, ids: Sequence[int]) -> dict[int, list[Delivery]]:
    found: dict[int, list[Delivery]] = {i: [] for i in ids}
    q = select(Delivery).where(Delivery.document_id.in_(list(ids))).order_by(Delivery.id)
    if is_postgres(s.get_bind()):
        q = q.with_for_update()
    for d in s.exec(q).all():
        found[d.document_id].append(d)
    return found


def reprocess_documents(
    engine: Engine,
    selection: Selection | Select | Sequence[int],
    *,
    actor: str,
    reason: str,
    from_stage: StageName | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    now: datetime | None = None,
) -> ReprocessReport:
    """Send the selected documents back through the pipeline; one ``reprocess`` audit event each.

    ``selection`` is a :class:`Selection`, a query from :func:`select_documents` or a list of ids.
    Documents named by id must all be reprocessable, or nothing changes (ValueError). Documents
    matched by a filter that cannot be reprocessed (in flight, never translated) are skipped, each
    with its reason in the report. ``progress(done, total)`` is called after every batch.
    """
    if not reason or not reason.strip():
        raise ValueError("a reason is required to reprocess (say why, for the audit trail)")
    if not actor or not actor.strip():
        raise ValueError("an actor is required to reprocess")
    actor, reason = actor.strip()[:100], reason.strip()
    stage = stage_name(from_stage.value if isinstance(from_stage, StageName) else from_stage)
    if isinstance(selection, Selection) and selection.empty:
        raise ValueError("name the documents to reprocess: ids or at least one filter")
    strict = not isinstance(selection, Select) and (
        not isinstance(selection, Selection) or bool(selection.ids)
    )
    now = now or utcnow()
    with Session(engine) as s:
        if isinstance(selection, Select):
            stmt = selection
        elif isinstance(selection, Selection):
            stmt = selection.query(s)
        else:
            stmt = select_documents(s, ids=list(selection))
        ids = list(s.execute(stmt.with_only_columns(Document.id).order_by(None).order_by(Document.id)).scalars())
    report = ReprocessReport(matched=len(ids))
    if not ids:
        return report
    if strict:
        # Named one by one: every one must go, or none does.
        problems = []
        with Session(engine) as s:
            for chunk in _chunks(ids, BATCH):
                deliveries = _deliveries(s, chunk)
                for doc in s.exec(select(Document).where(Document.id.in_(chunk))).all():
                    why = _why_not(doc, deliveries[doc.id], stage, now)
                    if why:
                        problems.append(why)
        if problems:
            raise ValueError(problems[0] + (f" (and {len(problems) - 1} more refused)" if len(problems) > 1 else "")
                             + "; nothing was changed")
    for chunk in _chunks(ids, BATCH):
        with transaction(engine) as s:
            q = select(Document).where(Document.id.in_(chunk)).order_by(Document.id)
            if is_postgres(engine):
                q = q.with_for_update()
            docs = s.exec(q).all()
            deliveries = _deliveries(s, [d.id for d in docs])
            for doc in docs:
                why = _why_not(doc, deliveries[doc.id], stage, now)
                if why:
                    if strict:  # claimed between the check and now: all or nothing still holds
                        raise ValueError(why + "; nothing was changed")
                    report.skipped.append((doc.id, why))
                    continue
                s.add(reprocess(doc, deliveries[doc.id], actor=actor, reason=reason, from_stage=stage, now=now))
                # An expired claim of a hung worker must not let its late outcome land on the new run.
                doc.lease_owner = doc.lease_until = None
                report.done += 1
                report.document_ids.append(doc.id)
        if progress is not None:
            progress(min(report.done + len(report.skipped), len(ids)), len(ids))
    return report


def _interchange_for_operator(s: Session, interchange_id: int, reason: str) -> Interchange:
    if not reason or not reason.strip():
        raise ValueError("a reason is required (say why, for the audit trail)")
    q = select(Interchange).where(Interchange.id == interchange_id)
    if is_postgres(s.get_bind()):
        q = q.with_for_update()
    ich = s.exec(q).first()
    if ich is None:
        raise ValueError(f"no interchange with id {interchange_id}")
    return ich


def force_duplicate(engine: Engine, interchange_id: int, *, actor: str, reason: str,
                    now: datetime | None = None) -> Interchange:
    """Push an interchange recorded as a duplicate through the pipeline after all (it is split next)."""
    now = now or utcnow()
    with transaction(engine) as s:
        ich = _interchange_for_operator(s, interchange_id, reason)
        if ich.state != InterchangeState.DUPLICATE.value:
            raise ValueError(f"interchange {interchange_id} is not a duplicate (it is {ich.state}); only a "
                             "duplicate can be forced through")
        previous = ich.error
        ich.forced = True
        ich.state = InterchangeState.RECEIVED.value
        ich.error = None
        ich.attempts = 0
        ich.next_attempt_at = ich.lease_owner = ich.lease_until = None
        s.add(Event(interchange_id=ich.id, stage="intake", outcome="forced", actor=actor.strip()[:100] or "operator",
                    at=now, detail=json.dumps({"reason": reason.strip(), "duplicate_of": ich.duplicate_of,
                                               "was": previous}, ensure_ascii=False, sort_keys=True)))
        return ich


def retry_interchange(engine: Engine, interchange_id: int, *, actor: str, reason: str,
                      now: datetime | None = None) -> Interchange:
    """Split a failed interchange again (e.g. after a translator fix); only one that produced no documents.

    An interchange whose documents exist is reprocessed through its documents instead.
    """
    now = now or utcnow()
    with transaction(engine) as s:
        ich = _interchange_for_operator(s, interchange_id, reason)
        if ich.state != InterchangeState.FAILED.value:
            raise ValueError(f"interchange {interchange_id} has not failed (it is {ich.state})")
        has_docs = s.exec(select(Document.id).where(Document.interchange_id == ich.id).limit(1)).first()
        if has_docs is not None:
            raise ValueError(f"interchange {interchange_id} has documents: reprocess those instead "
                             f"(gateway reprocess --from-stage translate ...)")
        previous = ich.error
        ich.state = InterchangeState.RECEIVED.value
        ich.error = None
        ich.next_attempt_at = ich.lease_owner = ich.lease_until = None
        s.add(Event(interchange_id=ich.id, stage="intake", outcome="retry", actor=actor.strip()[:100] or "operator",
                    at=now, detail=json.dumps({"reason": reason.strip(), "was": previous}, ensure_ascii=False,
                                              sort_keys=True)))
        return ich
