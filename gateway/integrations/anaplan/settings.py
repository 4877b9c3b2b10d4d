"""Settings of the Anaplan integration (``[anaplan]``): the tenant, credentials, the imports documents
go to (columns from canonical paths), batching and the request budget."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from gateway.integrations.anaplan.auth import (
    AnaplanAuth,
    AnaplanEndpoints,
    BasicAuth,
    CertificateAuth,
    OAuth2RefreshTokenAuth,
)


class Const(BaseModel):
    """A fixed column value, e.g. ``{"const": "EDI"}``."""

    model_config = ConfigDict(frozen=True)
    const: str


ColumnSource = Union[str, Const]
_PATH_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[\])?\Z")


def _parse_path(path: str) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """``"lines[].quantity"`` -> (("quantity",), ("lines",)); ``"po_number"`` -> (("po_number",), None).

    Returns (path within the row source, array prefix or None)."""
    segments = path.split(".")
    array_at = None
    for i, seg in enumerate(segments):
        if not _PATH_SEGMENT.match(seg):
            raise ValueError(f"bad field path {path!r} (segment {seg!r})")
        if seg.endswith("[]"):
            if array_at is not None:
                raise ValueError(f"field path {path!r} iterates more than one array")
            array_at = i
    if array_at is None:
        return tuple(segments), None
    prefix = tuple(s.removesuffix("[]") for s in segments[:array_at + 1])
    return tuple(segments[array_at + 1:]), prefix


class AnaplanImportConfig(BaseModel):
    """Where a batch goes in Anaplan and how documents become CSV rows.

    ``columns`` maps each of the import's header names to a canonical-document field path
    (``"po_number"``, ``"parties.supplier.name"``, ``"lines[].quantity"``) or a :class:`Const`.
    Paths through ``lines[]`` (or another single array) yield one row per element; otherwise one
    row per document. The CSV column order is the import's ``headerNames``, not this mapping's.
    """

    model_config = ConfigDict(frozen=True)

    workspace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    model_id: str = Field(pattern=r"^[0-9A-F]{32}$")
    import_id: str = Field(pattern=r"^112\d{9}$")
    # Only 113… ids: Anaplan silently creates a new private file for an unknown id (§5.2).
    file_id: str = Field(pattern=r"^113\d{9}$")
    columns: dict[str, ColumnSource]
    # Raw bytes per chunk. Anaplan documents 1–50 MB; smaller values are for tests only.
    chunk_size: int = Field(default=10_000_000, ge=1, le=50_000_000)
    gzip_chunks: bool = True
    locale_name: str = "en_US"
    poll_interval_s: float = Field(default=5.0, gt=0)  # Anaplan: ≥ 5 s in production
    poll_max_interval_s: float = Field(default=60.0, gt=0)
    task_timeout_s: float = Field(default=3600.0, gt=0)

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, columns: dict[str, ColumnSource]) -> dict[str, ColumnSource]:
        if not columns:
            raise ValueError("at least one column must be mapped")
        arrays = set()
        for header, source in columns.items():
            if isinstance(source, str):
                _, prefix = _parse_path(source)
                if prefix is not None:
                    arrays.add(prefix)
        if len(arrays) > 1:
            raise ValueError("columns iterate different arrays: "
                             + ", ".join(".".join(a) + "[]" for a in sorted(arrays)))
        return columns

    @model_validator(mode="after")
    def _check_poll(self) -> AnaplanImportConfig:
        if self.poll_max_interval_s < self.poll_interval_s:
            raise ValueError("poll_max_interval_s must be >= poll_interval_s")
        return self

    @property
    def file_key(self) -> str:
        return f"{self.workspace_id}/{self.model_id}/{self.file_id}"


@dataclass(frozen=True)
class CsvFormat:
    """The import source's text format (from the import metadata, §9)."""

    separator: str = ","
    delimiter: str = '"'
    encoding: str = "UTF-8"
    header_row: int = 1
    first_data_row: int = 2


