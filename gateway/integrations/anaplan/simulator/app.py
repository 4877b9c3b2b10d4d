"""Anaplan simulator: auth service, OAuth 2.0 and Integration API v2 in one FastAPI app.

Faithful to ``specs/anaplan.md`` §12 for what the gateway uses: tokens (Basic, CA certificate,
OAuth 2.0 with rotatable refresh tokens), a seeded tenant, chunked file upload (§5), import tasks
run one at a time per model that really parse the uploaded CSV against the import's
``headerNames`` and column rules (§6), failure dumps (§6.2), model busy/locked and the tenant rate
limit (§8). Routes by prefix: ``/token/*`` (auth service), ``/oauth/*`` + ``/auth/authorize``
(OAuth host), ``/2/0/*`` (Integration API); point all three client base URLs at the same server.

Test/demo control (not part of Anaplan): ``GET|POST|DELETE /_sim/faults`` (knobs, see
:class:`SimFaults`; POST merges), ``GET /_sim/state`` (per-route request counters and log, imported
rows, files, tasks, OAuth bookkeeping, file conflicts) and ``GET /_sim/files/{file_id}`` (the
reassembled private content last uploaded).

Run it with :func:`gateway.sandbox.server.serve_app`::

    sim = AnaplanSimulator()
    with serve_app(sim.app) as srv: ...

All handlers are ``async`` so every state change happens on the server's event loop thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import fnmatch
import gzip
import hashlib
import io
import json
import math
import random
import re
import secrets
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "AnaplanSimulator", "SimFaults", "SimTenant", "SimWorkspace", "SimModel", "SimFile", "SimImport",
    "SimColumnRule", "SimOAuthClient", "default_tenant",
    "WORKSPACE_ID", "MODEL_ID", "PO_LINES_FILE_ID", "PO_LINES_IMPORT_ID", "INVOICES_FILE_ID",
    "INVOICES_IMPORT_ID", "DEFAULT_USER", "DEFAULT_PASSWORD", "OAUTH_CLIENT_ID",
    "OAUTH_CLIENT_SECRET", "OAUTH_REDIRECT_URI",
]

# --------------------------------------------------------------------------------------------
# Seeded tenant
# --------------------------------------------------------------------------------------------

WORKSPACE_ID = "8a8b8c8d8e8f40a1b2c3d4e5f6a7b8c9"  # lowercase hex, as Anaplan issues them
MODEL_ID = "A1B2C3D4E5F60718293A4B5C6D7E8F90"  # uppercase hex
PO_LINES_FILE_ID = "113000000001"
PO_LINES_IMPORT_ID = "112000000001"
INVOICES_FILE_ID = "113000000002"
INVOICES_IMPORT_ID = "112000000002"
DEFAULT_USER = "gateway@example.com"
DEFAULT_PASSWORD = "sim-password"  # sandbox-only credential
OAUTH_CLIENT_ID = "gateway-oauth-client"
OAUTH_CLIENT_SECRET = "sim-client-secret"  # sandbox-only credential
OAUTH_REDIRECT_URI = "http://127.0.0.1/oauth/callback"


class SimColumnRule(BaseModel):
    """Row rule for one source column (what the model builder's import mapping enforces)."""

    required: bool = False
    type: Literal["text", "number", "date"] = "text"
    allowed: list[str] | None = None  # list membership: the value must be an item of `list_name`
    list_name: str | None = None


class SimImport(BaseModel):
    id: str
    name: str
    file_id: str
    header_names: list[str]
    key_columns: list[str] = Field(default_factory=list)  # created vs updated is decided by these
    rules: dict[str, SimColumnRule] = Field(default_factory=dict)
    target_name: str = "PO Lines"  # the list/module name shown in result details


class SimFile(BaseModel):
    id: str
    name: str
    encoding: str = "UTF-8"
    separator: str = ","
    delimiter: str = '"'
    header_row: int = 1
    first_data_row: int = 2
    format: str = "txt"


class SimModel(BaseModel):
    id: str
    name: str
    workspace_id: str
    active_state: str = "UNLOCKED"
    files: list[SimFile] = Field(default_factory=list)
    imports: list[SimImport] = Field(default_factory=list)


class SimWorkspace(BaseModel):
    id: str
    name: str


class SimOAuthClient(BaseModel):
    client_id: str
    client_secret: str | None = None  # auth-code clients have one; device-grant clients do not
    user: str  # the user who consents (the simulator has no login page)
    rotatable: bool = True
    refresh_token_lifespan_s: float = 43_000


class SimTenant(BaseModel):
    workspaces: list[SimWorkspace]
    models: list[SimModel]
    users: dict[str, str]  # email -> password (Basic auth)
    certificates: dict[str, str] = Field(default_factory=dict)  # email -> PEM of a trusted cert
    oauth_clients: list[SimOAuthClient] = Field(default_factory=list)


def default_tenant(*, certificates: dict[str, str] | None = None) -> SimTenant:
    """One workspace, one model, a PO-lines and an invoice import with their data-source files."""
    po_lines = SimImport(
        id=PO_LINES_IMPORT_ID, name="PO Lines from EDI", file_id=PO_LINES_FILE_ID,
        header_names=["PO Number", "Line", "Supplier", "Buyer Part", "Quantity", "Unit Price",
                      "Delivery Date", "Source"],
        key_columns=["PO Number", "Line"], target_name="PO Lines",
        rules={
            "PO Number": SimColumnRule(required=True),
            "Line": SimColumnRule(required=True, type="number"),
            "Quantity": SimColumnRule(required=True, type="number"),
            "Unit Price": SimColumnRule(type="number"),
            "Delivery Date": SimColumnRule(type="date"),
            "Source": SimColumnRule(allowed=["EDI", "PORTAL"], list_name="Sources"),
        },
    )
    invoices = SimImport(
        id=INVOICES_IMPORT_ID, name="Invoices from EDI", file_id=INVOICES_FILE_ID,
        header_names=["Invoice Number", "Invoice Date", "PO Number", "Supplier", "Currency", "Total"],
        key_columns=["Invoice Number"], target_name="Invoices",
        rules={
            "Invoice Number": SimColumnRule(required=True),
            "Invoice Date": SimColumnRule(required=True, type="date"),
            "Currency": SimColumnRule(allowed=["USD", "EUR", "GBP", "CAD", "MXN"],
                                      list_name="Currencies"),
            "Total": SimColumnRule(type="number"),
        },
    )
    return SimTenant(
        workspaces=[SimWorkspace(id=WORKSPACE_ID, name="Supply Chain")],
        models=[SimModel(
            id=MODEL_ID, name="Procurement Planning", workspace_id=WORKSPACE_ID,
            files=[SimFile(id=PO_LINES_FILE_ID, name="PO_lines.csv"),
                   SimFile(id=INVOICES_FILE_ID, name="Invoices.csv")],
            imports=[po_lines, invoices],
        )],
        users={DEFAULT_USER: DEFAULT_PASSWORD},
        certificates=dict(certificates or {}),
        oauth_clients=[SimOAuthClient(client_id=OAUTH_CLIENT_ID, client_secret=OAUTH_CLIENT_SECRET,
                                      user=DEFAULT_USER)],
    )


# --------------------------------------------------------------------------------------------
# Fault knobs
# --------------------------------------------------------------------------------------------

class RateLimit(BaseModel):
    capacity: float = 600  # tenant-wide token bucket (§8: 600/min, refill 10/s)
    refill_per_s: float = 10


class Burst429(BaseModel):
    count: int
    route: str = "*"  # fnmatch pattern against the path or "METHOD path"
    retry_after: float | str | None = 1  # seconds, an HTTP-date, or None (header omitted)


class Transient5xx(BaseModel):
    rate: float = 0.0
    codes: list[int] = Field(default_factory=lambda: [500, 502, 503, 504])
    route: str = "*"


class Latency(BaseModel):
    min_ms: float = 0
    max_ms: float = 0
    route: str = "*"


class ChurnLimit(BaseModel):
    count: int
    window_s: float = 60


class ModelStateFault(BaseModel):
    state: Literal["LOCKED", "ARCHIVED", "OFFLINE", "DEPLOYED", "UNLOCKED"]
    count: int | None = None  # answer this many writes with the state's status, then recover
    model_id: str | None = None  # None: every model


class ModelBusy(BaseModel):
    duration_s: float = 0  # another user's import holds the model this long (from when posted)
    mode: Literal["block", "409"] = "block"  # what non-exempt calls get while a model is busy


class TaskTiming(BaseModel):
    queue_s: float = 0.0  # stays NOT_STARTED this long
    run_s: float = 0.0  # then IN_PROGRESS this long
    progress_steps: int = 1


class TaskOutcome(BaseModel):
    failed: str | None = None  # e.g. "importFailedGeneralError": the whole task fails
    row_failures: int = 0  # force the first N data rows to fail
    cancel_after_s: float | None = None  # the task cancels itself (another user) after N s
    count: int | None = None  # apply to this many tasks, then clear


class ChunkLimits(BaseModel):
    max_bytes: int = 50_000_000
    max_chunks: int = 1000
    on_violation: int = 400


class SimFaults(BaseModel):
    """Runtime knobs (§12). POST ``/_sim/faults`` merges the given keys into the current set.

    Action keys (not stored): ``expire_token_now`` (every live token expires), ``revoke_all``
    (tokens and refresh tokens revoked).
    """

    seed: int = 0
    rate_limit: RateLimit | None = Field(default_factory=RateLimit)
    burst_429: list[Burst429] = Field(default_factory=list)
    token_ttl_seconds: float = 2100
    reauth_churn_limit: ChurnLimit | None = None
    model_state: ModelStateFault | None = None
    model_busy: ModelBusy = Field(default_factory=ModelBusy)
    task_timing: TaskTiming = Field(default_factory=TaskTiming)
    task_outcome: TaskOutcome = Field(default_factory=TaskOutcome)
    dump_expired: bool = False
    dump_204: bool = False
    dump_chunk_bytes: int = 10_000_000
    file_ttl_seconds: float = 48 * 3600
    dump_ttl_seconds: float = 48 * 3600
    chunk_limits: ChunkLimits = Field(default_factory=ChunkLimits)
    transient_5xx: Transient5xx | None = None
    complete_requires_body: bool = True
    latency_ms: Latency | None = None
    header_mismatch_policy: Literal["fail_task", "ignore_columns"] = "fail_task"
    import_headers: dict[str, list[str]] = Field(default_factory=dict)  # model builder renames


_STATE_STATUS = {"ARCHIVED": 422, "LOCKED": 423, "OFFLINE": 424, "DEPLOYED": 425}
_HTTP_REASON = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                405: "Method Not Allowed", 409: "Conflict", 415: "Unsupported Media Type",
                422: "Unprocessable Entity", 423: "Locked", 424: "Failed Dependency",
                425: "Too Early", 429: "Too Many Requests", 500: "Internal Server Error",
                502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


# --------------------------------------------------------------------------------------------
# Runtime state records
# --------------------------------------------------------------------------------------------

@dataclass
class _Token:
    value: str
    token_id: str
    refresh_token_id: str
    user: str
    expires_at: float  # epoch seconds
    revoked: bool = False
    kind: str = "auth"  # "auth" (token service) or "oauth" (OAuth access token)


@dataclass
class _RefreshToken:
    value: str
    client_id: str
    user: str
    scope: str
    family_expires_at: float
    used: bool = False
    revoked: bool = False


@dataclass
class _FileContent:
    chunk_count: int  # -1: unknown (streaming, finished by /complete)
    chunks: dict[int, bytes] = field(default_factory=dict)
    complete: bool = False
    last_used: float = field(default_factory=time.time)
    wire_sizes: dict[int, int] = field(default_factory=dict)

    def data(self) -> bytes:
        return b"".join(self.chunks[k] for k in sorted(self.chunks))


@dataclass
class _Task:
    task_id: str
    import_id: str
    model_id: str
    user: str
    creation_ms: int
    state: str = "NOT_STARTED"
    progress: float = 0.0
    current_step: str = "Waiting for the model to become available."
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    polled_states: list[str] = field(default_factory=list)
    poll_times: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "taskInformation", "taskId": self.task_id,
                                "taskState": self.state, "creationTime": self.creation_ms,
                                "currentStep": self.current_step, "progress": self.progress}
        if self.result is not None:
            body["result"] = self.result
        return body


