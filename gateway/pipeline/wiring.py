"""What a worker runs, found through the registry: the document steps and the destinations this
process's settings configure (``gateway.integrations.DOCUMENT_STEPS`` and ``DESTINATIONS``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.integrations import DESTINATIONS, DOCUMENT_STEPS, load
from gateway.integrations.base import BatchedDestination

__all__ = ["Pipeline"]

log = structlog.get_logger("gateway.pipeline")


@dataclass
class Pipeline:
    """The configured document steps (by step name) and destinations (by name) of one process.

    ``Pipeline.configure(runtime)`` asks each registered class for its instance
    (``configure(runtime)``, None when the settings leave it out)."""

    steps: dict[str, Any] = field(default_factory=dict)
    destinations: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def configure(cls, runtime: Any, *, steps: Mapping[str, str] | None = None,
                  destinations: Mapping[str, str] | None = None) -> Pipeline:
        made = cls()
        for name, ref in (DOCUMENT_STEPS if steps is None else steps).items():
            step = load(ref).configure(runtime)
            if step is not None:
                made.steps[name] = step
        for name, ref in (DESTINATIONS if destinations is None else destinations).items():
            destination = load(ref).configure(runtime)
            if destination is not None:
                made.destinations[name] = destination
        log.info("pipeline_configured", steps=sorted(made.steps), destinations=sorted(made.destinations))
        return made

    def batched(self, name: str) -> bool:
        return isinstance(self.destinations.get(name), BatchedDestination)

    def close(self) -> None:
        for part in (*self.steps.values(), *self.destinations.values()):
            close = getattr(part, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    log.exception("pipeline_close_failed", part=type(part).__name__)
