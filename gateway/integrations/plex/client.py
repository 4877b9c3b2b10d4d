"""Plex destination: Connect REST (httpx) and the classic SOAP Data Source service (zeep).

What the pipeline uses (facts and confidence in ``specs/plex.md``):

* supplier master: :meth:`PlexClient.iter_supplier_pages` / :meth:`PlexClient.read_suppliers` (full or
  ``modifiedDate`` range) and :meth:`PlexClient.poll_suppliers` (high-water mark with a clock-skew overlap,
  kept in a serialisable :class:`ChangeCursor`);
* AP invoices (810/INVOIC): :meth:`PlexClient.find_ap_invoice`, :meth:`PlexClient.create_ap_invoice`,
  :meth:`PlexClient.post_invoice`;
* buyer-side purchase orders (850/ORDERS) through the tenant's data sources over SOAP, keys and parameter names
  from :class:`PurchaseOrderDataSources`: :meth:`PlexClient.find_purchase_order`,
  :meth:`PlexClient.post_purchase_order`;
* customer POs as sales orders (``sales/v1/orders``): :meth:`PlexClient.find_sales_order`,
  :meth:`PlexClient.post_sales_order`.

Posting is idempotent: look the record up, create only if absent, and after a timeout or 5xx on a create look
again before any retry (Plex has no idempotency key). Every HTTP exchange of a posting is returned in
:attr:`PostingOutcome.calls` for the audit trail. Requests draw from a :class:`RateBudget` (token bucket, 200/min
by default, shareable across processes through a :class:`RateBudgetBackend`); 429 is backed off honouring
``Retry-After`` (exponential otherwise), 403 raises :class:`PlexPermissionError`, 401 re-authenticates once and
then raises :class:`PlexAuthError`. Secrets live in ``SecretStr`` and never reach logs or exception text.

One :class:`PlexClient` serves one company (PCN): its Connect tenant headers and its web-service account.
"""

from __future__ import annotations

import contextvars
import email.utils
import hashlib
import json
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, Protocol, TypeVar

import httpx
import structlog
import tenacity
import zeep
import zeep.exceptions
import zeep.helpers
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator
from pydantic.alias_generators import to_camel


__all__ = [
    "APInvoice", "APInvoiceDraft", "APInvoiceLine", "ChangeCursor", "DataSourceBinding", "DataSourceResult",
    "InMemoryRateBudgetBackend", "OAuthClientCredentials", "PlexAuthError", "PlexCall", "PlexClient",
    "PlexConfig", "PlexConfigError", "PlexConnectionError", "PlexDataSourceError", "PlexError", "PlexNotFoundError",
    "PlexPermissionError", "PlexProtocolError", "PlexServerError", "PlexSoapFaultError", "PlexThrottledError",
    "PlexTimeoutError", "PlexTransientError", "PlexValidationError", "PostingOutcome", "PurchaseOrderDataSources",
    "PurchaseOrderDraft", "PurchaseOrderLine", "PurchaseOrderRecord", "RateBudget", "RateBudgetBackend",
    "RetryPolicy", "SalesOrder", "SupplierMatching", "APInvoiceAccounts", "SalesOrderDraft", "SalesOrderLine", "SoapAccount", "Supplier",
    "SupplierChanges",
]

log = structlog.get_logger("gateway.integrations.plex.client")

DATA_SOURCE_NS = "http://www.plexus-online.com/DataSource"
_SALES_ORDER_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:edi-gateway:plex:sales-order")

# --------------------------------------------------------------------------------------------- errors


class PlexError(Exception):
    """Base of every Plex failure. ``transient`` tells the pipeline whether a later retry may succeed."""

    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, operation: str | None = None, status: int | None = None,
                 code: str | None = None, errors: tuple[dict[str, str], ...] = ()) -> None:
        super().__init__(f"{operation}: {message}" if operation else message)
        self.operation, self.status, self.code, self.errors = operation, status, code, errors


class PlexAuthError(PlexError):
    """401 after one re-authentication, bad SOAP credentials, or a rejected token request: alert a person."""


class PlexPermissionError(PlexError):
    """403 / data source "not authorized": the App or account lacks a grant. Recorded on the document."""


class PlexValidationError(PlexError):
    """Plex rejected the request (400, business rule). Not retried."""

    @property
    def is_duplicate(self) -> bool:
        codes = [self.code or "", *(e.get("code", "") for e in self.errors)]
        return any("DUPLICATE" in c.upper() or "ALREADY_EXISTS" in c.upper() for c in codes)


class PlexNotFoundError(PlexError):
    """404 ``RESOURCE_NOT_FOUND``."""


class PlexDataSourceError(PlexValidationError):
    """A data source answered ``Error=true`` or a non-zero ``@Result_Error`` (HTTP 200)."""

    def __init__(self, message: str, *, operation: str | None = None, error_no: int | None = None,
                 result_error: str | None = None, instance_no: str | None = None) -> None:
        super().__init__(message, operation=operation, code=str(error_no or result_error or ""))
        self.error_no, self.result_error, self.instance_no = error_no, result_error, instance_no


class PlexConfigError(PlexError):
    """The client is not configured for the operation asked (no credentials for that surface)."""


class PlexSoapFaultError(PlexError):
    """``soap:Client`` fault: the request itself is wrong."""


class PlexTransientError(PlexError):
    """Worth retrying later: throttling, 5xx, timeouts, broken connections, garbled answers."""

    transient = True


class PlexThrottledError(PlexTransientError):
    """429 (or SOAP 429/503 throttling). ``retry_after`` in seconds when the server said so."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class PlexServerError(PlexTransientError):
    """5xx or ``soap:Server`` fault."""


class PlexTimeoutError(PlexTransientError):
    """No answer in time. For a create the record may exist: look it up before retrying."""


class PlexConnectionError(PlexTransientError):
    """Connection refused, reset or dropped mid-answer."""


class PlexProtocolError(PlexTransientError):
    """A 2xx answer that could not be read (truncated JSON, non-XML SOAP body)."""


# --------------------------------------------------------------------------------------------- config


class OAuthClientCredentials(BaseModel):
    """OAuth2 client-credentials bearer mode (spec 9.3). Tokens are cached and refreshed before expiry."""

    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str | None = None
    refresh_margin_seconds: float = 60.0


class SoapAccount(BaseModel):
    """A classic web-service account; it belongs to one PCN, so the credential selects the company."""

    url: str = "https://api.plexonline.com/DataSource/Service.asmx"
    username: str
    password: SecretStr
    wsdl: str | None = Field(None, description="Local path or URL of the WSDL; default '<url>?WSDL'")


class DataSourceBinding(BaseModel):
    """A tenant data source: its key and the names of its inputs, outputs and columns.

    Keys of ``inputs``/``outputs``/``columns`` are the gateway's logical field names; values are the tenant's
    names (``@`` optional). Logical fields without a mapping are simply not sent.
    """

    key: int
    inputs: dict[str, str]
    outputs: dict[str, str] = Field(default_factory=dict)
    columns: dict[str, str] = Field(default_factory=dict)

    def require(self, role: str, *, inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = (),
                columns: tuple[str, ...] = ()) -> None:
        missing = ([f"inputs.{n}" for n in inputs if n not in self.inputs]
                   + [f"outputs.{n}" for n in outputs if n not in self.outputs]
                   + [f"columns.{n}" for n in columns if n not in self.columns])
        if missing:
            raise ValueError(f"{role} data source {self.key} must map {', '.join(missing)}")


class PurchaseOrderDataSources(BaseModel):
    """Where buyer-side POs go: no REST create exists (spec 6.4). Defaults match the simulator's data sources."""

    lookup: DataSourceBinding = DataSourceBinding(
        key=90002, inputs={"po_number": "PO_No", "supplier_code": "Supplier_Code"},
        columns={"po_key": "PO_Key", "po_number": "PO_No", "supplier_code": "Supplier_Code",
                 "po_date": "PO_Date", "status": "Status", "line_number": "Line_No", "line_key": "PO_Line_Key"})
    create: DataSourceBinding = DataSourceBinding(
        key=90001, inputs={"supplier_code": "Supplier_Code", "po_number": "PO_No", "po_date": "PO_Date",
                           "due_date": "Due_Date", "currency_code": "Currency_Code", "terms": "Terms",
                           "note": "Note", "lines": "Lines"},
        outputs={"po_key": "@PO_Key"})
    # When ``create`` maps ``inputs.lines``, the lines go with the header in that one call, as a JSON array
    # of objects named by this table (PO and lines created together or not at all); ``add_line`` then only
    # completes a PO found half-made.
    line_fields: dict[str, str] = Field(default_factory=lambda: {
        "line_number": "Line_No", "part_number": "Part_No", "supplier_part_number": "Supplier_Part_No",
        "description": "Description", "quantity": "Quantity", "unit": "Unit", "unit_price": "Unit_Price",
        "due_date": "Due_Date"})
    add_line: DataSourceBinding | None = DataSourceBinding(
        key=90003, inputs={"po_key": "PO_Key", "line_number": "Line_No", "part_number": "Part_No",
                           "supplier_part_number": "Supplier_Part_No", "description": "Description",
                           "quantity": "Quantity", "unit": "Unit", "unit_price": "Unit_Price",
                           "due_date": "Due_Date"},
        outputs={"line_key": "@PO_Line_Key"})
    result_error: str | None = "@Result_Error"
    result_message: str | None = "@Result_Message"
    date_format: str = "%Y-%m-%d"

    @model_validator(mode="after")
    def _complete(self) -> PurchaseOrderDataSources:
        self.lookup.require("PO lookup", inputs=("po_number",), columns=("po_key", "po_number"))
        self.create.require("PO create", inputs=("po_number", "supplier_code"), outputs=("po_key",))
        if self.add_line is not None:
            self.add_line.require("PO line add", inputs=("po_key", "line_number", "quantity"))
            if "line_number" not in self.lookup.columns:
                raise ValueError("PO lookup data source must map columns.line_number when add_line is set")
        return self


