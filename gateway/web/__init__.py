"""The web panel: server-rendered pages for people, a JSON API under ``/api`` for scripts.

    from gateway.web import create_app
    app = create_app(runtime)          # served by ``gateway web`` / ``gateway run`` with uvicorn

Every page and API call needs a signed-in session or an API token (``Authorization: Bearer``);
``/healthz`` is open (it says only whether the store answers). ``/metrics`` (Prometheus) needs a
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
from gateway.web.auth import Forbidden, NotSignedIn, Throttle
from gateway.web.queries import BadRequest
from gateway.web.redact import Redactor
from gateway.web.security import session_secret

__all__ = ["create_app"]

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "gateway_session"
SESSION_MAX_AGE = 12 * 3600
log = structlog.get_logger("gateway.web")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# FastAPI's interactive API page loads Swagger UI from its CDN.
CSP_DOCS = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            "frame-ancestors 'none'")


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


def _is_api(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api/") or path == "/api" or path == "/metrics"


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
    if _is_api(request):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    from gateway.web.pages import render_error

    return render_error(request, status, message)


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
    app.state.throttle = Throttle()
    app.state.redactor = Redactor(settings)
    app.state.cache = TTLCache()
    app.state.started_at = utcnow()
    app.state.metrics = Metrics(runtime)

    configured = settings.web.session_secret.get_secret_value() if settings.web.session_secret else None
    secret = session_secret(configured, settings.data_dir)

    @app.middleware("http")
    async def headers_and_timing(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        path = request.url.path
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", CSP_DOCS if path == "/api/docs" else CSP)
        if not path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        route = request.scope.get("route")
        app.state.metrics.observe(request.method, getattr(route, "path", "unmatched"), response.status_code,
                                  time.perf_counter() - started)
        return response

    # Added last, so it runs first: every handler sees request.session.
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                       max_age=SESSION_MAX_AGE, same_site="lax", https_only=settings.web.secure_cookies)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(api.metrics_router)
    app.include_router(pages.router)
    app.include_router(flows.router)

    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, exc: NotSignedIn):
        if _is_api(request):
            return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return _error(request, 403, str(exc))

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest):
        return _error(request, 400, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return _error(request, 404, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict):
        return _error(request, 409, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form"))
            problems.append(f"{where or 'request'}: {e.get('msg')}")
        return _error(request, 422, "; ".join(problems) or "the request is not valid")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"{request.url.path}: no such page"
        return _error(request, exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("web_error", path=request.url.path, error_type=type(exc).__name__, error=str(exc))
        return _error(request, 500, "something went wrong on our side; it has been logged")

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        from gateway.web.queries import health

        ok, message = health(runtime.engine)
        return JSONResponse({"status": "ok" if ok else "unavailable", "store": message},
                            status_code=200 if ok else 503)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    return app

