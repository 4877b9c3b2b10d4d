"""Run an ASGI app (a sandbox simulator) as a real HTTP server on loopback, in a background thread.

Shared by every simulator (Sterling, Plex, Anaplan) so tests and the demo talk real HTTP::

    with serve_app(app) as srv:
        httpx.get(srv.base_url + "/health")

The listening socket is bound by us before uvicorn starts (port 0 -> the OS picks a free port), so
there is no window in which another process can take the port between "find a free port" and
"listen on it".
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

__all__ = ["RunningServer", "serve_app"]


class RunningServer:
    """A started uvicorn server. Usable directly (call :meth:`stop`) or as a context manager."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket,
                 host: str, port: int, scheme: str) -> None:
        self._server = server
        self._thread = thread
        self._sock = sock
        self.host = host
        self.port = port
        self.scheme = scheme

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to shut down, wait for the thread, release the socket. Idempotent."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            # Open keep-alive connections or a hung handler: stop waiting for them.
            self._server.force_exit = True
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningServer({self.base_url!r}, running={self.running})"


def serve_app(app: Any, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0,
              log_level: str = "warning", **uvicorn_options: Any) -> RunningServer:
    """Start ``app`` on ``host:port`` (port 0 = a free one) in a daemon thread and wait until it listens.

    Extra keyword arguments go to :class:`uvicorn.Config` (e.g. ``ssl_certfile``/``ssl_keyfile`` for an
    HTTPS listener, ``timeout_keep_alive``). Returns a :class:`RunningServer`; use it in a ``with`` block
    or call ``.stop()``. Raises ``RuntimeError`` if the server does not come up in ``startup_timeout``.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it, keep-alive responses written as headers + body stall
    # ~40 ms on Nagle vs. delayed ACK, which turns a quick test suite into a slow one.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    uvicorn_options.setdefault("access_log", False)
    uvicorn_options.setdefault("lifespan", "auto")
    config = uvicorn.Config(app, host=host, port=bound_port, log_level=log_level, **uvicorn_options)
    server = uvicorn.Server(config)
    scheme = "https" if uvicorn_options.get("ssl_certfile") else "http"
    # uvicorn only installs signal handlers on the main thread, so running it here is safe.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"serve_app:{bound_port}", daemon=True)
    thread.start()
    running = RunningServer(server, thread, sock, host, bound_port, scheme)
    # Poll both "started" and "thread died" so a failing app start is reported, not waited out.
    waited = 0.0
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"server for {app!r} exited during startup")
        if waited >= startup_timeout:
            running.stop()
            raise RuntimeError(f"server for {app!r} did not start within {startup_timeout}s")
        thread.join(0.01)
        waited += 0.01
    return running
