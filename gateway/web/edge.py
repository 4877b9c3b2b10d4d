"""The panel's edge: the one ASGI middleware every request passes before anything else reads it.

In order, for each HTTP request:

1. the Host header must be one the panel serves (``web.allowed_hosts``): a page on another site
   whose name was made to resolve to 127.0.0.1 (DNS rebinding) gets 400, not the panel;
2. the body is limited by route class before anything reads it: a declared Content-Length over
   the limit gets 413 at once; a body streamed without one is counted as it arrives and cut off
   at the limit (413); a body that has not arrived within ``web.body_timeout_seconds`` gets 408;
3. every response, errors included, carries the security headers;
4. an exception nobody handled becomes a 500 with ``{"detail": ...}`` (a plain page for pages):
   the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import Callable

import structlog
from starlette.exceptions import HTTPException

log = structlog.get_logger("gateway.web")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# Swagger UI (served from the swagger-ui-bundle package, never a CDN) sets inline styles.
CSP_DOCS = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
# The routes that take files: mapping files and EDI samples, as forms, uploads or JSON.
UPLOAD_ROUTES = re.compile(r"/(api/)?partners(/validate|/[^/]+/dry-run)?/?")
# Liveness and readiness answer whatever name a prober uses (they show nothing worth rebinding for).
ANY_HOST = ("/healthz", "/readyz")


class Refused(HTTPException):
    """A request the edge turns away (413 too large, 408 too slow); the connection is closed after it."""


def is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/api" or path == "/metrics"


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether a Host header (port stripped) is one of ``allowed`` ('*' any, '*.example.com' its subdomains)."""
    host = host.lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def body_limit(web, method: str, path: str, content_type: str) -> tuple[int, str]:
    """The largest body this request may carry, and the route class's setting that says so."""
    if method in ("POST", "PUT", "PATCH") and UPLOAD_ROUTES.fullmatch(path):
        return web.max_upload_bytes, "web.max_upload_bytes"
    if content_type.split(";", 1)[0].strip().lower().endswith(("/json", "+json")):
        return web.max_json_bytes, "web.max_json_bytes"
    return web.max_form_bytes, "web.max_form_bytes"


def error_body(path: str, status: int, message: str) -> tuple[bytes, bytes]:
    """The body and content type of an error the edge answers itself (no template, no session, no store)."""
    if is_api(path) or path in ANY_HOST:
        return json.dumps({"detail": message}).encode(), b"application/json"
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{status} · EDI gateway</title>"
            f"<link rel=\"stylesheet\" href=\"/static/app.css\"></head><body><main><h1>{status}</h1>"
            f"<p class=\"error\" id=\"error-message\">{html.escape(message)}</p><p><a href=\"/\">Overview</a></p>"
            "</main></body></html>")
    return page.encode(), b"text/html; charset=utf-8"


class Edge:
    """See the module docstring. ``observe(method, route, status, seconds)`` is told of every response."""

    def __init__(self, app, *, web, allowed_hosts: list[str], observe: Callable | None = None):
        self.app, self.web, self.allowed_hosts, self.observe = app, web, allowed_hosts, observe

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        path, method = scope["path"], scope["method"]
        headers = dict(scope["headers"])  # the last of repeated names wins, as Starlette's Request does
        state = {"status": None, "secure": scope.get("scheme") == "https"}
        sender = self._sender(send, path, state)
        try:
            problem = self._check(path, method, headers)
            if problem is not None:
                await self._answer(sender, path, *problem, close=problem[0] == 413)
                return
            limit, setting = body_limit(self.web, method, path, headers.get(b"content-type", b"").decode("latin-1"))
            await self.app(scope, self._receiver(receive, limit, setting, state), sender)
            if state["status"] is None and state.get("refused") is not None:
                await self._answer(sender, path, *state["refused"], close=True)
        except Refused as exc:
            if state["status"] is None:
                await self._answer(sender, path, exc.status_code, exc.detail, close=True)
        except Exception as exc:  # noqa: BLE001 - the one place an unexpected error becomes a 500
            log.error("web_error", path=path, method=method, error_type=type(exc).__name__, exc_info=exc)
            if state["status"] is None:
                await self._answer(sender, path, 500, "something went wrong on our side; it has been logged")
        finally:
            if self.observe is not None and state["status"] is not None:
                route = scope.get("route")
                self.observe(method, getattr(route, "path", "unmatched"), state["status"],
                             time.perf_counter() - started_at)

    def _check(self, path: str, method: str, headers: dict) -> tuple[int, str] | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if path not in ANY_HOST and not host_allowed(host, self.allowed_hosts):
            return 400, (f"the Host header {host[:100]!r} is not one this panel serves "
                         "(add it to web.allowed_hosts if it should be)")
        length = headers.get(b"content-length")
        if length is not None:
            limit, setting = body_limit(self.web, method, path, headers.get(b"content-type", b"").decode("latin-1"))
            if not re.fullmatch(rb"[0-9]{1,20}", length):
                return 400, "the Content-Length header is not a number"
            if int(length) > limit:
                return 413, f"the request body is larger than {limit} bytes ({setting})"
        return None

    def _receiver(self, receive, limit: int, setting: str, state: dict):
        deadline = time.monotonic() + self.web.body_timeout_seconds
        seen = 0
        complete = False

        async def guarded():
            nonlocal seen, complete
            if complete:  # the body is in: what is left to hear is the client going away
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                state["refused"] = (408, f"the request body did not arrive within {self.web.body_timeout_seconds:g} s "
                                         "(web.body_timeout_seconds)")
                raise Refused(*state["refused"]) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    state["refused"] = (413, f"the request body is larger than {limit} bytes ({setting})")
                    raise Refused(*state["refused"])
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return guarded

    def _sender(self, send, path: str, state: dict):
        csp = (CSP_DOCS if path == "/api/docs" else CSP).encode()

        async def guarded(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                if b"content-security-policy" not in present:
                    extra.append((b"content-security-policy", csp))
                if b"cache-control" not in present and not path.startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))
                if state["secure"] and b"strict-transport-security" not in present:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": headers + extra}
            await send(message)

        return guarded

    async def _answer(self, send, path: str, status: int, message: str, *, close: bool = False) -> None:
        body, content_type = error_body(path, status, message)
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if close:  # the rest of an unread body is not worth reading: end the connection after the answer
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
