"""deliveries and batches instead of Plex and Anaplan columns on documents

Each document's journey to Plex and Anaplan becomes rows of its own: ``deliveries`` (one per
document and destination: state, attempts, waits, outside reference, last answer) and ``batches``
(from ``anaplan_batches``: a work item the worker claims and concludes for its members). A
document's state is overall from now on. What the release before this one stored is carried over:

* ``matched`` → ``delivering`` (Plex pending, Anaplan blocked); ``posted`` → ``delivering`` (Plex
  done with ``plex_key`` as its reference, Anaplan pending or in its batch); ``forwarded`` →
  ``delivering`` (Anaplan in its batch); ``done`` → ``done`` (Plex done, Anaplan done when it had a
  batch, else skipped); failed at ``post`` → failed at ``plex``; failed at ``forward`` or
  ``confirm`` → failed at ``anaplan``; failed or waiting at ``translate`` or ``match`` as before;
* every ``anaplan_batches`` row becomes a ``batches`` row with the same id (``retry`` → ``open``);
* every event is kept (their stages keep the names they were written with); events gain
  ``delivery_id`` and ``batch_id``.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_STR = sqlmodel.sql.sqltypes.AutoString
_TS = sa.DateTime(timezone=True)


def _create_tables() -> None:
    op.create_table(
        'batches',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('destination', _STR(length=64), nullable=False),
        sa.Column('key', _STR(length=200), nullable=False),
        sa.Column('state', _STR(length=20), nullable=False),
        sa.Column('member_count', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', _TS, nullable=True),
        sa.Column('lease_owner', _STR(length=100), nullable=True),
        sa.Column('lease_until', _TS, nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('waits', sa.Integer(), nullable=False),
        sa.Column('reference', _STR(length=200), nullable=True),
        sa.Column('result', sa.Text(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', _TS, nullable=False),
        sa.Column('updated_at', _TS, nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_batches_state_next', 'batches', ['state', 'next_attempt_at'])
    op.create_table(
        'deliveries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('document_id', sa.Integer(), nullable=False),
        sa.Column('destination', _STR(length=64), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('state', _STR(length=20), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('waits', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', _TS, nullable=True),
        sa.Column('lease_owner', _STR(length=100), nullable=True),
        sa.Column('lease_until', _TS, nullable=True),
        sa.Column('reference', _STR(length=200), nullable=True),
        sa.Column('batch_id', sa.Integer(), nullable=True),
        sa.Column('response', sa.Text(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('error_code', _STR(length=60), nullable=True),
        sa.Column('created_at', _TS, nullable=False),
        sa.Column('updated_at', _TS, nullable=False),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id']),
        sa.ForeignKeyConstraint(['document_id'], ['documents.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('document_id', 'destination', name='uq_deliveries_document_destination'),
    )
    op.create_index('ix_deliveries_state_next', 'deliveries', ['state', 'next_attempt_at'])
    op.create_index('ix_deliveries_batch', 'deliveries', ['batch_id'])


def _aware(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def _copy_batches(conn) -> dict[int, str]:
    """anaplan_batches → batches (same ids); returns each batch's new state."""
    old = sa.table('anaplan_batches', *(sa.column(c) for c in (
        'id', 'import_name', 'state', 'document_count', 'file_id', 'task_id', 'result', 'error', 'created_at',
        'updated_at', 'lease_owner', 'lease_until')))
    new = sa.table('batches', *(sa.column(c) for c in (
        'id', 'destination', 'key', 'state', 'member_count', 'next_attempt_at', 'lease_owner', 'lease_until',
        'attempts', 'waits', 'reference', 'result', 'error', 'created_at', 'updated_at')))
    states: dict[int, str] = {}
    rows = []
    for b in conn.execute(sa.select(old)).mappings():
        try:
            result = json.loads(b['result'] or '{}')
        except ValueError:
            result = {'unreadable': b['result']}
        if b['file_id']:
            result['file_id'] = b['file_id']
        state = {'retry': 'open'}.get(b['state'], b['state'])
        states[b['id']] = state
        # An open batch's lease_until was its "not before", a running one's the next poll: now when due.
        due = _aware(b['lease_until']) or _aware(b['updated_at']) if state in ('open', 'sending', 'running') else None
        rows.append({'id': b['id'], 'destination': 'anaplan', 'key': b['import_name'], 'state': state,
                     'member_count': b['document_count'] or 0, 'next_attempt_at': due, 'lease_owner': None,
                     'lease_until': _aware(b['lease_until']) if state == 'sending' else None,
                     'attempts': 0, 'waits': 0, 'reference': b['task_id'], 'result': json.dumps(result),
                     'error': b['error'], 'created_at': _aware(b['created_at']), 'updated_at': _aware(b['updated_at'])})
    if rows:
        op.bulk_insert(new, rows)
        if conn.dialect.name == 'postgresql':
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('batches', 'id'), "
                                 "(SELECT max(id) FROM batches))"))
    return states


