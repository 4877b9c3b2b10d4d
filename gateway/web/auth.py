"""Who is asking: a signed session cookie (people) or an API token (scripts, Prometheus).

Every route depends on :func:`principal`; actions also on :func:`operator` and :func:`csrf`.
A session is bound to the user's password hash, so changing a password or disabling the user
ends their sessions at the next request.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Depends, Request
from sqlmodel import Session, select

from gateway.store.db import transaction
from gateway.store.models import ApiToken, User, utcnow
from gateway.web.security import DUMMY_HASH, hash_password, needs_rehash, token_hash, verify_password

SESSION_REFRESH_S = 600  # re-sign the cookie (sliding expiry) at most this often
TOKEN_TOUCH_S = 300  # write ApiToken.last_used_at at most this often per token


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    role: str
    via: str  # "session" | "token"

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


class NotSignedIn(Exception):
    """No valid session or token: pages redirect to the sign-in, the API answers 401."""

    def __init__(self, message: str = "sign in first, or send an API token as 'Authorization: Bearer TOKEN'"):
        super().__init__(message)


class Forbidden(Exception):
    """Signed in, but not allowed (a viewer acting, a missing or wrong CSRF token)."""


def session_tag(password_hash: str) -> str:
    return hashlib.sha256(("session:" + password_hash).encode()).hexdigest()[:24]


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use); every form carries it."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(24)
        request.session["csrf"] = token
    return token


def _from_token(request: Request, header: str) -> Principal:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise NotSignedIn("the Authorization header must be 'Bearer TOKEN'")
    engine = request.app.state.runtime.engine
    digest = token_hash(value)
    with Session(engine) as s:
        row = s.exec(select(ApiToken, User).join(User, User.id == ApiToken.user_id)
                     .where(ApiToken.token_hash == digest)).first()
    if row is None:
        raise NotSignedIn("unknown or revoked API token")
    tok, user = row
    if user.disabled:
        raise NotSignedIn("the token's user is disabled")
    now = utcnow()
    last = tok.last_used_at
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=now.tzinfo)
    if last is None or now - last > timedelta(seconds=TOKEN_TOUCH_S):
        with transaction(engine) as s:
            t = s.get(ApiToken, tok.id)
            if t is not None:
                t.last_used_at = now
    return Principal(user.id, user.username, user.role, "token")


def _from_session(request: Request) -> Principal | None:
    uid = request.session.get("uid")
    if not uid:
        return None
    with Session(request.app.state.runtime.engine) as s:
        user = s.get(User, uid)
    if user is None or user.disabled or request.session.get("tag") != session_tag(user.password_hash):
        request.session.clear()
        return None
    now = int(time.time())
    if now - int(request.session.get("t", 0)) > SESSION_REFRESH_S:
        request.session["t"] = now
    return Principal(user.id, user.username, user.role, "session")


def identify(request: Request) -> Principal | None:
    """The principal behind this request, or None (raises NotSignedIn for a bad Authorization header)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization")
    p = _from_token(request, header) if header else _from_session(request)
    request.state.principal = p
    return p


def principal(request: Request) -> Principal:
    p = identify(request)
    if p is None:
        raise NotSignedIn()
    return p


def operator(p: Principal = Depends(principal)) -> Principal:
    if not p.is_operator:
        raise Forbidden(f"{p.username} is a viewer: only operators can do this")
    return p


async def csrf(request: Request, p: Principal = Depends(principal)) -> None:
    """Check the session's CSRF token on a state-changing request (bearer-token calls carry none)."""
    if p.via == "token":
        return
    expected = request.session.get("csrf")
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = (await request.form()).get("csrf_token")
    if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent, expected):
        raise Forbidden("the form's security token is missing or stale: reload the page and try again")


async def acting_operator(request: Request, p: Principal = Depends(operator), _=Depends(csrf)) -> Principal:
    """An operator, with the CSRF check passed: what every action depends on."""
    return p


# --------------------------------------------------------------------------------------------- sign-in

class Throttle:
    """Failed sign-ins per user name and per client address in a sliding window (in this process)."""

    def __init__(self, per_user: int = 5, per_address: int = 30, window_s: float = 900.0):
        self.per_user, self.per_address, self.window = per_user, per_address, window_s
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def blocked_for(self, username: str, address: str) -> float:
        """Seconds until another try is allowed (0: allowed now)."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            for key, limit in ((f"u:{username.lower()}", self.per_user), (f"a:{address}", self.per_address)):
                q = self._recent(key, now)
                if len(q) >= limit:
                    wait = max(wait, q[0] + self.window - now)
            return wait

    def failed(self, username: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._fails) > 10_000:  # made-up user names must not grow this without bound
                for key in [k for k, q in self._fails.items() if not q or q[-1] <= now - self.window]:
                    del self._fails[key]
            for key in (f"u:{username.lower()}", f"a:{address}"):
                self._recent(key, now).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._fails.pop(f"u:{username.lower()}", None)


def authenticate(engine, username: str, password: str) -> User | None:
    """The user if the name and password match an enabled account (same work whether or not it exists)."""
    with Session(engine) as s:
        user = s.exec(select(User).where(User.username == username)).first()
    if user is None:
        verify_password(DUMMY_HASH, password)
        return None
    if not verify_password(user.password_hash, password) or user.disabled:
        return None
    if needs_rehash(user.password_hash):
        with transaction(engine) as s:
            u = s.get(User, user.id)
            u.password_hash = hash_password(password)
            user = u
    return user


def sign_in(request: Request, user: User) -> None:
    request.session.clear()
    request.session.update({"uid": user.id, "tag": session_tag(user.password_hash), "t": int(time.time()),
                            "csrf": secrets.token_urlsafe(24)})
    request.session.mark_modified()


def sign_out(request: Request) -> None:
    request.session.clear()