@dataclass(frozen=True)
class ImportMetadata:
    header_names: tuple[str, ...]
    format: CsvFormat
    data_source_id: str | None
    name: str = ""



class AnaplanBatching(BaseModel):
    """When documents ready for Anaplan go: a batch is sent when it holds ``max_documents`` or its
    oldest document has waited ``max_age_seconds`` (≤ 0.01 requests per document needs big batches)."""

    model_config = ConfigDict(extra="forbid")

    max_documents: int = Field(2000, ge=1)
    max_age_seconds: float = Field(30.0, ge=0)
    min_age_seconds: float = Field(1.0, ge=0, description=(
        "a batch this old goes early when no document of its kind is on its way (matching, posting)"))
    send_timeout_seconds: float = Field(300.0, gt=0, description=(
        "no longer used: a batch whose sender died is sent again when the worker's lease expires"))
    retry_seconds: float = Field(30.0, gt=0, description="wait after a transient fault when Anaplan gave no Retry-After")


class AnaplanSettings(BaseModel):
    """Anaplan tenant, credentials, the imports documents go to, batching and request budget.

    ``url`` points all three roles (API, auth, OAuth) at one host (the simulator); otherwise the
    regional ``api_url`` / ``auth_url`` / ``oauth_url``. ``imports`` is keyed by document kind
    (``purchase_order``, ``invoice``); a kind without an import is not sent to Anaplan."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    api_url: str = "https://api.anaplan.com/2/0"
    auth_url: str = "https://auth.anaplan.com"
    oauth_url: str = "https://us1a.app.anaplan.com"
    auth: Literal["basic", "certificate", "oauth"] = "basic"
    username: str | None = None
    password: SecretStr | None = None
    certificate_file: str | None = None
    private_key: SecretStr | None = None  # PEM text (use a secret: reference)
    private_key_password: SecretStr | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    refresh_token: SecretStr | None = None
    refresh_token_secret: str | None = Field(
        None, description="vault secret that keeps the newest rotatable refresh token across restarts")
    imports: dict[Literal["purchase_order", "invoice"], AnaplanImportConfig] = Field(default_factory=dict)
    batch: AnaplanBatching = Field(default_factory=AnaplanBatching)
    requests_per_minute: int = Field(500, ge=1, description="the tenant allows 600/min for everyone")
    timeout_seconds: float = Field(120.0, gt=0)
    retry_attempts: int = Field(3, ge=1, description="in-call tries of a 429/409/423/5xx before the batch waits")
    retry_max_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _credentials(self) -> AnaplanSettings:
        if self.auth == "basic" and not (self.username and self.password):
            raise ValueError("basic auth needs username and password")
        if self.auth == "certificate" and not (self.certificate_file and self.private_key):
            raise ValueError("certificate auth needs certificate_file and private_key")
        if self.auth == "oauth" and not (self.oauth_client_id and self.refresh_token):
            raise ValueError("oauth needs oauth_client_id and refresh_token")
        return self

    def endpoints(self) -> AnaplanEndpoints:
        if self.url:
            return AnaplanEndpoints.single_host(self.url)
        return AnaplanEndpoints(api=self.api_url.rstrip("/"), auth=self.auth_url.rstrip("/"),
                                oauth=self.oauth_url.rstrip("/"))


def make_auth(self: AnaplanSettings, *, on_refresh_token: Callable[[str], None] | None = None,
              refresh_token: str | None = None) -> AnaplanAuth:
    if self.auth == "basic":
        assert self.username and self.password
        return BasicAuth(self.username, self.password)
    if self.auth == "certificate":
        assert self.certificate_file and self.private_key
        with open(self.certificate_file, "rb") as fh:
            cert = fh.read()
        return CertificateAuth(cert, self.private_key, self.private_key_password)
    assert self.oauth_client_id and self.refresh_token
    return OAuth2RefreshTokenAuth(self.oauth_client_id, refresh_token or self.refresh_token,
                                  client_secret=self.oauth_client_secret,
                                  on_refresh_token=on_refresh_token)
