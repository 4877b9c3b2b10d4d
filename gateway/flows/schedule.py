"""Switched-on flows run on their schedule inside ``gateway run`` / ``gateway poll`` (beside the
pollers). A flow is due when its last run started ``schedule.every_minutes`` ago (whichever process
ran it); its lease keeps a flow to one run at a time across processes."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

import structlog

from gateway.flows.files import FlowFileError, load_flow_directory
from gateway.flows.status import flow_statuses

log = structlog.get_logger("gateway.flows")
LOOK_SECONDS = 15.0


def due_flows(engine: Any, flows: dict[str, Any], now: datetime | None = None) -> list[str]:
    """Names of the switched-on flows with a schedule whose last run started an interval ago (or never)."""
    now = now or datetime.now(timezone.utc)
    out = []
    for status in flow_statuses(engine, flows):
        every = status.file.flow.schedule.every_minutes
        if not status.enabled or not every:
            continue
        last = status.last.started_at if status.last is not None else None
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=timezone.utc)
        if last is None or (now - last).total_seconds() >= every * 60:
            out.append(status.name)
    return out


def run_due_flows(runtime: Any) -> list[Any]:
    """Run every flow that is due, one after another; returns their reports."""
    from gateway.flows import open_flow
    from gateway.flows.runner import FlowBusy

    settings = runtime.settings
    if settings.anaplan is None or not settings.flows_dir.is_dir():
        return []
    try:
        flows = load_flow_directory(settings.flows_dir)
    except FlowFileError as exc:
        log.error("flows.files_invalid", error=str(exc).splitlines()[0])
        return []
    reports = []
    for name in due_flows(runtime.engine, flows):
        runner = open_flow(settings, runtime.engine, flows[name], owner=f"{runtime.instance}:schedule",
                           lease_seconds=settings.flows_lease_seconds)
        try:
            report = runner.run()
            log.info("flows.run", flow=name, state=report.state, seen=report.seen, sent=report.sent,
                     failed=report.failed)
            reports.append(report)
        except FlowBusy:
            pass  # another process runs it now
        finally:
            runner.source.close()
    return reports


def run_flow_schedule(runtime: Any, stop: threading.Event) -> None:
    """Look for due flows every few seconds until ``stop`` is set."""
    while not stop.is_set():
        try:
            run_due_flows(runtime)
        except Exception as exc:  # noqa: BLE001 - the store or a source down: look again later
            log.error("flows.schedule_error", error=f"{type(exc).__name__}: {exc}")
        stop.wait(LOOK_SECONDS)
