"""The ``forward`` and ``confirm`` stages: documents go to Anaplan in batches, one CSV per import.

A batch (an ``AnaplanBatch`` row) moves ``open → sending → running → done`` (or ``failed``: a
person must fix the configuration; or ``retry``: Anaplan failed the run in a way worth repeating):

* ``forward`` puts each document it is given into the import's open batch (``anaplan_batch_id``
  written at once, so whoever sends the batch sees it) and sends the batch when it holds
  ``batch.max_documents`` or has waited ``batch.max_age_seconds``: CSV built from the import's
  ``headerNames``, uploaded in chunks, import task started. Until then the documents *wait* (no
  attempt used). Once their batch is running they are ``forwarded``: those of the claim that sent
  it at once, the others when they next come back (after their own sleep), going straight on to
  ``confirm`` in the same claim.
* ``confirm`` polls the batch's task — one process per batch per poll interval — and when it is
  over reads the counts and the failure dump: documents whose rows Anaplan rejected fail with
  Anaplan's reason, the others are ``done``. The poller concludes at once, in one transaction,
  every member nobody holds (forwarded and confirmed, each with the outcome it would have got
  on its own); members in a claim at that moment get theirs there, woken if asleep.

A data-source file is never uploaded by two batches at once: the lease ``anaplan-file:<id>`` is
held by the batch from upload until its dump is read. Every request draws from the tenant budget
shared through the store. A 429 or a locked model sends the documents back with ``after`` set
to what Anaplan asked. A document failed at ``confirm`` and reprocessed has no batch any more:
it goes into the next one. Which row state lives where: the ``AnaplanBatch`` row's
``lease_until`` is "not before" while open, the send deadline while sending, and the next poll
while running; its ``result`` JSON keeps the members, the counts and every failed document.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine

from gateway import leases
from gateway.integrations.anaplan.client import (
    AnaplanAuthError, AnaplanBatch as ImportBatch, AnaplanConfigError, AnaplanDestination, AnaplanError,
    AnaplanHTTPError, AnaplanImportConfig, AnaplanRetryLater, AnaplanSettings, RequestCounter,
)
from gateway.pipeline.machine import Outcome, State, StageName, plan_outcomes, store_outcomes
from gateway.store.db import locked_in_order, reader, retry_conflicts
from gateway.store.models import AnaplanBatch, Document, utcnow

log = structlog.get_logger("gateway.delivery.anaplan")

OPEN, SENDING, RUNNING, DONE, FAILED, RETRY = "open", "sending", "running", "done", "failed", "retry"
_B = AnaplanBatch.__table__
_D = Document.__table__
# A member the batch still answers for: waiting to be forwarded, or forwarded and waiting for the
# import's end (also a member sent back to Anaplan from confirm, reprocessed after a rejection).
_AWAITING_BATCH = or_(and_(_D.c.state == State.POSTED.value, _D.c.stage == StageName.FORWARD.value),
                      and_(_D.c.state == State.FORWARDED.value, _D.c.stage == StageName.CONFIRM.value))


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def file_lease(cfg: AnaplanImportConfig) -> str:
    return f"anaplan-file:{cfg.file_id}"


def _owner(batch_id: int) -> str:
    return f"anaplan-batch:{batch_id}"


class _Problem:
    """An Anaplan fault turned into what the documents should do."""

    def __init__(self, reason: str, *, retryable: bool, after: float | None = None) -> None:
        self.reason, self.retryable, self.after = reason, retryable, after


def _classify(exc: Exception, default_after: float) -> _Problem:
    if isinstance(exc, AnaplanRetryLater):
        return _Problem(str(exc), retryable=True, after=exc.retry_after if exc.retry_after is not None else default_after)
    if isinstance(exc, AnaplanHTTPError):
        return _Problem(str(exc), retryable=exc.retryable, after=default_after)
    if isinstance(exc, (AnaplanConfigError, AnaplanAuthError)):
        return _Problem(f"Anaplan: {exc}", retryable=False)
    if isinstance(exc, httpx.HTTPError):
        return _Problem(f"Anaplan unreachable: {type(exc).__name__}", retryable=True, after=default_after)
    return _Problem(f"Anaplan: {exc}", retryable=False)


class AnaplanStages:
    """Both stages over one destination (one per process); ``forward`` and ``confirm`` are the stages."""

    def __init__(self, engine: Engine, settings: AnaplanSettings, destination: AnaplanDestination, *,
                 owner: str, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine, self.settings, self.destination, self.owner = engine, settings, destination, owner
        self._now = clock
        # Documents waiting on a batch that will wake them sleep this long at most (a woken document's
        # wake-up can be lost to a worker applying an older outcome: this bounds the delay).
        self.idle_seconds = 10.0

        def forward(docs: list[Document], runtime: Any = None) -> dict[int, Outcome]:
            return self.run(docs, StageName.FORWARD)

        def confirm(docs: list[Document], runtime: Any = None) -> dict[int, Outcome]:
            return self.run(docs, StageName.CONFIRM)

        forward.batch = True  # type: ignore[attr-defined]
        confirm.batch = True  # type: ignore[attr-defined]
        forward.settle = confirm.settle = self.settle  # type: ignore[attr-defined]
        self.forward, self.confirm = forward, confirm

    # ------------------------------------------------------------------ entry
    def run(self, docs: Sequence[Document], phase: StageName) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        groups: dict[str, list[Document]] = {}
        for doc in docs:
            if doc.kind in self.settings.imports:
                groups.setdefault(doc.kind, []).append(doc)
            else:
                outcomes[doc.id] = Outcome.ok({"anaplan": f"no Anaplan import is configured for {doc.kind}"})
        for kind, group in groups.items():
            try:
                outcomes.update(self._run_group(kind, self.settings.imports[kind], group, phase))
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not lose the claim's outcomes
                log.exception("anaplan.stage_error", kind=kind)
                for doc in group:
                    outcomes[doc.id] = Outcome.retry(f"Anaplan stage error: {type(exc).__name__}: {exc}",
                                                     code="anaplan.internal",
                                                     anaplan_batch_id=doc.anaplan_batch_id)
        return outcomes

    def _run_group(self, kind: str, cfg: AnaplanImportConfig, docs: list[Document],
                   phase: StageName) -> dict[int, Outcome]:
        batches = self._load({d.anaplan_batch_id for d in docs if d.anaplan_batch_id})
        members = {batch_id: _members(row) for batch_id, row in batches.items()}  # parsed once per batch
        by_batch: dict[int, list[Document]] = {}
        fresh: list[Document] = []
        for doc in docs:
            row = batches.get(doc.anaplan_batch_id) if doc.anaplan_batch_id else None
            # While a batch is being sent its members are not written yet: wait for the answer.
            if row is None or (row["state"] not in (OPEN, SENDING) and doc.id not in members[row["id"]]):
                fresh.append(doc)  # new, reprocessed, or assigned too late for the batch it names
            else:
                by_batch.setdefault(row["id"], []).append(doc)
        if fresh:
            batch_id = self._assign(kind, cfg, [d.id for d in fresh])
            by_batch.setdefault(batch_id, []).extend(fresh)
        outcomes: dict[int, Outcome] = {}
        for batch_id, members in by_batch.items():
            outcomes.update(self._drive(batch_id, cfg, members, phase))
        return outcomes

    # ------------------------------------------------------------------ store helpers
    def _load(self, ids: set[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        with reader(self.engine).connect() as conn:
            rows = conn.execute(select(_B).where(_B.c.id.in_(sorted(ids)))).mappings().all()
        return {r["id"]: dict(r) for r in rows}

    def _one(self, batch_id: int) -> dict[str, Any]:
        return self._load({batch_id})[batch_id]

    def _assign(self, kind: str, cfg: AnaplanImportConfig, doc_ids: list[int]) -> int:
        """Put documents into the import's open batch (opening one if needed); returns its id."""
        return retry_conflicts(lambda: self._join_open_batch(kind, cfg, doc_ids))

    def _join_open_batch(self, kind: str, cfg: AnaplanImportConfig, doc_ids: list[int]) -> int:
        now = self._now()
        with self.engine.begin() as conn:
            for _ in range(5):
                batch_id = conn.execute(select(_B.c.id).where(_B.c.import_name == kind, _B.c.state == OPEN)
                                        .order_by(_B.c.id).limit(1)).scalar()
                if batch_id is None:
                    batch_id = conn.execute(_B.insert().values(
                        import_name=kind, state=OPEN, document_count=0, file_id=cfg.file_id,
                        created_at=now, updated_at=now)).inserted_primary_key[0]
                # Conditional on still open: a batch being sent takes no new members.
                if conn.execute(update(_B).where(_B.c.id == batch_id, _B.c.state == OPEN).values(
                        document_count=_B.c.document_count + len(doc_ids), updated_at=now)).rowcount:
                    break
            else:  # pragma: no cover - five batches closed under us in one transaction
                raise RuntimeError("no open Anaplan batch could be joined")
            conn.execute(update(_D).where(locked_in_order(_D, _D.c.id.in_(doc_ids))).values(anaplan_batch_id=batch_id))
        return int(batch_id)

    def _set(self, batch_id: int, where_state: str | None = None, **values: Any) -> bool:
        values.setdefault("updated_at", self._now())
        if "result" in values and not isinstance(values["result"], str | type(None)):
            values["result"] = json.dumps(values["result"], default=str)
        cond = [_B.c.id == batch_id]
        if where_state is not None:
            cond.append(_B.c.state == where_state)
        with self.engine.begin() as conn:
            return bool(conn.execute(update(_B).where(and_(*cond)).values(**values)).rowcount)

    def _documents(self, ids: Sequence[int] | None = None, *, batch_id: int | None = None,
                   deciding: Sequence[Document] = ()) -> list[dict[str, Any]]:
        """Members as the CSV mapping sees them: ``{"id", **canonical, "gateway": {...}}``, by id.

        ``deciding`` are documents of this claim: as their stage sees them, not as the store does —
        in a claim that matched and posted them, their posting is not stored until the claim ends."""
        cols = [_D.c.id, _D.c.canonical, _D.c.supplier_code, _D.c.plex_key, _D.c.partner, _D.c.kind]
        if ids is not None:
            wanted = sorted(ids)
            queries = [select(*cols).where(_D.c.id.in_(wanted[i:i + 1000])) for i in range(0, len(wanted), 1000)]
        else:
            queries = [select(*cols).where(_D.c.anaplan_batch_id == batch_id, _AWAITING_BATCH)]
        with reader(self.engine).connect() as conn:
            rows = {r["id"]: r for q in queries for r in conn.execute(q).mappings().all()}
        for d in deciding:
            rows[d.id] = {"canonical": d.canonical, "supplier_code": d.supplier_code, "plex_key": d.plex_key,
                          "partner": d.partner}
        docs = []
        for doc_id in sorted(rows):
            r = rows[doc_id]
            canonical = json.loads(r["canonical"] or "{}")
            docs.append({**canonical, "id": doc_id,
                         "gateway": {"document_id": doc_id, "supplier_code": r["supplier_code"],
                                     "plex_key": r["plex_key"], "partner": r["partner"]}})
        return docs

    # ------------------------------------------------------------------ a batch's documents
    def _drive(self, batch_id: int, cfg: AnaplanImportConfig, docs: list[Document],
               phase: StageName) -> dict[int, Outcome]:
        row = self._one(batch_id)
        problem: _Problem | None = None
        now = self._now()
        if row["state"] == SENDING and (_aware(row["lease_until"]) or now) < now:
            # Whoever was sending died: open the batch again (an import run twice is an upsert).
            self._set(batch_id, SENDING, state=OPEN, lease_owner=None, lease_until=None)
            leases.release(self.engine, file_lease(cfg), _owner(batch_id))
            row = self._one(batch_id)
        if row["state"] == OPEN:
            problem = self._maybe_send(row, cfg, docs)
            row = self._one(batch_id)
        if row["state"] == RUNNING and phase is StageName.CONFIRM:
            problem = self._maybe_poll(row, cfg) or problem
            row = self._one(batch_id)
        coming = self._coming(row, docs) if row["state"] == OPEN else None
        result = _result(row)  # a batch's result names every member: read once, not once per member
        members = set(result.get("members") or [])
        poller = result.get("poller", min(members, default=None))
        now = self._now()
        return {d.id: self._verdict(row, result, members, d, phase, problem, cfg, coming, poller, now) for d in docs}

    def _verdict(self, row: Mapping[str, Any], result: Mapping[str, Any], members: set[int], doc: Document,
                 phase: StageName, problem: _Problem | None, cfg: AnaplanImportConfig,
                 coming: str | None = None, poller: int | None = None, now: datetime | None = None) -> Outcome:
        state, batch_id = row["state"], row["id"]
        info = {"batch": batch_id, "task": row["task_id"]}
        now = now or self._now()
        if state == OPEN:
            if problem is not None and problem.retryable:
                return Outcome.retry(problem.reason, code="anaplan.retry", after=problem.after,
                                     detail={"anaplan": info}, anaplan_batch_id=batch_id)
            return Outcome.wait(self._due_in(row, cfg, now, coming), {"anaplan": {**info, "waiting": "batch filling"}},
                                anaplan_batch_id=batch_id)
        if state == SENDING:
            return Outcome.wait(0.2, {"anaplan": {**info, "waiting": "batch being sent"}}, anaplan_batch_id=batch_id)
        if doc.id not in members:
            # It joined after the batch closed (or left the states a batch takes): the next batch takes it.
            return Outcome.wait(0.05, {"anaplan": {**info, "waiting": "next batch"}}, anaplan_batch_id=None)
        if state == FAILED:
            return Outcome.fail(row["error"] or "Anaplan refused the batch", code="anaplan.batch_failed",
                                detail={"anaplan": info}, anaplan_batch_id=None)
        if state == RETRY:
            after = result.get("retry_after") or self.settings.batch.retry_seconds
            return Outcome.retry(row["error"] or "Anaplan failed the import; sending again",
                                 code="anaplan.retry", after=after, detail={"anaplan": info}, anaplan_batch_id=None)
        sent = {**info, "rows": result.get("rows"), "documents": len(members)}
        # While the import runs one member (the first) comes back to poll; the others sleep until the
        # batch wakes them.
        running_wait = None
        if state == RUNNING:
            next_poll = max(0.05, ((_aware(row["lease_until"]) or now) - now).total_seconds())
            running_wait = next_poll if doc.id == poller else max(next_poll, self.idle_seconds)
        if phase is StageName.FORWARD:
            # Confirm is not due before then either: no claim just to hear "still running".
            return Outcome.ok({"anaplan": sent}, after=running_wait, anaplan_batch_id=batch_id)
        if running_wait is not None:
            return Outcome.wait(running_wait, {"anaplan": {**info, "waiting": "import running"}},
                                anaplan_batch_id=batch_id)
        # DONE
        failed = result.get("failed") or {}
        detail = {"anaplan": {**sent, "counts": result.get("counts"), "status": result.get("status")}}
        reason = failed.get(str(doc.id))
        if reason is not None:
            return Outcome.fail(reason, code="anaplan.rejected", detail=detail, anaplan_batch_id=None)
        return Outcome.ok(detail, anaplan_batch_id=batch_id)

    def _due_in(self, row: Mapping[str, Any], cfg: AnaplanImportConfig, now: datetime, coming: str | None) -> float:
        """How long a document waits in an open batch. Sending the batch wakes its members, so while
        more documents are on their way (they will fill it) they sleep; while members that joined are
        still being stored, a moment; when nothing more is coming, until the batch may go early."""
        not_before = _aware(row["lease_until"])
        if not_before is not None and not_before > now:
            return max(0.05, (not_before - now).total_seconds())
        if row["document_count"] >= self.settings.batch.max_documents:
            return max(0.05, cfg.poll_interval_s)  # full, but the file is busy with the previous batch
        batching = self.settings.batch
        age = (now - (_aware(row["created_at"]) or now)).total_seconds()
        if coming == "more":
            return max(0.05, min(batching.max_age_seconds - age, self.idle_seconds))
        if coming == "joining":
            return 0.1
        return max(0.05, min(batching.min_age_seconds, batching.max_age_seconds) - age)

    # ------------------------------------------------------------------ sending
    def _maybe_send(self, row: Mapping[str, Any], cfg: AnaplanImportConfig,
                    deciding: Sequence[Document] = ()) -> _Problem | None:
        now = self._now()
        batching = self.settings.batch
        not_before = _aware(row["lease_until"])
        full = row["document_count"] >= batching.max_documents
        age = (now - (_aware(row["created_at"]) or now)).total_seconds()
        if not_before is not None and not_before > now:
            return None
        if not (full or age >= batching.max_age_seconds):
            # Not full, not old: still worth sending when nothing more of its kind is on its way.
            if age < min(batching.min_age_seconds, batching.max_age_seconds) or self._coming(row, deciding):
                return None
        batch_id = row["id"]
        if not self._set(batch_id, OPEN, state=SENDING, lease_owner=self.owner,
                         lease_until=now + timedelta(seconds=batching.send_timeout_seconds)):
            return None  # someone else is sending it
        ttl = cfg.task_timeout_s + batching.send_timeout_seconds
        if not leases.acquire(self.engine, file_lease(cfg), _owner(batch_id), ttl):
            # The previous batch on this file has not been read yet: try again after a poll interval.
            self._set(batch_id, SENDING, state=OPEN, lease_owner=None,
                      lease_until=now + timedelta(seconds=cfg.poll_interval_s))
            return None
        members = self._documents(batch_id=batch_id, deciding=deciding)
        ids = [d["id"] for d in members]
        if not members:
            self._set(batch_id, SENDING, state=DONE, result={"members": [], "failed": {}, "status": "empty"})
            leases.release(self.engine, file_lease(cfg), _owner(batch_id))
            return None
        usage = RequestCounter()
        try:
            sub = self.destination.submit(ImportBatch(batch_id=str(batch_id), config=cfg, documents=members), usage)
        except (AnaplanError, httpx.HTTPError) as exc:
            problem = _classify(exc, batching.retry_seconds)
            leases.release(self.engine, file_lease(cfg), _owner(batch_id))
            log.warning("anaplan.batch_send_failed", batch_id=batch_id, reason=problem.reason,
                        retryable=problem.retryable, requests=usage.requests)
            if problem.retryable:
                self._set(batch_id, SENDING, state=OPEN, lease_owner=None, error=problem.reason,
                          lease_until=now + timedelta(seconds=problem.after or batching.retry_seconds))
            else:
                self._set(batch_id, SENDING, state=FAILED, lease_owner=None, lease_until=None, error=problem.reason,
                          document_count=len(ids), result={"members": ids, "requests": usage.requests})
                self._wake(batch_id)
            return problem
        # Documents that made no row are known now: a clean import is then concluded without rebuilding rows.
        result = {"members": ids, "rows": len(sub.row_map), "chunks": sub.chunks, "bytes": sub.size,
                  "sha256": sub.sha256, "requests": usage.requests, "sent_at": now.isoformat(),
                  "rejected": {str(k): v for k, v in sub.row_map.rejected.items()}}
        if sub.task_id is None:  # no document produced a row: nothing to wait for
            result.update(failed={str(k): v for k, v in sub.row_map.rejected.items()}, status="failed")
            self._set(batch_id, SENDING, state=DONE, document_count=len(ids), result=result)
            leases.release(self.engine, file_lease(cfg), _owner(batch_id))
            self._wake(batch_id)
            return None
        # One member of this claim polls the import; the others come back when it is over (the batch
        # wakes them) or after their own sleep, whichever is first — not all at once to hear "running".
        result["poller"] = min((d.id for d in deciding), default=min(ids))
        self._set(batch_id, SENDING, state=RUNNING, task_id=sub.task_id, document_count=len(ids), result=result,
                  error=None, lease_owner=None, lease_until=now + timedelta(seconds=cfg.poll_interval_s))
        log.info("anaplan.batch_sent", batch_id=batch_id, task_id=sub.task_id, documents=len(ids),
                 rows=len(sub.row_map), requests=usage.requests)
        return None

    def settle(self, conn: Any, doc_ids: list[int], now: datetime) -> None:
        """In the transaction storing these documents' outcomes: any whose batch finished while they were
        being decided is due now — the batch's wake-up came before their sleep."""
        finished = select(_B.c.id).where(_B.c.id == _D.c.anaplan_batch_id, _B.c.state.in_((DONE, FAILED, RETRY)))
        for i in range(0, len(doc_ids), 1000):
            conn.execute(update(_D).where(
                _D.c.id.in_(doc_ids[i:i + 1000]), _D.c.next_attempt_at > now,
                _D.c.state.in_((State.POSTED.value, State.FORWARDED.value)), finished.exists(),
            ).values(next_attempt_at=now))

    def _conclude(self, batch_id: int, cfg: AnaplanImportConfig) -> None:
        """The import is over: the members nobody holds now are forwarded and confirmed here, in one
        transaction, with the outcomes each would get coming back on its own (:meth:`_verdict`) —
        not each woken, claimed and stored again. Members in a claim now get theirs there."""
        def conclude() -> int:
            now = self._now()
            with self.engine.begin() as conn:
                row = conn.execute(select(_B).where(_B.c.id == batch_id)).mappings().one()
                result = _result(row)
                members = set(result.get("members") or [])
                waiting = select(_D.c.id, _D.c.interchange_id, _D.c.attempts, _D.c.state).where(
                    _D.c.anaplan_batch_id == batch_id, _AWAITING_BATCH,
                    or_(_D.c.lease_until.is_(None), _D.c.lease_until < now)).order_by(_D.c.id)
                if conn.dialect.name == "postgresql":
                    waiting = waiting.with_for_update(skip_locked=True)  # a claim taking one now keeps it
                docs = [d for d in conn.execute(waiting) if d.id in members]
                failed = result.get("failed") or {}
                shared: dict[StageName, Outcome] = {}  # every member not failed gets the same outcomes

                def verdict(d: Any, phase: StageName) -> Outcome:
                    if phase is StageName.CONFIRM and str(d.id) in failed:
                        return self._verdict(row, result, members, d, phase, None, cfg, now=now)
                    if phase not in shared:
                        shared[phase] = self._verdict(row, result, members, d, phase, None, cfg, now=now)
                    return shared[phase]

                results = []
                for d in docs:
                    if d.state == State.POSTED.value:
                        results.append((d, StageName.FORWARD, verdict(d, StageName.FORWARD), None))
                    results.append((d, StageName.CONFIRM, verdict(d, StageName.CONFIRM), None))
                store_outcomes(conn, plan_outcomes(results, actor=self.owner, now=now))
            return len(docs)

        concluded = retry_conflicts(conclude)
        log.info("anaplan.batch_concluded", batch_id=batch_id, documents=concluded)

    def _wake(self, batch_id: int) -> None:
        """The batch is over (finished, failed, to be sent again): its waiting members are due now, not
        when they set out to look."""
        def wake() -> None:
            with self.engine.begin() as conn:
                conn.execute(update(_D).where(locked_in_order(
                    _D, _D.c.anaplan_batch_id == batch_id,
                    _D.c.state.in_((State.POSTED.value, State.FORWARDED.value)))).values(next_attempt_at=self._now()))

        retry_conflicts(wake)

    def _coming(self, row: Mapping[str, Any], deciding: Sequence[Document] = ()) -> str | None:
        """What an open batch may still get, other than ``deciding`` (the documents being forwarded now):

        * ``"more"`` — documents of its kind being matched or posted that no batch holds yet (they
          will fill it: worth sleeping for);
        * ``"joining"`` — documents that joined it but whose posting is not stored yet (another
          claim, about to end: worth a moment, so they go in this batch, not the next);
        * None — nothing: the batch may go early.
        """
        ids = [d.id for d in deciding]
        moving = (State.TRANSLATED.value, State.MATCHED.value)
        with reader(self.engine).connect() as conn:
            more = conn.execute(select(_D.c.id).where(
                _D.c.kind == row["import_name"], _D.c.id.not_in(ids), _D.c.anaplan_batch_id.is_(None),
                _D.c.state.in_((*moving, State.POSTED.value))).limit(1)).first()
            if more is not None:
                return "more"
            joining = conn.execute(select(_D.c.id).where(
                _D.c.anaplan_batch_id == row["id"], _D.c.id.not_in(ids), _D.c.state.in_(moving)).limit(1)).first()
        return "joining" if joining is not None else None

    # ------------------------------------------------------------------ polling
    def _maybe_poll(self, row: Mapping[str, Any], cfg: AnaplanImportConfig) -> _Problem | None:
        now = self._now()
        batch_id = row["id"]
        with self.engine.begin() as conn:  # one poller per batch per interval, across processes
            mine = conn.execute(update(_B).where(
                _B.c.id == batch_id, _B.c.state == RUNNING,
                or_(_B.c.lease_until.is_(None), _B.c.lease_until <= now),
            ).values(lease_owner=self.owner, lease_until=now + timedelta(seconds=cfg.poll_interval_s))).rowcount
        if not mine:
            return None
        result = json.loads(row["result"] or "{}")
        leases.acquire(self.engine, file_lease(cfg), _owner(batch_id),
                       cfg.task_timeout_s + self.settings.batch.send_timeout_seconds)
        usage = RequestCounter()
        task_id = row["task_id"]
        try:
            task = self.destination.check(cfg, task_id, usage)
            if task is None:
                sent = datetime.fromisoformat(result["sent_at"]) if result.get("sent_at") else now
                if (now - sent).total_seconds() <= cfg.task_timeout_s:
                    self._count(batch_id, result, usage)
                    return None
                try:
                    self.destination.client.cancel_task(cfg, task_id, usage)
                except (AnaplanError, httpx.HTTPError) as exc:
                    log.warning("anaplan.cancel_failed", task_id=task_id, error=str(exc))
                result.update(requests=result.get("requests", 0) + usage.requests)
                self._set(batch_id, RUNNING, state=RETRY, result=result,
                          error=f"Anaplan import task {task_id} did not finish within {cfg.task_timeout_s:.0f} s "
                                "(cancelled; sending again)")
                leases.release(self.engine, file_lease(cfg), _owner(batch_id))
                self._wake(batch_id)
                return None
            ids = result.get("members") or []
            counts = self.destination.clean_counts(task) if "rejected" in result else None
            if counts is not None:
                # Every row went in: what failed is what made no row at send; no rows to trace.
                failed = dict(result["rejected"])
                present = self._present(ids)
                status = "failed" if ids and len(failed) >= len(ids) else "partial" if failed else "succeeded"
                reason = None
            else:
                members = self._documents(ids)
                batch = ImportBatch(batch_id=str(batch_id), config=cfg, documents=members)
                data, row_map, fmt = self.destination.rows(batch, usage)
                if result.get("sha256") and hashlib.sha256(data).hexdigest() != result["sha256"]:
                    # Rows that no longer match what was uploaded are not pinned on a document by mistake:
                    # the dump is matched by content, and what cannot be traced fails the batch for review.
                    log.warning("anaplan.batch_csv_changed", batch_id=batch_id)
                outcome = self.destination.conclude(batch, row_map, fmt, task_id, task, usage)
                failed = {str(r.document_id): r.reason or "rejected by Anaplan" for r in outcome.documents if not r.ok}
                present = {d["id"] for d in members}
                counts, status, reason = outcome.counts, outcome.status, outcome.reason
        except (AnaplanError, httpx.HTTPError) as exc:
            problem = _classify(exc, self.settings.batch.retry_seconds)
            if problem.retryable:
                self._set(batch_id, RUNNING, lease_until=now + timedelta(seconds=max(cfg.poll_interval_s,
                                                                                     problem.after or 0)))
                return problem
            result.update(requests=result.get("requests", 0) + usage.requests)
            self._set(batch_id, RUNNING, state=FAILED, error=problem.reason, result=result)
            leases.release(self.engine, file_lease(cfg), _owner(batch_id))
            self._wake(batch_id)
            return problem
        for missing in set(ids) - present:
            failed.setdefault(str(missing), "the document left the batch before Anaplan answered")
        result.update(failed=failed, counts=counts.model_dump(exclude={"details"}) if counts else None,
                      status=status, task_id=task_id, requests=result.get("requests", 0) + usage.requests,
                      finished_at=now.isoformat())
        if status == "retry":
            result["retry_after"] = self.settings.batch.retry_seconds
            self._set(batch_id, RUNNING, state=RETRY, error=reason, result=result)
        else:
            self._set(batch_id, RUNNING, state=DONE, error=reason if status == "failed" else None, result=result)
        leases.release(self.engine, file_lease(cfg), _owner(batch_id))
        if status != "retry":
            self._conclude(batch_id, cfg)
        self._wake(batch_id)
        log.info("anaplan.batch_done", batch_id=batch_id, task_id=task_id, status=status,
                 failed=len(failed), requests=result["requests"])
        return None

    def _present(self, ids: Sequence[int]) -> set[int]:
        """Which of these documents the store still holds."""
        wanted = sorted(ids)
        with reader(self.engine).connect() as conn:
            return {i for k in range(0, len(wanted), 1000)
                    for i in conn.execute(select(_D.c.id).where(_D.c.id.in_(wanted[k:k + 1000]))).scalars()}

    def _count(self, batch_id: int, result: dict[str, Any], usage: RequestCounter) -> None:
        result["requests"] = result.get("requests", 0) + usage.requests
        self._set(batch_id, RUNNING, result=result)


def _result(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(row["result"] or "{}")
    except ValueError:
        return {}


def _members(row: Mapping[str, Any]) -> set[int]:
    return set(_result(row).get("members") or [])


__all__ = ["AnaplanStages", "file_lease", "OPEN", "SENDING", "RUNNING", "DONE", "FAILED", "RETRY"]