@dataclass
class _Dump:
    task_id: str
    data: bytes
    last_access: float


class _SimError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _iso_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _api_error(status: int, path: str, message: str | None = None,
               headers: dict[str, str] | None = None) -> _SimError:
    body = {"status": {"code": status, "message": message or _HTTP_REASON.get(status, "Error")},
            "path": path, "timestamp": _iso_now()}
    return _SimError(JSONResponse(body, status_code=status, headers=headers))


def _auth_error(status: int, code: str, message: str) -> _SimError:
    return _SimError(JSONResponse({"status": code, "statusMessage": message}, status_code=status))


def _oauth_error(status: int, error: str, description: str) -> _SimError:
    return _SimError(JSONResponse({"error": error, "error_description": description},
                                  status_code=status))


def _route_matches(pattern: str, method: str, path: str) -> bool:
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(f"{method} {path}", pattern)


def _envelope(key: str, payload: Any, schema: str | None = None) -> dict[str, Any]:
    return {"meta": {"schema": schema} if schema else {},
            "status": {"code": 200, "message": "Success"}, key: payload}


def _hex32(upper: bool) -> str:
    value = uuid.uuid4().hex
    return value.upper() if upper else value


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------

class AnaplanSimulator:
    """State and behaviour of one simulated Anaplan tenant; :attr:`app` is its ASGI app."""

    REQUEST_LOG_CAP = 20_000

    def __init__(self, tenant: SimTenant | None = None, faults: SimFaults | None = None) -> None:
        self.tenant = tenant or default_tenant()
        self.faults = faults or SimFaults()
        self._rng = random.Random(self.faults.seed)
        self._models = {m.id: m for m in self.tenant.models}
        self._workspaces = {w.id: w for w in self.tenant.workspaces}
        self._trusted_certs: dict[bytes, tuple[str, x509.Certificate]] = {}
        for user, pem in self.tenant.certificates.items():
            cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
            self._trusted_certs[cert.fingerprint(hashes.SHA256())] = (user, cert)
        self._oauth_clients = {c.client_id: c for c in self.tenant.oauth_clients}
        # runtime
        self._tokens: dict[str, _Token] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._auth_codes: dict[str, tuple[str, str, str, float]] = {}  # code -> client,redirect,scope,exp
        self._device_codes: dict[str, dict[str, Any]] = {}
        self._auth_times: dict[str, deque[float]] = {}
        self._seen_nonces: set[bytes] = set()
        self._bucket_tokens = self.faults.rate_limit.capacity if self.faults.rate_limit else 0.0
        self._bucket_at = time.monotonic()
        self._files: dict[tuple[str, str], _FileContent] = {}  # (user, file_id)
        self._extra_files: dict[str, SimFile] = {}  # created by POST to an unknown id (§5.2)
        self._extra_file_model: dict[str, str] = {}
        self._next_file_id = 113_000_000_100
        self._tasks: dict[str, _Task] = {}
        self._queues: dict[str, deque[_Task]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, _Task] = {}
        self._busy_until: float = 0.0
        self._dumps: dict[tuple[str, str], _Dump] = {}  # (user, import_id)
        self._imported: dict[str, dict[tuple[str, ...], dict[str, str]]] = {}
        self._request_counts: dict[str, int] = {}
        self._request_log: deque[dict[str, Any]] = deque(maxlen=self.REQUEST_LOG_CAP)
        self._file_conflicts: list[dict[str, Any]] = []
        self._oauth_stats = {"refresh_tokens_issued": 0, "refresh_reuse_rejected": 0}
        self.app = self._build_app()

    # ---------------------------------------------------------------- control surface

    def set_faults(self, changes: dict[str, Any]) -> SimFaults:
        """Merge knob changes (same semantics as POST /_sim/faults)."""
        changes = dict(changes)
        if changes.pop("expire_token_now", False):
            for tok in self._tokens.values():
                tok.expires_at = min(tok.expires_at, time.time() - 1)
        if changes.pop("revoke_all", False):
            for tok in self._tokens.values():
                tok.revoked = True
            for rt in self._refresh_tokens.values():
                rt.revoked = True
        merged = {**self.faults.model_dump(), **changes}
        self.faults = SimFaults.model_validate(merged)
        if "seed" in changes:
            self._rng = random.Random(self.faults.seed)
        if "rate_limit" in changes and self.faults.rate_limit:
            self._bucket_tokens = self.faults.rate_limit.capacity
            self._bucket_at = time.monotonic()
        if "model_busy" in changes:
            self._busy_until = time.time() + self.faults.model_busy.duration_s
        for import_id, headers in self.faults.import_headers.items():
            for model in self._models.values():
                for imp in model.imports:
                    if imp.id == import_id:
                        imp.header_names = list(headers)
        return self.faults

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /_sim/state`` returns."""
        files = {}
        for (user, file_id), content in self._files.items():
            files.setdefault(file_id, {})[user] = {
                "chunkCount": content.chunk_count, "complete": content.complete,
                "chunkSizes": [len(content.chunks[k]) for k in sorted(content.chunks)],
                "wireSizes": [content.wire_sizes[k] for k in sorted(content.wire_sizes)],
                "size": sum(len(c) for c in content.chunks.values()),
            }
        return {
            "requests": dict(self._request_counts),
            "request_log": list(self._request_log),
            "imported_rows": {imp: list(rows.values()) for imp, rows in self._imported.items()},
            "files": files,
            "tasks": [{**t.as_json(), "importId": t.import_id, "user": t.user,
                       "polledStates": t.polled_states, "pollTimes": t.poll_times}
                      for t in self._tasks.values()],
            "file_conflicts": list(self._file_conflicts),
            "oauth": dict(self._oauth_stats),
            "live_tokens": sum(1 for t in self._tokens.values()
                               if not t.revoked and t.expires_at > time.time()),
            "rate_limit_tokens": self._bucket_tokens,
        }

    # ---------------------------------------------------------------- app

    def _build_app(self) -> FastAPI:  # noqa: C901 - one place that wires every route
        sim = self
        app = FastAPI(title="Anaplan simulator", openapi_url=None, docs_url=None, redoc_url=None)

        @app.exception_handler(_SimError)
        async def _sim_error(_: Request, exc: _SimError) -> Response:
            return exc.response

        @app.exception_handler(StarletteHTTPException)
        async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
            if request.url.path.startswith("/2/0"):
                return _api_error(exc.status_code, request.url.path).response
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

        @app.exception_handler(RequestValidationError)
        async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
            return _api_error(400, request.url.path, "Bad Request").response

        app.add_middleware(_RequestLogMiddleware, sim=sim)

        async def gate(request: Request) -> None:
            await sim._gate(request)

        async def principal(request: Request) -> str:
            return sim._principal(request)

        auth = APIRouter(dependencies=[Depends(gate)])
        api = APIRouter(dependencies=[Depends(gate)])
        scoped = APIRouter()

        # ---- auth service --------------------------------------------------------------
        @auth.post("/token/authenticate")
        async def authenticate(request: Request) -> Response:
            return await sim._authenticate(request)

        @auth.post("/token/refresh")
        async def refresh(request: Request) -> Response:
            tok = sim._auth_service_token(request, bearer_status=400)
            tok.expires_at = time.time() + sim.faults.token_ttl_seconds
            tok.refresh_token_id = str(uuid.uuid4())
            return JSONResponse(sim._token_envelope(tok, "Token refreshed", request))

        @auth.get("/token/validate")
        async def validate(request: Request) -> Response:
            tok = sim._auth_service_token(request, bearer_status=400)
            return JSONResponse({
                "meta": {"validationUrl": str(request.base_url) + "token/validate"},
                "status": "SUCCESS", "statusMessage": "Token validated",
                "tokenInfo": {"expiresAt": int(tok.expires_at * 1000), "tokenId": tok.token_id},
                "userInfo": {"userGuid": hashlib.md5(tok.user.encode()).hexdigest(),
                             "userId": tok.user, "customerGuid": "0" * 32},
            })

        @auth.post("/token/logout")
        async def logout(request: Request) -> Response:
            tok = sim._auth_service_token(request, bearer_status=401)
            tok.revoked = True
            return Response(status_code=204)

        # ---- OAuth host ------------------------------------------------------------------
        @auth.get("/auth/authorize")
        async def authorize(request: Request) -> Response:
            return sim._authorize(request)

        @auth.post("/oauth/device/code")
        async def device_code(request: Request) -> Response:
            return sim._device_code(request, await _read_form_or_json(request))

        @auth.get("/oauth/device/verify")
        async def device_verify(user_code: str) -> Response:
            for entry in sim._device_codes.values():
                if entry["user_code"] == user_code:
                    entry["approved"] = True
                    return JSONResponse({"approved": True})
            raise _oauth_error(400, "invalid_request", "unknown user_code")

        @auth.post("/oauth/token")
        async def oauth_token(request: Request) -> Response:
            return sim._oauth_token(await _read_form_or_json(request))

        # ---- Integration API: tenant level ---------------------------------------------
        @api.get("/2/0/users/me")
        async def users_me(user: str = Depends(principal)) -> Response:
            return JSONResponse(_envelope("user", {
                "id": hashlib.md5(user.encode()).hexdigest(), "email": user, "firstName": "EDI",
                "lastName": "Gateway", "active": True, "lastLoginDate": _iso_now()}))

        @api.get("/2/0/workspaces")
        async def workspaces(request: Request, user: str = Depends(principal)) -> Response:
            items = [{"id": w.id, "name": w.name, "active": True, "sizeAllowance": 1 << 30,
                      "currentSize": 1 << 20} for w in sim._workspaces.values()]
            return JSONResponse(sim._page("workspaces", items, request))

        @api.get("/2/0/models")
        async def models(request: Request, user: str = Depends(principal)) -> Response:
            return JSONResponse(sim._page("models", [sim._model_json(m) for m in sim._models.values()],
                                          request))

        @api.get("/2/0/workspaces/{workspace_id}/models")
        async def workspace_models(workspace_id: str, request: Request,
                                   user: str = Depends(principal)) -> Response:
            if workspace_id not in sim._workspaces:
                raise _api_error(404, request.url.path)
            items = [sim._model_json(m) for m in sim._models.values()
                     if m.workspace_id == workspace_id]
            return JSONResponse(sim._page("models", items, request))

        @api.get("/2/0/models/{model_id}")
        async def model_detail(model_id: str, request: Request,
                               user: str = Depends(principal)) -> Response:
            model = sim._model(None, model_id, request)
            await sim._await_model_free(model, request)
            return JSONResponse(_envelope("model", sim._model_json(model)))

        @api.get("/2/0/workspaces/{workspace_id}/models/{model_id}")
        async def model_detail_405(workspace_id: str, model_id: str, request: Request,
                                   user: str = Depends(principal)) -> Response:
            raise _api_error(405, request.url.path)

        @api.get("/2/0/models/{model_id}/status")
        async def model_status(model_id: str, request: Request,
                               user: str = Depends(principal)) -> Response:
            model = sim._model(None, model_id, request)
            running = sim._running.get(model.id)
            if running is not None:
                status = {"currentStep": running.current_step, "progress": running.progress,
                          "tooltip": "Import running", "taskId": running.task_id,
                          "creationTime": running.creation_ms}
            else:
                status = {"currentStep": "Open", "progress": -1.0, "tooltip": ""}
            return JSONResponse({"requestStatus": status})

        # ---- Integration API: model scoped (mounted under both path forms) --------------
        @scoped.get("/files")
        async def list_files(model_id: str, request: Request, workspace_id: str | None = None,
                             user: str = Depends(principal)) -> Response:
            model = sim._model(workspace_id, model_id, request)
            await sim._await_model_free(model, request)
            items = [sim._file_json(f, user) for f in sim._model_files(model).values()]
            return JSONResponse(sim._page("files", items, request))

        @scoped.post("/files/{file_id}")
        async def set_chunk_count(model_id: str, file_id: str, request: Request,
                                  workspace_id: str | None = None,
                                  user: str = Depends(principal)) -> Response:
            return await sim._set_chunk_count(workspace_id, model_id, file_id, request, user)

        @scoped.put("/files/{file_id}")
        async def put_whole_file(model_id: str, file_id: str, request: Request,
                                 workspace_id: str | None = None,
                                 user: str = Depends(principal)) -> Response:
            model, sim_file = await sim._writable_file(workspace_id, model_id, file_id, request)
            body = await request.body()
            sim._note_overwrite(model, sim_file.id, user, request)
            sim._files[(user, sim_file.id)] = _FileContent(chunk_count=1, chunks={0: body},
                                                           complete=True, wire_sizes={0: len(body)})
            return Response(status_code=204)

        @scoped.get("/files/{file_id}")
        async def get_whole_file(model_id: str, file_id: str, request: Request,
                                 workspace_id: str | None = None,
                                 user: str = Depends(principal)) -> Response:
            model = sim._model(workspace_id, model_id, request)
            await sim._await_model_free(model, request)
            sim_file = sim._file(model, file_id, request)
            content = sim._live_content(user, sim_file.id)
            if content is None or not content.chunks:
                raise _api_error(404, request.url.path)
            return Response(content.data(), media_type="application/octet-stream")

        @scoped.delete("/files/{file_id}")
        async def delete_file(model_id: str, file_id: str, request: Request,
                              workspace_id: str | None = None,
                              user: str = Depends(principal)) -> Response:
            model, sim_file = await sim._writable_file(workspace_id, model_id, file_id, request)
            sim._files.pop((user, sim_file.id), None)
            return Response(status_code=204)

        @scoped.get("/files/{file_id}/chunks")
        async def list_chunks(model_id: str, file_id: str, request: Request,
                              workspace_id: str | None = None,
                              user: str = Depends(principal)) -> Response:
            model = sim._model(workspace_id, model_id, request)
            await sim._await_model_free(model, request)
            sim_file = sim._file(model, file_id, request)
            content = sim._live_content(user, sim_file.id)
            ids: list[int] = []
            if content is not None:
                ids = (list(range(content.chunk_count)) if content.chunk_count >= 0
                       else sorted(content.chunks))
            return JSONResponse(_envelope_list("chunks", [{"id": str(k), "name": f"Chunk {k}"}
                                                          for k in ids]))

        @scoped.put("/files/{file_id}/chunks/{chunk_id}")
        async def put_chunk(model_id: str, file_id: str, chunk_id: str, request: Request,
                            workspace_id: str | None = None,
                            user: str = Depends(principal)) -> Response:
            return await sim._put_chunk(workspace_id, model_id, file_id, chunk_id, request, user)

        @scoped.get("/files/{file_id}/chunks/{chunk_id}")
        async def get_chunk(model_id: str, file_id: str, chunk_id: str, request: Request,
                            workspace_id: str | None = None,
                            user: str = Depends(principal)) -> Response:
            model = sim._model(workspace_id, model_id, request)
            await sim._await_model_free(model, request)
            sim_file = sim._file(model, file_id, request)
            content = sim._live_content(user, sim_file.id)
            if content is None or not chunk_id.isdigit() or int(chunk_id) not in content.chunks:
                raise _api_error(404, request.url.path)
            return Response(content.chunks[int(chunk_id)], media_type="application/octet-stream")

        @scoped.post("/files/{file_id}/complete")
        async def complete(model_id: str, file_id: str, request: Request,
                           workspace_id: str | None = None,
                           user: str = Depends(principal)) -> Response:
            model, sim_file = await sim._writable_file(workspace_id, model_id, file_id, request)
            body = await request.body()
            if not body.strip() and sim.faults.complete_requires_body:
                raise _api_error(500, request.url.path, "Internal Server Error")  # observed (§5.4)
            content = sim._live_content(user, sim_file.id)
            if content is None:
                raise _api_error(400, request.url.path, "No upload in progress for this file")
            content.complete = True
            content.chunk_count = len(content.chunks)
            return JSONResponse(_envelope("file", sim._file_json(sim_file, user)))

        @scoped.get("/imports")
        async def list_imports(model_id: str, request: Request, workspace_id: str | None = None,
                               user: str = Depends(principal)) -> Response:
            model = sim._model(workspace_id, model_id, request)
            items = [{"id": i.id, "name": i.name, "importDataSourceId": i.file_id,
                      "importType": "HIERARCHY_DATA"} for i in model.imports]
            return JSONResponse(sim._page("imports", items, request))

        @scoped.get("/imports/{import_id}")
        async def import_metadata(model_id: str, import_id: str, request: Request,
                                  workspace_id: str | None = None,
                                  user: str = Depends(principal)) -> Response:
            model = sim._model(workspace_id, model_id, request)
            imp = sim._import(model, import_id, request)
            src = sim._model_files(model)[imp.file_id]
            return JSONResponse(_envelope("importMetadata", {
                "name": imp.name, "type": "FILE",
                "source": {"textEncoding": src.encoding, "columnSeparator": src.separator,
                           "textDelimiter": src.delimiter, "headerRow": src.header_row,
                           "firstDataRow": src.first_data_row, "decimalSeparator": ".",
                           "headerNames": list(imp.header_names),
                           "columnCount": len(imp.header_names)}}))

        @scoped.post("/imports/{import_id}/tasks")
        async def start_task(model_id: str, import_id: str, request: Request,
                             workspace_id: str | None = None,
                             user: str = Depends(principal)) -> Response:
            return await sim._start_task(workspace_id, model_id, import_id, request, user)

        @scoped.get("/imports/{import_id}/tasks")
        async def list_tasks(model_id: str, import_id: str, request: Request,
                             workspace_id: str | None = None,
                             user: str = Depends(principal)) -> Response:
            model = sim._model(workspace_id, model_id, request)
            tasks = sorted((t for t in sim._tasks.values()
                            if t.model_id == model.id and t.import_id == import_id),
                           key=lambda t: t.creation_ms,
                           reverse=request.query_params.get("sort") == "-creationTime")
            items = [{"taskId": t.task_id, "taskState": t.state, "creationTime": t.creation_ms}
                     for t in tasks]
            return JSONResponse(sim._page("tasks", items, request))

        @scoped.get("/imports/{import_id}/tasks/{task_id}")
        async def get_task(model_id: str, import_id: str, task_id: str, request: Request,
                           workspace_id: str | None = None,
                           user: str = Depends(principal)) -> Response:
            task = sim._task(workspace_id, model_id, import_id, task_id, request)
            task.polled_states.append(task.state)
            task.poll_times.append(time.time())
            return JSONResponse(_envelope("task", task.as_json()))

        @scoped.delete("/imports/{import_id}/tasks/{task_id}")
        async def cancel_task(model_id: str, import_id: str, task_id: str, request: Request,
                              workspace_id: str | None = None,
                              user: str = Depends(principal)) -> Response:
            task = sim._task(workspace_id, model_id, import_id, task_id, request)
            if task.state == "NOT_STARTED":
                task.state, task.current_step = "CANCELLED", "Cancelled."
                body = {**task.as_json(), "taskState": "CANCELLING"}
            elif task.state == "IN_PROGRESS":
                task.cancel_requested = True
                task.state = "CANCELLING"
                body = task.as_json()
            else:
                body = task.as_json()
            return JSONResponse(_envelope("task", body))

        @scoped.get("/imports/{import_id}/tasks/{task_id}/dump")
        async def get_dump(model_id: str, import_id: str, task_id: str, request: Request,
                           workspace_id: str | None = None,
                           user: str = Depends(principal)) -> Response:
            if sim.faults.dump_204:
                return Response(status_code=204)
            dump = sim._dump(workspace_id, model_id, import_id, task_id, request, user)
            return Response(dump.data, media_type="text/plain")

        @scoped.get("/imports/{import_id}/tasks/{task_id}/dump/chunks")
        async def list_dump_chunks(model_id: str, import_id: str, task_id: str, request: Request,
                                   workspace_id: str | None = None,
                                   user: str = Depends(principal)) -> Response:
            if sim.faults.dump_204:
                return JSONResponse(_envelope_list("chunks", []))
            dump = sim._dump(workspace_id, model_id, import_id, task_id, request, user)
            n = max(1, math.ceil(len(dump.data) / sim.faults.dump_chunk_bytes))
            return JSONResponse(_envelope_list("chunks", [{"id": str(k), "name": f"Chunk {k}"}
                                                          for k in range(n)]))

        @scoped.get("/imports/{import_id}/tasks/{task_id}/dump/chunks/{chunk_id}")
        async def get_dump_chunk(model_id: str, import_id: str, task_id: str, chunk_id: str,
                                 request: Request, workspace_id: str | None = None,
                                 user: str = Depends(principal)) -> Response:
            dump = sim._dump(workspace_id, model_id, import_id, task_id, request, user)
            size = sim.faults.dump_chunk_bytes
            if not chunk_id.isdigit() or int(chunk_id) * size >= max(len(dump.data), 1):
                raise _api_error(404, request.url.path)
            k = int(chunk_id)
            return Response(dump.data[k * size:(k + 1) * size], media_type="application/octet-stream")

        from gateway.integrations.anaplan.simulator.lists import actions_router
        scoped.include_router(actions_router(sim))  # processes and the list-items API
        api.include_router(scoped, prefix="/2/0/workspaces/{workspace_id}/models/{model_id}")
        api.include_router(scoped, prefix="/2/0/models/{model_id}")

        # ---- simulator control -----------------------------------------------------------
        @app.get("/_sim/faults")
        async def get_faults() -> Response:
            return JSONResponse(sim.faults.model_dump())

        @app.post("/_sim/faults")
        async def post_faults(request: Request) -> Response:
            try:
                changes = await request.json()
                faults = sim.set_faults(changes)
            except (ValueError, TypeError) as exc:
                return JSONResponse({"detail": str(exc)}, status_code=400)
            return JSONResponse(faults.model_dump())

        @app.delete("/_sim/faults")
        async def reset_faults() -> Response:
            sim.faults = SimFaults()
            sim._busy_until = 0.0
            return JSONResponse(sim.faults.model_dump())

        @app.get("/_sim/state")
        async def state() -> Response:
            return JSONResponse(sim.snapshot())

        @app.get("/_sim/files/{file_id}")
        async def sim_file(file_id: str, user: str = DEFAULT_USER) -> Response:
            content = sim._files.get((user, file_id))
            if content is None:
                return JSONResponse({"detail": "no content"}, status_code=404)
            return Response(content.data(), media_type="application/octet-stream")

        app.include_router(auth)
        app.include_router(api)
        return app

    # ---------------------------------------------------------------- request gate & auth

    async def _gate(self, request: Request) -> None:
        """Latency, injected 429/5xx and the tenant rate limit, in that order."""
        f = self.faults
        method, path = request.method, request.url.path
        if f.latency_ms and _route_matches(f.latency_ms.route, method, path):
            delay = self._rng.uniform(f.latency_ms.min_ms, max(f.latency_ms.min_ms, f.latency_ms.max_ms))
            await asyncio.sleep(delay / 1000)
        for burst in f.burst_429:
            if burst.count > 0 and _route_matches(burst.route, method, path):
                burst.count -= 1
                headers = {} if burst.retry_after is None else {"Retry-After": _fmt_retry(burst.retry_after)}
                raise _api_error(429, path, headers=headers)
        t5 = f.transient_5xx
        if t5 and t5.rate > 0 and _route_matches(t5.route, method, path) and self._rng.random() < t5.rate:
            raise _api_error(self._rng.choice(t5.codes), path)
        if path.startswith("/2/0") and f.rate_limit:
            now = time.monotonic()
            self._bucket_tokens = min(f.rate_limit.capacity,
                                      self._bucket_tokens + (now - self._bucket_at) * f.rate_limit.refill_per_s)
            self._bucket_at = now
            if self._bucket_tokens < 1:
                wait = (1 - self._bucket_tokens) / f.rate_limit.refill_per_s if f.rate_limit.refill_per_s else 60
                raise _api_error(429, path, headers={"Retry-After": str(max(1, math.ceil(wait)))})
            self._bucket_tokens -= 1

    def _principal(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        # The Integration API accepts both schemes (§2.2).
        if scheme not in ("AnaplanAuthToken", "Bearer") or not value:
            raise _api_error(401, request.url.path)
        tok = self._tokens.get(value.strip())
        if tok is None or tok.revoked or tok.expires_at <= time.time():
            raise _api_error(401, request.url.path)
        return tok.user

    def _auth_service_token(self, request: Request, *, bearer_status: int) -> _Token:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme == "Bearer":  # the auth service rejects Bearer (§2.2)
            raise _auth_error(bearer_status, "FAILURE_BAD_HEADER", "Unsupported authorization scheme")
        if scheme != "AnaplanAuthToken" or not value:
            raise _auth_error(400, "FAILURE_BAD_HEADER", "Missing AnaplanAuthToken header")
        tok = self._tokens.get(value.strip())
        if tok is None or tok.revoked or tok.expires_at <= time.time() or tok.kind != "auth":
            raise _auth_error(401, "FAILURE_BAD_CREDENTIAL", "Token is invalid or expired")
        return tok

    async def _authenticate(self, request: Request) -> Response:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme == "Basic":
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise _auth_error(400, "FAILURE_BAD_HEADER", "Malformed Basic header") from None
            if not sep:
                raise _auth_error(400, "FAILURE_BAD_HEADER", "Malformed Basic header")
            expected = self.tenant.users.get(user)
            if expected is None or not secrets.compare_digest(expected, password):
                raise _auth_error(401, "FAILURE_BAD_CREDENTIAL", "Invalid credentials")
        elif scheme == "CACertificate":
            user = self._verify_certificate(value, await request.body())
        else:
            raise _auth_error(400, "FAILURE_BAD_HEADER", "Unsupported authorization scheme")
        self._check_churn(user)
        tok = self._issue_token(user, "auth")
        return JSONResponse(self._token_envelope(tok, "Login successful", request), status_code=201)

    def _verify_certificate(self, header_value: str, body: bytes) -> str:
        """CA-certificate auth (§2.4): the presented certificate must be a configured one, and
        ``encodedSignedData`` must be its key's RSA-PKCS#1v1.5-SHA512 signature of ``encodedData``."""
        bad = _auth_error(401, "FAILURE_BAD_CREDENTIAL", "Certificate authentication failed")
        try:
            pem = base64.b64decode(header_value, validate=True)
            cert = x509.load_pem_x509_certificate(pem)
            payload = json.loads(body or b"{}")
            nonce = base64.b64decode(payload["encodedData"], validate=True)
            signature = base64.b64decode(payload["encodedSignedData"], validate=True)
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise _auth_error(400, "FAILURE_BAD_HEADER", "Malformed certificate payload") from None
        trusted = self._trusted_certs.get(cert.fingerprint(hashes.SHA256()))
        if trusted is None:
            raise bad
        user, trusted_cert = trusted
        now = datetime.now(timezone.utc)
        if not (trusted_cert.not_valid_before_utc <= now <= trusted_cert.not_valid_after_utc):
            raise bad
        if len(nonce) < 100:
            raise _auth_error(400, "FAILURE_BAD_HEADER", "encodedData must be at least 100 bytes")
        public_key = trusted_cert.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise bad
        try:
            public_key.verify(signature, nonce, padding.PKCS1v15(), hashes.SHA512())
        except InvalidSignature:
            raise bad from None
        digest = hashlib.sha256(nonce).digest()
        if digest in self._seen_nonces:  # a replayed payload is refused
            raise bad
        self._seen_nonces.add(digest)
        return user

    def _check_churn(self, user: str) -> None:
        limit = self.faults.reauth_churn_limit
        times = self._auth_times.setdefault(user, deque())
        now = time.time()
        times.append(now)
        if limit is None:
            return
        while times and times[0] < now - limit.window_s:
            times.popleft()
        if len(times) > limit.count:
            raise _auth_error(401, "FAILURE_BAD_CREDENTIAL", "Too many authentications")

    def _issue_token(self, user: str, kind: str) -> _Token:
        tok = _Token(value=secrets.token_urlsafe(32), token_id=str(uuid.uuid4()),
                     refresh_token_id=str(uuid.uuid4()), user=user,
                     expires_at=time.time() + self.faults.token_ttl_seconds, kind=kind)
        self._tokens[tok.value] = tok
        return tok

    @staticmethod
    def _token_envelope(tok: _Token, message: str, request: Request) -> dict[str, Any]:
        return {"meta": {"validationUrl": str(request.base_url) + "token/validate"},
                "status": "SUCCESS", "statusMessage": message,
                "tokenInfo": {"tokenId": tok.token_id, "tokenValue": tok.value,
                              "expiresAt": int(tok.expires_at * 1000),
                              "refreshTokenId": tok.refresh_token_id}}

    # ---------------------------------------------------------------- OAuth

    def _authorize(self, request: Request) -> Response:
        q = request.query_params
        client = self._oauth_clients.get(q.get("client_id", ""))
        if client is None or q.get("response_type") != "code" or not q.get("redirect_uri"):
            raise _oauth_error(400, "invalid_request", "unknown client or bad parameters")
        code = secrets.token_urlsafe(16)
        scope = q.get("scope", "openid")
        self._auth_codes[code] = (client.client_id, q["redirect_uri"], scope, time.time() + 600)
        params = {"code": code}
        if q.get("state"):
            params["state"] = q["state"]
        sep = "&" if "?" in q["redirect_uri"] else "?"
        # No login page: the configured user consents at once.
        return RedirectResponse(q["redirect_uri"] + sep + urlencode(params), status_code=302)

    def _device_code(self, request: Request, form: dict[str, str]) -> Response:
        client = self._oauth_clients.get(form.get("client_id", ""))
        if client is None:
            raise _oauth_error(401, "invalid_client", "unknown client")
        device = secrets.token_urlsafe(24)
        user_code = secrets.token_hex(4).upper()
        verify = str(request.base_url) + "oauth/device/verify"
        self._device_codes[device] = {"client_id": client.client_id, "user_code": user_code,
                                      "scope": form.get("scope", "openid"), "approved": False,
                                      "expires_at": time.time() + 600}
        return JSONResponse({"device_code": device, "user_code": user_code,
                             "verification_uri": verify,
                             "verification_uri_complete": f"{verify}?user_code={user_code}",
                             "expires_in": 600, "interval": 5})

    def _oauth_token(self, form: dict[str, str]) -> Response:
        grant = form.get("grant_type", "")
        client = self._oauth_clients.get(form.get("client_id", ""))
        if client is None:
            raise _oauth_error(401, "invalid_client", "unknown client")
        if grant == "authorization_code":
            if client.client_secret and not secrets.compare_digest(
                    client.client_secret, form.get("client_secret", "")):
                raise _oauth_error(401, "invalid_client", "client authentication failed")
            entry = self._auth_codes.pop(form.get("code", ""), None)
            if (entry is None or entry[0] != client.client_id or entry[3] < time.time()
                    or entry[1] != form.get("redirect_uri")):
                raise _oauth_error(400, "invalid_grant", "authorization code is invalid")
            return self._oauth_grant(client, entry[2], family_expires_at=None)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            entry = self._device_codes.get(form.get("device_code", ""))
            if entry is None or entry["client_id"] != client.client_id or entry["expires_at"] < time.time():
                raise _oauth_error(400, "expired_token", "device code is invalid or expired")
            if not entry["approved"]:
                raise _oauth_error(400, "authorization_pending", "waiting for the user")
            del self._device_codes[form["device_code"]]
            return self._oauth_grant(client, entry["scope"], family_expires_at=None)
        if grant == "refresh_token":
            # client_secret is required on refresh only for clients that have one (auth-code).
            if client.client_secret and not secrets.compare_digest(
                    client.client_secret, form.get("client_secret", "")):
                raise _oauth_error(401, "invalid_client", "client authentication failed")
            rt = self._refresh_tokens.get(form.get("refresh_token", ""))
            if rt is None or rt.client_id != client.client_id or rt.revoked \
                    or rt.family_expires_at < time.time():
                raise _oauth_error(400, "invalid_grant", "refresh token is invalid or expired")
            if rt.used:  # rotatable refresh tokens are single use
                self._oauth_stats["refresh_reuse_rejected"] += 1
                raise _oauth_error(400, "invalid_grant", "refresh token has already been used")
            if client.rotatable:
                rt.used = True
                return self._oauth_grant(client, rt.scope, family_expires_at=rt.family_expires_at)
            return self._oauth_grant(client, rt.scope, family_expires_at=rt.family_expires_at,
                                     reuse=rt)
        raise _oauth_error(400, "unsupported_grant_type", "unsupported grant_type")

    def _oauth_grant(self, client: SimOAuthClient, scope: str, *, family_expires_at: float | None,
                     reuse: _RefreshToken | None = None) -> Response:
        access = self._issue_token(client.user, "oauth")
        body: dict[str, Any] = {"access_token": access.value, "token_type": "bearer",
                                "expires_in": int(self.faults.token_ttl_seconds),
                                "scope": " ".join(s for s in scope.split() if s != "profile"),
                                "id_token": secrets.token_urlsafe(24)}
        if "offline_access" in scope.split():
            if reuse is not None:
                body["refresh_token"] = reuse.value
            else:
                rt = _RefreshToken(value=secrets.token_urlsafe(32), client_id=client.client_id,
                                   user=client.user, scope=scope,
                                   family_expires_at=family_expires_at
                                   or time.time() + client.refresh_token_lifespan_s)
                self._refresh_tokens[rt.value] = rt
                self._oauth_stats["refresh_tokens_issued"] += 1
                body["refresh_token"] = rt.value
        return JSONResponse(body)

    # ---------------------------------------------------------------- lookups

    def _model(self, workspace_id: str | None, model_id: str, request: Request) -> SimModel:
        model = self._models.get(model_id)  # dict lookup: ids are case-sensitive
        if model is None or (workspace_id is not None and model.workspace_id != workspace_id):
            raise _api_error(404, request.url.path)
        return model

    def _model_files(self, model: SimModel) -> dict[str, SimFile]:
        files = {f.id: f for f in model.files}
        files.update({fid: f for fid, f in self._extra_files.items()
                      if self._extra_file_model.get(fid) == model.id})
        return files

    def _file(self, model: SimModel, file_id: str, request: Request) -> SimFile:
        sim_file = self._model_files(model).get(file_id)
        if sim_file is None:
            raise _api_error(404, request.url.path)
        return sim_file

    def _import(self, model: SimModel, import_id: str, request: Request) -> SimImport:
        for imp in model.imports:
            if imp.id == import_id:
                return imp
        # Real Anaplan answers 500 for a bogus import id (§8 "known oddities").
        raise _api_error(500 if not import_id.startswith("112") else 404, request.url.path)

    def _task(self, workspace_id: str | None, model_id: str, import_id: str, task_id: str,
              request: Request) -> _Task:
        model = self._model(workspace_id, model_id, request)
        task = self._tasks.get(task_id)
        if task is None or task.model_id != model.id or task.import_id != import_id:
            raise _api_error(404, request.url.path)
        return task

    def _dump(self, workspace_id: str | None, model_id: str, import_id: str, task_id: str,
              request: Request, user: str) -> _Dump:
        self._task(workspace_id, model_id, import_id, task_id, request)
        dump = self._dumps.get((user, import_id))
        now = time.time()
        if (self.faults.dump_expired or dump is None or dump.task_id != task_id
                or dump.last_access + self.faults.dump_ttl_seconds < now):
            raise _api_error(404, request.url.path)
        dump.last_access = now
        return dump

    def _live_content(self, user: str, file_id: str) -> _FileContent | None:
        content = self._files.get((user, file_id))
        if content is not None and content.last_used + self.faults.file_ttl_seconds < time.time():
            del self._files[(user, file_id)]  # private content expired (§5.10)
            return None
        return content

    def _model_json(self, model: SimModel) -> dict[str, Any]:
        return {"id": model.id, "name": model.name, "activeState": self._model_state(model),
                "currentWorkspaceId": model.workspace_id,
                "currentWorkspaceName": self._workspaces[model.workspace_id].name,
                "modelUrl": f"https://us1a.app.anaplan.com/a/springboard-platform-gateway-service/"
                            f"model/{model.id}", "categoryValues": [],
                "modelTransactionRunning": model.id in self._running}

    def _file_json(self, sim_file: SimFile, user: str) -> dict[str, Any]:
        content = self._files.get((user, sim_file.id))
        return {"id": sim_file.id, "name": sim_file.name,
                "chunkCount": content.chunk_count if content else 0,
                "delimiter": sim_file.delimiter, "encoding": sim_file.encoding,
                "firstDataRow": sim_file.first_data_row, "format": sim_file.format,
                "headerRow": sim_file.header_row, "separator": sim_file.separator}

    def _page(self, key: str, items: list[Any], request: Request) -> dict[str, Any]:
        try:
            offset = max(0, int(request.query_params.get("offset", 0)))
            limit = min(5000, max(1, int(request.query_params.get("limit", 5000))))
        except ValueError:
            raise _api_error(400, request.url.path) from None
        page = items[offset:offset + limit]
        paging: dict[str, Any] = {"currentPageSize": len(page), "totalSize": len(items), "offset": offset}
        base = str(request.url).split("?")[0]
        if offset + len(page) < len(items):
            paging["next"] = f"{base}?offset={offset + len(page)}&limit={limit}"
        if offset > 0:
            paging["previous"] = f"{base}?offset={max(0, offset - limit)}&limit={limit}"
        body: dict[str, Any] = {"meta": {"paging": paging}, "status": {"code": 200, "message": "Success"}}
        if page:  # empty collections omit their key (§3)
            body[key] = page
        return body

    # ---------------------------------------------------------------- model state & busy

    def _model_state(self, model: SimModel) -> str:
        fault = self.faults.model_state
        if fault and (fault.model_id in (None, model.id)) and (fault.count is None or fault.count > 0):
            return fault.state
        return model.active_state

    def _check_writable(self, model: SimModel, request: Request) -> None:
        state = self._model_state(model)
        status = _STATE_STATUS.get(state)
        fault = self.faults.model_state
        if fault and fault.count is not None and fault.model_id in (None, model.id) and fault.count > 0:
            fault.count -= 1
        if status:
            raise _api_error(status, request.url.path, f"Model is {state.lower()}")

    def _model_busy(self, model: SimModel) -> bool:
        return model.id in self._running or self._busy_until > time.time()

    async def _await_model_free(self, model: SimModel, request: Request) -> None:
        """Non-exempt endpoints wait while the model runs an action (§8), or answer 409 (knob)."""
        while self._model_busy(model):
            if self.faults.model_busy.mode == "409":
                raise _api_error(409, request.url.path, "Model is busy")
            await asyncio.sleep(0.01)

    async def _writable_file(self, workspace_id: str | None, model_id: str, file_id: str,
                             request: Request) -> tuple[SimModel, SimFile]:
        model = self._model(workspace_id, model_id, request)
        await self._await_model_free(model, request)
        self._check_writable(model, request)
        return model, self._file(model, file_id, request)

    def _note_overwrite(self, model: SimModel, file_id: str, user: str, request: Request) -> None:
        """Record uploads that clobber content another upload or a queued import still needs —
        Anaplan does not lock files (§5.10), so the client must serialise."""
        content = self._files.get((user, file_id))
        reason = None
        if content is not None and not content.complete and content.chunk_count != 0:
            reason = "upload started while another upload to the file was incomplete"
        for task in self._tasks.values():
            imp = next((i for i in model.imports if i.id == task.import_id), None)
            if (imp is not None and imp.file_id == file_id and task.user == user
                    and task.state in ("NOT_STARTED", "IN_PROGRESS")):
                reason = f"file overwritten while import task {task.task_id} was {task.state}"
        if reason:
            self._file_conflicts.append({"file_id": file_id, "user": user, "reason": reason,
                                         "method": request.method, "path": request.url.path,
                                         "t": time.time()})

    # ---------------------------------------------------------------- files

    async def _set_chunk_count(self, workspace_id: str | None, model_id: str, file_id: str,
                               request: Request, user: str) -> Response:
        model = self._model(workspace_id, model_id, request)
        await self._await_model_free(model, request)
        self._check_writable(model, request)
        try:
            payload = json.loads(await request.body() or b"{}")
            count = int(payload["chunkCount"])
        except (ValueError, KeyError, TypeError):
            raise _api_error(400, request.url.path, "chunkCount is required") from None
        if count < -1:
            raise _api_error(400, request.url.path, "chunkCount must be >= -1")
        if count > self.faults.chunk_limits.max_chunks:
            raise _api_error(self.faults.chunk_limits.on_violation, request.url.path,
                             "Too many chunks")
        files = self._model_files(model)
        sim_file = files.get(file_id)
        if sim_file is None:
            # Anaplan creates a new private file named after the unknown id (§5.2).
            self._next_file_id += 1
            sim_file = SimFile(id=str(self._next_file_id), name=file_id)
            self._extra_files[sim_file.id] = sim_file
            self._extra_file_model[sim_file.id] = model.id
        self._note_overwrite(model, sim_file.id, user, request)
        self._files[(user, sim_file.id)] = _FileContent(chunk_count=count, complete=count == 0)
        return JSONResponse(_envelope("file", self._file_json(sim_file, user),
                                      schema=f"{request.base_url}2/0/models/{model.id}/objects/file"))

    async def _put_chunk(self, workspace_id: str | None, model_id: str, file_id: str,
                         chunk_id: str, request: Request, user: str) -> Response:
        model, sim_file = await self._writable_file(workspace_id, model_id, file_id, request)
        content = self._live_content(user, sim_file.id)
        limits = self.faults.chunk_limits
        if content is None:
            raise _api_error(400, request.url.path, "Set the chunk count before uploading chunks")
        if not chunk_id.isdigit() or (content.chunk_count >= 0 and int(chunk_id) >= content.chunk_count):
            raise _api_error(404, request.url.path)
        k = int(chunk_id)
        if k >= limits.max_chunks:
            raise _api_error(limits.on_violation, request.url.path, "Too many chunks")
        wire = await request.body()
        body = wire
        ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
        if ctype in ("application/x-gzip", "application/gzip"):
            try:
                body = gzip.decompress(wire)  # stored decompressed (§5.8)
            except (OSError, EOFError, zlib.error):
                raise _api_error(400, request.url.path, "Chunk is not a valid gzip stream") from None
        elif ctype != "application/octet-stream":
            raise _api_error(415, request.url.path)
        if len(body) > limits.max_bytes:
            raise _api_error(limits.on_violation, request.url.path, "Chunk exceeds the size limit")
        for task in self._tasks.values():  # a chunk landing under a queued import is a conflict
            imp = next((i for i in model.imports if i.id == task.import_id), None)
            if (imp is not None and imp.file_id == sim_file.id and task.user == user
                    and task.state in ("NOT_STARTED", "IN_PROGRESS")):
                self._file_conflicts.append({"file_id": sim_file.id, "user": user,
                                             "reason": f"chunk written while task {task.task_id} "
                                                       f"was {task.state}",
                                             "method": "PUT", "path": request.url.path,
                                             "t": time.time()})
        content.chunks[k] = body
        content.wire_sizes[k] = len(wire)
        content.last_used = time.time()
        if content.chunk_count >= 0 and len(content.chunks) == content.chunk_count:
            content.complete = True  # known count: completion is implicit (§5.3)
        return Response(status_code=204)

    # ---------------------------------------------------------------- tasks

    async def _start_task(self, workspace_id: str | None, model_id: str, import_id: str,
                          request: Request, user: str) -> Response:
        model = self._model(workspace_id, model_id, request)
        self._import(model, import_id, request)
        self._check_writable(model, request)
        raw = await request.body()
        try:
            payload = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise _api_error(400, request.url.path) from None
        unknown = set(payload) - {"localeName", "mappingParameters"}
        if unknown:
            raise _api_error(400, request.url.path,
                             f"Identified an unrecognized '{sorted(unknown)[0]}'")
        task = _Task(task_id=_hex32(upper=True), import_id=import_id, model_id=model.id, user=user,
                     creation_ms=int(time.time() * 1000))
        self._tasks[task.task_id] = task
        self._queues.setdefault(model.id, deque()).append(task)
        worker = self._workers.get(model.id)
        if worker is None or worker.done():
            self._workers[model.id] = asyncio.get_running_loop().create_task(self._run_queue(model))
        return JSONResponse(_envelope("task", {"taskId": task.task_id, "taskState": task.state,
                                               "creationTime": task.creation_ms}))

    async def _run_queue(self, model: SimModel) -> None:
        """Per-model FIFO: one task at a time (§8)."""
        queue = self._queues[model.id]
        while queue:
            task = queue[0]
            timing = self.faults.task_timing
            if timing.queue_s:
                await asyncio.sleep(timing.queue_s)
            while self._busy_until > time.time():
                await asyncio.sleep(0.01)
            if task.state == "CANCELLED":
                queue.popleft()
                continue
            outcome = self.faults.task_outcome
            if outcome.count is not None:
                if outcome.count <= 0:
                    outcome = TaskOutcome()
                else:
                    self.faults.task_outcome.count = outcome.count - 1
            self._running[model.id] = task
            task.state, task.current_step = "IN_PROGRESS", "Processing ..."
            started = time.time()
            steps = max(1, timing.progress_steps)
            for i in range(steps):
                await asyncio.sleep(timing.run_s / steps)
                task.progress = round((i + 1) / steps * 0.99, 3)
                if outcome.cancel_after_s is not None and time.time() - started >= outcome.cancel_after_s:
                    task.cancel_requested = True
                if task.cancel_requested:
                    break
            if task.cancel_requested:
                task.state, task.current_step, task.result = "CANCELLED", "Cancelled.", None
            else:
                try:
                    task.result = self._execute_import(model, task, outcome)
                except Exception as exc:  # a simulator bug must not wedge the model's queue
                    imp = next(i for i in model.imports if i.id == task.import_id)
                    task.result = self._fail_result(imp, "internalError", f"simulator error: {exc!r}")
                task.progress = 1.0
                task.current_step = "Complete." if task.result["successful"] else "Failed."
                task.state = "COMPLETE"
            del self._running[model.id]
            queue.popleft()

    def _fail_result(self, imp: SimImport, code: str, message: str) -> dict[str, Any]:
        return {"successful": False, "failureDumpAvailable": False, "objectId": imp.id,
                "objectName": imp.name,
                "details": [{"type": code, "localMessageText": message, "occurrences": 0,
                             "values": []}]}

    def _execute_import(self, model: SimModel, task: _Task, outcome: TaskOutcome) -> dict[str, Any]:
        """Parse the user's private copy of the data-source file and apply it (§6, §12)."""
        imp = next(i for i in model.imports if i.id == task.import_id)
        src = self._model_files(model)[imp.file_id]
        if outcome.failed:
            return self._fail_result(imp, outcome.failed, f"{imp.name}: import failed ({outcome.failed})")
        content = self._live_content(task.user, imp.file_id)
        if content is None or not content.chunks:
            return self._fail_result(imp, "uploadedFileNoLongerAvailable",
                                     f"The uploaded file for {imp.name} is no longer available")
        if not content.complete:
            return self._fail_result(imp, "importFailedGeneralError",
                                     f"{src.name}: upload incomplete ({len(content.chunks)} of "
                                     f"{content.chunk_count} chunks)")
        content.last_used = time.time()
        try:
            text = content.data().decode(src.encoding)
        except (UnicodeDecodeError, LookupError):
            return self._fail_result(imp, "importFailedGeneralError",
                                     f"{src.name}: not valid {src.encoding}")
        try:
            records = list(csv.reader(io.StringIO(text, newline=""), **_dialect(src), strict=True))
        except csv.Error as exc:
            return self._fail_result(imp, "unmatchedTextDelimiter", f"{src.name}: {exc}")
        header = records[src.header_row - 1] if 0 < src.header_row <= len(records) else []
        expected = list(imp.header_names)
        index_of: dict[str, int] = {}
        if header != expected:
            missing = [h for h in expected if h not in header]
            extra = [h for h in header if h not in expected]
            if self.faults.header_mismatch_policy == "fail_task" or missing:
                parts = []
                if missing:
                    parts.append("missing " + ", ".join(repr(h) for h in missing))
                if extra:
                    parts.append("unexpected " + ", ".join(repr(h) for h in extra))
                if not parts:
                    parts.append("columns out of order: expected " + ", ".join(repr(h) for h in expected))
                return self._fail_result(
                    imp, "missingFields",
                    f"{imp.name}: source columns do not match the import definition ({'; '.join(parts)})")
        index_of = {h: header.index(h) for h in expected}
        failed_rows: list[tuple[int, list[str], list[str]]] = []
        created = updated = ignored = total = 0
        store = self._imported.setdefault(imp.id, {})
        for line_no in range(src.first_data_row, len(records) + 1):
            cells = records[line_no - 1]
            if not any(c.strip() for c in cells):
                if cells:
                    ignored += 1
                continue
            total += 1
            errors: list[str] = []
            if len(cells) != len(header):
                errors.append(f"Expected {len(header)} columns, found {len(cells)}")
                row = {}
            else:
                row = {h: cells[index_of[h]] for h in expected}
                for col in expected:
                    err = _check_cell(col, row[col], imp.rules.get(col))
                    if err:
                        errors.append(err)
            if not errors and len(failed_rows) < outcome.row_failures:
                errors.append("Row rejected by the simulator (forced failure)")
            if errors:
                failed_rows.append((line_no, cells, errors))
                continue
            key = tuple(row[k] for k in imp.key_columns) if imp.key_columns else (str(line_no),)
            if key in store:
                updated += 1
            else:
                created += 1
            store[key] = row
        failed = len(failed_rows)
        success = created + updated
        dump_key = (task.user, imp.id)
        if failed:
            self._dumps[dump_key] = _Dump(task.task_id, _build_dump(header, failed_rows, src), time.time())
        else:
            self._dumps.pop(dump_key, None)  # a clean run deletes the previous dump (§6.2)
        values = ["hierarchyName", imp.target_name, "successRowCount", str(success),
                  "successCreateCount", str(created), "successUpdateCount", str(updated),
                  "warningsRowCount", "0", "warningsCreateCount", "0", "warningsUpdateCount", "0",
                  "failedCount", str(failed), "ignoredCount", str(ignored),
                  "totalRowCount", str(total + ignored), "totalCreateCount", str(created),
                  "totalUpdateCount", str(updated), "invalidCount", str(failed),
                  "updatedCount", str(updated), "renamedCount", "0", "createdCount", str(created)]
        detail_type = "hierarchyRowsProcessedWithFailures" if failed else (
            "hierarchyRowsProcessed" if success else "hierarchyNoChanges")
        text_msg = (f"{imp.target_name}: {success} ({created}/{updated}) rows successful, "
                    f"0 (0/0) rows has warnings, {failed} failed, {ignored} ignored")
        return {"successful": True, "failureDumpAvailable": bool(failed), "objectId": imp.id,
                "objectName": imp.name,
                "details": [{"type": detail_type, "localMessageText": text_msg,
                             "occurrences": 0, "values": values}]}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def _check_cell(column: str, value: str, rule: SimColumnRule | None) -> str | None:
    if rule is None:
        return None
    if not value.strip():
        return f"Missing value for required column {column}" if rule.required else None
    if rule.type == "number":
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return f"Invalid number: {value}"
        if not number.is_finite():
            return f"Invalid number: {value}"
    elif rule.type == "date":
        try:
            if not _DATE_RE.match(value.strip()):
                raise ValueError(value)
            date.fromisoformat(value.strip())
        except ValueError:
            return f"Invalid date: {value}"
    if rule.allowed is not None and value not in rule.allowed:
        return f"Invalid list item: {value} is not an item of {rule.list_name or column}"
    return None


