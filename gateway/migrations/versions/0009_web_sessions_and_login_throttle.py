"""panel sessions kept in the store, the sign-in throttle shared by every process, sources' failing-since

A signed-in session is a row (the cookie holds a random id, the row its SHA-256), so signing
out, disabling a user or changing their password ends it everywhere. Failed sign-ins are counted
per user name and per client address in ``login_throttle``, which every panel process shares.
``source_status.failing_since`` is when a source's polls began to fail (readiness shows it).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'login_throttle',
        sa.Column('key', sa.String(length=120), nullable=False),
        sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('key'),
    )
    op.create_index('ix_login_throttle_window_start', 'login_throttle', ['window_start'], unique=False)
    op.create_table(
        'web_sessions',
        sa.Column('id_hash', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('address', sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id_hash'),
    )
    op.create_index('ix_web_sessions_user_id', 'web_sessions', ['user_id'], unique=False)
    op.create_index('ix_web_sessions_last_seen_at', 'web_sessions', ['last_seen_at'], unique=False)
    with op.batch_alter_table('source_status', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('source_status', schema=None) as batch_op:
        batch_op.drop_column('failing_since')
    op.drop_index('ix_web_sessions_last_seen_at', table_name='web_sessions')
    op.drop_index('ix_web_sessions_user_id', table_name='web_sessions')
    op.drop_table('web_sessions')
    op.drop_index('ix_login_throttle_window_start', table_name='login_throttle')
    op.drop_table('login_throttle')
