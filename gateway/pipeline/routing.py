"""Routing: which destinations a document goes to, and in which order.

By kind from the settings (``[routing]``: ``purchase_order = ["plex", "anaplan"]``, the default
for both kinds), replaced for a partner by its mapping file's ``delivery.destinations``. A test
interchange's documents go only where the partner's ``delivery.test`` says (nowhere by default).
A destination this process has not configured is left out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from gateway.pipeline.machine import KINDS

__all__ = ["DEFAULT_ROUTES", "route"]

# Plex first: the Anaplan row carries the record Plex made.
DEFAULT_ROUTES: dict[str, list[str]] = {kind: ["plex", "anaplan"] for kind in KINDS}


def route(kind: str | None, partner: Any, *, test: bool, routes: Mapping[str, Sequence[str]],
          configured: Collection[str]) -> list[str]:
    """The destinations, in order, for a document of ``kind`` from ``partner`` (its mapping, or None)."""
    delivery = getattr(partner, "delivery", None)
    if test:
        names: Sequence[str] = delivery.test if delivery is not None else ()
    elif delivery is not None and delivery.destinations is not None:
        names = delivery.destinations
    else:
        names = routes.get(kind or "", ())
    return [name for name in dict.fromkeys(names) if name in configured]
