"""Anaplan as a flow target: an import fed by one upload of the run's rows.

The CSV header is exactly the import's ``headerNames`` in order, in the data source's text
format; the rows stream out of the store in record order, in gzip chunks of ``chunk_mb``
(``chunkCount: -1``, then ``/complete``), so the gateway never holds the set. The failure dump's
``_Line_`` numbers map back to records by that order.
"""

from __future__ import annotations

import csv
import gzip
import io
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from gateway.integrations.anaplan.client import (
    AnaplanClient, AnaplanConfigError, AnaplanImportConfig, CsvFormat, ImportMetadata, RequestCounter, _counts,
    _describe_details, _parse_dump, _safe_json,
)
from gateway.flows.model import Target


@dataclass
class TaskResult:
    """What Anaplan said about a finished import: counts, and the CSV lines it refused with why."""

    successful: bool
    state: str
    counts: dict[str, int]
    details: str
    rejected: dict[int, str] = field(default_factory=dict)  # CSV line (2 = first row) -> reason
    dump_missing: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


def _writer(buf: io.StringIO, fmt: CsvFormat) -> Any:
    return csv.writer(buf, delimiter=fmt.separator or ",", quotechar=fmt.delimiter or '"',
                      quoting=csv.QUOTE_MINIMAL if fmt.delimiter else csv.QUOTE_NONE,
                      escapechar=None if fmt.delimiter else "\\", lineterminator="\r\n")


class ImportTarget:
    """One Anaplan import (and its data-source file) a flow writes to."""

    def __init__(self, client: AnaplanClient, target: Target, *, request_timeout: float = 120.0) -> None:
        assert target.kind == "import" and target.import_id and target.file_id
        self.client = client
        self.request_timeout = request_timeout  # a request older than this has arrived or never will
        self.target = target
        self.cfg = AnaplanImportConfig(workspace_id=target.workspace_id, model_id=target.model_id,
                                       import_id=target.import_id, file_id=target.file_id, columns={"_": "_"},
                                       chunk_size=int(target.chunk_mb * 1_000_000), gzip_chunks=target.gzip,
                                       poll_interval_s=target.poll_seconds,
                                       poll_max_interval_s=target.poll_seconds * 12)
        self.usage = RequestCounter()
        self._meta: ImportMetadata | None = None

    @property
    def requests(self) -> int:
        return self.usage.requests

    def metadata(self) -> ImportMetadata:
        if self._meta is None:
            self._meta = self.client.import_metadata(self.cfg, self.usage)
            if self._meta.data_source_id and self._meta.data_source_id != self.target.file_id:
                raise AnaplanConfigError(f"import {self.target.import_id} reads file {self._meta.data_source_id}, "
                                         f"not {self.target.file_id}: fix target.file_id")
        return self._meta

    @property
    def headers(self) -> list[str]:
        return list(self.metadata().header_names)

    def _base(self) -> str:
        return f"/workspaces/{self.target.workspace_id}/models/{self.target.model_id}"

    def upload(self, rows: Iterable[list[str]], on_rows: Callable[[int], None] | None = None) -> int:
        """Stream ``rows`` (after the header) into the data-source file; returns the row count."""
        meta = self.metadata()
        fmt = meta.format
        base = f"{self._base()}/files/{self.target.file_id}"
        resp = self.client.request(self.usage, "POST", base, json={"chunkCount": -1})
        got = (_safe_json(resp).get("file") or {}).get("id")
        if got != self.target.file_id:
            raise AnaplanConfigError(f"Anaplan file {self.target.file_id} not found in model {self.target.model_id} "
                                     f"(Anaplan created file {got} instead)")
        limit = self.cfg.chunk_size
        buf = io.StringIO()
        writer = _writer(buf, fmt)
        for _ in range(max(0, fmt.header_row - 1)):
            writer.writerow([])
        writer.writerow(meta.header_names)
        for _ in range(max(0, fmt.first_data_row - fmt.header_row - 1)):
            writer.writerow([])
        chunk, count, pending = 0, 0, 0
        for row in rows:
            writer.writerow(row)
            count += 1
            pending += 1
            if pending >= 2000:
                pending = 0
                if on_rows:
                    on_rows(count)
                if buf.tell() >= limit:
                    self._put(base, chunk, buf.getvalue().encode(fmt.encoding))
                    chunk += 1
                    buf.seek(0)
                    buf.truncate()
        if buf.tell() or chunk == 0:
            self._put(base, chunk, buf.getvalue().encode(fmt.encoding))
            chunk += 1
        if on_rows:
            on_rows(count)
        self.client.request(self.usage, "POST", f"{base}/complete", json={"id": self.target.file_id})
        return count

    def _put(self, base: str, k: int, data: bytes) -> None:
        body, ctype = (gzip.compress(data, compresslevel=1, mtime=0), "application/x-gzip") if self.target.gzip \
            else (data, "application/octet-stream")
        self.client.request(self.usage, "PUT", f"{base}/chunks/{k}", expect=(204, 200), content=body,
                            headers={"Content-Type": ctype})

    def start(self) -> str:
        return self.client.start_import(self.cfg, self.usage)

    def find_task(self, after_ms: float) -> str | None:
        """A task of this import created at or after ``after_ms`` (epoch ms): after a crash between
        asking for the import and storing its id, the import it started is adopted, not run again."""
        resp = self.client.request(self.usage, "GET", f"{self._base()}/imports/{self.target.import_id}/tasks",
                                   params={"sort": "-creationTime"})
        for task in _safe_json(resp).get("tasks") or []:
            if float(task.get("creationTime") or 0) >= after_ms:
                return str(task.get("taskId"))
        return None

    def wait(self, task_id: str, *, sleep: Callable[[float], None] = time.sleep) -> TaskResult:
        """Poll the task until it is finished; read the counts and, with failures, the dump."""
        deadline = time.monotonic() + self.target.timeout_minutes * 60
        interval = self.target.poll_seconds
        while True:
            task = self.client.get_task(self.cfg, task_id, self.usage)
            state = str(task.get("taskState") or "")
            if state in ("COMPLETE", "CANCELLED"):
                break
            if time.monotonic() > deadline:
                self.client.cancel_task(self.cfg, task_id, self.usage)
                return TaskResult(False, "CANCELLED", {}, f"the import ran over {self.target.timeout_minutes:g} "
                                  "minutes and was cancelled", raw=task)
            sleep(interval)
            interval = min(interval * 1.5, self.cfg.poll_max_interval_s)  # 5 s -> 60 s, as Anaplan asks
        result = task.get("result") or {}
        counts = _counts(result).model_dump(exclude={"details"}) if result else {}
        out = TaskResult(bool(result.get("successful")) and state == "COMPLETE", state, counts,
                         _describe_details(result) if result else "cancelled", raw=task)
        if result.get("failureDumpAvailable"):
            dump = self.client.failure_dump(self.cfg, task_id, self.usage)
            if dump is None:
                out.dump_missing = True
            else:
                for row in _parse_dump(dump, self.metadata().format):
                    if row.line is not None:
                        out.rejected[row.line] = "; ".join(row.errors) or "rejected by Anaplan"
        return out

    def first_data_line(self) -> int:
        return self.metadata().format.first_data_row

