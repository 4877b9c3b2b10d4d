"""Settings of a Sterling B2B Integrator source: the connection, the mailboxes, how messages are acknowledged."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["SterlingConfig", "SterlingSettings"]


class SterlingConfig(BaseModel):
    """Connection and polling settings for one Sterling B2Bi instance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(description="scheme://host:port of the B2B REST API (Liberty 'SIServer', base port+75)")
    api_root: str = "/B2BAPIs/svc"
    auth: Literal["basic", "oauth2"] = Field(
        "basic", description="basic: username/password on every request; oauth2: client credentials for a "
                             "bearer token (the optional mode assumed for B2Bi 6.2.2+; see specs/sterling.md §2)")
    username: str | None = None
    password: SecretStr | None = None
    oauth_token_url: str | None = Field(None, description="the token endpoint; default base_url + /oauth2/token")
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_scope: str | None = None
    mailboxes: list[str] = Field(min_length=1, description="mailbox paths to poll, e.g. /ACME_EDI/Inbox")
    page_size: int = Field(500, ge=1, le=1000)
    timeout: float = Field(30.0, gt=0, description="seconds per request (connect, read, write, pool)")
    verify: bool | str = Field(True, description="TLS verification: True, False, or a CA bundle path")
    ack_mode: Literal["consume", "move", "delete"] = "consume"
    archive_mailbox: str = Field("{parent}/Processed",
                                 description="move target; {parent} = polled mailbox's parent path, {mailbox} = it")
    max_payload_bytes: int = Field(100 * 1024 * 1024, ge=1, description="larger messages are refused, not fetched")
    max_list_passes: int = Field(3, ge=1, description="re-list passes per mailbox until no new ids appear")
    retry_attempts: int = Field(5, ge=1, description="attempts per request, the first included")
    retry_wait_initial: float = Field(0.5, ge=0)
    retry_wait_max: float = Field(30.0, ge=0)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be http(s)://host:port")
        if parts.username or parts.password:
            # Credentials in the URL would end up in logs and exception texts.
            raise ValueError("base_url must not carry credentials; use username/password")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_credentials(self) -> SterlingConfig:
        if self.auth == "basic" and not (self.username and self.password):
            raise ValueError("basic auth needs username and password")
        if self.auth == "oauth2" and not (self.oauth_client_id and self.oauth_client_secret):
            raise ValueError("oauth2 auth needs oauth_client_id and oauth_client_secret")
        return self

    @property
    def principal(self) -> str:
        """Who the gateway signs in as, for messages: the user name or the OAuth client id."""
        return (self.username if self.auth == "basic" else f"OAuth client {self.oauth_client_id}") or "?"

    @field_validator("mailboxes")
    @classmethod
    def _check_mailboxes(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or path.endswith("/") and path != "/":
                raise ValueError(f"mailbox path {path!r} must be absolute, without trailing slash")
        return list(dict.fromkeys(value))


class SterlingSettings(SterlingConfig):
    """A Sterling B2Bi instance to poll (``[[sterling]]``), with its name and interval."""

    name: str = Field(min_length=1, max_length=100)
    interval_seconds: float = Field(60.0, gt=0)
