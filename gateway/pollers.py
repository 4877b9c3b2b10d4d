"""Pollers: take what waits in each configured source, store it, then acknowledge it.

A poll is: take the source's lease (``poll:<kind>:<name>``, so one process polls a source at a
time) → list → for each item: fetch, :func:`gateway.intake.take` (committed), acknowledge →
record the source's health in ``SourceStatus`` (the panel's sources page). Acknowledging only
after the commit means a crash loses nothing; :func:`take` recognising a re-read by source,
remote id and hash means nothing is doubled.

Three kinds of source: a Sterling B2Bi mailbox, an SFTP server with drop folders, and a local
folder (the demo, the crash tests, or an SFTP server's own disk). SFTP and local files are taken
only once they look finished: unchanged over two polls (the observations survive restarts in
``SourceStatus.cursor``), never while carrying a temporary upload suffix; a local file untouched
for :data:`LOCAL_SETTLE_SECONDS` is taken at once. An SFTP or local file's remote id is its path
plus its modification time, so the same name uploaded again later is a new arrival (recorded as
a duplicate when the bytes are the same), while a re-read after a crash is the same one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from gateway.intake import take
from gateway.leases import acquire, holder, release
from gateway.runtime import Runtime
from gateway.settings import LocalSource, Settings, SftpSource, SterlingSource
from gateway.integrations.sftp import client as sftp_client
from gateway.integrations.sterling import client as sterling_client
from gateway.store.db import reading, transaction
from gateway.store.models import SourceStatus, utcnow

__all__ = ["LOCAL_SETTLE_SECONDS", "PollReport", "Poller", "poll_all_once", "poll_source", "run_pollers",
           "source_config"]

log = structlog.get_logger("gateway.pollers")

#: A local file whose modification time is at least this old is finished, even on first sight.
LOCAL_SETTLE_SECONDS = 3.0

SourceConfig = SterlingSource | SftpSource | LocalSource


@dataclass
class PollReport:
    """What one poll of one source did."""

    source: str
    polled: bool = False  # False: another poller held the source's lease (``held_by``)
    held_by: str | None = None
    listed: int = 0
    stored: int = 0
    duplicates: int = 0
    already_stored: int = 0  # re-read after a crash between store and acknowledge
    acknowledged: int = 0
    skipped: int = 0  # vanished or still changing: offered again by a later poll if still there
    errors: list[str] = field(default_factory=list)

    @property
    def taken(self) -> int:
        return self.stored + self.duplicates

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) or None

    @property
    def ok(self) -> bool:
        return self.polled and not self.errors


class LeaseLost(Exception):
    """Another process took the source's lease during our poll (ours expired): stop, it carries on."""


# ------------------------------------------------------------------------------------ configuration


def source_config(settings: Settings, source_name: str) -> tuple[str, SourceConfig]:
    """``("sftp", config)`` for ``"sftp:acme"``; a bare name works when only one source has it."""
    kinds: dict[str, list[Any]] = {"sterling": settings.sterling, "sftp": settings.sftp, "local": settings.local}
    kind, _, name = source_name.partition(":") if ":" in source_name else ("", "", source_name)
    found = [(k, c) for k, configs in kinds.items() for c in configs if c.name == name and kind in ("", k)]
    if len(found) != 1:
        known = ", ".join(settings.source_names()) or "none configured"
        what = "is ambiguous" if found else "is not configured"
        raise KeyError(f"source {source_name!r} {what} (sources: {known})")
    return found[0]


def lease_seconds(interval: float) -> float:
    """How long a poll's lease lasts between renewals: long enough for one item, short after a crash."""
    return min(120.0, max(15.0, 2 * interval))


def _owner(runtime: Runtime) -> str:
    # Per thread, so two pollers in one process exclude each other as two processes do.
    return f"{runtime.instance}#{threading.get_ident()}"


# ------------------------------------------------------------------------------------------- a poll


@dataclass
class _Poll:
    """One poll of one source: keeps the lease, takes items, fills the report."""

    runtime: Runtime
    source: str
    lease: str
    owner: str
    ttl: float
    report: PollReport
    cursor: dict[str, Any]

    def keep_lease(self) -> None:
        if not acquire(self.runtime.engine, self.lease, self.owner, self.ttl):
            raise LeaseLost(f"lease {self.lease} was taken over by {holder(self.runtime.engine, self.lease)}; "
                            "poll stopped")

    def take(self, remote_name: str, remote_id: str, data: bytes, acknowledge: Callable[[], None]) -> None:
        """Store, then (and only then) acknowledge."""
        self.keep_lease()
        result = take(self.runtime.engine, source=self.source, remote_name=remote_name, remote_id=remote_id,
                      data=data, actor=self.runtime.instance)
        counter = {"stored": "stored", "duplicate": "duplicates", "already_stored": "already_stored"}[result.status]
        setattr(self.report, counter, getattr(self.report, counter) + 1)
        log.info("intake.taken", source=self.source, remote_name=remote_name, status=result.status,
                 interchange=result.interchange_id, size=result.size)
        acknowledge()
        self.report.acknowledged += 1

    def skip(self, what: str) -> None:
        self.report.skipped += 1
        log.info("intake.skipped", source=self.source, reason=what)

    def fail(self, what: str) -> None:
        """An item (or a folder) failed; the poll goes on with the others."""
        self.report.errors.append(what)
        log.error("intake.item_failed", source=self.source, error=what)


