"""The registry of outside systems: one package per system under ``gateway/integrations/<kind>/``,
named here once (as healthchecks' ``TRANSPORTS``), imported only when used.

Adding a source or a destination is one folder and one line below. A simulator beside a client
is never named here: only ``gateway/sandbox/`` and the tests import simulators.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["DESTINATIONS", "DOCUMENT_STEPS", "RECORD_SOURCES", "SOURCES", "load", "record_source_class", "source_classes"]

# kind -> "module:class" of a gateway.integrations.base.Source
SOURCES: dict[str, str] = {
    "sterling": "gateway.integrations.sterling.source:SterlingSource",
    "sftp": "gateway.integrations.sftp.source:SftpSource",
    "local": "gateway.integrations.local.source:LocalSource",
}

# system -> "module:class" of a gateway.integrations.base.RecordSource (what record flows read)
RECORD_SOURCES: dict[str, str] = {
    "syspro": "gateway.integrations.syspro.source:SysproRecords",
    "plex": "gateway.integrations.plex.records:PlexRecords",
}

# name -> "module:class" of a gateway.integrations.base.Destination (or BatchedDestination)
DESTINATIONS: dict[str, str] = {
    "plex": "gateway.integrations.plex.destination:PlexDestination",
    "anaplan": "gateway.integrations.anaplan.destination:AnaplanDestination",
}

# document step -> "module:class" of a step an integration provides (runs before any delivery)
DOCUMENT_STEPS: dict[str, str] = {
    "match": "gateway.integrations.plex.matching:MatchStep",
}


def load(reference: str) -> Any:
    """The object a registry entry names (``"package.module:attribute"``), imported now."""
    module, _, attribute = reference.partition(":")
    return getattr(import_module(module), attribute)


def source_classes() -> dict[str, Any]:
    """Every registered source class, by kind."""
    return {kind: load(ref) for kind, ref in SOURCES.items()}


def record_source_class(system: str) -> Any:
    """The record source class for ``system`` (a flow's ``source.system``)."""
    return load(RECORD_SOURCES[system])
