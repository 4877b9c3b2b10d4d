"""Pollers: take what waits in each configured source, store it, then acknowledge it.

A poll is: take the source's lease (``poll:<kind>:<name>``, so one process polls a source at a
time) → ``source.poll(intake)``, the source handing each payload to the
:class:`~gateway.intake.Intake`, which commits it (:func:`gateway.intake.take`) before the
source acknowledges it → record the source's health in ``SourceStatus`` (the panel's sources
page). Acknowledging only after the commit means a crash loses nothing; ``take`` recognising a
re-read by source, remote id and hash means nothing is doubled.

Sources are found through the registry (``gateway.integrations.SOURCES``): a Sterling B2Bi
mailbox, an SFTP server with drop folders, a local folder, and whatever is registered next.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC
from typing import Any

import structlog

from gateway.acks_outbound import send_acknowledgments
from gateway.intake import Intake, PollReport, record_source_status
from gateway.integrations.base import Source, SourceError
from gateway.leases import acquire, holder, release
from gateway.runtime import Runtime
from gateway.settings import Settings, configured_sources
from gateway.store.db import reading
from gateway.store.models import SourceStatus, utcnow

__all__ = ["LeaseLost", "PollReport", "Poller", "find_source", "poll_all_once", "poll_source", "run_pollers"]

log = structlog.get_logger("gateway.pollers")


class LeaseLost(Exception):
    """Another process took the source's lease during our poll (ours expired): stop, it carries on."""


# ------------------------------------------------------------------------------------ configuration


def find_source(settings: Settings, source_name: str) -> Source:
    """The source ``"sftp:acme"`` names; a bare name works when only one source has it."""
    kind, _, name = source_name.partition(":") if ":" in source_name else ("", "", source_name)
    found = [s for s in configured_sources(settings) if s.name == name and kind in ("", s.kind)]
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (SourceError, LeaseLost)):
        return str(exc)  # the clients' messages name the host and the cause and never carry secrets
    return f"{type(exc).__name__}: {exc}"


def poll_source(runtime: Runtime, source_name: str) -> PollReport:
    """Poll one source now, unless another poller holds its lease. Never raises for a source fault:
    the error is in the report and in ``SourceStatus``."""
    source = find_source(runtime.settings, source_name)
    name = f"{source.kind}:{source.name}"
    report = PollReport(name)
    lease, owner, ttl = f"poll:{name}", _owner(runtime), lease_seconds(source.interval_seconds)
    engine = runtime.engine
    if not acquire(engine, lease, owner, ttl):
        report.held_by = holder(engine, lease)
        return report
    report.polled = True

    def keep_lease() -> None:
        if not acquire(engine, lease, owner, ttl):
            raise LeaseLost(f"lease {lease} was taken over by {holder(engine, lease)}; poll stopped")

    intake = Intake(engine, name, report, _load_cursor(runtime, name), actor=runtime.instance, keep_lease=keep_lease)
    try:
        source.poll(intake)
    except Exception as exc:  # noqa: BLE001 - a failed poll is recorded; nothing was acknowledged unstored
        report.errors.append(_describe(exc))
    finally:
        try:
            _record(runtime, report, intake.cursor)
        finally:
            release(engine, lease, owner)
    # A source that keeps failing is one standing condition: warned when it starts, said when it ends.
    if report.errors:
        runtime.conditions.holds(f"poll.failed:{name}", "poll.failed", source=name, error=report.errors[-1])
    else:
        runtime.conditions.ended(f"poll.failed:{name}")
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


def _record(runtime: Runtime, report: PollReport, cursor: dict[str, Any]) -> None:
    now = utcnow()

    def update(row: SourceStatus) -> None:
        row.cursor = json.dumps(cursor, sort_keys=True)
        row.last_poll_at = now
        row.files_taken += report.taken
        if report.errors:
            row.last_error = report.error[:4000] if report.error else None
            row.last_error_at = now
            row.failing_since = row.failing_since or now
        else:
            row.last_success_at = now
            row.failing_since = None

    record_source_status(runtime.engine, report.source, update)


# ------------------------------------------------------------------------------------------- loops


def poll_all_once(runtime: Runtime) -> list[PollReport]:
    """Poll every configured source once (``gateway poll --once``), then send due acknowledgments."""
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
        self.sources = [(f"{s.kind}:{s.name}", s.interval_seconds) for s in configured_sources(runtime.settings)]

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
