"""What a record source gives a flow run: pages of rows, each row's key and change marker.

A source reads the window the flow's ``changes`` describe, from the confirmed watermark:
``rowversion`` (SQL Server ``TimeStamp``, only rows changed since), ``date`` (a business date
from the watermark minus the overlap), ``modified`` (Plex's modified-date windows) or
``snapshot`` (everything, compared by content hash).
"""

from __future__ import annotations

import base64

from gateway.integrations.base import Read, RecordSource

__all__ = ["Read", "RecordSource", "later", "rowversion_int"]


def rowversion_int(text: str) -> int:
    """SQL Server rowversion (base64 of 8 bytes) as a number, to compare."""
    return int.from_bytes(base64.b64decode(text), "big")


def later(kind: str, a: str | None, b: str | None) -> str | None:
    """The later of two change markers of ``kind`` (None when both are None)."""
    if a is None or b is None:
        return a or b
    if kind == "rowversion":
        return a if rowversion_int(a) >= rowversion_int(b) else b
    return a if a >= b else b  # ISO dates and date-times compare as text
