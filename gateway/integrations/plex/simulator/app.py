"""Plex Manufacturing Cloud simulator: Connect REST, the classic SOAP Data Source service and JSON data sources.

Faithful to ``specs/plex.md`` section 11, in one FastAPI app:

* **Connect REST** (``/mdm/v1/...``, ``/purchasing/v1/...``, ``/accounting/v1/...``, ``/sales/v1/...``):
  ``X-Plex-Connect-Api-Key`` (+ ``X-Plex-Connect-Tenant-Id`` / ``X-Plex-Connect-Customer-Id``), or a bearer
  token from ``POST /op/token`` (OAuth2 client credentials; tokens expire on the simulator clock). Bare JSON
  arrays, no paging (``limit``/``offset`` and unknown parameters silently ignored), UTC ``...Z`` dates with
  7 fraction digits, date-only filters rejected, ``{code, message, errors[]}`` error bodies, 401
  ``REQUEST_NOT_AUTHENTICATED`` for bad/expired keys, unsubscribed products and foreign tenants.
* **SOAP** ``/DataSource/Service.asmx`` (path case-insensitive; ``?WSDL`` serves ``plex.wsdl`` with this
  server's address): ``ExecuteDataSource`` and ``ExecuteDataSourcePost``, Basic auth per company (PCN) web
  service account, data-source errors as HTTP 200 ``Error=true`` plus ``@Result_Error``/``@Result_Message``.
* **JSON data sources** ``/api/datasources/{key}/execute[?format=2]`` over the same data-source engine.
* A 200 requests/min sliding window per key (429, with or without ``Retry-After``).

Simulated data sources (keys are :class:`SimSettings` fields): ``PO_Add_Sim`` (90001) creates a buyer-side PO
header (and its lines, given as JSON in ``@Lines``, all or nothing), ``PO_Get_Sim`` (90002) returns one row per PO line, ``PO_Line_Add_Sim`` (90003) adds a line. They write
to the same store the REST ``purchasing/v1/purchase-orders`` reads.

Test/demo hooks (not part of Plex, no auth, loopback only): ``/_sim/faults`` (GET/POST/DELETE fault rules),
``/_sim/state`` (records, request counters per surface, request log), ``/_sim/reset``, ``/_sim/clock``
(GET; POST ``{"advance_seconds": n}`` or ``{"set": iso}``), ``/_sim/config`` (GET/PATCH :class:`SimSettings`).
The same controls exist in-process on :class:`PlexSim`::

    with run_plex_sim() as sim:
        sim.add_fault(kind="timeout_after_commit", surface="rest", method="POST",
                      path="/accounting/v1/ap-invoices", delay=1.0)
        ... PlexConfig(connect_url=sim.base_url, soap=SoapAccount(url=sim.soap_url, ...)) ...
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import hashlib
import itertools
import json
import random
import re
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import escape as xml_escape

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route
from lxml import etree
from pydantic import BaseModel, Field

from gateway.sandbox.server import RunningServer, serve_app

__all__ = [
    "DS_PO_ADD",
    "DS_PO_GET",
    "DS_PO_LINE_ADD",
    "PCN_MAIN",
    "PCN_SECOND",
    "SIM_API_KEY",
    "SIM_CLIENT_ID",
    "SIM_CLIENT_SECRET",
    "SIM_LIMITED_API_KEY",
    "SIM_SOAP_PASSWORD",
    "SIM_SOAP_READONLY_USER",
    "SIM_SOAP_USER",
    "SOAP_PATH",
    "FaultRule",
    "PlexSim",
    "SimApiKey",
    "SimOAuthClient",
    "SimSettings",
    "SimSoapUser",
    "SimTenant",
    "create_app",
    "run_plex_sim",
]

NS_DS = "http://www.plexus-online.com/DataSource"
NS_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
NS_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
SOAP_PATH = "/DataSource/Service.asmx"
WSDL_FILE = Path(__file__).with_name("plex.wsdl")

# Sandbox credentials: fake, loopback only, published so tests and the demo can use them.
PCN_MAIN = "310001"
PCN_SECOND = "310002"
SIM_API_KEY = "sim-connect-key-acme"
SIM_LIMITED_API_KEY = "sim-connect-key-mdm-only"
SIM_CLIENT_ID = "sim-gateway-client"
SIM_CLIENT_SECRET = "sim-gateway-client-secret"
SIM_SOAP_USER = "AcmeDetroitWs@plex.com"
SIM_SOAP_READONLY_USER = "AcmeDetroitReadWs@plex.com"
SIM_SOAP_PASSWORD = "sim-ws-password"

DS_PO_ADD = 90001
DS_PO_GET = 90002
DS_PO_LINE_ADD = 90003

_NOT_AUTHENTICATED = {"code": "REQUEST_NOT_AUTHENTICATED", "message": "The request could not be authenticated."}
_PLEX_DT = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HTML_5XX = "<html><head><title>{s} Error</title></head><body><h1>{s}</h1><p>The gateway failed.</p></body></html>"

# --------------------------------------------------------------------------------------------- settings


class SimTenant(BaseModel):
    """A Plex tenant (one PCN). ``id`` is derived from the seed when omitted."""

    code: str
    pcn: str
    id: str | None = None


class SimGrant(BaseModel):
    """What a Connect credential may reach: default tenant, other tenants, subscribed products, expiry."""

    default_pcn: str = PCN_MAIN
    allowed_pcns: list[str] = Field(default_factory=list)  # besides the default
    products: list[str] | None = None  # path prefixes without the leading slash ("mdm/"); None: all
    expires_at: datetime | None = None  # simulator clock; Consumer Keys expire (31 days on one tenant)


class SimApiKey(SimGrant):
    key: str


class SimOAuthClient(SimGrant):
    client_id: str
    client_secret: str


class SimSoapUser(BaseModel):
    """A classic web-service account: it belongs to exactly one PCN and is granted data sources."""

    username: str
    password: str
    pcn: str
    data_sources: list[int] | None = None  # None: every data source
    disabled_at: datetime | None = None


def _default_api_keys() -> list[SimApiKey]:
    return [SimApiKey(key=SIM_API_KEY, allowed_pcns=[PCN_SECOND]),
            SimApiKey(key=SIM_LIMITED_API_KEY, products=["mdm/"])]


def _default_soap_users() -> list[SimSoapUser]:
    return [SimSoapUser(username=SIM_SOAP_USER, password=SIM_SOAP_PASSWORD, pcn=PCN_MAIN),
            SimSoapUser(username="AcmeMexicoWs@plex.com", password=SIM_SOAP_PASSWORD, pcn=PCN_SECOND),
            SimSoapUser(username=SIM_SOAP_READONLY_USER, password=SIM_SOAP_PASSWORD, pcn=PCN_MAIN,
                        data_sources=[DS_PO_GET])]


class SimSettings(BaseModel):
    """Simulator configuration; every field can be changed at run time through ``PATCH /_sim/config``."""

    model_config = {"validate_assignment": True}

    seed: int = 7
    tenants: list[SimTenant] = Field(default_factory=lambda: [SimTenant(code="ACME", pcn=PCN_MAIN),
                                                              SimTenant(code="ACMEMX", pcn=PCN_SECOND)])
    suppliers_per_tenant: int = 24
    api_keys: list[SimApiKey] = Field(default_factory=_default_api_keys)
    oauth_clients: list[SimOAuthClient] = Field(default_factory=lambda: [
        SimOAuthClient(client_id=SIM_CLIENT_ID, client_secret=SIM_CLIENT_SECRET, allowed_pcns=[PCN_SECOND])])
    soap_users: list[SimSoapUser] = Field(default_factory=_default_soap_users)
    token_ttl_seconds: int = 600
    rate_limit_per_minute: int | None = 200  # sliding 60 s window per key/token/user; None: off
    rate_limit_retry_after: bool = True  # False: 429s carry only the "in N seconds" message
    unique_ap_invoice: bool = True  # (supplierId, invoiceNumber); Plex's real rule is unknown (spec 13.2)
    unique_purchase_order: bool = True  # (supplier, PO_No) in PO_Add_Sim
    # What PO_Add_Sim does with a PO number the supplier already has, when unique_purchase_order is set
    # (tenants' data sources differ, which `gateway check --probe-duplicates` finds out): "fail" refuses it
    # (@Result_Error), "update" changes the existing PO and returns its key, "create" makes a second PO.
    duplicate_purchase_order: Literal["fail", "update", "create"] = "fail"
    # The same for PO_Line_Add_Sim and a line number the PO already has.
    duplicate_po_line: Literal["fail", "update", "create"] = "fail"
    # GL accounts every tenant starts with (mdm/v1/chart-of-accounts): (number, name, category, active).
    gl_accounts: list[tuple[str, str, str, bool]] = Field(default_factory=lambda: [
        ("5000-100-00", "Purchased Materials", "Expense", True), ("2300-000-00", "Sales Tax Payable", "Liability", True),
        ("6100-000-00", "Freight In", "Expense", True), ("5900-000-00", "Old Materials (closed)", "Expense", False)])
    purchase_order_post_status: Literal[404, 405] = 405  # purchasing/v1/purchase-orders is read-only
    ap_invoice_row_cap: int | None = None  # "limit of 1,000 invoices per call"
    po_add_key: int = DS_PO_ADD
    po_get_key: int = DS_PO_GET
    po_line_add_key: int = DS_PO_LINE_ADD
    request_log_limit: int = 5000


FaultKind = Literal[
    # answered instead of the real handler
    "server_error", "throttle_retry_after", "throttle_no_header", "throttle_bare", "forbidden", "unauthorized",
    # delay, then the real handler
    "slow",
    # the real handler commits, then the client loses the answer
    "timeout_after_commit", "error_after_commit", "drop_after_commit", "malformed",
    # change how list handlers filter
    "ignore_filter", "single_value_filter", "empty_list_404",
]
_PRE = {"server_error", "throttle_retry_after", "throttle_no_header", "throttle_bare", "forbidden", "unauthorized"}
_POST = {"timeout_after_commit", "error_after_commit", "drop_after_commit", "malformed"}
_MODIFIERS = {"ignore_filter", "single_value_filter", "empty_list_404"}


class FaultRule(BaseModel):
    """One injected fault. Matches on surface, method, path (prefix, or glob with ``*``) and operation.

    ``operation`` matches SOAP/JSON data-source calls by key (``"90001"``), SOAP operation name
    (``"ExecuteDataSource"``) or both (``"ExecuteDataSource:90001"``). ``times`` is how often it fires
    (None: forever; modifiers such as ``ignore_filter`` fire once per affected request, so usually None),
    ``skip`` lets that many matches pass first, ``probability`` draws from the seeded RNG.
    """

    kind: FaultKind
    surface: Literal["rest", "soap", "datasource", "token", "*"] = "*"
    method: str | None = None
    path: str | None = None
    operation: str | None = None
    status: int | None = None  # server_error (500/502/503/504), error_after_commit, SOAP throttle (429/503)
    retry_after: int = 5  # seconds, for throttle_* (header and/or message)
    delay: float = 1.0  # seconds, for slow and timeout_after_commit
    param: str | None = None  # ignore_filter / single_value_filter: the query parameter it changes
    times: int | None = 1
    skip: int = 0
    probability: float = 1.0
    id: int = 0
    seen: int = 0
    fired: int = 0


# --------------------------------------------------------------------------------------------- helpers


class _RestError(Exception):
    def __init__(self, status: int, code: str, message: str, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.errors, self.headers = errors, headers or {}

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _invalid(*errors: tuple[str, str]) -> _RestError:
    return _RestError(400, "REQUEST_VALIDATION_FAILED", "One or more fields are not valid.",
                      [{"code": c, "message": m} for c, m in errors])


def stamp(dt: datetime) -> str:
    """Plex's timestamp shape: UTC, ``Z``, seven fraction digits (.NET ticks)."""
    return dt.astimezone(UTC).isoformat(timespec="microseconds")[:26] + "0Z"  # strftime costs 3 times more


