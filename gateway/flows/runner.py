"""A flow run: read what changed, store it, send the run's records to Anaplan in one upload and
one import, conclude — and advance the watermark only when Anaplan has confirmed.

Safe against a crash anywhere (the run is taken up by the next one):

* while reading or uploading: the run is *abandoned*; its records still point at it, and the next
  run takes them over (``_carry_over``) before it reads from the same confirmed watermark;
* after asking Anaplan for the import: the run is *importing* and says since when, so the next
  one finds the task Anaplan started (or learns none was) instead of importing again;
* after the import finished: the result is read again and concluded once.

Records are stored a page per transaction; the record set is never held in memory (the upload
streams from the store in record order, which is also how the failure dump's lines map back).
"""

from __future__ import annotations

import binascii
import hashlib
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import orjson
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from gateway import leases
from gateway.integrations.anaplan.targets import CsvSpool, ImportTarget, TaskResult
from gateway.flows.files import FlowFile
from gateway.flows.model import Flow, MappingError, compile_row
from gateway.flows.source import RecordSource, later, rowversion_int
from gateway.flows.tables import FlowRecord, FlowRun, FlowState, RecordEvent
from gateway.store.db import insert_many
from gateway.store.models import utcnow

__all__ = ["DryRun", "FlowBusy", "FlowRunner", "RunReport", "record_hash", "set_enabled"]

RECORDS = FlowRecord.__table__
RUNS = FlowRun.__table__
STATES = FlowState.__table__
UNFINISHED = ("reading", "sending", "importing")
Progress = Callable[[str, int, int | None], None]


class FlowBusy(RuntimeError):
    """Another process holds the flow's lease (one run of a flow at a time)."""


def _outside_errors() -> tuple[type[BaseException], ...]:
    """What SYSPRO, Plex, Anaplan or a flow's own mapping say no with: a failed run, not a crash."""
    from gateway.integrations.anaplan.client import AnaplanError
    from gateway.integrations.plex.client import PlexError
    from gateway.integrations.plex.records import PlexRecordError
    from gateway.integrations.syspro.client import SysproError

    return (AnaplanError, PlexError, PlexRecordError, SysproError, MappingError)


