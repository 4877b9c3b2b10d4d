"""Real receivers for alert tests: an SMTP server (aiosmtpd) and a webhook endpoint, both on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.sandbox.server import serve_app

TOKEN_PATH = "/services/T000/B000/SeCrEtToKeN42"  # the part of a Slack webhook URL that is a credential
SECRET_KEY = "jt6LSPw0Qk0DzWqHt2fA3k0rYbq3CqfUWV3WlfsHh9E="  # a Fernet key for these tests only


def cli_runner(monkeypatch):
    """``run(*args, input=None)``: the gateway CLI in this process, with the test vault key and no
    settings file from the environment."""
    from typer.testing import CliRunner

    from gateway.cli import app

    monkeypatch.setenv("GATEWAY_SECRET_KEY", SECRET_KEY)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(app, list(args), input=input)

    return run


class WebhookReceiver:
    """Records every POST (path and JSON body); answers ``status`` (200 unless a test changes it)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.status = 200
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

        async def hook(request: Request):
            body = await request.json()
            with self._arrived:
                self.requests.append((request.url.path, body))
                self._arrived.notify_all()
            return PlainTextResponse("ok" if self.status < 400 else "invalid_token", status_code=self.status)

        self.app = Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])
        self.server = None

    @property
    def url(self) -> str:
        return self.server.base_url + TOKEN_PATH

    def bodies(self) -> list[dict]:
        with self._lock:
            return [b for _, b in self.requests]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict]:
        """Block until ``count`` requests arrived (a condition, not a sleep)."""
        return [b for _, b in _wait(self._arrived, self.requests, count, timeout, "webhook request(s)")]

    def __enter__(self) -> WebhookReceiver:
        self.server = serve_app(self.app)
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()


class Mailbox:
    """What the SMTP server received."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []
        self.logins: list[str] = []
        self._cond = threading.Condition()

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        with self._cond:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
            self._cond.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Message]:
        return [m for _, _, m in _wait(self._cond, self.messages, count, timeout, "e-mail(s)")]


def _wait(cond: threading.Condition, items: list, count: int, timeout: float, what: str) -> list:
    """Wait on ``cond`` until ``items`` holds ``count`` entries; a copy of them."""
    deadline = time.monotonic() + timeout
    with cond:
        while len(items) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(items)} {what} arrived, {count} expected")
            cond.wait(left)
        return list(items)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files in ``folder``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@contextmanager
def smtp_server(*, login: tuple[str, str] | None = None, tls_files: tuple[Path, Path] | None = None):
    """A real SMTP server on 127.0.0.1 (aiosmtpd): optional AUTH LOGIN/PLAIN and STARTTLS.

    Yields ``(port, mailbox)``.
    """
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    box = Mailbox()
    options: dict = {}
    if login is not None:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and (auth_data.login.decode(), auth_data.password.decode()) == login
            if ok:
                box.logins.append(auth_data.login.decode())
            return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself

        options.update(authenticator=authenticator, auth_require_tls=tls_files is not None)
    if tls_files is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*map(str, tls_files))
        options.update(tls_context=context, require_starttls=True)
    controller = Controller(box, hostname="127.0.0.1", port=_free_port(), **options)
    controller.start()
    try:
        yield controller.port, box
    finally:
        controller.stop()
