"""Anaplan destination: authentication, CSV batch building and the per-batch import run.

Per batch (``specs/anaplan.md`` §11): take the data-source file's lock, build one CSV whose columns
are exactly the import's ``headerNames``, upload it in chunks, start the import task, poll it, read
the counts, fetch the failure dump and map each rejected row back to the document it came from.

Shared resources are behind small interfaces so the store can provide tenant-wide versions later:

* :class:`RequestBudget` — Anaplan allows ~600 requests/minute per *tenant*, not per process;
* :class:`FileLock` — Anaplan does not lock data-source files; two batches uploading to the same
  file would import each other's rows.

The pipeline calls :meth:`AnaplanImports.run_import` with an :class:`AnaplanBatch` and stores
the returned :class:`ImportOutcome` (one :class:`DocumentResult` per document). Imports are upserts
keyed by the model's list codes/dimensions, so re-running a batch is safe.

Secrets (passwords, private keys, tokens, client secrets, refresh tokens) never reach logs,
``repr()`` or exception texts.
"""

from __future__ import annotations

import base64
import csv
import email.utils
import gzip
import hashlib
import io
import math
import os
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal, Protocol, Union

import httpx
import structlog
import tenacity
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "AnaplanEndpoints", "AnaplanAuth", "BasicAuth", "CertificateAuth", "OAuth2RefreshTokenAuth",
    "RequestBudget", "InMemoryRequestBudget", "FileLock", "InMemoryFileLock", "RetryPolicy",
    "Const", "AnaplanImportConfig", "CsvFormat", "ImportMetadata", "RowMap", "build_csv",
    "neutralise_cell", "AnaplanBatch", "DocumentResult", "ImportCounts", "ImportOutcome",
    "AnaplanClient", "AnaplanImports", "RequestCounter",
    "AnaplanError", "AnaplanAuthError", "AnaplanConfigError", "AnaplanHTTPError", "AnaplanRetryLater",
]

log = structlog.get_logger("gateway.integrations.anaplan.client")

DocumentId = Hashable


# =============================================================================================
# Errors
# =============================================================================================

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


# =============================================================================================
# Endpoints and authentication
# =============================================================================================

@dataclass(frozen=True)
class AnaplanEndpoints:
    """Base URLs of the three Anaplan roles (region-specific; all point at the simulator in tests)."""

    api: str = "https://api.anaplan.com/2/0"
    auth: str = "https://auth.anaplan.com"
    oauth: str = "https://us1a.app.anaplan.com"

    @classmethod
    def single_host(cls, base_url: str) -> AnaplanEndpoints:
        """All roles on one host, routed by path prefix (the simulator)."""
        base = base_url.rstrip("/")
        return cls(api=f"{base}/2/0", auth=base, oauth=base)


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float  # epoch seconds
    renewable: bool = True  # auth-service tokens can be extended via /token/refresh
    expires_in: float | None = None  # relative lifetime (OAuth); the keeper turns it into expires_at


# ``send(method, url, **httpx kwargs)`` — the client's metered transport, handed to auth strategies.
_Send = Callable[..., httpx.Response]


class AnaplanAuth(Protocol):
    """How to obtain a token and how to extend it. Implementations keep their secrets private."""

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token: ...

    def renew(self, send: _Send, endpoints: AnaplanEndpoints, current: _Token) -> _Token: ...


def _parse_auth_service(resp: httpx.Response, what: str) -> _Token:
    if resp.status_code in (400, 401, 403):
        status = _safe_json(resp).get("status", "")
        raise AnaplanAuthError(f"Anaplan {what} rejected (HTTP {resp.status_code} {status})".strip())
    if not resp.is_success:
        raise AnaplanHTTPError("POST", f"/token/{what}", resp.status_code)
    info = _safe_json(resp).get("tokenInfo") or {}
    if not info.get("tokenValue"):
        raise AnaplanHTTPError("POST", f"/token/{what}", resp.status_code, "no tokenInfo in answer")
    return _Token(value=info["tokenValue"], expires_at=float(info.get("expiresAt", 0)) / 1000.0)


class _AuthServiceAuth:
    """Shared by Basic and certificate auth: both extend their token via ``/token/refresh``."""

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token:
        raise NotImplementedError

    def renew(self, send: _Send, endpoints: AnaplanEndpoints, current: _Token) -> _Token:
        resp = send("POST", f"{endpoints.auth}/token/refresh",
                    headers={"Authorization": f"AnaplanAuthToken {current.value}"})
        if resp.status_code == 401:  # already dead: log in again
            return self.obtain(send, endpoints)
        return _parse_auth_service(resp, "refresh")


class BasicAuth(_AuthServiceAuth):
    """User name + password (the user must be an SSO Exception User)."""

    def __init__(self, username: str, password: SecretStr | str) -> None:
        self.username = username
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token:
        raw = f"{self.username}:{self._password.get_secret_value()}".encode()
        resp = send("POST", f"{endpoints.auth}/token/authenticate",
                    headers={"Authorization": "Basic " + base64.b64encode(raw).decode()})
        return _parse_auth_service(resp, "authenticate")

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=**********)"


class CertificateAuth(_AuthServiceAuth):
    """CA-certificate auth (§2.4): certificate PEM in the header, a fresh signed nonce in the body."""

    NONCE_BYTES = 150

    def __init__(self, certificate_pem: bytes | str, private_key_pem: bytes | str | SecretStr,
                 private_key_password: SecretStr | str | None = None) -> None:
        self._cert_pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
        key_pem = (private_key_pem.get_secret_value() if isinstance(private_key_pem, SecretStr)
                   else private_key_pem)
        key_pem_b = key_pem.encode() if isinstance(key_pem, str) else key_pem
        password = (private_key_password.get_secret_value()
                    if isinstance(private_key_password, SecretStr) else private_key_password)
        try:
            key = serialization.load_pem_private_key(key_pem_b, password.encode() if password else None)
        except (ValueError, TypeError):
            raise AnaplanConfigError("Anaplan certificate auth: private key cannot be loaded "
                                     "(wrong format or password)") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise AnaplanConfigError("Anaplan certificate auth needs an RSA private key")
        self._key = key

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token:
        nonce = os.urandom(self.NONCE_BYTES)  # fresh per request; the service refuses replays
        signature = self._key.sign(nonce, padding.PKCS1v15(), hashes.SHA512())
        resp = send("POST", f"{endpoints.auth}/token/authenticate",
                    headers={"Authorization": "CACertificate " + base64.b64encode(self._cert_pem).decode()},
                    json={"encodedData": base64.b64encode(nonce).decode(),
                          "encodedSignedData": base64.b64encode(signature).decode()})
        return _parse_auth_service(resp, "authenticate")

    def __repr__(self) -> str:
        return "CertificateAuth(private_key=**********)"


