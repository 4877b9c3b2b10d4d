"""Named leases in the store: one poller per source, one uploader per Anaplan file, across processes.

A lease is a row (name, owner, expires_at). Taking it is one conditional write, so two processes
can never both hold it: insert when absent, or update when expired or already ours.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.store.models import Lease, utcnow


def acquire(engine: Engine, name: str, owner: str, ttl: float, *, now: datetime | None = None) -> bool:
    """Take or renew the lease ``name`` for ``ttl`` seconds; False when another owner holds it."""
    now = now or utcnow()
    until = now + timedelta(seconds=ttl)
    table = Lease.__table__
    with engine.begin() as conn:
        taken = conn.execute(
            update(table)
            .where(table.c.name == name)
            .where((table.c.owner == owner) | (table.c.expires_at < now))
            .values(owner=owner, expires_at=until)
        ).rowcount
        if taken:
            return True
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(name=name, owner=owner, expires_at=until))
        return True
    except IntegrityError:
        return False  # someone else holds it (or took it between our two statements)


def release(engine: Engine, name: str, owner: str) -> None:
    """Give the lease up, if we still hold it."""
    table = Lease.__table__
    with engine.begin() as conn:
        conn.execute(delete(table).where(table.c.name == name, table.c.owner == owner))


def holder(engine: Engine, name: str, *, now: datetime | None = None) -> str | None:
    """Who holds ``name`` now (None when free or expired)."""
    from sqlmodel import Session

    now = now or utcnow()
    with Session(engine) as s:
        row = s.get(Lease, name)
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=now.tzinfo)
    return row.owner if expires >= now else None
