"""Delivery stages: supplier matching, posting to Plex, forwarding to Anaplan."""

from __future__ import annotations

from typing import Any


def build_stages(runtime: Any) -> dict:
    """The stages after translation, keyed by :class:`gateway.pipeline.machine.StageName`.

    Empty until delivery is configured: translated documents then wait at ``translated``.
    """
    return {}
