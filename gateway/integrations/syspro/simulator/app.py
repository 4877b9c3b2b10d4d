"""The SYSPRO simulator's state, fault knobs and control routes; the OData and e.net routers beside it.

Control (loopback only, no auth): ``GET/POST/DELETE /_sim/faults``, ``GET /_sim/state`` (request
counts per route), ``POST /_sim/touch`` ``{"table": "InvWarehouse", "count": 100}`` (change rows:
quantities move, rowversions rise), ``POST /_sim/expire-sessions`` (every e.net session dies, as
when a person logs on with the gateway's operator), ``POST /_sim/restart`` (the OData service
reloads its operators, as SYSPRO's does only at start-up).
"""

from __future__ import annotations

import asyncio
import fnmatch
import random
import threading
import time
from collections import Counter
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.integrations.syspro.simulator.tables import Company, seed_company

ODATA_OPERATOR, ODATA_PASSWORD = "INTEG01", "sim-odata-password"  # sandbox-only credentials
ENET_OPERATOR, ENET_PASSWORD = "INTEG01", "sim-enet-password"
ENET_COMPANY, ENET_COMPANY_PASSWORD = "EDU1", ""


class EnetOperator(BaseModel):
    password: str
    companies: dict[str, str] = Field(default_factory=lambda: {ENET_COMPANY: ENET_COMPANY_PASSWORD})


class SysproSimSettings(BaseModel):
    """What the simulated site looks like."""

    model_config = ConfigDict(extra="forbid")

    company_id: str = ENET_COMPANY
    odata_prefix: str = "/SYSPROOData"
    #: operator -> OData password; only these are enabled for OData (read at start-up, as SYSPRO does)
    odata_operators: dict[str, str] = Field(default_factory=lambda: {ODATA_OPERATOR: ODATA_PASSWORD})
    #: operators that exist in SYSPRO but are not enabled for OData (they get a 401 like a bad password)
    other_operators: dict[str, str] = Field(default_factory=dict)
    enet_operators: dict[str, EnetOperator] = Field(
        default_factory=lambda: {ENET_OPERATOR: EnetOperator(password=ENET_PASSWORD)})
    page_size: int = Field(5000, ge=1)
    paging: Literal["nextlink", "hardcap"] = "nextlink"
    warehouse_rows: int = Field(2000, ge=0)
    scale: float = Field(1.0, gt=0)
    seed: int = 7
    token_mode: Literal["v7", "v8"] = "v7"
    token_json_quoted: bool = False
    idle_timeout_s: float = 1200.0
    evict_on_logon: bool = True
    licence_seats: int = 5
    max_url_bytes: int = 16_384
    odata_licensed: bool = True
    version: str = "8.0.2023.1"


class ScriptedError(BaseModel):
    route: str = "*"  # fnmatch against "METHOD /path" or the path
    status: int = 500
    count: int = 1


class SysproFaults(BaseModel):
    """Fault knobs (specs/syspro.md E.3); POST /_sim/faults merges."""

    model_config = ConfigDict(extra="forbid")

    errors: list[ScriptedError] = Field(default_factory=list)
    error_rate: float = 0.0  # random 5xx on any request
    error_codes: list[int] = Field(default_factory=lambda: [500, 502, 503, 504])
    latency_s: dict[str, float] = Field(default_factory=dict)  # route pattern -> seconds
    unauthorized: int = 0  # the next N OData requests get 401 whatever the credentials
    filter_on_timestamp: bool = True  # False: $filter on TimeStamp -> 400 (a site whose OData does not expose it)
    mutate_between_pages: dict[str, int] = Field(default_factory=dict)  # table -> rows inserted after each page
    seed: int = 1


