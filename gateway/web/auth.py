"""Who is asking: a signed-in session (people) or an API token (scripts, Prometheus).

Every route depends on :func:`principal`; actions also on :func:`operator` and :func:`csrf`.
A session is a row in the store (``web_sessions``) named by a random id in the signed cookie:
signing out deletes it, so a copy of the cookie is refused afterwards. It ends when unused for
``web.session_idle_minutes`` and ``web.session_max_hours`` after sign-in, and when the user is
disabled or their password changes (the cookie is also bound to the password hash).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Depends, Request
from sqlalchemy import delete, or_
from sqlmodel import Session, select

from gateway.store.db import reading, transaction
from gateway.store.models import ApiToken, User, WebSession, utcnow
from gateway.web.queries import as_utc
from gateway.web.security import DUMMY_HASH, hash_password, needs_rehash, same_secret, token_hash, verify_password

SESSION_TOUCH_S = 60  # write WebSession.last_seen_at at most this often per session
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


def _session_limits(request: Request) -> tuple[timedelta, timedelta]:
    web = request.app.state.runtime.settings.web
    return timedelta(minutes=web.session_idle_minutes), timedelta(hours=web.session_max_hours)


def _from_session(request: Request) -> Principal | None:
    sid = request.session.get("sid")
    if not sid or not isinstance(sid, str):
        return None
    engine = request.app.state.runtime.engine
    key = _sid_hash(sid)
    with reading(engine) as s:
        row = s.exec(select(WebSession, User).join(User, User.id == WebSession.user_id)
                     .where(WebSession.id_hash == key)).first()
    now = utcnow()
    idle, longest = _session_limits(request)
    if row is None:
        request.session.clear()
        return None
    ws, user = row
    seen = as_utc(ws.last_seen_at)
    if (user.disabled or request.session.get("tag") != session_tag(user.password_hash)
            or now - seen > idle or now - as_utc(ws.created_at) > longest):
        with transaction(engine) as s:
            s.execute(delete(WebSession).where(WebSession.id_hash == key))
        request.session.clear()
        return None
    if now - seen > timedelta(seconds=SESSION_TOUCH_S):
        with transaction(engine) as s:
            live = s.get(WebSession, key)
            if live is not None:
                live.last_seen_at = now
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
    if not same_secret(sent, expected):
        raise Forbidden("the form's security token is missing or stale: reload the page and try again")


async def acting_operator(request: Request, p: Principal = Depends(operator), _=Depends(csrf)) -> Principal:
    """An operator, with the CSRF check passed: what every action depends on."""
    return p


# --------------------------------------------------------------------------------------------- sign-in

def authenticate(engine, username: str | None, password: str) -> User | None:
    """The user if the name (see :func:`gateway.web.throttle.login_name`) and password match an enabled
    account; the same work whether or not it exists."""
    user = None
    if username is not None:
        with reading(engine) as s:
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


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(("web-session:" + sid).encode()).hexdigest()


def sign_in(request: Request, user: User, address: str | None = None) -> None:
    """Start a session for ``user``: a new id and CSRF token (never the ones from before sign-in)."""
    sid = secrets.token_urlsafe(32)
    now = utcnow()
    idle, longest = _session_limits(request)
    with transaction(request.app.state.runtime.engine) as s:
        # Sessions that have ended anyway go now (the table stays as small as the people signed in).
        s.execute(delete(WebSession).where(or_(WebSession.last_seen_at < now - idle,
                                               WebSession.created_at < now - longest)))
        s.add(WebSession(id_hash=_sid_hash(sid), user_id=user.id, created_at=now, last_seen_at=now,
                         address=(address or "")[:64] or None))
    request.session.clear()
    request.session.update({"sid": sid, "tag": session_tag(user.password_hash), "csrf": secrets.token_urlsafe(24)})


def sign_out(request: Request) -> None:
    """End this session in the store (a saved copy of the cookie is refused from now on) and clear the cookie."""
    sid = request.session.get("sid")
    if isinstance(sid, str):
        with transaction(request.app.state.runtime.engine) as s:
            s.execute(delete(WebSession).where(WebSession.id_hash == _sid_hash(sid)))
    request.session.clear()
