"""Credentials encrypted at rest with Fernet; the key lives outside the database.

The key comes from ``GATEWAY_SECRET_KEY`` or a key file (created 0600 on first use). Values are
never logged and never returned by the panel; only their names are listed.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from gateway.store.models import Secret, utcnow


class SecretError(Exception):
    """A secret is missing or cannot be decrypted with the key at hand."""


def load_key(key_file: Path, *, create: bool = True) -> bytes:
    env = os.environ.get("GATEWAY_SECRET_KEY")
    if env:
        return env.encode()
    if key_file.is_file():
        return key_file.read_bytes().strip()
    if not create:
        raise SecretError(f"no secret key: set GATEWAY_SECRET_KEY or create {key_file}")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    return key


class Vault:
    """Encrypted secrets in the store."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise SecretError("the secret key is not a valid Fernet key (32 url-safe base64 bytes)") from None
        self._engine = engine

    def __repr__(self) -> str:  # never show the key
        return "Vault(***)"

    def set(self, name: str, value: str) -> None:
        if not name or len(name) > 200:
            raise SecretError("a secret needs a name of 1 to 200 characters")
        token = self._fernet.encrypt(value.encode()).decode()
        with Session(self._engine) as s, s.begin():
            row = s.get(Secret, name)
            if row is None:
                s.add(Secret(name=name, ciphertext=token))
            else:
                row.ciphertext = token
                row.updated_at = utcnow()

    def get(self, name: str) -> str:
        with Session(self._engine) as s:
            row = s.get(Secret, name)
        if row is None:
            raise SecretError(f"secret {name!r} is not set (gateway secrets set {name})")
        try:
            return self._fernet.decrypt(row.ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretError(f"secret {name!r} cannot be decrypted with this key") from None

    def names(self) -> list[str]:
        with Session(self._engine) as s:
            return list(s.exec(select(Secret.name).order_by(Secret.name)))

    def delete(self, name: str) -> bool:
        with Session(self._engine) as s, s.begin():
            row = s.get(Secret, name)
            if row is None:
                return False
            s.delete(row)
            return True
