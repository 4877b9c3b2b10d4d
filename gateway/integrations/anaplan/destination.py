"""Anaplan as a batched destination: deliveries gathered per import into one CSV, one upload and one
import run per batch.

The worker puts each delivery into the open batch of its import (:meth:`AnaplanDestination.batch_key`:
the document's kind, when ``[anaplan.imports]`` has an import for it) and claims the batch when it
is due. :meth:`~AnaplanDestination.send` builds the CSV from the import's ``headerNames``, uploads
it in chunks and starts the import task; :meth:`~AnaplanDestination.poll` looks at the task (one
look per poll interval) and, when it is over, reads the counts and the failure dump and says which
members Anaplan rejected and why. Both return a :class:`~gateway.integrations.base.BatchOutcome`;
the worker writes it. Batches of one data file are sent one at a time (:meth:`exclusive`).

A model busy (409) or locked (423), the tenant throttling (429) or the request budget spent is a
*wait* (no attempt used); a timeout or 5xx a *retry*; a configuration or credential fault fails
the batch. An import run twice is an upsert, so a batch whose sender died is simply sent again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

import httpx
import structlog

from gateway.budget import StoreBudget, StoreRequestBudget
from gateway.integrations.anaplan.client import (
    AnaplanAuthError,
    AnaplanBatch,
    AnaplanConfigError,
    AnaplanError,
    AnaplanHTTPError,
    AnaplanImportConfig,
    AnaplanImports,
    AnaplanRetryLater,
    AnaplanSettings,
    RequestCounter,
    make_imports,
)
from gateway.integrations.base import (
    BatchItem,
    BatchOutcome,
    Check,
    DeliveryItem,
    Outcome,
)

__all__ = ["AnaplanDestination"]

log = structlog.get_logger("gateway.integrations.anaplan")


def _problem(exc: Exception, default_after: float) -> BatchOutcome:
    """What an Anaplan fault makes of the batch."""
    if isinstance(exc, AnaplanRetryLater):
        after = exc.retry_after if exc.retry_after is not None else None
        if exc.busy:
            return BatchOutcome.wait(str(exc), after=after, code="anaplan.busy")
        return BatchOutcome.retry(str(exc), after=after if after is not None else default_after, code="anaplan.retry")
    if isinstance(exc, AnaplanHTTPError) and exc.retryable:
        return BatchOutcome.retry(str(exc), after=default_after, code="anaplan.retry")
    if isinstance(exc, (AnaplanConfigError, AnaplanAuthError, AnaplanHTTPError)):
        return BatchOutcome.fail(f"Anaplan: {exc}", code="anaplan.batch_failed")
    if isinstance(exc, httpx.HTTPError):
        return BatchOutcome.retry(f"Anaplan unreachable: {type(exc).__name__}", after=default_after,
                                  code="anaplan.unreachable")
    return BatchOutcome.fail(f"Anaplan: {exc}", code="anaplan.batch_failed")


class AnaplanDestination:
    """``anaplan`` in the registry: one runner of imports per process, its requests drawn from the
    tenant's budget shared through the store."""

    name: ClassVar[str] = "anaplan"

    def __init__(self, settings: AnaplanSettings, imports: AnaplanImports) -> None:
        self.settings, self.imports = settings, imports
        batching = settings.batch
        self.max_members = batching.max_documents
        self.max_age = batching.max_age_seconds
        self.min_age = min(batching.min_age_seconds, batching.max_age_seconds)

    @classmethod
    def configure(cls, runtime: Any) -> AnaplanDestination | None:
        cfg = runtime.settings.anaplan
        if cfg is None:
            return None
        tenant = hashlib.sha256(cfg.endpoints().api.encode()).hexdigest()[:12]
        budget = StoreRequestBudget(StoreBudget(runtime.engine, f"anaplan:{tenant}", cfg.requests_per_minute, block=1))
        on_refresh = None
        refresh_token = None
        if cfg.auth == "oauth" and cfg.refresh_token_secret:
            # Rotatable refresh tokens are single use: keep the newest in the vault for the next start.
            from gateway.secrets import Vault, load_key

            vault = Vault(runtime.engine, load_key(runtime.settings.key_file))
            name = cfg.refresh_token_secret
            try:
                refresh_token = vault.get(name)
            except Exception:  # noqa: BLE001 - not stored yet: start from the configured one
                refresh_token = None

            def on_refresh(token: str) -> None:
                vault.set(name, token)
        return cls(cfg, make_imports(cfg, budget=budget, on_refresh_token=on_refresh, refresh_token=refresh_token))

    # ------------------------------------------------------------------ batching
    def batch_key(self, item: DeliveryItem) -> str | None:
        return item.kind if item.kind in self.settings.imports else None

    def exclusive(self, key: str) -> str:
        return f"anaplan-file:{self.settings.imports[key].file_id}"  # type: ignore[index]

    def _config(self, batch: BatchItem) -> AnaplanImportConfig:
        return self.settings.imports[batch.key]  # type: ignore[index]

    @staticmethod
    def _rows_source(members: Sequence[DeliveryItem]) -> list[dict[str, Any]]:
        """Members as the column mapping sees them: the canonical document, plus ``gateway.*``."""
        return [{**m.canonical, "id": m.delivery_id,
                 "gateway": {"document_id": m.document_id, "supplier_code": m.supplier_code,
                             "plex_key": m.references.get("plex"), "partner": m.partner}}
                for m in sorted(members, key=lambda m: m.delivery_id)]

    # ------------------------------------------------------------------ sending
    def send(self, batch: BatchItem, members: Sequence[DeliveryItem]) -> BatchOutcome:
        cfg = self._config(batch)
        retry_after = self.settings.batch.retry_seconds
        ids = sorted(m.delivery_id for m in members)
        if not members:
            return BatchOutcome.done({}, result={"members": [], "status": "empty"})
        usage = RequestCounter()
        try:
            sub = self.imports.submit(AnaplanBatch(batch_id=str(batch.id), config=cfg,
                                                   documents=self._rows_source(members)), usage)
        except (AnaplanError, httpx.HTTPError) as exc:
            log.warning("anaplan.batch_send_failed", batch_id=batch.id, error=str(exc), requests=usage.requests)
            return _problem(exc, retry_after)
        rejected = {str(k): v for k, v in sub.row_map.rejected.items()}
        result = {"members": ids, "rows": len(sub.row_map), "chunks": sub.chunks, "bytes": sub.size,
                  "sha256": sub.sha256, "requests": batch.result.get("requests", 0) + usage.requests,
                  "sent_at": datetime.now(timezone.utc).isoformat(), "rejected": rejected, "file_id": cfg.file_id}
        if sub.task_id is None:  # no member made a row: nothing was uploaded, nothing to wait for
            result.update(status="failed", failed=rejected)
            return BatchOutcome.done({i: Outcome.fail(rejected.get(str(i), "it made no row in the import"),
                                                      code="anaplan.rejected") for i in ids}, result=result)
        log.info("anaplan.batch_sent", batch_id=batch.id, task_id=sub.task_id, members=len(ids),
                 rows=len(sub.row_map), requests=usage.requests)
        return BatchOutcome.running(cfg.poll_interval_s, reference=sub.task_id, result=result)

    # ------------------------------------------------------------------ the run
    def poll(self, batch: BatchItem, members: Sequence[DeliveryItem]) -> BatchOutcome:
        cfg = self._config(batch)
        result = dict(batch.result)
        task_id = batch.reference or ""
        usage = RequestCounter()
        try:
            task = self.imports.check(cfg, task_id, usage)
            if task is None:
                return self._still_running(batch, cfg, result, usage)
            counts = self.imports.clean_counts(task) if "rejected" in result else None
            if counts is not None:
                # Every row went in: what failed is what made no row when it was sent.
                failed = dict(result["rejected"])
                status = "failed" if members and len(failed) >= len(members) else "partial" if failed else "succeeded"
                reason = None
            else:
                import_batch = AnaplanBatch(batch_id=str(batch.id), config=cfg, documents=self._rows_source(members))
                data, row_map, fmt = self.imports.rows(import_batch, usage)
                if result.get("sha256") and hashlib.sha256(data).hexdigest() != result["sha256"]:
                    # The dump is matched by content; what cannot be traced fails the members for review.
                    log.warning("anaplan.batch_csv_changed", batch_id=batch.id)
                outcome = self.imports.conclude(import_batch, row_map, fmt, task_id, task, usage)
                failed = {str(r.document_id): r.reason or "rejected by Anaplan" for r in outcome.documents if not r.ok}
                counts, status, reason = outcome.counts, outcome.status, outcome.reason
        except (AnaplanError, httpx.HTTPError) as exc:
            problem = _problem(exc, self.settings.batch.retry_seconds)
            if problem.kind.value == "retry":  # the run goes on: look again, it is not sent again
                return BatchOutcome.wait(problem.error or "Anaplan did not answer", after=max(
                    cfg.poll_interval_s, problem.after or 0), code=problem.code)
            return problem
        result.update(failed=failed, counts=counts.model_dump(exclude={"details"}) if counts else None,
                      status=status, requests=result.get("requests", 0) + usage.requests,
                      finished_at=datetime.now(timezone.utc).isoformat())
        if status == "retry":
            return BatchOutcome.retry(reason or "Anaplan failed the import; sending again",
                                      after=self.settings.batch.retry_seconds, code="anaplan.retry", result=result)
        detail = {"anaplan": {"batch": batch.id, "task": task_id, "rows": result.get("rows"),
                              "documents": len(members), "counts": result.get("counts"), "status": status}}
        ok = Outcome.ok(detail, reference=f"batch {batch.id}, task {task_id}")
        outcomes = {m.delivery_id: (Outcome.fail(failed[str(m.delivery_id)], code="anaplan.rejected", detail=detail)
                                    if str(m.delivery_id) in failed else ok) for m in members}
        log.info("anaplan.batch_done", batch_id=batch.id, task_id=task_id, status=status, failed=len(failed),
                 requests=result["requests"])
        return BatchOutcome.done(outcomes, result=result, error=reason if status == "failed" else None)

    def _still_running(self, batch: BatchItem, cfg: AnaplanImportConfig, result: dict[str, Any],
                       usage: RequestCounter) -> BatchOutcome:
        sent = result.get("sent_at")
        elapsed = (datetime.now(timezone.utc) - datetime.fromisoformat(sent)).total_seconds() if sent else 0.0
        if elapsed <= cfg.task_timeout_s:
            result["requests"] = result.get("requests", 0) + usage.requests
            return BatchOutcome.running(cfg.poll_interval_s, reference=batch.reference, result=result)
        try:
            self.imports.client.cancel_task(cfg, batch.reference or "", usage)
        except (AnaplanError, httpx.HTTPError) as exc:
            log.warning("anaplan.cancel_failed", task_id=batch.reference, error=str(exc))
        result["requests"] = result.get("requests", 0) + usage.requests
        return BatchOutcome.retry(f"Anaplan import task {batch.reference} did not finish within "
                                  f"{cfg.task_timeout_s:.0f} s (cancelled; sending again)",
                                  after=self.settings.batch.retry_seconds, code="anaplan.timeout", result=result)

    def deliver(self, items: Sequence[DeliveryItem]) -> dict[int, Outcome]:
        """Not used: the worker batches Anaplan's deliveries (see :meth:`batch_key`)."""
        raise NotImplementedError("Anaplan deliveries go in batches")

    def check(self) -> list[Check]:
        checks = []
        for kind, cfg in self.settings.imports.items():
            try:
                meta = self.imports.metadata(cfg)
                checks.append(Check(f"import {kind}", True, f"{len(meta.header_names)} columns"))
            except (AnaplanError, httpx.HTTPError) as exc:
                checks.append(Check(f"import {kind}", False, str(exc)))
        return checks

    def close(self) -> None:
        self.imports.client.close()
