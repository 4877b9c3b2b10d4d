"""What an operator does from the panel: reprocess, choose a supplier, bulk reprocess with progress.

The panel only calls the gateway's operations; it never changes a document's state itself.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from gateway.pipeline.machine import StageName, State
from gateway.store.models import Document, utcnow
from gateway.web import queries
from gateway.web.queries import BadRequest, DocumentFilter, count_capped

log = structlog.get_logger("gateway.web")

MAX_REASON = 500


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    """The action cannot be done now (the document is in flight, or in the wrong state)."""


def check_reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise BadRequest("reason: say why you reprocess (it is kept in the audit trail)")
    if len(reason) > MAX_REASON:
        raise BadRequest(f"reason: at most {MAX_REASON} characters")
    return reason


def check_stage(from_stage: str | None) -> str | None:
    from gateway.operations import stage_name

    if not from_stage:
        return None
    try:
        return stage_name(from_stage)
    except ValueError:
        raise BadRequest(f"from_stage: {from_stage!r} is not one of {', '.join(queries.STAGES)}") from None


def reprocess_one(engine: Engine, doc_id: int, *, actor: str, reason: str, from_stage: str | None = None) -> None:
    """Send one document back through the pipeline (from the stage it stopped at, or ``from_stage``)."""
    from gateway import operations

    reason = check_reason(reason)
    stage = check_stage(from_stage)
    with Session(engine) as s:
        if s.get(Document, doc_id) is None:
            raise NotFound(f"document {doc_id}: no such document")
    try:
        operations.reprocess_documents(engine, [doc_id], actor=actor, reason=reason, from_stage=stage)
    except ValueError as exc:  # in flight, or cannot start from that stage: nothing changed
        raise Conflict(str(exc)) from None


INTERCHANGE_ACTIONS = ("force", "retry")


def interchange_action(engine: Engine, interchange_id: int, action: str, *, actor: str, reason: str) -> None:
    """A file held back: ``force`` a duplicate through, or ``retry`` (split again) one that failed."""
    from gateway import operations
    from gateway.store.models import Interchange

    if action not in INTERCHANGE_ACTIONS:
        raise NotFound(f"no interchange action {action!r} (force or retry)")
    reason = check_reason(reason)
    with Session(engine) as s:
        if s.get(Interchange, interchange_id) is None:
            raise NotFound(f"interchange {interchange_id}: no such interchange")
    run = operations.force_duplicate if action == "force" else operations.retry_interchange
    try:
        run(engine, interchange_id, actor=actor, reason=reason)
    except ValueError as exc:  # not a duplicate / not failed / has documents: nothing changed
        raise Conflict(str(exc)) from None


def choose_supplier(engine: Engine, doc_id: int, supplier_code: str, *, actor: str) -> None:
    """An operator's pick of the Plex supplier for a needs-attention document."""
    supplier_code = (supplier_code or "").strip()
    if not supplier_code:
        raise BadRequest("supplier_code: choose a supplier")
    if len(supplier_code) > 100:
        raise BadRequest("supplier_code: at most 100 characters")
    from gateway.web.queries import _candidates

    with Session(engine) as s:
        doc = s.get(Document, doc_id)
        if doc is None:
            raise NotFound(f"document {doc_id}: no such document")
        waiting = doc.stage == StageName.MATCH.value and doc.state in (State.NEEDS_ATTENTION.value, State.FAILED.value)
        if not waiting:
            raise Conflict(f"document {doc_id} is {doc.state}" + (f" at {doc.stage}" if doc.stage else "")
                           + "; only a document waiting for its supplier can be given one")
        offered = {c["code"] for c in _candidates(doc.candidates)}
        if offered and supplier_code not in offered:
            from gateway.store.models import Supplier

            if s.get(Supplier, supplier_code) is None:
                raise BadRequest(f"supplier_code: {supplier_code!r} is not one of the candidates "
                                 f"({', '.join(sorted(offered))}) nor in Plex's supplier master")
    from gateway.integrations.plex.matching import choose_supplier as choose

    try:
        choose(engine, doc_id, supplier_code, actor=actor)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    except ValueError as exc:
        if "being worked on" in str(exc):
            raise Conflict(str(exc)) from None
        raise BadRequest(f"supplier_code: {exc}") from None


# --------------------------------------------------------------------------------------------- bulk

@dataclass
class BulkJob:
    id: str
    actor: str
    reason: str
    selection: dict
    from_stage: str | None
    total: int = 0
    done: int = 0
    reprocessed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    state: str = "queued"  # queued | running | finished | failed
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id, "actor": self.actor, "reason": self.reason, "selection": self.selection,
            "from_stage": self.from_stage, "total": self.total, "done": self.done, "reprocessed": self.reprocessed,
            "skipped": self.skipped, "errors": self.errors[:20], "state": self.state,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "percent": round(100.0 * self.done / self.total, 1) if self.total else (100.0 if self.state == "finished" else 0.0),
        }


class BulkJobs:
    """Bulk reprocess runs in a background thread per job; progress is polled by the page.

    Jobs live in this process (a panel behind a load balancer needs sticky sessions to follow one).
    """

    KEEP = 50

    def __init__(self, engine: Engine):
        self.engine = engine
        self._jobs: dict[str, BulkJob] = {}
        self._lock = threading.Lock()

    def start(self, flt: DocumentFilter, *, actor: str, reason: str, from_stage: str | None) -> BulkJob:
        reason = check_reason(reason)
        stage = check_stage(from_stage)
        if flt.is_empty():
            raise BadRequest("selection: choose at least one filter; reprocessing every document is not offered")
        with Session(self.engine) as s:
            total, _ = count_capped(s, flt, cap=10_000_000)
        if not total:
            raise BadRequest("selection: no document matches this filter")
        job = BulkJob(id=uuid.uuid4().hex[:12], actor=actor, reason=reason, selection=flt.as_dict(),
                      from_stage=stage, total=total)
        with self._lock:
            self._jobs[job.id] = job
            for old in sorted(self._jobs.values(), key=lambda j: j.started_at)[:-self.KEEP]:
                if old.state in ("finished", "failed"):
                    self._jobs.pop(old.id, None)
        threading.Thread(target=self._run, args=(job, flt, stage), name=f"bulk-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> BulkJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _run(self, job: BulkJob, flt: DocumentFilter, stage: str | None) -> None:
        from gateway import operations

        job.state = "running"

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            stmt = sa_select(Document).where(*flt.conditions())
            report = operations.reprocess_documents(self.engine, stmt, actor=job.actor, reason=job.reason,
                                                    from_stage=stage, progress=progress)
            job.total = report.matched
            job.done = report.matched
            job.reprocessed = report.done
            job.skipped = len(report.skipped)
            job.errors += [why for _, why in report.skipped[:20]]
            job.state = "finished"
        except Exception as exc:  # noqa: BLE001 - the job reports; the thread must not die silently
            log.error("bulk_reprocess_failed", job=job.id, error=str(exc))
            job.errors.append(f"stopped: {exc}" if isinstance(exc, ValueError) else f"stopped: {type(exc).__name__}")
            job.state = "failed"
        finally:
            job.finished_at = utcnow()
            log.info("bulk_reprocess", job=job.id, actor=job.actor, total=job.total, reprocessed=job.reprocessed,
                     skipped=job.skipped, state=job.state)
