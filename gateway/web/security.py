"""Passwords, API tokens and the session-signing secret: no web framework needed (the CLI uses it too)."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("viewer", "operator")
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")  # used with fullmatch
MIN_PASSWORD = 8
TOKEN_PREFIX = "gwt_"
SESSION_SECRET_FILE = "web-session.key"

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


def check_username(name: str) -> str | None:
    """None when ``name`` can be a user name, else why not."""
    if not USERNAME.fullmatch(name or ""):
        return "a user name is 1-100 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
    return None


def check_password(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"a password needs at least {MIN_PASSWORD} characters"
    return None


def _utf8(text: str) -> bytes:
    # "surrogatepass": a lone surrogate from a hostile form is bytes like any other, not an exception.
    return text.encode("utf-8", "surrogatepass")


def hash_password(password: str) -> str:
    return _hasher.hash(_utf8(password))


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, _utf8(password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def same_secret(sent: object, expected: str | None) -> bool:
    """Constant-time comparison of a token a client sent with ours (any text, never an exception)."""
    if not expected or not isinstance(sent, str):
        return False
    return secrets.compare_digest(_utf8(sent), _utf8(expected))


def needs_rehash(password_hash: str) -> bool:
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return False


# A burnt hash to verify against when the user does not exist, so both cases take the same time.
DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def new_api_token() -> str:
    """A fresh API token: shown once, only its hash is stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    # The token is 256 random bits: a plain SHA-256 is enough (no dictionary to defend against).
    return hashlib.sha256(_utf8(token)).hexdigest()


def session_secret(configured: str | None, data_dir: Path) -> str:
    """The key that signs session cookies: the configured one, else one generated once and kept (0600)."""
    if configured:
        return configured
    path = Path(data_dir) / SESSION_SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SESSION_SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)  # atomic and refuses to overwrite: two processes starting together agree
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    value = path.read_text("ascii").strip()
    if len(value) < 32:
        raise ValueError(f"{path}: the session secret is too short; delete the file to have a new one made")
    return value


def end_sessions(session, user_id: int) -> int:
    """Delete every panel session of a user (inside the caller's transaction); how many there were."""
    from sqlalchemy import delete

    from gateway.store.models import WebSession

    return session.execute(delete(WebSession).where(WebSession.user_id == user_id)).rowcount
