"""The panel over real sockets (``gateway web`` in its own process): large, streamed and trickling bodies,
slow headers, forwarded addresses. Memory is the panel process's resident set, sampled while it works."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Panel:
    def __init__(self, tmp: Path, **web):
        self.port = _free_port()
        lines = [f'data_dir = "{tmp}"', f'partners_dir = "{tmp / "partners"}"', "[web]", 'host = "127.0.0.1"',
                 f"port = {self.port}"] + [f"{k} = {v!r}".replace("'", '"') for k, v in web.items()]
        (tmp / "gateway.toml").write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "web", "-c", str(tmp / "gateway.toml")],
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway web exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if self.request(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").startswith(b"HTTP/1.1 200"):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("gateway web did not start")
        self.ps = psutil.Process(self.proc.pid)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def request(self, raw: bytes) -> bytes:
        with self.connect() as s:
            s.sendall(raw)
            return _read_response(s)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    p = Panel(tmp_path_factory.mktemp("limits"), body_timeout_seconds=2.0, header_timeout_seconds=2.0,
              login_max_failures_per_address=3)
    yield p
    p.stop()


def _send_big_body(panel: Panel, head: bytes, total: int, chunked: bool, results: list) -> None:
    """Send ``total`` bytes of body (as fast as the panel takes them) and record the status it answered."""
    block = b"x" * MB
    with panel.connect() as s:
        s.sendall(head)
        sent = 0
        try:
            while sent < total:
                s.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                sent += len(block)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except OSError:  # the panel answered and closed: it has stopped reading
            pass
        s.settimeout(30)
        results.append(_read_response(s)[:12].decode(errors="replace"))


def test_two_parallel_unauthenticated_150_mb_bodies_do_not_grow_the_panel(panel):
    before = panel.ps.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], panel.ps.memory_info().rss)
            time.sleep(0.02)

    results: list[str] = []
    jobs = [
        (b"POST /api/partners HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
         b"Content-Length: %d\r\n\r\n" % (150 * MB), False),
        (b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", True),
        (b"POST /api/partners/validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", True),
        (b"POST /partners HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
         b"Content-Length: %d\r\n\r\n" % (150 * MB), False),
    ]
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    for pair in (jobs[:2], jobs[2:]):  # two at a time
        threads = [threading.Thread(target=_send_big_body, args=(panel, head, 150 * MB, chunked, results))
                   for head, chunked in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    done.set()
    watcher.join()
    growth = (peak[0] - before) / MB
    print(f"panel RSS before {before / MB:.1f} MB, peak {peak[0] / MB:.1f} MB, growth {growth:.1f} MB; answers {results}")
    assert len(results) == 4 and all(r.split()[1] in ("413", "401") for r in results), results
    assert growth < 100, f"the panel grew by {growth:.1f} MB"
    assert panel.request(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_a_body_that_trickles_is_cut_off(panel):
    with panel.connect() as s:
        s.sendall(b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                  b"Content-Length: 1000\r\n\r\nusername=olga")
        started = time.monotonic()
        answer = b""
        try:
            for _ in range(40):  # a byte every 0.1 s: would take 100 s to finish
                s.sendall(b"x")
                time.sleep(0.1)
                s.setblocking(False)
                try:
                    answer += s.recv(65536)
                except BlockingIOError:
                    pass
                s.setblocking(True)
                if answer:
                    break
        except OSError:
            pass
        s.settimeout(10)
        if not answer:
            answer = _read_response(s)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 4


def test_headers_that_trickle_are_cut_off(panel):
    with panel.connect() as s:
        started = time.monotonic()
        closed = False
        try:
            for byte in b"GET /login HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200:
                s.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - started > 6:
                    break
        except OSError:
            closed = True
        if not closed:
            s.settimeout(2)
            try:
                closed = s.recv(10) == b""
            except OSError:
                closed = True
    assert closed and time.monotonic() - started < 5


def test_forwarded_for_is_not_believed_unless_the_proxy_is_trusted(panel, tmp_path):
    def attempt(p: Panel, forwarded: str, name: str) -> bytes:
        with p.connect() as s:
            s.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = b""
            while b"</html>" not in head:
                head += s.recv(65536)
            cookie = head.split(b"set-cookie: ", 1)[1].split(b";", 1)[0]
            token = head.split(b'name="csrf_token" value="', 1)[1].split(b'"', 1)[0]
            body = b"username=" + name.encode() + b"&password=guess&csrf_token=" + token
            s.sendall(b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      b"Cookie: " + cookie + b"\r\nX-Forwarded-For: " + forwarded.encode() + b"\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            return _read_response(s)[:12]

    # Untrusted: every guess counts against 127.0.0.1 whatever the header claims (a limit of 3).
    answers = [attempt(panel, f"203.0.113.{i}", f"nobody{i}") for i in range(5)]
    assert [a.split()[1] for a in answers] == [b"401", b"401", b"401", b"429", b"429"], answers
    trusting = Panel(tmp_path, login_max_failures_per_address=3, trusted_proxies=["127.0.0.1"])
    try:
        answers = [attempt(trusting, f"203.0.113.{i}", f"nobody{i}") for i in range(5)]
        assert all(a.split()[1] == b"401" for a in answers), answers  # each forwarded client counted apart
        answers = [attempt(trusting, "198.51.100.9", f"someone{i}") for i in range(4)]
        assert [a.split()[1] for a in answers] == [b"401", b"401", b"401", b"429"], answers
    finally:
        trusting.stop()
