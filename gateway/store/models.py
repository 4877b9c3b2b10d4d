"""The store's tables: interchanges as received, one document per transaction set, one delivery per
(document, destination), batches of deliveries, the audit trail.

Column names are the words the panel and the CLI show. Timestamps are timezone-aware UTC.
Large or free-form values (raw bytes, canonical JSON, findings) live in their own columns and
are never selected by the list queries, so a million-row documents page stays cheap.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, DateTime, Index, LargeBinary, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _ts(index: bool = False, nullable: bool = True):
    return Field(default=None, sa_type=DateTime(timezone=True), index=index, nullable=nullable)


def _text():
    return Field(default=None, sa_type=Text)


class Interchange(SQLModel, table=True):
    """One payload taken from a source: a file from an SFTP drop, a message from a Sterling mailbox.

    Sender, receiver and control number are the first ISA / UNB in it (nearly every file has one).
    """

    __tablename__ = "interchanges"
    __table_args__ = (
        Index("ix_interchanges_source_remote", "source", "remote_id"),
        Index("ix_interchanges_envelope", "sender_id", "receiver_id", "control_number"),
        Index("ix_interchanges_state_next", "state", "next_attempt_at"),
        Index("ix_interchanges_ack_status_received", "ack_status", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(index=True, max_length=64)
    size: int
    source: str = Field(max_length=200, description="configured source name, e.g. 'sftp:acme'")
    remote_name: str | None = Field(default=None, max_length=1000)
    remote_id: str | None = Field(default=None, max_length=1000)
    received_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)
    standard: str | None = Field(default=None, max_length=10)
    sender_qualifier: str | None = Field(default=None, max_length=10)
    sender_id: str | None = Field(default=None, max_length=100)
    receiver_qualifier: str | None = Field(default=None, max_length=10)
    receiver_id: str | None = Field(default=None, max_length=100)
    control_number: str | None = Field(default=None, max_length=40)
    partner: str | None = Field(default=None, max_length=100, index=True)
    state: str = Field(default="received", max_length=20, description="received | split | failed | duplicate "
                       "(gateway.pipeline.machine.InterchangeState)")
    error: str | None = _text()
    findings: str | None = Field(default=None, sa_type=Text, description="JSON list of envelope findings")
    duplicate_of: int | None = Field(default=None, foreign_key="interchanges.id")
    forced: bool = Field(default=False, description="an operator forced this duplicate through")
    document_count: int = 0
    ack_kind: str | None = Field(default=None, max_length=10, description="997 | 999 | TA1 | CONTRL")
    ack_status: str | None = Field(default=None, max_length=20, description=(
        "what the acknowledgment says: accepted | accepted_with_errors | partially_accepted | rejected"))
    ack: str | None = _text()
    ack_sent_to: str | None = Field(default=None, max_length=1000)
    ack_sent_at: datetime | None = _ts()
    attempts: int = 0
    next_attempt_at: datetime | None = _ts()
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = _ts()


class RawPayload(SQLModel, table=True):
    """The bytes exactly as received; immutable. Kept apart so listing interchanges never reads them."""

    __tablename__ = "raw_payloads"

    interchange_id: int = Field(foreign_key="interchanges.id", primary_key=True)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Document(SQLModel, table=True):
    """One transaction set (ST..SE) or message (UNH..UNT): what was received and translated.

    Its ``state`` is overall (gateway.pipeline.machine.State): set by its document steps
    (translate, match) until it is routed, then derived from its deliveries. ``stage`` is the step
    that runs next or failed (``translate``, ``match``) or the destination it is at."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("interchange_id", "position", name="uq_documents_interchange_position"),
        Index("ix_documents_state_next", "state", "next_attempt_at"),
        Index("ix_documents_created", "created_at", "id"),
        Index("ix_documents_partner_created", "partner", "created_at"),
        Index("ix_documents_state_created", "state", "created_at"),
        Index("ix_documents_kind_created", "kind", "created_at"),
        Index("ix_documents_controls", "interchange_control", "group_control", "message_control"),
    )

    id: int | None = Field(default=None, primary_key=True)
    interchange_id: int = Field(foreign_key="interchanges.id")  # indexed by uq_documents_interchange_position
    position: int = Field(description="1-based order of the set within the received file")
    partner: str | None = Field(default=None, max_length=100)
    kind: str | None = Field(default=None, max_length=20, description="purchase_order | invoice | None")
    standard: str = Field(max_length=10)
    message_type: str | None = Field(default=None, max_length=10, description="850, 810, ORDERS, INVOIC, ...")
    version: str | None = Field(default=None, max_length=20)
    po_number: str | None = Field(default=None, max_length=100, index=True)
    invoice_number: str | None = Field(default=None, max_length=100, index=True)
    sender_id: str | None = Field(default=None, max_length=100)
    receiver_id: str | None = Field(default=None, max_length=100)
    interchange_control: str | None = Field(default=None, max_length=40)
    group_control: str | None = Field(default=None, max_length=40)
    message_control: str | None = Field(default=None, max_length=40, index=True)
    state: str = Field(default="received", max_length=20)
    stage: str | None = Field(default=None, max_length=64, description=(
        "the step that runs next or failed (translate, match), or the destination it is at or failed at"))
    error: str | None = _text()
    error_code: str | None = Field(default=None, max_length=60)
    attempts: int = Field(default=0, description="attempts at the current stage")
    next_attempt_at: datetime | None = _ts()
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = _ts()
    canonical: str | None = Field(default=None, sa_type=Text, description="canonical document JSON")
    edi: str | None = Field(default=None, sa_type=Text, description="the set's segments, one per line")
    first_segment_index: int | None = None
    findings: str | None = Field(default=None, sa_type=Text, description="JSON list of findings")
    supplier_code: str | None = Field(default=None, max_length=100, description="the matched Plex supplier")
    candidates: str | None = Field(default=None, sa_type=Text, description="JSON: suppliers offered to a person")
    test: bool = Field(default=False, description="from a test interchange (ISA15 T, UNB 0035 1)")
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)


