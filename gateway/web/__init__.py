"""The web panel: server-rendered pages for people, a JSON API under ``/api`` for scripts.

    from gateway.web import create_app
    app = create_app(runtime)          # served by ``gateway web`` / ``gateway run`` with uvicorn

Every page and API call needs a signed-in session or an API token (``Authorization: Bearer``);
``/healthz`` (liveness: the store answers) and ``/readyz`` (which sources and destinations fail,
since when) are open. ``/metrics`` (Prometheus) needs a
token like the API: give Prometheus one made with ``gateway tokens create``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from gateway.store.models import utcnow
from gateway.web.actions import BulkJobs, Conflict, NotFound
from gateway.web.auth import Forbidden, NotSignedIn
from gateway.web.edge import Edge, is_api
from gateway.web.queries import BadRequest
from gateway.web.redact import Redactor
from gateway.web.security import session_secret
from gateway.web.throttle import SignInThrottle

__all__ = ["create_app"]

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "gateway_session"
log = structlog.get_logger("gateway.web")


class TTLCache:
    """Per-process cache for the whole-table aggregates (overview counts, partner activity).

    A value that took long to compute is served stale while one background thread recomputes it,
    so at a million documents a page view pays the full-table count only once after start, never
    on every expiry. Cheap values (a small store) are simply recomputed when expired.
    """

    SLOW_S = 0.05

    def __init__(self):
        self._data: dict[str, tuple[float, float, object]] = {}  # key -> (computed at, seconds it took, value)
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by clear()/drop(): a refresh begun before must not store old figures

    def _compute(self, key: str, make):
        with self._lock:
            generation = self._generation
        t0 = time.monotonic()
        value = make()
        t1 = time.monotonic()
        with self._lock:
            if generation == self._generation:
                self._data[key] = (t1, t1 - t0, value)
        return value

    def get(self, key: str, ttl: float, make):
        with self._lock:
            hit = self._data.get(key)
            fresh = hit is not None and time.monotonic() - hit[0] < ttl
            background = hit is not None and not fresh and hit[1] >= self.SLOW_S
            if background and key not in self._refreshing:
                self._refreshing.add(key)
                threading.Thread(target=self._refresh, args=(key, make), name=f"refresh-{key}", daemon=True).start()
        if fresh or background:
            return hit[2]
        return self._compute(key, make)

    def _refresh(self, key: str, make) -> None:
        try:
            self._compute(key, make)
        except Exception as exc:  # noqa: BLE001 - keep serving the stale value; say why
            log.warning("cache_refresh_failed", key=key, error=str(exc))
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def clear(self) -> None:
        """Expire everything (after an action, so the next page shows its effect as soon as it can)."""
        with self._lock:
            self._generation += 1
            self._data = {k: (0.0, took, v) for k, (_, took, v) in self._data.items()}

    def drop(self) -> None:
        """Forget everything: the next page computes afresh, however long it takes."""
        with self._lock:
            self._generation += 1
            self._data = {}


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
    if is_api(request.url.path):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    from gateway.web.pages import render_error

    response = render_error(request, status, message)
    if headers:
        response.headers.update(headers)
    return response


def allowed_hosts(web) -> list[str]:
    """The Host names the panel answers to: ``web.allowed_hosts``, else loopback, the listening address
    and this machine's names."""
    import socket

    if web.allowed_hosts is not None:
        return list(web.allowed_hosts)
    names = {"localhost", "127.0.0.1", "[::1]"}
    if web.host not in ("0.0.0.0", "::", ""):
        names.add(f"[{web.host}]" if ":" in web.host else web.host)
    if not web.loopback_only():
        names |= {socket.gethostname(), socket.getfqdn()}
    return sorted(n.lower() for n in names if n)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edi-gateway")
    except PackageNotFoundError:
        return "0"


def create_app(runtime) -> FastAPI:
    """The panel for one :class:`gateway.runtime.Runtime` (its settings, store and partner files)."""
    from gateway.web import api, flows, pages
    from gateway.web.metrics import Metrics

    settings = runtime.settings
    version = _version()
    app = FastAPI(title="EDI gateway", version=version, docs_url=None, redoc_url=None, openapi_url=None,
                  description="The EDI gateway's panel API: documents, reprocess, partners, overview. "
                              "Authenticate with 'Authorization: Bearer TOKEN' (gateway tokens create).")
    app.state.runtime = runtime
    app.state.jobs = BulkJobs(runtime.engine)
    web = settings.web
    app.state.throttle = SignInThrottle(runtime.engine, per_user=web.login_max_failures,
                                        per_address=web.login_max_failures_per_address,
                                        minutes=web.login_lock_minutes)
    app.state.redactor = Redactor(settings)
    app.state.cache = TTLCache()
    app.state.started_at = utcnow()
    app.state.metrics = Metrics(runtime)

    configured = web.session_secret.get_secret_value() if web.session_secret else None
    secret = session_secret(configured, settings.data_dir)

    # Added first, so it runs inside the edge: every handler sees request.session.
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                       max_age=int(web.session_max_hours * 3600), same_site="lax", https_only=web.cookies_secure())
    # Added last, so it runs first: host check, body limits, security headers, the one 500.
    app.add_middleware(Edge, web=web, allowed_hosts=allowed_hosts(web), observe=app.state.metrics.observe)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    if web.api_docs:
        from swagger_ui_bundle import swagger_ui_path

        app.mount("/api/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
    app.include_router(api.router)
    app.include_router(api.metrics_router)
    app.include_router(pages.router)
    app.include_router(flows.router)

    statuses = {NotSignedIn: 401, Forbidden: 403, BadRequest: 400, NotFound: 404, Conflict: 409}

    async def handled(request: Request, exc: Exception):
        """Every refusal the panel makes on purpose: 4xx with {"detail": ...} (a page for pages)."""
        if isinstance(exc, NotSignedIn):
            if is_api(request.url.path):
                return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            from urllib.parse import quote

            return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
        if isinstance(exc, RequestValidationError):
            problems = []
            for e in exc.errors():
                where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form"))
                problems.append(f"{where or 'request'}: {e.get('msg')}")
            return _error(request, 422, "; ".join(problems) or "the request is not valid")
        if isinstance(exc, StarletteHTTPException):
            message = exc.detail if isinstance(exc.detail, str) else "request refused"
            if exc.status_code == 404 and message == "Not Found":
                message = f"{request.url.path}: no such page"
            return _error(request, exc.status_code, message, headers=getattr(exc, "headers", None))
        return _error(request, statuses[type(exc)], str(exc))

    for kind in (*statuses, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(kind, handled)

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        """Liveness: the process answers and its store does (nothing about the outside systems)."""
        from gateway.web.queries import health

        ok, message = health(runtime.engine)
        return JSONResponse({"status": "ok" if ok else "unavailable", "store": message},
                            status_code=200 if ok else 503)

    @app.get("/readyz", include_in_schema=False)
    def readyz():
        """Readiness: 200 when the store answers and no source or destination is failing; else 503 with
        which parts fail since when (no error texts: this answers without signing in)."""
        from sqlmodel import Session

        from gateway.web.queries import health, readiness

        ok, message = health(runtime.engine)
        if not ok:
            return JSONResponse({"status": "unavailable", "store": message, "failing": []}, status_code=503)
        with Session(runtime.engine) as s:
            report = readiness(s, runtime.settings)
        failing = [{"part": p["part"], "since": p["since"].isoformat() if p["since"] else None,
                    "reason": p["reason"]} for p in report["failing"]]
        return JSONResponse({"status": report["status"], "store": message, "failing": failing},
                            status_code=503 if failing else 200)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    return app