def _poll_sterling(poll: _Poll, cfg: SterlingSource) -> None:
    with sterling_client.SterlingSource(cfg) as src:
        for msg in src.list_pending():
            poll.report.listed += 1
            try:
                data = src.fetch(msg)
            except sterling_client.MessageGone as exc:
                poll.skip(str(exc))
                continue
            except (sterling_client.PayloadTooLarge, sterling_client.PayloadSizeMismatch,
                    sterling_client.SterlingProtocolError) as exc:
                poll.fail(str(exc))  # this message needs a person; the others still come in
                continue
            poll.take(msg.name, msg.remote_id, data, lambda: src.acknowledge(msg))


def _poll_sftp(poll: _Poll, cfg: SftpSource) -> None:
    tracker = sftp_client.StabilityTracker.from_dict(poll.cursor.get("stability"))
    try:
        with sftp_client.SftpSource(cfg, tracker) as src:
            for f in src.list_pending():
                poll.report.listed += 1
                try:
                    data = src.fetch(f)
                except (sftp_client.RemoteFileGone, sftp_client.RemoteFileChanged) as exc:
                    poll.skip(str(exc))
                    continue
                poll.take(f.name, f"{f.remote_id}@{f.mtime}", data, lambda: src.acknowledge(f))
            for folder, reason in src.folder_errors.items():
                poll.fail(f"SFTP {cfg.hostkey_name}: drop folder {folder}: {reason}")
    finally:
        poll.cursor["stability"] = tracker.to_dict()


def _poll_local(poll: _Poll, cfg: LocalSource) -> None:
    tracker = sftp_client.StabilityTracker.from_dict(poll.cursor.get("stability"))
    rules = sftp_client.DropFolder(path=str(cfg.path), pattern=cfg.pattern, after_intake="delete")
    folder = str(Path(cfg.path))
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        poll.fail(f"local folder {folder}: {exc.strerror or exc}")
        return
    try:
        now = time.time()
        present: set[str] = set()
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False) or not rules.accepts_name(entry.name):
                continue
            path = Path(entry.path)
            st = entry.stat(follow_symlinks=False)
            present.add(str(path))
            stable = tracker.observe(str(path), st.st_size, st.st_mtime_ns)
            if not stable and now - st.st_mtime < LOCAL_SETTLE_SECONDS:
                continue  # may still be being written: look again next poll
            poll.report.listed += 1
            try:
                data = path.read_bytes()
                after = path.stat()
            except FileNotFoundError:
                poll.skip(f"{path} disappeared before it was read")
                continue
            except OSError as exc:
                poll.fail(f"{path}: cannot read: {exc.strerror or exc}")
                continue
            if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or len(data) != st.st_size:
                tracker.forget(str(path))
                poll.skip(f"{path} changed while it was read; it will be taken once stable")
                continue
            poll.take(path.name, f"{path}@{st.st_mtime_ns}", data, lambda: _local_acknowledge(cfg, path))
            tracker.forget(str(path))
        tracker.prune(folder, present)
    finally:
        poll.cursor["stability"] = tracker.to_dict()


def _local_acknowledge(cfg: LocalSource, path: Path) -> None:
    """Archive or delete a stored local file; one already gone counts as done."""
    if cfg.archive_path is None:
        path.unlink(missing_ok=True)
        return
    archive = Path(cfg.archive_path)
    archive.mkdir(parents=True, exist_ok=True)
    for name in sftp_client._unique_names(path.name, datetime.now(UTC)):
        target = archive / name
        if target.exists():
            continue
        try:
            os.link(path, target)  # never replaces an existing archive file, unlike rename
        except FileExistsError:
            continue
        except FileNotFoundError:
            return
        except OSError:  # no hard links here (another file system): a plain rename
            if target.exists():
                continue
            try:
                os.rename(path, target)
            except FileNotFoundError:
                return
            return
        path.unlink(missing_ok=True)
        return
    raise OSError(f"no free archive name for {path.name} in {archive}")


_POLLS: dict[str, Callable[[_Poll, Any], None]] = {
    "sterling": _poll_sterling,
    "sftp": _poll_sftp,
    "local": _poll_local,
}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (sterling_client.SterlingError, sftp_client.SftpError, LeaseLost)):
        return str(exc)  # the clients' messages name the host and the cause and never carry secrets
    return f"{type(exc).__name__}: {exc}"


