"""Anaplan's Integration API: the HTTP client (a kept token, the tenant's request budget, retries of
409/423/429/5xx within a call) and the import runner (:class:`AnaplanImports`).

Per batch (``specs/anaplan.md`` §11): build one CSV whose columns are exactly the import's
``headerNames`` (:mod:`~gateway.integrations.anaplan.rows`), upload it to the data-source file in
chunks, start the import task, poll it, read the counts, fetch the failure dump and map each
rejected row back to the document it came from. Imports are upserts keyed by the model's list
codes and dimensions, so re-running a batch is safe. The worker drives a batch in steps (submit,
check, conclude: see ``gateway.integrations.anaplan.destination``); :meth:`AnaplanImports.run_import`
does all of it in one call (tests and tools).

Secrets (passwords, private keys, tokens, client secrets, refresh tokens) never reach logs,
``repr()`` or exception texts."""

from __future__ import annotations

import csv
import email.utils
import gzip
import hashlib
import io
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

import httpx
import structlog
import tenacity

from gateway.integrations.anaplan.auth import (
    AnaplanAuth,
    AnaplanEndpoints,
    BasicAuth,
    CertificateAuth,
    OAuth2RefreshTokenAuth,
    _safe_json,
    _Send,
    _TokenKeeper,
)
from gateway.integrations.anaplan.errors import (
    _RETRY_STATUSES,
    AnaplanAuthError,
    AnaplanConfigError,
    AnaplanError,
    AnaplanHTTPError,
    AnaplanRetryLater,
)
from gateway.integrations.anaplan.rows import (
    AnaplanBatch,
    DocumentResult,
    ImportCounts,
    ImportOutcome,
    RowMap,
    build_csv,
    neutralise_cell,
)
from gateway.integrations.anaplan.settings import (
    AnaplanImportConfig,
    AnaplanSettings,
    Const,
    CsvFormat,
    ImportMetadata,
    make_auth,
)

__all__ = [
    "AnaplanEndpoints", "AnaplanAuth", "BasicAuth", "CertificateAuth", "OAuth2RefreshTokenAuth",
    "RequestBudget", "InMemoryRequestBudget", "FileLock", "InMemoryFileLock", "RetryPolicy",
    "Const", "AnaplanImportConfig", "CsvFormat", "ImportMetadata", "RowMap", "build_csv",
    "neutralise_cell", "AnaplanBatch", "DocumentResult", "ImportCounts", "ImportOutcome",
    "AnaplanClient", "AnaplanImports", "RequestCounter",
    "AnaplanError", "AnaplanAuthError", "AnaplanConfigError", "AnaplanHTTPError", "AnaplanRetryLater",
]

log = structlog.get_logger("gateway.integrations.anaplan.client")



class RequestBudget(Protocol):
    """Tenant-wide request allowance. ``acquire`` blocks up to ``max_wait`` seconds for ``n``
    requests and returns ``True``, or returns ``False`` at once if they cannot be had in time."""

    def acquire(self, n: int = 1, *, max_wait: float = 30.0) -> bool: ...


