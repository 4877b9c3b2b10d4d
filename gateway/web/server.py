"""How the panel is served: uvicorn with the limits a hostile client meets before the app sees it.

- HTTP/1.1 through h11, whose incomplete-event limit bounds the headers a client may pile up
  (httptools keeps every header it is sent), with a deadline on the headers themselves
  (``web.header_timeout_seconds``): a client sending its request a byte at a time is cut off;
- ``X-Forwarded-For`` / ``X-Forwarded-Proto`` believed only from ``web.trusted_proxies`` (uvicorn's
  ``proxy_headers`` / ``forwarded_allow_ips``; by default from nobody, so the address the sign-in
  throttle counts is the peer's own);
- at most ``web.max_connections`` connections served at once (503 beyond).
"""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

H11_MAX_HEADER_BYTES = 16 * 1024


class _DeadlineH11(H11Protocol):
    """h11 with a deadline for a request's headers, from their first byte (or the connection's start)."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # the request's head did not arrive in time

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol(header_timeout: float) -> type[H11Protocol]:
    return type("PanelH11", (_DeadlineH11,), {"header_timeout": header_timeout})


def server_options(web) -> dict:
    """uvicorn's options for the panel, but where it listens (see :func:`server_config`)."""
    return dict(
        access_log=False, lifespan="on", http=protocol(web.header_timeout_seconds),
        h11_max_incomplete_event_size=H11_MAX_HEADER_BYTES, proxy_headers=bool(web.trusted_proxies),
        forwarded_allow_ips=list(web.trusted_proxies) or [], limit_concurrency=web.max_connections,
        server_header=False,
    )


def server_config(app, web) -> uvicorn.Config:
    """The uvicorn configuration ``gateway web`` and ``gateway run`` serve the panel with."""
    return uvicorn.Config(app, host=web.host, port=web.port, log_config=None, **server_options(web))
