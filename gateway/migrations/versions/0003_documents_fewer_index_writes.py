"""documents and events: fewer index writes per document

A document row is updated several times on its way (leased, its outcome stored, leased again
...), and an update that must write a new entry into each of the table's indexes costs PostgreSQL
far more than the row itself. An update that changes no indexed column can stay on its page with
no index writes at all (a HOT update), when the page has room: leaving 30 % of each page free
gives the lease updates that room. ``ix_documents_interchange_id`` repeats the first column of
the unique (interchange_id, position) constraint, which serves the same look-ups. Events are read
by interchange only for the interchange's own (no document): the index keeps just those rows.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_index('ix_documents_interchange_id')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_interchange_id')
        batch_op.create_index('ix_events_interchange_own', ['interchange_id'], unique=False,
                              postgresql_where=sa.text('document_id IS NULL'),
                              sqlite_where=sa.text('document_id IS NULL'))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE documents SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE documents RESET (fillfactor)")
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_interchange_own')
        batch_op.create_index('ix_events_interchange_id', ['interchange_id'], unique=False)
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.create_index('ix_documents_interchange_id', ['interchange_id'], unique=False)