class InMemoryRequestBudget:
    """Token bucket for one process (the store provides the tenant-wide one). Keep
    ``per_minute`` below 600 to leave room for the tenant's other integrations and users."""

    def __init__(self, per_minute: float = 500, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else per_minute
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._at = clock()
        self._lock = threading.Lock()

    def acquire(self, n: int = 1, *, max_wait: float = 30.0) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= n:
                self._tokens -= n
                return True
            wait = (n - self._tokens) / self.rate if self.rate > 0 else math.inf
            if wait > max_wait or n > self.capacity:
                return False
            self._tokens -= n  # reserve now (balance goes negative) so waiters queue fairly
        self._sleep(wait)
        return True


class FileLock(Protocol):
    """Mutual exclusion per Anaplan data-source file, held from upload until the dump is read.
    ``hold`` raises :class:`AnaplanRetryLater` if the lock is not free within ``timeout``."""

    def hold(self, key: str, *, timeout: float) -> AbstractContextManager[None]: ...


class InMemoryFileLock:
    """Per-key locks for one process (the store provides a cross-process lease later)."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: str, *, timeout: float) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise AnaplanRetryLater(f"Anaplan file {key} is busy with another batch")
        try:
            yield
        finally:
            lock.release()



_RETRY_5XX = frozenset({500, 502, 503, 504})


class _Transient(Exception):
    def __init__(self, description: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(description)
        self.retry_after = retry_after
        self.busy = status in _RETRY_STATUSES


@dataclass
class RetryPolicy:
    """Backoff for 429 / 409 busy / 423 locked / 5xx / network errors (Retry-After honoured)."""

    attempts: int = 8
    initial_s: float = 3.0
    multiplier: float = 1.5
    max_s: float = 120.0
    jitter_s: float = 1.0


class RequestCounter:
    """HTTP requests made on behalf of one batch (reported in the outcome; DESIGN budgets
    ≤ 0.01 Anaplan requests per document)."""

    def __init__(self) -> None:
        self.requests = 0




def _api_message(resp: httpx.Response) -> str:
    status = _safe_json(resp).get("status")
    if isinstance(status, dict):
        return str(status.get("message", ""))[:200]
    return ""


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class AnaplanClient:
    """Integration API calls with a kept token, the request budget and retries.

    Thread-safe: one instance serves every batch of a process."""

    def __init__(self, auth: AnaplanAuth, *, endpoints: AnaplanEndpoints | None = None,
                 budget: RequestBudget | None = None, budget_max_wait_s: float = 60.0,
                 retry: RetryPolicy | None = None, refresh_margin_s: float = 300.0,
                 timeout_s: float = 120.0, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.endpoints = endpoints or AnaplanEndpoints()
        self.budget = budget or InMemoryRequestBudget()
        self.budget_max_wait_s = budget_max_wait_s
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))
        self._owns_http = http is None
        self._tokens = _TokenKeeper(auth, self.endpoints, refresh_margin_s, clock)

    # ---------------------------------------------------------------- transport

    def _send_raw(self, usage: RequestCounter, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One metered HTTP attempt: budget first, then the wire."""
        if not self.budget.acquire(1, max_wait=self.budget_max_wait_s):
            raise AnaplanRetryLater("Anaplan tenant request budget exhausted", busy=True)
        usage.requests += 1
        return self._http.request(method, url, **kwargs)

    def _with_retries(self, usage: RequestCounter, method: str, url: str, route: str, *,
                      idempotent: bool, **kwargs: Any) -> httpx.Response:
        def attempt() -> httpx.Response:
            try:
                resp = self._send_raw(usage, method, url, **kwargs)
            except httpx.TransportError as exc:
                if idempotent:
                    raise _Transient(f"{type(exc).__name__} on {method} {route}") from None
                raise AnaplanRetryLater(f"Anaplan {method} {route}: {type(exc).__name__}; "
                                        "outcome unknown") from None
            if resp.status_code in _RETRY_STATUSES or (idempotent and resp.status_code in _RETRY_5XX):
                log.warning("anaplan.retry", method=method, route=route, status=resp.status_code)
                raise _Transient(f"HTTP {resp.status_code} on {method} {route}", _retry_after(resp), resp.status_code)
            return resp

        policy = self.retry
        exp = tenacity.wait_exponential(multiplier=policy.initial_s, exp_base=policy.multiplier,
                                        max=policy.max_s)
        jitter = tenacity.wait_random(0, policy.jitter_s)

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                return min(exc.retry_after, policy.max_s)
            return min(exp(state) + jitter(state), policy.max_s)

        try:
            for att in tenacity.Retrying(retry=tenacity.retry_if_exception_type(_Transient),
                                         wait=wait, stop=tenacity.stop_after_attempt(policy.attempts),
                                         sleep=self._sleep, reraise=True):
                with att:
                    return attempt()
        except _Transient as exc:
            raise AnaplanRetryLater(f"Anaplan kept refusing: {exc} "
                                    f"({policy.attempts} attempts)", exc.retry_after, busy=exc.busy) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _auth_send(self, usage: RequestCounter) -> _Send:
        def send(method: str, url: str, **kwargs: Any) -> httpx.Response:
            route = url.removeprefix(self.endpoints.auth).removeprefix(self.endpoints.oauth)
            return self._with_retries(usage, method, url, route, idempotent=True, **kwargs)
        return send

    def request(self, usage: RequestCounter, method: str, path: str, *, idempotent: bool = True,
                expect: Sequence[int] = (200,), headers: Mapping[str, str] | None = None,
                **kwargs: Any) -> httpx.Response:
        """Integration API call (``path`` below ``/2/0``) with token, budget, retries and one
        re-authentication on 401. Answers outside ``expect`` raise :class:`AnaplanHTTPError`."""
        url = self.endpoints.api + path
        for replay in (False, True):
            token = self._tokens.get(self._auth_send(usage))
            hdrs = {"Authorization": f"AnaplanAuthToken {token}", **(headers or {})}
            resp = self._with_retries(usage, method, url, path, idempotent=idempotent,
                                      headers=hdrs, **kwargs)
            if resp.status_code == 401 and not replay:
                log.info("anaplan.token_rejected", route=path)
                self._tokens.invalidate(token)
                continue
            if resp.status_code == 401:
                raise AnaplanAuthError(f"Anaplan {method} {path}: token rejected after re-authentication")
            if resp.status_code not in expect:
                raise AnaplanHTTPError(method, path, resp.status_code, _api_message(resp))
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self, *, logout: bool = True) -> None:
        """Log the token out (Anaplan's advice) and release connections."""
        if logout:
            try:
                self._tokens.logout(self._auth_send(RequestCounter()))
            except (AnaplanError, httpx.HTTPError) as exc:
                log.warning("anaplan.logout_failed", error_type=type(exc).__name__)
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> AnaplanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- operations

    @staticmethod
    def _model_path(cfg: AnaplanImportConfig) -> str:
        return f"/workspaces/{cfg.workspace_id}/models/{cfg.model_id}"

    def import_metadata(self, cfg: AnaplanImportConfig, usage: RequestCounter | None = None) -> ImportMetadata:
        """D7 + D6: expected headers, text format and the data-source file the import reads."""
        usage = usage or RequestCounter()
        base = self._model_path(cfg)
        meta = _safe_json(self.request(usage, "GET", f"{base}/imports/{cfg.import_id}"))
        source = (meta.get("importMetadata") or {}).get("source") or {}
        headers = source.get("headerNames")
        if not isinstance(headers, list) or not headers:
            raise AnaplanConfigError(f"import {cfg.import_id} exposes no headerNames "
                                     "(is it a file import?)")
        decimal = source.get("decimalSeparator") or "."
        if decimal != ".":
            raise AnaplanConfigError(f"import {cfg.import_id} expects decimal separator "
                                     f"{decimal!r}; canonical decimals use '.'")
        fmt = CsvFormat(separator=source.get("columnSeparator") or ",",
                        delimiter=source.get("textDelimiter") or "",
                        encoding=source.get("textEncoding") or "UTF-8",
                        header_row=int(source.get("headerRow", 1)),
                        first_data_row=int(source.get("firstDataRow", 2)))
        listing = _safe_json(self.request(usage, "GET", f"{base}/imports", params={"limit": 5000}))
        data_source = next((i.get("importDataSourceId") for i in listing.get("imports", [])
                            if i.get("id") == cfg.import_id), None)
        return ImportMetadata(header_names=tuple(headers), format=fmt, data_source_id=data_source,
                              name=str((meta.get("importMetadata") or {}).get("name", "")))

    def upload(self, cfg: AnaplanImportConfig, data: bytes, usage: RequestCounter) -> int:
        """§5.3: set the chunk count, PUT every chunk (gzip), completion is implicit. Returns n."""
        base = f"{self._model_path(cfg)}/files/{cfg.file_id}"
        n = max(1, math.ceil(len(data) / cfg.chunk_size))
        resp = self.request(usage, "POST", base, json={"chunkCount": n})
        got = (_safe_json(resp).get("file") or {}).get("id")
        if got != cfg.file_id:
            # Anaplan made a new private file instead of using ours: the import would not see it.
            raise AnaplanConfigError(f"Anaplan file {cfg.file_id} not found in model {cfg.model_id} "
                                     f"(Anaplan created file {got} instead)")
        for k in range(n):
            chunk = data[k * cfg.chunk_size:(k + 1) * cfg.chunk_size]
            if cfg.gzip_chunks:
                body, ctype = gzip.compress(chunk, mtime=0), "application/x-gzip"
            else:
                body, ctype = chunk, "application/octet-stream"
            self.request(usage, "PUT", f"{base}/chunks/{k}", expect=(204, 200), content=body,
                         headers={"Content-Type": ctype})
        return n

    def start_import(self, cfg: AnaplanImportConfig, usage: RequestCounter) -> str:
        # Not idempotent: a 5xx/timeout may still have queued a task, so those are not replayed.
        resp = self.request(usage, "POST", f"{self._model_path(cfg)}/imports/{cfg.import_id}/tasks",
                            idempotent=False, json={"localeName": cfg.locale_name})
        data = _safe_json(resp)
        task_id = (data.get("task") or {}).get("taskId") or data.get("taskId")
        if not task_id:
            raise AnaplanHTTPError("POST", "/imports/…/tasks", resp.status_code, "no taskId in answer")
        return str(task_id)

    def get_task(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> dict[str, Any]:
        resp = self.request(usage, "GET",
                            f"{self._model_path(cfg)}/imports/{cfg.import_id}/tasks/{task_id}")
        return _safe_json(resp).get("task") or {}

    def cancel_task(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> None:
        self.request(usage, "DELETE",
                     f"{self._model_path(cfg)}/imports/{cfg.import_id}/tasks/{task_id}")

    def failure_dump(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> bytes | None:
        """§6.2: list dump chunks, fetch each. ``None`` when the dump is gone (404/204)."""
        base = f"{self._model_path(cfg)}/imports/{cfg.import_id}/tasks/{task_id}/dump"
        resp = self.request(usage, "GET", f"{base}/chunks", expect=(200, 204, 404))
        if resp.status_code != 200:
            return None
        chunks = _safe_json(resp).get("chunks") or []
        if not chunks:
            return None
        parts = []
        for chunk in chunks:
            part = self.request(usage, "GET", f"{base}/chunks/{chunk['id']}", expect=(200, 404))
            if part.status_code == 404:
                return None
            parts.append(part.content)
        return b"".join(parts)



_RETRYABLE_TASK_FAILURES = frozenset({"uploadedFileNoLongerAvailable", "internalError"})
_HEADER_TASK_FAILURES = frozenset({"missingFields"})


def _pairs(values: Sequence[Any]) -> dict[str, str]:
    return {str(values[i]): str(values[i + 1]) for i in range(0, len(values) - 1, 2)}


def _counts(result: Mapping[str, Any]) -> ImportCounts:
    counts = ImportCounts(details=list(result.get("details") or []))
    for detail in counts.details:
        values = _pairs(detail.get("values") or [])

        def num(*keys: str) -> int:
            for key in keys:
                if key in values and values[key].lstrip("-").isdigit():
                    return int(values[key])
            return 0

        counts.total += num("totalRowCount")
        counts.successful += num("successRowCount")
        counts.created += num("createdCount", "successCreateCount")
        counts.updated += num("updatedCount", "successUpdateCount")
        counts.failed += num("failedCount")
        counts.ignored += num("ignoredCount")
    return counts


def _describe_details(result: Mapping[str, Any]) -> str:
    parts = []
    for detail in result.get("details") or []:
        text = detail.get("localMessageText") or ""
        parts.append(f"{detail.get('type', 'unknown')}: {text}".strip().rstrip(":"))
    return "; ".join(parts) or "import failed without details"


@dataclass
class _DumpRow:
    line: int | None
    cells: list[str]
    errors: list[str]


def _parse_dump(dump: bytes, fmt: CsvFormat) -> list[_DumpRow]:
    text = dump.decode(fmt.encoding, errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt.separator or ",", quotechar='"')
    records = [r for r in reader if r]
    if not records:
        return []
    header = records[0]
    line_col = header.index("_Line_") if "_Line_" in header else None
    error_cols = [i for i, h in enumerate(header) if re.fullmatch(r"_+Error_+\d+_*", h)]
    n_source = line_col if line_col is not None else (min(error_cols) if error_cols else len(header))
    rows = []
    for rec in records[1:]:
        line = None
        if line_col is not None and line_col < len(rec) and rec[line_col].strip().isdigit():
            line = int(rec[line_col])
        errors = [rec[i] for i in error_cols if i < len(rec) and rec[i].strip()]
        rows.append(_DumpRow(line=line, cells=rec[:n_source], errors=errors))
    return rows


@dataclass
class Submission:
    """A batch handed to Anaplan: the task started and which document each CSV row came from."""

    task_id: str | None
    row_map: RowMap
    format: CsvFormat
    chunks: int
    size: int
    sha256: str


class AnaplanImports:
    """Runs batches into Anaplan imports. One instance per process; thread-safe."""

    def __init__(self, client: AnaplanClient, *, file_lock: FileLock | None = None,
                 lock_timeout_s: float = 900.0, metadata_ttl_s: float = 600.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.file_lock = file_lock or InMemoryFileLock()
        self.lock_timeout_s = lock_timeout_s
        self.metadata_ttl_s = metadata_ttl_s
        self._sleep = sleep
        self._meta: dict[tuple[str, str, str], tuple[float, ImportMetadata]] = {}
        self._meta_lock = threading.Lock()

    def metadata(self, cfg: AnaplanImportConfig, usage: RequestCounter | None = None) -> ImportMetadata:
        """Import metadata, cached for ``metadata_ttl_s`` (headers change only when a model
        builder edits the import; a header failure drops the cache at once)."""
        key = (cfg.workspace_id, cfg.model_id, cfg.import_id)
        with self._meta_lock:
            cached = self._meta.get(key)
        if cached and time.monotonic() - cached[0] < self.metadata_ttl_s:
            return cached[1]
        meta = self.client.import_metadata(cfg, usage)
        if meta.data_source_id is not None and meta.data_source_id != cfg.file_id:
            raise AnaplanConfigError(f"import {cfg.import_id} reads file {meta.data_source_id}, "
                                     f"not the configured file {cfg.file_id}")
        with self._meta_lock:
            self._meta[key] = (time.monotonic(), meta)
        return meta

    def forget_metadata(self, cfg: AnaplanImportConfig) -> None:
        with self._meta_lock:
            self._meta.pop((cfg.workspace_id, cfg.model_id, cfg.import_id), None)

    # ---------------------------------------------------------------- the batch

    def run_import(self, batch: AnaplanBatch) -> ImportOutcome:
        """Upload, import, poll, read counts and dump; map rejected rows to documents.

        Never raises for Anaplan-side conditions: they come back as an outcome whose ``status``
        and per-document results the pipeline records."""
        usage = RequestCounter()
        cfg = batch.config
        bound = log.bind(batch_id=batch.batch_id, import_id=cfg.import_id, file_id=cfg.file_id)
        if not batch.documents:
            return ImportOutcome(batch_id=batch.batch_id, status="succeeded", documents=[])
        try:
            with self.file_lock.hold(cfg.file_key, timeout=self.lock_timeout_s):
                outcome = self._run_locked(batch, usage, bound)
        except AnaplanConfigError as exc:
            outcome = self._whole_batch(batch, "failed", str(exc), retryable=False)
        except AnaplanAuthError as exc:
            outcome = self._whole_batch(batch, "failed", str(exc), retryable=False)
        except AnaplanRetryLater as exc:
            outcome = self._whole_batch(batch, "retry", str(exc), retryable=True)
        except AnaplanHTTPError as exc:
            outcome = self._whole_batch(batch, "retry" if exc.retryable else "failed", str(exc),
                                        retryable=exc.retryable)
        except httpx.HTTPError as exc:
            outcome = self._whole_batch(batch, "retry", f"Anaplan unreachable: {type(exc).__name__}",
                                        retryable=True)
        outcome.requests_used = usage.requests
        bound.info("anaplan.batch_done", status=outcome.status, task_id=outcome.task_id,
                   requests=usage.requests, documents=len(batch.documents),
                   failed=sum(1 for d in outcome.documents if not d.ok))
        return outcome

    def _run_locked(self, batch: AnaplanBatch, usage: RequestCounter, bound: Any) -> ImportOutcome:
        submission = self.submit(batch, usage)
        if submission.task_id is None:
            return self._finish(batch, submission.row_map, submission.format, None, None, {},
                                status_hint="failed")
        bound.info("anaplan.import_started", task_id=submission.task_id, rows=len(submission.row_map),
                   chunks=submission.chunks, bytes=submission.size)
        try:
            task = self._poll(batch.config, submission.task_id, usage)
        except AnaplanRetryLater as exc:
            out = self._whole_batch(batch, "retry", str(exc), retryable=True, row_map=submission.row_map)
            out.task_id = submission.task_id
            return out
        return self.conclude(batch, submission.row_map, submission.format, submission.task_id, task, usage)

    # ---------------------------------------------------------------- the batch in steps
    # The pipeline drives a batch across several stage runs instead of blocking in run_import:
    # submit (upload + start the task), check (one poll), conclude (counts, dump, per document).

    def rows(self, batch: AnaplanBatch, usage: RequestCounter | None = None) -> tuple[bytes, RowMap, CsvFormat]:
        """The batch's CSV and row map, exactly as :meth:`submit` uploads it (deterministic)."""
        meta = self.metadata(batch.config, usage)
        data, row_map = build_csv(batch.documents, batch.config, meta.header_names, meta.format)
        return data, row_map, meta.format

    def submit(self, batch: AnaplanBatch, usage: RequestCounter) -> Submission:
        """Build the CSV, upload it in chunks and start the import task (no waiting).

        ``task_id`` is None when no document produced a row (nothing was uploaded). Raises the
        ``Anaplan*`` errors; the caller must hold the file's lock until :meth:`conclude`."""
        cfg = batch.config
        data, row_map, fmt = self.rows(batch, usage)
        digest = hashlib.sha256(data).hexdigest()
        if not row_map.rows:
            return Submission(None, row_map, fmt, 0, len(data), digest)
        chunks = self.client.upload(cfg, data, usage)
        task_id = self.client.start_import(cfg, usage)
        return Submission(task_id, row_map, fmt, chunks, len(data), digest)

    def check(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> dict[str, Any] | None:
        """One poll: the task when it is terminal (COMPLETE or CANCELLED), else None."""
        task = self.client.get_task(cfg, task_id, usage)
        return task if task.get("taskState") in ("COMPLETE", "CANCELLED") else None

    @staticmethod
    def clean_counts(task: Mapping[str, Any]) -> ImportCounts | None:
        """A terminal task's counts when every row went in (complete, successful, no row failed, no
        failure dump); None when the rows must be traced (:meth:`conclude`)."""
        result = task.get("result") or {}
        if task.get("taskState") != "COMPLETE" or not result.get("successful", False) \
                or result.get("failureDumpAvailable"):
            return None
        counts = _counts(result)
        return counts if counts.failed == 0 else None

    def conclude(self, batch: AnaplanBatch, row_map: RowMap, fmt: CsvFormat, task_id: str,
                 task: Mapping[str, Any], usage: RequestCounter) -> ImportOutcome:
        """Read a terminal task: counts, failure dump (fetched now: the next run replaces it), and
        the result of every document."""
        cfg = batch.config
        state = task.get("taskState")
        result = task.get("result") or {}
        if state == "CANCELLED":
            out = self._whole_batch(batch, "retry", f"Anaplan import task {task_id} was cancelled",
                                    retryable=True, row_map=row_map)
            out.task_id = task_id
            return out
        if not result.get("successful", False):
            codes = {d.get("type") for d in result.get("details") or []}
            if codes & _HEADER_TASK_FAILURES:
                self.forget_metadata(cfg)  # the import changed under us: re-read it next time
            reason = f"Anaplan import failed: {_describe_details(result)}"
            out = self._whole_batch(batch, "failed", reason,
                                    retryable=bool(codes & _RETRYABLE_TASK_FAILURES), row_map=row_map)
            if out.retryable:
                out.status = "retry"
            out.task_id, out.counts = task_id, _counts(result)
            return out
        dump = None
        if result.get("failureDumpAvailable"):
            dump = self.client.failure_dump(cfg, task_id, usage)
        return self._finish(batch, row_map, fmt, task_id, dump, result)

    def _poll(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> dict[str, Any]:
        """Poll until COMPLETE or CANCELLED (both terminal, §6.3), backing off to the max interval;
        on timeout cancel the task so it does not run against a file we no longer guard."""
        interval = cfg.poll_interval_s
        deadline = time.monotonic() + cfg.task_timeout_s
        while True:
            self._sleep(interval)
            task = self.client.get_task(cfg, task_id, usage)
            if task.get("taskState") in ("COMPLETE", "CANCELLED"):
                return task
            if time.monotonic() >= deadline:
                try:
                    self.client.cancel_task(cfg, task_id, usage)
                except AnaplanError as exc:
                    log.warning("anaplan.cancel_failed", task_id=task_id, error=str(exc))
                raise AnaplanRetryLater(f"Anaplan import task {task_id} did not finish within "
                                        f"{cfg.task_timeout_s:.0f} s (cancelled)")
            interval = min(interval * 2, cfg.poll_max_interval_s)

    # ---------------------------------------------------------------- outcome assembly

    @staticmethod
    def _whole_batch(batch: AnaplanBatch, status: Literal["failed", "retry"], reason: str, *,
                     retryable: bool, row_map: RowMap | None = None) -> ImportOutcome:
        rejected = row_map.rejected if row_map is not None else {}
        docs = [DocumentResult(document_id=d.get("id"), ok=False,
                               reason=rejected.get(d.get("id"), reason)) for d in batch.documents]
        return ImportOutcome(batch_id=batch.batch_id, status=status, documents=docs, reason=reason,
                             retryable=retryable)

    def _finish(self, batch: AnaplanBatch, row_map: RowMap, fmt: CsvFormat, task_id: str | None,
                dump: bytes | None, result: Mapping[str, Any],
                status_hint: str | None = None) -> ImportOutcome:
        counts = _counts(result) if result else None
        rows_of: dict[Any, list[int]] = {}
        for i, doc_id in enumerate(row_map.rows):
            rows_of.setdefault(doc_id, []).append(i + 1)
        failures: dict[Any, list[str]] = {}
        unattributed = 0
        if dump is not None:
            claimed: set[int] = set()
            for row in _parse_dump(dump, fmt):
                idx = self._match_row(row, row_map, claimed)
                if idx is None:
                    unattributed += 1
                    continue
                claimed.add(idx)
                reason = "; ".join(row.errors) or "rejected by Anaplan (no reason given)"
                failures.setdefault(row_map.rows[idx], []).append(f"row {idx + 1}: {reason}")
        expected_failed = counts.failed if counts else 0
        attributed = sum(len(v) for v in failures.values())
        blanket = None
        if expected_failed > attributed:
            # Without the dump we cannot tell which rows failed: flag every document for review
            # (re-running is safe — imports are upserts).
            blanket = (f"Anaplan rejected {expected_failed} row(s) but only {attributed} could be "
                       f"traced to documents (failure dump {'unreadable' if dump else 'unavailable'})")
        results = []
        for document in batch.documents:
            doc_id = document.get("id")
            if doc_id in row_map.rejected:
                results.append(DocumentResult(document_id=doc_id, ok=False, reason=row_map.rejected[doc_id]))
            elif doc_id in failures:
                results.append(DocumentResult(document_id=doc_id, ok=False,
                                              reason="Anaplan rejected " + "; ".join(failures[doc_id]),
                                              rows=rows_of.get(doc_id, [])))
            elif blanket:
                results.append(DocumentResult(document_id=doc_id, ok=False, reason=blanket,
                                              rows=rows_of.get(doc_id, [])))
            else:
                results.append(DocumentResult(document_id=doc_id, ok=True, rows=rows_of.get(doc_id, [])))
        n_bad = sum(1 for r in results if not r.ok)
        if status_hint == "failed" or n_bad == len(results):
            status: Literal["succeeded", "partial", "failed", "retry"] = "failed"
        elif n_bad:
            status = "partial"
        else:
            status = "succeeded"
        return ImportOutcome(batch_id=batch.batch_id, status=status, documents=results,
                             task_id=task_id, counts=counts, failure_dump=dump, reason=blanket,
                             retryable=False)

    @staticmethod
    def _match_row(row: _DumpRow, row_map: RowMap, claimed: set[int]) -> int | None:
        """Trust ``_Line_`` when the cells agree; otherwise find the row by its content."""
        if row.line is not None:
            idx = row.line - row_map.first_data_row
            if 0 <= idx < len(row_map.cells) and idx not in claimed and row_map.cells[idx] == row.cells:
                return idx
        for idx, cells in enumerate(row_map.cells):
            if idx not in claimed and cells == row.cells:
                return idx
        return None


def make_imports(self: AnaplanSettings, *, budget: RequestBudget | None = None,
                 on_refresh_token: Callable[[str], None] | None = None,
                 refresh_token: str | None = None) -> AnaplanImports:
    """An import runner whose client keeps one token and waits for no more than a few seconds in a
    call: longer waits (429, model busy or locked) go back to the worker as a wait."""
    retry = RetryPolicy(attempts=self.retry_attempts, initial_s=min(1.0, self.retry_max_seconds),
                        multiplier=2.0, max_s=self.retry_max_seconds, jitter_s=0.25)
    client = AnaplanClient(make_auth(self, on_refresh_token=on_refresh_token, refresh_token=refresh_token),
                           endpoints=self.endpoints(), budget=budget, budget_max_wait_s=10.0,
                           retry=retry, timeout_s=self.timeout_seconds)
    return AnaplanImports(client)
