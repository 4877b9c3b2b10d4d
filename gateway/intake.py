"""Intake: a payload taken from a source is stored, with its SHA-256, before the source is told.

:func:`take` commits the raw bytes, the interchange row (state ``received``) and its audit event
in one transaction. Only after it returns may the caller acknowledge the source (archive or
delete the SFTP file, acknowledge the Sterling message). A crash between the two makes the
source offer the payload again; :func:`take` recognises it — same source, same remote id, same
hash — and stores nothing new, so the caller just acknowledges it this time.

The same bytes arriving again under another remote id (a partner re-sending a file, Sterling
delivering twice) are stored as a ``duplicate`` interchange pointing at the first one: recorded,
never processed, unless an operator forces it through. Duplicates by envelope (sender, receiver,
control number) are found later, when the worker splits the interchange.

A source (``gateway.integrations.base.Source``) is given an :class:`Intake` for each poll: it hands
every payload to :meth:`Intake.take`, which stores it with :func:`take` and only then lets the
source acknowledge it, and counts what happened in the poll's :class:`PollReport`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from gateway.store.db import durable, is_postgres, transaction
from gateway.store.models import Event, Interchange, RawPayload, SourceStatus, utcnow

__all__ = ["Intake", "IntakeResult", "PollReport", "STAGE", "record_source_status", "take"]

log = structlog.get_logger("gateway.intake")

STAGE = "intake"

Status = Literal["stored", "duplicate", "already_stored"]


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What :func:`take` did. In every case the bytes are durably stored and the source may be acknowledged."""

    status: Status
    interchange_id: int
    sha256: str
    size: int
    duplicate_of: int | None = None

    @property
    def new(self) -> bool:
        """True when this call stored a row (``stored`` or ``duplicate``)."""
        return self.status != "already_stored"


def _lock_hash(session: Session, sha256: str) -> None:
    # PostgreSQL runs concurrent transactions side by side: without this, two processes taking the
    # same bytes at once could both find no earlier copy. SQLite's BEGIN IMMEDIATE already serialises.
    if is_postgres(session.get_bind()):
        key = int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)
        session.connection().execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def take(
    engine: Engine,
    *,
    source: str,
    remote_name: str | None,
    remote_id: str | None,
    data: bytes,
    now: datetime | None = None,
    actor: str = "gateway",
) -> IntakeResult:
    """Store ``data`` taken from ``source`` and return what happened; commit before acknowledging the source."""
    now = now or utcnow()
    sha = hashlib.sha256(data).hexdigest()
    with transaction(durable(engine)) as s:  # the source is told only after this commit
        _lock_hash(s, sha)
        earlier = s.exec(
            select(Interchange.id, Interchange.source, Interchange.remote_id, Interchange.duplicate_of)
            .where(Interchange.sha256 == sha)
            .order_by(Interchange.id)
        ).all()
        for row in earlier:
            if row.source == source and row.remote_id == remote_id:
                return IntakeResult("already_stored", row.id, sha, len(data), row.duplicate_of)
        # Point at the original, never at another duplicate, so every copy names the same first row.
        first = next((r.id for r in earlier if r.duplicate_of is None), earlier[0].id if earlier else None)
        ich = Interchange(
            sha256=sha,
            size=len(data),
            source=source,
            remote_name=remote_name,
            remote_id=remote_id,
            received_at=now,
            state="received" if first is None else "duplicate",
            duplicate_of=first,
            error=None if first is None else f"same content (SHA-256) as interchange {first}",
        )
        s.add(ich)
        s.flush()
        s.add(RawPayload(interchange_id=ich.id, data=data))
        detail = {"source": source, "remote_name": remote_name, "remote_id": remote_id, "size": len(data),
                  "sha256": sha}
        if first is not None:
            detail["duplicate_of"] = first
        s.add(Event(
            interchange_id=ich.id,
            stage=STAGE,
            outcome="ok" if first is None else "duplicate",
            detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
            actor=actor,
            at=now,
        ))
        assert ich.id is not None
        return IntakeResult("stored" if first is None else "duplicate", ich.id, sha, len(data), first)


@dataclass
class PollReport:
    """What one poll of one source did."""

    source: str
    polled: bool = False  # False: another poller held the source's lease (``held_by``)
    held_by: str | None = None
    listed: int = 0
    stored: int = 0
    duplicates: int = 0
    already_stored: int = 0  # re-read after a crash between store and acknowledge
    acknowledged: int = 0
    skipped: int = 0  # vanished or still changing: offered again by a later poll if still there
    errors: list[str] = field(default_factory=list)

    @property
    def taken(self) -> int:
        return self.stored + self.duplicates

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) or None

    @property
    def ok(self) -> bool:
        return self.polled and not self.errors


@dataclass
class Intake:
    """One poll of one source (``source`` = ``"<kind>:<name>"``): what the source hands payloads to.

    ``keep_lease`` is called before each payload is stored (the poller renews the source's lease
    there, and raises when another process took it); ``cursor`` is the source's memory between polls.
    """

    engine: Engine
    source: str
    report: PollReport
    cursor: dict[str, Any] = field(default_factory=dict)
    actor: str = "gateway"
    keep_lease: Callable[[], None] = lambda: None

    def take(self, remote_name: str, remote_id: str, data: bytes, acknowledge: Callable[[], None]) -> None:
        """Store, then (and only then) acknowledge."""
        self.keep_lease()
        result = take(self.engine, source=self.source, remote_name=remote_name, remote_id=remote_id,
                      data=data, actor=self.actor)
        counter = {"stored": "stored", "duplicate": "duplicates", "already_stored": "already_stored"}[result.status]
        setattr(self.report, counter, getattr(self.report, counter) + 1)
        log.info("intake.taken", source=self.source, remote_name=remote_name, status=result.status,
                 interchange=result.interchange_id, size=result.size)
        acknowledge()
        self.report.acknowledged += 1

    def listed(self) -> None:
        self.report.listed += 1

    def skip(self, what: str) -> None:
        self.report.skipped += 1
        log.info("intake.skipped", source=self.source, reason=what)

    def fail(self, what: str) -> None:
        self.report.errors.append(what)
        log.error("intake.item_failed", source=self.source, error=what)


def record_source_status(engine: Engine, source: str, update: Callable[[SourceStatus], None]) -> None:
    """Apply ``update`` to the source's status row (the panel's sources page), creating it on first use."""
    for attempt in (1, 2):
        try:
            with transaction(engine) as s:
                row = s.get(SourceStatus, source)
                if row is None:
                    row = SourceStatus(source=source)
                    s.add(row)
                update(row)
            return
        except IntegrityError:  # created by another process at the same moment: update theirs
            if attempt == 2:
                raise
