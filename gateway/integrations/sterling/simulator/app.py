"""IBM Sterling B2B Integrator B2B REST API simulator (mailbox polling surface).

Faithful to ``specs/sterling.md`` section 14: ``/B2BAPIs/svc/`` with ``mailboxes``, ``mailboxcontents``,
``mailboxmessages`` (+ ``actions/extract``, ``actions/move``), ``documents`` and ``messagebatches``; bare-array
lists paged by ``_range=a-b`` (inclusive, no total, no ``Content-Range``); single objects with ``_id``,
``_title``, ``href``, ``$ref``, ``actions``; colon-less timestamp offsets; 201 ``{"Location"}`` on create,
200 ``{"rowsAffected": 1}`` on PUT/DELETE; ``{"errorCode", "errorDescription"}`` on 400/404; Liberty plain-text
404 for unknown paths; Basic auth (401 + ``WWW-Authenticate``), ``APIUser`` and per-mailbox permissions (403).
With ``oauth_clients``, also the OAuth2 client-credentials mode the brief assumed for 6.2.2+ (SPECULATIVE: the
spec found no public evidence for on-prem B2Bi): ``POST /oauth2/token`` gives bearer tokens (``expires_in``
``token_ttl_seconds``) the API accepts beside Basic; :meth:`SterlingSim.expire_tokens` ends them early.

Test/demo hooks (not part of Sterling): ``/_sim/messages`` (deposit, inspect), ``/_sim/faults`` (fault
injection at run time), ``/_sim/reset``. The same controls are available in-process on :class:`SterlingSim`::

    with run_sterling_sim(users={"gateway": "s3cret"}, partners=["ACME"]) as sim:
        sim.deposit("/ACME/Inbox", "po1.edi", b"ISA*00*...")
        sim.faults.update(burst_count=3)
        ... SterlingConfig(base_url=sim.base_url, ...)

Where the public record is silent (document payload shape, extract/move bodies) the simulator follows the
spec's [I] choices, so the client is tested against the most likely real behaviour.
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
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from gateway.sandbox.server import RunningServer, serve_app

__all__ = ["SimFaults", "SimOAuthClient", "SimUser", "SterlingSim", "create_app", "run_sterling_sim"]

API_ROOT = "/B2BAPIs/svc"
REALM = 'Basic realm="B2BAPIs"'


# --------------------------------------------------------------------------------------------- model


class SimUser(BaseModel):
    """A B2Bi user as the API sees it: password, the ``APIUser`` permission, permitted mailbox paths."""

    password: str
    api_user: bool = True
    mailboxes: list[str] | None = None  # None: every mailbox ("admin"-like); else exact paths


class SimOAuthClient(BaseModel):
    """An OAuth2 client (``oauth2`` mode; SPECULATIVE: specs/sterling.md §2 found no public evidence that
    on-prem B2Bi 6.2.2+ offers it): client credentials that get bearer tokens acting as ``user``."""

    secret: str
    user: str
    scope: str = "b2bapis"


class SimFaults(BaseModel):
    """Run-time fault knobs. Counters (``*_count``, ``ignore_acks`` ...) are consumed as they fire; -1 = forever.

    Faults apply to ``/B2BAPIs/svc`` requests only, never to ``/_sim``. ``match`` restricts the transport-level
    faults (burst, delay, truncate, liberty_404) to paths containing that substring, ``methods`` to those methods.
    """

    model_config = {"validate_assignment": True}

    match: str | None = None
    methods: list[str] | None = None
    # 5xx burst: the next N matching requests fail with these statuses (cycled).
    burst_count: int = 0
    burst_statuses: list[int] = Field(default_factory=lambda: [500, 502, 503, 504])
    burst_body: Literal["liberty", "json", "empty"] = "liberty"
    burst_retry_after: int | None = None
    # Latency before the response headers.
    delay_seconds: float = 0.0
    delay_count: int = -1  # how many matching requests are delayed while delay_seconds > 0
    # Connection closed mid-body (declared Content-Length larger than what is sent).
    truncate_count: int = 0
    # The whole API context root missing (b2bAPI.jar not redeployed after a fix pack).
    liberty_404_count: int = 0
    # 401 for any credentials (password rotated / account locked).
    auth_fail_count: int = 0
    # Mailbox paths whose permission was revoked: 403 on their resources, left out of lists.
    forbid_mailboxes: list[str] = Field(default_factory=list)
    # Message ids deleted right after they next appear in a listing (vanish between list and fetch);
    # vanish_next_listed: the next N listed messages, whichever they are.
    vanish_ids: list[int] = Field(default_factory=list)
    vanish_next_listed: int = 0
    vanish_mode: Literal["delete", "drain"] = "delete"  # drain: a concurrent consumer took the last extraction
    # Duplicate delivery.
    ignore_acks: int = 0  # ack answers success but has no effect: the same id is listed again
    redeliver_on_ack: int = 0  # ack works, then the partner re-drops the same bytes+name under a new id
    insert_between_pages: int = 0  # a new message lands at the front between page requests (offset shift)
    # Ack commits server-side, then the response is a 500 (the client's retry sees 404 / a no-op).
    ack_commit_then_fail: int = 0
    # Each page's rows come back shuffled (page membership unchanged).
    shuffle_pages: bool = False

    def update(self, **changes: Any) -> SimFaults:
        """Set several knobs at once (validated): ``sim.faults.update(burst_count=3, burst_statuses=[503])``."""
        for key, value in changes.items():
            setattr(self, key, value)
        return self


class SimDeposit(BaseModel):
    """Body of ``POST /_sim/messages``: one of payload_base64, payload_text or generate_bytes."""

    mailbox: str
    name: str
    payload_base64: str | None = None
    payload_text: str | None = None
    generate_bytes: int | None = Field(None, ge=0, description="random bytes (seeded) of this size")
    extractable_always: bool = False
    extractable_count: int | None = 1
    copies: int = Field(1, ge=1, description="deposit the same bytes under this many message ids")


@dataclass
class _Mailbox:
    id: int
    path: str
    description: str = ""
    parent_id: int | None = None
    mailbox_type: str = "R"


@dataclass
class _Document:
    document_id: str
    data: bytes
    document_name: str | None = None
    body_name: str | None = None
    content_type: str | None = "application"
    content_subtype: str | None = "octet-stream"
    character_encoding: str | None = None
    storage_type: str = "FS"
    life_span: int | None = None
    reads: int = 0


@dataclass
class _Message:
    id: int
    mailbox_id: int
    name: str
    document_id: str
    created: datetime
    extractable_always: bool = False
    extractable_count: int | None = 1
    extractable_until: datetime | None = None
    order_key: float = 0.0
    state: str = "pending"  # pending | consumed | moved | deleted | vanished
    acks: int = 0
    extracts: int = 0
    events: list[str] = field(default_factory=list)

    def extractable(self, now: datetime) -> bool:
        if self.extractable_always:
            return True
        if self.extractable_count is not None:
            return self.extractable_count > 0
        if self.extractable_until is not None:
            return self.extractable_until > now
        return False


class _ApiError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


def _flag(value: Any) -> bool:
    if isinstance(value, dict):
        value = value.get("code")
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "y"}
    return bool(value)


# ----------------------------------------------------------------------------------------- simulator


class SterlingSim:
    """In-memory Sterling mailbox store plus fault state. Thread-safe: the HTTP app and tests share it."""

    def __init__(self, users: dict[str, str | SimUser | dict[str, Any]] | None = None,
                 partners: list[str] | tuple[str, ...] = (), *, host_name: str = "sihost01",
                 tz_offset: str = "+0000", default_page_size: int = 100,
                 ordering: Literal["insertion", "id", "random"] = "random", seed: int = 1,
                 list_unextractable: bool = True, allow_duplicates: bool = True,
                 first_message_id: int = 90817,
                 oauth_clients: dict[str, SimOAuthClient | dict[str, Any]] | None = None,
                 token_ttl_seconds: float = 3600.0) -> None:
        # The optional (speculative) OAuth2 client-credentials mode beside Basic: POST /oauth2/token.
        self.oauth_clients = {k: v if isinstance(v, SimOAuthClient) else SimOAuthClient(**v)
                              for k, v in (oauth_clients or {}).items()}
        self.token_ttl_seconds = token_ttl_seconds
        self.tokens: dict[str, tuple[str, float]] = {}  # bearer token -> (user, expires at)
        self.token_requests = 0
        self.users: dict[str, SimUser] = {}
        for name, spec in (users or {"admin": "password"}).items():
            self.users[name] = spec if isinstance(spec, SimUser) else (
                SimUser(password=spec) if isinstance(spec, str) else SimUser(**spec))
        self.host_name = host_name
        self.tz = self._parse_offset(tz_offset)
        self.default_page_size = default_page_size
        self.ordering = ordering
        self.list_unextractable = list_unextractable
        self.allow_duplicates = allow_duplicates
        self.faults = SimFaults()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every API request
        self._seed = seed
        self._generation = 0
        self._lock = threading.RLock()
        self._mailbox_ids = itertools.count(333)
        self._message_ids = itertools.count(first_message_id)
        self._doc_seq = itertools.count(5521)
        self._front = itertools.count(-1, -1)
        self.mailboxes: dict[int, _Mailbox] = {}
        self.documents: dict[str, _Document] = {}
        self.messages: dict[int, _Message] = {}
        self.server: RunningServer | None = None
        for partner in partners:
            for sub in ("Inbox", "Outbox", "Processed"):
                self.ensure_mailbox(f"/{partner.strip('/')}/{sub}")

    # ---------------------------------------------------------------- plumbing
    @staticmethod
    def _parse_offset(text: str) -> timezone:
        m = re.fullmatch(r"([+-])(\d\d):?(\d\d)", text)
        if not m:
            raise ValueError(f"bad tz offset {text!r}")
        delta = timedelta(hours=int(m[2]), minutes=int(m[3]))
        return timezone(-delta if m[1] == "-" else delta)

    def stamp(self, dt: datetime) -> str:
        """Sterling's timestamp shape: ``2024-05-02T09:14:07.000+0000`` (colon-less offset)."""
        local = dt.astimezone(self.tz)
        return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}" + local.strftime("%z")

    @property
    def base_url(self) -> str:
        if self.server is None:
            raise RuntimeError("simulator is not being served; use run_sterling_sim()")
        return self.server.base_url

    def serve(self, **options: Any) -> RunningServer:
        self.server = serve_app(create_app(self), **options)
        return self.server

    def _order_key(self, msg_id: int) -> float:
        if self.ordering == "random":
            # Arbitrary but stable, like a database without ORDER BY: catches clients that assume id order
            # while keeping offset paging coherent.
            return int.from_bytes(hashlib.sha256(f"{self._seed}:{msg_id}".encode()).digest()[:6], "big")
        return float(msg_id)

    # ---------------------------------------------------------------- store
    def ensure_mailbox(self, path: str, description: str = "") -> _Mailbox:
        """Return the mailbox at ``path``, creating it and its parents (``createParentMailbox=1``)."""
        if not path.startswith("/") or path != path.rstrip("/") or "//" in path:
            raise _ApiError(400, "API000160", f"Invalid mailbox path {path!r}")
        with self._lock:
            for mb in self.mailboxes.values():
                if mb.path == path:
                    return mb
            parent = None
            if path.count("/") > 1:
                parent = self.ensure_mailbox(path.rsplit("/", 1)[0]).id
            mb = _Mailbox(next(self._mailbox_ids), path, description or f"{path} mailbox", parent)
            self.mailboxes[mb.id] = mb
            return mb

    def mailbox_by_path(self, path: str) -> _Mailbox | None:
        with self._lock:
            return next((m for m in self.mailboxes.values() if m.path == path), None)

    def create_document(self, data: bytes, name: str | None = None, **attrs: Any) -> _Document:
        with self._lock:
            doc_id = f"{self.host_name}:node1:{int(time.time() * 1000):x}:{next(self._doc_seq)}"
            doc = _Document(doc_id, data, document_name=name, body_name=name, **attrs)
            self.documents[doc_id] = doc
            return doc

    def create_message(self, mailbox_path: str, name: str, document_id: str, *,
                       extractable_always: bool = False, extractable_count: int | None = 1,
                       extractable_until: datetime | None = None, front: bool = False) -> _Message:
        with self._lock:
            mb = self.mailbox_by_path(mailbox_path)
            if mb is None:
                raise _ApiError(400, "API000161", f"Mailbox {mailbox_path} does not exist")
            if document_id not in self.documents:
                raise _ApiError(400, "API000161", f"Document {document_id} does not exist")
            if not self.allow_duplicates:
                # Duplicates disabled: the new message replaces the same-named one (mailbox "overwrite").
                for old in self.messages.values():
                    if old.mailbox_id == mb.id and old.name == name and old.state in ("pending", "consumed"):
                        old.state = "deleted"
                        old.events.append("replaced by a same-name drop")
            msg_id = next(self._message_ids)
            if extractable_always:
                extractable_count = None
            msg = _Message(msg_id, mb.id, name, document_id, datetime.now(timezone.utc),
                           extractable_always, extractable_count, extractable_until)
            msg.order_key = next(self._front) if front else self._order_key(msg_id)
            self.messages[msg_id] = msg
            return msg

    def deposit(self, mailbox: str, name: str, payload: bytes, *, extractable_always: bool = False,
                extractable_count: int | None = 1, create_mailbox: bool = True, front: bool = False) -> int:
        """Partner drop: create the document and the mailbox message in one go. Returns the message id."""
        if create_mailbox:
            self.ensure_mailbox(mailbox)
        with self._lock:
            doc = self.create_document(payload, name)
            return self.create_message(mailbox, name, doc.document_id, extractable_always=extractable_always,
                                       extractable_count=extractable_count, front=front).id

    def size_of(self, msg: _Message) -> int:
        doc = self.documents.get(msg.document_id)
        return len(doc.data) if doc else 0

    def live_message(self, msg_id: int) -> _Message:
        msg = self.messages.get(msg_id)
        if msg is None or msg.state in ("deleted", "vanished"):
            raise _ApiError(404, "API000150", f"MailboxMessage with id {msg_id} was not found")
        return msg

    def expire_tokens(self) -> None:
        """Every bearer token issued so far stops working (the API answers 401), as at their expiry."""
        with self._lock:
            self.tokens.clear()

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.documents.clear()
            self.requests.clear()
            self.faults = SimFaults()
            self._generation += 1

    def snapshot(self) -> list[dict[str, Any]]:
        """State of every message ever deposited, for tests and the demo (``GET /_sim/messages``)."""
        now = datetime.now(timezone.utc)
        with self._lock:
            out = []
            for m in sorted(self.messages.values(), key=lambda m: m.id):
                doc = self.documents.get(m.document_id)
                out.append({
                    "id": m.id, "mailboxPath": self.mailboxes[m.mailbox_id].path, "name": m.name,
                    "documentId": m.document_id, "size": len(doc.data) if doc else None,
                    "sha256": hashlib.sha256(doc.data).hexdigest() if doc else None,
                    "state": m.state, "extractable": m.state in ("pending", "consumed", "moved")
                    and m.extractable(now), "extractableAlways": m.extractable_always,
                    "extractableCount": m.extractable_count, "acks": m.acks, "extracts": m.extracts,
                    "documentReads": doc.reads if doc else 0, "creationDate": self.stamp(m.created),
                    "events": list(m.events),
                })
            return out

    def message_state(self, msg_id: int) -> dict[str, Any]:
        return next(m for m in self.snapshot() if m["id"] == msg_id)

    # ---------------------------------------------------------------- faults
    def _take(self, name: str) -> bool:
        """Consume one unit of a counter fault; True if it fires."""
        with self._lock:
            left = getattr(self.faults, name)
            if left == 0:
                return False
            if left > 0:
                setattr(self.faults, name, left - 1)
            return True

    def _matches(self, method: str, path: str) -> bool:
        f = self.faults
        return (f.match is None or f.match in path) and (f.methods is None or method in f.methods)

    # ---------------------------------------------------------------- ack side effects
    def after_ack(self, msg: _Message) -> None:
        msg.acks += 1
        if self._take("redeliver_on_ack"):
            doc = self.documents[msg.document_id]
            copy = self.create_document(doc.data, doc.document_name)
            dup = self.create_message(self.mailboxes[msg.mailbox_id].path, msg.name, copy.document_id)
            dup.events.append(f"partner re-drop of message {msg.id}")

    def forbidden(self, user: SimUser, path: str) -> bool:
        if path in self.faults.forbid_mailboxes:
            return True
        return user.mailboxes is not None and path not in user.mailboxes


