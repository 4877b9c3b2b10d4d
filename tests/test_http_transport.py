"""The httpx transport over http.client (gateway/destinations/http.py), against raw loopback servers."""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Callable

import httpx
import pytest

from gateway.destinations.http import StdlibTransport


class RawServer:
    """A loopback HTTP/1.1 server that answers each request with ``answer(request_bytes) -> bytes | None``
    (None: close without answering) and counts the connections it accepted."""

    def __init__(self, answer: Callable[[bytes], bytes | None], *, keep_alive: bool = True) -> None:
        self.answer, self.keep_alive = answer, keep_alive
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                self.requests.append(head + b"\r\n\r\n" + body)
                out = self.answer(head + b"\r\n\r\n" + body)
                if out is None:
                    return
                conn.sendall(out)
                if not self.keep_alive:
                    return

    def drop_idle(self) -> None:
        """Close every accepted connection from the server side (as a keep-alive timeout does)."""
        for c in self.open:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self.drop_idle()


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


@pytest.fixture
def client():
    transport = StdlibTransport()
    with httpx.Client(transport=transport, timeout=httpx.Timeout(2.0, connect=1.0)) as c:
        yield c


def test_requests_reuse_one_kept_alive_connection_and_send_what_httpx_built(client):
    server = RawServer(lambda req: ok())
    try:
        for n in range(3):
            r = client.post(f"{server.url}/accounting/v1/ap-invoices?x=1&y=a%20b", json={"n": n},
                            headers={"X-Plex-Connect-Api-Key": "k"})
            assert r.status_code == 200 and r.json() == {"ok": True}
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /accounting/v1/ap-invoices?x=1&y=a%20b HTTP/1.1\r\n")
        assert b"\r\nx-plex-connect-api-key: k\r\n" in first.lower()
        assert first.lower().count(b"\r\nhost: ") == 1 and first.endswith(b'{"n":0}')
    finally:
        server.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed(client):
    server = RawServer(lambda req: ok())
    try:
        assert client.get(server.url + "/a").status_code == 200
        server.drop_idle()
        assert client.post(server.url + "/b", content=b"x").status_code == 200  # a POST too: never sent on the dead one
        assert server.connections == 2
    finally:
        server.close()


def test_connection_close_answers_are_not_kept(client):
    server = RawServer(lambda req: ok(extra=b"Connection: close\r\n"), keep_alive=False)
    try:
        assert [client.get(server.url).status_code for _ in range(2)] == [200, 200]
        assert server.connections == 2
    finally:
        server.close()


def test_chunked_and_gzip_bodies_are_read_and_decoded(client):
    payload = b'{"rows": ' + b"[1, 2, 3]" + b"}"
    packed = gzip.compress(payload)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(packed[i:i + 7]), packed[i:i + 7]) for i in range(0, len(packed), 7))
    server = RawServer(lambda req: b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + chunked + b"0\r\n\r\n")
    try:
        assert client.get(server.url).content == payload
    finally:
        server.close()


def test_no_answer_is_a_read_timeout(client):
    server = RawServer(lambda req: (threading.Event().wait(3), None)[1])
    try:
        with pytest.raises(httpx.ReadTimeout):
            client.get(server.url, timeout=httpx.Timeout(0.3))
    finally:
        server.close()


def test_a_closed_connection_without_answer_and_a_cut_body_are_protocol_errors(client):
    server = RawServer(lambda req: None)
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(server.url, content=b"{}")
    finally:
        server.close()
    cut = RawServer(lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half", keep_alive=False)
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(cut.url)
    finally:
        cut.close()


def test_nobody_listening_is_a_connect_error(client):
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/")


def test_bodiless_answers_and_other_schemes():
    server = RawServer(lambda req: b"HTTP/1.1 204 No Content\r\n\r\n" if req.startswith(b"DELETE")
                       else b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    try:
        with httpx.Client(transport=StdlibTransport()) as c:
            assert c.delete(server.url).status_code == 204
            head = c.head(server.url)  # a HEAD answer announces a length it does not send
            assert head.status_code == 200 and head.content == b""
            assert c.delete(server.url).status_code == 204 and server.connections == 1
            with pytest.raises(httpx.UnsupportedProtocol):
                c.get("ftp://127.0.0.1/")
    finally:
        server.close()


def test_head_and_body_leave_in_one_write():
    from gateway.destinations.http import _HTTPConnection

    class Wire:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def sendall(self, data: bytes) -> None:
            self.writes.append(bytes(data))

    conn = _HTTPConnection("127.0.0.1", 9)
    conn.sock = wire = Wire()
    conn.putrequest("POST", "/x", skip_host=True, skip_accept_encoding=True)
    conn.putheader(b"Host", b"127.0.0.1:9")
    conn.putheader(b"Content-Length", b"7")
    conn.endheaders(b'{"a":1}')
    assert wire.writes == [b'POST /x HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 7\r\n\r\n{"a":1}']
