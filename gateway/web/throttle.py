"""The sign-in throttle: failed sign-ins per user name and per client address, kept in the store.

An attempt is counted *before* its password is checked, in the transaction that checks the
limit, so parallel guesses cannot slip through between a check and its record; a successful
sign-in gives its attempt back. The name is counted exactly as the user look-up reads it
(:func:`login_name`), case folded, so ``' Olga'``, ``'OLGA'`` and ``'ｏｌｇａ'`` share one count.
Rows live in ``login_throttle`` (every process shares them; a restart forgets nothing) and are
deleted once their window has passed, so made-up names cannot grow the store for long.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from gateway.store.db import reading, retry_conflicts, transaction
from gateway.store.models import LoginThrottle, utcnow
from gateway.web.queries import as_utc
from gateway.web.security import USERNAME

MAX_NAME = 100


def login_name(raw: str) -> str | None:
    """The user name a sign-in form's text stands for, as the look-up uses it; None when no account can have it."""
    if len(raw) > 4 * MAX_NAME:  # never normalise megabytes
        return None
    name = unicodedata.normalize("NFKC", raw).strip()
    if len(name) > MAX_NAME or not USERNAME.fullmatch(name):
        return None
    return name


def client_key(host: str | None) -> str:
    """The throttle's key for a client address: IPv6 by its /64 (one subscriber), anything else as given."""
    if not host:
        return "a:?"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "a:" + host[:64]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return "a:" + str(ip.ipv4_mapped)
        return "a:" + str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return "a:" + str(ip)


class SignInThrottle:
    """At most ``per_user`` failed sign-ins per name and ``per_address`` per client in ``window``;
    past either, further attempts are refused (without checking the password) until the lock ends."""

    def __init__(self, engine: Engine, *, per_user: int = 5, per_address: int = 30, minutes: float = 15.0):
        self.engine = engine
        self.limits = {"u": per_user, "a": per_address}
        self.window = timedelta(minutes=minutes)

    def _keys(self, name: str | None, address: str) -> list[str]:
        keys = [address]
        if name is not None:
            keys.append("u:" + name.casefold())
        return sorted(keys)  # one order for every transaction: two attempts never wait on each other crosswise

    def reserve(self, name: str | None, address: str, *, now: datetime | None = None) -> float:
        """Count an attempt, unless a limit is reached: 0.0 (go ahead) or the seconds until one is allowed."""
        now = now or utcnow()
        keys = self._keys(name, address)
        return retry_conflicts(lambda: self._reserve(keys, now))

    def _reserve(self, keys: list[str], now: datetime) -> float:
        with transaction(self.engine) as s:
            s.execute(delete(LoginThrottle).where(
                LoginThrottle.window_start < now - self.window,
                or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now)))
            insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
            rows = []
            for key in keys:
                s.execute(insert(LoginThrottle).values(key=key, window_start=now, failures=0)
                          .on_conflict_do_nothing(index_elements=["key"]))
                rows.append(s.execute(select(LoginThrottle).where(LoginThrottle.key == key)
                                      .with_for_update()).scalar_one())
            wait = max(((as_utc(r.locked_until) - now).total_seconds() for r in rows
                        if r.locked_until is not None and as_utc(r.locked_until) > now), default=0.0)
            if wait > 0:
                return wait
            for r in rows:
                if as_utc(r.window_start) <= now - self.window:
                    r.window_start, r.failures = now, 0
                r.failures += 1
                if r.failures >= self.limits[r.key[0]]:
                    r.locked_until = now + self.window
            return 0.0

    def succeeded(self, name: str, address: str) -> None:
        """The attempt signed in: the name's count starts again and the address gets its attempt back."""
        user_key = "u:" + name.casefold()

        def give_back() -> None:
            with transaction(self.engine) as s:
                s.execute(delete(LoginThrottle).where(LoginThrottle.key == user_key))
                row = s.execute(select(LoginThrottle).where(LoginThrottle.key == address).with_for_update()).scalar()
                if row is not None and row.failures > 0:
                    row.failures -= 1
                    if row.failures < self.limits["a"]:
                        row.locked_until = None

        retry_conflicts(give_back)

    def locked(self, *, now: datetime | None = None) -> list[str]:
        """The keys locked now (for tests and the operator's curiosity)."""
        now = now or utcnow()
        with reading(self.engine) as s:
            return list(s.execute(select(LoginThrottle.key).where(
                and_(LoginThrottle.locked_until.is_not(None), LoginThrottle.locked_until > now))).scalars())
