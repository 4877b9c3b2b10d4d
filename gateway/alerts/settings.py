"""The ``[alerts]`` section of the settings file: what to tell people, and where.

    [alerts]
    panel_url = "https://edi.example.com"     # links in alerts point into the panel
    attention_after_minutes = 60              # a supplier choice waiting longer than this
    outage_after_minutes = 15                 # a source or destination failing longer than this

    [[alerts.webhooks]]                       # Slack, Teams (Workflows) or any JSON receiver
    name = "edi-ops"
    url = "secret:slack-webhook-url"          # the URL carries the token: keep it in the vault
    format = "slack"

    [alerts.email]
    host = "smtp.example.com"
    username = "gateway@example.com"
    password = "secret:smtp-password"
    sender = "EDI gateway <gateway@example.com>"
    recipients = ["edi-ops@example.com"]
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class AlertKind(StrEnum):
    """What an alert is about (also the names a channel's ``kinds`` may list)."""

    DOCUMENT_FAILED = "document_failed"  # a document (or a whole file) failed
    ATTENTION_WAITING = "attention_waiting"  # a supplier choice has waited too long
    OUTAGE = "outage"  # a source or destination has failed for too long (and its recovery)
    ACK_REJECTED = "ack_rejected"  # an acknowledgment rejecting what a partner sent
    DIGEST = "digest"  # alerts held back by the rate limit, summed up
    TEST = "test"  # `gateway alerts test`, the panel's button


class WebhookFormat(StrEnum):
    SLACK = "slack"  # {"text": ...}: Slack incoming webhooks, Mattermost, Rocket.Chat, Google Chat
    TEAMS = "teams"  # an Adaptive Card message: Microsoft Teams "Workflows" webhooks
    JSON = "json"  # the alert as structured JSON, for a receiver of your own


class WebhookChannel(BaseModel):
    """An HTTP endpoint that is sent each alert as JSON (POST)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    url: SecretStr = Field(description="https URL; its path is a credential: use \"secret:NAME\"")
    format: WebhookFormat = WebhookFormat.SLACK
    kinds: tuple[AlertKind, ...] | None = Field(None, description="only these kinds (default: all)")
    timeout_seconds: float = Field(10.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text.startswith("secret:") and not text.lower().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL (or \"secret:NAME\")")
        return value


class EmailSecurity(StrEnum):
    STARTTLS = "starttls"  # port 587: plain connection upgraded to TLS before anything is sent
    TLS = "tls"  # port 465: TLS from the first byte
    NONE = "none"  # a relay on localhost or a trusted network only


class EmailChannel(BaseModel):
    """An SMTP server that sends each alert as an e-mail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("email", min_length=1, max_length=100)
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535, description="default 587 (starttls), 465 (tls), 25 (none)")
    security: EmailSecurity = EmailSecurity.STARTTLS
    ca_file: Path | None = Field(None, description="CA bundle for the server's certificate (default: the system's)")
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(min_length=3, description="the From address, e.g. 'EDI gateway <gateway@example.com>'")
    recipients: tuple[str, ...] = Field(min_length=1)
    subject_prefix: str = "[EDI gateway]"
    kinds: tuple[AlertKind, ...] | None = None
    timeout_seconds: float = Field(20.0, gt=0, le=300)

    @property
    def effective_port(self) -> int:
        return self.port or {EmailSecurity.STARTTLS: 587, EmailSecurity.TLS: 465, EmailSecurity.NONE: 25}[self.security]

    @model_validator(mode="after")
    def _login_pair(self) -> EmailChannel:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (give both or neither)")
        return self


class AlertSettings(BaseModel):
    """When the gateway tells people something needs them, and through which channels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    interval_seconds: float = Field(60.0, ge=1, description="how often the store is looked at")
    panel_url: str | None = Field(None, description="the panel's address, for links in alerts")
    document_failed: bool = Field(True, description="alert when a document or a file fails")
    ack_rejected: bool = Field(True, description="alert when an acknowledgment rejects what a partner sent")
    attention_after_minutes: float | None = Field(
        60.0, gt=0, description="alert when a supplier choice waits longer than this (unset: never)")
    outage_after_minutes: float | None = Field(
        15.0, gt=0, description="alert when a source or destination fails longer than this (unset: never)")
    recovery: bool = Field(True, description="say so when a source or destination that was alerted works again")
    max_per_hour: int = Field(20, ge=1, description="alerts sent per hour at most; the rest are summed up later")
    group_after: int = Field(5, ge=1, description="more new failures than this in one look: one alert for all")
    lookback_hours: float = Field(24.0, gt=0, description="after a stop, look this far back at most")
    webhooks: tuple[WebhookChannel, ...] = ()
    email: EmailChannel | None = None

    @field_validator("panel_url")
    @classmethod
    def _panel_url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL, e.g. https://edi.example.com")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _unique_names(self) -> AlertSettings:
        names = [w.name for w in self.webhooks] + ([self.email.name] if self.email else [])
        if len(names) != len(set(names)):
            raise ValueError(f"channel names must be unique: {', '.join(names)}")
        if self.enabled and not names:
            raise ValueError("no channel to send alerts through: add [[alerts.webhooks]] or [alerts.email] "
                             "(or enabled = false)")
        return self

    @property
    def channels(self) -> tuple[WebhookChannel | EmailChannel, ...]:
        return self.webhooks + ((self.email,) if self.email else ())