class RetryPolicy(BaseModel):
    max_attempts: int = Field(5, ge=1)
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    jitter: float = 0.25  # each exponential wait is stretched by up to this fraction
    max_retry_after: float = 120.0  # longer server-requested waits are raised to the pipeline, not slept
    # After an ambiguous create (timeout/5xx) wait this long before the re-check, so a create still running
    # on the server has committed by the time we look (otherwise the re-check misses it and we duplicate).
    ambiguous_recheck_delay: float = 5.0


class SupplierMatching(BaseModel):
    """How the cached supplier master is refreshed and how loosely names may match."""

    refresh_seconds: float = Field(300.0, gt=0, description="poll Plex for changed suppliers this often")
    overlap_seconds: float = Field(300.0, ge=0, description="re-read this much before the last change (clock skew)")
    name_threshold: float = Field(90.0, ge=0, le=100, description="rapidfuzz score a name match needs")
    ambiguity_margin: float = Field(5.0, ge=0, description="the best name must beat the next by this much")
    active_statuses: list[str] = Field(default_factory=lambda: ["Active"],
                                       description="supplier statuses that may be matched (no status counts)")
    fetch_tax_ids: bool = Field(True, description="read suppliers' financials for their tax ids")
    tax_ids_per_refresh: int = Field(50, ge=0, description=(
        "financials read per refresh at most (one request each): a big master fills in over a few refreshes"))


class APInvoiceAccounts(BaseModel):
    """GL accounts the lines of an AP invoice are booked to (the EDI invoice carries none).

    No defaults: they are the tenant's own chart of accounts (``gateway check`` looks each one up)."""

    expense_account: str = Field(min_length=1, description="goods and services lines, e.g. '5000-100-00'")
    tax_account: str = Field(min_length=1, description="the tax line, e.g. '2300-000-00'")
    charge_account: str | None = Field(None, min_length=1, description="freight and other charges; unset: the "
                                                                        "expense account")


class PlexConfig(BaseModel):
    """One Plex company (PCN): Connect REST credentials and tenant, SOAP account, limits and timeouts."""

    connect_url: str = "https://connect.plex.com"
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None  # optional X-Plex-Connect-Api-Secret; harmless if sent
    api_key_secret: str | None = None  # vault secret re-read once after a 401 (Consumer Keys are rotated)
    tenant_id: str | None = None  # X-Plex-Connect-Tenant-Id
    customer_id: str | None = None  # X-Plex-Connect-Customer-Id: the PCN
    oauth: OAuthClientCredentials | None = None
    soap: SoapAccount | None = None
    purchase_orders: PurchaseOrderDataSources = Field(default_factory=PurchaseOrderDataSources)
    requests_per_minute: int = Field(200, ge=1)
    burst: int = Field(20, ge=1)
    soap_requests_per_minute: int | None = None  # no documented data-source throttle
    timeout_seconds: float = 30.0
    list_timeout_seconds: float = 120.0  # lists are unpaged and can be tens of MB
    connect_timeout_seconds: float = 10.0
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    trust_env: bool = True  # honour HTTP(S)_PROXY
    matching: SupplierMatching = Field(default_factory=SupplierMatching)
    ap_invoice_accounts: APInvoiceAccounts | None = None  # required where invoices go to Plex (Settings checks)
    concurrency: int = Field(8, ge=1, le=64, description="documents posted at once by one process")
    batch_lookups: bool = Field(True, description=(
        "look up many records in one list request (the filter repeated, spec 2.4); each such answer is "
        "trusted only when two records known to exist, placed first and last in the query, come back"))
    lookup_batch_size: int = Field(50, ge=1, le=200, description="numbers per batched look-up request")

    @model_validator(mode="after")
    def _check(self) -> PlexConfig:
        if self.api_key is None and self.oauth is None and self.soap is None:
            raise ValueError("configure api_key, oauth or soap")
        if self.burst >= self.requests_per_minute:
            raise ValueError("burst must be smaller than requests_per_minute")
        return self


# --------------------------------------------------------------------------------------------- records


def _plex_datetime(value: Any) -> Any:
    """Plex sends up to 7 fraction digits (.NET ticks); Python takes 6."""
    if isinstance(value, str):
        m = re.fullmatch(r"(.*T\d\d:\d\d(?::\d\d)?)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?", value.strip())
        if m:
            frac = f".{m.group(2)[:6]}" if m.group(2) else ""
            return f"{m.group(1)}{frac}{m.group(3) or 'Z'}"
    return value


PlexDateTime = Annotated[datetime, BeforeValidator(_plex_datetime)]


