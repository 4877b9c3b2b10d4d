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
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = [
    "BatchItem", "BatchOutcome", "BatchOutcomeKind", "BatchedDestination", "Check", "DeliveryItem", "Destination",
    "Intake", "Outcome", "OutcomeKind", "Read", "RecordSource", "Source", "SourceError",
]


class OutcomeKind(StrEnum):
    OK = "ok"  # the work is done: on to what comes next
    RETRY = "retry"  # a transient fault: again later, with backoff, using an attempt, up to a limit
    FAIL = "fail"  # a permanent fault: failed here until someone reprocesses
    ATTENTION = "attention"  # a person must decide (unmatched or ambiguous supplier, ...)
    WAIT = "wait"  # the other side is busy, locked or throttling, or a budget is spent: later, no attempt used
    SKIP = "skip"  # nothing to do here for this document (e.g. no import configured for its kind)
    IGNORE = "ignore"  # not a document the gateway delivers
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a step or a destination says happened to one item.

    ``changes`` are document columns a document step sets (e.g. the canonical JSON); ``reference``
    is what a destination now holds for a delivery (e.g. ``"ap_invoice:7"``); ``after`` the seconds
    until the next look (RETRY, WAIT: the outside system's own delay), None for the policy's."""

    kind: OutcomeKind
    detail: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    code: str | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)
    after: float | None = None
    reference: str | None = None

    @classmethod
    def ok(cls, detail: Mapping[str, Any] | None = None, *, reference: str | None = None,
           after: float | None = None, **changes: Any) -> Outcome:
        return cls(OutcomeKind.OK, detail or {}, changes=changes, after=after, reference=reference)

    @classmethod
    def retry(cls, error: str, *, code: str | None = None, after: float | None = None,
              detail: Mapping[str, Any] | None = None, **changes: Any) -> Outcome:
        return cls(OutcomeKind.RETRY, detail or {}, error=error, code=code, after=after, changes=changes)

    @classmethod
    def fail(cls, error: str, *, code: str | None = None, detail: Mapping[str, Any] | None = None,
             **changes: Any) -> Outcome:
        return cls(OutcomeKind.FAIL, detail or {}, error=error, code=code, changes=changes)

    @classmethod
    def attention(cls, reason: str, *, code: str | None = None, detail: Mapping[str, Any] | None = None,
                  **changes: Any) -> Outcome:
        return cls(OutcomeKind.ATTENTION, detail or {}, error=reason, code=code, changes=changes)

    @classmethod
    def wait(cls, after: float | None = None, detail: Mapping[str, Any] | None = None, *, reason: str | None = None,
             code: str | None = None, **changes: Any) -> Outcome:
        """Not now, no attempt used: ``reason`` is shown on the document while it waits."""
        return cls(OutcomeKind.WAIT, detail or {}, error=reason, code=code, after=after, changes=changes)

    @classmethod
    def skip(cls, reason: str, detail: Mapping[str, Any] | None = None) -> Outcome:
        return cls(OutcomeKind.SKIP, detail or {}, error=reason)

    @classmethod
    def ignore(cls, reason: str, detail: Mapping[str, Any] | None = None, **changes: Any) -> Outcome:
        return cls(OutcomeKind.IGNORE, detail or {}, error=reason, changes=changes)

    @classmethod
    def duplicate(cls, reason: str, detail: Mapping[str, Any] | None = None, **changes: Any) -> Outcome:
        return cls(OutcomeKind.DUPLICATE, detail or {}, error=reason, changes=changes)


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


class BatchOutcomeKind(StrEnum):
    RUNNING = "running"  # sent; the outside run goes on: look again ``after`` seconds
    DONE = "done"  # over: ``members`` holds each member's outcome (OK or FAIL)
    RETRY = "retry"  # a transient fault, or a run worth repeating: send again later, using an attempt
    WAIT = "wait"  # busy, locked, throttled: later, no attempt used
    FAIL = "fail"  # a permanent fault (configuration, credentials): every member fails with ``error``


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What sending or looking at a batch came to. The worker writes it: the batch and, once it is over,
    every member's delivery, in one transaction."""

    kind: BatchOutcomeKind
    after: float | None = None
    reference: str | None = None
    result: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    code: str | None = None
    members: Mapping[int, Outcome] = field(default_factory=dict)  # by delivery id

    @classmethod
    def running(cls, after: float, *, reference: str | None = None,
                result: Mapping[str, Any] | None = None) -> BatchOutcome:
        return cls(BatchOutcomeKind.RUNNING, after=after, reference=reference, result=result or {})

    @classmethod
    def done(cls, members: Mapping[int, Outcome], *, result: Mapping[str, Any] | None = None,
             error: str | None = None) -> BatchOutcome:
        return cls(BatchOutcomeKind.DONE, members=members, result=result or {}, error=error)

    @classmethod
    def retry(cls, error: str, *, after: float | None = None, code: str | None = None,
              result: Mapping[str, Any] | None = None) -> BatchOutcome:
        return cls(BatchOutcomeKind.RETRY, after=after, error=error, code=code, result=result or {})

    @classmethod
    def wait(cls, reason: str, *, after: float | None = None, code: str | None = None,
             result: Mapping[str, Any] | None = None) -> BatchOutcome:
        return cls(BatchOutcomeKind.WAIT, after=after, error=reason, code=code, result=result or {})

    @classmethod
    def fail(cls, error: str, *, code: str | None = None, result: Mapping[str, Any] | None = None) -> BatchOutcome:
        return cls(BatchOutcomeKind.FAIL, error=error, code=code, result=result or {})


class Destination(Protocol):
    """Somewhere deliveries go (Plex, Anaplan, ...). ``deliver`` returns an outcome per delivery id.

    Made by ``configure(runtime)``, which returns None when the settings do not configure it."""

    name: ClassVar[str]

    def deliver(self, items: Sequence[DeliveryItem]) -> Mapping[int, Outcome]: ...

    def check(self) -> list[Check]: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchedDestination(Protocol):
    """A destination that takes many deliveries in one go (Anaplan: one upload and import per batch).

    The worker puts each delivery into the open batch of its :meth:`batch_key`; a batch is due when
    it holds ``max_members`` or is ``max_age`` seconds old, or ``min_age`` old with nothing more on its
    way. Batches of one :meth:`exclusive` name are sent one at a time (one Anaplan data file)."""

    name: ClassVar[str]
    max_members: int
    max_age: float
    min_age: float

    def batch_key(self, item: DeliveryItem) -> str | None:
        """The batch (import, process, list) ``item`` joins; None: nothing to send for it (skipped)."""

    def exclusive(self, key: str) -> str:
        """A name no two batches being sent or run may share at once (e.g. the data file they upload to)."""

    def send(self, batch: BatchItem, members: Sequence[DeliveryItem]) -> BatchOutcome: ...

    def poll(self, batch: BatchItem, members: Sequence[DeliveryItem]) -> BatchOutcome: ...

    def check(self) -> list[Check]: ...

    def close(self) -> None: ...
