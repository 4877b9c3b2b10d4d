"""Record flows: SYSPRO and Plex records into Anaplan, configured by files (``flows/*.yaml``).

``files`` reads and validates the files, ``model`` is what a file says, ``runner`` runs one flow
(read, store, send, conclude), ``anaplan`` is the Anaplan import target, ``tables`` the store's
record tables. :func:`open_flow` wires a flow to its source and target from the settings.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from gateway.flows.files import FlowFile, FlowFileError, load_flow_directory

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from gateway.flows.runner import FlowRunner, Progress
    from gateway.flows.source import RecordSource
    from gateway.settings import Settings

__all__ = ["FlowFile", "FlowFileError", "load_flow_directory", "make_source", "open_flow"]


class FlowConfigError(ValueError):
    """The settings do not provide what a flow needs (its source system, Anaplan)."""


def make_source(settings: Settings, flow_file: FlowFile) -> RecordSource:
    """The configured source a flow reads, through the registry (``gateway.integrations.RECORD_SOURCES``)."""
    from gateway.integrations import RECORD_SOURCES, record_source_class

    system = flow_file.flow.source.system
    if system not in RECORD_SOURCES:
        raise FlowConfigError(f"flow {flow_file.flow.name}: no {system} record source")
    try:
        return record_source_class(system).for_flow(settings, flow_file.flow)
    except ValueError as exc:
        raise FlowConfigError(str(exc)) from None


def anaplan_client(settings: Settings, engine: Engine):
    """An Anaplan client on the tenant's shared request budget (the same 600/min the EDI path uses)."""
    from gateway.budget import StoreBudget, StoreRequestBudget
    from gateway.integrations.anaplan.client import make_imports

    cfg = settings.anaplan
    if cfg is None:
        raise FlowConfigError("record flows need the [anaplan] section (credentials)")
    tenant = hashlib.sha256(cfg.endpoints().api.encode()).hexdigest()[:12]
    budget = StoreRequestBudget(StoreBudget(engine, f"anaplan:{tenant}", cfg.requests_per_minute, block=1))
    return make_imports(cfg, budget=budget).client


def make_target(settings: Settings, engine: Engine, flow_file: FlowFile):
    """The Anaplan target the flow names: an import, a process, or a list (list-items API)."""
    from gateway.integrations.anaplan.targets import ImportTarget, ListItemsTarget, ProcessTarget

    assert settings.anaplan is not None
    timeout = settings.anaplan.timeout_seconds
    target = flow_file.flow.target
    client = anaplan_client(settings, engine)
    if target.kind == "process":
        return ProcessTarget(client, target, request_timeout=timeout)
    if target.kind == "list_items":
        return ListItemsTarget(client, target, list(flow_file.flow.fields), request_timeout=timeout)
    return ImportTarget(client, target, request_timeout=timeout)


def open_flow(settings: Settings, engine: Engine, flow_file: FlowFile, *, owner: str,
              progress: Progress | None = None, lease_seconds: float = 300.0) -> FlowRunner:
    """A runner for ``flow_file`` with its source and its Anaplan target (made when first needed)."""
    from gateway.flows.runner import FlowRunner

    if settings.anaplan is None:
        raise FlowConfigError("record flows need the [anaplan] section (credentials)")
    source = make_source(settings, flow_file)
    return FlowRunner(engine, flow_file, source, lambda: make_target(settings, engine, flow_file),
                      owner=owner, progress=progress, lease_seconds=lease_seconds)
