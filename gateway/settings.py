"""Gateway settings: a TOML file, overridden by ``GATEWAY_*`` environment variables.

Credentials are never written in the file in clear: a value ``"secret:NAME"`` refers to a secret
stored encrypted with ``gateway secrets set NAME`` and is resolved at start-up
(:meth:`Settings.resolve_secrets`).

    GATEWAY_CONFIG=gateway.toml            # where the file is (default ./gateway.toml if present)
    GATEWAY_DATABASE_URL=postgresql://...  # any top-level key; nested ones with '__'
    GATEWAY_WORKERS__COUNT=4
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from gateway.alerts.settings import AlertSettings
from gateway.integrations import DESTINATIONS, source_classes
from gateway.integrations.anaplan.settings import AnaplanSettings
from gateway.integrations.base import Source
from gateway.integrations.local.settings import LocalSettings
from gateway.integrations.plex.client import PlexConfig
from gateway.integrations.sftp.settings import SftpSettings
from gateway.integrations.sterling.settings import SterlingSettings
from gateway.integrations.syspro.settings import SysproSettings
from gateway.pipeline.machine import KINDS
from gateway.pipeline.routing import DEFAULT_ROUTES

SECRET_PREFIX = "secret:"


class WorkerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(2, ge=0, description="worker threads in `gateway run`")
    batch_size: int = Field(100, ge=1, description="documents claimed per transaction")
    lease_seconds: float = Field(120.0, gt=0, description="a claim not finished by then is taken again")
    idle_seconds: float = Field(0.5, gt=0, description="sleep when there is nothing to do")
    max_attempts: int = Field(8, ge=1, description="tries of a transient fault at one stage before failing")
    backoff_initial: float = Field(2.0, ge=0)
    backoff_max: float = Field(600.0, ge=0)
    wait_max_seconds: float = Field(300.0, gt=0, description=(
        "longest look-again for a busy, locked or throttling destination (waits use no attempt)"))


class WebSettings(BaseModel):
    """The panel: where it listens and what it lets in (see README, "Security")."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    session_secret: SecretStr | None = None  # None: one is generated and kept in the data directory
    secure_cookies: bool | None = Field(
        None, description="the session cookie's Secure flag; None: on unless the panel listens on loopback only")
    allowed_hosts: list[str] | None = Field(
        None, description="Host header values served ('*.example.com' allowed); None: loopback names, the "
                          "listening address and this machine's names. Refuses DNS-rebinding requests")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="addresses (or networks) of reverse proxies whose X-Forwarded-For and "
                                          "X-Forwarded-Proto are believed; empty: none, the peer address counts")
    max_form_bytes: int = Field(64 * 1024, ge=1024, description="largest form or other small request body")
    max_json_bytes: int = Field(64 * 1024, ge=1024, description="largest JSON request body")
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1024,
                                  description="largest body of the partner routes (mapping files, EDI samples)")
    body_timeout_seconds: float = Field(60.0, gt=0, description="a request body must have arrived by then (408)")
    header_timeout_seconds: float = Field(10.0, gt=0, description="a request's headers must have arrived by then")
    max_connections: int = Field(200, ge=1, description="open connections served at once; more get 503")
    session_idle_minutes: float = Field(120.0, gt=0, description="a session unused this long is ended")
    session_max_hours: float = Field(12.0, gt=0, description="a session is ended this long after sign-in")
    login_max_failures: int = Field(5, ge=1, description="failed sign-ins per user name before it is locked")
    login_max_failures_per_address: int = Field(30, ge=1, description="failed sign-ins per client address")
    login_lock_minutes: float = Field(15.0, gt=0, description="window and lock time of the sign-in throttle")
    api_docs: bool = Field(True, description="serve Swagger UI at /api/docs (from the swagger-ui-bundle package)")

    def loopback_only(self) -> bool:
        """Whether the panel listens on a loopback address only (so plain HTTP cookies are acceptable)."""
        import ipaddress

        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def cookies_secure(self) -> bool:
        return self.secure_cookies if self.secure_cookies is not None else not self.loopback_only()


