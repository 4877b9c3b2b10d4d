"""record flows: records, runs, flow state, record events

Records from SYSPRO and Plex kept raw with their source key and content hash; the runs that
carried them to Anaplan; each flow's confirmed watermark and switch; a record's own audit trail.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "flow_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("flow", sa.String(100), nullable=False),
        sa.Column("system", sa.String(20), nullable=False),
        sa.Column("entity", sa.String(100), nullable=False),
        sa.Column("source_key", sa.String(500), nullable=False),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("changed_at", TS, nullable=False),
        sa.UniqueConstraint("flow", "source_key", name="uq_flow_records_flow_key"),
    )
    op.create_index("ix_flow_records_flow_run", "flow_records", ["flow", "run_id"])
    op.create_table(
        "flow_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("flow", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("mode", sa.String(10), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("watermark_from", sa.String(200), nullable=True),
        sa.Column("watermark_to", sa.String(200), nullable=True),
        sa.Column("seen", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("source_requests", sa.Integer(), nullable=False),
        sa.Column("anaplan_requests", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(100), nullable=True),
        sa.Column("import_started_at", TS, nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(100), nullable=True),
    )
    op.create_index("ix_flow_runs_flow_id", "flow_runs", ["flow", "id"])
    op.create_table(
        "flow_state",
        sa.Column("flow", sa.String(100), primary_key=True),
        sa.Column("watermark", sa.String(200), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=True),
        sa.Column("dry_run_sha256", sa.String(64), nullable=True),
        sa.Column("updated_by", sa.String(100), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "record_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("flow", sa.String(100), nullable=False),
        sa.Column("source_key", sa.String(500), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_record_events_record", "record_events", ["record_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_record_events_record", table_name="record_events")
    op.drop_table("record_events")
    op.drop_table("flow_state")
    op.drop_index("ix_flow_runs_flow_id", table_name="flow_runs")
    op.drop_table("flow_runs")
    op.drop_index("ix_flow_records_flow_run", table_name="flow_records")
    op.drop_table("flow_records")
