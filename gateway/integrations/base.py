"""The roles an outside system plays, as protocols, and the plain values that pass between them and
the engine (see docs/seam.md).

A :class:`Source` brings payloads in: it is polled, and hands each payload to the :class:`Intake`
it is given, which stores it durably before the source may acknowledge it. A :class:`Destination`
takes deliveries out: it is given read-only :class:`DeliveryItem` values and returns an outcome per
delivery; it never writes documents, deliveries or batches — the worker alone does. This module
imports nothing of the gateway's, so every package may depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = [
    "BatchItem", "BatchedDestination", "Check", "DeliveryItem", "Destination", "Intake", "Read", "RecordSource",
    "Source", "SourceError",
]


class SourceError(Exception):
    """A source's fault whose text is written for an operator: it names the host and the cause and
    never carries a credential, so it may be shown on the panel's sources page as it is."""


@dataclass(frozen=True, slots=True)
class Check:
    """One thing `gateway check` verified about an outside system (login, a listing, a permission)."""

    name: str
    ok: bool
    detail: str = ""


class Intake(Protocol):
    """What a source hands its payloads to during one poll (``gateway.intake.Intake``)."""

    cursor: dict[str, Any]  # JSON the source keeps between polls (e.g. which files were seen how)

    def take(self, remote_name: str, remote_id: str, data: bytes, acknowledge: Callable[[], None]) -> None:
        """Store the payload durably, then call ``acknowledge`` (never before the commit)."""

    def listed(self) -> None:
        """One more item was found waiting."""

    def skip(self, what: str) -> None:
        """An item is not taken this time (vanished, still changing): a later poll offers it again."""

    def fail(self, what: str) -> None:
        """An item (or a folder) failed; the poll goes on with the others."""


@runtime_checkable
class Source(Protocol):
    """Something polled for payloads: a Sterling mailbox, an SFTP server, a local folder, ...

    Made from its settings (``Source(settings)``); :meth:`configured` lists the sources of a kind
    that the gateway's settings name. Its status key is ``"<kind>:<name>"``.
    """

    kind: ClassVar[str]
    name: str
    interval_seconds: float

    @classmethod
    def configured(cls, settings: Any) -> Sequence[Source]: ...

    def poll(self, intake: Intake) -> None:
        """Take what waits: each payload through ``intake.take`` (which commits before acknowledging)."""

    def check(self) -> list[Check]:
        """Log in, list, look at permissions: what an operator checks before going live."""


@dataclass
class Read:
    """One read of a record source for a flow run: its pages, filled in as they are taken."""

    pages: Any  # Iterator[list[dict]]: rows as the source gives them
    key: tuple[str, ...]  # the key columns: a record's source key is their values joined by '|'
    notes: list[str] = field(default_factory=list)  # what the run should say (e.g. a filter refused)
    requests: list[int] = field(default_factory=lambda: [0])  # a box the source counts its requests in
    window_end: str | None = None  # modified-date reads: the end of the window read (the next watermark)

    @property
    def request_count(self) -> int:
        return self.requests[0]


@runtime_checkable
class RecordSource(Protocol):
    """A system record flows read (SYSPRO, Plex): rows, not payloads; a flow run stores them as records.

    Made for a flow from the gateway's settings (``for_flow``); ``read`` gives the pages of the
    window the flow's ``changes`` describe, from the confirmed ``watermark``."""

    system: ClassVar[str]

    @classmethod
    def for_flow(cls, settings: Any, flow: Any) -> RecordSource: ...

    def read(self, flow: Any, watermark: str | None, *, limit: int | None = None) -> Read: ...

    def check(self) -> list[str]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DeliveryItem:
    """One delivery as a destination sees it: read-only, bound to no session.

    ``references`` are what earlier deliveries of the same document left (e.g. ``{"plex": "ap_invoice:7"}``),
    so a later destination can carry them (Anaplan's row names the Plex record).
    """

    delivery_id: int
    document_id: int
    destination: str
    kind: str | None
    partner: str | None
    standard: str | None
    message_type: str | None
    canonical: Mapping[str, Any]
    supplier_code: str | None
    references: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 0
    waits: int = 0
    test: bool = False
    reference: str | None = None  # what this delivery got before (a reprocessed one)
    batch_id: int | None = None


@dataclass(frozen=True, slots=True)
class BatchItem:
    """A batch as its destination sees it: the key it was gathered under and what it holds so far."""

    id: int
    destination: str
    key: str
    state: str
    member_count: int
    created_at: datetime
    attempts: int = 0
    waits: int = 0
    reference: str | None = None  # the outside system's id for its run (an Anaplan import task)
    result: Mapping[str, Any] = field(default_factory=dict)


class Destination(Protocol):
    """Somewhere deliveries go (Plex, Anaplan, ...). ``deliver`` returns an outcome per delivery id."""

    name: ClassVar[str]

    def deliver(self, items: Sequence[DeliveryItem]) -> Mapping[int, Any]: ...

    def check(self) -> list[Check]: ...

    def close(self) -> None: ...


class BatchedDestination(Destination, Protocol):
    """A destination that takes many deliveries in one go (Anaplan: one upload and import per batch)."""

    def batch_key(self, item: DeliveryItem) -> str | None:
        """The batch (import, process, list) ``item`` joins; None: nothing to send for it."""

    def send(self, batch: BatchItem, members: Sequence[DeliveryItem]) -> Any: ...

    def poll(self, batch: BatchItem, members: Sequence[DeliveryItem]) -> Any: ...
