"""interchanges: the acknowledgment's verdict, for the acknowledgments page

``ack_status`` is what the 997/999/TA1/CONTRL built at split says of the interchange (accepted,
accepted_with_errors, partially_accepted, rejected), written by the worker beside the
acknowledgment itself; it is indexed with the receive time so the panel lists the rejecting ones
of a million without reading the rest. Stores from before are filled in here from the stored text.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table('interchanges', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ack_status', sa.String(length=20), nullable=True))
        batch_op.create_index('ix_interchanges_ack_status_received', ['ack_status', 'received_at'], unique=False)
    from gateway.alerts.rules import ack_verdict

    conn = op.get_bind()
    ich = sa.table('interchanges', sa.column('id', sa.Integer), sa.column('ack', sa.Text),
                   sa.column('ack_status', sa.String))
    last = 0
    while True:
        rows = conn.execute(sa.select(ich.c.id, ich.c.ack).where(ich.c.id > last, ich.c.ack.is_not(None))
                            .order_by(ich.c.id).limit(BATCH)).all()
        if not rows:
            break
        for row in rows:
            conn.execute(ich.update().where(ich.c.id == row.id).values(ack_status=ack_verdict(row.ack).status))
        last = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table('interchanges', schema=None) as batch_op:
        batch_op.drop_index('ix_interchanges_ack_status_received')
        batch_op.drop_column('ack_status')
