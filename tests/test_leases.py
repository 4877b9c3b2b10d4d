"""Named leases: exclusive across owners, renewable, taken over when expired (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta

from gateway.leases import acquire, holder, release
from gateway.store import utcnow


def test_one_owner_at_a_time_and_takeover_after_expiry(engine):
    now = utcnow()
    assert acquire(engine, "poll:sftp:a", "p1", 30, now=now)
    assert not acquire(engine, "poll:sftp:a", "p2", 30, now=now)
    assert acquire(engine, "poll:sftp:a", "p1", 30, now=now + timedelta(seconds=10))  # renew
    assert holder(engine, "poll:sftp:a", now=now) == "p1"
    assert not acquire(engine, "poll:sftp:a", "p2", 30, now=now + timedelta(seconds=39))
    assert acquire(engine, "poll:sftp:a", "p2", 30, now=now + timedelta(seconds=41))
    assert holder(engine, "poll:sftp:a", now=now + timedelta(seconds=41)) == "p2"
    release(engine, "poll:sftp:a", "p1")  # not ours any more: no effect
    assert holder(engine, "poll:sftp:a", now=now + timedelta(seconds=41)) == "p2"
    release(engine, "poll:sftp:a", "p2")
    assert holder(engine, "poll:sftp:a") is None


def test_racing_threads_get_exactly_one_lease(engine):
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def grab(n: int) -> None:
        barrier.wait()
        if acquire(engine, "anaplan-file:113000000000", f"t{n}", 60):
            winners.append(f"t{n}")

    threads = [threading.Thread(target=grab, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
