"""An httpx transport over the standard library's ``http.client``, for the clients of Plex and Anaplan.

httpx stays the API (requests, auth, timeouts, events, errors); only the wire work changes
hands. httpx's own transport (httpcore and h11, pure Python) costs about 0.3 ms of CPU per
request, three times what ``http.client`` costs for the same exchange, and the gateway makes a
Plex request or more for every document. Proxies from the environment still go through httpx's
own transports (the client mounts them ahead of this one).

Connections are kept alive per origin and reused most recent first; one the server has closed
meanwhile is noticed before use (readable while idle) and replaced, as httpcore does. Errors
are httpx's: ``ConnectTimeout``/``ConnectError`` before the request went out, ``WriteTimeout``/
``WriteError`` while sending, ``ReadTimeout``/``ReadError``/``RemoteProtocolError`` after.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import httpx

__all__ = ["StdlibTransport"]


class _OneWrite:
    """``http.client`` writes a request's head and its body with two sends; on a kept-alive
    connection that is two wake-ups of the server for one request. Here they go as one."""

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if not isinstance(message_body, bytes) or encode_chunked:
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]
            return
        self._buffer.extend((b"", b""))  # type: ignore[attr-defined]
        head = b"\r\n".join(self._buffer)  # type: ignore[attr-defined]
        del self._buffer[:]  # type: ignore[attr-defined]
        self.send(head + message_body)  # type: ignore[attr-defined]


class _HTTPConnection(_OneWrite, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_OneWrite, http.client.HTTPSConnection):
    pass


class _ResponseStream(httpx.SyncByteStream):
    """The body as read by ``http.client`` (chunked or sized), still encoded as sent."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self._body


class StdlibTransport(httpx.BaseTransport):
    """:class:`httpx.BaseTransport` over ``http.client`` with a keep-alive pool per origin."""

    def __init__(self, *, verify: ssl.SSLContext | str | bool = True, trust_env: bool = True,
                 max_idle_per_origin: int = 20) -> None:
        # The same certificate checks as httpx's own transport (its CA bundle, SSL_CERT_FILE when trust_env).
        self._ssl = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify,
                                                                                               trust_env=trust_env)
        self._max_idle = max_idle_per_origin
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ pool
    def _checkout(self, origin: tuple[str, str, int], connect_timeout: float | None) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if conn.sock is not None and not _readable(conn.sock):
                return conn
            conn.close()  # the server closed it (or sent something unasked): never reuse
        scheme, host, port = origin
        if scheme == "https":
            return _HTTPSConnection(host, port, timeout=connect_timeout, context=self._ssl)
        return _HTTPConnection(host, port, timeout=connect_timeout)

    def _checkin(self, origin: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if not self._closed and len(idle) < self._max_idle:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()

    # ------------------------------------------------------------------ one exchange
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        body = request.read()
        conn = self._checkout(origin, timeouts.get("connect"))
        try:
            if conn.sock is None:
                _connect(conn, request)
            conn.sock.settimeout(timeouts.get("write"))
            _send(conn, request, body)
            conn.sock.settimeout(timeouts.get("read"))
            response = _receive(conn, request)
            content = _read_body(response, request)
        except BaseException:
            conn.close()
            raise
        headers = response.getheaders()
        if response.will_close:
            conn.close()
        else:
            self._checkin(origin, conn)
        return httpx.Response(response.status, headers=headers, stream=_ResponseStream(content),
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason.encode()})


def _readable(sock: socket.socket) -> bool:
    """An idle keep-alive socket with something to read has been closed by the server."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _connect(conn: http.client.HTTPConnection, request: httpx.Request) -> None:
    try:
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except OSError as exc:
        raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc


def _send(conn: http.client.HTTPConnection, request: httpx.Request, body: bytes) -> None:
    try:
        conn.putrequest(request.method, request.url.raw_path.decode("ascii"), skip_host=True,
                        skip_accept_encoding=True)
        for name, value in request.headers.raw:
            conn.putheader(name, value)
        conn.endheaders(body or None)  # head and body in one write (_OneWrite)
    except TimeoutError as exc:
        raise httpx.WriteTimeout(str(exc) or "write timed out", request=request) from exc
    except OSError as exc:
        raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc


def _receive(conn: http.client.HTTPConnection, request: httpx.Request) -> http.client.HTTPResponse:
    try:
        return conn.getresponse()
    except TimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except (http.client.RemoteDisconnected, http.client.BadStatusLine, http.client.LineTooLong) as exc:
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc


def _read_body(response: http.client.HTTPResponse, request: httpx.Request) -> bytes:
    try:
        return response.read()
    except TimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except http.client.IncompleteRead as exc:
        raise httpx.RemoteProtocolError(f"incomplete body ({exc})", request=request) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