class OAuth2RefreshTokenAuth:
    """OAuth 2.0 via a refresh token obtained once by an operator (authorization-code or device
    grant). With rotatable refresh tokens every refresh returns a new one and burns the old, so the
    newest is handed to ``on_refresh_token`` for the store to persist — otherwise a restart would
    start from a dead token."""

    def __init__(self, client_id: str, refresh_token: SecretStr | str, *,
                 client_secret: SecretStr | str | None = None,
                 on_refresh_token: Callable[[str], None] | None = None) -> None:
        self.client_id = client_id
        self._refresh = refresh_token if isinstance(refresh_token, SecretStr) else SecretStr(refresh_token)
        self._secret = (client_secret if isinstance(client_secret, SecretStr) or client_secret is None
                        else SecretStr(client_secret))
        self._on_refresh_token = on_refresh_token

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token:
        body = {"grant_type": "refresh_token", "client_id": self.client_id,
                "refresh_token": self._refresh.get_secret_value()}
        if self._secret is not None:
            body["client_secret"] = self._secret.get_secret_value()
        resp = send("POST", f"{endpoints.oauth}/oauth/token", json=body)
        data = _safe_json(resp)
        if resp.status_code in (400, 401):
            raise AnaplanAuthError(
                f"Anaplan OAuth refresh rejected (HTTP {resp.status_code} {data.get('error', '')}); "
                "the OAuth client must be re-authorised")
        if not resp.is_success or not data.get("access_token"):
            raise AnaplanHTTPError("POST", "/oauth/token", resp.status_code)
        new_refresh = data.get("refresh_token")
        if new_refresh and new_refresh != self._refresh.get_secret_value():
            self._refresh = SecretStr(new_refresh)  # adopt first: the old one is already spent
            if self._on_refresh_token is not None:
                try:
                    self._on_refresh_token(new_refresh)
                except Exception as exc:  # keep working; the next rotation persists again
                    log.error("anaplan.refresh_token_persist_failed", error_type=type(exc).__name__)
        return _Token(value=data["access_token"], expires_at=0.0, renewable=False,
                      expires_in=float(data.get("expires_in", 2100)))

    def renew(self, send: _Send, endpoints: AnaplanEndpoints, current: _Token) -> _Token:
        return self.obtain(send, endpoints)

    def __repr__(self) -> str:
        return f"OAuth2RefreshTokenAuth(client_id={self.client_id!r}, refresh_token=**********)"


