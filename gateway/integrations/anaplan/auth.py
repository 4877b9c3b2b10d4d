"""Anaplan's endpoints and authentication: Basic, certificate and OAuth2 (rotating refresh tokens),
with the token kept and renewed before it expires."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import SecretStr

from gateway.integrations.anaplan.errors import (
    AnaplanAuthError,
    AnaplanConfigError,
    AnaplanHTTPError,
)

log = structlog.get_logger('gateway.integrations.anaplan')


@dataclass(frozen=True)
class AnaplanEndpoints:
    """Base URLs of the three Anaplan roles (region-specific; all point at the simulator in tests)."""

    api: str = "https://api.anaplan.com/2/0"
    auth: str = "https://auth.anaplan.com"
    oauth: str = "https://us1a.app.anaplan.com"

    @classmethod
    def single_host(cls, base_url: str) -> AnaplanEndpoints:
        """All roles on one host, routed by path prefix (the simulator)."""
        base = base_url.rstrip("/")
        return cls(api=f"{base}/2/0", auth=base, oauth=base)


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float  # epoch seconds
    renewable: bool = True  # auth-service tokens can be extended via /token/refresh
    expires_in: float | None = None  # relative lifetime (OAuth); the keeper turns it into expires_at


# ``send(method, url, **httpx kwargs)`` — the client's metered transport, handed to auth strategies.
_Send = Callable[..., httpx.Response]


class AnaplanAuth(Protocol):
    """How to obtain a token and how to extend it. Implementations keep their secrets private."""

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token: ...

    def renew(self, send: _Send, endpoints: AnaplanEndpoints, current: _Token) -> _Token: ...


def _parse_auth_service(resp: httpx.Response, what: str) -> _Token:
    if resp.status_code in (400, 401, 403):
        status = _safe_json(resp).get("status", "")
        raise AnaplanAuthError(f"Anaplan {what} rejected (HTTP {resp.status_code} {status})".strip())
    if not resp.is_success:
        raise AnaplanHTTPError("POST", f"/token/{what}", resp.status_code)
    info = _safe_json(resp).get("tokenInfo") or {}
    if not info.get("tokenValue"):
        raise AnaplanHTTPError("POST", f"/token/{what}", resp.status_code, "no tokenInfo in answer")
    return _Token(value=info["tokenValue"], expires_at=float(info.get("expiresAt", 0)) / 1000.0)


class _AuthServiceAuth:
    """Shared by Basic and certificate auth: both extend their token via ``/token/refresh``."""

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token:
        raise NotImplementedError

    def renew(self, send: _Send, endpoints: AnaplanEndpoints, current: _Token) -> _Token:
        resp = send("POST", f"{endpoints.auth}/token/refresh",
                    headers={"Authorization": f"AnaplanAuthToken {current.value}"})
        if resp.status_code == 401:  # already dead: log in again
            return self.obtain(send, endpoints)
        return _parse_auth_service(resp, "refresh")


class BasicAuth(_AuthServiceAuth):
    """User name + password (the user must be an SSO Exception User)."""

    def __init__(self, username: str, password: SecretStr | str) -> None:
        self.username = username
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token:
        raw = f"{self.username}:{self._password.get_secret_value()}".encode()
        resp = send("POST", f"{endpoints.auth}/token/authenticate",
                    headers={"Authorization": "Basic " + base64.b64encode(raw).decode()})
        return _parse_auth_service(resp, "authenticate")

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=**********)"


class CertificateAuth(_AuthServiceAuth):
    """CA-certificate auth (§2.4): certificate PEM in the header, a fresh signed nonce in the body."""

    NONCE_BYTES = 150

    def __init__(self, certificate_pem: bytes | str, private_key_pem: bytes | str | SecretStr,
                 private_key_password: SecretStr | str | None = None) -> None:
        self._cert_pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
        key_pem = (private_key_pem.get_secret_value() if isinstance(private_key_pem, SecretStr)
                   else private_key_pem)
        key_pem_b = key_pem.encode() if isinstance(key_pem, str) else key_pem
        password = (private_key_password.get_secret_value()
                    if isinstance(private_key_password, SecretStr) else private_key_password)
        try:
            key = serialization.load_pem_private_key(key_pem_b, password.encode() if password else None)
        except (ValueError, TypeError):
            raise AnaplanConfigError("Anaplan certificate auth: private key cannot be loaded "
                                     "(wrong format or password)") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise AnaplanConfigError("Anaplan certificate auth needs an RSA private key")
        self._key = key

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token:
        nonce = os.urandom(self.NONCE_BYTES)  # fresh per request; the service refuses replays
        signature = self._key.sign(nonce, padding.PKCS1v15(), hashes.SHA512())
        resp = send("POST", f"{endpoints.auth}/token/authenticate",
                    headers={"Authorization": "CACertificate " + base64.b64encode(self._cert_pem).decode()},
                    json={"encodedData": base64.b64encode(nonce).decode(),
                          "encodedSignedData": base64.b64encode(signature).decode()})
        return _parse_auth_service(resp, "authenticate")

    def __repr__(self) -> str:
        return "CertificateAuth(private_key=**********)"


class OAuth2RefreshTokenAuth:
    """OAuth 2.0 via a refresh token obtained once by an operator (authorization-code or device
    grant). With rotatable refresh tokens every refresh returns a new one and burns the old, so the
    newest is handed to ``on_refresh_token`` for the store to persist — otherwise a restart would
    start from a dead token."""

    def __init__(self, client_id: str, refresh_token: SecretStr | str, *,
                 client_secret: SecretStr | str | None = None,
                 on_refresh_token: Callable[[str], None] | None = None) -> None:
        self.client_id = client_id
        self._refresh = refresh_token if isinstance(refresh_token, SecretStr) else SecretStr(refresh_token)
        self._secret = (client_secret if isinstance(client_secret, SecretStr) or client_secret is None
                        else SecretStr(client_secret))
        self._on_refresh_token = on_refresh_token

    def obtain(self, send: _Send, endpoints: AnaplanEndpoints) -> _Token:
        body = {"grant_type": "refresh_token", "client_id": self.client_id,
                "refresh_token": self._refresh.get_secret_value()}
        if self._secret is not None:
            body["client_secret"] = self._secret.get_secret_value()
        resp = send("POST", f"{endpoints.oauth}/oauth/token", json=body)
        data = _safe_json(resp)
        if resp.status_code in (400, 401):
            raise AnaplanAuthError(
                f"Anaplan OAuth refresh rejected (HTTP {resp.status_code} {data.get('error', '')}); "
                "the OAuth client must be re-authorised")
        if not resp.is_success or not data.get("access_token"):
            raise AnaplanHTTPError("POST", "/oauth/token", resp.status_code)
        new_refresh = data.get("refresh_token")
        if new_refresh and new_refresh != self._refresh.get_secret_value():
            self._refresh = SecretStr(new_refresh)  # adopt first: the old one is already spent
            if self._on_refresh_token is not None:
                try:
                    self._on_refresh_token(new_refresh)
                except Exception as exc:  # keep working; the next rotation persists again
                    log.error("anaplan.refresh_token_persist_failed", error_type=type(exc).__name__)
        return _Token(value=data["access_token"], expires_at=0.0, renewable=False,
                      expires_in=float(data.get("expires_in", 2100)))

    def renew(self, send: _Send, endpoints: AnaplanEndpoints, current: _Token) -> _Token:
        return self.obtain(send, endpoints)

    def __repr__(self) -> str:
        return f"OAuth2RefreshTokenAuth(client_id={self.client_id!r}, refresh_token=**********)"


class _TokenKeeper:
    """One token per process, reused until near expiry (Anaplan warns against token-per-call).

    Refreshes ``refresh_margin_s`` before expiry; a 401 invalidates it and the next caller logs in
    again. Single-flight: concurrent callers wait for one refresh instead of each starting one."""

    def __init__(self, auth: AnaplanAuth, endpoints: AnaplanEndpoints, refresh_margin_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._auth = auth
        self._endpoints = endpoints
        self._margin = refresh_margin_s
        self._clock = clock
        self._token: _Token | None = None
        self._lock = threading.Lock()

    def _adopt(self, tok: _Token) -> _Token:
        if tok.expires_in is not None:
            tok.expires_at, tok.expires_in = self._clock() + tok.expires_in, None
        self._token = tok
        return tok

    def get(self, send: _Send) -> str:
        with self._lock:
            now = self._clock()
            tok = self._token
            # A token this close to expiry may die in flight: treat it as gone, not renewable.
            if tok is None or now >= tok.expires_at - min(5.0, self._margin / 4):
                tok = self._adopt(self._auth.obtain(send, self._endpoints))
                log.info("anaplan.token_obtained", auth=type(self._auth).__name__)
            elif now >= tok.expires_at - self._margin:
                tok = self._adopt(self._auth.renew(send, self._endpoints, tok))
                log.info("anaplan.token_renewed", auth=type(self._auth).__name__)
            return tok.value

    def invalidate(self, stale: str) -> None:
        with self._lock:
            if self._token is not None and self._token.value == stale:
                self._token = None

    def logout(self, send: _Send) -> None:
        with self._lock:
            tok, self._token = self._token, None
        if tok is not None and tok.renewable and tok.expires_at > self._clock():
            send("POST", f"{self._endpoints.auth}/token/logout",
                 headers={"Authorization": f"AnaplanAuthToken {tok.value}"})





def _safe_json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
