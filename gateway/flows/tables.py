"""The store's record-flow tables: records as read, the runs that moved them, each flow's state.

Records are not documents: a flow *run* (its one upload and import) is what goes to Anaplan, so a
record never gets a delivery row of its own. A record points at the run that carries its current
content (``run_id``); whether that content reached Anaplan is the run's state, and a row Anaplan
rejected carries the reason in ``error``. So confirming a run of a million records writes one
run row and the rejected records, not a million.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from gateway.store.models import utcnow


class FlowRecord(SQLModel, table=True):
    """One source record of one flow, kept raw (JSON as the source gave it)."""

    __tablename__ = "flow_records"
    __table_args__ = (
        UniqueConstraint("flow", "source_key", name="uq_flow_records_flow_key"),
        Index("ix_flow_records_flow_run", "flow", "run_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    flow: str = Field(max_length=100)
    system: str = Field(max_length=20, description="syspro | plex")
    entity: str = Field(max_length=100, description="SYSPRO table or Plex resource")
    source_key: str = Field(max_length=500, description="the source's own id: key columns joined by '|'")
    content_hash: str = Field(max_length=32, description="BLAKE2b-128 of the record's canonical JSON")
    raw: str = Field(sa_type=Text, description="the record as the source gave it (JSON)")
    run_id: int = Field(index=False, description="the run that carries this content to Anaplan")
    error: str | None = Field(default=None, sa_type=Text, description="why Anaplan rejected it")
    changed_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class FlowRun(SQLModel, table=True):
    """One run of a flow: read (or replay), upload, import, conclusion."""

    __tablename__ = "flow_runs"
    __table_args__ = (Index("ix_flow_runs_flow_id", "flow", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    flow: str = Field(max_length=100)
    kind: str = Field(default="run", max_length=20, description="run | replay | dry_run")
    mode: str = Field(default="insert", max_length=10)
    state: str = Field(default="reading", max_length=20,
                       description="reading | sending | importing | done | failed | abandoned")
    actor: str = Field(default="gateway", max_length=100)
    started_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    watermark_from: str | None = Field(default=None, max_length=200)
    watermark_to: str | None = Field(default=None, max_length=200)
    seen: int = 0
    changed: int = 0
    sent: int = 0
    failed: int = 0
    source_requests: int = 0
    anaplan_requests: int = 0
    task_id: str | None = Field(default=None, max_length=100)
    import_started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    result: str | None = Field(default=None, sa_type=Text, description="JSON: Anaplan's counts and details")
    error: str | None = Field(default=None, sa_type=Text)
    lease_owner: str | None = Field(default=None, max_length=100)


class FlowState(SQLModel, table=True):
    """What a flow remembers between runs: the confirmed watermark and the panel's switch."""

    __tablename__ = "flow_state"

    flow: str = Field(primary_key=True, max_length=100)
    watermark: str | None = Field(default=None, max_length=200, description="up to where Anaplan confirmed")
    enabled: bool | None = Field(default=None, description="the panel's switch; None: the file's 'enabled'")
    dry_run_sha256: str | None = Field(default=None, max_length=64, description="the file text last dry-run clean")
    updated_by: str | None = Field(default=None, max_length=100)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class RecordEvent(SQLModel, table=True):
    """A record's audit trail beyond the run that carried it: content changed, rejected by Anaplan,
    replayed, written back."""

    __tablename__ = "record_events"
    __table_args__ = (Index("ix_record_events_record", "record_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    record_id: int
    run_id: int | None = None
    flow: str = Field(max_length=100)
    source_key: str = Field(max_length=500)
    outcome: str = Field(max_length=20, description="changed | rejected | replayed | approved | rejected_change | written")
    detail: str | None = Field(default=None, sa_type=Text)
    actor: str = Field(default="gateway", max_length=100)
    at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class Drift(SQLModel, table=True):
    """A difference between reference data in Anaplan (or what a partner's documents carry) and the
    ERP master, shown side by side until it is gone or an operator decided on it."""

    __tablename__ = "drift"
    __table_args__ = (Index("ix_drift_state_kind", "state", "kind"),
                      Index("ix_drift_subject", "kind", "subject", "key", "issue"))

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=20, description="reference | partner")
    subject: str = Field(max_length=100, description="the reference flow's name, or the partner id")
    key: str = Field(max_length=200, description="the item's code (supplier code, cost centre)")
    issue: str = Field(max_length=30, description="missing_in_erp | renamed | deactivated | missing_in_plex | "
                                                  "inactive | tax_id_differs")
    theirs: str | None = Field(default=None, sa_type=Text, description="JSON: what Anaplan (or the partner) has")
    erp: str | None = Field(default=None, sa_type=Text, description="JSON: what the ERP master has")
    proposal: str | None = Field(default=None, sa_type=Text, description="JSON: the write-back an approval makes")
    state: str = Field(default="open", max_length=20,
                       description="open | approved | written | failed | rejected | resolved")
    decided_by: str | None = Field(default=None, max_length=100)
    decided_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    reason: str | None = Field(default=None, sa_type=Text)
    error: str | None = Field(default=None, sa_type=Text)
    detected_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