def record_hash(row: dict[str, Any]) -> str:
    """BLAKE2b-128 of the record's canonical JSON (keys sorted): equal content, equal hash."""
    return hashlib.blake2b(orjson.dumps(row, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


@dataclass
class RunReport:
    run_id: int
    flow: str
    state: str
    seen: int = 0
    changed: int = 0
    sent: int = 0
    failed: int = 0
    source_requests: int = 0
    anaplan_requests: int = 0
    watermark: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        text = (f"{self.flow}: run {self.run_id} {self.state}: {self.seen} seen, {self.changed} changed, "
                f"{self.sent} sent, {self.failed} failed; {self.source_requests} source and {self.anaplan_requests} "
                f"Anaplan requests, {self.seconds:.1f} s")
        if self.error:
            text += f"; {self.error}"
        return text


@dataclass
class DryRun:
    flow: str
    headers: list[str]
    rows: list[tuple[str, list[str] | None, str | None]]  # source key, the row, or the problem
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(problem is None for _, _, problem in self.rows)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _prefetched(pages: Iterator[list[dict[str, Any]]], depth: int = 2) -> Iterator[list[dict[str, Any]]]:
    """The next pages are fetched (and parsed) in a thread while this one is stored: the source's
    network time and ours overlap. At most ``depth`` pages wait."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for page in pages:
                if stop.is_set():
                    return
                q.put(("page", page))
            q.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(("error", exc))

    thread = threading.Thread(target=pump, name="flow-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "page":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


class FlowRunner:
    """Runs one flow against its source and its Anaplan target."""

    def __init__(self, engine: Engine, flow_file: FlowFile, source: RecordSource,
                 target_factory: Callable[[], ImportTarget], *, owner: str, lease_seconds: float = 300.0,
                 progress: Progress | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.engine = engine
        self.file = flow_file
        self.flow: Flow = flow_file.flow
        self.source = source
        self._target_factory = target_factory
        self._target: ImportTarget | None = None
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.progress = progress or (lambda phase, done, total: None)
        self.sleep = sleep
        self._lease_at = 0.0
        self._postgres = engine.dialect.name == "postgresql"

    @property
    def target(self) -> ImportTarget:
        if self._target is None:
            self._target = self._target_factory()
        return self._target

    # ------------------------------------------------------------------------------ lease

    def _renew(self, force: bool = False) -> None:
        if force or time.monotonic() - self._lease_at > self.lease_seconds / 3:
            if not leases.acquire(self.engine, f"flow:{self.flow.name}", self.owner, self.lease_seconds):
                raise FlowBusy(f"flow {self.flow.name} is being run by {leases.holder(self.engine, f'flow:{self.flow.name}')}"
                               f"; a process that died gives it up within {self.lease_seconds:g} s")
            self._lease_at = time.monotonic()

    # ------------------------------------------------------------------------------ public

    def run(self, *, since: str | None = None, actor: str = "gateway") -> RunReport:
        """One run: recover an interrupted one, read, store, send, conclude."""
        started = time.monotonic()
        self._renew(force=True)
        try:
            self._recover()
            watermark = since if since is not None else self.watermark()
            run_id = self._new_run("run", watermark, actor)
            report = RunReport(run_id, self.flow.name, "reading")
            with self._failing(run_id, report):
                row = compile_row(self.flow, self.target.headers)
                spool = self.target.spool()
                unmapped: list[tuple[str, str]] = []
                try:
                    self._read(run_id, watermark, report, spool, row, unmapped)
                    report.changed += self._carry_over(run_id, spool, row, unmapped)
                    self._send(run_id, report, spool, unmapped)
                finally:
                    spool.close()
            return self._report(run_id, report, started)
        finally:
            leases.release(self.engine, f"flow:{self.flow.name}", self.owner)

    def replay(self, run_id: int, *, actor: str) -> RunReport:
        """Send a failed (or partly rejected) run's records again from the store, without asking the source."""
        started = time.monotonic()
        self._renew(force=True)
        try:
            self._recover()
            with self.engine.begin() as conn:
                old = conn.execute(select(RUNS).where(RUNS.c.id == run_id, RUNS.c.flow == self.flow.name)).first()
                if old is None:
                    raise ValueError(f"flow {self.flow.name} has no run {run_id}")
                if old.state not in ("failed", "abandoned", "done"):
                    raise ValueError(f"run {run_id} is {old.state}: only a failed run, or a done run's rejected "
                                     "records, can be replayed")
            new_id = self._new_run("replay", old.watermark_to, actor)
            with self.engine.begin() as conn:
                where = [RECORDS.c.flow == self.flow.name, RECORDS.c.run_id == run_id]
                if old.state == "done":
                    where.append(RECORDS.c.error.is_not(None))
                moved = conn.execute(update(RECORDS).where(*where).values(run_id=new_id, error=None)).rowcount
                conn.execute(update(RUNS).where(RUNS.c.id == new_id).values(
                    state="sending", changed=moved, seen=moved, watermark_to=old.watermark_to))
                insert_many(conn, RecordEvent.__table__, [{
                    "record_id": 0, "run_id": new_id, "flow": self.flow.name, "source_key": f"run {run_id}",
                    "outcome": "replayed", "detail": f"{moved} records of run {run_id} sent again", "actor": actor,
                    "at": _now()}])
            report = RunReport(new_id, self.flow.name, "sending", seen=moved, changed=moved)
            with self._failing(new_id, report):
                row = compile_row(self.flow, self.target.headers)
                spool = self.target.spool()
                unmapped: list[tuple[str, str]] = []
                try:
                    for skey, record in self._records(new_id):
                        self._spool(spool, row, record, skey, unmapped)
                    self._send(new_id, report, spool, unmapped)
                finally:
                    spool.close()
            return self._report(new_id, report, started)
        finally:
            leases.release(self.engine, f"flow:{self.flow.name}", self.owner)

    def dry_run(self, sample: int = 20) -> DryRun:
        """Map a sample pulled live from the source onto the import's columns; store nothing but the verdict."""
        read = self.source.read(self.flow, None, limit=sample)
        headers = self.target.headers
        row = compile_row(self.flow, headers)
        out: list[tuple[str, list[str] | None, str | None]] = []
        for page in read.pages:
            for record in page:
                key = "|".join(str(record.get(k, "")) for k in read.key)
                try:
                    out.append((key, row(record), None))
                except MappingError as exc:
                    out.append((key, None, str(exc)))
                if len(out) >= sample:
                    break
        result = DryRun(self.flow.name, headers, out, read.notes)
        if not out:
            result.notes.append("the source returned no records: nothing to check")
        with self.engine.begin() as conn:
            self._ensure_state(conn)
            conn.execute(update(STATES).where(STATES.c.flow == self.flow.name).values(
                dry_run_sha256=self.file.text_sha256 if result.ok else None, updated_at=_now()))
        return result

    @contextmanager
    def _failing(self, run_id: int, report: RunReport) -> Iterator[None]:
        """An outside system's refusal ends the run as failed, with its words (its records go with
        the next run); anything else is recorded the same way and raised."""
        try:
            yield
        except Exception as exc:
            known = isinstance(exc, _outside_errors())
            text = str(exc) if known else f"{type(exc).__name__}: {exc}"
            with self.engine.begin() as conn:
                state = conn.execute(select(RUNS.c.state).where(RUNS.c.id == run_id)).scalar()
                if state not in ("done", "failed"):
                    self._finish(run_id, "failed", text, {"error": text}, report, conn=conn)
            if not known:
                raise

    def watermark(self) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(STATES.c.watermark).where(STATES.c.flow == self.flow.name)).scalar()

    # ------------------------------------------------------------------------------ steps

    def _ensure_state(self, conn: Any) -> None:
        if conn.execute(select(STATES.c.flow).where(STATES.c.flow == self.flow.name)).first() is None:
            conn.execute(STATES.insert().values(flow=self.flow.name, updated_at=_now()))

    def _new_run(self, kind: str, watermark: str | None, actor: str) -> int:
        with self.engine.begin() as conn:
            self._ensure_state(conn)
            return conn.execute(RUNS.insert().values(
                flow=self.flow.name, kind=kind, mode=self.flow.mode, state="reading", actor=actor,
                started_at=_now(), watermark_from=watermark, watermark_to=watermark, seen=0, changed=0, sent=0,
                failed=0, source_requests=0, anaplan_requests=0, lease_owner=self.owner)).inserted_primary_key[0]

    def _lost_runs(self, run_id: int) -> Any:
        return select(RUNS.c.id).where(RUNS.c.flow == self.flow.name, RUNS.c.state.in_(("failed", "abandoned")),
                                       RUNS.c.id != run_id)

    def _carry_over(self, run_id: int, spool: CsvSpool, row: Callable[[dict[str, Any]], list[str]],
                    unmapped: list[tuple[str, str]]) -> int:
        """Records whose run never reached Anaplan (and that this run did not read again) go with
        this run: spooled from the store, then given to it."""
        lost = self._lost_runs(run_id)
        last, moved = 0, 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(RECORDS.c.id, RECORDS.c.source_key, RECORDS.c.raw)
                                    .where(RECORDS.c.flow == self.flow.name, RECORDS.c.run_id.in_(lost),
                                           RECORDS.c.id > last).order_by(RECORDS.c.id).limit(5000)).all()
            if not rows:
                break
            for _, skey, raw in rows:
                self._spool(spool, row, orjson.loads(raw), skey, unmapped)
            last = rows[-1][0]
            moved += len(rows)
        if moved:
            with self.engine.begin() as conn:
                conn.execute(update(RECORDS).where(RECORDS.c.flow == self.flow.name, RECORDS.c.run_id.in_(lost),
                                                   RECORDS.c.id <= last).values(run_id=run_id))
        return moved

    @staticmethod
    def _spool(spool: CsvSpool, row: Callable[[dict[str, Any]], list[str]], record: dict[str, Any], key: str,
               unmapped: list[tuple[str, str]]) -> None:
        try:
            spool.write(row(record), key)
        except MappingError as exc:
            unmapped.append((key, str(exc)))

    def _recover(self) -> None:
        """Finish or abandon runs a crashed process left behind (this process holds the flow's lease)."""
        with self.engine.connect() as conn:
            stale = conn.execute(select(RUNS).where(RUNS.c.flow == self.flow.name, RUNS.c.state.in_(UNFINISHED))
                                 .order_by(RUNS.c.id)).all()
        for run in stale:
            task_id = run.task_id
            if run.state == "importing" and task_id is None and run.import_started_at is not None:
                started = run.import_started_at
                started = started if started.tzinfo else started.replace(tzinfo=timezone.utc)
                # A request to start the import may still be on its way: wait until it cannot be.
                self.sleep(max(0.0, started.timestamp() + self.target.request_timeout - time.time()))
                task_id = self.target.find_task(started.timestamp() * 1000 - 2000)
            if run.state == "importing" and task_id is not None:
                with self.engine.begin() as conn:
                    conn.execute(update(RUNS).where(RUNS.c.id == run.id).values(task_id=task_id))
                # no spool here: the rejected rows are matched by content
                self._conclude(run.id, self.target.wait(task_id, sleep=self.sleep), None,
                               RunReport(run.id, self.flow.name, "importing"))
                continue
            with self.engine.begin() as conn:
                conn.execute(update(RUNS).where(RUNS.c.id == run.id).values(
                    state="abandoned", finished_at=_now(),
                    error=f"interrupted while {run.state}; its records go with the next run"))

    def _read(self, run_id: int, watermark: str | None, report: RunReport, spool: CsvSpool,
              row: Callable[[dict[str, Any]], list[str]], unmapped: list[tuple[str, str]]) -> None:
        """Read the change window a page at a time; each page is stored in one transaction and what
        it brought for this run is mapped into the spool."""
        read = self.source.read(self.flow, watermark)
        column = self.flow.source.changes.column
        kind = self.flow.source.changes.kind
        with self.engine.connect() as conn:
            fresh = conn.execute(select(RECORDS.c.id).where(RECORDS.c.flow == self.flow.name).limit(1)).first() is None
        high_int = rowversion_int(watermark) if kind == "rowversion" and watermark else -1
        high = watermark
        top_key: tuple[str, ...] | None = () if fresh else None
        for page in _prefetched(read.pages):
            self._renew()
            if column and kind == "rowversion":
                for value in (r.get(column) for r in page):
                    if value:
                        number = int.from_bytes(binascii.a2b_base64(value), "big")
                        if number > high_int:
                            high_int, high = number, value
            elif column and kind == "date":
                values = [str(v) for v in (r.get(column) for r in page) if v]
                if values:
                    high = later(kind, high, max(values))
            seen, changed, top_key = self._store_page(run_id, page, read.key, top_key, report, spool, row, unmapped)
            report.seen += seen
            report.changed += changed
            report.source_requests = read.request_count
            self.progress("read", report.seen, None)
        if kind == "modified":
            high = read.window_end or high
        report.notes += read.notes
        report.source_requests = read.request_count
        report.watermark = high
        with self.engine.begin() as conn:
            conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(
                state="sending", watermark_to=high, seen=report.seen, changed=report.changed,
                source_requests=report.source_requests, error="; ".join(read.notes) or None))

    def _store_page(self, run_id: int, page: list[dict[str, Any]], key: tuple[str, ...],
                    top_key: tuple[str, ...] | None, report: RunReport, spool: CsvSpool,
                    row: Callable[[dict[str, Any]], list[str]], unmapped: list[tuple[str, str]]
                    ) -> tuple[int, int, tuple[str, ...] | None]:
        """Store one page: new records inserted, changed ones updated, both given to this run and
        spooled (mode all: the unchanged too). Returns (seen, changed, the highest key so far).

        ``top_key`` is kept while the flow had no records when the run began: a key above every key
        seen so far cannot be stored yet, so it needs no look-up (the first load, read in key
        order, never looks). A repeated or out-of-order key is looked up like any other."""
        keyed: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
        for record in page:
            parts = tuple(str(record.get(k, "")) for k in key)
            keyed["|".join(parts)] = (parts, record)
        lookup = list(keyed)
        if top_key is not None:
            lookup = [skey for skey, (parts, _) in keyed.items() if parts <= top_key]
            top_key = max([top_key, *(parts for parts, _ in keyed.values())])
        existing: dict[str, tuple[int, str]] = {}
        with self.engine.begin() as conn:
            for i in range(0, len(lookup), 2000):
                for rid, skey, h in conn.execute(select(RECORDS.c.id, RECORDS.c.source_key, RECORDS.c.content_hash)
                                                 .where(RECORDS.c.flow == self.flow.name,
                                                        RECORDS.c.source_key.in_(lookup[i:i + 2000]))):
                    existing[skey] = (rid, h)
            now = _now()
            stamp: Any = now if self._postgres else now.strftime("%Y-%m-%d %H:%M:%S.%f")
            new, changed, unchanged, events = [], [], [], []
            out_rows: list[list[str]] = []
            out_keys: list[str] = []
            name, system, entity = self.flow.name, self.flow.source.system, self.flow.source.entity
            for skey, (_, record) in keyed.items():
                raw = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)  # stored as hashed: keys in order
                digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
                found = existing.get(skey)
                if found is None:
                    new.append((name, system, entity, skey, digest, raw.decode(), run_id, stamp))
                elif found[1] != digest:
                    changed.append((digest, raw.decode(), run_id, stamp, found[0]))
                    events.append({"record_id": found[0], "run_id": run_id, "flow": name, "source_key": skey,
                                   "outcome": "changed", "detail": f"content {found[1][:8]} -> {digest[:8]}",
                                   "actor": "gateway", "at": now})
                elif self.flow.mode == "all":
                    unchanged.append((run_id, found[0]))
                else:
                    continue
                try:
                    out_rows.append(row(record))
                    out_keys.append(skey)
                except MappingError as exc:
                    unmapped.append((skey, str(exc)))
            spool.write_many(out_rows, out_keys)
            p = "%s" if self._postgres else "?"
            if new:
                conn.exec_driver_sql(
                    "INSERT INTO flow_records (flow, system, entity, source_key, content_hash, raw, run_id, "
                    f"changed_at) VALUES ({', '.join([p] * 8)}) ON CONFLICT (flow, source_key) DO UPDATE SET "
                    "content_hash = excluded.content_hash, raw = excluded.raw, run_id = excluded.run_id, "
                    "error = NULL, changed_at = excluded.changed_at", new)
            if changed:
                conn.exec_driver_sql(f"UPDATE flow_records SET content_hash = {p}, raw = {p}, run_id = {p}, "
                                     f"error = NULL, changed_at = {p} WHERE id = {p}", changed)
            if unchanged:
                conn.exec_driver_sql(f"UPDATE flow_records SET run_id = {p} WHERE id = {p}", unchanged)
            if events:
                insert_many(conn, RecordEvent.__table__, events)
            conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(
                seen=report.seen + len(keyed), changed=report.changed + len(new) + len(changed)))
        return len(keyed), len(new) + len(changed), top_key

    def _records(self, run_id: int, batch: int = 5000) -> Iterator[tuple[str, dict[str, Any]]]:
        """The run's records in record order (source key, record), a batch per query."""
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(RECORDS.c.id, RECORDS.c.source_key, RECORDS.c.raw)
                                    .where(RECORDS.c.flow == self.flow.name, RECORDS.c.run_id == run_id,
                                           RECORDS.c.id > last).order_by(RECORDS.c.id).limit(batch)).all()
            if not rows:
                return
            for _, skey, raw in rows:
                yield skey, orjson.loads(raw)
            last = rows[-1][0]

    def _send(self, run_id: int, report: RunReport, spool: CsvSpool, unmapped: list[tuple[str, str]]) -> None:
        """Upload the spool, start the import (saying so first), wait, conclude."""
        target = self.target
        if unmapped:
            with self.engine.begin() as conn:
                self._reject(conn, run_id, unmapped, "not sent")
        if spool.count == 0:
            report.failed = len(unmapped)
            self._finish(run_id, "done", None, {"note": "nothing changed: nothing sent"}, report)
            return
        self.progress("send", 0, spool.count)
        sent = target.upload(spool)
        report.sent = sent
        self.progress("send", sent, sent)
        with self.engine.begin() as conn:
            conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(
                state="importing", import_started_at=_now(), sent=sent, anaplan_requests=target.requests))
        task_id = target.start()
        with self.engine.begin() as conn:
            conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(task_id=task_id))
        result = target.wait(task_id, sleep=self.sleep)
        self._conclude(run_id, result, spool, report, extra_failed=len(unmapped))

    def _rejected_keys(self, run_id: int, result: TaskResult, spool: CsvSpool | None) -> list[tuple[str, str]]:
        """(source key, Anaplan's reason) per rejected line: by the spool's keys, or — concluding a run
        another process sent — by matching the dump's rows with the run's records mapped again."""
        if spool is not None:
            keys = spool.keys_at(result.rejected)
            return [(keys[line], reason) for line, reason in sorted(result.rejected.items()) if line in keys]
        row = compile_row(self.flow, self.target.headers)
        wanted = {cells: result.rejected[line] for line, cells in result.cells.items()}
        out = []
        for skey, record in self._records(run_id):
            try:
                cells = tuple(row(record))
            except MappingError:
                continue
            if cells in wanted:
                out.append((skey, wanted[cells]))
        return out

    def _reject(self, conn: Any, run_id: int, rejected: list[tuple[str, str]], verb: str) -> None:
        """Mark records (by source key) with why they did not reach Anaplan, and audit it."""
        p = "%s" if self._postgres else "?"
        conn.exec_driver_sql(f"UPDATE flow_records SET error = {p} WHERE flow = {p} AND source_key = {p}",
                             [(f"{verb}: {reason}", self.flow.name, key) for key, reason in rejected])
        ids: dict[str, int] = {}
        keys = [k for k, _ in rejected]
        for i in range(0, len(keys), 2000):
            for rid, skey in conn.execute(select(RECORDS.c.id, RECORDS.c.source_key).where(
                    RECORDS.c.flow == self.flow.name, RECORDS.c.source_key.in_(keys[i:i + 2000]))):
                ids[skey] = rid
        insert_many(conn, RecordEvent.__table__, [
            {"record_id": ids.get(key, 0), "run_id": run_id, "flow": self.flow.name, "source_key": key,
             "outcome": "rejected", "detail": f"{verb}: {reason}",
             "actor": "anaplan" if verb == "rejected" else "gateway", "at": _now()} for key, reason in rejected])

    def _conclude(self, run_id: int, result: TaskResult, spool: CsvSpool | None, report: RunReport,
                  extra_failed: int = 0) -> None:
        report.anaplan_requests = self.target.requests
        summary = {"task": result.state, "successful": result.successful, "counts": result.counts,
                   "details": result.details}
        if not result.successful or result.dump_missing:
            why = result.details if not result.successful else (
                f"{result.counts.get('failed', '?')} rows failed but Anaplan's failure dump is gone: the run's records "
                "go with the next run")
            self._finish(run_id, "failed", why, summary, report)
            return
        rejected = self._rejected_keys(run_id, result, spool) if result.rejected else []
        report.failed = len(rejected) + extra_failed
        with self.engine.begin() as conn:
            if rejected:
                self._reject(conn, run_id, rejected, "rejected")
            self._finish(run_id, "done", None, summary, report, conn=conn)

    def _finish(self, run_id: int, state: str, error: str | None, summary: dict[str, Any], report: RunReport,
                conn: Any = None) -> None:
        """The run's end, and — when Anaplan confirmed — the watermark, in one transaction."""
        if conn is None:
            with self.engine.begin() as conn:
                self._finish(run_id, state, error, summary, report, conn=conn)
            return
        run = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).first()
        values: dict[str, Any] = {"state": state, "finished_at": _now(), "result": orjson.dumps(summary).decode(),
                                  "anaplan_requests": report.anaplan_requests, "failed": report.failed}
        if error or run.error:
            values["error"] = "; ".join(e for e in (run.error, error) if e)
        conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(**values))
        if state == "done" and run.kind != "dry_run":
            current = conn.execute(select(STATES.c.watermark).where(STATES.c.flow == self.flow.name)).scalar()
            mark = later(self.flow.source.changes.kind, current, run.watermark_to) \
                if self.flow.source.changes.kind in ("rowversion", "date", "modified") else run.watermark_to
            conn.execute(update(STATES).where(STATES.c.flow == self.flow.name).values(watermark=mark,
                                                                                      updated_at=_now()))
        report.state, report.error = state, values.get("error")

    def _report(self, run_id: int, report: RunReport, started: float) -> RunReport:
        with self.engine.connect() as conn:
            run = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).first()
        report.state, report.error = run.state, run.error
        report.watermark = self.watermark()
        report.seconds = time.monotonic() - started
        return report


def set_enabled(engine: Engine, flow_file: FlowFile, on: bool, actor: str) -> None:
    """The panel's or CLI's switch. Switching on needs a clean dry run of this exact file text."""
    with engine.begin() as conn:
        row = conn.execute(select(STATES).where(STATES.c.flow == flow_file.flow.name)).first()
        if on and (row is None or row.dry_run_sha256 != flow_file.text_sha256):
            raise ValueError(f"flow {flow_file.flow.name}: dry-run this version of the file first "
                             "(gateway flows run NAME --dry-run, or the panel's dry run)")
        if row is None:
            conn.execute(STATES.insert().values(flow=flow_file.flow.name, enabled=on, updated_by=actor,
                                                updated_at=utcnow()))
        else:
            conn.execute(update(STATES).where(STATES.c.flow == flow_file.flow.name).values(
                enabled=on, updated_by=actor, updated_at=utcnow()))
