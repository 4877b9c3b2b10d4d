"""What a record source gives a flow run: pages of rows, each row's key and change marker.

A source reads the window the flow's ``changes`` describe, from the confirmed watermark:
``rowversion`` (SQL Server ``TimeStamp``, only rows changed since), ``date`` (a business date
from the watermark minus the overlap), ``modified`` (Plex's modified-date windows) or
``snapshot`` (everything, compared by content hash).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from gateway.flows.model import Flow


@dataclass
class Read:
    """One read's pages, and what the source learnt while giving them (filled as pages are taken)."""

    pages: Iterator[list[dict[str, Any]]]
    key: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    requests: list[int] = field(default_factory=lambda: [0])  # a box the source updates
    window_end: str | None = None  # modified-date reads: the end of the window read (the next watermark)

    @property
    def request_count(self) -> int:
        return self.requests[0]


class RecordSource(Protocol):
    """A system flows read records from (SYSPRO, Plex)."""

    system: str

    def read(self, flow: Flow, watermark: str | None, *, limit: int | None = None) -> Read: ...

    def check(self) -> list[str]: ...

    def close(self) -> None: ...


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