def parse_plex_datetime(text: str) -> datetime | None:
    """Parse ``YYYY-MM-DDThh:mm[:ss[.fffffff]]Z``; anything else (date-only, offsets, spaces) is None."""
    m = _PLEX_DT.fullmatch(text or "")
    if not m:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0),
                        int((frac or "0").ljust(6, "0")[:6]), tzinfo=UTC)
    except ValueError:
        return None


def _filter_dt(name: str, value: str) -> datetime:
    parsed = parse_plex_datetime(value)
    if parsed is None:
        raise _RestError(400, "ARGUMENT_INVALID", f"The value '{value}' is not valid for {name}.")
    return parsed


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child(elem: Any, name: str) -> Any:
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _number(d: Decimal) -> float | int:
    return int(d) if d == d.to_integral_value() else float(d)


@dataclass
class _DsDef:
    key: int
    name: str
    inputs: list[tuple[str, bool, str]]  # (name, required, type)
    outputs: list[str]
    columns: list[str]
    writes: bool


@dataclass
class _DsResult:
    error: bool = False
    error_no: int = 0
    message: str = "Success"
    json_status: int = 200
    json_code: str | None = None
    name: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, str | None]] = field(default_factory=list)
    outputs: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def failed(cls, error_no: int, message: str, status: int, code: str, name: str = "") -> _DsResult:
        return cls(error=True, error_no=error_no, message=message, json_status=status, json_code=code, name=name)


@dataclass
class _Caller:
    tenant: SimTenant
    grant: SimGrant


_SUPPLIER_NAMES = [
    "Apex Fasteners", "Borealis Steel", "Cascade Polymers", "Delta Bearings", "Evergreen Packaging",
    "Fulcrum Castings", "Granite Tooling", "Harbor Logistics", "Ironwood Forge", "Juniper Electronics",
    "Keystone Springs", "Lakeside Coatings", "Midwest Plastics Inc", "Northstar Wire", "Orion Gaskets",
    "Pinnacle Machining", "Quarry Abrasives", "Redline Hydraulics", "Summit Alloys", "Tri-County Freight",
    "Unity Seals", "Vanguard Motors", "Westbrook Paper", "Yardley Chemicals", "Zenith Optics",
]


# --------------------------------------------------------------------------------------------- simulator