def poll_source(runtime: Runtime, source_name: str) -> PollReport:
    """Poll one source now, unless another poller holds its lease. Never raises for a source fault:
    the error is in the report and in ``SourceStatus``."""
    kind, cfg = source_config(runtime.settings, source_name)
    name = f"{kind}:{cfg.name}"
    report = PollReport(name)
    lease, owner, ttl = f"poll:{name}", _owner(runtime), lease_seconds(cfg.interval_seconds)
    engine = runtime.engine
    if not acquire(engine, lease, owner, ttl):
        report.held_by = holder(engine, lease)
        return report
    report.polled = True
    poll = _Poll(runtime, name, lease, owner, ttl, report, _load_cursor(runtime, name))
    try:
        _POLLS[kind](poll, cfg)
    except Exception as exc:  # noqa: BLE001 - a failed poll is recorded; nothing was acknowledged unstored
        report.errors.append(_describe(exc))
        log.error("poll.failed", source=name, error=report.errors[-1])
    finally:
        try:
            _record(runtime, report, poll.cursor)
        finally:
            release(engine, lease, owner)
    log.info("poll.done", source=name, listed=report.listed, stored=report.stored, duplicates=report.duplicates,
             already_stored=report.already_stored, skipped=report.skipped, errors=len(report.errors))
    return report


def _load_cursor(runtime: Runtime, name: str) -> dict[str, Any]:
    with reading(runtime.engine) as s:
        row = s.get(SourceStatus, name)
        text = row.cursor if row else None
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        value = {}  # a damaged cursor only costs one extra poll before settled files are taken
    return value if isinstance(value, dict) else {}


def record_status(runtime: Runtime, source: str, update: Callable[[SourceStatus], None]) -> None:
    """Apply ``update`` to the source's status row, creating it on first use."""
    for attempt in (1, 2):
        try:
            with transaction(runtime.engine) as s:
                row = s.get(SourceStatus, source)
                if row is None:
                    row = SourceStatus(source=source)
                    s.add(row)
                update(row)
            return
        except IntegrityError:  # created by another process at the same moment: update theirs
            if attempt == 2:
                raise


def _record(runtime: Runtime, report: PollReport, cursor: dict[str, Any]) -> None:
    now = utcnow()

    def update(row: SourceStatus) -> None:
        row.cursor = json.dumps(cursor, sort_keys=True)
        row.last_poll_at = now
        row.files_taken += report.taken
        if report.errors:
            row.last_error = report.error[:4000] if report.error else None
            row.last_error_at = now
        else:
            row.last_success_at = now

    record_status(runtime, report.source, update)


# ------------------------------------------------------------------------------------------- loops


def poll_all_once(runtime: Runtime) -> list[PollReport]:
    """Poll every configured source once (``gateway poll --once``), then send due acknowledgments."""
    from gateway.acks_outbound import send_acknowledgments

    reports = [poll_source(runtime, name) for name in runtime.settings.source_names()]
    try:
        send_acknowledgments(runtime)
    except Exception as exc:  # noqa: BLE001 - acknowledgments are retried next time
        log.error("acks.failed", error=str(exc))
    return reports


class Poller:
    """Polls every configured source at its interval until stopped: one thread per source.

    The interval is kept across processes: a source is due when its ``SourceStatus.last_poll_at``
    (written by whichever process polled it) is an interval old.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.sources = [(f"{kind}:{cfg.name}", cfg.interval_seconds) for kind, configs in
                        (("sterling", runtime.settings.sterling), ("sftp", runtime.settings.sftp),
                         ("local", runtime.settings.local)) for cfg in configs]

    def seconds_until_due(self, source: str, interval: float) -> float:
        with reading(self.runtime.engine) as s:
            row = s.get(SourceStatus, source)
            last = row.last_poll_at if row else None
        if last is None:
            return 0.0
        if last.tzinfo is None:  # SQLite hands back naive UTC
            last = last.replace(tzinfo=UTC)
        return min(interval, interval - (utcnow() - last).total_seconds())

    def run(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set and every source thread has finished its current poll."""
        threads = [threading.Thread(target=self._loop, args=(name, interval, stop), name=f"poll {name}",
                                    daemon=True) for name, interval in self.sources]
        for t in threads:
            t.start()
        stop.wait()
        for t in threads:
            t.join()

    def _loop(self, source: str, interval: float, stop: threading.Event) -> None:
        from gateway.acks_outbound import send_acknowledgments

        while not stop.is_set():
            wait = min(interval, 5.0)
            try:
                due = self.seconds_until_due(source, interval)
                if due > 0:
                    wait = due
                else:
                    report = poll_source(self.runtime, source)
                    if report.polled:
                        send_acknowledgments(self.runtime)
                        wait = interval
            except Exception as exc:  # noqa: BLE001 - e.g. the store unreachable: try again shortly
                log.error("poller.error", source=source, error=f"{type(exc).__name__}: {exc}")
            stop.wait(max(wait, 0.05))


def run_pollers(runtime: Runtime, stop: threading.Event) -> None:
    """Poll every configured source at its interval (and send acknowledgments) until ``stop`` is set."""
    Poller(runtime).run(stop)
