"""Anaplan as a record-flow target: an import, a process, or a list through the list-items API.

Import and process: the run's rows become the import's data-source file — the CSV header exactly
the import's ``headerNames`` in order, in the data source's text format, streamed from a spool
file in gzip chunks of ``chunk_mb`` (``chunkCount: -1``, then ``/complete``), so the gateway never
holds the set — then the import (or the process: several imports after one upload, their nested
results and dumps) runs. The failure dump's ``_Line_`` numbers map back to records by spool order.

List items: the rows (name, code, parent, properties) are added (new codes) or updated (known
ones) through ``…/lists/L/items``, at most 100,000 a call; per-item failures map back the same
way. Only a workspace administrator may write lists: a 403 says so.

Requests go through :class:`AnaplanClient` (token, the tenant's shared 600/min budget, 429 /
409 busy / 423 locked waited out and retried as on the EDI path).
"""

from __future__ import annotations

import csv
import gzip
import io
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from gateway.flows.model import Target
from gateway.integrations.anaplan.client import (
    AnaplanClient, AnaplanConfigError, AnaplanHTTPError, AnaplanImportConfig, CsvFormat, ImportMetadata,
    RequestCounter, _counts, _describe_details, _parse_dump, _safe_json,
)


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

    def write_many(self, rows: list[list[str]], keys: list[str]) -> None:
        """A page's rows at once (one call each into the csv writer and the keys file)."""
        if rows:
            self._writer.writerows(rows)
            self.keys.write("\n".join(k.replace("\n", " ") for k in keys) + "\n")
            self.count += len(rows)

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

    def __init__(self, client: AnaplanClient, target: Target, *, request_timeout: float = 120.0,
                 import_id: str | None = None) -> None:
        assert target.file_id and (import_id or target.import_id)
        self.client = client
        self.request_timeout = request_timeout  # a request older than this has arrived or never will
        self.target = target
        self.cfg = AnaplanImportConfig(workspace_id=target.workspace_id, model_id=target.model_id,
                                       import_id=import_id or target.import_id, file_id=target.file_id,
                                       columns={"_": "_"},
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
                raise AnaplanConfigError(f"import {self.cfg.import_id} reads file {self._meta.data_source_id}, "
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
        resp = self.client.request(self.usage, "GET", f"{self._base()}/imports/{self.cfg.import_id}/tasks",
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



class ProcessTarget(ImportTarget):
    """A process: one upload to the file its first import reads, then every import of the process in
    order; the imports that read that file have their dumps mapped back to the run's lines."""

    def __init__(self, client: AnaplanClient, target: Target, *, request_timeout: float = 120.0) -> None:
        assert target.kind == "process" and target.process_id and target.file_id
        self.process_id = target.process_id
        self._actions: list[str] | None = None
        super().__init__(client, target, request_timeout=request_timeout, import_id="112000000000")
        self.cfg = self.cfg.model_copy(update={"import_id": self._reading_import(client)})

    def _reading_import(self, client: AnaplanClient) -> str:
        """The first import of the process that reads the flow's file (its headers are the CSV's)."""
        usage = self.usage
        meta = _safe_json(client.request(usage, "GET", f"{self._base()}/processes/{self.process_id}"))
        actions = [str(a) for a in (meta.get("processMetadata") or {}).get("actions") or []]
        listing = _safe_json(client.request(usage, "GET", f"{self._base()}/imports", params={"limit": 5000}))
        reads = {str(i.get("id")): str(i.get("importDataSourceId")) for i in listing.get("imports") or []}
        self._actions = actions
        mine = [a for a in actions if reads.get(a) == self.target.file_id]
        if not mine:
            raise AnaplanConfigError(f"process {self.process_id} runs no import that reads file {self.target.file_id}"
                                     f" (its actions: {', '.join(actions) or 'none'})")
        self._readers = set(mine)
        return mine[0]

    def start(self) -> str:
        resp = self.client.request(self.usage, "POST", f"{self._base()}/processes/{self.process_id}/tasks",
                                   idempotent=False, json={"localeName": self.cfg.locale_name})
        data = _safe_json(resp)
        task_id = (data.get("task") or {}).get("taskId") or data.get("taskId")
        if not task_id:
            raise AnaplanHTTPError("POST", "/processes/…/tasks", resp.status_code, "no taskId in answer")
        return str(task_id)

    def find_task(self, after_ms: float) -> str | None:
        resp = self.client.request(self.usage, "GET", f"{self._base()}/processes/{self.process_id}/tasks",
                                   params={"sort": "-creationTime"})
        for task in _safe_json(resp).get("tasks") or []:
            if float(task.get("creationTime") or 0) >= after_ms:
                return str(task.get("taskId"))
        return None

    def wait(self, task_id: str, *, sleep: Callable[[float], None] = time.sleep) -> TaskResult:
        base = f"{self._base()}/processes/{self.process_id}/tasks/{task_id}"
        deadline = time.monotonic() + self.target.timeout_minutes * 60
        interval = self.target.poll_seconds
        while True:
            task = _safe_json(self.client.request(self.usage, "GET", base)).get("task") or {}
            state = str(task.get("taskState") or "")
            if state in ("COMPLETE", "CANCELLED"):
                break
            if time.monotonic() > deadline:
                self.client.request(self.usage, "DELETE", base)
                return TaskResult(False, "CANCELLED", {}, f"the process ran over {self.target.timeout_minutes:g} "
                                  "minutes and was cancelled", raw=task)
            sleep(interval)
            interval = min(interval * 1.5, self.cfg.poll_max_interval_s)
        result = task.get("result") or {}
        nested = result.get("nestedResults") or []
        counts: dict[str, int] = {}
        for step in nested:
            if str(step.get("objectId")) in self._readers:
                for k, v in _counts(step).model_dump(exclude={"details"}).items():
                    counts[k] = counts.get(k, 0) + v
        details = "; ".join(f"{step.get('objectName') or step.get('objectId')}: {_describe_details(step)}"
                            for step in nested) or "process failed without details"
        ran_all = len(nested) == len(self._actions or nested)
        out = TaskResult(bool(result.get("successful")) and state == "COMPLETE" and ran_all, state, counts,
                         details, raw=task)
        for step in nested:
            object_id = str(step.get("objectId"))
            if not step.get("failureDumpAvailable") or object_id not in self._readers:
                continue
            dump = self._nested_dump(base, object_id)
            if dump is None:
                out.dump_missing = True
                continue
            for row in _parse_dump(dump, self.metadata().format):
                if row.line is not None:
                    out.rejected.setdefault(row.line, "; ".join(row.errors) or "rejected by Anaplan")
                    out.cells[row.line] = tuple(row.cells)
        return out

    def _nested_dump(self, base: str, object_id: str) -> bytes | None:
        resp = self.client.request(self.usage, "GET", f"{base}/dumps/{object_id}/chunks", expect=(200, 204, 404))
        if resp.status_code != 200:
            return None
        parts = []
        for chunk in _safe_json(resp).get("chunks") or []:
            part = self.client.request(self.usage, "GET", f"{base}/dumps/{object_id}/chunks/{chunk['id']}",
                                       expect=(200, 404))
            if part.status_code == 404:
                return None
            parts.append(part.content)
        return b"".join(parts) or None


MAX_LIST_ITEMS = 100_000
LIST_FIELDS = ("name", "code", "parent")


class ListItemsTarget:
    """A list written through the transactional list API (no import action, no file)."""

    def __init__(self, client: AnaplanClient, target: Target, fields: Iterable[str], *,
                 request_timeout: float = 120.0) -> None:
        assert target.kind == "list_items" and target.list_id
        self.client, self.target = client, target
        self.request_timeout = request_timeout
        self.usage = RequestCounter()
        self.fields = list(fields)
        if "name" not in self.fields and "code" not in self.fields:
            raise AnaplanConfigError("a list_items flow needs a 'name' or a 'code' field")
        self._results: dict[str, TaskResult] = {}
        self._spool: CsvSpool | None = None
        self.format = CsvFormat()

    @property
    def requests(self) -> int:
        return self.usage.requests

    @property
    def headers(self) -> list[str]:
        return self.fields

    def _base(self) -> str:
        return f"/workspaces/{self.target.workspace_id}/models/{self.target.model_id}/lists/{self.target.list_id}"

    def spool(self) -> CsvSpool:
        return CsvSpool(ImportMetadata(header_names=tuple(self.fields), format=self.format, data_source_id=None))

    def first_data_line(self) -> int:
        return self.format.first_data_row

    def read_items(self) -> list[dict[str, Any]]:
        """The list as it is in Anaplan (every property): what drift compares with the ERP."""
        resp = self.client.request(self.usage, "GET", f"{self._base()}/items", params={"includeAll": "true"})
        return list(_safe_json(resp).get("listItems") or [])

    def _item(self, row: dict[str, str]) -> dict[str, Any]:
        item: dict[str, Any] = {k: row[k] for k in LIST_FIELDS if row.get(k)}
        properties = {k: v for k, v in row.items() if k not in LIST_FIELDS}
        if properties:
            item["properties"] = properties
        return item

    def upload(self, spool: CsvSpool) -> int:
        """Add the items whose code Anaplan does not know, update the others; failures kept per line."""
        self._spool = spool
        known = {str(i.get("code")): str(i.get("id")) for i in self.read_items() if i.get("code")}
        adds: list[tuple[int, dict[str, Any]]] = []
        updates: list[tuple[int, dict[str, Any]]] = []
        spool.file.flush()
        spool.file.seek(0)
        reader = csv.reader(spool.file)
        header = next(reader)
        for _ in range(self.format.first_data_row - self.format.header_row - 1):
            next(reader, None)
        for line, cells in enumerate(reader, start=self.format.first_data_row):
            item = self._item(dict(zip(header, cells)))
            code = str(item.get("code") or "")
            (updates if code and code in known else adds).append((line, item))
        rejected: dict[int, str] = {}
        cells_of: dict[int, tuple[str, ...]] = {}
        done = 0
        for verb, batch in (("add", adds), ("update", updates)):
            for i in range(0, len(batch), MAX_LIST_ITEMS):
                part = batch[i:i + MAX_LIST_ITEMS]
                body = {"items": [item for _, item in part]}
                try:
                    if verb == "add":
                        resp = self.client.request(self.usage, "POST", f"{self._base()}/items",
                                                   params={"action": "add"}, json=body, idempotent=False)
                    else:
                        resp = self.client.request(self.usage, "PUT", f"{self._base()}/items", json=body)
                except AnaplanHTTPError as exc:
                    if exc.status == 403:
                        raise AnaplanConfigError(
                            f"Anaplan refused to write list {self.target.list_id}: the list-items API needs a "
                            f"workspace administrator and the gateway's Anaplan user is not one ({exc})") from None
                    raise
                answer = _safe_json(resp)
                done += int(answer.get("added") or answer.get("updated") or 0)
                for failure in answer.get("failures") or []:
                    index = int(failure.get("requestIndex", -1))
                    if 0 <= index < len(part):
                        line = part[index][0]
                        rejected[line] = (f"{failure.get('failureType', 'FAILED')}: "
                                          f"{failure.get('failureMessageDetails', '')}").strip(": ")
                        cells_of[line] = tuple(str(v) for v in part[index][1].values())
        self._last = TaskResult(True, "COMPLETE", {"total": spool.count, "successful": done,
                                                   "failed": len(rejected)},
                                f"{len(adds)} to add, {len(updates)} to update: {done} written, {len(rejected)} "
                                "refused", rejected=rejected, cells=cells_of)
        return spool.count

    def start(self) -> str:
        task_id = f"list-{self.target.list_id}-{int(time.time() * 1000)}"
        self._results[task_id] = self._last
        return task_id

    def find_task(self, after_ms: float) -> str | None:
        return None  # list writes are done when the call returns: nothing runs on in Anaplan

    def wait(self, task_id: str, *, sleep: Callable[[float], None] = time.sleep) -> TaskResult:
        result = self._results.get(task_id)
        if result is None:  # another process's write: its answer was not kept; send again
            return TaskResult(False, "UNKNOWN", {}, "the list write's answer was lost with its process")
        return result
