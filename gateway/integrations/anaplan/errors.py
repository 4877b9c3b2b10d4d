"""What goes wrong with Anaplan: configuration and credential faults a person must fix, unexpected
answers, and transient faults worth trying again later (``busy``: worth waiting for)."""

from __future__ import annotations

_RETRY_STATUSES = frozenset({409, 423, 429})  # busy, locked, rate-limited: try again later


class AnaplanError(Exception):
    """Base class. ``retryable`` tells the pipeline whether trying the batch later can help."""

    retryable = False


class AnaplanAuthError(AnaplanError):
    """Credentials rejected (bad password, untrusted certificate, refresh token no longer valid)."""


class AnaplanConfigError(AnaplanError):
    """The mapping and the Anaplan import disagree (headers, ids, format); a person must fix it."""


class AnaplanHTTPError(AnaplanError):
    """An unexpected Integration API answer. The text names method, route and status only."""

    def __init__(self, method: str, path: str, status: int, message: str = "") -> None:
        self.method, self.path, self.status = method, path, status
        super().__init__(f"Anaplan {method} {path} -> HTTP {status}" + (f": {message}" if message else ""))
        self.retryable = status in _RETRY_STATUSES or status >= 500


class AnaplanRetryLater(AnaplanError):
    """Transient: budget exhausted, file busy, retries used up. Retry the batch later.

    ``retry_after`` is the wait Anaplan asked for (``Retry-After``), when it said. ``busy``: the
    model was busy (409) or locked (423), the tenant throttling (429) or the request budget spent —
    worth waiting for without counting it as a failed attempt."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None, *, busy: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.busy = busy
