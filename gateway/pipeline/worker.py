"""Workers: they drive interchanges, documents, deliveries and batches through the state machine.

A worker loops over four kinds of work, each claimed with a lease so any number of workers, in
any number of processes (PostgreSQL; on SQLite one process, its workers threads), share it without
doing anything twice, the longest-waiting first:

1. **Split** — interchanges in state ``received`` are translated into one document per
   transaction set. The documents, their first audit events, the acknowledgment and the
   interchange's new state (``split``, ``failed`` or ``duplicate``) are committed in one
   transaction, so an interchange is split exactly once or not at all.
2. **Document steps** — documents at ``translate`` (reprocessed) or ``match`` run the step (the
   integration that provides it: ``gateway.integrations.DOCUMENT_STEPS``); a matched document is
   routed: its deliveries are created in the transaction that stores the match.
3. **Deliveries** — due deliveries go to their destination (``gateway.pipeline.deliveries``).
4. **Batches** — due batches are sent or looked at (``gateway.pipeline.batches``).

Steps and destinations run *outside* any transaction (they make HTTP calls) and return outcomes;
the outcomes are stored in one transaction per claim, only for the work whose lease this worker
still holds. A worker that dies leaves leases that expire (``workers.lease_seconds``): the work
comes back to whoever claims next, and the dead worker's late outcome is dropped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
from sqlalchemy import or_, text, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session, select

from gateway.acks_outbound import worst_ack_status
from gateway.integrations.base import Outcome, OutcomeKind
from gateway.logging import get_logger, scrub_text
from gateway.pipeline import batches, deliveries
from gateway.pipeline.machine import (
    DOCUMENT_LIMITS,
    STEP_FROM,
    InterchangeState,
    Planned,
    StageName,
    State,
    fit_values,
    plan_outcomes,
    store_outcomes,
    string_limits,
)
from gateway.pipeline.translation import (
    HELD,
    PARTNER_HOLD_SECONDS,
    envelope_duplicate,
    partner_hold,
    retranslate,
    same_envelope,
    Split,
    split_interchange,
    translation_event_values,
)
from gateway.store.db import (
    insert_many,
    is_conflict,
    is_postgres,
    locked_in_order,
    reader,
    reading,
    retry_conflicts,
    transaction,
)
from gateway.pipeline.wiring import Pipeline
from gateway.retry import Backoff
from gateway.store.models import Batch, Delivery, Document, Event, Interchange, RawPayload, utcnow

__all__ = ["ClaimedDocument", "StageResult", "TranslateStage", "Worker", "describe_exception", "is_transient", "release_leases"]

log = get_logger("gateway.worker")

# The store itself unreachable (connection refused, server restarting): nothing is marked failed for it.
_STORE_DOWN = (OperationalError, InterfaceError)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, TimeoutError, ConnectionError)
_serial = itertools.count(1)


def is_transient(exc: BaseException) -> bool:
    """A fault worth trying again later: marked ``transient = True``, a network fault or a timeout."""
    return bool(getattr(exc, "transient", False)) or isinstance(exc, TRANSIENT_ERRORS)


def describe_exception(exc: BaseException, limit: int = 500) -> str:
    """One line a person can read: the kind of fault and its message, credentials scrubbed, no traceback."""
    message = " ".join(str(exc).split()) or "(no message)"
    line = scrub_text(f"{type(exc).__name__}: {message}")
    return line if len(line) <= limit else line[: limit - 1] + "…"


_ICH_LIMITS = string_limits(Interchange)


def _fit(obj: Any, limits: Iterable[tuple[str, int]]) -> None:
    # As fit_values, on an object: the full values stay in the raw bytes.
    for name, length in limits:
        value = getattr(obj, name, None)
        if isinstance(value, str) and len(value) > length:
            setattr(obj, name, value[:length])


class ClaimedDocument(SimpleNamespace):
    """A claimed document: its columns as attributes, bound to no session. Stages read it; only
    :func:`~gateway.pipeline.machine.transition` decides what is written back. The set's EDI text
    and its findings are for people (the panel), not stages: they are not read with the claim."""


_CLAIMED_COLUMNS = tuple(c for c in Document.__table__.columns if c.name not in ("edi", "findings"))


@dataclass(slots=True)
class StageResult:
    """What running one stage on one claimed document produced, waiting to be applied."""

    document: Document
    stage: StageName
    outcome: Outcome
    duration_ms: float


@dataclass(slots=True)
class _Routed:
    """A matched document as routing reads it: the claimed columns, with what the match changed."""

    document: Any
    target: Any

    @property
    def id(self) -> int:
        return self.document.id

    def __getattr__(self, name: str) -> Any:
        changed = self.target.values()
        return changed[name] if name in changed else getattr(self.document, name)


@dataclass(slots=True)
class _SplitResult:
    interchange: Interchange  # detached, with the envelope fields the translation filled in
    split: Split | None
    error: str | None
    duration_ms: float
    held: str | None = None  # why it waits instead (a mapping file that may be its partner's is broken)


@dataclass
class CycleReport:
    """What one pass of :meth:`Worker.run_once` did (the tests and the logs read it)."""

    split: int = 0
    processed: int = 0  # documents at a step
    delivered: int = 0  # deliveries run
    batches: int = 0  # batches worked
    applied: int = 0
    lost: int = 0  # outcomes dropped because another worker had taken the lease
    released: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.split or self.processed or self.delivered or self.batches)


class TranslateStage:
    """The ``translate`` step for documents sent back to it (reprocess): re-read the raw bytes.

    Given every claimed document at once, so documents of one interchange reprocessed together cost
    one translation.
    """

    def __call__(self, docs: list[Document], runtime: Any) -> dict[int, Outcome]:
        from translators.translate import translate

        out: dict[int, Outcome] = {}
        by_interchange: dict[int, list[Document]] = {}
        for d in docs:
            by_interchange.setdefault(d.interchange_id, []).append(d)
        partners = runtime.partners()
        with reading(runtime.engine) as s:
            for ich_id, group in by_interchange.items():
                ich = s.get(Interchange, ich_id)
                raw = _raw_bytes(s, ich) if ich is not None else None
                if raw is None:
                    for d in group:
                        out[d.id] = Outcome.fail(f"the raw bytes of interchange {ich_id} are missing",
                                                 code="translate.raw_missing")
                    continue
                try:
                    result = translate(raw, partners, source=ich.remote_name)
                except Exception as exc:  # noqa: BLE001 - a translator bug fails these documents, not the worker
                    log.exception("retranslate_crashed", interchange=ich_id)
                    for d in group:
                        out[d.id] = Outcome.fail(f"translation crashed: {describe_exception(exc)}",
                                                 code="translate.crashed")
                    continue
                for d in group:
                    out[d.id] = retranslate(d, raw, partners, source=ich.remote_name, result=result)
        return out


def _raw_bytes(session: Session, ich: Interchange) -> bytes | None:
    """The stored bytes; a content duplicate forced through may fall back to its original's."""
    seen: set[int] = set()
    current: Interchange | None = ich
    while current is not None and current.id not in seen:
        seen.add(current.id)
        payload = session.get(RawPayload, current.id)
        if payload is not None:
            return bytes(payload.data)
        current = session.get(Interchange, current.duplicate_of) if current.duplicate_of else None
    return None


