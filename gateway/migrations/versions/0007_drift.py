"""reference data drift: Anaplan lists and partners' suppliers against the ERP master

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "drift",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("subject", sa.String(100), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("issue", sa.String(30), nullable=False),
        sa.Column("theirs", sa.Text(), nullable=True),
        sa.Column("erp", sa.Text(), nullable=True),
        sa.Column("proposal", sa.Text(), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("decided_by", sa.String(100), nullable=True),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detected_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_drift_state_kind", "drift", ["state", "kind"])
    op.create_index("ix_drift_subject", "drift", ["kind", "subject", "key", "issue"])


def downgrade() -> None:
    op.drop_index("ix_drift_subject", table_name="drift")
    op.drop_index("ix_drift_state_kind", table_name="drift")
    op.drop_table("drift")