def _dialect(src: SimFile) -> dict[str, Any]:
    if src.delimiter:
        return {"delimiter": src.separator or ",", "quotechar": src.delimiter, "doublequote": True}
    return {"delimiter": src.separator or ",", "quoting": csv.QUOTE_NONE}


def _build_dump(header: list[str], failed_rows: list[tuple[int, list[str], list[str]]],
                src: SimFile) -> bytes:
    """Source columns, then ``_Line_`` and ``_Error_1_``.. (§6.2); every cell quoted."""
    n_errors = max(len(errors) for _, _, errors in failed_rows)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=src.separator or ",", quotechar='"', quoting=csv.QUOTE_ALL,
                        lineterminator="\n")
    writer.writerow([*header, "_Line_", *[f"_Error_{i}_" for i in range(1, n_errors + 1)]])
    for line_no, cells, errors in failed_rows:
        writer.writerow([*cells, str(line_no), *errors, *[""] * (n_errors - len(errors))])
    return buf.getvalue().encode(src.encoding, errors="replace")


def _envelope_list(key: str, items: list[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"meta": {}, "status": {"code": 200, "message": "Success"}}
    if items:
        body[key] = items
    return body


def _fmt_retry(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


async def _read_form_or_json(request: Request) -> dict[str, str]:
    """OAuth bodies arrive as JSON (Postman, Anaplan-Connect) or form-encoded (oauthlib) (§2.5)."""
    raw = await request.body()
    ctype = request.headers.get("content-type", "")
    if "json" in ctype:
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise _oauth_error(400, "invalid_request", "malformed JSON") from None
        return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


_ID_AFTER = {"workspaces": "{workspaceId}", "models": "{modelId}", "files": "{fileId}",
             "chunks": "{chunkId}", "imports": "{importId}", "tasks": "{taskId}"}


def _route_template(path: str) -> str:
    """``/2/0/workspaces/abc/models/X/files/113..`` -> ``/2/0/workspaces/{workspaceId}/models/
    {modelId}/files/{fileId}`` (done here because FastAPI's route object lacks include prefixes)."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        if parts[i - 1] in _ID_AFTER and parts[i] and i >= 3:
            parts[i] = _ID_AFTER[parts[i - 1]]
    return "/".join(parts)


class _RequestLogMiddleware:
    """Per-route counters and a request log (§12), keyed ``"METHOD /route/{template}"``."""

    def __init__(self, app: Any, sim: AnaplanSimulator) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim"):
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        started = time.time()

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            template = _route_template(scope["path"])
            key = f"{scope['method']} {template}"
            counts = self.sim._request_counts
            counts[key] = counts.get(key, 0) + 1
            self.sim._request_log.append({"method": scope["method"], "route": template,
                                          "path": scope["path"], "status": status["code"],
                                          "t": started, "ms": round((time.time() - started) * 1000, 2)})
