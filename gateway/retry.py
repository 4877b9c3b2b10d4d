"""The one retry policy: exponential backoff with a cap (tenacity's wait strategies), for retries
inside a call (a client trying a request again) and for the next attempt the store keeps (the
worker trying a delivery again later) alike.

A *transient* fault (timeout, 5xx, a lost connection) uses an attempt; after ``attempts`` the
work fails. A *wait* (a model busy or locked, 429, a request budget spent) uses none: the same
backoff grows with the waits in a row, capped, or follows the outside system's ``Retry-After``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity

__all__ = ["Backoff", "WAIT", "retry_after_of"]


@dataclass(frozen=True)
class Backoff:
    """``initial × multiplier^(n-1)`` seconds before try ``n + 1``, at most ``maximum``, stretched by up
    to ``jitter`` (a fraction) so that many workers do not come back at the same moment."""

    attempts: int = 8
    initial: float = 2.0
    maximum: float = 600.0
    multiplier: float = 2.0
    jitter: float = 0.0

    def _exponential(self) -> tenacity.wait.wait_base:
        return tenacity.wait_exponential(multiplier=self.initial, exp_base=self.multiplier, max=self.maximum)

    def delay(self, n: int, *, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``n``-th failed try (or ``n``-th wait in a row)."""
        if n <= 0 or self.initial <= 0:
            return 0.0
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = n
        base = min(self.maximum, self._exponential()(state))
        return min(self.maximum, base * (1 + self.jitter * rng())) if self.jitter else base

    def wait(self, retry_after: Callable[[BaseException], float | None] = lambda exc: None,
             *, longest: float | None = None) -> Callable[[tenacity.RetryCallState], float]:
        """A tenacity ``wait``: the outside system's own delay when the fault carries one (at most
        ``longest``), else this backoff."""
        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            asked = retry_after(exc) if exc is not None else None
            if asked is not None:
                return min(asked, longest) if longest is not None else asked
            return self.delay(state.attempt_number)
        return wait

    def retrying(self, *, retry: Callable[[BaseException], bool],
                 retry_after: Callable[[BaseException], float | None] = lambda exc: None,
                 longest: float | None = None, sleep: Callable[[float], None] | None = None,
                 before_sleep: Callable[[tenacity.RetryCallState], Any] | None = None) -> tenacity.Retrying:
        """Tries within one call: ``retry`` says which faults are worth another try."""
        options: dict[str, Any] = {}
        if sleep is not None:
            options["sleep"] = sleep
        if before_sleep is not None:
            options["before_sleep"] = before_sleep
        return tenacity.Retrying(retry=tenacity.retry_if_exception(retry),
                                 stop=tenacity.stop_after_attempt(self.attempts),
                                 wait=self.wait(retry_after, longest=longest), reraise=True, **options)


#: How long the worker looks again at a busy, locked or throttling destination: 1, 2, 4 ... 300 s.
WAIT = Backoff(attempts=1, initial=1.0, maximum=300.0)


def retry_after_of(exc: BaseException | None) -> float | None:
    """The delay a fault carries (``retry_after``: e.g. from a Retry-After header), if any."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None
