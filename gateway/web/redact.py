"""Secrets never shown: every text the panel displays from the store or the outside systems passes here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, SecretStr

from gateway.logging import MASK, is_secret_key, scrub_text


def _secret_values(value: Any, key: str = "", found: set[str] | None = None) -> set[str]:
    found = set() if found is None else found
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
        key = "secret"
    if isinstance(value, str):
        if key and is_secret_key(key) and len(value) >= 4 and not value.startswith("secret:"):
            found.add(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _secret_values(v, str(k), found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _secret_values(v, key, found)
    elif isinstance(value, BaseModel):
        for k in type(value).model_fields:
            _secret_values(getattr(value, k, None), k, found)
    return found


class Redactor:
    """Masks the configured credentials wherever they appear, plus URL passwords and bearer values."""

    def __init__(self, settings: Any = None):
        values = _secret_values(settings) if settings is not None else set()
        self._values = sorted(values, key=len, reverse=True)

    def text(self, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value
        for secret in self._values:
            if secret in value:
                value = value.replace(secret, MASK)
        return scrub_text(value)

    def data(self, value: Any, depth: int = 0) -> Any:
        """JSON-like data with secret-named keys masked and every string scrubbed."""
        if depth > 12:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: (MASK if is_secret_key(str(k)) and v not in (None, "") else self.data(v, depth + 1))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(v, depth + 1) for v in value]
        return value