class PlexRecord(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class Supplier(PlexRecord):
    """A supplier master row (``mdm/v1/suppliers``); ``code`` is the natural match key."""

    id: str
    code: str
    name: str | None = None
    old_code: str | None = None
    status: str | None = None
    category: str | None = None
    type: str | None = None
    parent_supplier_id: str | None = None
    created_date: PlexDateTime | None = None
    modified_date: PlexDateTime | None = None


class APInvoice(PlexRecord):
    id: str
    invoice_number: str
    supplier_id: str | None = None
    supplier_code: str | None = None
    voucher_number: str | None = None
    status: str | None = None
    amount: Decimal | None = None
    po_number: str | None = None
    invoice_date: PlexDateTime | None = None
    created_date: PlexDateTime | None = None
    modified_date: PlexDateTime | None = None


class SalesOrder(PlexRecord):
    id: str
    customer_id: str | None = None
    po_number: str | None = None
    order_number: str | None = None
    status: str | None = None
    created_date: PlexDateTime | None = None
    modified_date: PlexDateTime | None = None


@dataclass(frozen=True)
class PurchaseOrderRecord:
    """A buyer-side PO as the lookup data source shows it (classic integer key, line numbers present)."""

    po_key: int
    po_number: str
    supplier_code: str | None
    status: str | None
    po_date: str | None
    line_numbers: frozenset[int]


class APInvoiceLine(BaseModel):
    account_number: str | None = None
    account_id: str | None = None
    description: str | None = None
    quantity: Decimal = Decimal(1)
    unit_price: Decimal
    is_tax_line: bool = False

    @model_validator(mode="after")
    def _account(self) -> APInvoiceLine:
        if not (self.account_number or self.account_id):
            raise ValueError("an AP invoice line needs account_number or account_id")
        return self


class APInvoiceDraft(BaseModel):
    """An AP (supplier) invoice to post, mapped from a canonical 810/INVOIC invoice."""

    invoice_number: str = Field(min_length=1)
    supplier_code: str = Field(min_length=1)
    supplier_id: str | None = None
    invoice_date: date
    due_date: date | None = None
    currency_code: str | None = None
    terms: str | None = None
    po_number: str | None = None
    note: str | None = None  # e.g. the EDI control numbers, for later reconciliation
    lines: list[APInvoiceLine] = Field(min_length=1)


class PurchaseOrderLine(BaseModel):
    line_number: int = Field(ge=1)
    quantity: Decimal
    part_number: str | None = None
    supplier_part_number: str | None = None
    description: str | None = None
    unit: str | None = None
    unit_price: Decimal | None = None
    due_date: date | None = None


class PurchaseOrderDraft(BaseModel):
    """A buyer-side PO to create through the tenant's data sources, mapped from an 850/ORDERS."""

    po_number: str = Field(min_length=1)
    supplier_code: str = Field(min_length=1)
    po_date: date
    due_date: date | None = None
    currency_code: str | None = None
    terms: str | None = None
    note: str | None = None
    lines: list[PurchaseOrderLine] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_lines(self) -> PurchaseOrderDraft:
        numbers = [line.line_number for line in self.lines]
        if len(numbers) != len(set(numbers)):
            raise ValueError("PO line numbers must be unique")
        return self


class SalesOrderLine(BaseModel):
    quantity: Decimal
    part_number: str | None = None
    customer_part_number: str | None = None
    description: str | None = None
    unit: str | None = None
    unit_price: Decimal | None = None
    due_date: date | None = None


class SalesOrderDraft(BaseModel):
    """A customer PO (inbound 850 from a customer) to create as a Plex sales order."""

    customer_id: str
    po_number: str = Field(min_length=1)
    order_date: date | None = None
    due_date: date | None = None
    note: str | None = None
    lines: list[SalesOrderLine] = Field(default_factory=list)


class ChangeCursor(BaseModel):
    """Where "changed since" polling stands: the newest ``modifiedDate`` seen and the (id, modifiedDate) pairs
    already delivered inside the overlap window, so overlapping queries never deliver a row twice."""

    watermark: datetime | None = None
    edge: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class SupplierChanges:
    suppliers: list[Supplier]
    cursor: ChangeCursor


@dataclass(frozen=True)
class DataSourceResult:
    key: int
    name: str | None
    instance_no: str | None
    message: str | None
    rows: tuple[dict[str, str | None], ...]
    outputs: dict[str, str | None]

    def output(self, name: str) -> str | None:
        """An output parameter by name, with or without the ``@``."""
        bare = name.lstrip("@")
        return next((v for k, v in self.outputs.items() if k.lstrip("@") == bare), None)


@dataclass(frozen=True)
class DataSourceTemplate:
    """A data source's request template: its name and each input with whether it is required."""

    key: int
    name: str | None
    inputs: dict[str, bool]  # "@Name" -> required


@dataclass(frozen=True)
class PlexCall:
    """One exchange with Plex, for the document's audit trail."""

    operation: str
    method: str
    target: str
    status: int | None
    outcome: str  # "ok" or the error class name
    duration_ms: float
    detail: str | None = None


@dataclass(frozen=True)
class PostingOutcome:
    """Result of an idempotent posting.

    ``created`` is True when this posting created the record, including the case where the create's answer was
    lost and the record was found on re-check (``recovered``); False when it already existed before we started.
    ``response`` is a summary of Plex's answer for the audit trail; ``calls`` every exchange made.
    """

    kind: Literal["ap_invoice", "purchase_order", "sales_order"]
    number: str
    record_id: str | None
    record_key: int | None
    created: bool
    recovered: bool
    response: dict[str, Any]
    calls: tuple[PlexCall, ...]
    lines_added: int = 0

    @property
    def disposition(self) -> Literal["created", "already_existed"]:
        return "created" if self.created else "already_existed"


# --------------------------------------------------------------------------------------------- rate budget


class RateBudgetBackend(Protocol):
    """Token-bucket state, atomically updated; the store can implement it to share a budget across processes.

    Times are seconds on the caller's clock (wall clock by default, so processes agree).
    """

    def take(self, bucket: str, *, capacity: float, refill_per_second: float, now: float) -> float:
        """Take one token if available and return 0.0; else take nothing and return seconds to wait."""

    def hold(self, bucket: str, until: float) -> None:
        """Grant nothing from ``bucket`` before ``until`` (a 429's Retry-After applies to every user of the key)."""


class InMemoryRateBudgetBackend:
    """Process-local :class:`RateBudgetBackend`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}  # bucket -> [tokens, last refill, hold until]

    def take(self, bucket: str, *, capacity: float, refill_per_second: float, now: float) -> float:
        with self._lock:
            state = self._buckets.setdefault(bucket, [capacity, now, 0.0])
            if now < state[2]:
                return state[2] - now
            state[0] = min(capacity, state[0] + max(0.0, now - state[1]) * refill_per_second)
            state[1] = max(state[1], now)
            # Epoch-second floats carry ~1e-7 s of rounding: a refill timed to the token lands just short of 1.
            if state[0] >= 1.0 - 1e-6:
                state[0] = max(0.0, state[0] - 1.0)
                return 0.0
            return max(0.001, (1.0 - state[0]) / refill_per_second)

    def hold(self, bucket: str, until: float) -> None:
        with self._lock:
            state = self._buckets.setdefault(bucket, [0.0, until, 0.0])
            state[2] = max(state[2], until)


class RateBudget:
    """At most ``per_minute`` requests in any 60 s window.

    A token bucket of ``burst`` tokens refilled at ``(per_minute - burst) / 60`` per second: a full bucket plus a
    minute of refill is exactly ``per_minute``, so even a sliding-window server limit is never exceeded.
    """

    def __init__(self, bucket: str, per_minute: int = 200, *, burst: int = 20,
                 backend: RateBudgetBackend | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 1 <= burst < per_minute:
            raise ValueError("need 1 <= burst < per_minute")
        self.bucket, self.per_minute, self.burst = bucket, per_minute, burst
        self.backend = backend or InMemoryRateBudgetBackend()
        self._clock, self._sleep = clock, sleep

    def acquire(self) -> float:
        """Block until a request may go out; returns the seconds waited. (``sleep`` must advance ``clock``.)"""
        waited = 0.0
        while True:
            wait = self.backend.take(self.bucket, capacity=self.burst,
                                     refill_per_second=(self.per_minute - self.burst) / 60.0, now=self._clock())
            if wait <= 0:
                return waited
            self._sleep(wait)
            waited += wait

    def hold(self, seconds: float) -> None:
        self.backend.hold(self.bucket, self._clock() + seconds)


# --------------------------------------------------------------------------------------------- auth


class _ApiKeyAuth:
    """The Connect key header. "Re-authenticating" means asking ``key_provider`` for a rotated key (keys expire)."""

    def __init__(self, key: SecretStr | None, provider: Callable[[], SecretStr | str] | None) -> None:
        self._key, self._provider = key, provider

    def headers(self) -> dict[str, str]:
        return {"X-Plex-Connect-Api-Key": self._key.get_secret_value()} if self._key else {}

    @property
    def can_refresh(self) -> bool:
        return self._provider is not None

    def refresh(self) -> bool:
        if self._provider is None:
            return False
        new = self._provider()
        new = new if isinstance(new, SecretStr) else SecretStr(new)
        changed = self._key is None or new.get_secret_value() != self._key.get_secret_value()
        self._key = new
        return changed


class _BearerAuth:
    """OAuth2 client credentials: cached token, refreshed ``refresh_margin_seconds`` before expiry or on 401."""

    def __init__(self, cfg: OAuthClientCredentials, http: httpx.Client, clock: Callable[[], float],
                 timeout: httpx.Timeout) -> None:
        self._cfg, self._http, self._clock, self._timeout = cfg, http, clock, timeout
        self._lock = threading.Lock()
        self._token: SecretStr | None = None
        self._expires_at = 0.0
        self.tokens_fetched = 0

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - self._cfg.refresh_margin_seconds:
                self._fetch()
            assert self._token is not None
            return {"Authorization": f"Bearer {self._token.get_secret_value()}"}

    def refresh(self) -> bool:
        with self._lock:
            self._fetch()
            return True

    def _fetch(self) -> None:
        form = {"grant_type": "client_credentials", "client_id": self._cfg.client_id,
                "client_secret": self._cfg.client_secret.get_secret_value()}
        if self._cfg.scope:
            form["scope"] = self._cfg.scope
        try:
            resp = self._http.post(self._cfg.token_url, data=form, timeout=self._timeout)
        except httpx.TimeoutException as exc:
            raise PlexTimeoutError(type(exc).__name__, operation="oauth.token") from exc
        except httpx.TransportError as exc:
            raise PlexConnectionError(type(exc).__name__, operation="oauth.token") from exc
        if resp.status_code in (400, 401, 403):
            raise PlexAuthError(f"token request rejected (HTTP {resp.status_code})", operation="oauth.token",
                                status=resp.status_code)
        if resp.status_code == 429:
            raise PlexThrottledError("token endpoint throttled", operation="oauth.token", status=429,
                                     retry_after=_retry_after(resp, self._clock))
        if resp.status_code >= 500:
            raise PlexServerError(f"HTTP {resp.status_code}", operation="oauth.token", status=resp.status_code)
        try:
            body = resp.json()
            token, expires_in = body["access_token"], float(body.get("expires_in") or 600)
        except (ValueError, KeyError, TypeError) as exc:
            raise PlexProtocolError("unreadable token response", operation="oauth.token") from exc
        self._token, self._expires_at = SecretStr(token), self._clock() + expires_in
        self.tokens_fetched += 1
        log.info("plex.oauth.token", expires_in=expires_in)


# --------------------------------------------------------------------------------------------- helpers


def _retry_after(resp: httpx.Response, clock: Callable[[], float]) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP-date); None when absent or unreadable."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - clock())


def _plex_dt(value: datetime | date) -> str:
    """Plex wants UTC ``YYYY-MM-DDThh:mm:ss[.ffffff]Z``: no date-only values, no offsets (spec 2.4)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: Plex filters need an explicit UTC instant")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{value.isoformat()}T00:00:00Z"


def _json_number(value: Decimal) -> int | float:
    """JSON number for a Decimal, refusing values a float would silently round (Plex takes JSON numbers)."""
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if Decimal(repr(as_float)) != value:
        raise ValueError(f"{value} cannot be sent as a JSON number without rounding")
    return as_float


def _edge_token(supplier: Supplier) -> str:
    return f"{supplier.id}@{supplier.modified_date.isoformat() if supplier.modified_date else ''}"


def _edge_time(token: str) -> datetime:
    stamp = token.rpartition("@")[2]
    return datetime.fromisoformat(stamp) if stamp else datetime.min.replace(tzinfo=UTC)


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _error_body(resp: httpx.Response) -> tuple[str | None, str | None, tuple[dict[str, str], ...]]:
    try:
        body = resp.json()
    except ValueError:
        return None, None, ()
    if not isinstance(body, dict):
        return None, None, ()
    errors = tuple({"code": str(e.get("code", "")), "message": str(e.get("message", ""))}
                   for e in body.get("errors") or [] if isinstance(e, dict))
    return body.get("code"), body.get("message"), errors


_TRAIL: contextvars.ContextVar[list[PlexCall] | None] = contextvars.ContextVar("plex_trail", default=None)
_T = TypeVar("_T")

# Plex caps some lists at 1,000 rows (AP invoices, spec 2.4): an answer that long may be cut short.
_LIST_CAP = 1000


def _same_ap_invoice(row: Mapping[str, Any], number: str, supplier_code: str, supplier_id: str | None) -> bool:
    return row.get("invoiceNumber") == number and (
        row.get("supplierCode") == supplier_code or bool(supplier_id and row.get("supplierId") == supplier_id))


# --------------------------------------------------------------------------------------------- client


class _ZeepTransport(zeep.Transport):
    """zeep's transport over httpx, the one HTTP client of the gateway (zeep's own goes through
    requests). Answers go to zeep as they came."""

    def __init__(self, http: httpx.Client, *, timeout: float, operation_timeout: float,
                 connect_timeout: float) -> None:
        super().__init__(timeout=timeout, operation_timeout=operation_timeout)
        self.http = http
        self._urls: dict[str, httpx.URL] = {}
        self._operation = httpx.Timeout(operation_timeout, connect=connect_timeout)
        self._load = httpx.Timeout(timeout, connect=connect_timeout)

    def post(self, address: str, message: bytes | str, headers: dict[str, str]) -> httpx.Response:
        url = self._urls.get(address)
        if url is None:
            url = self._urls[address] = httpx.URL(address)  # one service address: parsed once
        return self.http.post(url, content=message, headers=headers, timeout=self._operation)

    def get(self, address: str, params: Any, headers: dict[str, str]) -> httpx.Response:
        return self.http.get(address, params=params, headers=headers, timeout=self._operation)

    def _load_remote_data(self, url: str) -> bytes:
        if url.startswith("file:"):
            return super()._load_remote_data(url)
        response = self.http.get(url, timeout=self._load)
        response.raise_for_status()
        return response.content


class PlexClient:
    """Plex Connect REST + classic SOAP data sources for one company (PCN). Synchronous and thread-safe.

    ``clock``/``sleep`` drive the rate budget, backoff and token expiry (inject fakes in tests; ``sleep`` must
    advance ``clock``). ``budget_backend`` shares the request budget across processes. ``key_provider`` returns
    the current Connect key, so a rotated key is picked up on the one re-authentication after a 401.
    """

    def __init__(self, config: PlexConfig, *, budget_backend: RateBudgetBackend | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None, key_provider: Callable[[], SecretStr | str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._clock, self._sleep = clock, sleep
        self._rng = rng or random.Random()
        backend = budget_backend or InMemoryRateBudgetBackend()
        identity = (config.api_key.get_secret_value() if config.api_key
                    else config.oauth.client_id if config.oauth else "soap-only")
        # The budget is per Connect credential (that is what Plex meters); hash it so no key lands in the store.
        self.budget = RateBudget(f"plex-connect:{hashlib.sha256(identity.encode()).hexdigest()[:16]}",
                                 config.requests_per_minute, burst=config.burst, backend=backend,
                                 clock=clock, sleep=sleep)
        self.soap_budget: RateBudget | None = None
        if config.soap and config.soap_requests_per_minute:
            user_hash = hashlib.sha256(config.soap.username.encode()).hexdigest()[:16]
            self.soap_budget = RateBudget(f"plex-soap:{user_hash}", config.soap_requests_per_minute,
                                          burst=max(1, min(config.burst, config.soap_requests_per_minute - 1)),
                                          backend=backend, clock=clock, sleep=sleep)
        self._timeout = httpx.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds)
        self._list_timeout = httpx.Timeout(config.list_timeout_seconds, connect=config.connect_timeout_seconds)
        self._http = httpx.Client(base_url=config.connect_url.rstrip("/"), timeout=self._timeout,
                                  trust_env=config.trust_env, transport=transport,
                                  headers={"Accept": "application/json"})
        self._urls: dict[str, httpx.URL] = {}
        self._api_key_auth = _ApiKeyAuth(config.api_key, key_provider)
        self._bearer = _BearerAuth(config.oauth, self._http, clock, self._timeout) if config.oauth else None
        self._soap_lock = threading.Lock()
        self._soap_service: Any = None
        self._soap_local = threading.local()
        # Numbers of records seen to exist, per kind: the witnesses that prove a batched look-up honoured
        # every value of its repeated filter.
        self._known: dict[str, deque[str]] = {}
        self._known_lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._http.close()
        if self._soap_service is not None:
            self._soap_http.close()

    def __enter__(self) -> PlexClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # ------------------------------------------------------------ REST plumbing
    def _headers(self) -> dict[str, str]:
        cfg = self.config
        headers = self._api_key_auth.headers()
        if not headers and self._bearer is None and not self._api_key_auth.can_refresh:
            raise PlexConfigError("no Connect API key or OAuth client configured", operation="rest")
        if cfg.api_secret is not None:
            headers["X-Plex-Connect-Api-Secret"] = cfg.api_secret.get_secret_value()
        if cfg.tenant_id:
            headers["X-Plex-Connect-Tenant-Id"] = cfg.tenant_id
        if cfg.customer_id:
            headers["X-Plex-Connect-Customer-Id"] = cfg.customer_id
        if self._bearer is not None:
            headers.update(self._bearer.headers())
        return headers

    def _url(self, path: str) -> httpx.URL:
        """The absolute URL of a Connect path, parsed once: httpx parses a string URL (twice, with a
        base URL) on every request."""
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) > 1024:  # paths with record ids in them: do not keep them all
                self._urls.clear()
            url = self._urls[path] = self._http.base_url.join(path.lstrip("/"))
        return url

    def _reauthenticate(self) -> bool:
        if self._bearer is not None:
            return self._bearer.refresh()
        return self._api_key_auth.refresh()

    def _record(self, operation: str, method: str, target: str, status: int | None, started: float,
                outcome: str = "ok", detail: str | None = None) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        trail = _TRAIL.get()
        if trail is not None:
            trail.append(PlexCall(operation, method, target, status, outcome, duration_ms, detail))
        log.info("plex.call", operation=operation, method=method, target=target, status=status,
                 outcome=outcome, duration_ms=duration_ms)

    def _send(self, operation: str, method: str, path: str, *,
              params: Mapping[str, Any] | Sequence[tuple[str, str]] | None = None,
              body: dict[str, Any] | None = None, timeout: httpx.Timeout | None = None) -> Any:
        """One logical REST request: budget, auth (one re-authentication on 401), status -> exception.

        Returns the parsed JSON answer (None for an empty body); an unreadable 2xx body is a
        :class:`PlexProtocolError` (for a create that is ambiguous: the record may exist)."""
        reauthenticated = False
        while True:
            self.budget.acquire()
            headers = self._headers()
            if body is not None:
                headers["Content-Type"] = "application/json"
            started = time.perf_counter()
            try:
                resp = self._http.request(method, self._url(path), params=params, headers=headers,
                                          content=None if body is None else json.dumps(body).encode(),
                                          timeout=timeout or self._timeout)
            except httpx.TimeoutException as exc:
                self._record(operation, method, path, None, started, "PlexTimeoutError", type(exc).__name__)
                raise PlexTimeoutError(f"no answer within the timeout ({type(exc).__name__})",
                                       operation=operation) from exc
            except httpx.TransportError as exc:
                self._record(operation, method, path, None, started, "PlexConnectionError", type(exc).__name__)
                raise PlexConnectionError(f"connection failed ({type(exc).__name__})", operation=operation) from exc
            if resp.status_code == 401 and not reauthenticated:
                reauthenticated = True
                try:
                    refreshed = self._reauthenticate()
                except PlexError as exc:
                    self._record(operation, method, path, 401, started, type(exc).__name__, "re-authentication")
                    raise
                if refreshed:
                    self._record(operation, method, path, 401, started, "reauthenticate")
                    continue
            if resp.is_success:
                try:
                    data = resp.json() if resp.content else None
                except ValueError as exc:
                    self._record(operation, method, path, resp.status_code, started, "PlexProtocolError",
                                 "unreadable JSON")
                    raise PlexProtocolError("answer is not valid JSON", operation=operation,
                                            status=resp.status_code) from exc
                self._record(operation, method, path, resp.status_code, started)
                return data
            error = self._error_for(operation, resp)
            self._record(operation, method, path, resp.status_code, started, type(error).__name__,
                         error.code or None)
            raise error

    def _error_for(self, operation: str, resp: httpx.Response) -> PlexError:
        status = resp.status_code
        code, message, errors = _error_body(resp)
        text = message or f"HTTP {status}"
        kw: dict[str, Any] = {"operation": operation, "status": status, "code": code, "errors": errors}
        if status == 401:
            return PlexAuthError(f"{text} (key expired, product not subscribed, or tenant not allowed)", **kw)
        if status == 403:
            return PlexPermissionError(text, **kw)
        if status == 404:
            return PlexNotFoundError(text, **kw)
        if status == 429:
            retry_after = _retry_after(resp, self._clock)
            if retry_after is not None:
                self.budget.hold(retry_after)  # everyone sharing the key waits, not only this caller
            return PlexThrottledError(text, retry_after=retry_after, **kw)
        if status >= 500:
            return PlexServerError(text, **kw)
        return PlexValidationError(text, **kw)

    # ------------------------------------------------------------ retry policy
    def _backoff(self, attempt: int) -> float:
        policy = self.config.retry
        base = min(policy.backoff_max, policy.backoff_initial * 2 ** (attempt - 1))
        return base * (1 + policy.jitter * self._rng.random())

    def _wait_for(self, exc: BaseException | None, attempt: int) -> float:
        if isinstance(exc, PlexThrottledError) and exc.retry_after is not None:
            return exc.retry_after
        return self._backoff(attempt)

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, PlexThrottledError) and exc.retry_after is not None:
            return exc.retry_after <= self.config.retry.max_retry_after
        return isinstance(exc, PlexTransientError)

    def _read(self, fn: Callable[[], _T]) -> _T:
        """Run an idempotent read with tenacity: transient faults retried with backoff, others raised."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.config.retry.max_attempts),
            wait=lambda rs: self._wait_for(rs.outcome.exception() if rs.outcome else None, rs.attempt_number),
            retry=tenacity.retry_if_exception(self._retryable),
            sleep=self._sleep, reraise=True,
            before_sleep=lambda rs: log.warning("plex.retry", attempt=rs.attempt_number,
                                                error=type(rs.outcome.exception()).__name__ if rs.outcome else None,
                                                wait=rs.next_action.sleep if rs.next_action else None))
        return retrying(fn)

    def _get_list(self, operation: str, path: str,
                  params: Mapping[str, Any] | Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        def once() -> list[dict[str, Any]]:
            try:
                rows = self._send(operation, "GET", path, params=params, timeout=self._list_timeout)
            except PlexNotFoundError:
                return []  # the portal allows 404 for "no data exists" on lists (spec 13.4)
            if not isinstance(rows, list):
                raise PlexProtocolError("expected a JSON array", operation=operation)
            return rows
        return self._read(once)

    def _get_one(self, operation: str, path: str) -> dict[str, Any] | None:
        def once() -> dict[str, Any] | None:
            try:
                return self._send(operation, "GET", path)
            except PlexNotFoundError:
                return None
        return self._read(once)

    # ------------------------------------------------------------ tenants
    def list_tenants(self) -> list[dict[str, str]]:
        """``GET mdm/v1/tenants``: the auth canary (which tenants this App reaches)."""
        return self._get_list("tenants.list", "/mdm/v1/tenants", {})

    def list_records(self, path: str, params: Mapping[str, Any], *, operation: str = "records.list"
                     ) -> list[dict[str, Any]]:
        """``GET path`` with ``params``: a whole Connect list (no server paging), for record flows."""
        return self._get_list(operation, path, params)

    # ------------------------------------------------------------ suppliers
    def save_supplier(self, code: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Create the supplier ``code``, or update it when Plex has it (looked up first: never a duplicate).

        An update sends the whole record back with ``fields`` changed (Connect's PUT replaces)."""
        existing = [r for r in self._get_list("suppliers.list", "/mdm/v1/suppliers", {"code": code})
                    if r.get("code") == code]
        if existing:
            record = {k: v for k, v in existing[0].items() if k != "id"}
            record.update(fields)
            return self._send("suppliers.update", "PUT", f"/mdm/v1/suppliers/{existing[0]['id']}", body=record)
        return self._send("suppliers.create", "POST", "/mdm/v1/suppliers",
                          body={"code": code, "status": "Active", "type": "Supplier", **fields})

    def iter_supplier_pages(self, *, page_size: int = 500, modified_since: datetime | None = None,
                            modified_until: datetime | None = None, window: timedelta | None = None,
                            code: str | None = None, status: str | None = None) -> Iterator[list[Supplier]]:
        """Read the supplier master in pages of ``page_size``.

        Connect has no server paging (``limit``/``offset`` are ignored), so each request returns everything in
        its filter. With ``window`` the ``modifiedDate`` range is cut into slices, one request each, to keep
        every answer small; rows are de-duplicated across the (inclusive) slice bounds. Rows outside the range
        are dropped client-side, because Plex ignores filters it does not recognise instead of rejecting them.
        """
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        if window is not None and window <= timedelta(0):
            raise ValueError("window must be positive")
        end = modified_until or (self._now() if modified_since is not None else None)
        slices: list[tuple[datetime | None, datetime | None]] = [(modified_since, end)]
        if window is not None and modified_since is not None and end is not None:
            slices, start = [], modified_since
            while start < end:
                slices.append((start, min(start + window, end)))
                start += window
            slices = slices or [(modified_since, end)]
        seen: set[tuple[str, datetime | None]] = set()
        page: list[Supplier] = []
        for begin, until in slices:
            params = _compact({"code": code, "status": status,
                               "modifiedDateBegin": _plex_dt(begin) if begin else None,
                               "modifiedDateEnd": _plex_dt(until) if until else None})
            for row in self._get_list("suppliers.list", "/mdm/v1/suppliers", params):
                supplier = Supplier.model_validate(row)
                if begin is not None and (supplier.modified_date is None or supplier.modified_date < begin):
                    continue
                if until is not None and supplier.modified_date is not None and supplier.modified_date > until:
                    continue
                if code is not None and supplier.code != code:
                    continue
                token = (supplier.id, supplier.modified_date)
                if token in seen:
                    continue
                seen.add(token)
                page.append(supplier)
                if len(page) >= page_size:
                    yield page
                    page = []
        if page:
            yield page

    def read_suppliers(self, **kwargs: Any) -> list[Supplier]:
        """All suppliers matching the :meth:`iter_supplier_pages` arguments, as one list."""
        return [s for page in self.iter_supplier_pages(**kwargs) for s in page]

    def get_supplier(self, supplier_id: str) -> Supplier | None:
        row = self._get_one("suppliers.get", f"/mdm/v1/suppliers/{supplier_id}")
        return Supplier.model_validate(row) if row else None

    def get_supplier_financials(self, supplier_id: str) -> dict[str, Any] | None:
        """``GET mdm/v1/suppliers/{id}/financials``: tax id, DUNS, bank (None when Plex has none)."""
        row = self._get_one("suppliers.financials", f"/mdm/v1/suppliers/{supplier_id}/financials")
        return row if isinstance(row, dict) else None

    def list_customers(self, *, code: str | None = None) -> list[dict[str, Any]]:
        """``GET mdm/v1/customers`` (customers send the 850s that become sales orders)."""
        rows = self._get_list("customers.list", "/mdm/v1/customers", _compact({"code": code}))
        return [r for r in rows if isinstance(r, dict) and (code is None or r.get("code") == code)]

    def find_gl_account(self, account_number: str) -> dict[str, Any] | None:
        """``GET mdm/v1/chart-of-accounts`` for one account number (verified client-side), or None."""
        rows = self._get_list("gl_account.find", "/mdm/v1/chart-of-accounts", {"accountNumber": account_number})
        return next((r for r in rows if isinstance(r, dict) and r.get("accountNumber") == account_number), None)

    def list_purchase_orders(self, po_number: str) -> list[dict[str, Any]]:
        """``GET purchasing/v1/purchase-orders`` for one PO number (both spellings of the filter, spec 6.4)."""
        rows = self._get_list("purchase_order.list", "/purchasing/v1/purchase-orders",
                              [("pONumber", po_number), ("poNumber", po_number)])
        return [r for r in rows if isinstance(r, dict) and r.get("poNumber") == po_number]

    def poll_suppliers(self, cursor: ChangeCursor | None = None, *, overlap: timedelta = timedelta(minutes=5),
                       window: timedelta | None = None, page_size: int = 500) -> SupplierChanges:
        """Suppliers changed since ``cursor`` (all of them on the first poll) and the cursor for the next poll.

        Queries from ``watermark - overlap`` so a row committed late or stamped by a skewed clock is not missed;
        rows already delivered inside the overlap (same id and ``modifiedDate``) are not delivered again.
        """
        cursor = cursor or ChangeCursor()
        since = cursor.watermark - overlap if cursor.watermark else None
        rows = [s for page in self.iter_supplier_pages(page_size=page_size, modified_since=since, window=window)
                for s in page]
        delivered = set(cursor.edge)
        fresh = [s for s in rows if _edge_token(s) not in delivered]
        stamps = [s.modified_date for s in rows if s.modified_date is not None]
        watermark = max([*stamps, *([cursor.watermark] if cursor.watermark else [])], default=None)
        edge: set[str] = set()
        if watermark is not None:
            # Remember what was delivered inside the next query's overlap; older tokens can never recur.
            floor = watermark - overlap
            edge = {t for t in cursor.edge if _edge_time(t) >= floor}
            edge |= {_edge_token(s) for s in rows if s.modified_date is not None and s.modified_date >= floor}
        return SupplierChanges(fresh, ChangeCursor(watermark=watermark, edge=sorted(edge)))

    # ------------------------------------------------------------ AP invoices
    def find_ap_invoice(self, invoice_number: str, *, supplier_code: str,
                        supplier_id: str | None = None) -> APInvoice | None:
        """The AP invoice with this number from this supplier, or None. Matches are verified client-side."""
        rows = self._get_list("ap_invoice.find", "/accounting/v1/ap-invoices",
                              {"invoiceNumber": invoice_number, "supplierCode": supplier_code})
        matches = [APInvoice.model_validate(r) for r in rows
                   if _same_ap_invoice(r, invoice_number, supplier_code, supplier_id)]
        if matches:
            self._remember("ap_invoice", invoice_number)
        if len(matches) > 1:
            log.warning("plex.ap_invoice.ambiguous", invoice_number=invoice_number, supplier_code=supplier_code,
                        count=len(matches))
        matches.sort(key=lambda m: (m.created_date or datetime.min.replace(tzinfo=UTC), m.id))
        return matches[0] if matches else None

    def absent_ap_invoices(self, invoices: Sequence[APInvoiceDraft]) -> set[tuple[str, str]] | None:
        """(invoice number, supplier code) of ``invoices`` that Plex certainly does not hold, from one list
        request per ``lookup_batch_size`` numbers; None when a batched look-up cannot be trusted now."""
        rows = self._rows_by_number("ap_invoice", "/accounting/v1/ap-invoices", ("invoiceNumber",),
                                    "invoiceNumber", [i.invoice_number for i in invoices])
        if rows is None:
            return None
        return {(i.invoice_number, i.supplier_code) for i in invoices
                if not any(_same_ap_invoice(r, i.invoice_number, i.supplier_code, i.supplier_id)
                           for r in rows.get(i.invoice_number, ()))}

    def create_ap_invoice(self, invoice: APInvoiceDraft) -> APInvoice:
        """``POST accounting/v1/ap-invoices``, exactly once (no retry: use :meth:`post_invoice`)."""
        body = _compact({
            "invoiceNumber": invoice.invoice_number, "supplierCode": invoice.supplier_code,
            "supplierId": invoice.supplier_id, "invoiceDate": _plex_dt(invoice.invoice_date),
            "dueDate": _plex_dt(invoice.due_date) if invoice.due_date else None,
            "currencyCode": invoice.currency_code, "terms": invoice.terms, "poNumber": invoice.po_number,
            "note": invoice.note,
            "lines": [_compact({"accountNumber": ln.account_number, "accountId": ln.account_id,
                                "description": ln.description, "quantity": _json_number(ln.quantity),
                                "unitPrice": _json_number(ln.unit_price),
                                "isTaxLine": ln.is_tax_line or None}) for ln in invoice.lines],
        })
        return APInvoice.model_validate(self._send("ap_invoice.create", "POST", "/accounting/v1/ap-invoices",
                                                   body=body))

    def post_invoice(self, invoice: APInvoiceDraft, *, absent: bool = False) -> PostingOutcome:
        """Post an AP invoice exactly once: existing -> ``already_existed``; else create, re-checking after
        any ambiguous failure so a lost response never turns into a second invoice.

        ``absent``: a look-up made just before (:meth:`absent_ap_invoices`) found none; go straight to the create."""
        def lookup() -> APInvoice | None:
            return self.find_ap_invoice(invoice.invoice_number, supplier_code=invoice.supplier_code,
                                        supplier_id=invoice.supplier_id)

        with self._trail() as trail:
            record, created, recovered = self._post_once("ap_invoice", lookup, lambda: self.create_ap_invoice(invoice),
                                                         absent=absent)
            self._remember("ap_invoice", record.invoice_number)
            summary = {"id": record.id, "invoiceNumber": record.invoice_number, "supplierCode": record.supplier_code,
                       "voucherNumber": record.voucher_number, "status": record.status,
                       "amount": str(record.amount) if record.amount is not None else None}
        return PostingOutcome("ap_invoice", invoice.invoice_number, record.id, None, created, recovered,
                              summary, tuple(trail))

    # ------------------------------------------------------------ sales orders (customer POs)
    def sales_order_id(self, order: SalesOrderDraft) -> str:
        """Deterministic id for a customer PO, so a repeated create collides instead of duplicating (spec 6.3)."""
        scope = self.config.tenant_id or self.config.customer_id or ""
        return str(uuid.uuid5(_SALES_ORDER_NS, f"{scope}|{order.customer_id}|{order.po_number}"))

    def find_sales_order(self, customer_id: str, po_number: str) -> SalesOrder | None:
        rows = self._get_list("sales_order.find", "/sales/v1/orders",
                              {"customerId": customer_id, "poNumber": po_number})
        matches = [SalesOrder.model_validate(r) for r in rows
                   if r.get("customerId") == customer_id and r.get("poNumber") == po_number]
        if matches:
            self._remember("sales_order", po_number)
        matches.sort(key=lambda m: (m.created_date or datetime.min.replace(tzinfo=UTC), m.id))
        return matches[0] if matches else None

    def absent_sales_orders(self, orders: Sequence[SalesOrderDraft]) -> set[tuple[str, str]] | None:
        """(customer id, PO number) of ``orders`` Plex certainly does not hold; None when a batched look-up
        cannot be trusted now (see :meth:`absent_ap_invoices`)."""
        rows = self._rows_by_number("sales_order", "/sales/v1/orders", ("poNumber",), "poNumber",
                                    [o.po_number for o in orders])
        if rows is None:
            return None
        return {(o.customer_id, o.po_number) for o in orders
                if not any(r.get("customerId") == o.customer_id for r in rows.get(o.po_number, ()))}

    def get_sales_order(self, order_id: str) -> SalesOrder | None:
        row = self._get_one("sales_order.get", f"/sales/v1/orders/{order_id}")
        return SalesOrder.model_validate(row) if row else None

    def create_sales_order(self, order: SalesOrderDraft, *, order_id: str | None = None) -> SalesOrder:
        """``POST sales/v1/orders`` ("Create Customer Purchase Order"), exactly once."""
        body = _compact({
            "id": order_id or self.sales_order_id(order), "customerId": order.customer_id,
            "poNumber": order.po_number, "orderDate": _plex_dt(order.order_date) if order.order_date else None,
            "dueDate": _plex_dt(order.due_date) if order.due_date else None, "note": order.note,
            "lines": [_compact({"partNumber": ln.part_number, "customerPartNumber": ln.customer_part_number,
                                "description": ln.description, "quantity": _json_number(ln.quantity),
                                "unit": ln.unit,
                                "unitPrice": _json_number(ln.unit_price) if ln.unit_price is not None else None,
                                "dueDate": _plex_dt(ln.due_date) if ln.due_date else None})
                      for ln in order.lines] or None,
        })
        return SalesOrder.model_validate(self._send("sales_order.create", "POST", "/sales/v1/orders", body=body))

    def post_sales_order(self, order: SalesOrderDraft, *, absent: bool = False) -> PostingOutcome:
        """Create a customer PO as a sales order exactly once (lookup by customer + PO number, then by id).

        ``absent``: a look-up made just before (:meth:`absent_sales_orders`) found none."""
        order_id = self.sales_order_id(order)

        def lookup() -> SalesOrder | None:
            return self.find_sales_order(order.customer_id, order.po_number) or self.get_sales_order(order_id)

        with self._trail() as trail:
            record, created, recovered = self._post_once(
                "sales_order", lambda: self.find_sales_order(order.customer_id, order.po_number),
                lambda: self.create_sales_order(order, order_id=order_id), recheck=lookup, absent=absent)
            self._remember("sales_order", order.po_number)
            summary = {"id": record.id, "orderNumber": record.order_number, "poNumber": record.po_number,
                       "status": record.status}
        return PostingOutcome("sales_order", order.po_number, record.id, None, created, recovered,
                              summary, tuple(trail))

    # ------------------------------------------------------------ many look-ups in one request
    def _remember(self, kind: str, number: str | None) -> None:
        if not number:
            return
        with self._known_lock:
            known = self._known.setdefault(kind, deque(maxlen=8))
            if number in known:
                known.remove(number)
            known.appendleft(number)

    def _forget(self, kind: str, numbers: Sequence[str]) -> None:
        with self._known_lock:
            known = self._known.get(kind)
            for n in numbers:
                if known is not None and n in known:
                    known.remove(n)

    def _rows_by_number(self, kind: str, path: str, params: tuple[str, ...], field: str,
                        numbers: Sequence[str]) -> dict[str, list[dict[str, Any]]] | None:
        """The rows Plex holds for ``numbers``, by number, from list requests with the filter repeated.

        Plex documents repeated parameters as multi-value filters (spec 2.4) but also ignores filters it
        does not know, and a server that read only one value would make every other record look absent —
        the one mistake that doubles a document. So each request carries two numbers known to exist,
        first and last; the answer counts only if both come back and nothing unasked for does (an
        ignored filter returns everything), and it is not the length of a capped list. Otherwise: None,
        and the caller looks each record up alone. Known numbers come from this client's own creates
        and look-ups; until it has two, every look-up is single.
        """
        numbers = list(dict.fromkeys(n for n in numbers if n))
        if not self.config.batch_lookups or len(numbers) < 2:
            return None
        with self._known_lock:
            witnesses = [n for n in self._known.get(kind, ()) if n not in numbers][:2]
        if len(witnesses) < 2:
            return None
        first, last = witnesses
        found: dict[str, list[dict[str, Any]]] = {}
        size = self.config.lookup_batch_size
        for start in range(0, len(numbers), size):
            asked = [first, *numbers[start:start + size], last]
            query = [(p, n) for p in params for n in asked]
            rows = self._get_list(f"{kind}.find_many", path, query)
            seen = {r.get(field) for r in rows}
            missing = [w for w in witnesses if w not in seen]
            if missing:
                log.warning("plex.batch_lookup.untrusted", kind=kind, reason="a known record did not come back")
                self._forget(kind, missing)
                return None
            if not seen <= set(asked) or len(rows) >= _LIST_CAP:
                log.warning("plex.batch_lookup.untrusted", kind=kind,
                            reason="the filter was ignored" if not seen <= set(asked) else "the list may be capped")
                return None
            for r in rows:
                if r.get(field) in witnesses:
                    continue
                found.setdefault(r.get(field), []).append(r)
        return found

    # ------------------------------------------------------------ idempotent create core
    @contextmanager
    def _trail(self) -> Iterator[list[PlexCall]]:
        outer = _TRAIL.get()
        if outer is not None:  # inside recording(): the caller keeps every call, even of a failed posting
            yield outer
            return
        trail: list[PlexCall] = []
        token = _TRAIL.set(trail)
        try:
            yield trail
        finally:
            _TRAIL.reset(token)

    @contextmanager
    def recording(self) -> Iterator[list[PlexCall]]:
        """Collect every exchange made in this block (this thread), also when a posting raises."""
        trail: list[PlexCall] = []
        token = _TRAIL.set(trail)
        try:
            yield trail
        finally:
            _TRAIL.reset(token)

    def _post_once(self, kind: str, lookup: Callable[[], _T | None], create: Callable[[], _T], *,
                   recheck: Callable[[], _T | None] | None = None, absent: bool = False) -> tuple[_T, bool, bool]:
        """(record, created, recovered): look up; create if absent; never create twice.

        A create that times out, answers 5xx or breaks the connection may have been committed, so the record is
        looked up again (after ``ambiguous_recheck_delay``) before the next create. A 429 was not processed and is
        simply retried after its Retry-After. A rejected create (400 / data-source error) is looked up once more:
        it is usually "already exists" from a race or from our own lost attempt. ``absent``: the caller has
        just looked (many records at once) and found none, so the first look-up is skipped.
        """
        recheck = recheck or lookup
        existing = None if absent else lookup()
        if existing is not None:
            log.info("plex.post.exists", kind=kind)
            return existing, False, False
        policy, ambiguous = self.config.retry, False
        for attempt in range(1, policy.max_attempts + 1):
            try:
                return create(), True, False
            except PlexValidationError:
                found = recheck()
                if found is not None:
                    return found, ambiguous, ambiguous
                raise
            except PlexTransientError as exc:
                if attempt == policy.max_attempts or not self._retryable(exc):
                    raise
                if isinstance(exc, PlexThrottledError):
                    self._sleep(self._wait_for(exc, attempt))
                    continue
                ambiguous = True
                log.warning("plex.post.ambiguous", kind=kind, attempt=attempt, error=type(exc).__name__)
                self._sleep(max(self._backoff(attempt), policy.ambiguous_recheck_delay))
                found = recheck()
                if found is not None:
                    return found, True, True
        raise AssertionError("unreachable")  # the loop either returns or raises

    # ------------------------------------------------------------ SOAP data sources
    def _service(self) -> Any:
        with self._soap_lock:
            if self._soap_service is None:
                acct = self.config.soap
                if acct is None:
                    raise PlexConfigError("no SOAP web-service account configured", operation="soap")
                http = httpx.Client(auth=(acct.username, acct.password.get_secret_value()),
                                    trust_env=self.config.trust_env,
                                    event_hooks={"response": [self._remember_soap_response]})
                transport = _ZeepTransport(http, timeout=self.config.connect_timeout_seconds * 3,
                                           operation_timeout=self.config.timeout_seconds,
                                           connect_timeout=self.config.connect_timeout_seconds)
                # Untrusted XML: no DTDs, no entity expansion, no external references, no huge trees.
                settings = zeep.Settings(strict=False, forbid_dtd=True, forbid_entities=True,
                                         forbid_external=True, xml_huge_tree=False)
                wsdl = acct.wsdl or f"{acct.url}?WSDL"
                try:
                    client = zeep.Client(wsdl, transport=transport, settings=settings)
                except httpx.HTTPStatusError as exc:
                    http.close()
                    status = exc.response.status_code
                    cls = PlexAuthError if status == 401 else PlexServerError
                    raise cls(f"WSDL not loaded (HTTP {status})", operation="soap.wsdl", status=status) from exc
                except httpx.HTTPError as exc:
                    http.close()
                    raise PlexConnectionError(f"WSDL not loaded ({type(exc).__name__})",
                                              operation="soap.wsdl") from exc
                # Target the configured endpoint whatever address the WSDL names (prod, test, simulator).
                self._soap_service = client.create_service(f"{{{DATA_SOURCE_NS}}}ServiceSoap", acct.url)
                self._soap_http = http
            return self._soap_service

    def _remember_soap_response(self, response: httpx.Response) -> None:
        self._soap_local.response = response  # zeep's TransportError drops headers (Retry-After)

    def execute_data_source(self, key: int, inputs: Mapping[str, Any], *, operation: str | None = None,
                            result_error: str | None = "@Result_Error",
                            result_message: str | None = "@Result_Message", retry: bool = True) -> DataSourceResult:
        """``ExecuteDataSource`` over SOAP. Checks HTTP status, then ``Error``, then ``result_error``.

        ``inputs`` maps tenant parameter names (``@`` added when missing) to values; None values are not sent.
        Reads retry transient faults; pass ``retry=False`` for writes (use the posting helpers instead).
        """
        op = operation or f"datasource.{key}"

        def once() -> DataSourceResult:
            return self._execute_once(op, key, inputs, result_error, result_message)
        return self._read(once) if retry else once()

    def _execute_once(self, op: str, key: int, inputs: Mapping[str, Any], result_error: str | None,
                      result_message: str | None) -> DataSourceResult:
        service = self._service()
        params = [{"Name": name if name.startswith("@") else f"@{name}", "Value": str(value),
                   "Required": False, "Output": False} for name, value in inputs.items() if value is not None]
        started = time.perf_counter()
        raw = self._soap_call(op, key, started, lambda: service.ExecuteDataSource(ExecuteDataSourceRequest={
            "DataSourceKey": str(key), "InputParameters": {"InputParameter": params}}))
        result = self._data_source_result(key, raw)
        detail = f"InstanceNo {result.instance_no}"
        self._raise_data_source_error(op, key, started, raw, detail, result.instance_no)
        flag = result.output(result_error) if result_error else None
        if flag not in (None, "", "0", "false", "False"):
            message = (result.output(result_message) if result_message else None) or "data source rejected the call"
            self._record(op, "SOAP", str(key), 200, started, "PlexDataSourceError", detail)
            raise PlexDataSourceError(message, operation=op, result_error=flag, instance_no=result.instance_no)
        self._record(op, "SOAP", str(key), 200, started, "ok", detail)
        return result

    def data_source_template(self, key: int) -> DataSourceTemplate:
        """``GetDataSourceRequestTemplate``: whether this account may run data source ``key`` and which
        inputs it takes, without running it (``gateway check``). NotImplementedError when the WSDL in use
        lacks the operation."""
        service = self._service()
        op = f"datasource.{key}.template"
        try:
            call = service.GetDataSourceRequestTemplate
        except AttributeError:
            raise NotImplementedError("the WSDL in use has no GetDataSourceRequestTemplate operation") from None
        started = time.perf_counter()
        raw = self._soap_call(op, key, started, lambda: call(dataSourceKey=key))
        data = zeep.helpers.serialize_object(raw, dict) or {}
        self._raise_data_source_error(op, key, started, raw, None, data.get("InstanceNo"))
        request = data.get("ExecuteDataSourceRequest") or {}
        params = ((request.get("InputParameters") or {}).get("InputParameter")) or []
        inputs = {str(p["Name"]): bool(p.get("Required")) for p in params if p and p.get("Name") and not p.get("Output")}
        self._record(op, "SOAP", str(key), 200, started, "ok")
        return DataSourceTemplate(key, request.get("DataSourceName"), inputs)

    def _raise_data_source_error(self, op: str, key: int, started: float, raw: Any, detail: str | None,
                                 instance_no: Any) -> None:
        data = zeep.helpers.serialize_object(raw, dict) or {}
        if not data.get("Error"):
            return
        message = str(data.get("Message") or "data source error")
        # SOAP has no status for access problems: the grant failure is only in the text (spec 7, 11.4).
        cls = PlexPermissionError if "not authorized" in message.lower() else PlexDataSourceError
        self._record(op, "SOAP", str(key), 200, started, cls.__name__, detail)
        if cls is PlexPermissionError:
            raise PlexPermissionError(message, operation=op, code=str(data.get("ErrorNo")))
        raise PlexDataSourceError(message, operation=op, error_no=data.get("ErrorNo"), instance_no=instance_no)

    def _soap_call(self, op: str, key: int, started: float, call: Callable[[], Any]) -> Any:
        """One SOAP request; every transport and fault outcome becomes the matching :class:`PlexError`."""
        if self.soap_budget is not None:
            self.soap_budget.acquire()
        self._soap_local.response = None
        try:
            return call()
        except zeep.exceptions.Fault as exc:
            response = getattr(self._soap_local, "response", None)
            if response is not None and response.status_code not in (200, 500):
                # IIS answers 401/403/429/503 with an HTML page; zeep reads any XML-ish body as a fault.
                error = self._soap_transport_error(op, response.status_code)
                self._record(op, "SOAP", str(key), response.status_code, started, type(error).__name__)
                raise error from exc
            server = "server" in str(exc.code or "").lower()
            error: PlexError = (PlexServerError if server else PlexSoapFaultError)(
                f"SOAP fault {exc.code}: {exc.message}", operation=op, status=500, code=str(exc.code))
            self._record(op, "SOAP", str(key), 500, started, type(error).__name__, str(exc.code))
            raise error from exc
        except zeep.exceptions.TransportError as exc:
            error = self._soap_transport_error(op, exc.status_code)
            self._record(op, "SOAP", str(key), exc.status_code, started, type(error).__name__)
            raise error from exc
        except (zeep.exceptions.XMLSyntaxError, zeep.exceptions.XMLParseError) as exc:
            self._record(op, "SOAP", str(key), 200, started, "PlexProtocolError")
            raise PlexProtocolError("unreadable SOAP answer", operation=op) from exc
        except httpx.TimeoutException as exc:
            self._record(op, "SOAP", str(key), None, started, "PlexTimeoutError", type(exc).__name__)
            raise PlexTimeoutError(f"no answer within the timeout ({type(exc).__name__})", operation=op) from exc
        except httpx.TransportError as exc:
            self._record(op, "SOAP", str(key), None, started, "PlexConnectionError", type(exc).__name__)
            raise PlexConnectionError(f"connection failed ({type(exc).__name__})", operation=op) from exc

    def _soap_transport_error(self, op: str, status: int | None) -> PlexError:
        if status == 401:
            return PlexAuthError("web-service credentials rejected (HTTP 401)", operation=op, status=401)
        if status == 403:
            return PlexPermissionError("forbidden (HTTP 403)", operation=op, status=403)
        if status == 429:
            response = getattr(self._soap_local, "response", None)
            retry_after = _retry_after(response, self._clock) if response is not None else None
            if retry_after is not None and self.soap_budget is not None:
                self.soap_budget.hold(retry_after)
            return PlexThrottledError("throttled (HTTP 429)", operation=op, status=429, retry_after=retry_after)
        if status is not None and status >= 500:
            return PlexServerError(f"HTTP {status}", operation=op, status=status)
        if status == 200:
            return PlexProtocolError("unreadable SOAP answer", operation=op, status=200)
        return PlexSoapFaultError(f"HTTP {status}", operation=op, status=status)

    @staticmethod
    def _data_source_result(key: int, raw: Any) -> DataSourceResult:
        data = zeep.helpers.serialize_object(raw, dict) or {}
        rows: list[dict[str, str | None]] = []
        for result_set in ((data.get("ResultSets") or {}).get("ResultSet") or []):
            for row in ((result_set or {}).get("Rows") or {}).get("Row") or []:
                columns = ((row or {}).get("Columns") or {}).get("Column") or []
                rows.append({c["Name"]: c.get("Value") for c in columns if c and c.get("Name")})
        outputs = {o["Name"]: o.get("Value")
                   for o in ((data.get("OutputParameters") or {}).get("OutputParameter") or []) if o and o.get("Name")}
        return DataSourceResult(key, data.get("DataSourceName"), data.get("InstanceNo"), data.get("Message"),
                                tuple(rows), outputs)

    # ------------------------------------------------------------ purchase orders (data sources)
    def _ds_text(self, v: Any) -> Any:
        if isinstance(v, (date, datetime)):
            return v.strftime(self.config.purchase_orders.date_format)
        if isinstance(v, Decimal):
            return format(v, "f")
        return v

    def _ds_inputs(self, binding: DataSourceBinding, values: Mapping[str, Any]) -> dict[str, Any]:
        return {binding.inputs[k]: self._ds_text(v) for k, v in values.items() if k in binding.inputs and v is not None}

    def find_purchase_order(self, po_number: str, supplier_code: str | None = None) -> PurchaseOrderRecord | None:
        """The PO with this number (and supplier) from the lookup data source, or None."""
        cfg = self.config.purchase_orders
        b = cfg.lookup
        result = self.execute_data_source(b.key, self._ds_inputs(b, {"po_number": po_number,
                                                                     "supplier_code": supplier_code}),
                                          operation="purchase_order.find", result_error=cfg.result_error,
                                          result_message=cfg.result_message)
        col = b.columns
        grouped: dict[int, list[dict[str, str | None]]] = {}
        for row in result.rows:
            if row.get(col["po_number"]) != po_number:
                continue  # verify client-side: a data source may match loosely
            if supplier_code and "supplier_code" in col and row.get(col["supplier_code"]) not in (None, supplier_code):
                continue
            try:
                grouped.setdefault(int(row.get(col["po_key"]) or ""), []).append(row)
            except ValueError:
                raise PlexProtocolError(f"PO lookup returned a non-integer {col['po_key']}",
                                        operation="purchase_order.find") from None
        if not grouped:
            return None
        self._remember("purchase_order", po_number)
        if len(grouped) > 1:
            log.warning("plex.purchase_order.ambiguous", po_number=po_number, keys=sorted(grouped))
        po_key = min(grouped)
        rows = grouped[po_key]
        first = rows[0]
        lines = frozenset(int(r[col["line_number"]]) for r in rows
                          if "line_number" in col and (r.get(col["line_number"]) or "").strip().isdigit())
        return PurchaseOrderRecord(po_key, po_number, first.get(col.get("supplier_code", "")),
                                   first.get(col.get("status", "")), first.get(col.get("po_date", "")), lines)

    def absent_purchase_orders(self, orders: Sequence[PurchaseOrderDraft]) -> set[str] | None:
        """PO numbers of ``orders`` no Plex PO carries at all, read from Connect's PO list (spec 6.4: both
        spellings of the number filter, repeated); None when that cannot be trusted now or there are no
        Connect credentials. A number some PO has, whatever its supplier, is left to the look-up data source."""
        if self.config.api_key is None and self.config.oauth is None and not self._api_key_auth.can_refresh:
            return None
        rows = self._rows_by_number("purchase_order", "/purchasing/v1/purchase-orders", ("pONumber", "poNumber"),
                                    "poNumber", [o.po_number for o in orders])
        if rows is None:
            return None
        return {o.po_number for o in orders if not rows.get(o.po_number)}

    def lines_go_with_header(self) -> bool:
        """Whether the create data source takes the lines too (``create.inputs.lines``)."""
        return "lines" in self.config.purchase_orders.create.inputs

    def create_purchase_order_header(self, po: PurchaseOrderDraft) -> int:
        """Run the create data source once (with the lines, when it takes them); returns the new PO key."""
        cfg = self.config.purchase_orders
        b = cfg.create
        values = {"po_number": po.po_number, "supplier_code": po.supplier_code, "po_date": po.po_date,
                  "due_date": po.due_date, "currency_code": po.currency_code, "terms": po.terms, "note": po.note}
        if self.lines_go_with_header():
            names = cfg.line_fields
            values["lines"] = json.dumps([
                {names[k]: self._ds_text(v) for k, v in line.model_dump().items() if k in names and v is not None}
                for line in po.lines])
        result = self.execute_data_source(b.key, self._ds_inputs(b, values), operation="purchase_order.create",
                                          result_error=cfg.result_error, result_message=cfg.result_message,
                                          retry=False)
        key = result.output(b.outputs["po_key"])
        if not key or not key.strip().isdigit():
            raise PlexProtocolError(f"create data source returned no {b.outputs['po_key']}",
                                    operation="purchase_order.create")
        return int(key)

    def add_purchase_order_line(self, po_key: int, line: PurchaseOrderLine) -> None:
        """Run the add-line data source once."""
        cfg = self.config.purchase_orders
        b = cfg.add_line
        if b is None:
            raise PlexValidationError("no add_line data source configured", operation="purchase_order.add_line")
        values = {"po_key": po_key, "line_number": line.line_number, "part_number": line.part_number,
                  "supplier_part_number": line.supplier_part_number, "description": line.description,
                  "quantity": line.quantity, "unit": line.unit, "unit_price": line.unit_price,
                  "due_date": line.due_date}
        self.execute_data_source(b.key, self._ds_inputs(b, values), operation="purchase_order.add_line",
                                 result_error=cfg.result_error, result_message=cfg.result_message, retry=False)

    def post_purchase_order(self, po: PurchaseOrderDraft, *, absent: bool = False) -> PostingOutcome:
        """Create a buyer-side PO exactly once, then add the lines Plex does not have yet.

        Resumable: a PO whose header exists but whose lines are incomplete (an earlier run died half-way) gets
        only its missing lines. Each header and line create follows the look-up-before-retry rule.
        ``absent``: a look-up made just before (:meth:`absent_purchase_orders`) found no PO with this number.
        """
        def lookup() -> PurchaseOrderRecord | None:
            return self.find_purchase_order(po.po_number, po.supplier_code)

        with self._trail() as trail:
            record, created, recovered = self._post_once("purchase_order", lookup, lambda: self._header(po),
                                                         absent=absent)
            self._remember("purchase_order", po.po_number)
            # Lines sent with the header were created by the create (or are on the PO the re-check found).
            added = sorted(record.line_numbers) if created and self.lines_go_with_header() else []
            missing = [line for line in po.lines if line.line_number not in record.line_numbers]
            if self.config.purchase_orders.add_line is None and missing:
                log.warning("plex.purchase_order.lines_not_sent", po_number=po.po_number, lines=len(missing),
                            reason="no add_line data source configured")
            if self.config.purchase_orders.add_line is not None:
                for line in missing:

                    def line_present(n: int = line.line_number) -> PurchaseOrderRecord | None:
                        current = lookup()
                        return current if current is not None and n in current.line_numbers else None

                    def add(ln: PurchaseOrderLine = line) -> PurchaseOrderRecord:
                        self.add_purchase_order_line(record.po_key, ln)
                        return record
                    # The lookup above already showed the line missing, so go straight to the create.
                    self._post_once("purchase_order_line", lambda: None, add, recheck=line_present)
                    added.append(line.line_number)
            # Every line add either succeeded or was found on re-check: no need to read the PO back.
            summary = {"PO_Key": record.po_key, "poNumber": po.po_number, "supplierCode": po.supplier_code,
                       "lines": sorted(record.line_numbers | set(added)), "linesAdded": len(added)}
        return PostingOutcome("purchase_order", po.po_number, None, record.po_key, created, recovered,
                              summary, tuple(trail), lines_added=len(added))

    def _header(self, po: PurchaseOrderDraft) -> PurchaseOrderRecord:
        key = self.create_purchase_order_header(po)
        lines = frozenset(ln.line_number for ln in po.lines) if self.lines_go_with_header() else frozenset()
        return PurchaseOrderRecord(key, po.po_number, po.supplier_code, None, po.po_date.isoformat(), lines)