class PlexSim:
    """In-memory Plex store, data-source engine, clock, rate windows and fault rules.

    Thread-safe: the HTTP app (event loop thread) and tests (their own thread) share it.
    """

    def __init__(self, settings: SimSettings | None = None, **overrides: Any) -> None:
        base = settings or SimSettings()
        self.settings = SimSettings.model_validate({**base.model_dump(), **overrides}) if overrides else base
        self._initial_settings = self.settings.model_copy(deep=True)
        self._lock = threading.RLock()
        self.server: RunningServer | None = None
        self.reset()

    # ---------------------------------------------------------------- lifecycle
    def reset(self, *, keep_settings: bool = False) -> None:
        """Back to the seeded state: data, clock, tokens, windows, faults, counters (settings too, unless kept)."""
        with self._lock:
            if not keep_settings:
                self.settings = self._initial_settings.model_copy(deep=True)
            s = self.settings
            self._rng = random.Random(s.seed)
            self._fault_rng = random.Random(s.seed ^ 0xFA017)
            self._clock_offset = timedelta(0)
            self._key_seq = itertools.count(500001)
            self._line_key_seq = itertools.count(800001)
            self._voucher_seq = itertools.count(20001)
            self._order_seq = itertools.count(70001)
            self._instance_seq = itertools.count(700001)
            self._fault_ids = itertools.count(1)
            self.faults: list[FaultRule] = []
            self.tokens: dict[str, tuple[str, datetime]] = {}  # token -> (client_id, expires_at)
            self.tokens_issued = 0
            self._windows: dict[str, deque[float]] = {}
            self.requests: Counter[str] = Counter()
            self.responses: Counter[str] = Counter()
            self.request_log: deque[dict[str, Any]] = deque(maxlen=s.request_log_limit)
            self.suppliers: dict[str, dict[str, Any]] = {}
            self.customers: dict[str, dict[str, Any]] = {}
            self.purchase_orders: dict[str, dict[str, Any]] = {}
            self.ap_invoices: dict[str, dict[str, Any]] = {}
            self.sales_orders: dict[str, dict[str, Any]] = {}
            # Record-flow resources per PCN (parts, containers, accounts, ...): see simulator/records.py
            self.records: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
            # Number -> ids, so a look-up by PO or invoice number costs the same with 10 or 10,000 records.
            self._numbers: dict[str, dict[str, list[str]]] = {
                "ap_invoices": {}, "purchase_orders": {}, "sales_orders": {}}
            for tenant in s.tenants:
                if tenant.id is None:
                    tenant.id = self._uuid()
            for tenant in s.tenants:
                self._seed_tenant(tenant)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _seed_tenant(self, tenant: SimTenant) -> None:
        rng, now = self._rng, self.now()
        twin = "Midwest Plastics Inc"
        names = [n for n in _SUPPLIER_NAMES if n != twin]
        rng.shuffle(names)
        count = self.settings.suppliers_per_tenant
        for i in range(count):
            # Two suppliers share a name on purpose: matching by name alone must not auto-pick (spec 11.5.1).
            name = twin if i in (0, count - 1) else names[i % len(names)]
            created = now - timedelta(days=rng.randint(400, 2000), seconds=rng.randint(0, 86399))
            modified = now - timedelta(days=rng.randint(2, 399), seconds=rng.randint(0, 86399))
            sid = self._uuid()
            self.suppliers[sid] = {
                "id": sid, "code": f"{re.sub(r'[^A-Z]', '', name.upper())[:6]}{i:02d}", "oldCode": "",
                "name": name, "language": "English", "category": rng.choice(["Material", "Service", "Freight"]),
                "status": "Active" if rng.random() > 0.1 else "Inactive", "type": "Supplier",
                "parentSupplierId": None, "webAddress": "", "contactNote": "", "note": "",
                "createdById": None, "createdDate": stamp(created), "modifiedById": None,
                "modifiedDate": stamp(modified), "_tenant": tenant.pcn,
            }
        for i in range(1, 5):
            cid = self._uuid()
            created = now - timedelta(days=rng.randint(100, 900))
            self.customers[cid] = {"id": cid, "code": f"CUST{i:02d}", "name": f"Customer {i} Corp",
                                   "status": "Active", "createdDate": stamp(created),
                                   "modifiedDate": stamp(created), "_tenant": tenant.pcn}
        # The chart of accounts AP invoices are booked to (records.seed_records adds a flow's worth more).
        accounts = self.records.setdefault(tenant.pcn, {}).setdefault("accounts", {})
        for number, name, category, active in self.settings.gl_accounts:
            aid = self._uuid()
            accounts[aid] = {"id": aid, "accountNumber": number, "name": name, "categoryType": category,
                             "active": active, "inactiveDate": None if active else stamp(now - timedelta(days=30)),
                             "createdDate": stamp(now - timedelta(days=900)),
                             "modifiedDate": stamp(now - timedelta(days=900)), "_tenant": tenant.pcn}
        suppliers = [r for r in self.suppliers.values() if r["_tenant"] == tenant.pcn]
        for i in range(3):
            sup = suppliers[i]
            self._store_po(tenant, sup, f"PO-{tenant.code}-{1000 + i}", now - timedelta(days=30 - i),
                           None, "USD", "Net 30", "", created=now - timedelta(days=30 - i))
            self._store_ap_invoice(tenant, sup, {
                "invoiceNumber": f"SEED-{tenant.code}-{i + 1}", "invoiceDate": stamp(now - timedelta(days=10)),
                "currencyCode": "USD", "lines": [{"accountNumber": "5000-100-00", "quantity": 1,
                                                  "unitPrice": 100 + i}]})

    # ---------------------------------------------------------------- clock
    def now(self) -> datetime:
        return datetime.now(UTC) + self._clock_offset

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._clock_offset += timedelta(seconds=seconds)
            return self.now()

    def set_clock(self, when: datetime) -> datetime:
        with self._lock:
            self._clock_offset = when.astimezone(UTC) - datetime.now(UTC)
            return self.now()

    # ---------------------------------------------------------------- serving
    @property
    def base_url(self) -> str:
        if self.server is None:
            raise RuntimeError("simulator is not being served; use run_plex_sim()")
        return self.server.base_url

    @property
    def soap_url(self) -> str:
        return self.base_url + SOAP_PATH

    def serve(self, **options: Any) -> RunningServer:
        self.server = serve_app(create_app(self), **options)
        return self.server

    # ---------------------------------------------------------------- tenants and credentials
    def tenant(self, *, pcn: str | None = None, tenant_id: str | None = None) -> SimTenant | None:
        for t in self.settings.tenants:
            if (pcn is not None and t.pcn == pcn) or (tenant_id is not None and t.id == tenant_id):
                return t
        return None

    def issue_token(self, client_id: str, client_secret: str) -> dict[str, Any] | None:
        with self._lock:
            client = next((c for c in self.settings.oauth_clients if c.client_id == client_id), None)
            if client is None or client.client_secret != client_secret:
                return None
            token = base64.urlsafe_b64encode(self._rng.getrandbits(256).to_bytes(32, "big")).decode().rstrip("=")
            ttl = self.settings.token_ttl_seconds
            self.tokens[token] = (client_id, self.now() + timedelta(seconds=ttl))
            self.tokens_issued += 1
            return {"access_token": token, "token_type": "Bearer", "expires_in": ttl}

    def authenticate_rest(self, request: Request) -> _Caller:
        """Connect auth: bearer token or API-key header, then tenant headers, then product subscription."""
        now = self.now()
        auth = request.headers.get("authorization", "")
        grant: SimGrant | None
        if auth[:7].lower() == "bearer ":
            entry = self.tokens.get(auth[7:].strip())
            client = next((c for c in self.settings.oauth_clients if entry and c.client_id == entry[0]), None)
            if entry is None or client is None or entry[1] <= now:
                raise _RestError(401, **_NOT_AUTHENTICATED,
                                 headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            grant = client
        else:
            key = request.headers.get("x-plex-connect-api-key")
            grant = next((k for k in self.settings.api_keys if key is not None and k.key == key), None)
        if grant is None or (grant.expires_at is not None and grant.expires_at <= now):
            raise _RestError(401, **_NOT_AUTHENTICATED)
        tenant_id = request.headers.get("x-plex-connect-tenant-id")
        pcn = request.headers.get("x-plex-connect-customer-id")
        if tenant_id:
            tenant = self.tenant(tenant_id=tenant_id)
        elif pcn:
            tenant = self.tenant(pcn=pcn)
        else:
            tenant = self.tenant(pcn=grant.default_pcn)
        if tenant is None or tenant.pcn not in {grant.default_pcn, *grant.allowed_pcns}:
            raise _RestError(401, **_NOT_AUTHENTICATED)
        relative = request.url.path.lstrip("/")
        if grant.products is not None and not any(relative.startswith(p) for p in grant.products):
            raise _RestError(401, **_NOT_AUTHENTICATED)  # unsubscribed product: 401, not 403 (spec 2.2)
        return _Caller(tenant, grant)

    def soap_user(self, authorization: str) -> SimSoapUser | None:
        creds = _basic_credentials(authorization)
        if creds is None:
            return None
        user = next((u for u in self.settings.soap_users if u.username == creds[0]), None)
        if user is None or user.password != creds[1]:
            return None
        if user.disabled_at is not None and user.disabled_at <= self.now():
            return None
        return user

    # ---------------------------------------------------------------- faults
    def add_fault(self, **rule: Any) -> FaultRule:
        """Add a :class:`FaultRule` (keyword arguments are its fields); returns it with its ``id``."""
        with self._lock:
            fault = FaultRule(**{k: v for k, v in rule.items() if k not in {"id", "seen", "fired"}})
            fault.id = next(self._fault_ids)
            self.faults.append(fault)
            return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def _matches(self, rule: FaultRule, surface: str, method: str, path: str, ops: set[str]) -> bool:
        if rule.surface not in ("*", surface):
            return False
        if rule.method and rule.method.upper() != method:
            return False
        if rule.path:
            if "*" in rule.path or "?" in rule.path:
                if not fnmatch.fnmatchcase(path, rule.path):
                    return False
            elif not path.startswith(rule.path):
                return False
        return not rule.operation or rule.operation in ops

    def _take(self, kinds: set[str], surface: str, method: str, path: str, ops: set[str],
              param: str | None = None) -> FaultRule | None:
        with self._lock:
            for rule in self.faults:
                if rule.kind not in kinds or (param is not None and rule.param != param):
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if not self._matches(rule, surface, method, path, ops):
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip or self._fault_rng.random() >= rule.probability:
                    continue
                rule.fired += 1
                return rule
        return None

    def take_fault(self, surface: str, method: str, path: str, ops: set[str]) -> FaultRule | None:
        return self._take(_PRE | _POST | {"slow"}, surface, method, path, ops)

    def unfire(self, rule: FaultRule) -> None:
        """The handler did not commit (e.g. validation error): the after-commit fault has not happened."""
        with self._lock:
            rule.fired -= 1

    def ignored_filter(self, method: str, path: str, param: str) -> bool:
        return self._take({"ignore_filter"}, "rest", method, path, set(), param) is not None

    def filter_values(self, method: str, path: str, param: str, values: list[str]) -> list[str]:
        """The values of a repeated filter the list honours: all of them (``?a=1&a=2``, spec 2.4), or
        only the last under a ``single_value_filter`` fault (how a tenant reading one value would act)."""
        if len(values) > 1 and self._take({"single_value_filter"}, "rest", method, path, set(), param) is not None:
            return values[-1:]
        return values

    def empty_list_404(self, method: str, path: str) -> bool:
        return self._take({"empty_list_404"}, "rest", method, path, set()) is not None

    # ---------------------------------------------------------------- metering
    def classify(self, method: str, path: str, query: str, body: bytes) -> tuple[str, set[str]]:
        """(surface, operation identifiers) of a request, for counters and fault matching."""
        if path == SOAP_PATH:
            if method == "GET":
                return "soap", {"WSDL"}
            op, key = _soap_call_info(body)
            return "soap", {x for x in (op, key, f"{op}:{key}" if op and key else None) if x}
        if path == "/op/token":
            return "token", set()
        if path.startswith("/api/datasources"):
            m = re.fullmatch(r"/api/datasources/(\d+)/execute", path)
            return "datasource", {m.group(1)} if m else set()
        return "rest", set()

    def log_request(self, surface: str, method: str, path: str, ops: set[str]) -> dict[str, Any]:
        with self._lock:
            self.requests[surface] += 1
            key = next((o for o in ops if o.isdigit()), None)
            name = next((o for o in ops if not o.isdigit() and ":" not in o), None)
            entry = {"at": stamp(self.now()), "surface": surface, "method": method, "path": path,
                     "operation": key or name, "soap_operation": name if surface == "soap" else None,
                     "status": None, "fault": None}
            self.request_log.append(entry)
            return entry

    def log_response(self, surface: str, entry: dict[str, Any], status: int) -> None:
        with self._lock:
            entry["status"] = status
            self.responses[f"{surface}:{status}"] += 1

    def rate_check(self, surface: str, headers: dict[str, str]) -> int | None:
        """Sliding 60 s window per credential; returns seconds to wait when over the limit."""
        limit = self.settings.rate_limit_per_minute
        if not limit or surface not in ("rest", "datasource"):
            return None
        ident = headers.get("x-plex-connect-api-key") or headers.get("authorization") or "anonymous"
        ident = hashlib.sha256(ident.encode()).hexdigest()[:16]  # never keep the credential itself
        now = self.now().timestamp()
        with self._lock:
            window = self._windows.setdefault(ident, deque())
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= limit:
                return max(1, int(window[0] + 60 - now + 0.999))
            window.append(now)
            return None

    # ---------------------------------------------------------------- store: writes shared by REST and SOAP
    def _store_po(self, tenant: SimTenant, supplier: dict[str, Any], po_number: str, po_date: datetime,
                  due_date: datetime | None, currency: str, terms: str, note: str,
                  created: datetime | None = None) -> dict[str, Any]:
        now = created or self.now()
        pid = self._uuid()
        po = {"id": pid, "poNumber": po_number, "currencyCode": currency or "USD", "status": "Open",
              "active": True, "receive": True, "type": "Standard", "supplierId": supplier["id"],
              "supplierAddressId": None, "poDate": stamp(po_date), "terms": terms or "", "lineItemCount": 0,
              "lineItemTotal": 0, "dueDate": stamp(due_date) if due_date else None, "note": note or "",
              "blanketOrder": False, "createdDate": stamp(now), "modifiedDate": stamp(now),
              "_tenant": tenant.pcn, "_poKey": next(self._key_seq), "_supplierCode": supplier["code"],
              "_lines": []}
        self.purchase_orders[pid] = po
        self._numbers["purchase_orders"].setdefault(po_number, []).append(pid)
        return po

    def _store_ap_invoice(self, tenant: SimTenant, supplier: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        now = self.now()
        lines, amount = [], Decimal(0)
        for line in body.get("lines") or []:
            qty = _decimal(line.get("quantity", 1)) or Decimal(0)
            price = _decimal(line.get("unitPrice", 0)) or Decimal(0)
            amount += qty * price
            lines.append({**line, "lineId": self._uuid()})
        iid = self._uuid()
        record = {
            "id": iid, "invoiceNumber": body["invoiceNumber"], "supplierId": supplier["id"],
            "supplierCode": supplier["code"], "supplierAddressId": None, "terms": body.get("terms"),
            "currencyCode": body.get("currencyCode") or "USD", "status": "Open", "invoiceDate": body["invoiceDate"],
            "dueDate": body.get("dueDate"), "poNumber": body.get("poNumber"), "note": body.get("note"),
            "voucherNumber": f"V-{next(self._voucher_seq)}", "booked": False, "amount": _number(amount),
            "balance": _number(amount), "paid": False, "transactionDate": stamp(now), "createdDate": stamp(now),
            "modifiedDate": stamp(now), "lines": lines, "_tenant": tenant.pcn,
        }
        self.ap_invoices[iid] = record
        self._numbers["ap_invoices"].setdefault(record["invoiceNumber"], []).append(iid)
        return record

    # ---------------------------------------------------------------- data sources
    def data_sources(self) -> dict[int, _DsDef]:
        s = self.settings
        return {
            s.po_add_key: _DsDef(s.po_add_key, "PO_Add_Sim", [
                ("Supplier_Code", True, "string"), ("PO_No", True, "string"), ("PO_Date", False, "date"),
                ("Due_Date", False, "date"), ("Currency_Code", False, "string"), ("Terms", False, "string"),
                ("Note", False, "string"), ("Lines", False, "string")],
                ["PO_Key", "Result_Error", "Result_Message"], [], True),
            s.po_get_key: _DsDef(s.po_get_key, "PO_Get_Sim", [
                ("PO_No", True, "string"), ("Supplier_Code", False, "string")], [],
                ["PO_Key", "PO_No", "Supplier_Code", "PO_Date", "Status", "PO_Line_Key", "Line_No", "Part_No",
                 "Quantity", "Unit_Price"], False),
            s.po_line_add_key: _DsDef(s.po_line_add_key, "PO_Line_Add_Sim", [
                ("PO_Key", True, "int32"), ("Line_No", True, "int32"), ("Part_No", False, "string"),
                ("Supplier_Part_No", False, "string"), ("Description", False, "string"),
                ("Quantity", True, "decimal"), ("Unit", False, "string"), ("Unit_Price", False, "decimal"),
                ("Due_Date", False, "date")], ["PO_Line_Key", "Result_Error", "Result_Message"], [], True),
        }

    def data_source_template(self, user: SimSoapUser, key: int | None) -> tuple[_DsResult, _DsDef | None]:
        """What ``GetDataSourceRequestTemplate`` answers: the data source's inputs, or the grant failure."""
        ds = self.data_sources().get(key) if key is not None else None
        if ds is None:
            return _DsResult.failed(50010, f"Data source {key} was not found.", 404, "DATA_SOURCE_NOT_FOUND"), None
        if user.data_sources is not None and ds.key not in user.data_sources:
            return _DsResult.failed(50020, f"User is not authorized to execute data source {ds.key}.", 403,
                                    "DATA_SOURCE_ACCESS_DENIED", ds.name), None
        return _DsResult(name=ds.name), ds

    def execute_data_source(self, user: SimSoapUser, key: int | None, params: dict[str, str | None]) -> _DsResult:
        """Run a simulated data source as ``user`` (whose PCN selects the tenant). Never raises."""
        ds = self.data_sources().get(key) if key is not None else None
        if ds is None:
            return _DsResult.failed(50010, f"Data source {key} was not found.", 404, "DATA_SOURCE_NOT_FOUND")
        if user.data_sources is not None and ds.key not in user.data_sources:
            return _DsResult.failed(50020, f"User is not authorized to execute data source {ds.key}.", 403,
                                    "DATA_SOURCE_ACCESS_DENIED", ds.name)
        tenant = self.tenant(pcn=user.pcn)
        if tenant is None:
            return _DsResult.failed(50021, "Customer is not accessible.", 403, "CUSTOMER_ACCESS_DENIED", ds.name)
        values = {name.lstrip("@"): (v if v not in ("",) else None) for name, v in params.items()}
        for name, required, _type in ds.inputs:
            if required and values.get(name) is None:
                return _DsResult.failed(50000, f"@{name} is required.", 400, "DATA_SOURCE_INPUT_REQUIRED", ds.name)
        with self._lock:
            if ds.name == "PO_Add_Sim":
                result = self._ds_po_add(tenant, values)
            elif ds.name == "PO_Line_Add_Sim":
                result = self._ds_po_line_add(tenant, values)
            else:
                result = self._ds_po_get(tenant, values)
        result.name, result.columns = ds.name, ds.columns
        return result

    @staticmethod
    def _result_error(message: str, *extra: str) -> _DsResult:
        outputs: dict[str, str | None] = {name: None for name in extra}
        outputs.update({"Result_Error": "1", "Result_Message": message})
        return _DsResult(outputs=outputs)

    def _parse_ds_date(self, value: str | None) -> tuple[bool, datetime | None]:
        if value is None:
            return True, None
        parsed = parse_plex_datetime(value)
        if parsed is None:
            try:
                parsed = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                return False, None
        return True, parsed

    def _ds_po_add(self, tenant: SimTenant, v: dict[str, str | None]) -> _DsResult:
        supplier = next((s for s in self.suppliers.values()
                         if s["_tenant"] == tenant.pcn and s["code"] == v["Supplier_Code"]), None)
        if supplier is None:
            return self._result_error(f"Supplier '{v['Supplier_Code']}' was not found.", "PO_Key")
        existing = next((p for p in (self.purchase_orders[i] for i in
                                     self._numbers["purchase_orders"].get(v["PO_No"] or "", ()))
                         if p["_tenant"] == tenant.pcn and p["supplierId"] == supplier["id"]
                         and p["poNumber"] == v["PO_No"]), None)
        repeat = self.settings.duplicate_purchase_order if self.settings.unique_purchase_order else "create"
        if existing is not None and repeat == "fail":
            return self._result_error(f"PO {v['PO_No']} already exists for supplier {supplier['code']}.", "PO_Key")
        if existing is not None and repeat == "update":
            existing.update(modifiedDate=stamp(self.now()), note=v.get("Note") or existing.get("note", ""))
            return _DsResult(outputs={"PO_Key": str(existing["_poKey"]), "Result_Error": "0",
                                      "Result_Message": None})
        ok_po, po_date = self._parse_ds_date(v.get("PO_Date"))
        ok_due, due = self._parse_ds_date(v.get("Due_Date"))
        if not (ok_po and ok_due):
            return self._result_error("PO_Date/Due_Date must be YYYY-MM-DD.", "PO_Key")
        # @Lines: the PO's lines in the same call, a JSON array of objects named like PO_Line_Add_Sim's
        # inputs. All or nothing: one bad line and no PO is stored.
        lines: list[dict[str, Any]] = []
        if v.get("Lines") is not None:
            try:
                given = json.loads(v["Lines"] or "")
            except ValueError:
                given = None
            if not isinstance(given, list) or not all(isinstance(x, dict) for x in given):
                return self._result_error("@Lines must be a JSON array of line objects.", "PO_Key")
            for n, item in enumerate(given, 1):
                values = {str(k).lstrip("@"): None if x is None or x == "" else str(x) for k, x in item.items()}
                line = self._new_line(values, {ln["lineItemNumber"] for ln in lines})
                if isinstance(line, str):
                    return self._result_error(f"Line {n}: {line}", "PO_Key")
                lines.append(line)
        po = self._store_po(tenant, supplier, v["PO_No"] or "", po_date or self.now(), due,
                            v.get("Currency_Code") or "USD", v.get("Terms") or "", v.get("Note") or "")
        for line in lines:
            self._attach_line(po, line)
        return _DsResult(outputs={"PO_Key": str(po["_poKey"]), "Result_Error": "0", "Result_Message": None})

    def _new_line(self, v: dict[str, str | None], taken: set[int]) -> dict[str, Any] | str:
        """A PO line from data-source inputs, or why not (a message for ``@Result_Message``)."""
        try:
            line_no = int(v.get("Line_No") or "")
        except ValueError:
            return "Line_No must be an integer."
        if line_no in taken:
            return f"Line {line_no} already exists."
        qty, price = _decimal(v.get("Quantity") or ""), _decimal(v.get("Unit_Price") or "0")
        ok_due, due = self._parse_ds_date(v.get("Due_Date"))
        if qty is None or price is None or not ok_due:
            return "Quantity/Unit_Price must be numbers, Due_Date YYYY-MM-DD."
        now = self.now()
        return {"id": self._uuid(), "lineItemNumber": line_no, "status": "Open", "unit": v.get("Unit") or "ea",
                "orderUnit": v.get("Unit") or "ea", "description": v.get("Description") or "",
                "unitPrice": _number(price), "supplierPartNumber": v.get("Supplier_Part_No"), "partId": None,
                "createdDate": stamp(now), "modifiedDate": stamp(now),
                "_lineKey": next(self._line_key_seq), "_partNo": v.get("Part_No"), "_quantity": _number(qty),
                "_dueDate": stamp(due) if due else None}

    def _attach_line(self, po: dict[str, Any], line: dict[str, Any]) -> None:
        po["_lines"].append(line)
        po["lineItemCount"] = len(po["_lines"])
        po["lineItemTotal"] = _number(sum((Decimal(str(x["unitPrice"])) * Decimal(str(x["_quantity"]))
                                           for x in po["_lines"]), Decimal(0)))
        po["modifiedDate"] = line["modifiedDate"]

    def _ds_po_line_add(self, tenant: SimTenant, v: dict[str, str | None]) -> _DsResult:
        try:
            po_key, line_no = int(v["PO_Key"] or ""), int(v["Line_No"] or "")
        except ValueError:
            return _DsResult.failed(50001, "@PO_Key and @Line_No must be integers.", 400,
                                    "DATA_SOURCE_INPUT_FORMAT_INVALID")
        po = next((p for p in self.purchase_orders.values()
                   if p["_tenant"] == tenant.pcn and p["_poKey"] == po_key), None)
        if po is None:
            return self._result_error(f"PO key {po_key} was not found.", "PO_Line_Key")
        same = next((line for line in po["_lines"] if line["lineItemNumber"] == line_no), None)
        repeat = self.settings.duplicate_po_line
        if same is not None and repeat == "fail":
            return self._result_error(f"Line {line_no} already exists on PO {po['poNumber']}.", "PO_Line_Key")
        line = self._new_line(v, set())
        if isinstance(line, str):
            return self._result_error(line, "PO_Line_Key")
        if same is not None and repeat == "update":
            same.update({k: line[k] for k in ("description", "unitPrice", "unit", "_quantity", "_partNo", "_dueDate")},
                        modifiedDate=line["modifiedDate"])
            return _DsResult(outputs={"PO_Line_Key": str(same["_lineKey"]), "Result_Error": "0",
                                      "Result_Message": None})
        self._attach_line(po, line)
        return _DsResult(outputs={"PO_Line_Key": str(line["_lineKey"]), "Result_Error": "0",
                                  "Result_Message": None})

    def _ds_po_get(self, tenant: SimTenant, v: dict[str, str | None]) -> _DsResult:
        rows: list[dict[str, str | None]] = []
        same_number = [self.purchase_orders[i] for i in self._numbers["purchase_orders"].get(v["PO_No"] or "", ())]
        for po in sorted(same_number, key=lambda p: p["_poKey"]):
            if po["_tenant"] != tenant.pcn or po["poNumber"] != v["PO_No"]:
                continue
            if v.get("Supplier_Code") and po["_supplierCode"] != v["Supplier_Code"]:
                continue
            head = {"PO_Key": str(po["_poKey"]), "PO_No": po["poNumber"], "Supplier_Code": po["_supplierCode"],
                    "PO_Date": po["poDate"][:10], "Status": po["status"]}
            empty = {"PO_Line_Key": None, "Line_No": None, "Part_No": None, "Quantity": None, "Unit_Price": None}
            rows.extend({**head, "PO_Line_Key": str(ln["_lineKey"]), "Line_No": str(ln["lineItemNumber"]),
                         "Part_No": ln["_partNo"], "Quantity": str(ln["_quantity"]),
                         "Unit_Price": str(ln["unitPrice"])} for ln in po["_lines"])
            if not po["_lines"]:
                rows.append({**head, **empty})  # a SQL left join: the header row even without lines
        return _DsResult(rows=rows)

    def by_number(self, records: dict[str, dict[str, Any]], filters: dict[str, list[str]]) -> list[dict[str, Any]] | None:
        """Records with the queried invoice or PO numbers (None: no such filter, or filters may be ignored).

        Only narrows what the list handler then filters as usual; never used while an ``ignore_filter``
        fault is armed, because an ignored filter must return everything."""
        if any(f.kind == "ignore_filter" for f in self.faults):
            return None
        for name, field in (("ap_invoices", "invoiceNumber"), ("sales_orders", "poNumber"),
                            ("purchase_orders", "poNumber"), ("purchase_orders", "pONumber")):
            if records is getattr(self, name) and filters.get(field):
                index = self._numbers[name]
                return [records[i] for n in dict.fromkeys(filters[field]) for i in index.get(n, ())]
        return None

    # ---------------------------------------------------------------- seeding (tests and the demo)
    def add_supplier(self, code: str, name: str, *, tax_id: str | None = None, status: str = "Active",
                     old_code: str = "", pcn: str = PCN_MAIN) -> dict[str, Any]:
        """Add (or replace, by code) a supplier of tenant ``pcn``; it shows in modified-date polls from now."""
        with self._lock:
            now = stamp(self.now())
            existing = next((s for s in self.suppliers.values() if s["_tenant"] == pcn and s["code"] == code), None)
            sid = existing["id"] if existing else self._uuid()
            self.suppliers[sid] = {
                "id": sid, "code": code, "oldCode": old_code, "name": name, "language": "English",
                "category": "Material", "status": status, "type": "Supplier", "parentSupplierId": None,
                "webAddress": "", "contactNote": "", "note": "", "createdById": None,
                "createdDate": existing["createdDate"] if existing else now, "modifiedById": None,
                "modifiedDate": now, "_tenant": pcn, "_taxId": tax_id}
            return self.suppliers[sid]

    def add_customer(self, code: str, name: str, *, pcn: str = PCN_MAIN) -> dict[str, Any]:
        """Add a customer of tenant ``pcn`` (the sender of 850s that become sales orders)."""
        with self._lock:
            cid = self._uuid()
            now = stamp(self.now())
            self.customers[cid] = {"id": cid, "code": code, "name": name, "status": "Active",
                                   "createdDate": now, "modifiedDate": now, "_tenant": pcn}
            return self.customers[cid]

    # ---------------------------------------------------------------- inspection
    def state(self, *, log: bool = True) -> dict[str, Any]:
        """Everything created so far plus counters, for tests to assert on (``GET /_sim/state``)."""
        with self._lock:
            def dump(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
                return json.loads(json.dumps(list(records.values()), default=str))
            out = {
                "clock": stamp(self.now()),
                "tenants": [t.model_dump() for t in self.settings.tenants],
                "suppliers": dump(self.suppliers), "customers": dump(self.customers),
                "purchase_orders": dump(self.purchase_orders), "ap_invoices": dump(self.ap_invoices),
                "sales_orders": dump(self.sales_orders),
                "counters": {"requests": dict(self.requests), "responses": dict(self.responses),
                             "tokens_issued": self.tokens_issued},
                "faults": [f.model_dump() for f in self.faults],
            }
            if log:
                out["request_log"] = list(self.request_log)
            return out


# --------------------------------------------------------------------------------------------- SOAP helpers


# Requests are parsed as untrusted XML, but with lxml (C) rather than defusedxml's pure-Python
# handlers: no DTD (refused), no entity expansion, no network, no huge trees.
_SAFE_XML = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _parse_xml(body: bytes) -> Any:
    root = etree.fromstring(body, parser=_SAFE_XML)
    if root.getroottree().docinfo.doctype:
        raise ValueError("DTDs are not allowed")
    return root


def _soap_call_info(body: bytes) -> tuple[str | None, str | None]:
    """(operation, data source key) of a SOAP request, or (None, None) when it does not parse."""
    try:
        root = _parse_xml(body)
    except Exception:  # noqa: BLE001 - any parse failure just means "unknown operation" here
        return None, None
    body_el = _child(root, "Body")
    if body_el is None or len(body_el) == 0:
        return None, None
    op = body_el[0]
    name = _local(op.tag)
    key = None
    if name == "ExecuteDataSource":
        req = _child(op, "ExecuteDataSourceRequest")
        key_el = _child(req, "DataSourceKey") if req is not None else None
        key = (key_el.text or "").strip() if key_el is not None else None
    elif name in ("ExecuteDataSourcePost", "GetDataSourceRequestTemplate"):
        key_el = _child(op, "dataSourceKey")
        key = (key_el.text or "").strip() if key_el is not None else None
    return name, key


class _SoapClientFault(Exception):
    pass


def _parse_soap_request(body: bytes) -> tuple[str, int | None, dict[str, str | None]]:
    try:
        root = _parse_xml(body)
    except Exception as exc:  # noqa: BLE001 - lxml and the DTD check raise several types; all are client errors
        raise _SoapClientFault(
            f"Server was unable to read request. There is an error in XML document: {exc}") from None
    if _local(root.tag) != "Envelope" or (body_el := _child(root, "Body")) is None or len(body_el) == 0:
        raise _SoapClientFault("Server was unable to read request: no SOAP Envelope/Body.")
    op = body_el[0]
    name = _local(op.tag)
    params: dict[str, str | None] = {}

    def key_of(el: Any) -> int | None:
        try:
            return int((el.text or "").strip()) if el is not None else None
        except ValueError:
            raise _SoapClientFault("Server was unable to read request: DataSourceKey is not an integer.") from None

    if name == "ExecuteDataSource":
        req = _child(op, "ExecuteDataSourceRequest")
        if req is None:
            raise _SoapClientFault("ExecuteDataSourceRequest is required.")
        key = key_of(_child(req, "DataSourceKey"))
        inputs = _child(req, "InputParameters")
        for p in (inputs if inputs is not None else []):
            n, v = _child(p, "Name"), _child(p, "Value")
            if n is not None and n.text:
                params[n.text.strip()] = v.text if v is not None else None
        return name, key, params
    if name == "ExecuteDataSourcePost":
        key = key_of(_child(op, "dataSourceKey"))
        names_el, values_el, delim_el = (_child(op, "parameterNames"), _child(op, "parameterValues"),
                                         _child(op, "delimeter"))  # sic: the contract misspells it
        delim = (delim_el.text if delim_el is not None and delim_el.text else ",")
        names = (names_el.text or "").split(delim) if names_el is not None and names_el.text else []
        values = (values_el.text or "").split(delim) if values_el is not None and values_el.text else []
        if len(values) < len(names):
            values += [""] * (len(names) - len(values))
        params = {n.strip(): v for n, v in zip(names, values, strict=False) if n.strip()}
        return name, key, params
    if name == "GetDataSourceRequestTemplate":
        return name, key_of(_child(op, "dataSourceKey")), params
    raise _SoapClientFault(f"Server did not recognize the value of HTTP Header SOAPAction: {NS_DS}/{name}.")


def _soap_result(operation: str, key: int | None, res: _DsResult, instance_no: int) -> bytes:
    env = etree.Element(f"{{{NS_SOAP11}}}Envelope", nsmap={"soap": NS_SOAP11, "xsi": NS_XSI})
    body = etree.SubElement(env, f"{{{NS_SOAP11}}}Body")
    resp = etree.SubElement(body, f"{{{NS_DS}}}{operation}Response", nsmap={None: NS_DS})
    result = etree.SubElement(resp, f"{{{NS_DS}}}{operation}Result")

    def sub(parent: Any, name: str, text: str | None = None, nil: bool = False) -> Any:
        el = etree.SubElement(parent, f"{{{NS_DS}}}{name}")
        if nil:
            el.set(f"{{{NS_XSI}}}nil", "true")
        elif text is not None:
            el.text = text
        return el

    sub(result, "StatusNo", "1" if res.error else "0")
    sub(result, "Error", "true" if res.error else "false")
    sub(result, "ErrorNo", str(res.error_no))
    sub(result, "Message", res.message)
    sub(result, "InstanceNo", str(instance_no))
    sub(result, "DataSourceKey", str(key or 0))
    for name in ("QuarantinedForDevelopment", "LastPrimaryDeployment", "LastTestDeployment", "Version"):
        sub(result, name, nil=True)
    sub(result, "DataSourceName", res.name)
    if not res.error:
        sets = sub(result, "ResultSets")
        if res.columns:
            rs = sub(sets, "ResultSet")
            sub(rs, "RowCount", str(len(res.rows)))
            rows = sub(rs, "Rows")
            for row in res.rows:
                cols = sub(sub(rows, "Row"), "Columns")
                for col in res.columns:
                    c = sub(cols, "Column")
                    sub(c, "Value", row.get(col))  # None -> <Value/>, as Plex sends empty values
                    sub(c, "Name", col)
        outs = sub(result, "OutputParameters")
        for name, value in res.outputs.items():
            o = sub(outs, "OutputParameter")
            sub(o, "Value", value)
            sub(o, "Name", f"@{name}")
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def _soap_template(key: int | None, res: _DsResult, inputs: list[tuple[str, bool, str]], outputs: list[str],
                   instance_no: int) -> bytes:
    """``GetDataSourceRequestTemplateResponse``: the request a caller would send, each input and output
    named (the real contract, spec 4.3: ``GetTemplateResult`` = BaseResult + ExecuteDataSourceRequest)."""
    env = etree.Element(f"{{{NS_SOAP11}}}Envelope", nsmap={"soap": NS_SOAP11, "xsi": NS_XSI})
    body = etree.SubElement(env, f"{{{NS_SOAP11}}}Body")
    resp = etree.SubElement(body, f"{{{NS_DS}}}GetDataSourceRequestTemplateResponse", nsmap={None: NS_DS})
    result = etree.SubElement(resp, f"{{{NS_DS}}}GetDataSourceRequestTemplateResult")

    def sub(parent: Any, name: str, text: str | None = None) -> Any:
        el = etree.SubElement(parent, f"{{{NS_DS}}}{name}")
        el.text = text
        return el

    sub(result, "StatusNo", "1" if res.error else "0")
    sub(result, "Error", "true" if res.error else "false")
    sub(result, "ErrorNo", str(res.error_no))
    sub(result, "Message", res.message)
    sub(result, "InstanceNo", str(instance_no))
    if not res.error:
        req = sub(result, "ExecuteDataSourceRequest")
        sub(req, "DataSourceKey", str(key))
        params = sub(req, "InputParameters")
        for name, required, output in [(n, r, False) for n, r, _ in inputs] + [(n, False, True) for n in outputs]:
            p = sub(params, "InputParameter")
            sub(p, "Value")
            sub(p, "Name", f"@{name}")
            sub(p, "Required", "true" if required else "false")
            sub(p, "Output", "true" if output else "false")
        sub(req, "DataSourceName", res.name)
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def _soap_fault(code: Literal["soap:Client", "soap:Server"], text: str) -> Response:
    xml = (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{NS_SOAP11}"><soap:Body>'
           f"<soap:Fault><faultcode>{code}</faultcode><faultstring>{xml_escape(text)}</faultstring><detail />"
           "</soap:Fault></soap:Body></soap:Envelope>")
    return Response(xml, status_code=500, media_type="text/xml; charset=utf-8")


def _basic_challenge() -> Response:
    return Response("<html><body><h1>401 - Unauthorized: Access is denied due to invalid credentials.</h1>"
                    "</body></html>", status_code=401, media_type="text/html",
                    headers={"WWW-Authenticate": 'Basic realm="api.plexonline.com"'})


# --------------------------------------------------------------------------------------------- middleware


class _SimMiddleware:
    """Counts and logs every request per surface, applies fault rules and the rate window (pure ASGI)."""

    def __init__(self, app: Any, sim: PlexSim) -> None:
        self.app, self.sim = app, sim

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.lower() == SOAP_PATH.lower() and path != SOAP_PATH:  # IIS paths are case-insensitive
            scope = {**scope, "path": SOAP_PATH, "raw_path": SOAP_PATH.encode()}
            path = SOAP_PATH
        if path == "/_sim" or path.startswith("/_sim/"):
            return await self.app(scope, receive, send)
        sim, method = self.sim, scope["method"]
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        surface, ops = sim.classify(method, path, scope.get("query_string", b"").decode("latin-1"), bytes(body))
        entry = sim.log_request(surface, method, path, ops)

        async def logged_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sim.log_response(surface, entry, message["status"])
            try:
                await send(message)
            except OSError:  # the client gave up (timeout fault); nothing left to tell it
                pass

        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        rule = sim.take_fault(surface, method, path, ops)
        if rule is not None:
            entry["fault"] = rule.kind
            if rule.kind in _PRE:
                return await _fault_response(rule, surface, ops, headers)(scope, replay, logged_send)
            if rule.kind == "slow":
                await asyncio.sleep(rule.delay)
        wait = sim.rate_check(surface, headers)
        if wait is not None:
            if rule is not None and rule.kind in _POST:
                sim.unfire(rule)
            entry["fault"] = "rate_window"
            return await _throttled(surface, wait, sim.settings.rate_limit_retry_after)(scope, replay, logged_send)
        if rule is None or rule.kind not in _POST:
            return await self.app(scope, replay, logged_send)

        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, replay, capture)
        status, payload = start.get("status", 500), b"".join(chunks)
        raw_headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        if not 200 <= status < 300:  # nothing was committed: pass the real answer through
            sim.unfire(rule)
            entry["fault"] = None
            return await _raw(status, raw_headers, payload)(scope, replay, logged_send)
        if rule.kind == "timeout_after_commit":
            await asyncio.sleep(rule.delay)  # the client times out; the record exists
            return await _raw(status, raw_headers, payload)(scope, replay, logged_send)
        if rule.kind == "error_after_commit":
            err = rule.model_copy(update={"kind": "server_error", "status": rule.status or 502})
            return await _fault_response(err, surface, ops, headers)(scope, replay, logged_send)
        if rule.kind == "malformed":
            return await _raw(status, raw_headers, payload[: max(1, len(payload) // 2)])(scope, replay, logged_send)
        # drop_after_commit: announce the full length, send half, abort -> the client sees a broken connection
        await logged_send({"type": "http.response.start", "status": status,
                           "headers": [*raw_headers, (b"content-length", str(len(payload)).encode())]})
        await logged_send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
        # Returning with the body incomplete makes uvicorn close the connection.


def _raw(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
    response = Response(body, status_code=status)
    response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
    return response


def _throttled(surface: str, seconds: int, with_header: bool, bare: bool = False, status: int = 429) -> Response:
    headers = {"Retry-After": str(seconds)} if with_header else {}
    if surface == "soap" or bare:
        return Response(b"", status_code=status, headers=headers)
    message = f"Rate limit is exceeded. Try again in {seconds} seconds."
    if surface == "datasource":
        return JSONResponse({"errors": [{"code": "REQUEST_PROCESSING_ERROR", "message": message}],
                             "transactionNo": None}, status_code=status, headers=headers)
    return JSONResponse({"code": "TOO_MANY_REQUESTS", "message": message}, status_code=status, headers=headers)


def _fault_response(rule: FaultRule, surface: str, ops: set[str], headers: dict[str, str]) -> Response:
    kind = rule.kind
    if kind.startswith("throttle_"):
        return _throttled(surface, rule.retry_after, kind == "throttle_retry_after", kind == "throttle_bare",
                          rule.status or 429)
    if kind == "server_error":
        status = rule.status or 500
        if status != 500:
            return Response(_HTML_5XX.format(s=status), status_code=status, media_type="text/html")
        if surface == "soap":
            return _soap_fault("soap:Server", "Server was unable to process request. ---> Timeout expired.")
        if surface == "datasource":
            return JSONResponse({"errors": [{"code": "REQUEST_PROCESSING_ERROR", "message": "Unexpected error."}],
                                 "transactionNo": None}, status_code=500)
        return JSONResponse({"code": "INTERNAL_SERVER_ERROR", "message": "An unexpected error occurred."},
                            status_code=500)
    if kind == "unauthorized":
        if surface in ("soap", "datasource"):
            return _basic_challenge()
        if surface == "token":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        bearer = headers.get("authorization", "")[:7].lower() == "bearer "
        extra = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if bearer else {}
        return JSONResponse(_NOT_AUTHENTICATED, status_code=401, headers=extra)
    # forbidden
    if surface == "soap":
        op = next((o for o in ops if o.startswith("Execute") and ":" not in o), "ExecuteDataSource")
        key = next((int(o) for o in ops if o.isdigit()), None)
        res = _DsResult(error=True, error_no=50020, message=f"User is not authorized to execute data source {key}.")
        return Response(_soap_result(op, key, res, 0), media_type="text/xml; charset=utf-8")
    if surface == "datasource":
        return JSONResponse({"errors": [{"code": "DATA_SOURCE_ACCESS_DENIED",
                                         "message": "You do not have access to this data source."}],
                             "transactionNo": None}, status_code=403)
    return JSONResponse({"code": "REQUEST_NOT_AUTHORIZED", "message": "Access to this resource is forbidden."},
                        status_code=403)


# --------------------------------------------------------------------------------------------- app


class _ClockChange(BaseModel):
    advance_seconds: float | None = None
    set: datetime | None = None


def create_app(sim: PlexSim) -> FastAPI:
    """The simulator's FastAPI app over ``sim`` (REST, SOAP, JSON data sources, token, ``/_sim``)."""
    app = FastAPI(title="Plex simulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = sim
    app.add_middleware(_SimMiddleware, sim=sim)

    @app.exception_handler(_RestError)
    async def rest_error(request: Request, exc: _RestError) -> JSONResponse:
        return exc.response()

    hot_routes = 0

    def hot(path: str, method: str) -> Any:
        """A route the gateway calls for every document: a plain Starlette route (no dependency
        injection, no response model: the endpoint takes the request and returns a response),
        matched before the others. FastAPI's own handling cost more than the endpoint itself."""
        def register(endpoint: Any) -> Any:
            nonlocal hot_routes
            app.router.routes.insert(hot_routes, Route(path, endpoint, methods=[method]))
            hot_routes += 1
            return endpoint
        return register

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise _RestError(400, "REQUEST_MALFORMED", "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _RestError(400, "REQUEST_MALFORMED", "The request body must be a JSON object.")
        return body

    def check_uuid(value: str) -> str:
        if not _UUID.fullmatch(value or ""):
            raise _invalid(("ARGUMENT_INVALID", f"'{value}' is not a valid UUID."))
        return value

    def listing(request: Request, records: dict[str, dict[str, Any]], caller: _Caller, *,
                exact: dict[str, str], ranges: dict[str, tuple[str, str]],
                cap: int | None = None) -> JSONResponse:
        """Filter a collection like Connect: exact-match and date-range filters, unknown params ignored."""
        path, q = request.url.path, request.query_params
        honoured = {param: sim.filter_values("GET", path, param, q.getlist(param))
                    for param in ("id", *exact) if param in q}
        with sim._lock:  # tests may reset or seed from their own thread
            candidates = sim.by_number(records, honoured)
            rows = [r for r in (records.values() if candidates is None else candidates)
                    if r["_tenant"] == caller.tenant.pcn]
        ids = honoured.get("id")
        if ids and not sim.ignored_filter("GET", path, "id"):
            rows = [r for r in rows if r["id"] in {check_uuid(i) for i in ids}]
        for param, fld in exact.items():
            values = honoured.get(param)
            if values and not sim.ignored_filter("GET", path, param):
                wanted = set(values)
                rows = [r for r in rows if str(r.get(fld)) in wanted]
        for fld, (begin_param, end_param) in ranges.items():
            for param, is_begin in ((begin_param, True), (end_param, False)):
                value = q.get(param)
                if value is None or sim.ignored_filter("GET", path, param):
                    continue
                bound = _filter_dt(param, value)
                rows = [r for r in rows if r.get(fld) and (
                    (parse_plex_datetime(r[fld]) or bound) >= bound if is_begin
                    else (parse_plex_datetime(r[fld]) or bound) <= bound)]  # inclusive bounds [I]
        rows.sort(key=lambda r: (r.get("createdDate") or "", r["id"]))
        if cap is not None:
            rows = rows[:cap]
        if not rows and sim.empty_list_404("GET", path):
            raise _RestError(404, "RESOURCE_NOT_FOUND", "No data exists to return.")
        return JSONResponse([_public(r) for r in rows])

    def one(records: dict[str, dict[str, Any]], caller: _Caller, record_id: str) -> dict[str, Any]:
        record = records.get(check_uuid(record_id))
        if record is None or record["_tenant"] != caller.tenant.pcn:
            raise _RestError(404, "RESOURCE_NOT_FOUND", "The requested resource was not found.")
        return record

    _modified = {"modifiedDate": ("modifiedDateBegin", "modifiedDateEnd"),
                 "createdDate": ("createdDateBegin", "createdDateEnd")}

    from gateway.integrations.plex.simulator.records import add_record_routes
    add_record_routes(app, sim, listing)

    # ------------------------------------------------------------ token (OAuth2 client credentials)
    @app.post("/op/token")
    async def token(request: Request) -> JSONResponse:
        form = await request.form()
        client_id, secret = form.get("client_id"), form.get("client_secret")
        creds = _basic_credentials(request.headers.get("authorization", ""))
        if creds:  # RFC 6749 2.3.1: client credentials may come as Basic auth instead
            client_id, secret = creds
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        issued = sim.issue_token(str(client_id or ""), str(secret or ""))
        if issued is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        return JSONResponse(issued, headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------ mdm
    @app.get("/mdm/v1/tenants")
    async def tenants(request: Request) -> list[dict[str, Any]]:
        caller = sim.authenticate_rest(request)
        pcns = {caller.grant.default_pcn, *caller.grant.allowed_pcns}
        return [{"id": t.id, "code": t.code} for t in sim.settings.tenants if t.pcn in pcns]

    @app.get("/mdm/v1/suppliers")
    async def list_suppliers(request: Request) -> JSONResponse:
        caller = sim.authenticate_rest(request)
        return listing(request, sim.suppliers, caller, ranges=_modified,
                       exact={p: p for p in ("code", "oldCode", "name", "language", "category", "status", "type",
                                             "parentSupplierId")})

    @app.get("/mdm/v1/suppliers/{supplier_id}")
    async def get_supplier(request: Request, supplier_id: str) -> dict[str, Any]:
        return _public(one(sim.suppliers, sim.authenticate_rest(request), supplier_id))

    def financials(record: dict[str, Any]) -> dict[str, Any]:
        # Seeded suppliers get a stable tax id derived from their id (the seeded RNG stays untouched).
        tax_id = record.get("_taxId")
        if tax_id is None and "_taxId" not in record:
            digits = int(hashlib.sha256(record["id"].encode()).hexdigest()[:12], 16)
            tax_id = f"{10 + digits % 89:02d}-{digits % 9_000_000 + 1_000_000}"
        return {"dunsNo": record.get("_dunsNo"), "taxId": tax_id, "taxIdType": "EIN" if tax_id else None,
                "paymentType": "Check", "paymentStatus": "Active"}

    @app.get("/mdm/v1/suppliers/{supplier_id}/financials")
    async def get_financials(request: Request, supplier_id: str) -> dict[str, Any]:
        return financials(one(sim.suppliers, sim.authenticate_rest(request), supplier_id))

    @app.put("/mdm/v2/suppliers/{supplier_id}/financials")
    async def put_financials(request: Request, supplier_id: str) -> dict[str, Any]:
        caller, body = sim.authenticate_rest(request), await json_body(request)
        with sim._lock:
            record = one(sim.suppliers, caller, supplier_id)
            record["_taxId"] = body.get("taxId")
            record["_dunsNo"] = body.get("dunsNo")
            record["modifiedDate"] = stamp(sim.now())
        return financials(record)

    def supplier_fields(body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body.get("code"), str) or not body["code"].strip():
            raise _invalid(("FIELD_REQUIRED", "code is required."))
        keep = ("code", "oldCode", "name", "language", "category", "status", "type", "parentSupplierId",
                "webAddress", "contactNote", "note")
        return {k: body.get(k) for k in keep}

    @app.post("/mdm/v1/suppliers")
    async def create_supplier(request: Request) -> JSONResponse:
        caller, body = sim.authenticate_rest(request), await json_body(request)
        fields = supplier_fields(body)
        with sim._lock:
            if any(s["_tenant"] == caller.tenant.pcn and s["code"] == fields["code"] for s in sim.suppliers.values()):
                raise _invalid(("DUPLICATE_VALUE", f"Supplier code '{fields['code']}' already exists."))
            sid = check_uuid(body["id"]) if body.get("id") else sim._uuid()
            if sid in sim.suppliers:
                raise _invalid(("DUPLICATE_VALUE", f"id '{sid}' already exists."))
            now = stamp(sim.now())
            record = {"id": sid, **fields, "createdById": None, "createdDate": now, "modifiedById": None,
                      "modifiedDate": now, "_tenant": caller.tenant.pcn}
            sim.suppliers[sid] = record
        return JSONResponse(_public(record), status_code=201)

    @app.put("/mdm/v1/suppliers/{supplier_id}")
    async def update_supplier(request: Request, supplier_id: str) -> dict[str, Any]:
        caller, body = sim.authenticate_rest(request), await json_body(request)
        fields = supplier_fields(body)
        with sim._lock:
            record = one(sim.suppliers, caller, supplier_id)
            if any(s["_tenant"] == caller.tenant.pcn and s["code"] == fields["code"] and s["id"] != record["id"]
                   for s in sim.suppliers.values()):
                raise _invalid(("DUPLICATE_VALUE", f"Supplier code '{fields['code']}' already exists."))
            record.update(fields, modifiedDate=stamp(sim.now()))
        return _public(record)

    @app.get("/mdm/v1/customers")
    async def list_customers(request: Request) -> JSONResponse:
        caller = sim.authenticate_rest(request)
        return listing(request, sim.customers, caller, exact={"code": "code", "name": "name", "status": "status"},
                       ranges=_modified)

    @app.get("/mdm/v1/customers/{customer_id}")
    async def get_customer(request: Request, customer_id: str) -> dict[str, Any]:
        return _public(one(sim.customers, sim.authenticate_rest(request), customer_id))

    # ------------------------------------------------------------ purchasing (read-only)
    @hot("/purchasing/v1/purchase-orders", "GET")
    async def list_pos(request: Request) -> JSONResponse:
        caller = sim.authenticate_rest(request)
        return listing(request, sim.purchase_orders, caller, ranges=_modified,
                       exact={"pONumber": "poNumber", "poNumber": "poNumber", "status": "status",
                              "supplierId": "supplierId", "type": "type"})

    @app.post("/purchasing/v1/purchase-orders")
    async def create_po_rest(request: Request) -> JSONResponse:
        sim.authenticate_rest(request)
        status = sim.settings.purchase_order_post_status
        code = "METHOD_NOT_ALLOWED" if status == 405 else "RESOURCE_NOT_FOUND"
        return JSONResponse({"code": code, "message": "The requested operation is not supported."},
                            status_code=status)

    @app.get("/purchasing/v1/purchase-orders/{po_id}")
    async def get_po(request: Request, po_id: str) -> dict[str, Any]:
        return _public(one(sim.purchase_orders, sim.authenticate_rest(request), po_id))

    @app.get("/purchasing/v1/purchase-orders/{po_id}/line-items")
    async def po_lines(request: Request, po_id: str) -> list[dict[str, Any]]:
        return [_public(line) for line in one(sim.purchase_orders, sim.authenticate_rest(request), po_id)["_lines"]]

    # ------------------------------------------------------------ accounting
    @hot("/accounting/v1/ap-invoices", "GET")
    async def list_ap_invoices(request: Request) -> JSONResponse:
        caller = sim.authenticate_rest(request)
        return listing(request, sim.ap_invoices, caller, ranges=_modified, cap=sim.settings.ap_invoice_row_cap,
                       exact={p: p for p in ("invoiceNumber", "supplierCode", "poNumber", "status")})

    @app.get("/accounting/v1/ap-invoices/{invoice_id}")
    async def get_ap_invoice(request: Request, invoice_id: str) -> dict[str, Any]:
        return _public(one(sim.ap_invoices, sim.authenticate_rest(request), invoice_id))

    @hot("/accounting/v1/ap-invoices", "POST")
    async def create_ap_invoice(request: Request) -> JSONResponse:
        caller, body = sim.authenticate_rest(request), await json_body(request)
        problems: list[tuple[str, str]] = []
        if not isinstance(body.get("invoiceNumber"), str) or not body["invoiceNumber"].strip():
            problems.append(("FIELD_REQUIRED", "invoiceNumber is required."))
        for fld in ("invoiceDate", "dueDate", "discountDueDate", "taxPointDate", "expectedPayDate"):
            if body.get(fld) is not None and parse_plex_datetime(str(body[fld])) is None:
                problems.append(("FIELD_INVALID", f"{fld} must be a UTC date-time (YYYY-MM-DDThh:mm:ssZ)."))
        if body.get("invoiceDate") is None:
            problems.append(("FIELD_REQUIRED", "invoiceDate is required."))
        lines = body.get("lines")
        if not isinstance(lines, list) or not lines:
            problems.append(("FIELD_REQUIRED", "lines is required."))
        else:
            for i, line in enumerate(lines):
                if not isinstance(line, dict) or not (line.get("accountId") or line.get("accountNumber")):
                    problems.append(("FIELD_REQUIRED", f"lines[{i}].accountNumber or accountId is required."))
                elif any(line.get(k) is not None and _decimal(line[k]) is None for k in ("quantity", "unitPrice")):
                    problems.append(("FIELD_INVALID", f"lines[{i}] quantity/unitPrice must be numbers."))
        with sim._lock:
            tenant_suppliers = [s for s in sim.suppliers.values() if s["_tenant"] == caller.tenant.pcn]
            supplier = None
            if body.get("supplierId"):
                supplier = next((s for s in tenant_suppliers if s["id"] == body["supplierId"]), None)
            elif body.get("supplierCode"):
                supplier = next((s for s in tenant_suppliers if s["code"] == body["supplierCode"]), None)
            if supplier is None:
                problems.append(("FIELD_INVALID", "supplierId/supplierCode does not identify a supplier."))
            elif body.get("supplierCode") and supplier["code"] != body["supplierCode"]:
                problems.append(("FIELD_INVALID", "supplierCode does not match supplierId."))
            if problems:
                raise _invalid(*problems)
            if sim.settings.unique_ap_invoice and any(
                    r["_tenant"] == caller.tenant.pcn and r["supplierId"] == supplier["id"]
                    and r["invoiceNumber"] == body["invoiceNumber"]
                    for r in (sim.ap_invoices[i] for i in sim._numbers["ap_invoices"].get(body["invoiceNumber"], ()))):
                raise _invalid(("DUPLICATE_VALUE",
                                f"Invoice {body['invoiceNumber']} already exists for supplier {supplier['code']}."))
            record = sim._store_ap_invoice(caller.tenant, supplier, body)
        return JSONResponse(_public(record), status_code=201)

    # ------------------------------------------------------------ sales (customer POs)
    @hot("/sales/v1/orders", "GET")
    async def list_orders(request: Request) -> JSONResponse:
        caller = sim.authenticate_rest(request)
        return listing(request, sim.sales_orders, caller,
                       exact={p: p for p in ("customerId", "poNumber", "orderNumber", "status", "type")},
                       ranges={"modifiedDate": ("modifiedByDateBegin", "modifiedByDateEnd"),  # sic (spec 3.2)
                               "createdDate": ("createdDateBegin", "createdDateEnd")})

    @app.get("/sales/v1/orders/{order_id}")
    async def get_order(request: Request, order_id: str) -> dict[str, Any]:
        return _public(one(sim.sales_orders, sim.authenticate_rest(request), order_id))

    @hot("/sales/v1/orders", "POST")
    async def create_order(request: Request) -> JSONResponse:
        caller, body = sim.authenticate_rest(request), await json_body(request)
        problems: list[tuple[str, str]] = []
        customer_id = body.get("customerId")
        if not isinstance(body.get("poNumber"), str) or not body["poNumber"].strip():
            problems.append(("FIELD_REQUIRED", "poNumber is required."))
        for fld in ("orderDate", "dueDate"):
            if body.get(fld) is not None and parse_plex_datetime(str(body[fld])) is None:
                problems.append(("FIELD_INVALID", f"{fld} must be a UTC date-time (YYYY-MM-DDThh:mm:ssZ)."))
        with sim._lock:
            customer = sim.customers.get(str(customer_id))
            if customer is None or customer["_tenant"] != caller.tenant.pcn:
                problems.append(("FIELD_INVALID", "customerId does not identify a customer."))
            oid = body.get("id") or sim._uuid()
            if not _UUID.fullmatch(str(oid)):
                problems.append(("FIELD_INVALID", "id must be a UUID."))
            elif oid in sim.sales_orders:
                problems.append(("DUPLICATE_VALUE", f"id '{oid}' already exists."))
            if problems:
                raise _invalid(*problems)
            now = stamp(sim.now())
            record = {"id": oid, "customerId": customer_id, "poNumber": body["poNumber"],
                      "orderNumber": f"SO-{next(sim._order_seq)}", "status": "Open", "type": body.get("type"),
                      "orderDate": body.get("orderDate"), "dueDate": body.get("dueDate"), "note": body.get("note"),
                      "lines": [{**ln, "id": sim._uuid()} for ln in body.get("lines") or [] if isinstance(ln, dict)],
                      "createdDate": now, "modifiedDate": now, "_tenant": caller.tenant.pcn}
            sim.sales_orders[oid] = record
            sim._numbers["sales_orders"].setdefault(record["poNumber"], []).append(oid)
        return JSONResponse(_public(record), status_code=201)

    # ------------------------------------------------------------ SOAP
    @app.get(SOAP_PATH)
    async def wsdl(request: Request) -> Response:
        if not any(k.lower() == "wsdl" for k in request.query_params):
            return Response("<html><body>Service</body></html>", media_type="text/html")
        address = str(request.base_url).rstrip("/") + SOAP_PATH
        text = WSDL_FILE.read_text(encoding="utf-8").replace("SIM_ADDRESS", xml_escape(address))
        return Response(text, media_type="text/xml; charset=utf-8")

    @hot(SOAP_PATH, "POST")
    async def soap(request: Request) -> Response:
        user = sim.soap_user(request.headers.get("authorization", ""))
        if user is None:
            return _basic_challenge()
        try:
            operation, key, params = _parse_soap_request(await request.body())
        except _SoapClientFault as exc:
            return _soap_fault("soap:Client", str(exc))
        with sim._lock:
            instance = next(sim._instance_seq)
        if operation == "GetDataSourceRequestTemplate":
            found, ds = sim.data_source_template(user, key)
            body = _soap_template(key, found, ds.inputs if ds else [], ds.outputs if ds else [], instance)
            return Response(body, media_type="text/xml; charset=utf-8")
        result = sim.execute_data_source(user, key, params)
        return Response(_soap_result(operation, key, result, instance), media_type="text/xml; charset=utf-8")

    # ------------------------------------------------------------ JSON data sources
    def ds_user(request: Request) -> SimSoapUser:
        user = sim.soap_user(request.headers.get("authorization", ""))
        if user is None:
            raise _RestError(401, "USER_ACCESS_DENIED", "The credentials are not valid.",
                             headers={"WWW-Authenticate": 'Basic realm="cloud.plex.com"'})
        return user

    def ds_error(status: int, code: str, message: str, transaction: str) -> JSONResponse:
        return JSONResponse({"errors": [{"code": code, "message": message}], "transactionNo": transaction},
                            status_code=status)

    @app.get("/api/datasources/search")
    async def ds_search(request: Request, name: str = "") -> list[dict[str, Any]]:
        user = ds_user(request)
        return [{"id": d.key, "name": d.name, "description": d.name.replace("_", " ")}
                for d in sim.data_sources().values()
                if name.lower() in d.name.lower() and (user.data_sources is None or d.key in user.data_sources)]

    @app.get("/api/datasources/{key}")
    async def ds_meta(request: Request, key: int) -> JSONResponse:
        ds_user(request)
        ds = sim.data_sources().get(key)
        if ds is None:
            return ds_error(404, "DATA_SOURCE_NOT_FOUND", f"Data source '{key}' was not found.", "")
        return JSONResponse({"id": ds.key, "name": ds.name,
                             "inputs": [{"name": n, "type": t, "required": r, "nullable": not r}
                                        for n, r, t in ds.inputs],
                             "outputs": [{"name": n, "type": "string"} for n in ds.outputs],
                             "columns": [{"name": n, "type": "string"} for n in ds.columns]})

    @app.post("/api/datasources/{key}/execute")
    async def ds_execute(request: Request, key: int) -> JSONResponse:
        user = ds_user(request)
        with sim._lock:
            transaction = str(next(sim._instance_seq))
        flat = request.query_params.get("format") == "2"
        try:
            body = json.loads(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError):
            return ds_error(400, "DATA_SOURCE_INPUT_FORMAT_INVALID", "The request body is not valid JSON.",
                            transaction)
        inputs = body if flat else (body.get("inputs") if isinstance(body, dict) else None)
        if not isinstance(inputs, dict):
            return ds_error(400, "DATA_SOURCE_INPUT_FORMAT_INVALID", "inputs must be an object.", transaction)
        res = sim.execute_data_source(user, key, {k: None if v is None else str(v) for k, v in inputs.items()})
        if res.error:
            return ds_error(res.json_status, res.json_code or "REQUEST_PROCESSING_ERROR", res.message, transaction)
        if flat:
            return JSONResponse({"outputs": res.outputs, "rows": res.rows, "rowLimitExceeded": False,
                                 "transactionNo": transaction})
        return JSONResponse({"outputs": res.outputs, "tables": [{
            "columns": res.columns, "rows": [[r.get(c) for c in res.columns] for r in res.rows],
            "rowLimitExceeded": False}] if res.columns else [], "transactionNo": transaction})

    # ------------------------------------------------------------ simulator control
    @app.get("/_sim/faults")
    async def get_faults() -> list[dict[str, Any]]:
        return [f.model_dump() for f in sim.faults]

    @app.post("/_sim/faults", status_code=201)
    async def add_faults(rules: FaultRule | list[FaultRule]) -> list[dict[str, Any]]:
        items = rules if isinstance(rules, list) else [rules]
        return [sim.add_fault(**r.model_dump()).model_dump() for r in items]

    @app.delete("/_sim/faults", status_code=204)
    async def clear_faults() -> Response:
        sim.clear_faults()
        return Response(status_code=204)

    @app.get("/_sim/state")
    async def get_state(log: bool = True) -> JSONResponse:
        return JSONResponse(sim.state(log=log))

    @app.post("/_sim/reset", status_code=204)
    async def reset() -> Response:
        sim.reset()
        return Response(status_code=204)

    @app.get("/_sim/clock")
    async def get_clock() -> dict[str, str]:
        return {"now": stamp(sim.now())}

    @app.post("/_sim/clock")
    async def set_clock(change: _ClockChange) -> dict[str, str]:
        if change.set is not None:
            sim.set_clock(change.set if change.set.tzinfo else change.set.replace(tzinfo=UTC))
        if change.advance_seconds:
            sim.advance(change.advance_seconds)
        return {"now": stamp(sim.now())}

    @app.get("/_sim/config")
    async def get_config() -> dict[str, Any]:
        return sim.settings.model_dump(mode="json")

    @app.patch("/_sim/config")
    async def patch_config(request: Request) -> JSONResponse:
        changes = await request.json()
        try:
            merged = SimSettings.model_validate({**sim.settings.model_dump(), **changes})
        except Exception as exc:  # noqa: BLE001 - report the validation problem to the caller
            return JSONResponse({"error": str(exc)}, status_code=400)
        with sim._lock:
            for name in changes:
                setattr(sim.settings, name, getattr(merged, name))
        return JSONResponse(sim.settings.model_dump(mode="json"))

    # ------------------------------------------------------------ everything else: Connect's 404
    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def not_found(rest: str) -> JSONResponse:
        return JSONResponse({"code": "RESOURCE_NOT_FOUND", "message": "The requested resource was not found."},
                            status_code=404)

    return app


@contextmanager
def run_plex_sim(settings: SimSettings | None = None, **overrides: Any) -> Iterator[PlexSim]:
    """Serve a fresh :class:`PlexSim` on a free 127.0.0.1 port for the duration of the block."""
    sim = PlexSim(settings, **overrides)
    server = sim.serve()
    try:
        yield sim
    finally:
        server.stop()