class SysproSim:
    """One simulated SYSPRO site (one company); :attr:`app` is the ASGI app."""

    def __init__(self, settings: SysproSimSettings | None = None, faults: SysproFaults | None = None) -> None:
        self.settings = settings or SysproSimSettings()
        self.faults = faults or SysproFaults()
        self.company: Company = seed_company(self.settings.company_id, warehouse_rows=self.settings.warehouse_rows,
                                             scale=self.settings.scale, seed=self.settings.seed)
        self._rng = random.Random(self.faults.seed)
        self._odata_loaded = dict(self.settings.odata_operators)  # what the service read at start-up
        self.sessions: dict[str, dict[str, Any]] = {}
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.app = self._build_app()

    # ------------------------------------------------------------------ control

    def odata_root(self, base_url: str) -> str:
        return f"{base_url}{self.settings.odata_prefix}/{self.settings.company_id}"

    def enet_root(self, base_url: str) -> str:
        return f"{base_url}/SYSPROWCFService/Rest"

    def set_faults(self, changes: dict[str, Any]) -> SysproFaults:
        self.faults = SysproFaults.model_validate({**self.faults.model_dump(), **changes})
        if "seed" in changes:
            self._rng = random.Random(self.faults.seed)
        return self.faults

    def restart_odata(self) -> None:
        """The OData service restarts and reads the operators enabled for it again."""
        self._odata_loaded = dict(self.settings.odata_operators)

    def expire_sessions(self) -> int:
        n = len(self.sessions)
        self.sessions.clear()
        return n

    def touch(self, table: str, count: int) -> list[dict[str, Any]]:
        """Change ``count`` rows of ``table`` (InvWarehouse: quantities move; others: a balance or a name)."""
        with self.lock:
            t = self.company.table(table)
            rng = random.Random(self._rng.random())
            if hasattr(t, "touch"):
                return t.touch(count, rng)
            out = []
            for row in rng.sample(t.rows, min(count, len(t.rows))):
                key = tuple(row[k] for k in t.key)
                changes: dict[str, Any] = {}
                numeric = [c for c, k in t.columns if k == "d"]
                text = [c for c, k in t.columns if k == "s" and c not in t.key]
                if numeric:
                    changes[numeric[0]] = round((row[numeric[0]] or 0) + 1, 2)
                elif text:
                    changes[text[-1]] = f"{row[text[-1]] or ''}*"
                out.append(t.update(key, changes))
            return out

    def state(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "sessions": len(self.sessions),
                "rows": {name: len(t) for name, t in self.company.tables.items()},
                "rowversion": self.company.clock.value}

    # ------------------------------------------------------------------ gate

    def count(self, route: str) -> None:
        self.requests[route] += 1

    async def gate(self, request: Request, route: str) -> Response | None:
        """Latency and injected server errors; None lets the request through."""
        method, path = request.method, request.url.path
        for pattern, seconds in self.faults.latency_s.items():
            if _matches(pattern, method, path):
                await asyncio.sleep(seconds)
        for err in self.faults.errors:
            if err.count > 0 and _matches(err.route, method, path):
                err.count -= 1
                return server_error(err.status)
        if self.faults.error_rate and self._rng.random() < self.faults.error_rate:
            return server_error(self._rng.choice(self.faults.error_codes))
        return None

    # ------------------------------------------------------------------ app

    def _build_app(self) -> FastAPI:
        from gateway.integrations.syspro.simulator.enet import enet_router
        from gateway.integrations.syspro.simulator.odata import odata_router

        app = FastAPI(title="SYSPRO simulator", docs_url=None, redoc_url=None, openapi_url=None)

        @app.get("/_sim/faults")
        async def get_faults() -> Response:
            return JSONResponse(self.faults.model_dump())

        @app.post("/_sim/faults")
        async def post_faults(request: Request) -> Response:
            return JSONResponse(self.set_faults(await request.json()).model_dump())

        @app.delete("/_sim/faults")
        async def reset_faults() -> Response:
            self.faults = SysproFaults()
            return JSONResponse(self.faults.model_dump())

        @app.get("/_sim/state")
        async def get_state() -> Response:
            return JSONResponse(self.state())

        @app.post("/_sim/touch")
        async def post_touch(request: Request) -> Response:
            body = await request.json()
            rows = await asyncio.to_thread(self.touch, body["table"], int(body.get("count", 1)))
            return JSONResponse({"changed": len(rows)})

        @app.post("/_sim/expire-sessions")
        async def post_expire() -> Response:
            return JSONResponse({"expired": self.expire_sessions()})

        @app.post("/_sim/restart")
        async def post_restart() -> Response:
            self.restart_odata()
            return JSONResponse({"restarted": True})

        app.include_router(odata_router(self))
        app.include_router(enet_router(self))
        return app


def _matches(pattern: str, method: str, path: str) -> bool:
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(f"{method} {path}", pattern)


def server_error(status: int) -> Response:
    """A 5xx as SYSPRO's hosts give them: OData error JSON for 500, IIS HTML for the gateway statuses."""
    if status == 500:
        return JSONResponse({"error": {"code": "", "message": "An error has occurred (simulated server fault)."}},
                            status_code=500)
    return Response(f"<html><body><h1>HTTP Error {status}. The service is unavailable.</h1></body></html>",
                    status_code=status, media_type="text/html")


def now() -> float:
    return time.monotonic()
