"""Request budgets shared through the store: never more than the allowance, a Retry-After reaches everyone."""

from __future__ import annotations

import threading

from gateway.budget import StoreBudget, StoreRateBudgetBackend, StoreRequestBudget
from gateway.integrations.plex.client import RateBudget


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_two_processes_share_one_allowance(engine):
    clock = Clock()
    # Two "processes": separate budget objects over the same store row.
    a = StoreBudget(engine, "plex-connect:k", 200, window_seconds=6, clock=clock)
    b = StoreBudget(engine, "plex-connect:k", 200, window_seconds=6, clock=clock)
    assert a.limit == 18  # 200 / (60/6 + 1): no sliding minute can hold more than 200
    granted = 0
    for i in range(100):
        if (a if i % 2 else b).take() == 0.0:
            granted += 1
    assert granted == a.limit
    # The next window grants again; the wait named is the time left in this one.
    assert 0 < a.take() <= 6
    clock.t += 6
    assert a.take() == 0.0


def test_no_sliding_minute_exceeds_the_allowance(engine):
    clock = Clock(3_000_000.0)
    budget = StoreBudget(engine, "anaplan:t", 600, window_seconds=6, block=10, clock=clock)
    grants: list[float] = []
    while clock.t < 3_000_000.0 + 180:
        if budget.take() == 0.0:
            grants.append(clock.t)
        else:
            clock.t += 0.05
    assert grants
    worst = max(sum(1 for g in grants if start <= g < start + 60) for start in grants)
    assert worst <= 600 and len(grants) >= 0.8 * 600 * 3  # close to the allowance, never over it


def test_retry_after_holds_every_process(engine):
    clock = Clock(5_000_000.0)
    a = StoreBudget(engine, "plex-connect:h", 200, clock=clock)
    b = StoreBudget(engine, "plex-connect:h", 200, clock=clock)
    assert a.take() == 0.0
    a.hold(clock.t + 30)  # a 429 with Retry-After: 30 seen by a
    assert 29 < b.take() <= 30  # b waits too, although it never saw the 429
    clock.t += 31
    assert b.take() == 0.0


def test_plex_rate_budget_and_anaplan_budget_over_the_store(engine):
    clock = Clock(7_000_000.0)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.t += s

    plex = RateBudget("plex-connect:x", 200, burst=20, backend=StoreRateBudgetBackend(engine), clock=clock,
                      sleep=sleep)
    for _ in range(40):
        plex.acquire()
    assert sum(slept) > 0  # the 19th request had to wait for the next window

    anaplan = StoreRequestBudget(StoreBudget(engine, "anaplan:y", 11, window_seconds=60, block=1, clock=clock),
                                 sleep=sleep, clock=clock)
    assert anaplan.acquire(5, max_wait=0)  # 11 / (60/60 + 1) = 5 per minute-window
    assert not anaplan.acquire(1, max_wait=1)  # would need to wait a window: refused at once


def test_concurrent_threads_never_overdraw(engine):
    budget = StoreBudget(engine, "anaplan:threads", 10, window_seconds=3600, block=3)
    wins: list[int] = []
    lock = threading.Lock()

    def grab() -> None:
        mine = sum(1 for _ in range(30) if budget.take() == 0.0)
        with lock:
            wins.append(mine)

    threads = [threading.Thread(target=grab) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(wins) == budget.limit == 9  # 10 / (60/3600 + 1)
