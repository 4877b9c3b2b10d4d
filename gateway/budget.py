"""Request budgets shared by every gateway process through the store (``RateWindow`` rows).

Plex allows about 200 requests a minute per key and Anaplan about 600 per tenant, whoever sends
them. A budget counts requests in short windows: ``limit = per_minute / (60 / window + 1)`` per
window, so no sliding minute — however it falls across window edges — ever holds more than
``per_minute``. A process reserves a few requests per transaction (``block``) and hands them out
locally, so the store sees one write per block, not one per request; requests reserved but not
used lapse with their window (the budget is under-used, never exceeded).

A server's ``Retry-After`` is recorded as a hold (a ``RateWindow`` row named ``<budget>#hold``
whose ``window_start`` is the time it ends), so every process waits, not only the one told.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.engine import Engine

from gateway.store.models import RateWindow

_TABLE = RateWindow.__table__


def _insert(engine: Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(_TABLE)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _ts(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


class StoreBudget:
    """One named budget (e.g. ``anaplan:<tenant>``) of ``per_minute`` requests, in the store."""

    def __init__(self, engine: Engine, name: str, per_minute: float, *, window_seconds: float = 6.0,
                 block: int | None = None, clock: Callable[[], float] = time.time) -> None:
        if per_minute <= 0 or window_seconds <= 0:
            raise ValueError("per_minute and window_seconds must be positive")
        self.engine, self.name, self.window = engine, name[:95], float(window_seconds)
        self.per_minute = per_minute
        self.limit = max(1, math.floor(per_minute / (60.0 / self.window + 1)))
        self.block = block if block is not None else max(1, min(500, self.limit // 8))
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start: float | None = None
        self._left = 0
        self._hold_until = 0.0
        self._exhausted: float | None = None  # a window the store said is used up: no need to ask again

    def take(self, now: float | None = None) -> float:
        """Take one request: 0.0 when granted, else the seconds to wait before asking again."""
        with self._lock:
            now = self._clock() if now is None else now
            if now < self._hold_until:
                return self._hold_until - now
            start = math.floor(now / self.window) * self.window
            if self._window_start == start and self._left > 0:
                self._left -= 1
                return 0.0
            if self._exhausted == start:
                return max(0.001, start + self.window - now)
            granted, hold = self._reserve(start, now)
            self._hold_until = hold
            if hold > now:
                return hold - now
            if granted:
                self._window_start, self._left = start, granted - 1
                return 0.0
            self._window_start, self._left, self._exhausted = start, 0, start
            return max(0.001, start + self.window - now)

    def hold(self, until: float) -> None:
        """Nobody sharing this budget sends before ``until`` (epoch seconds)."""
        with self._lock:
            self._hold_until = max(self._hold_until, until)
            self._left, self._exhausted = 0, None
        with self.engine.begin() as conn:
            conn.execute(_insert(self.engine).values(budget=self.name + "#hold", window_start=_dt(until), used=0)
                         .on_conflict_do_nothing())

    def _reserve(self, start: float, now: float) -> tuple[int, float]:
        """(requests granted, hold end) in one transaction."""
        window_start = _dt(start)
        with self.engine.begin() as conn:
            hold = conn.execute(select(func.max(_TABLE.c.window_start))
                                .where(_TABLE.c.budget == self.name + "#hold")).scalar()
            if hold is not None and _ts(hold) > now:
                return 0, _ts(hold)
            created = conn.execute(_insert(self.engine).values(budget=self.name, window_start=window_start, used=0)
                                   .on_conflict_do_nothing()).rowcount
            if created:  # a new window: forget old ones (and old holds) while we are here
                conn.execute(delete(_TABLE).where(
                    _TABLE.c.budget.in_((self.name, self.name + "#hold")),
                    _TABLE.c.window_start < _dt(start - max(600.0, 2 * self.window))))
            where = and_(_TABLE.c.budget == self.name, _TABLE.c.window_start == window_start)
            used = conn.execute(select(_TABLE.c.used).where(where).with_for_update()).scalar() or 0
            grant = max(0, min(self.block, self.limit - used))
            if grant:
                conn.execute(update(_TABLE).where(where).values(used=used + grant))
            return grant, 0.0


class StoreRateBudgetBackend:
    """:class:`gateway.integrations.plex.client.RateBudgetBackend` over :class:`StoreBudget` (token-bucket
    parameters become a per-minute allowance: ``capacity + 60 × refill``)."""

    def __init__(self, engine: Engine, *, window_seconds: float = 6.0) -> None:
        self.engine, self.window_seconds = engine, window_seconds
        self._budgets: dict[str, StoreBudget] = {}
        self._lock = threading.Lock()

    def _budget(self, bucket: str, per_minute: float) -> StoreBudget:
        with self._lock:
            budget = self._budgets.get(bucket)
            if budget is None:
                budget = self._budgets[bucket] = StoreBudget(self.engine, bucket, per_minute,
                                                             window_seconds=self.window_seconds)
            return budget

    def take(self, bucket: str, *, capacity: float, refill_per_second: float, now: float) -> float:
        return self._budget(bucket, capacity + 60.0 * refill_per_second).take(now)

    def hold(self, bucket: str, until: float) -> None:
        with self._lock:
            budget = self._budgets.get(bucket)
        if budget is not None:
            budget.hold(until)


class StoreRequestBudget:
    """:class:`gateway.integrations.anaplan.client.RequestBudget` over :class:`StoreBudget`."""

    def __init__(self, budget: StoreBudget, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget, self._sleep, self._clock = budget, sleep, clock

    def acquire(self, n: int = 1, *, max_wait: float = 30.0) -> bool:
        deadline = self._clock() + max_wait
        for _ in range(n):
            while True:
                wait = self.budget.take()
                if wait <= 0:
                    break
                if self._clock() + wait > deadline:
                    return False
                self._sleep(wait)
        return True


__all__ = ["StoreBudget", "StoreRateBudgetBackend", "StoreRequestBudget"]