@dataclass
class Worker:
    """One worker: call :meth:`run` in a thread (or :meth:`run_once` / :meth:`run_until_idle` in tests).

    ``pipeline`` holds the document steps and destinations this worker runs (by default those the
    runtime's settings configure, found through the registry); ``translate`` is always available.
    """

    runtime: Any
    pipeline: Pipeline | None = None
    name: str | None = None
    clock: Callable[[], datetime] = utcnow
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        ws = self.runtime.settings.workers
        self.engine = self.runtime.engine
        self.batch_size = ws.batch_size
        self.interchange_batch = max(1, ws.batch_size // 10)
        self.lease = timedelta(seconds=ws.lease_seconds)
        self.idle_seconds = ws.idle_seconds
        self.retry = Backoff(attempts=ws.max_attempts, initial=ws.backoff_initial, maximum=ws.backoff_max)
        self.wait = Backoff(attempts=1, initial=min(1.0, ws.wait_max_seconds), maximum=ws.wait_max_seconds)
        if self.pipeline is None:
            self.pipeline = Pipeline.configure(self.runtime)
        self.steps: dict[StageName, Callable] = {StageName.TRANSLATE: TranslateStage()}
        for name, step in self.pipeline.steps.items():
            self.steps[StageName(name)] = step
        if self.name is None:
            self.name = f"{self.runtime.instance}/w{next(_serial)}"
        self.name = self.name[:100]
        self.postgres = is_postgres(self.engine)
        self.log = log.bind(worker=self.name)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Work until ``stop`` is set; then release whatever is still claimed."""
        if stop is not None:
            self.stop_event = stop
        stop = self.stop_event
        self.log.info("worker_started", steps=sorted(s.value for s in self.steps),
                      destinations=sorted(self.pipeline.destinations))
        try:
            while not stop.is_set():
                try:
                    report = self.run_once()
                except Exception:  # noqa: BLE001 - the store went away, say: log, wait, try again
                    self.log.exception("worker_cycle_failed")
                    stop.wait(max(self.idle_seconds, 1.0))
                    continue
                if not report.busy:
                    stop.wait(self.idle_seconds)
        finally:
            try:
                released = release_leases(self.engine, self.name)
                self.log.info("worker_stopped", released=released)
            except Exception:  # noqa: BLE001 - shutting down: the leases expire anyway
                self.log.exception("worker_release_failed")

    def run_once(self) -> CycleReport:
        """Split what is waiting, then one claim of document steps, of deliveries and of batches."""
        report = CycleReport()
        report.split = self.split_interchanges()
        if self.stop_event.is_set():
            return report
        docs = self.claim_documents()
        if docs:
            report.processed = len(docs)
            results, unprocessed = self.run_stages(docs)
            applied, lost = self.apply(results)
            report.applied, report.lost = applied, lost
            if unprocessed:
                report.released = self.release(unprocessed)
        if self.stop_event.is_set():
            return report
        claimed = deliveries.claim_deliveries(self, self.batch_size)
        if claimed:
            report.delivered = len(claimed)
            results = deliveries.deliver(self, claimed)
            applied, lost = self.store_deliveries(results)
            report.applied += applied
            report.lost += lost
        if not self.stop_event.is_set():
            report.batches = batches.run_batches(self)
        return report

    def run_until_idle(self, max_cycles: int = 10_000) -> CycleReport:
        """Run cycles until nothing is left to do now (work waiting for a later time stays); for tests."""
        total = CycleReport()
        for _ in range(max_cycles):
            r = self.run_once()
            total.split += r.split
            total.processed += r.processed
            total.delivered += r.delivered
            total.batches += r.batches
            total.applied += r.applied
            total.lost += r.lost
            if not r.busy:
                return total
        raise RuntimeError(f"worker still busy after {max_cycles} cycles")

    # -- splitting interchanges ---------------------------------------------------------------------

    def split_interchanges(self) -> int:
        """Claim interchanges waiting in ``received``; split each and commit it atomically at once, so
        its documents move on while the next is translated (and no write lock is held for long)."""
        claimed = self._claim(Interchange, [Interchange.state == InterchangeState.RECEIVED.value], self.interchange_batch)
        for ich in claimed:
            result = self._split_one(ich)
            if result.held:
                self._hold(result)
            else:
                self._commit_split(result)
        return len(claimed)

    def _split_one(self, ich: Interchange) -> _SplitResult:
        t0 = time.perf_counter()
        try:
            with reading(self.engine) as s:
                raw = _raw_bytes(s, ich)
            if raw is None:
                return _SplitResult(ich, None, f"the raw bytes of interchange {ich.id} are missing", 0.0)
            split = split_interchange(ich, raw, self.runtime.partners(), now=self.clock(), actor=self.name)
            took = (time.perf_counter() - t0) * 1000
            return _SplitResult(ich, split, None, took, held=partner_hold(ich, self.runtime.partner_problems()))
        except Exception as exc:  # noqa: BLE001 - a translator bug fails this interchange, not the worker
            self.log.exception("split_crashed", interchange=ich.id)
            return _SplitResult(ich, None, f"translation crashed: {describe_exception(exc)}",
                                (time.perf_counter() - t0) * 1000)

    def _hold(self, r: _SplitResult) -> None:
        """Leave the interchange in ``received`` to be split again later, saying why (logged once)."""
        now = self.clock()
        with transaction(self.engine) as s:
            row = s.exec(select(Interchange).where(Interchange.id == r.interchange.id,
                                                   Interchange.lease_owner == self.name).with_for_update()).first()
            if row is None:
                return
            first = not (row.error or "").startswith(HELD)
            row.error, row.next_attempt_at = r.held, now + timedelta(seconds=PARTNER_HOLD_SECONDS)
            row.lease_owner = row.lease_until = None
        if first:
            self.log.warning("interchange_held", interchange=r.interchange.id, reason=r.held)

    def _commit_split(self, r: _SplitResult) -> None:
        """Store one split; if the store refuses it, once more from a fresh split (objects of a
        rolled-back transaction cannot be added again); failing that, fail the interchange saying why."""
        error = "the split could not be stored"
        for fresh in (False, True):
            try:
                attempt = self._split_one(r.interchange) if fresh and r.split is not None else r
                with transaction(self.engine) as s:
                    self._store_split(s, attempt)
                return
            except _STORE_DOWN:
                # The store itself is unreachable: leave the lease to expire and the split to be redone.
                self.log.exception("split_store_unavailable", interchange=r.interchange.id)
                return
            except Exception as exc:  # noqa: BLE001 - e.g. a value the store refuses
                self.log.exception("split_store_failed", interchange=r.interchange.id)
                error = f"the split could not be stored: {describe_exception(exc)}"
        try:
            with transaction(self.engine) as s:
                self._store_split(s, _SplitResult(r.interchange, None, error, r.duration_ms))
        except Exception:  # noqa: BLE001 - leave it leased; it comes back when the lease expires
            self.log.exception("split_failure_not_recorded", interchange=r.interchange.id)

    def _store_split(self, s: Session, r: _SplitResult) -> bool:
        now = self.clock()
        src = r.interchange
        row = s.exec(
            select(Interchange)
            .where(Interchange.id == src.id, Interchange.lease_owner == self.name, Interchange.state == InterchangeState.RECEIVED.value)
            .with_for_update()
        ).first()
        if row is None:
            self.log.warning("split_lease_lost", interchange=src.id)
            return False
        row.lease_owner = row.lease_until = None
        if r.split is None:
            row.state, row.error = InterchangeState.FAILED.value, r.error
            row.attempts += 1
            s.add(self._interchange_event(row, "fail", {"error": r.error}, now, r.duration_ms))
            return True
        for name in ("standard", "sender_qualifier", "sender_id", "receiver_qualifier", "receiver_id",
                     "control_number", "partner", "findings"):
            setattr(row, name, getattr(src, name))
        _fit(row, _ICH_LIMITS)
        if not row.forced:
            original = self._envelope_original(s, row)
            if original is not None:
                row.state = InterchangeState.DUPLICATE.value
                row.duplicate_of = original.id
                row.document_count = 0
                row.error = (
                    f"duplicate of interchange {original.id}: same sender {row.sender_id}, receiver "
                    f"{row.receiver_id} and control number {row.control_number}"
                )
                s.add(self._interchange_event(row, "duplicate", {"duplicate_of": original.id, "error": row.error},
                                              now, r.duration_ms))
                return True
        split = r.split
        if split.rows:
            # Core inserts: a file may hold thousands of sets.
            conn = s.connection()
            table = Document.__table__
            rows = []
            for d in split.rows:  # columns left out take their defaults
                values = dict(d)
                fit_values(values, DOCUMENT_LIMITS)
                rows.append(values)
            # No RETURNING (a multi-row INSERT ... RETURNING costs several times more on PostgreSQL):
            # the ids are read back by position, (interchange, position) being unique.
            insert_many(conn, table, rows)
            ids = dict(conn.execute(select(table.c.position, table.c.id).where(table.c.interchange_id == row.id)).all())
            per_doc = r.duration_ms / len(split.rows)
            events = [translation_event_values(ids[d["position"]], d, actor=self.name, now=now, duration_ms=per_doc)
                      for d in split.rows]
            insert_many(conn, Event.__table__, events)
        row.document_count = len(split.rows)
        row.state = (InterchangeState.FAILED if split.failed else InterchangeState.SPLIT).value
        row.error = split.error
        row.attempts += 1
        acks = split.acknowledgments
        row.ack = "\n".join(a.text for a in acks) or None
        row.ack_kind = "+".join(dict.fromkeys(a.kind for a in acks))[:10] or None
        row.ack_status = worst_ack_status(acks)
        counts: dict[str, int] = {}
        for d in split.rows:
            counts[d["state"]] = counts.get(d["state"], 0) + 1
        detail: dict[str, Any] = {"documents": len(split.rows), "states": counts}
        if split.error:
            detail["error"] = split.error
        if row.ack_kind:
            detail["acknowledgment"] = row.ack_kind
        s.add(self._interchange_event(row, "fail" if split.failed else "ok", detail, now, r.duration_ms))
        return True

    def _envelope_original(self, s: Session, row: Interchange) -> Interchange | None:
        """The interchange this one repeats (same sender, receiver and control number), if any."""
        if not (row.sender_id and row.control_number):
            return None
        if self.postgres:
            # Two workers splitting the same envelope at once must not both find "no earlier one".
            key = "|".join((row.sender_id or "", row.receiver_id or "", row.control_number or ""))
            k = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
            s.connection().execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": k})
        earlier = envelope_duplicate(s, row)
        if earlier is not None:
            return earlier
        # A later copy may have been split first (the earlier one's envelope was not known yet).
        return s.exec(
            select(Interchange)
            .where(*same_envelope(row), Interchange.state == InterchangeState.SPLIT.value)
            .order_by(Interchange.id)
            .limit(1)
        ).first()

    def _interchange_event(self, row: Interchange, outcome: str, detail: Mapping[str, Any], now: datetime,
                           duration_ms: float | None) -> Event:
        return Event(interchange_id=row.id, stage=StageName.TRANSLATE.value, outcome=outcome,
                     detail=json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str),
                     actor=self.name, at=now, duration_ms=duration_ms, attempt=row.attempts or None)

    # -- document steps -----------------------------------------------------------------------------

    def claim_documents(self, limit: int | None = None) -> list[Document]:
        """Lease up to ``limit`` documents at a step (detached copies), the longest waiting first.

        Without a ``match`` step (no integration provides one) translated documents are routed as
        they are; with no destination configured either, they wait at translated."""
        states = [State.RECEIVED.value]
        if StageName.MATCH in self.steps or self.pipeline.destinations:
            states.append(State.TRANSLATED.value)  # with nowhere to go, they wait at translated
        return self._claim(Document, [Document.state.in_(states)], limit or self.batch_size)

    def run_stages(self, docs: Sequence[Document]) -> tuple[list[StageResult], list[Document]]:
        """Run each document's step, outside any transaction; returns the results and what was not run
        (the worker was asked to stop)."""
        groups: dict[StageName, list[Document]] = {}
        for d in docs:
            groups.setdefault(STEP_FROM[State(d.state)], []).append(d)
        results: list[StageResult] = []
        pending = list(docs)
        for step in (StageName.TRANSLATE, StageName.MATCH):
            group = groups.get(step)
            if not group or self.stop_event.is_set():
                continue
            fn = self.steps.get(step)
            if fn is None:  # nothing provides it: the documents go on as they are
                passed = Outcome.ok({step.value: "no integration provides this step"})
                results += [StageResult(d, step, passed, 0.0) for d in group]
            else:
                results += self._run_step(step, fn, group)
            done = {d.id for d in group}
            pending = [d for d in pending if d.id not in done]
        return results, pending

    def _run_step(self, step: StageName, fn: Callable, docs: list[Document]) -> list[StageResult]:
        t0 = time.perf_counter()
        try:
            outcomes = fn(list(docs), self.runtime) or {}
            missing = Outcome.fail(f"the {step.value} step gave no outcome for this document", code="stage.no_outcome")
        except Exception as exc:  # noqa: BLE001
            if len(docs) > 1:  # one document's fault is not the others': each alone, then
                return [r for d in docs for r in self._run_step(step, fn, [d])]
            outcomes, missing = {}, self.outcome_of(exc, step.value, [d.id for d in docs])
        each = (time.perf_counter() - t0) * 1000 / max(1, len(docs))
        results = []
        for d in docs:
            outcome = outcomes.get(d.id, missing)
            if not isinstance(outcome, Outcome):
                outcome = Outcome.fail(f"the {step.value} step returned {type(outcome).__name__}, not an outcome",
                                       code="stage.bad_result")
            results.append(StageResult(d, step, outcome, each))
        return results

    def outcome_of(self, exc: BaseException, where: str, ids: list[int]) -> Outcome:
        """A fault raised by a step or a destination as the outcome of what it was given."""
        error = describe_exception(exc)
        if is_transient(exc):
            self.log.warning("transient_fault", at=where, documents=ids[:20], error=error)
            return Outcome.retry(error, code=getattr(exc, "code", None) or "stage.transient",
                                 after=getattr(exc, "retry_after", None))
        self.log.error("crashed", at=where, documents=ids[:20], error=error, exc_info=exc)
        return Outcome.fail(f"{where} failed: {error}", code=getattr(exc, "code", None) or "stage.error")

    def apply(self, results: Sequence[StageResult]) -> tuple[int, int]:
        """Store step outcomes in one transaction, only where our lease still holds; (applied, lost)."""
        if not results:
            return 0, 0
        try:
            return retry_conflicts(lambda: self._apply_all(results))
        except _STORE_DOWN as exc:
            if not is_conflict(exc):
                self.log.exception("apply_store_unavailable", documents=len(results))
                return 0, 0
            self.log.exception("apply_batch_failed", documents=len(results))
        except Exception:  # noqa: BLE001 - find the outcome that cannot be stored; the others go on
            self.log.exception("apply_batch_failed", documents=len(results))
        applied = lost = 0
        for r in results:
            try:
                a, lo = retry_conflicts(lambda: self._apply_all([r]))  # noqa: B023 - called at once
            except _STORE_DOWN:
                self.log.exception("apply_store_unavailable", document=r.document.id)
                a = lo = 0  # still leased: tried again once the lease expires
            except Exception as exc:  # noqa: BLE001
                self.log.exception("apply_failed", document=r.document.id, stage=r.stage.value)
                fallback = StageResult(r.document, r.stage, Outcome.fail(
                    f"the outcome of {r.stage.value} could not be stored: {describe_exception(exc)}",
                    code="stage.store_failed"), r.duration_ms)
                try:
                    a, lo = self._apply_all([fallback])
                except Exception:  # noqa: BLE001 - leave it leased: it is tried again after expiry
                    self.log.exception("apply_fallback_failed", document=r.document.id)
                    a = lo = 0
            applied += a
            lost += lo
        return applied, lost

    def _apply_all(self, results: Sequence[StageResult]) -> tuple[int, int]:
        planned = self._plan(results)
        with transaction(self.engine) as s:
            return self._write(s, results, planned)

    def _plan(self, results: Sequence[StageResult]) -> Planned:
        """Decided before the transaction: on SQLite the write lock is held only for the statements,
        not for this work (the attempts counted from are the claimed ones: nobody else writes a
        document while we hold its lease)."""
        return plan_outcomes(((r.document, r.stage, r.outcome, round(r.duration_ms, 3)) for r in results),
                             actor=self.name, now=self.clock(), retry=self.retry)

    def _write(self, s: Session, results: Sequence[StageResult], planned: Planned) -> tuple[int, int]:
        """Store the planned outcomes of the documents whose lease this worker still holds, and route
        those that were matched."""
        table = Document.__table__
        q = select(table.c.id).where(table.c.id.in_(list(planned)), table.c.lease_owner == self.name)
        if self.postgres:
            # In id order, as every statement updating many documents locks them (store.locked_in_order).
            q = q.order_by(table.c.id).with_for_update()
        held = set(s.execute(q).scalars())
        lost = 0
        for r in results:
            if r.document.id not in held:
                lost += 1
                self.log.warning("outcome_dropped_lease_lost", document=r.document.id, stage=r.stage.value,
                                 outcome=r.outcome.kind.value)
        conn = s.connection()
        written = store_outcomes(conn, {doc_id: p for doc_id, p in planned.items() if doc_id in held})
        matched = [_Routed(r.document, planned[r.document.id][0]) for r in results
                   if r.document.id in held and r.stage is StageName.MATCH and r.outcome.kind is OutcomeKind.OK]
        if matched:
            deliveries.route_documents(conn, matched, routes=self.runtime.settings.routing,
                                       configured=self.pipeline.destinations, partners=self.runtime.partners(),
                                       now=self.clock())
        return written, lost

    def store_deliveries(self, results: Sequence[Any]) -> tuple[int, int]:
        """Store delivery outcomes in one transaction (see :func:`gateway.pipeline.deliveries.store_delivery_results`)."""
        if not results:
            return 0, 0

        def store() -> tuple[int, int]:
            with transaction(self.engine) as s:
                return deliveries.store_delivery_results(self, s, results)
        try:
            return retry_conflicts(store)
        except _STORE_DOWN:
            self.log.exception("deliveries_store_unavailable", deliveries=len(results))
            return 0, 0

    # -- leases -------------------------------------------------------------------------------------

    def _claim(self, model, where: list, limit: int) -> list:
        # One statement: pick (skipping rows another worker has locked), lease, and return them.
        now = self.clock()
        until = now + self.lease
        free = or_(model.lease_until.is_(None), model.lease_until < now)
        due = or_(model.next_attempt_at.is_(None), model.next_attempt_at <= now)
        # Most cycles find nothing new: ask a reader first, so an empty claim takes no write lock
        # (SQLite) and writes nothing (PostgreSQL).
        with reader(self.engine).connect() as conn:
            if conn.execute(select(model.id).where(*where, free, due).limit(1)).first() is None:
                return []
        # Fair: the longest waiting first (documents are due from when they became ready), not by id alone.
        order = (model.id,) if model is Interchange else (model.next_attempt_at, model.id)
        pick = select(model.id).where(*where, free, due).order_by(*order).limit(limit)
        if self.postgres:
            pick = pick.with_for_update(skip_locked=True)
        claim = update(model).where(model.id.in_(pick)).values(lease_owner=self.name, lease_until=until)
        if model is Document:
            # Documents are claimed by the hundred at every step: the lease is one UPDATE in a short
            # write transaction, the columns are read after it (ours now: nobody else writes them) as
            # plain values, no ORM objects.
            with transaction(self.engine) as s:
                ids = s.connection().execute(claim.returning(model.id)).scalars().all()
            if not ids:
                return []
            table = Document.__table__
            with reader(self.engine).connect() as conn:
                found = conn.execute(select(*_CLAIMED_COLUMNS).where(table.c.id.in_(ids)).order_by(table.c.id))
                return [ClaimedDocument(**row) for row in found.mappings()]
        with transaction(self.engine) as s:
            rows = list(s.execute(claim.returning(model), execution_options={"synchronize_session": False}).scalars())
            for r in rows:
                s.expunge(r)
        rows.sort(key=lambda r: r.id)
        return rows

    def _mine(self, ids: list[int]) -> Any:
        table = Document.__table__
        return locked_in_order(table, table.c.id.in_(ids), table.c.lease_owner == self.name)

    def _renew(self, ids: list[int]) -> None:
        if not ids:
            return
        until = self.clock() + self.lease
        with transaction(self.engine) as s:
            s.execute(update(Document).where(self._mine(ids)).values(lease_until=until),
                      execution_options={"synchronize_session": False})

    def release(self, docs: Sequence[Document]) -> int:
        """Give claimed documents back unprocessed (shutting down)."""
        ids = [d.id for d in docs]
        if not ids:
            return 0
        with transaction(self.engine) as s:
            res = s.execute(update(Document).where(self._mine(ids)).values(lease_owner=None, lease_until=None),
                            execution_options={"synchronize_session": False})
            return res.rowcount or 0


def release_leases(engine, owner: str) -> int:
    """Release every interchange, document, delivery and batch ``owner`` still holds (a clean shutdown)."""
    n = 0
    with transaction(engine) as s:
        for model in (Interchange, Document, Delivery, Batch):
            res = s.execute(update(model).where(model.lease_owner == owner).values(lease_owner=None, lease_until=None),
                            execution_options={"synchronize_session": False})
            n += res.rowcount or 0
    return n


def run_workers(runtime: Any, stop: threading.Event, *, count: int | None = None,
                pipeline: Pipeline | None = None) -> list[threading.Thread]:
    """Start ``count`` worker threads (default ``workers.count``) sharing ``stop`` and one pipeline
    (one set of clients per process); returns the threads."""
    count = runtime.settings.workers.count if count is None else count
    if pipeline is None:
        pipeline = Pipeline.configure(runtime)
    threads = []
    for n in range(count):
        w = Worker(runtime, pipeline=pipeline, stop_event=stop)
        t = threading.Thread(target=w.run, args=(stop,), name=f"worker-{n + 1}", daemon=True)
        t.start()
        threads.append(t)
    return threads
