"""Workers: they drive interchanges and documents through the state machine, from the store.

A worker loops over two kinds of work, each claimed with a lease so any number of workers, in
any number of processes, share it without doing anything twice:

1. **Split** — interchanges in state ``received`` are translated into one document per
   transaction set. The documents, their first audit events, the acknowledgment and the
   interchange's new state (``split``, ``failed`` or ``duplicate``) are committed in one
   transaction, so an interchange is split exactly once or not at all.
2. **Stages** — documents in a working state whose stage is registered (``gateway.delivery``
   provides them; ``translate`` is here) are claimed a batch at a time, the stage runs *outside*
   any transaction (stages make HTTP calls), and the outcomes are applied with
   :func:`~gateway.pipeline.machine.apply_outcome` in one transaction per batch — only for the
   documents whose lease this worker still holds.

Claims take ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the ``BEGIN IMMEDIATE`` write lock
serialises them. A worker that dies leaves leases that expire (``workers.lease_seconds``): the
work comes back to whoever claims next, and the dead worker's late outcome, if it ever arrives,
is dropped because its lease is gone.
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
from gateway.logging import get_logger, scrub_text
from gateway.pipeline.machine import (
    CHAINED,
    DOCUMENT_LIMITS,
    PATH,
    STAGE_FROM,
    STAGE_TO,
    STATE_BEFORE,
    Outcome,
    OutcomeKind,
    RetryPolicy,
    StageName,
    Planned,
    State,
    fit_values,
    is_batch,
    plan_outcomes,
    settler,
    store_outcomes,
    string_limits,
)
from gateway.pipeline.translation import (
    Split,
    envelope_duplicate,
    retranslate,
    same_envelope,
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
from gateway.store.models import Document, Event, Interchange, RawPayload, utcnow

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
class _SplitResult:
    interchange: Interchange  # detached, with the envelope fields the translation filled in
    split: Split | None
    error: str | None
    duration_ms: float


@dataclass
class CycleReport:
    """What one pass of :meth:`Worker.run_once` did (the tests and the logs read it)."""

    split: int = 0
    processed: int = 0
    applied: int = 0
    lost: int = 0  # outcomes dropped because another worker had taken the lease
    released: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.split or self.processed)


class TranslateStage:
    """The ``translate`` stage for documents sent back to it (reprocess): re-read the raw bytes.

    A batch stage, so documents of one interchange reprocessed together cost one translation.
    """

    batch = True

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


def _advanced(result: StageResult, state: State, stage: StageName) -> ClaimedDocument:
    """The claimed document as its successful stage left it, for the next stage on the same claim."""
    values = dict(vars(result.document))
    values.update(result.outcome.changes)
    values.update(state=state.value, stage=stage.value, error=None, error_code=None, attempts=0)
    return ClaimedDocument(**values)


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

    ``stages`` maps a :class:`StageName` to ``stage(doc, runtime) -> Outcome`` (or, marked
    ``batch = True``, ``stage(docs, runtime) -> {doc_id: Outcome}``); by default
    ``gateway.delivery.build_stages(runtime)``. ``translate`` is always available.
    """

    runtime: Any
    stages: Mapping[Any, Callable] | None = None
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
        self.retry = RetryPolicy(max_attempts=ws.max_attempts, initial=ws.backoff_initial, maximum=ws.backoff_max)
        if self.stages is None:
            from gateway.delivery import build_stages

            self.stages = build_stages(self.runtime)
        stages = {StageName(k): v for k, v in dict(self.stages).items()}
        stages.setdefault(StageName.TRANSLATE, TranslateStage())
        self.stages = stages
        if self.name is None:
            self.name = f"{self.runtime.instance}/w{next(_serial)}"
        self.name = self.name[:100]
        self.postgres = is_postgres(self.engine)
        # The states a document must be in for one of our stages to run on it, in pipeline order.
        self.claimable = [STATE_BEFORE[s].value for _, s, _ in PATH if s in stages]
        self.log = log.bind(worker=self.name)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Work until ``stop`` is set; then release whatever is still claimed."""
        if stop is not None:
            self.stop_event = stop
        stop = self.stop_event
        self.log.info("worker_started", stages=sorted(s.value for s in self.stages))
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
        """Split what is waiting, then run one batch of document stages."""
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
        return report

    def run_until_idle(self, max_cycles: int = 10_000) -> CycleReport:
        """Run cycles until nothing is left to do now (documents waiting for a later retry stay); for tests."""
        total = CycleReport()
        for _ in range(max_cycles):
            r = self.run_once()
            total.split += r.split
            total.processed += r.processed
            total.applied += r.applied
            total.lost += r.lost
            if not r.busy:
                return total
        raise RuntimeError(f"worker still busy after {max_cycles} cycles")

    # -- splitting interchanges ---------------------------------------------------------------------

    def split_interchanges(self) -> int:
        """Claim interchanges waiting in ``received``; split each and commit it atomically at once, so
        its documents move on while the next is translated (and no write lock is held for long)."""
        claimed = self._claim(Interchange, [Interchange.state == "received"], self.interchange_batch)
        for ich in claimed:
            self._commit_split(self._split_one(ich))
        return len(claimed)

    def _split_one(self, ich: Interchange) -> _SplitResult:
        t0 = time.perf_counter()
        try:
            with reading(self.engine) as s:
                raw = _raw_bytes(s, ich)
            if raw is None:
                return _SplitResult(ich, None, f"the raw bytes of interchange {ich.id} are missing", 0.0)
            split = split_interchange(ich, raw, self.runtime.partners(), now=self.clock(), actor=self.name)
            return _SplitResult(ich, split, None, (time.perf_counter() - t0) * 1000)
        except Exception as exc:  # noqa: BLE001 - a translator bug fails this interchange, not the worker
            self.log.exception("split_crashed", interchange=ich.id)
            return _SplitResult(ich, None, f"translation crashed: {describe_exception(exc)}",
                                (time.perf_counter() - t0) * 1000)

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
            .where(Interchange.id == src.id, Interchange.lease_owner == self.name, Interchange.state == "received")
            .with_for_update()
        ).first()
        if row is None:
            self.log.warning("split_lease_lost", interchange=src.id)
            return False
        row.lease_owner = row.lease_until = None
        if r.split is None:
            row.state, row.error = "failed", r.error
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
                row.state = "duplicate"
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
        row.state = "failed" if split.failed else "split"
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
            .where(*same_envelope(row), Interchange.state == "split")
            .order_by(Interchange.id)
            .limit(1)
        ).first()

    def _interchange_event(self, row: Interchange, outcome: str, detail: Mapping[str, Any], now: datetime,
                           duration_ms: float | None) -> Event:
        return Event(interchange_id=row.id, stage=StageName.TRANSLATE.value, outcome=outcome,
                     detail=json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str),
                     actor=self.name, at=now, duration_ms=duration_ms, attempt=row.attempts or None)

    # -- document stages ----------------------------------------------------------------------------

    def claim_documents(self, limit: int | None = None) -> list[Document]:
        """Lease up to ``limit`` documents that one of our stages can run on now (detached copies)."""
        if not self.claimable:
            return []
        return self._claim(Document, [Document.state.in_(self.claimable)], limit or self.batch_size)

    def run_stages(self, docs: Sequence[Document]) -> tuple[list[StageResult], list[Document]]:
        """Run each document's stage, outside any transaction; returns the results and what was not run.

        Documents are left unrun when the worker is asked to stop; their leases are renewed while a
        long batch runs so no other worker takes them meanwhile.
        """
        groups: dict[StageName, list[Document]] = {}
        for d in docs:
            groups.setdefault(STAGE_FROM[State(d.state)], []).append(d)
        results: list[StageResult] = []
        pending = list(docs)
        renewed_at = time.monotonic()
        for _, stage, _ in PATH:
            group = groups.get(stage)
            if not group:
                continue
            fn = self.stages[stage]
            if self.stop_event.is_set():
                break
            if is_batch(fn):
                ran = self._run_batch(stage, fn, group)
                results += ran
                done = {d.id for d in group}
                pending = [d for d in pending if d.id not in done]
            else:
                ran = []
                for d in group:
                    if self.stop_event.is_set():
                        break
                    if time.monotonic() - renewed_at > self.lease.total_seconds() / 2:
                        self._renew([p.id for p in pending])
                        renewed_at = time.monotonic()
                    ran.append(self._run_one(stage, fn, d))
                    pending = [p for p in pending if p.id != d.id]
                results += ran
            following = STAGE_TO[stage]
            nxt = STAGE_FROM.get(following)
            if nxt in CHAINED and nxt in self.stages:
                groups.setdefault(nxt, []).extend(_advanced(r, following, nxt) for r in ran
                                                  if r.outcome.kind is OutcomeKind.OK)
        return results, pending

    def _run_one(self, stage: StageName, fn: Callable, doc: Document) -> StageResult:
        t0 = time.perf_counter()
        try:
            outcome = fn(doc, self.runtime)
            if not hasattr(outcome, "kind"):
                outcome = Outcome.fail(f"the {stage.value} stage returned {type(outcome).__name__}, not an outcome",
                                       code="stage.bad_result")
        except Exception as exc:  # noqa: BLE001 - every fault becomes the document's outcome
            outcome = self._outcome_of(exc, stage, [doc.id])
        return StageResult(doc, stage, outcome, (time.perf_counter() - t0) * 1000)

    def _run_batch(self, stage: StageName, fn: Callable, docs: list[Document]) -> list[StageResult]:
        t0 = time.perf_counter()
        try:
            outcomes = fn(list(docs), self.runtime) or {}
            missing = Outcome.fail(f"the {stage.value} stage gave no outcome for this document", code="stage.no_outcome")
        except Exception as exc:  # noqa: BLE001
            outcomes, missing = {}, self._outcome_of(exc, stage, [d.id for d in docs])
        each = (time.perf_counter() - t0) * 1000 / max(1, len(docs))
        return [StageResult(d, stage, outcomes.get(d.id, missing), each) for d in docs]

    def _outcome_of(self, exc: BaseException, stage: StageName, ids: list[int]) -> Outcome:
        error = describe_exception(exc)
        if is_transient(exc):
            self.log.warning("stage_transient_fault", stage=stage.value, documents=ids[:20], error=error)
            return Outcome.retry(error, code=getattr(exc, "code", None) or "stage.transient",
                                 after=getattr(exc, "retry_after", None))
        self.log.error("stage_crashed", stage=stage.value, documents=ids[:20], error=error, exc_info=exc)
        return Outcome.fail(f"the {stage.value} stage failed: {error}", code=getattr(exc, "code", None) or "stage.error")

    def apply(self, results: Sequence[StageResult]) -> tuple[int, int]:
        """Apply outcomes in one transaction, only where our lease still holds; (applied, lost)."""
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
        per_document: dict[int, list[StageResult]] = {}
        for r in results:
            per_document.setdefault(r.document.id, []).append(r)
        for doc_id, chain in per_document.items():
            # A document's results go together (the first releases the lease the next needs); failing
            # that, the first stage's alone (a later stage's work is found again when it reruns).
            first = chain[0]
            attempts = [chain, chain[:1]] if len(chain) > 1 else [chain]
            for n, attempt in enumerate(attempts):
                try:
                    a, lo = retry_conflicts(lambda: self._apply_all(attempt))  # noqa: B023 - called at once
                    break
                except _STORE_DOWN:
                    self.log.exception("apply_store_unavailable", document=doc_id)
                    a = lo = 0
                    break  # still leased: tried again once the lease expires
                except Exception as exc:  # noqa: BLE001
                    self.log.exception("apply_failed", document=doc_id, stage=attempt[-1].stage.value)
                    if n + 1 < len(attempts):
                        continue
                    fallback = StageResult(first.document, first.stage, Outcome.fail(
                        f"the outcome of {first.stage.value} could not be stored: {describe_exception(exc)}",
                        code="stage.store_failed"), first.duration_ms)
                    try:
                        with transaction(self.engine) as s:
                            a, lo = self._apply(s, [fallback])
                    except Exception:  # noqa: BLE001 - leave it leased: it is tried again after expiry
                        self.log.exception("apply_fallback_failed", document=doc_id)
                        a = lo = 0
            applied += a
            lost += lo
        return applied, lost

    def _apply_all(self, results: Sequence[StageResult]) -> tuple[int, int]:
        planned = self._plan(results)
        with transaction(self.engine) as s:
            return self._write(s, results, planned)

    def _apply(self, s: Session, results: Sequence[StageResult]) -> tuple[int, int]:
        return self._write(s, results, self._plan(results))

    def _plan(self, results: Sequence[StageResult]) -> Planned:
        """Decided before the transaction: on SQLite the write lock is held only for the statements,
        not for this work (the attempts counted from are the claimed ones: nobody else writes a
        document while we hold its lease)."""
        return plan_outcomes(((r.document, r.stage, r.outcome, round(r.duration_ms, 3)) for r in results),
                             actor=self.name, now=self.clock(), retry=self.retry)

    def _write(self, s: Session, results: Sequence[StageResult], planned: Planned) -> tuple[int, int]:
        """Store the planned outcomes of the documents whose lease this worker still holds."""
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
        settled: dict[StageName, list[int]] = {}
        for r in results:
            if r.document.id in held:
                settled.setdefault(r.stage, []).append(r.document.id)
        for stage, doc_ids in settled.items():
            settle = settler(self.stages.get(stage))
            if settle is not None:
                settle(conn, doc_ids, self.clock())
        return written, lost

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
        pick = select(model.id).where(*where, free, due).order_by(model.id).limit(limit)
        if self.postgres:
            pick = pick.with_for_update(skip_locked=True)
        claim = update(model).where(model.id.in_(pick)).values(lease_owner=self.name, lease_until=until)
        if model is Document:
            # Documents are claimed by the hundred at every stage: the lease is one UPDATE in a short
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
    """Release every interchange and document ``owner`` still holds (a clean shutdown)."""
    n = 0
    with transaction(engine) as s:
        for model in (Interchange, Document):
            res = s.execute(update(model).where(model.lease_owner == owner).values(lease_owner=None, lease_until=None),
                            execution_options={"synchronize_session": False})
            n += res.rowcount or 0
    return n


def run_workers(runtime: Any, stop: threading.Event, *, count: int | None = None,
                stages: Mapping[Any, Callable] | None = None) -> list[threading.Thread]:
    """Start ``count`` worker threads (default ``workers.count``) sharing ``stop``; returns the threads."""
    count = runtime.settings.workers.count if count is None else count
    if stages is None:
        from gateway.delivery import build_stages

        stages = build_stages(runtime)
    threads = []
    for n in range(count):
        w = Worker(runtime, stages=stages, stop_event=stop)
        t = threading.Thread(target=w.run, args=(stop,), name=f"worker-{n + 1}", daemon=True)
        t.start()
        threads.append(t)
    return threads