class Delivery(SQLModel, table=True):
    """One document on its way to one destination (like Bots' ``ta`` child rows): its own state,
    attempts, waits, outside reference and last answer. Deliveries of a document run in
    ``position`` order: one becomes ``pending`` when every one before it is done or skipped."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("document_id", "destination", name="uq_deliveries_document_destination"),
        Index("ix_deliveries_state_next", "state", "next_attempt_at"),
        Index("ix_deliveries_batch", "batch_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    document_id: int = Field(foreign_key="documents.id")  # indexed by uq_deliveries_document_destination
    destination: str = Field(max_length=64)
    position: int = Field(default=1, description="order among the document's deliveries")
    state: str = Field(default="blocked", max_length=20, description="gateway.pipeline.machine.DeliveryState")
    attempts: int = Field(default=0, description="attempts used (transient faults)")
    waits: int = Field(default=0, description="waits in a row for a busy, locked or throttling destination")
    next_attempt_at: datetime | None = _ts()
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = _ts()
    reference: str | None = Field(default=None, max_length=200, description="what the destination holds for it")
    batch_id: int | None = Field(default=None, foreign_key="batches.id")
    response: str | None = Field(default=None, sa_type=Text, description="JSON: the destination's last answer")
    error: str | None = _text()
    error_code: str | None = Field(default=None, max_length=60)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class Batch(SQLModel, table=True):
    """Deliveries gathered for one send to a batched destination (an Anaplan import): a work item
    the worker claims when it is due (to send it, or to look at its run) and concludes for its members."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_state_next", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    destination: str = Field(max_length=64)
    key: str = Field(max_length=200, description="what the members share: the import, process or list")
    state: str = Field(default="open", max_length=20, description="gateway.pipeline.machine.BatchState")
    member_count: int = 0
    next_attempt_at: datetime | None = _ts()
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = _ts()
    attempts: int = 0
    waits: int = 0
    reference: str | None = Field(default=None, max_length=200, description="the outside run (import task id)")
    result: str | None = Field(default=None, sa_type=Text, description="JSON: counts, rows, failures")
    error: str | None = _text()
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class Event(SQLModel, table=True):
    """The audit trail: one row per step attempt, delivery outcome, batch turn, reprocess or operator action."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_document_at", "document_id", "id"),
        # A document's events are found by document; only the interchange's own (intake, split, ack)
        # by interchange: the index leaves out the half-dozen rows every document adds.
        Index("ix_events_interchange_own", "interchange_id", postgresql_where=text("document_id IS NULL"),
              sqlite_where=text("document_id IS NULL")),
        Index("ix_events_batch", "batch_id", postgresql_where=text("batch_id IS NOT NULL"),
              sqlite_where=text("batch_id IS NOT NULL")),
    )

    id: int | None = Field(default=None, primary_key=True)
    document_id: int | None = Field(default=None, foreign_key="documents.id")
    interchange_id: int | None = Field(default=None, foreign_key="interchanges.id")
    delivery_id: int | None = Field(default=None, foreign_key="deliveries.id")
    batch_id: int | None = Field(default=None, foreign_key="batches.id")
    stage: str = Field(max_length=64, description="the step (translate, match) or the destination (plex, anaplan)")
    outcome: str = Field(max_length=20)
    detail: str | None = Field(default=None, sa_type=Text, description="JSON")
    actor: str = Field(default="gateway", max_length=100)
    at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)
    duration_ms: float | None = None
    attempt: int | None = None


class Lease(SQLModel, table=True):
    """A named lease: one poller per source, one batch at a time per Anaplan file, across processes."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=200)
    owner: str = Field(max_length=100)
    expires_at: datetime = Field(sa_type=DateTime(timezone=True))


class SourceStatus(SQLModel, table=True):
    """A source's cursor and health: what the poller remembers between polls and the panel shows."""

    __tablename__ = "source_status"

    source: str = Field(primary_key=True, max_length=200)
    cursor: str | None = Field(default=None, sa_type=Text, description="JSON the poller keeps between polls")
    last_poll_at: datetime | None = _ts()
    last_success_at: datetime | None = _ts()
    last_error: str | None = _text()
    last_error_at: datetime | None = _ts()
    failing_since: datetime | None = Field(default=None, sa_type=DateTime(timezone=True),
                                           description="the first failed poll since the last good one")
    files_taken: int = 0