class Settings(BaseSettings):
    """Everything the gateway process needs."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path("var")
    database_url: str | None = None  # None: SQLite in data_dir
    partners_dir: Path = Path("partners")
    flows_dir: Path = Path("flows")
    flows_lease_seconds: float = Field(120.0, gt=0, description="a flow run's lease; a dead run's is free after it")
    secret_key_file: Path | None = None  # None: data_dir/secret.key; GATEWAY_SECRET_KEY wins over both
    log_level: str = "INFO"
    log_json: bool = False
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    sterling: list[SterlingSettings] = Field(default_factory=list)
    sftp: list[SftpSettings] = Field(default_factory=list)
    local: list[LocalSettings] = Field(default_factory=list)
    plex: PlexConfig | None = None
    anaplan: AnaplanSettings | None = None
    alerts: AlertSettings | None = None
    syspro: list[SysproSettings] = Field(default_factory=list)
    routing: dict[str, list[str]] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_ROUTES.items()},
                                          description="document kind -> destinations, in order")
    destinations: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "settings of registered destinations that have no section of their own, by name"))

    @model_validator(mode="after")
    def _invoice_gl_accounts(self) -> Settings:
        # Invoices become Plex AP invoices, whose lines are booked to the tenant's own GL accounts: a guess
        # would post real money to a wrong account, so there is no default.
        if self.plex is not None and self.plex.ap_invoice_accounts is None:
            raise ValueError("plex.ap_invoice_accounts is missing: add [plex.ap_invoice_accounts] with "
                             "expense_account and tax_account (charge_account for freight is optional), the GL "
                             "accounts from your Plex chart of accounts that AP invoice lines are booked to")
        return self

    @field_validator("routing")
    @classmethod
    def _known_destinations(cls, routing: dict[str, list[str]]) -> dict[str, list[str]]:
        for kind, names in routing.items():
            if kind not in KINDS:
                raise ValueError(f"{kind!r} is not a document kind ({', '.join(KINDS)})")
            unknown = [n for n in names if n not in DESTINATIONS]
            if unknown:
                raise ValueError(f"{kind}: unknown destination {unknown[0]!r} (known: {', '.join(DESTINATIONS)})")
            if len(set(names)) != len(names):
                raise ValueError(f"{kind}: a destination is listed twice")
        return {**{k: list(v) for k, v in DEFAULT_ROUTES.items()}, **routing}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def store_url(self) -> str:
        from gateway.store.db import sqlite_url

        return self.database_url or sqlite_url(self.data_dir)

    @property
    def key_file(self) -> Path:
        return self.secret_key_file or self.data_dir / "secret.key"

    def source_names(self) -> list[str]:
        """``"<kind>:<name>"`` of every configured source."""
        return [f"{s.kind}:{s.name}" for s in configured_sources(self)]

    def secret_references(self) -> set[str]:
        """Names of the secrets this configuration refers to."""
        found: set[str] = set()
        _walk(self.model_dump(mode="python"), lambda v: found.add(v[len(SECRET_PREFIX):]) or v)
        return found

    def resolve_secrets(self, lookup) -> Settings:
        """A copy with every ``"secret:NAME"`` replaced by ``lookup(NAME)``."""
        data = _walk(self.model_dump(mode="python"), lambda v: lookup(v[len(SECRET_PREFIX):]))
        return type(self).model_validate(data)


def configured_sources(settings: Settings) -> list[Source]:
    """Every source the settings name, of every registered kind (``gateway.integrations.SOURCES``)."""
    return [source for cls in source_classes().values() for source in cls.configured(settings)]


def _walk(value: Any, replace) -> Any:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        return replace(value) if value.startswith(SECRET_PREFIX) else value
    if isinstance(value, dict):
        return {k: _walk(v, replace) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_walk(v, replace) for v in value)
    return value


_CONFIG_OVERRIDE: list[Path | None] = [None]


def _config_path() -> Path | None:
    if _CONFIG_OVERRIDE[0] is not None:
        return _CONFIG_OVERRIDE[0]
    env = os.environ.get("GATEWAY_CONFIG")
    if env:
        return Path(env)
    default = Path("gateway.toml")
    return default if default.is_file() else None


class SettingsError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (``path``, ``$GATEWAY_CONFIG`` or ./gateway.toml) and the environment."""
    from pydantic import ValidationError

    if path is not None and not Path(path).is_file():
        raise SettingsError(f"{path}: no such configuration file")
    _CONFIG_OVERRIDE[0] = Path(path) if path is not None else None
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        where = str(_config_path() or "environment")
        lines = [f"{where}: " + ".".join(str(p) for p in e["loc"]) + (": " if e["loc"] else "")
                 + e["msg"].removeprefix("Value error, ") for e in exc.errors()]
        raise SettingsError("\n".join(lines)) from None
    except (OSError, ValueError) as exc:  # unreadable file, TOML syntax
        raise SettingsError(f"{_config_path()}: {exc}") from None
    finally:
        _CONFIG_OVERRIDE[0] = None
