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
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

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
    cells: dict[int, tuple[str, ...]] = field(default_factory=dict)  # CSV line -> the row as uploaded
    dump_missing: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


def _writer(buf: io.StringIO, fmt: CsvFormat) -> Any:
    return csv.writer(buf, delimiter=fmt.separator or ",", quotechar=fmt.delimiter or '"',
                      quoting=csv.QUOTE_MINIMAL if fmt.delimiter else csv.QUOTE_NONE,
                      escapechar=None if fmt.delimiter else "\\", lineterminator="\r\n")


class CsvSpool:
    """The run's CSV, written to a temporary file as records are read (never held in memory), with
    each line's source key beside it so the failure dump's ``_Line_`` maps back to records."""

    def __init__(self, meta: ImportMetadata) -> None:
        self.format = meta.format
        self.file = tempfile.TemporaryFile("w+", encoding=meta.format.encoding, newline="")
        self.keys = tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n")
        self._writer = _writer(self.file, meta.format)  # type: ignore[arg-type]
        for _ in range(max(0, meta.format.header_row - 1)):
            self._writer.writerow([])
        self._writer.writerow(meta.header_names)
        for _ in range(max(0, meta.format.first_data_row - meta.format.header_row - 1)):
            self._writer.writerow([])
        self.count = 0

    def write(self, row: list[str], key: str) -> None:
        self._writer.writerow(row)
        self.keys.write(key.replace("\n", " ") + "\n")
        self.count += 1

    def blocks(self, size: int) -> Iterator[bytes]:
        """The file's bytes in blocks of ``size`` (chunks may cut a row: Anaplan joins them in order)."""
        self.file.flush()
        raw = self.file.buffer  # type: ignore[attr-defined]
        raw.seek(0)
        while True:
            block = raw.read(size)
            if not block:
                return
            yield block

    def keys_at(self, lines: Iterable[int]) -> dict[int, str]:
        """Source keys of the given CSV lines (numbered as in the file, header included)."""
        wanted = set(lines)
        out: dict[int, str] = {}
        self.keys.flush()
        self.keys.seek(0)
        for i, key in enumerate(self.keys, start=self.format.first_data_row):
            if i in wanted:
                out[i] = key.rstrip("\n")
        return out

    def close(self) -> None:
        self.file.close()
        self.keys.close()


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

    def spool(self) -> CsvSpool:
        return CsvSpool(self.metadata())

    def upload(self, spool: CsvSpool) -> int:
        """The spool into the data-source file, in gzip chunks of ``chunk_mb``; returns the row count."""
        base = f"{self._base()}/files/{self.target.file_id}"
        resp = self.client.request(self.usage, "POST", base, json={"chunkCount": -1})
        got = (_safe_json(resp).get("file") or {}).get("id")
        if got != self.target.file_id:
            raise AnaplanConfigError(f"Anaplan file {self.target.file_id} not found in model {self.target.model_id} "
                                     f"(Anaplan created file {got} instead)")
        for k, block in enumerate(spool.blocks(self.cfg.chunk_size)):
            self._put(base, k, block)
        self.client.request(self.usage, "POST", f"{base}/complete", json={"id": self.target.file_id})
        return spool.count

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
                        out.cells[row.line] = tuple(row.cells)
        return out

    def first_data_line(self) -> int:
        return self.metadata().format.first_data_row