class Secret(SQLModel, table=True):
    """A credential, Fernet-encrypted; the key never enters the database."""

    __tablename__ = "secrets"

    name: str = Field(primary_key=True, max_length=200)
    ciphertext: str = Field(sa_type=Text)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class RateWindow(SQLModel, table=True):
    """Requests spent per budget per window (e.g. Anaplan's 600/min per tenant), shared by every process."""

    __tablename__ = "rate_windows"

    budget: str = Field(primary_key=True, max_length=100)
    window_start: datetime = Field(primary_key=True, sa_type=DateTime(timezone=True))
    used: int = 0


class Supplier(SQLModel, table=True):
    """Plex's supplier master, cached and refreshed by modified date."""

    __tablename__ = "suppliers"

    code: str = Field(primary_key=True, max_length=100, description="Plex supplier code")
    plex_id: str | None = Field(default=None, max_length=100)
    name: str = Field(max_length=300)
    normalized_name: str = Field(max_length=300, index=True)
    tax_id: str | None = Field(default=None, max_length=100, index=True)
    status: str | None = Field(default=None, max_length=40)
    modified_at: datetime | None = _ts()
    record: str | None = Field(default=None, sa_type=Text, description="JSON as Plex returned it")
    refreshed_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class SupplierAlias(SQLModel, table=True):
    """An operator's choice of Plex supplier for what a partner sends; used from then on."""

    __tablename__ = "supplier_aliases"
    __table_args__ = (UniqueConstraint("partner", "key", name="uq_supplier_aliases_partner_key"),)

    id: int | None = Field(default=None, primary_key=True)
    partner: str = Field(default="", max_length=100, description="'' when the sender was not a known partner")
    key: str = Field(max_length=300, description="what identified the supplier: an id or a normalised name")
    supplier_code: str = Field(max_length=100)
    created_by: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class User(SQLModel, table=True):
    """A person who signs in to the panel."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=100, unique=True)
    password_hash: str = Field(max_length=300)
    role: str = Field(max_length=20, description="viewer | operator")
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class ApiToken(SQLModel, table=True):
    """A token for the JSON API; only its hash is kept."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(max_length=100)
    token_hash: str = Field(max_length=128, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    last_used_at: datetime | None = _ts()


class PartnerFile(SQLModel, table=True):
    """A mapping file uploaded or edited in the panel: a draft until an operator activates it."""

    __tablename__ = "partner_files"

    partner_id: str = Field(primary_key=True, max_length=100)
    filename: str = Field(max_length=300)
    text: str = Field(sa_type=Text)
    active: bool = False
    updated_by: str = Field(max_length=100)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    activated_at: datetime | None = _ts()


class AlertRecord(SQLModel, table=True):
    """An alert: what was noticed (once, by its key), whether and where it was sent.

    The key makes noticing idempotent across scans and processes: a failed document, a choice that
    waited too long, an outage of a source or destination (open until it is resolved), a rejecting
    acknowledgment. ``status``: pending → sent | held (over the hourly limit, summed up later) |
    grouped (sent inside one alert for many) | failed (no channel took it after retries).
    """

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_status_created", "status", "created_at"),
        Index("ix_alerts_open_outages", "kind", "subject", "resolved_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=300, unique=True)
    kind: str = Field(max_length=30)
    subject: str = Field(max_length=300, description="what it is about: 'document 12', 'source sterling:b2bi'")
    title: str = Field(max_length=500)
    body: str | None = _text()
    link: str | None = Field(default=None, max_length=500, description="the panel page, relative")
    status: str = Field(default="pending", max_length=20)
    since: datetime | None = _ts()
    seen_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True),
                                     description="an outage: when it was last seen failing")
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    sent_at: datetime | None = _ts(index=True)
    attempts: int = 0
    channels: str | None = Field(default=None, sa_type=Text, description="JSON: per channel, 'sent' or the error")
    resolved_at: datetime | None = _ts()


class AlertState(SQLModel, table=True):
    """What the alert scanner remembers between looks (its cursor), shared by every process."""

    __tablename__ = "alert_state"

    name: str = Field(primary_key=True, max_length=100)
    value: str | None = _text()
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class LoginThrottle(SQLModel, table=True):
    """Sign-in attempts per user name (``u:<name>``) and per client address (``a:<address>``).

    Kept in the store so every panel process counts together and a restart forgets nothing; an
    attempt is counted before its password is checked, in the same transaction as the check.
    """

    __tablename__ = "login_throttle"

    key: str = Field(primary_key=True, max_length=120)
    window_start: datetime = Field(sa_type=DateTime(timezone=True), index=True)
    failures: int = 0
    locked_until: datetime | None = _ts()


class WebSession(SQLModel, table=True):
    """A signed-in panel session: the cookie carries a random id, the store its hash.

    Sign-out deletes the row, so a copy of the cookie is worthless afterwards; so do disabling the
    user and changing their password.
    """

    __tablename__ = "web_sessions"

    id_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)
    address: str | None = Field(default=None, max_length=64)