def _deliveries_of(d, batch_states: dict[int, str]) -> tuple[list[dict], str, str | None]:
    """A document's deliveries and its new (state, stage), from its old state, stage and columns."""
    state, stage, now = d['state'], d['stage'], _aware(d['updated_at'])
    batch = d['anaplan_batch_id']

    def row(destination, position, dstate, **extra):
        values = {'document_id': d['id'], 'destination': destination, 'position': position, 'state': dstate,
                  'attempts': 0, 'waits': 0, 'next_attempt_at': None, 'reference': None, 'batch_id': None,
                  'error': None, 'error_code': None, 'created_at': now, 'updated_at': now}
        values.update(extra)
        return values

    plex_done = row('plex', 1, 'done', reference=d['plex_key']) if d['plex_key'] else row(
        'plex', 1, 'skipped', error='no Plex record was recorded before deliveries existed')
    waiting = {'attempts': d['attempts'] or 0, 'error': d['error'], 'error_code': d['error_code'],
               'next_attempt_at': _aware(d['next_attempt_at']) or now}
    failed = {'attempts': d['attempts'] or 0, 'error': d['error'], 'error_code': d['error_code']}
    in_batch = batch is not None and batch_states.get(batch) in ('open', 'sending', 'running')
    anaplan_waiting = row('anaplan', 2, 'batched', batch_id=batch) if in_batch else row(
        'anaplan', 2, 'pending', next_attempt_at=_aware(d['next_attempt_at']) or now)
    if state == 'matched' or (state == 'failed' and stage == 'post') or (state == 'needs_attention' and stage == 'post'):
        if state == 'matched':
            return [row('plex', 1, 'pending', **waiting), row('anaplan', 2, 'blocked')], 'delivering', 'plex'
        return [row('plex', 1, 'failed', **failed), row('anaplan', 2, 'blocked')], 'failed', 'plex'
    if state in ('posted', 'forwarded'):
        return [plex_done, anaplan_waiting], 'delivering', 'anaplan'
    if state in ('failed', 'needs_attention') and stage in ('forward', 'confirm'):
        return [plex_done, row('anaplan', 2, 'failed', batch_id=batch, **failed)], 'failed', 'anaplan'
    if state == 'done':
        anaplan = row('anaplan', 2, 'done', batch_id=batch, reference=f'batch {batch}') if batch else row(
            'anaplan', 2, 'skipped', error='not sent to Anaplan')
        return [plex_done, anaplan], 'done', None
    return [], state, stage  # received, translated, at translate or match, duplicate, ignored


def _move_documents(conn, batch_states: dict[int, str]) -> None:
    docs = sa.table('documents', *(sa.column(c) for c in (
        'id', 'state', 'stage', 'error', 'error_code', 'attempts', 'next_attempt_at', 'updated_at', 'plex_key',
        'anaplan_batch_id')))
    deliveries = sa.table('deliveries', *(sa.column(c) for c in (
        'document_id', 'destination', 'position', 'state', 'attempts', 'waits', 'next_attempt_at', 'reference',
        'batch_id', 'error', 'error_code', 'created_at', 'updated_at')))
    last = 0
    while True:
        chunk = conn.execute(sa.select(docs).where(docs.c.id > last).order_by(docs.c.id).limit(2000)).mappings().all()
        if not chunk:
            return
        last = chunk[-1]['id']
        rows: list[dict] = []
        for d in chunk:
            made, state, stage = _deliveries_of(d, batch_states)
            rows += made
            changes = {}
            if (state, stage) != (d['state'], d['stage']):
                changes.update(state=state, stage=stage)
            if state in ('received', 'translated', 'delivering') and d['next_attempt_at'] is None:
                changes['next_attempt_at'] = _aware(d['updated_at'])  # claims go by when work became due
            if state == 'delivering':
                changes.update(error=None, error_code=None, attempts=0, next_attempt_at=None)
            if changes:
                conn.execute(docs.update().where(docs.c.id == d['id']).values(**changes))
        if rows:
            op.bulk_insert(deliveries, rows)


def upgrade() -> None:
    _create_tables()
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivery_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('batch_id', sa.Integer(), nullable=True))
        batch_op.alter_column('stage', existing_type=_STR(length=20), type_=_STR(length=64), existing_nullable=False)
        batch_op.create_foreign_key('fk_events_delivery_id', 'deliveries', ['delivery_id'], ['id'])
        batch_op.create_foreign_key('fk_events_batch_id', 'batches', ['batch_id'], ['id'])
        batch_op.create_index('ix_events_batch', ['batch_id'], unique=False,
                              postgresql_where=sa.text('batch_id IS NOT NULL'),
                              sqlite_where=sa.text('batch_id IS NOT NULL'))
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('test', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.alter_column('stage', existing_type=_STR(length=20), type_=_STR(length=64), existing_nullable=True)
    conn = op.get_bind()
    batch_states = _copy_batches(conn)
    _move_documents(conn, batch_states)
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_index('ix_documents_anaplan_batch_id')
        batch_op.drop_column('anaplan_batch_id')
        batch_op.drop_column('plex_key')
    op.drop_index('ix_anaplan_batches_state', table_name='anaplan_batches')
    op.drop_table('anaplan_batches')


def downgrade() -> None:
    raise NotImplementedError("0008 moves Plex and Anaplan columns into deliveries and batches; restore a backup "
                              "taken before the upgrade to go back")