# ------------------------------------------------------------------------------------------- HTTP app


def _liberty_404(path: str) -> PlainTextResponse:
    return PlainTextResponse(f"Error 404: java.io.FileNotFoundException: SRVE0190E: File not found: {path}",
                             status_code=404)


def _error(status: int, code: str, text: str) -> JSONResponse:
    return JSONResponse({"errorCode": status, "errorDescription": f"{code}: {text}"}, status_code=status)


def _page(rows: list[dict[str, Any]], request: Request, default_size: int) -> list[dict[str, Any]]:
    rng = request.query_params.get("_range")
    if rng is None:
        start, end = 0, default_size - 1
    else:
        m = re.fullmatch(r"(\d+)-(\d+)", rng.strip())
        if not m or int(m[2]) < int(m[1]):
            raise _ApiError(400, "API000160", f"Invalid value for _range: {rng}")
        start, end = int(m[1]), int(m[2])
    return rows[start:end + 1]


def _project(rows: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
    inc = request.query_params.get("_include")
    exc = request.query_params.get("_exclude")
    if inc:
        keep = {k.strip() for k in inc.split(",")}
        rows = [{k: v for k, v in r.items() if k in keep} for r in rows]
    if exc:
        drop = {k.strip() for k in exc.split(",")}
        rows = [{k: v for k, v in r.items() if k not in drop} for r in rows]
    return rows


def _sort(rows: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
    spec = request.query_params.get("_sort")
    if not spec:
        return rows
    for key in reversed([k.strip() for k in spec.split(",") if k.strip()]):
        desc = key.startswith("-")
        key = key.lstrip("+-")
        rows = sorted(rows, key=lambda r: (r.get(key) is None, str(r.get(key)) if not isinstance(
            r.get(key), (int, float)) else r.get(key)), reverse=desc)
    return rows


def _like(pattern: str, value: str) -> bool:
    # SQL LIKE, case-insensitive: % any run, _ one character (fnmatch with its own specials escaped).
    glob = "".join({"%": "*", "_": "?"}.get(c, f"[{c}]" if c in "*?[]" else c) for c in pattern)
    return fnmatch.fnmatchcase(value.lower(), glob.lower())


def create_app(sim: SterlingSim) -> FastAPI:
    """Build the FastAPI app serving ``sim``. Routes accept the resource path with or without trailing slash."""
    app = FastAPI(title="Sterling B2Bi REST simulator", redirect_slashes=False, docs_url="/_sim/docs",
                  openapi_url="/_sim/openapi.json", redoc_url=None)

    def route(method: str, path: str):
        def deco(fn):
            app.add_api_route(API_ROOT + path, fn, methods=[method], include_in_schema=False)
            alt = path[:-1] if path.endswith("/") else path + "/"
            app.add_api_route(API_ROOT + alt, fn, methods=[method], include_in_schema=False)
            return fn
        return deco

    def href(request: Request, *parts: str) -> str:
        from urllib.parse import quote
        return str(request.base_url).rstrip("/") + API_ROOT + "/" + "/".join(quote(p, safe="") for p in parts)

    def meta(request: Request, resource: str, title: str, ident: str) -> dict[str, Any]:
        url = href(request, resource, ident)
        return {"_id": ident, "_title": f"{title}({ident})", "$ref": url, "href": url,
                "actions": {"href": url + "/actions", "$ref": url + "/actions"}}

    def user_of(request: Request) -> SimUser:
        return request.state.user

    def check_mailbox(request: Request, mb: _Mailbox) -> None:
        if sim.forbidden(user_of(request), mb.path):
            raise _ApiError(403, "API000140", f"User is not permitted to access mailbox {mb.path}")

    def extractability(m: _Message, detail_object: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"extractableAlways": {"code": m.extractable_always,
                                                     "display": "Yes" if m.extractable_always else "No"}
                               if detail_object else m.extractable_always}
        if not m.extractable_always and m.extractable_count is not None:
            out["extractableCount"] = m.extractable_count
        if not m.extractable_always and m.extractable_until is not None:
            out["extractableUntil"] = sim.stamp(m.extractable_until)
        return out

    def message_json(request: Request, m: _Message) -> dict[str, Any]:
        mb = sim.mailboxes[m.mailbox_id]
        body = meta(request, "mailboxmessages", "MailboxMessage", str(m.id))
        body.update({"mailboxPath": mb.path, "mailboxId": mb.id, "name": m.name, "id": m.id,
                     "creationDate": sim.stamp(m.created), **extractability(m, True),
                     "size": sim.size_of(m), "documentId": m.document_id})
        return body

    def mailbox_json(request: Request, mb: _Mailbox) -> dict[str, Any]:
        body = meta(request, "mailboxes", "Mailbox", str(mb.id))
        body.pop("actions")
        body.update({"path": mb.path, "description": mb.description, "permission": f"{mb.path} Mailbox",
                     "mailboxType": {"code": mb.mailbox_type, "display": {"R": "Regular", "S": "Shared",
                                                                          "L": "Linked"}[mb.mailbox_type]},
                     "users": ",".join(sorted(sim.users)), "groups": ""})
        return body

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise _ApiError(400, "API000160", "Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "API000160", "Request body must be a JSON object")
        return body

    # ------------------------------------------------------------ middleware: faults, auth, 404s
    @app.middleware("http")
    async def sterling_front(request: Request, call_next):
        path = request.url.path
        if not path.startswith(API_ROOT + "/") and path != API_ROOT:
            if path.startswith("/_sim") or (path == "/oauth2/token" and sim.oauth_clients):
                return await call_next(request)
            return _liberty_404(path)
        generation = sim._generation
        response = await _front(request, call_next, path, generation)
        with sim._lock:
            # A request that straddled a reset (e.g. a delayed one the client gave up on) is not recorded,
            # so one test's stragglers never show up in the next test's request log.
            if generation == sim._generation:
                sim.requests.append((request.method, path, response.status_code))
        return response

    async def _front(request: Request, call_next, path: str, generation: int) -> Response:
        method = request.method
        hit = sim._matches(method, path)
        if hit and sim.faults.delay_seconds > 0 and sim._take("delay_count"):
            await asyncio.sleep(sim.faults.delay_seconds)
            # Reset while we slept (the client gave up long ago): don't spend the next scenario's faults.
            hit = generation == sim._generation
        if hit and sim._take("liberty_404_count"):
            return _liberty_404(path)
        if hit and sim._take("burst_count"):
            statuses = sim.faults.burst_statuses or [500]
            with sim._lock:
                status = statuses[len(sim.requests) % len(statuses)]
            headers = {}
            if sim.faults.burst_retry_after is not None:
                headers["Retry-After"] = str(sim.faults.burst_retry_after)
            kind = sim.faults.burst_body
            if kind == "json":
                return JSONResponse({"errorCode": status, "errorDescription": "Internal server error"},
                                    status_code=status, headers=headers)
            text = "" if kind == "empty" else f"Error {status}: com.ibm.websphere.servlet.error.ServletErrorReport"
            return PlainTextResponse(text, status_code=status, headers=headers)
        user = _authenticate(request)
        if user is None or (generation == sim._generation and sim._take("auth_fail_count")):
            return PlainTextResponse("Error 401: SRVE0295E: Error reported: 401", status_code=401,
                                     headers={"WWW-Authenticate": REALM})
        if not user.api_user:
            return PlainTextResponse("Error 403: AuthorizationFailed", status_code=403)
        request.state.user = user
        try:
            response = await call_next(request)
        except _ApiError as e:  # raised outside a handler's own try (defensive)
            response = _error(e.status, e.code, e.text)
        if hit and sim._take("truncate_count"):
            body = b""
            async for chunk in response.body_iterator:
                body += chunk
            # Declare the full length, send half: uvicorn drops the connection mid-body.
            return _TruncatedResponse(body, response.status_code, dict(response.headers))
        return response

    def _authenticate(request: Request) -> SimUser | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and sim.oauth_clients:
            with sim._lock:
                user_name, expires_at = sim.tokens.get(token.strip(), ("", 0.0))
            return sim.users.get(user_name) if expires_at > time.time() else None
        if scheme.lower() != "basic":
            return None
        try:
            name, _, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user = sim.users.get(name)
        return user if user is not None and user.password == password else None

    @app.post("/oauth2/token")
    async def oauth2_token(request: Request):
        """Client credentials (RFC 6749 §4.4): the client authenticates with Basic (or form fields)."""
        form = await request.form()
        client_id, secret = form.get("client_id"), form.get("client_secret")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                client_id = secret = None
        with sim._lock:
            sim.token_requests += 1
        client = sim.oauth_clients.get(str(client_id or ""))
        if client is None or client.secret != secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="oauth2"'})
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        token = secrets.token_urlsafe(24)
        with sim._lock:
            sim.tokens[token] = (client.user, time.time() + sim.token_ttl_seconds)
        return JSONResponse({"access_token": token, "token_type": "Bearer", "scope": client.scope,
                             "expires_in": int(sim.token_ttl_seconds)})

    @app.exception_handler(_ApiError)
    async def api_error(request: Request, exc: _ApiError):
        return _error(exc.status, exc.code, exc.text)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception):
        return _liberty_404(request.url.path)

    @app.exception_handler(405)
    async def bad_method(request: Request, exc: Exception):
        return PlainTextResponse("Error 405: SRVE0295E: Method not allowed", status_code=405)

    # ------------------------------------------------------------ mailboxes
    @route("GET", "/mailboxes/")
    async def list_mailboxes(request: Request):
        q = request.query_params
        with sim._lock:
            boxes = sorted(sim.mailboxes.values(), key=lambda m: m.id)
            boxes = [m for m in boxes if not sim.forbidden(user_of(request), m.path)]
            if q.get("path"):
                boxes = [m for m in boxes if _like(q["path"], m.path)]
            if q.get("searchFor"):
                boxes = [m for m in boxes if _like(q["searchFor"], m.path)]
            rows = [mailbox_json(request, m) for m in boxes]
        return _project(_page(_sort(rows, request), request, sim.default_page_size), request)

    @route("GET", "/mailboxes/{mailbox_id}")
    async def get_mailbox(request: Request, mailbox_id: str):
        with sim._lock:
            mb = sim.mailboxes.get(int(mailbox_id)) if mailbox_id.isdigit() else None
            if mb is None:
                raise _ApiError(404, "API000150", f"Mailbox with id {mailbox_id} was not found")
            check_mailbox(request, mb)
            return mailbox_json(request, mb)

    # ------------------------------------------------------------ mailbox contents (the poller's list call)
    @route("GET", "/mailboxcontents/")
    async def mailbox_contents(request: Request):
        q = request.query_params
        now = datetime.now(timezone.utc)
        with sim._lock:
            if q.get("parentMailboxId"):
                pid = q["parentMailboxId"]
                mb = sim.mailboxes.get(int(pid)) if pid.isdigit() else None
            elif q.get("mailboxPath"):
                mb = sim.mailbox_by_path(q["mailboxPath"])
            else:
                raise _ApiError(400, "API000160", "parentMailboxId or mailboxPath is required")
            if mb is None:
                raise _ApiError(404, "API000150", "Mailbox was not found")
            check_mailbox(request, mb)
            rng = q.get("_range", "0-0")
            if not rng.startswith("0-") and sim._take("insert_between_pages"):
                late = sim.deposit(mb.path, f"late_{int(time.time() * 1000)}.edi",
                                   b"UNA:+.? 'UNB+UNOA:2+LATE+GATEWAY+240502:0914+1'UNZ+0+1'", front=True)
                sim.messages[late].events.append("inserted between page requests")
            detail = _flag(q.get("detail", "false"))
            subs = [{"id": c.id, "name": c.path.rsplit("/", 1)[1], "type": "mailbox",
                     "description": c.description}
                    for c in sorted(sim.mailboxes.values(), key=lambda c: c.id) if c.parent_id == mb.id
                    and not sim.forbidden(user_of(request), c.path)]
            msgs = [m for m in sim.messages.values() if m.mailbox_id == mb.id and m.state not in
                    ("deleted", "vanished") and (sim.list_unextractable or m.extractable(now))]
            if sim.ordering == "insertion":
                msgs.sort(key=lambda m: (m.order_key if m.order_key < 0 else 0, m.id))
            else:
                msgs.sort(key=lambda m: (m.order_key, m.id))
            rows = list(subs)
            for m in msgs:
                row: dict[str, Any] = {"id": m.id, "name": m.name, "type": "message"}
                if detail:
                    row.update({"documentId": m.document_id, "size": sim.size_of(m),
                                **extractability(m, False), "creationDate": sim.stamp(m.created)})
                rows.append(row)
            page = _project(_page(_sort(rows, request), request, sim.default_page_size), request)
            if sim.faults.shuffle_pages:
                random.Random(len(sim.requests)).shuffle(page)
            for row in page:
                m = sim.messages.get(row.get("id")) if row.get("type") == "message" else None
                if m is None:
                    continue
                if m.id in sim.faults.vanish_ids or sim._take("vanish_next_listed"):
                    if m.id in sim.faults.vanish_ids:
                        sim.faults.vanish_ids = [i for i in sim.faults.vanish_ids if i != m.id]
                    if sim.faults.vanish_mode == "delete":
                        m.state = "vanished"
                        m.events.append("vanished after being listed")
                    else:
                        m.extractable_always, m.extractable_count = False, 0
                        m.events.append("drained by a concurrent consumer after being listed")
            return page

    # ------------------------------------------------------------ mailbox messages
    @route("GET", "/mailboxmessages/")
    async def list_messages(request: Request):
        q = request.query_params
        with sim._lock:
            msgs = [m for m in sorted(sim.messages.values(), key=lambda m: m.id)
                    if m.state not in ("deleted", "vanished")
                    and not sim.forbidden(user_of(request), sim.mailboxes[m.mailbox_id].path)]
            if q.get("searchFor"):
                msgs = [m for m in msgs if _like(q["searchFor"], m.name)]
            rows = [message_json(request, m) for m in msgs]
        return _project(_page(_sort(rows, request), request, sim.default_page_size), request)

    def _message(request: Request, message_id: str) -> _Message:
        if not message_id.isdigit():
            raise _ApiError(400, "API000160", f"Invalid message id {message_id}")
        msg = sim.live_message(int(message_id))
        check_mailbox(request, sim.mailboxes[msg.mailbox_id])
        return msg

    @route("GET", "/mailboxmessages/{message_id}")
    async def get_message(request: Request, message_id: str):
        with sim._lock:
            return message_json(request, _message(request, message_id))

    @route("POST", "/mailboxmessages/")
    async def create_message(request: Request):
        body = await json_body(request)
        missing = [k for k in ("documentId", "mailboxPath", "name") if not body.get(k)]
        if missing:
            raise _ApiError(400, "API000160", f"Required field(s) missing: {', '.join(missing)}")
        mb = sim.mailbox_by_path(body["mailboxPath"])
        if mb is not None:
            check_mailbox(request, mb)
        until = _parse_until(body.get("extractableUntil"))
        always = _flag(body.get("extractableAlways", 0))
        count = body.get("extractableCount")
        if count is None and until is None and not always:
            count = 1
        msg = sim.create_message(body["mailboxPath"], body["name"], body["documentId"], extractable_always=always,
                                 extractable_count=count, extractable_until=until)
        return JSONResponse({"Location": href(request, "mailboxmessages", str(msg.id))}, status_code=201)

    def _parse_until(value: Any) -> datetime | None:
        if not value:
            return None
        try:  # input form yyyyMMddThhmm, server local time (the simulator's configured offset)
            return datetime.strptime(str(value), "%Y%m%dT%H%M").replace(tzinfo=sim.tz)
        except ValueError:
            raise _ApiError(400, "API000160", f"Invalid value for extractableUntil: {value}") from None

    @route("PUT", "/mailboxmessages/{message_id}")
    async def update_message(request: Request, message_id: str):
        body = await json_body(request)
        with sim._lock:
            msg = _message(request, message_id)
            if sim._take("ignore_acks"):
                msg.events.append("ack ignored (fault)")
                return {"rowsAffected": 1}
            if "extractableAlways" in body:
                msg.extractable_always = _flag(body["extractableAlways"])
            if "extractableCount" in body:
                msg.extractable_count = None if body["extractableCount"] is None else int(body["extractableCount"])
                if msg.extractable_count is not None and "extractableAlways" not in body:
                    msg.extractable_always = False
            if "extractableUntil" in body:
                msg.extractable_until = _parse_until(body["extractableUntil"])
            if _flag(body.get("resubmitMessage", 0)):
                msg.events.append("resubmitted for routing")
            now = datetime.now(timezone.utc)
            if msg.state == "pending" and not msg.extractable(now):
                msg.state = "consumed"
            elif msg.state == "consumed" and msg.extractable(now):
                msg.state = "pending"
            msg.events.append(f"updated {sorted(body)}")
            sim.after_ack(msg)
            fail = sim._take("ack_commit_then_fail")
        if fail:
            return PlainTextResponse("Error 500: transaction committed, response lost", status_code=500)
        return {"rowsAffected": 1}

    @route("DELETE", "/mailboxmessages/{message_id}")
    async def delete_message(request: Request, message_id: str):
        with sim._lock:
            msg = _message(request, message_id)
            if sim._take("ignore_acks"):
                msg.events.append("delete ignored (fault)")
                return {"rowsAffected": 1}
            msg.state = "deleted"
            msg.events.append("deleted")
            sim.after_ack(msg)
            fail = sim._take("ack_commit_then_fail")
        if fail:
            return PlainTextResponse("Error 500: transaction committed, response lost", status_code=500)
        return {"rowsAffected": 1}

    @route("POST", "/mailboxmessages/{message_id}/actions/extract")
    async def extract_message(request: Request, message_id: str):
        with sim._lock:
            msg = _message(request, message_id)
            if not msg.extractable(datetime.now(timezone.utc)):
                raise _ApiError(400, "API000161", f"Message {msg.id} is not extractable")
            if not msg.extractable_always and msg.extractable_count is not None:
                msg.extractable_count -= 1  # extract begin + commit: decremented for good
                if msg.extractable_count <= 0:
                    msg.state = "consumed"
            msg.extracts += 1
            msg.events.append("extracted")
            data = sim.documents[msg.document_id].data
            return {"messageId": msg.id, "documentId": msg.document_id, "name": msg.name,
                    "payload": base64.b64encode(data).decode("ascii")}

    @route("POST", "/mailboxmessages/{message_id}/actions/move")
    async def move_message(request: Request, message_id: str):
        body = await json_body(request)
        target = body.get("mailboxPath")
        with sim._lock:
            msg = _message(request, message_id)
            dest = sim.mailbox_by_path(target) if isinstance(target, str) else None
            if dest is None:
                raise _ApiError(400, "API000161", f"Target mailbox {target} does not exist")
            check_mailbox(request, dest)
            if sim._take("ignore_acks"):
                msg.events.append("move ignored (fault)")
                return {"rowsAffected": 1}
            if msg.mailbox_id != dest.id:
                msg.events.append(f"moved {sim.mailboxes[msg.mailbox_id].path} -> {dest.path}")
                msg.mailbox_id = dest.id
                msg.state = "moved"
            sim.after_ack(msg)
            fail = sim._take("ack_commit_then_fail")
        if fail:
            return PlainTextResponse("Error 500: transaction committed, response lost", status_code=500)
        return {"rowsAffected": 1}

    # ------------------------------------------------------------ documents
    @route("GET", "/documents/{document_id}")
    async def get_document(request: Request, document_id: str):
        with sim._lock:
            doc = sim.documents.get(document_id)
            owners = [m for m in sim.messages.values() if m.document_id == document_id]
            if doc is None or (owners and all(m.state in ("deleted", "vanished") for m in owners)):
                raise _ApiError(404, "API000150", f"Document with id {document_id} was not found")
            if owners and all(sim.forbidden(user_of(request), sim.mailboxes[m.mailbox_id].path) for m in owners):
                raise _ApiError(403, "API000140", "User is not permitted to read this document")
            doc.reads += 1  # a plain read: never touches extractability
            data = doc.data
            body = meta(request, "documents", "Document", doc.document_id)
            body.pop("actions")
            attrs = {"documentName": doc.document_name, "bodyName": doc.body_name, "contentType": doc.content_type,
                     "contentSubtype": doc.content_subtype, "characterEncoding": doc.character_encoding,
                     "storageType": doc.storage_type}
        body.update({k: v for k, v in attrs.items() if v is not None})
        # Base64 of a multi-MB payload is built outside the lock so other requests are not held up.
        body["payload"] = base64.b64encode(data).decode("ascii")
        return JSONResponse(body)

    @route("POST", "/documents/")
    async def create_document(request: Request):
        body = await json_body(request)
        if "payload" not in body:
            raise _ApiError(400, "API000160", "Required field(s) missing: payload")
        if _flag(body.get("isPlainText", False)):
            data = str(body["payload"]).encode(body.get("characterEncoding") or "utf-8")
        else:
            try:
                data = base64.b64decode(body["payload"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise _ApiError(400, "API000160", "payload is not valid base64") from None
        doc = sim.create_document(
            data, body.get("documentName"), content_type=body.get("contentType") or "application",
            content_subtype=body.get("contentSubtype") or "octet-stream",
            character_encoding=body.get("characterEncoding"), storage_type=body.get("storageType") or "FS",
            life_span=body.get("lifeSpan"))
        if body.get("bodyName"):
            doc.body_name = body["bodyName"]
        return JSONResponse({"Location": href(request, "documents", doc.document_id)}, status_code=201)

    @route("DELETE", "/documents/{document_id}")
    async def delete_document(request: Request, document_id: str):
        with sim._lock:
            if sim.documents.pop(document_id, None) is None:
                raise _ApiError(404, "API000150", f"Document with id {document_id} was not found")
        return {"rowsAffected": 1}

    # ------------------------------------------------------------ message batches (multipart upload)
    @route("POST", "/messagebatches/")
    async def message_batch(request: Request):
        form = await request.form()
        mailbox = form.get("mailboxName")
        uploads = form.getlist("upstream")
        if not isinstance(mailbox, str) or not uploads:
            raise _ApiError(400, "API000160", "Required parts missing: upstream, mailboxName")
        mb = sim.mailbox_by_path(mailbox)
        if mb is None:
            raise _ApiError(400, "API000161", f"Mailbox {mailbox} does not exist")
        check_mailbox(request, mb)
        last = 0
        for up in uploads:
            if isinstance(up, str):
                continue
            last = sim.deposit(mailbox, up.filename or "upload", await up.read(), create_mailbox=False)
        return JSONResponse({"Location": href(request, "messagebatches", str(last))}, status_code=201)

    # ------------------------------------------------------------ /_sim control surface
    @app.post("/_sim/messages", status_code=201)
    def sim_deposit(dep: SimDeposit):
        if dep.payload_base64 is not None:
            data = base64.b64decode(dep.payload_base64)
        elif dep.payload_text is not None:
            data = dep.payload_text.encode("utf-8")
        elif dep.generate_bytes is not None:
            data = random.Random(sim._seed).randbytes(dep.generate_bytes)
        else:
            return _error(400, "SIM", "give payload_base64, payload_text or generate_bytes")
        try:
            ids = [sim.deposit(dep.mailbox, dep.name, data, extractable_always=dep.extractable_always,
                               extractable_count=dep.extractable_count) for _ in range(dep.copies)]
        except _ApiError as e:
            return _error(e.status, e.code, e.text)
        return {"ids": ids, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    @app.get("/_sim/messages")
    def sim_messages():
        return sim.snapshot()

    @app.get("/_sim/faults")
    def sim_get_faults():
        return sim.faults.model_dump()

    @app.put("/_sim/faults")
    def sim_put_faults(faults: SimFaults):
        sim.faults = faults
        return sim.faults.model_dump()

    @app.patch("/_sim/faults")
    def sim_patch_faults(changes: dict[str, Any]):
        merged = sim.faults.model_dump() | changes
        sim.faults = SimFaults(**merged)
        return sim.faults.model_dump()

    @app.delete("/_sim/faults")
    def sim_clear_faults():
        sim.faults = SimFaults()
        return sim.faults.model_dump()

    @app.post("/_sim/reset")
    def sim_reset():
        sim.reset()
        return {"ok": True}

    @app.get("/_sim/requests")
    def sim_requests():
        return [{"method": m, "path": p, "status": s} for m, p, s in sim.requests]

    return app


class _TruncatedResponse(Response):
    """Sends headers for the whole body, then half of it, then ends: the client sees a dropped connection."""

    def __init__(self, body: bytes, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(status_code=status_code)
        self._full = body
        self.raw_headers = [(k.encode(), v.encode()) for k, v in headers.items() if k.lower() != "content-length"]
        self.raw_headers.append((b"content-length", str(len(body)).encode()))

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self._full[: len(self._full) // 2], "more_body": True})
        # Returning without the final body message makes uvicorn close the connection.


@contextmanager
def run_sterling_sim(users: dict[str, str | SimUser | dict[str, Any]] | None = None,
                     partners: list[str] | tuple[str, ...] = ("ACME",), **options: Any) -> Iterator[SterlingSim]:
    """Serve a fresh :class:`SterlingSim` on a free 127.0.0.1 port for the duration of the block.

    ``options`` go to :class:`SterlingSim` (``ordering``, ``tz_offset``, ``default_page_size`` ...). The yielded
    simulator has ``.base_url`` (``http://127.0.0.1:<port>``; the API is under ``/B2BAPIs/svc``).
    """
    sim = SterlingSim(users, partners, **options)
    server = sim.serve()
    try:
        yield sim
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.integrations.sterling.simulator.app --port 5074 --user gw:secret --partner ACME`` (foreground)."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5074)
    parser.add_argument("--user", action="append", default=[], help="name:password (repeatable)")
    parser.add_argument("--partner", action="append", default=[], help="seed /<P>/Inbox, Outbox, Processed")
    parser.add_argument("--ordering", choices=["insertion", "id", "random"], default="random")
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user) or None
    sim = SterlingSim(users, args.partner or ["ACME"], ordering=args.ordering)
    uvicorn.run(create_app(sim), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
