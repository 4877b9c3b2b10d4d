"""documents: large columns kept out of line on PostgreSQL

A document row is updated at every stage (lease, state, outcome). Its EDI text, canonical JSON
and findings are written once. Below PostgreSQL's default TOAST threshold (about 2 kB) they stay
inline, so every update copied them into a new row version; with a low ``toast_tuple_target``
they live out of line and an update writes only the small columns. SQLite has no such setting.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE documents SET (toast_tuple_target = 256)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE documents RESET (toast_tuple_target)")
