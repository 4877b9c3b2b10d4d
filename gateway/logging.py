"""Structured logs (structlog): JSON for machines or coloured lines for people, secrets never written.

    from gateway.logging import configure_logging, get_logger
    configure_logging(settings)            # once, at the start of a long-running command
    log = get_logger("gateway.worker")
    log.info("split", interchange=12, documents=50)

Every event passes :func:`redact` before it is rendered: values under keys that name a
credential (password, secret, token, api_key, authorization, ...) are masked, however deeply
nested, and a password inside a URL (``scheme://user:pass@host``) is replaced by ``***``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

MASK = "***"

# Key names (lower-case, '-' read as '_') whose values are credentials wherever they appear.
_SECRET_KEY = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api_?key|apikey|authorization|auth_header|credential|"
    r"private_?key|cookie|session_secret|client_secret|refresh_token|access_token|fernet|x_plex_connect_api_key)",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_BEARER = re.compile(r"\b(Bearer|Basic|AnaplanAuthToken)\s+[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE)

# Keys structlog itself fills in: never masked even if a pattern would match them.
_OWN_KEYS = frozenset({"event", "level", "timestamp", "logger", "exc_info", "stack_info"})


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(str(key).replace("-", "_")))


def scrub_text(text: str) -> str:
    """A string with URL passwords and Authorization values replaced by ``***``."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    if " " in text:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return text


def _clean(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else _clean(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clean(v, depth + 1) for v in value) if isinstance(value, list) else tuple(
            _clean(v, depth + 1) for v in value
        )
    # pydantic's SecretStr renders as '**********' already; anything else is left to its repr.
    return value


def redact(_logger: Any, _method: str, event_dict: dict) -> dict:
    """structlog processor: mask credentials by key name and inside strings."""
    for key in list(event_dict):
        if key in _OWN_KEYS:
            if key == "event" and isinstance(event_dict[key], str):
                event_dict[key] = scrub_text(event_dict[key])
            continue
        value = event_dict[key]
        if is_secret_key(key) and value not in (None, ""):
            event_dict[key] = MASK
        else:
            event_dict[key] = _clean(value)
    return event_dict


def _scrub_rendered_exception(_logger: Any, _method: str, event_dict: dict) -> dict:
    # A traceback's text may quote a connection URL with its password: scrub it after formatting.
    if "exception" in event_dict:
        event_dict["exception"] = _clean(event_dict["exception"])
    return event_dict


class _StdlibRedactFilter(logging.Filter):
    """Scrub records from libraries that log through the standard library (uvicorn, httpx, alembic)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not stop logging
            return True
        cleaned = scrub_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


class _StandardError:
    """``sys.stderr`` looked up at every write, so a swapped or closed stream (test runners, CLI
    runners that capture output) never breaks logging; a log line must never crash the gateway."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (ValueError, OSError):
            return 0

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except (ValueError, OSError):
            pass

    def isatty(self) -> bool:
        try:
            return sys.stderr.isatty()
        except (ValueError, OSError):
            return False


def configure_logging(settings: Any = None, *, json: bool | None = None, level: str | None = None,
                      stream=None) -> None:
    """Set up structlog and the standard library's root logger from the settings (``log_json``, ``log_level``)."""
    as_json = bool(getattr(settings, "log_json", False)) if json is None else json
    level_name = (level or getattr(settings, "log_level", None) or "INFO").upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    stream = stream or _StandardError()

    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    # Tracebacks become text (or dicts) before rendering, without local variables (they may hold
    # credentials), and are scrubbed like any other string.
    if as_json:
        tail: list[Any] = [
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            _scrub_rendered_exception,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        tail = [
            structlog.processors.format_exc_info,
            _scrub_rendered_exception,
            structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)(),
                                          exception_formatter=structlog.dev.plain_traceback),
        ]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(stream)
    handler.addFilter(_StdlibRedactFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_gateway", False):
            root.removeHandler(h)
    handler._gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in ("httpx", "httpcore", "paramiko", "zeep", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str = "gateway", **bound: Any):
    return structlog.get_logger(name, **bound)


class StandingConditions:
    """Warnings about a condition that lasts (a partner with no outbound folder, a source that keeps
    failing): logged once when it starts and once when it ends, never on every look in between.

    One per :class:`gateway.runtime.Runtime` (per process); ``key`` names the condition and what it
    is about, e.g. ``"ack.no_outbound_folder:acme"``.
    """

    def __init__(self, logger: Any = None) -> None:
        import threading

        self._log = logger or structlog.get_logger("gateway")
        self._active: dict[str, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def holds(self, key: str, event: str, **fields: Any) -> bool:
        """The condition ``key`` holds now: warn ``event`` if it did not before. True if it just started."""
        with self._lock:
            if key in self._active:
                return False
            self._active[key] = (event, fields)
        self._log.warning(event, **fields)
        return True

    def ended(self, key: str) -> bool:
        """The condition ``key`` no longer holds: say so (``<event>.ended``) if it did. True if it just ended."""
        with self._lock:
            found = self._active.pop(key, None)
        if found is None:
            return False
        event, fields = found
        self._log.info(f"{event}.ended", **fields)
        return True

    def active(self) -> list[str]:
        with self._lock:
            return sorted(self._active)