class _TokenKeeper:
    """One token per process, reused until near expiry (Anaplan warns against token-per-call).

    Refreshes ``refresh_margin_s`` before expiry; a 401 invalidates it and the next caller logs in
    again. Single-flight: concurrent callers wait for one refresh instead of each starting one."""

    def __init__(self, auth: AnaplanAuth, endpoints: AnaplanEndpoints, refresh_margin_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._auth = auth
        self._endpoints = endpoints
        self._margin = refresh_margin_s
        self._clock = clock
        self._token: _Token | None = None
        self._lock = threading.Lock()

    def _adopt(self, tok: _Token) -> _Token:
        if tok.expires_in is not None:
            tok.expires_at, tok.expires_in = self._clock() + tok.expires_in, None
        self._token = tok
        return tok

    def get(self, send: _Send) -> str:
        with self._lock:
            now = self._clock()
            tok = self._token
            # A token this close to expiry may die in flight: treat it as gone, not renewable.
            if tok is None or now >= tok.expires_at - min(5.0, self._margin / 4):
                tok = self._adopt(self._auth.obtain(send, self._endpoints))
                log.info("anaplan.token_obtained", auth=type(self._auth).__name__)
            elif now >= tok.expires_at - self._margin:
                tok = self._adopt(self._auth.renew(send, self._endpoints, tok))
                log.info("anaplan.token_renewed", auth=type(self._auth).__name__)
            return tok.value

    def invalidate(self, stale: str) -> None:
        with self._lock:
            if self._token is not None and self._token.value == stale:
                self._token = None

    def logout(self, send: _Send) -> None:
        with self._lock:
            tok, self._token = self._token, None
        if tok is not None and tok.renewable and tok.expires_at > self._clock():
            send("POST", f"{self._endpoints.auth}/token/logout",
                 headers={"Authorization": f"AnaplanAuthToken {tok.value}"})


# =============================================================================================
# Shared-resource interfaces: request budget and file lock
# =============================================================================================

class RequestBudget(Protocol):
    """Tenant-wide request allowance. ``acquire`` blocks up to ``max_wait`` seconds for ``n``
    requests and returns ``True``, or returns ``False`` at once if they cannot be had in time."""

    def acquire(self, n: int = 1, *, max_wait: float = 30.0) -> bool: ...


class InMemoryRequestBudget:
    """Token bucket for one process (the store provides the tenant-wide one). Keep
    ``per_minute`` below 600 to leave room for the tenant's other integrations and users."""

    def __init__(self, per_minute: float = 500, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else per_minute
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._at = clock()
        self._lock = threading.Lock()

    def acquire(self, n: int = 1, *, max_wait: float = 30.0) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= n:
                self._tokens -= n
                return True
            wait = (n - self._tokens) / self.rate if self.rate > 0 else math.inf
            if wait > max_wait or n > self.capacity:
                return False
            self._tokens -= n  # reserve now (balance goes negative) so waiters queue fairly
        self._sleep(wait)
        return True


class FileLock(Protocol):
    """Mutual exclusion per Anaplan data-source file, held from upload until the dump is read.
    ``hold`` raises :class:`AnaplanRetryLater` if the lock is not free within ``timeout``."""

    def hold(self, key: str, *, timeout: float) -> AbstractContextManager[None]: ...


class InMemoryFileLock:
    """Per-key locks for one process (the store provides a cross-process lease later)."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: str, *, timeout: float) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise AnaplanRetryLater(f"Anaplan file {key} is busy with another batch")
        try:
            yield
        finally:
            lock.release()


# =============================================================================================
# Configuration
# =============================================================================================

class Const(BaseModel):
    """A fixed column value, e.g. ``{"const": "EDI"}``."""

    model_config = ConfigDict(frozen=True)
    const: str


ColumnSource = Union[str, Const]
_PATH_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[\])?\Z")


def _parse_path(path: str) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """``"lines[].quantity"`` -> (("quantity",), ("lines",)); ``"po_number"`` -> (("po_number",), None).

    Returns (path within the row source, array prefix or None)."""
    segments = path.split(".")
    array_at = None
    for i, seg in enumerate(segments):
        if not _PATH_SEGMENT.match(seg):
            raise ValueError(f"bad field path {path!r} (segment {seg!r})")
        if seg.endswith("[]"):
            if array_at is not None:
                raise ValueError(f"field path {path!r} iterates more than one array")
            array_at = i
    if array_at is None:
        return tuple(segments), None
    prefix = tuple(s.removesuffix("[]") for s in segments[:array_at + 1])
    return tuple(segments[array_at + 1:]), prefix


class AnaplanImportConfig(BaseModel):
    """Where a batch goes in Anaplan and how documents become CSV rows.

    ``columns`` maps each of the import's header names to a canonical-document field path
    (``"po_number"``, ``"parties.supplier.name"``, ``"lines[].quantity"``) or a :class:`Const`.
    Paths through ``lines[]`` (or another single array) yield one row per element; otherwise one
    row per document. The CSV column order is the import's ``headerNames``, not this mapping's.
    """

    model_config = ConfigDict(frozen=True)

    workspace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    model_id: str = Field(pattern=r"^[0-9A-F]{32}$")
    import_id: str = Field(pattern=r"^112\d{9}$")
    # Only 113… ids: Anaplan silently creates a new private file for an unknown id (§5.2).
    file_id: str = Field(pattern=r"^113\d{9}$")
    columns: dict[str, ColumnSource]
    # Raw bytes per chunk. Anaplan documents 1–50 MB; smaller values are for tests only.
    chunk_size: int = Field(default=10_000_000, ge=1, le=50_000_000)
    gzip_chunks: bool = True
    locale_name: str = "en_US"
    poll_interval_s: float = Field(default=5.0, gt=0)  # Anaplan: ≥ 5 s in production
    poll_max_interval_s: float = Field(default=60.0, gt=0)
    task_timeout_s: float = Field(default=3600.0, gt=0)

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, columns: dict[str, ColumnSource]) -> dict[str, ColumnSource]:
        if not columns:
            raise ValueError("at least one column must be mapped")
        arrays = set()
        for header, source in columns.items():
            if isinstance(source, str):
                _, prefix = _parse_path(source)
                if prefix is not None:
                    arrays.add(prefix)
        if len(arrays) > 1:
            raise ValueError("columns iterate different arrays: "
                             + ", ".join(".".join(a) + "[]" for a in sorted(arrays)))
        return columns

    @model_validator(mode="after")
    def _check_poll(self) -> AnaplanImportConfig:
        if self.poll_max_interval_s < self.poll_interval_s:
            raise ValueError("poll_max_interval_s must be >= poll_interval_s")
        return self

    @property
    def file_key(self) -> str:
        return f"{self.workspace_id}/{self.model_id}/{self.file_id}"


@dataclass(frozen=True)
class CsvFormat:
    """The import source's text format (from the import metadata, §9)."""

    separator: str = ","
    delimiter: str = '"'
    encoding: str = "UTF-8"
    header_row: int = 1
    first_data_row: int = 2


@dataclass(frozen=True)
class ImportMetadata:
    header_names: tuple[str, ...]
    format: CsvFormat
    data_source_id: str | None
    name: str = ""


# =============================================================================================
# CSV building
# =============================================================================================

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?\Z")


def neutralise_cell(value: str) -> str:
    """Defuse spreadsheet formulas (OWASP CSV injection): a cell starting with ``= + - @`` tab or
    CR gets a leading ``'``. Plain signed numbers (``-12.50``) are left alone because they are data
    (credit quantities, negative amounts) and a quote would make Anaplan reject them as numbers.
    Embedded CR/LF become spaces so one CSV record is one line and dump ``_Line_`` numbers map back."""
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(value):
        value = "'" + value
    if "\r" in value or "\n" in value:
        value = value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return value


@dataclass
class RowMap:
    """Which document each CSV data row came from. ``rows[i]`` is the document id of data row
    ``i`` (0-based; file line ``first_data_row + i``). ``rejected`` holds documents that produced
    no row, with the reason. ``cells[i]`` are the row's cell values as written."""

    rows: list[DocumentId] = field(default_factory=list)
    cells: list[list[str]] = field(default_factory=list)
    rejected: dict[DocumentId, str] = field(default_factory=dict)
    first_data_row: int = 2

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> DocumentId:
        return self.rows[i]

    def document_for_line(self, line: int) -> DocumentId | None:
        i = line - self.first_data_row
        return self.rows[i] if 0 <= i < len(self.rows) else None


def _resolve(obj: Any, path: Sequence[str]) -> Any:
    for seg in path:
        if obj is None:
            return None
        if isinstance(obj, Mapping):
            obj = obj.get(seg)
        else:
            obj = getattr(obj, seg, None)
    return obj


def _format_value(value: Any, header: str, source: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (Decimal, float)):
        return format(Decimal(str(value)), "f")  # never exponent notation
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise AnaplanConfigError(f"column {header!r}: {source!r} is a {type(value).__name__}, not a value")


def _canonical(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """Documents are ``{"id": …, **canonical}`` or ``{"id": …, "document": canonical}``."""
    inner = document.get("document")
    return inner if isinstance(inner, Mapping) else document


def _check_headers(config: AnaplanImportConfig, header_names: Sequence[str]) -> None:
    mapped, expected = list(config.columns), list(header_names)
    if len(set(expected)) != len(expected):
        raise AnaplanConfigError(f"import {config.import_id} has duplicate header names: {expected}")
    missing = [h for h in expected if h not in config.columns]
    unknown = [h for h in mapped if h not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append("not mapped: " + ", ".join(repr(h) for h in missing))
        if unknown:
            parts.append("not in the import's headerNames: " + ", ".join(repr(h) for h in unknown))
        raise AnaplanConfigError(f"column mapping does not match import {config.import_id} "
                                 f"({'; '.join(parts)}); expected headers {expected}")


def _build_rows(documents: Sequence[Mapping[str, Any]], config: AnaplanImportConfig,
                header_names: Sequence[str], fmt: CsvFormat) -> RowMap:
    _check_headers(config, header_names)
    plan: list[tuple[str, Const | tuple[tuple[str, ...], tuple[str, ...] | None], str]] = []
    array_prefix: tuple[str, ...] | None = None
    for header in header_names:
        source = config.columns[header]
        if isinstance(source, Const):
            plan.append((header, source, "const"))
        else:
            rel, prefix = _parse_path(source)
            array_prefix = array_prefix or prefix
            plan.append((header, (rel, prefix), source))
    row_map = RowMap(first_data_row=fmt.first_data_row)
    seen: set[DocumentId] = set()
    for document in documents:
        if "id" not in document:
            raise ValueError("every document needs an 'id'")
        doc_id = document["id"]
        if doc_id in seen:
            raise ValueError(f"document id {doc_id!r} appears twice in the batch")
        seen.add(doc_id)
        canonical = _canonical(document)
        if array_prefix is not None:
            elements = _resolve(canonical, array_prefix)
            if not isinstance(elements, Sequence) or isinstance(elements, str) or not elements:
                row_map.rejected[doc_id] = f"document has no {'.'.join(array_prefix)} to import"
                continue
        else:
            elements = [None]
        doc_rows = []
        for element in elements:
            cells = []
            for header, source, text in plan:
                if isinstance(source, Const):
                    raw: Any = source.const
                else:
                    rel, prefix = source
                    raw = _resolve(element, rel) if prefix is not None else _resolve(canonical, rel)
                cells.append(neutralise_cell(_format_value(raw, header, text)))
            doc_rows.append(cells)
        problem = _row_problem(doc_rows, fmt)
        if problem:
            row_map.rejected[doc_id] = problem
            continue
        for cells in doc_rows:
            row_map.rows.append(doc_id)
            row_map.cells.append(cells)
    return row_map


def _row_problem(rows: list[list[str]], fmt: CsvFormat) -> str | None:
    """A document whose text cannot be written faithfully is rejected, not silently mangled."""
    for cells in rows:
        for cell in cells:
            try:
                cell.encode(fmt.encoding)
            except UnicodeEncodeError:
                return f"value {cell!r} cannot be encoded as {fmt.encoding}"
            if not fmt.delimiter and fmt.separator and fmt.separator in cell:
                return f"value {cell!r} contains the separator and the file has no text delimiter"
    return None


def _writer(buf: io.StringIO, fmt: CsvFormat) -> Any:
    if fmt.delimiter:
        return csv.writer(buf, delimiter=fmt.separator or ",", quotechar=fmt.delimiter,
                          quoting=csv.QUOTE_ALL, doublequote=True, lineterminator="\r\n")
    return csv.writer(buf, delimiter=fmt.separator or ",", quoting=csv.QUOTE_NONE,
                      quotechar=None, escapechar=None, lineterminator="\r\n")


def _serialise(header_names: Sequence[str], row_map: RowMap, fmt: CsvFormat) -> bytes:
    buf = io.StringIO()
    writer = _writer(buf, fmt)
    line = 1
    if fmt.header_row >= 1:
        buf.write("\r\n" * (fmt.header_row - 1))
        writer.writerow(list(header_names))
        line = fmt.header_row + 1
    buf.write("\r\n" * max(0, fmt.first_data_row - line))
    writer.writerows(row_map.cells)
    return buf.getvalue().encode(fmt.encoding)


def build_csv(documents: Sequence[Mapping[str, Any]], config: AnaplanImportConfig,
              header_names: Sequence[str], fmt: CsvFormat | None = None) -> tuple[bytes, RowMap]:
    """One CSV for the batch: columns exactly ``header_names`` in order, one row per document line
    (or per document when no line field is mapped), cells neutralised. Raises
    :class:`AnaplanConfigError` when the mapping does not cover exactly ``header_names``."""
    fmt = fmt or CsvFormat()
    row_map = _build_rows(documents, config, header_names, fmt)
    return _serialise(header_names, row_map, fmt), row_map


# =============================================================================================
# Batch and outcome
# =============================================================================================

class AnaplanBatch(BaseModel):
    """What the pipeline hands over: documents (``{"id": …, **canonical}``) bound for one import."""

    batch_id: str
    config: AnaplanImportConfig
    documents: list[dict[str, Any]]


class DocumentResult(BaseModel):
    document_id: Any
    ok: bool
    reason: str | None = None
    rows: list[int] = Field(default_factory=list)  # 1-based CSV data rows of this document


class ImportCounts(BaseModel):
    total: int = 0
    successful: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    ignored: int = 0
    details: list[dict[str, Any]] = Field(default_factory=list)  # raw result details


class ImportOutcome(BaseModel):
    """``status``: ``succeeded`` (all documents in), ``partial`` (some rows rejected), ``failed``
    (nothing usable; needs a person), ``retry`` (transient; run the batch again later)."""

    batch_id: str
    status: Literal["succeeded", "partial", "failed", "retry"]
    documents: list[DocumentResult]
    task_id: str | None = None
    counts: ImportCounts | None = None
    reason: str | None = None
    retryable: bool = False
    requests_used: int = 0
    failure_dump: bytes | None = Field(default=None, repr=False)

    def result_for(self, document_id: Any) -> DocumentResult:
        for result in self.documents:
            if result.document_id == document_id:
                return result
        raise KeyError(document_id)


# =============================================================================================
# HTTP client
# =============================================================================================

_RETRY_STATUSES = frozenset({409, 423, 429})  # busy, locked, rate-limited: try again later
_RETRY_5XX = frozenset({500, 502, 503, 504})


class _Transient(Exception):
    def __init__(self, description: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(description)
        self.retry_after = retry_after
        self.busy = status in _RETRY_STATUSES


@dataclass
class RetryPolicy:
    """Backoff for 429 / 409 busy / 423 locked / 5xx / network errors (Retry-After honoured)."""

    attempts: int = 8
    initial_s: float = 3.0
    multiplier: float = 1.5
    max_s: float = 120.0
    jitter_s: float = 1.0


class RequestCounter:
    """HTTP requests made on behalf of one batch (reported in the outcome; DESIGN budgets
    ≤ 0.01 Anaplan requests per document)."""

    def __init__(self) -> None:
        self.requests = 0


def _safe_json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _api_message(resp: httpx.Response) -> str:
    status = _safe_json(resp).get("status")
    if isinstance(status, dict):
        return str(status.get("message", ""))[:200]
    return ""


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class AnaplanClient:
    """Integration API calls with a kept token, the request budget and retries.

    Thread-safe: one instance serves every batch of a process."""

    def __init__(self, auth: AnaplanAuth, *, endpoints: AnaplanEndpoints | None = None,
                 budget: RequestBudget | None = None, budget_max_wait_s: float = 60.0,
                 retry: RetryPolicy | None = None, refresh_margin_s: float = 300.0,
                 timeout_s: float = 120.0, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.endpoints = endpoints or AnaplanEndpoints()
        self.budget = budget or InMemoryRequestBudget()
        self.budget_max_wait_s = budget_max_wait_s
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))
        self._owns_http = http is None
        self._tokens = _TokenKeeper(auth, self.endpoints, refresh_margin_s, clock)

    # ---------------------------------------------------------------- transport

    def _send_raw(self, usage: RequestCounter, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One metered HTTP attempt: budget first, then the wire."""
        if not self.budget.acquire(1, max_wait=self.budget_max_wait_s):
            raise AnaplanRetryLater("Anaplan tenant request budget exhausted", busy=True)
        usage.requests += 1
        return self._http.request(method, url, **kwargs)

    def _with_retries(self, usage: RequestCounter, method: str, url: str, route: str, *,
                      idempotent: bool, **kwargs: Any) -> httpx.Response:
        def attempt() -> httpx.Response:
            try:
                resp = self._send_raw(usage, method, url, **kwargs)
            except httpx.TransportError as exc:
                if idempotent:
                    raise _Transient(f"{type(exc).__name__} on {method} {route}") from None
                raise AnaplanRetryLater(f"Anaplan {method} {route}: {type(exc).__name__}; "
                                        "outcome unknown") from None
            if resp.status_code in _RETRY_STATUSES or (idempotent and resp.status_code in _RETRY_5XX):
                log.warning("anaplan.retry", method=method, route=route, status=resp.status_code)
                raise _Transient(f"HTTP {resp.status_code} on {method} {route}", _retry_after(resp), resp.status_code)
            return resp

        policy = self.retry
        exp = tenacity.wait_exponential(multiplier=policy.initial_s, exp_base=policy.multiplier,
                                        max=policy.max_s)
        jitter = tenacity.wait_random(0, policy.jitter_s)

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                return min(exc.retry_after, policy.max_s)
            return min(exp(state) + jitter(state), policy.max_s)

        try:
            for att in tenacity.Retrying(retry=tenacity.retry_if_exception_type(_Transient),
                                         wait=wait, stop=tenacity.stop_after_attempt(policy.attempts),
                                         sleep=self._sleep, reraise=True):
                with att:
                    return attempt()
        except _Transient as exc:
            raise AnaplanRetryLater(f"Anaplan kept refusing: {exc} "
                                    f"({policy.attempts} attempts)", exc.retry_after, busy=exc.busy) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _auth_send(self, usage: RequestCounter) -> _Send:
        def send(method: str, url: str, **kwargs: Any) -> httpx.Response:
            route = url.removeprefix(self.endpoints.auth).removeprefix(self.endpoints.oauth)
            return self._with_retries(usage, method, url, route, idempotent=True, **kwargs)
        return send

    def request(self, usage: RequestCounter, method: str, path: str, *, idempotent: bool = True,
                expect: Sequence[int] = (200,), headers: Mapping[str, str] | None = None,
                **kwargs: Any) -> httpx.Response:
        """Integration API call (``path`` below ``/2/0``) with token, budget, retries and one
        re-authentication on 401. Answers outside ``expect`` raise :class:`AnaplanHTTPError`."""
        url = self.endpoints.api + path
        for replay in (False, True):
            token = self._tokens.get(self._auth_send(usage))
            hdrs = {"Authorization": f"AnaplanAuthToken {token}", **(headers or {})}
            resp = self._with_retries(usage, method, url, path, idempotent=idempotent,
                                      headers=hdrs, **kwargs)
            if resp.status_code == 401 and not replay:
                log.info("anaplan.token_rejected", route=path)
                self._tokens.invalidate(token)
                continue
            if resp.status_code == 401:
                raise AnaplanAuthError(f"Anaplan {method} {path}: token rejected after re-authentication")
            if resp.status_code not in expect:
                raise AnaplanHTTPError(method, path, resp.status_code, _api_message(resp))
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self, *, logout: bool = True) -> None:
        """Log the token out (Anaplan's advice) and release connections."""
        if logout:
            try:
                self._tokens.logout(self._auth_send(RequestCounter()))
            except (AnaplanError, httpx.HTTPError) as exc:
                log.warning("anaplan.logout_failed", error_type=type(exc).__name__)
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> AnaplanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- operations

    @staticmethod
    def _model_path(cfg: AnaplanImportConfig) -> str:
        return f"/workspaces/{cfg.workspace_id}/models/{cfg.model_id}"

    def import_metadata(self, cfg: AnaplanImportConfig, usage: RequestCounter | None = None) -> ImportMetadata:
        """D7 + D6: expected headers, text format and the data-source file the import reads."""
        usage = usage or RequestCounter()
        base = self._model_path(cfg)
        meta = _safe_json(self.request(usage, "GET", f"{base}/imports/{cfg.import_id}"))
        source = (meta.get("importMetadata") or {}).get("source") or {}
        headers = source.get("headerNames")
        if not isinstance(headers, list) or not headers:
            raise AnaplanConfigError(f"import {cfg.import_id} exposes no headerNames "
                                     "(is it a file import?)")
        decimal = source.get("decimalSeparator") or "."
        if decimal != ".":
            raise AnaplanConfigError(f"import {cfg.import_id} expects decimal separator "
                                     f"{decimal!r}; canonical decimals use '.'")
        fmt = CsvFormat(separator=source.get("columnSeparator") or ",",
                        delimiter=source.get("textDelimiter") or "",
                        encoding=source.get("textEncoding") or "UTF-8",
                        header_row=int(source.get("headerRow", 1)),
                        first_data_row=int(source.get("firstDataRow", 2)))
        listing = _safe_json(self.request(usage, "GET", f"{base}/imports", params={"limit": 5000}))
        data_source = next((i.get("importDataSourceId") for i in listing.get("imports", [])
                            if i.get("id") == cfg.import_id), None)
        return ImportMetadata(header_names=tuple(headers), format=fmt, data_source_id=data_source,
                              name=str((meta.get("importMetadata") or {}).get("name", "")))

    def upload(self, cfg: AnaplanImportConfig, data: bytes, usage: RequestCounter) -> int:
        """§5.3: set the chunk count, PUT every chunk (gzip), completion is implicit. Returns n."""
        base = f"{self._model_path(cfg)}/files/{cfg.file_id}"
        n = max(1, math.ceil(len(data) / cfg.chunk_size))
        resp = self.request(usage, "POST", base, json={"chunkCount": n})
        got = (_safe_json(resp).get("file") or {}).get("id")
        if got != cfg.file_id:
            # Anaplan made a new private file instead of using ours: the import would not see it.
            raise AnaplanConfigError(f"Anaplan file {cfg.file_id} not found in model {cfg.model_id} "
                                     f"(Anaplan created file {got} instead)")
        for k in range(n):
            chunk = data[k * cfg.chunk_size:(k + 1) * cfg.chunk_size]
            if cfg.gzip_chunks:
                body, ctype = gzip.compress(chunk, mtime=0), "application/x-gzip"
            else:
                body, ctype = chunk, "application/octet-stream"
            self.request(usage, "PUT", f"{base}/chunks/{k}", expect=(204, 200), content=body,
                         headers={"Content-Type": ctype})
        return n

    def start_import(self, cfg: AnaplanImportConfig, usage: RequestCounter) -> str:
        # Not idempotent: a 5xx/timeout may still have queued a task, so those are not replayed.
        resp = self.request(usage, "POST", f"{self._model_path(cfg)}/imports/{cfg.import_id}/tasks",
                            idempotent=False, json={"localeName": cfg.locale_name})
        data = _safe_json(resp)
        task_id = (data.get("task") or {}).get("taskId") or data.get("taskId")
        if not task_id:
            raise AnaplanHTTPError("POST", "/imports/…/tasks", resp.status_code, "no taskId in answer")
        return str(task_id)

    def get_task(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> dict[str, Any]:
        resp = self.request(usage, "GET",
                            f"{self._model_path(cfg)}/imports/{cfg.import_id}/tasks/{task_id}")
        return _safe_json(resp).get("task") or {}

    def cancel_task(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> None:
        self.request(usage, "DELETE",
                     f"{self._model_path(cfg)}/imports/{cfg.import_id}/tasks/{task_id}")

    def failure_dump(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> bytes | None:
        """§6.2: list dump chunks, fetch each. ``None`` when the dump is gone (404/204)."""
        base = f"{self._model_path(cfg)}/imports/{cfg.import_id}/tasks/{task_id}/dump"
        resp = self.request(usage, "GET", f"{base}/chunks", expect=(200, 204, 404))
        if resp.status_code != 200:
            return None
        chunks = _safe_json(resp).get("chunks") or []
        if not chunks:
            return None
        parts = []
        for chunk in chunks:
            part = self.request(usage, "GET", f"{base}/chunks/{chunk['id']}", expect=(200, 404))
            if part.status_code == 404:
                return None
            parts.append(part.content)
        return b"".join(parts)


# =============================================================================================
# The destination: one batch at a time per file
# =============================================================================================

_RETRYABLE_TASK_FAILURES = frozenset({"uploadedFileNoLongerAvailable", "internalError"})
_HEADER_TASK_FAILURES = frozenset({"missingFields"})


def _pairs(values: Sequence[Any]) -> dict[str, str]:
    return {str(values[i]): str(values[i + 1]) for i in range(0, len(values) - 1, 2)}


def _counts(result: Mapping[str, Any]) -> ImportCounts:
    counts = ImportCounts(details=list(result.get("details") or []))
    for detail in counts.details:
        values = _pairs(detail.get("values") or [])

        def num(*keys: str) -> int:
            for key in keys:
                if key in values and values[key].lstrip("-").isdigit():
                    return int(values[key])
            return 0

        counts.total += num("totalRowCount")
        counts.successful += num("successRowCount")
        counts.created += num("createdCount", "successCreateCount")
        counts.updated += num("updatedCount", "successUpdateCount")
        counts.failed += num("failedCount")
        counts.ignored += num("ignoredCount")
    return counts


def _describe_details(result: Mapping[str, Any]) -> str:
    parts = []
    for detail in result.get("details") or []:
        text = detail.get("localMessageText") or ""
        parts.append(f"{detail.get('type', 'unknown')}: {text}".strip().rstrip(":"))
    return "; ".join(parts) or "import failed without details"


@dataclass
class _DumpRow:
    line: int | None
    cells: list[str]
    errors: list[str]


def _parse_dump(dump: bytes, fmt: CsvFormat) -> list[_DumpRow]:
    text = dump.decode(fmt.encoding, errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt.separator or ",", quotechar='"')
    records = [r for r in reader if r]
    if not records:
        return []
    header = records[0]
    line_col = header.index("_Line_") if "_Line_" in header else None
    error_cols = [i for i, h in enumerate(header) if re.fullmatch(r"_+Error_+\d+_*", h)]
    n_source = line_col if line_col is not None else (min(error_cols) if error_cols else len(header))
    rows = []
    for rec in records[1:]:
        line = None
        if line_col is not None and line_col < len(rec) and rec[line_col].strip().isdigit():
            line = int(rec[line_col])
        errors = [rec[i] for i in error_cols if i < len(rec) and rec[i].strip()]
        rows.append(_DumpRow(line=line, cells=rec[:n_source], errors=errors))
    return rows


@dataclass
class Submission:
    """A batch handed to Anaplan: the task started and which document each CSV row came from."""

    task_id: str | None
    row_map: RowMap
    format: CsvFormat
    chunks: int
    size: int
    sha256: str


class AnaplanImports:
    """Runs batches into Anaplan imports. One instance per process; thread-safe."""

    def __init__(self, client: AnaplanClient, *, file_lock: FileLock | None = None,
                 lock_timeout_s: float = 900.0, metadata_ttl_s: float = 600.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.file_lock = file_lock or InMemoryFileLock()
        self.lock_timeout_s = lock_timeout_s
        self.metadata_ttl_s = metadata_ttl_s
        self._sleep = sleep
        self._meta: dict[tuple[str, str, str], tuple[float, ImportMetadata]] = {}
        self._meta_lock = threading.Lock()

    def metadata(self, cfg: AnaplanImportConfig, usage: RequestCounter | None = None) -> ImportMetadata:
        """Import metadata, cached for ``metadata_ttl_s`` (headers change only when a model
        builder edits the import; a header failure drops the cache at once)."""
        key = (cfg.workspace_id, cfg.model_id, cfg.import_id)
        with self._meta_lock:
            cached = self._meta.get(key)
        if cached and time.monotonic() - cached[0] < self.metadata_ttl_s:
            return cached[1]
        meta = self.client.import_metadata(cfg, usage)
        if meta.data_source_id is not None and meta.data_source_id != cfg.file_id:
            raise AnaplanConfigError(f"import {cfg.import_id} reads file {meta.data_source_id}, "
                                     f"not the configured file {cfg.file_id}")
        with self._meta_lock:
            self._meta[key] = (time.monotonic(), meta)
        return meta

    def forget_metadata(self, cfg: AnaplanImportConfig) -> None:
        with self._meta_lock:
            self._meta.pop((cfg.workspace_id, cfg.model_id, cfg.import_id), None)

    # ---------------------------------------------------------------- the batch

    def run_import(self, batch: AnaplanBatch) -> ImportOutcome:
        """Upload, import, poll, read counts and dump; map rejected rows to documents.

        Never raises for Anaplan-side conditions: they come back as an outcome whose ``status``
        and per-document results the pipeline records."""
        usage = RequestCounter()
        cfg = batch.config
        bound = log.bind(batch_id=batch.batch_id, import_id=cfg.import_id, file_id=cfg.file_id)
        if not batch.documents:
            return ImportOutcome(batch_id=batch.batch_id, status="succeeded", documents=[])
        try:
            with self.file_lock.hold(cfg.file_key, timeout=self.lock_timeout_s):
                outcome = self._run_locked(batch, usage, bound)
        except AnaplanConfigError as exc:
            outcome = self._whole_batch(batch, "failed", str(exc), retryable=False)
        except AnaplanAuthError as exc:
            outcome = self._whole_batch(batch, "failed", str(exc), retryable=False)
        except AnaplanRetryLater as exc:
            outcome = self._whole_batch(batch, "retry", str(exc), retryable=True)
        except AnaplanHTTPError as exc:
            outcome = self._whole_batch(batch, "retry" if exc.retryable else "failed", str(exc),
                                        retryable=exc.retryable)
        except httpx.HTTPError as exc:
            outcome = self._whole_batch(batch, "retry", f"Anaplan unreachable: {type(exc).__name__}",
                                        retryable=True)
        outcome.requests_used = usage.requests
        bound.info("anaplan.batch_done", status=outcome.status, task_id=outcome.task_id,
                   requests=usage.requests, documents=len(batch.documents),
                   failed=sum(1 for d in outcome.documents if not d.ok))
        return outcome

    def _run_locked(self, batch: AnaplanBatch, usage: RequestCounter, bound: Any) -> ImportOutcome:
        submission = self.submit(batch, usage)
        if submission.task_id is None:
            return self._finish(batch, submission.row_map, submission.format, None, None, {},
                                status_hint="failed")
        bound.info("anaplan.import_started", task_id=submission.task_id, rows=len(submission.row_map),
                   chunks=submission.chunks, bytes=submission.size)
        try:
            task = self._poll(batch.config, submission.task_id, usage)
        except AnaplanRetryLater as exc:
            out = self._whole_batch(batch, "retry", str(exc), retryable=True, row_map=submission.row_map)
            out.task_id = submission.task_id
            return out
        return self.conclude(batch, submission.row_map, submission.format, submission.task_id, task, usage)

    # ---------------------------------------------------------------- the batch in steps
    # The pipeline drives a batch across several stage runs instead of blocking in run_import:
    # submit (upload + start the task), check (one poll), conclude (counts, dump, per document).

    def rows(self, batch: AnaplanBatch, usage: RequestCounter | None = None) -> tuple[bytes, RowMap, CsvFormat]:
        """The batch's CSV and row map, exactly as :meth:`submit` uploads it (deterministic)."""
        meta = self.metadata(batch.config, usage)
        data, row_map = build_csv(batch.documents, batch.config, meta.header_names, meta.format)
        return data, row_map, meta.format

    def submit(self, batch: AnaplanBatch, usage: RequestCounter) -> Submission:
        """Build the CSV, upload it in chunks and start the import task (no waiting).

        ``task_id`` is None when no document produced a row (nothing was uploaded). Raises the
        ``Anaplan*`` errors; the caller must hold the file's lock until :meth:`conclude`."""
        cfg = batch.config
        data, row_map, fmt = self.rows(batch, usage)
        digest = hashlib.sha256(data).hexdigest()
        if not row_map.rows:
            return Submission(None, row_map, fmt, 0, len(data), digest)
        chunks = self.client.upload(cfg, data, usage)
        task_id = self.client.start_import(cfg, usage)
        return Submission(task_id, row_map, fmt, chunks, len(data), digest)

    def check(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> dict[str, Any] | None:
        """One poll: the task when it is terminal (COMPLETE or CANCELLED), else None."""
        task = self.client.get_task(cfg, task_id, usage)
        return task if task.get("taskState") in ("COMPLETE", "CANCELLED") else None

    @staticmethod
    def clean_counts(task: Mapping[str, Any]) -> ImportCounts | None:
        """A terminal task's counts when every row went in (complete, successful, no row failed, no
        failure dump); None when the rows must be traced (:meth:`conclude`)."""
        result = task.get("result") or {}
        if task.get("taskState") != "COMPLETE" or not result.get("successful", False) \
                or result.get("failureDumpAvailable"):
            return None
        counts = _counts(result)
        return counts if counts.failed == 0 else None

    def conclude(self, batch: AnaplanBatch, row_map: RowMap, fmt: CsvFormat, task_id: str,
                 task: Mapping[str, Any], usage: RequestCounter) -> ImportOutcome:
        """Read a terminal task: counts, failure dump (fetched now: the next run replaces it), and
        the result of every document."""
        cfg = batch.config
        state = task.get("taskState")
        result = task.get("result") or {}
        if state == "CANCELLED":
            out = self._whole_batch(batch, "retry", f"Anaplan import task {task_id} was cancelled",
                                    retryable=True, row_map=row_map)
            out.task_id = task_id
            return out
        if not result.get("successful", False):
            codes = {d.get("type") for d in result.get("details") or []}
            if codes & _HEADER_TASK_FAILURES:
                self.forget_metadata(cfg)  # the import changed under us: re-read it next time
            reason = f"Anaplan import failed: {_describe_details(result)}"
            out = self._whole_batch(batch, "failed", reason,
                                    retryable=bool(codes & _RETRYABLE_TASK_FAILURES), row_map=row_map)
            if out.retryable:
                out.status = "retry"
            out.task_id, out.counts = task_id, _counts(result)
            return out
        dump = None
        if result.get("failureDumpAvailable"):
            dump = self.client.failure_dump(cfg, task_id, usage)
        return self._finish(batch, row_map, fmt, task_id, dump, result)

    def _poll(self, cfg: AnaplanImportConfig, task_id: str, usage: RequestCounter) -> dict[str, Any]:
        """Poll until COMPLETE or CANCELLED (both terminal, §6.3), backing off to the max interval;
        on timeout cancel the task so it does not run against a file we no longer guard."""
        interval = cfg.poll_interval_s
        deadline = time.monotonic() + cfg.task_timeout_s
        while True:
            self._sleep(interval)
            task = self.client.get_task(cfg, task_id, usage)
            if task.get("taskState") in ("COMPLETE", "CANCELLED"):
                return task
            if time.monotonic() >= deadline:
                try:
                    self.client.cancel_task(cfg, task_id, usage)
                except AnaplanError as exc:
                    log.warning("anaplan.cancel_failed", task_id=task_id, error=str(exc))
                raise AnaplanRetryLater(f"Anaplan import task {task_id} did not finish within "
                                        f"{cfg.task_timeout_s:.0f} s (cancelled)")
            interval = min(interval * 2, cfg.poll_max_interval_s)

    # ---------------------------------------------------------------- outcome assembly

    @staticmethod
    def _whole_batch(batch: AnaplanBatch, status: Literal["failed", "retry"], reason: str, *,
                     retryable: bool, row_map: RowMap | None = None) -> ImportOutcome:
        rejected = row_map.rejected if row_map is not None else {}
        docs = [DocumentResult(document_id=d.get("id"), ok=False,
                               reason=rejected.get(d.get("id"), reason)) for d in batch.documents]
        return ImportOutcome(batch_id=batch.batch_id, status=status, documents=docs, reason=reason,
                             retryable=retryable)

    def _finish(self, batch: AnaplanBatch, row_map: RowMap, fmt: CsvFormat, task_id: str | None,
                dump: bytes | None, result: Mapping[str, Any],
                status_hint: str | None = None) -> ImportOutcome:
        counts = _counts(result) if result else None
        rows_of: dict[Any, list[int]] = {}
        for i, doc_id in enumerate(row_map.rows):
            rows_of.setdefault(doc_id, []).append(i + 1)
        failures: dict[Any, list[str]] = {}
        unattributed = 0
        if dump is not None:
            claimed: set[int] = set()
            for row in _parse_dump(dump, fmt):
                idx = self._match_row(row, row_map, claimed)
                if idx is None:
                    unattributed += 1
                    continue
                claimed.add(idx)
                reason = "; ".join(row.errors) or "rejected by Anaplan (no reason given)"
                failures.setdefault(row_map.rows[idx], []).append(f"row {idx + 1}: {reason}")
        expected_failed = counts.failed if counts else 0
        attributed = sum(len(v) for v in failures.values())
        blanket = None
        if expected_failed > attributed:
            # Without the dump we cannot tell which rows failed: flag every document for review
            # (re-running is safe — imports are upserts).
            blanket = (f"Anaplan rejected {expected_failed} row(s) but only {attributed} could be "
                       f"traced to documents (failure dump {'unreadable' if dump else 'unavailable'})")
        results = []
        for document in batch.documents:
            doc_id = document.get("id")
            if doc_id in row_map.rejected:
                results.append(DocumentResult(document_id=doc_id, ok=False, reason=row_map.rejected[doc_id]))
            elif doc_id in failures:
                results.append(DocumentResult(document_id=doc_id, ok=False,
                                              reason="Anaplan rejected " + "; ".join(failures[doc_id]),
                                              rows=rows_of.get(doc_id, [])))
            elif blanket:
                results.append(DocumentResult(document_id=doc_id, ok=False, reason=blanket,
                                              rows=rows_of.get(doc_id, [])))
            else:
                results.append(DocumentResult(document_id=doc_id, ok=True, rows=rows_of.get(doc_id, [])))
        n_bad = sum(1 for r in results if not r.ok)
        if status_hint == "failed" or n_bad == len(results):
            status: Literal["succeeded", "partial", "failed", "retry"] = "failed"
        elif n_bad:
            status = "partial"
        else:
            status = "succeeded"
        return ImportOutcome(batch_id=batch.batch_id, status=status, documents=results,
                             task_id=task_id, counts=counts, failure_dump=dump, reason=blanket,
                             retryable=False)

    @staticmethod
    def _match_row(row: _DumpRow, row_map: RowMap, claimed: set[int]) -> int | None:
        """Trust ``_Line_`` when the cells agree; otherwise find the row by its content."""
        if row.line is not None:
            idx = row.line - row_map.first_data_row
            if 0 <= idx < len(row_map.cells) and idx not in claimed and row_map.cells[idx] == row.cells:
                return idx
        for idx, cells in enumerate(row_map.cells):
            if idx not in claimed and cells == row.cells:
                return idx
        return None


# =============================================================================================
# Settings (the ``[anaplan]`` table of the gateway's configuration)
# =============================================================================================

class AnaplanBatching(BaseModel):
    """When documents ready for Anaplan go: a batch is sent when it holds ``max_documents`` or its
    oldest document has waited ``max_age_seconds`` (≤ 0.01 requests per document needs big batches)."""

    model_config = ConfigDict(extra="forbid")

    max_documents: int = Field(2000, ge=1)
    max_age_seconds: float = Field(30.0, ge=0)
    min_age_seconds: float = Field(1.0, ge=0, description=(
        "a batch this old goes early when no document of its kind is on its way (matching, posting)"))
    send_timeout_seconds: float = Field(300.0, gt=0, description=(
        "no longer used: a batch whose sender died is sent again when the worker's lease expires"))
    retry_seconds: float = Field(30.0, gt=0, description="wait after a transient fault when Anaplan gave no Retry-After")


class AnaplanSettings(BaseModel):
    """Anaplan tenant, credentials, the imports documents go to, batching and request budget.

    ``url`` points all three roles (API, auth, OAuth) at one host (the simulator); otherwise the
    regional ``api_url`` / ``auth_url`` / ``oauth_url``. ``imports`` is keyed by document kind
    (``purchase_order``, ``invoice``); a kind without an import is not sent to Anaplan."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    api_url: str = "https://api.anaplan.com/2/0"
    auth_url: str = "https://auth.anaplan.com"
    oauth_url: str = "https://us1a.app.anaplan.com"
    auth: Literal["basic", "certificate", "oauth"] = "basic"
    username: str | None = None
    password: SecretStr | None = None
    certificate_file: str | None = None
    private_key: SecretStr | None = None  # PEM text (use a secret: reference)
    private_key_password: SecretStr | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    refresh_token: SecretStr | None = None
    refresh_token_secret: str | None = Field(
        None, description="vault secret that keeps the newest rotatable refresh token across restarts")
    imports: dict[Literal["purchase_order", "invoice"], AnaplanImportConfig] = Field(default_factory=dict)
    batch: AnaplanBatching = Field(default_factory=AnaplanBatching)
    requests_per_minute: int = Field(500, ge=1, description="the tenant allows 600/min for everyone")
    timeout_seconds: float = Field(120.0, gt=0)
    retry_attempts: int = Field(3, ge=1, description="in-call tries of a 429/409/423/5xx before the batch waits")
    retry_max_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _credentials(self) -> AnaplanSettings:
        if self.auth == "basic" and not (self.username and self.password):
            raise ValueError("basic auth needs username and password")
        if self.auth == "certificate" and not (self.certificate_file and self.private_key):
            raise ValueError("certificate auth needs certificate_file and private_key")
        if self.auth == "oauth" and not (self.oauth_client_id and self.refresh_token):
            raise ValueError("oauth needs oauth_client_id and refresh_token")
        return self

    def endpoints(self) -> AnaplanEndpoints:
        if self.url:
            return AnaplanEndpoints.single_host(self.url)
        return AnaplanEndpoints(api=self.api_url.rstrip("/"), auth=self.auth_url.rstrip("/"),
                                oauth=self.oauth_url.rstrip("/"))

    def make_auth(self, *, on_refresh_token: Callable[[str], None] | None = None,
                  refresh_token: str | None = None) -> AnaplanAuth:
        if self.auth == "basic":
            assert self.username and self.password
            return BasicAuth(self.username, self.password)
        if self.auth == "certificate":
            assert self.certificate_file and self.private_key
            with open(self.certificate_file, "rb") as fh:
                cert = fh.read()
            return CertificateAuth(cert, self.private_key, self.private_key_password)
        assert self.oauth_client_id and self.refresh_token
        return OAuth2RefreshTokenAuth(self.oauth_client_id, refresh_token or self.refresh_token,
                                      client_secret=self.oauth_client_secret,
                                      on_refresh_token=on_refresh_token)

    def make_imports(self, *, budget: RequestBudget | None = None,
                     on_refresh_token: Callable[[str], None] | None = None,
                     refresh_token: str | None = None) -> AnaplanImports:
        """An import runner whose client keeps one token and waits for no more than a few seconds in a
        call: longer waits (429, model busy or locked) go back to the worker as a wait."""
        retry = RetryPolicy(attempts=self.retry_attempts, initial_s=min(1.0, self.retry_max_seconds),
                            multiplier=2.0, max_s=self.retry_max_seconds, jitter_s=0.25)
        client = AnaplanClient(self.make_auth(on_refresh_token=on_refresh_token, refresh_token=refresh_token),
                               endpoints=self.endpoints(), budget=budget, budget_max_wait_s=10.0,
                               retry=retry, timeout_s=self.timeout_seconds)
        return AnaplanImports(client)
