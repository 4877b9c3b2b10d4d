"""Settings of an SFTP source: the server, its pinned host keys, its drop folders."""

from __future__ import annotations

import base64
import posixpath
from pathlib import Path
from typing import Literal

import paramiko
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.integrations.files import DEFAULT_TEMP_SUFFIXES, accepts_name

__all__ = ["DropFolder", "SftpConfig", "SftpSettings", "parse_public_key"]


def _norm_remote(path: str) -> str:
    path = path.strip()
    if not path:
        raise ValueError("remote path must not be empty")
    return posixpath.normpath(path)


class DropFolder(BaseModel):
    """One remote folder that partners upload into."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Remote folder to poll (absolute, or relative to the login directory).")
    partners: tuple[str, ...] = Field(
        default=(), description="Partner ids whose files arrive here; empty = open to any partner."
    )
    pattern: str = Field(default="*", description="Filename glob; matched case-insensitively.")
    temp_suffixes: tuple[str, ...] = Field(
        default=DEFAULT_TEMP_SUFFIXES,
        description="Files ending in one of these (case-insensitive) are uploads in progress.",
    )
    ignore_hidden: bool = Field(
        default=True, description="Skip dot-files (rsync and some clients upload to '.name.XXXX')."
    )
    after_intake: Literal["archive", "delete"] = "archive"
    archive_path: str | None = Field(
        default=None, description="Where taken files are moved; required when after_intake='archive'."
    )
    outbound_path: str | None = Field(
        default=None,
        description="Folder for acknowledgments to this folder's partners; '{partner}' is replaced "
        "by the partner id, e.g. '/outbound/{partner}'.",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _norm_remote(v)

    @field_validator("archive_path", "outbound_path")
    @classmethod
    def _optional_path(cls, v: str | None) -> str | None:
        return None if v is None else _norm_remote(v)

    @field_validator("partners")
    @classmethod
    def _partners(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p.strip() for p in v):
            raise ValueError("partner ids must not be blank")
        return tuple(p.strip() for p in v)

    @field_validator("temp_suffixes")
    @classmethod
    def _suffixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in v):
            raise ValueError("temporary suffixes must not be empty strings")
        return tuple(s.lower() for s in v)

    @model_validator(mode="after")
    def _consistent(self) -> DropFolder:
        if self.after_intake == "archive":
            if not self.archive_path:
                raise ValueError(f"drop folder {self.path}: after_intake='archive' needs archive_path")
            # Archiving into the polled folder itself would offer every file again forever.
            if self.archive_path == self.path:
                raise ValueError(f"drop folder {self.path}: archive_path must differ from path")
        if self.outbound_path == self.path:
            raise ValueError(f"drop folder {self.path}: outbound_path must differ from path")
        return self

    def accepts_name(self, name: str) -> bool:
        """True if `name` matches the glob and is not hidden or a temporary upload."""
        return accepts_name(name, self.pattern, temp_suffixes=self.temp_suffixes, ignore_hidden=self.ignore_hidden)


def parse_public_key(entry: str, where: str) -> paramiko.PKey:
    parts = entry.split()
    if len(parts) < 2:
        raise ValueError(f"{where}: expected 'keytype base64', got {entry[:40]!r}")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1], validate=True))
    except Exception as exc:  # paramiko raises several types for malformed keys
        raise ValueError(f"{where}: not a valid {parts[0]!r} public key ({exc})") from None


class SftpConfig(BaseModel):
    """Connection, pinned host keys and drop folders of one SFTP server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    password: SecretStr | None = None
    private_key_path: Path | None = None
    private_key: SecretStr | None = Field(default=None, description="Private key text (OpenSSH/PEM).")
    passphrase: SecretStr | None = None
    known_hosts: str | None = Field(
        default=None,
        description="OpenSSH known_hosts text (e.g. ssh-keyscan output); lines for other hosts are "
        "ignored. For a port other than 22 the host is written '[host]:port', as OpenSSH does.",
    )
    host_keys: tuple[str, ...] = Field(
        default=(), description="Pinned keys of this server as 'keytype base64' entries."
    )
    folders: tuple[DropFolder, ...] = ()
    quiet_seconds: float = Field(default=10.0, ge=0, description=(
        "A file is taken once its size and mtime have not changed for this long, over two polls."))
    connect_timeout: float = Field(default=15.0, gt=0)
    operation_timeout: float = Field(default=60.0, gt=0)
    retry_attempts: int = Field(default=4, ge=1, le=20)
    retry_max_wait: float = Field(default=10.0, ge=0)
    keepalive_seconds: int = Field(default=30, ge=0)

    @field_validator("known_hosts")
    @classmethod
    def _known_hosts(cls, v: str | None) -> str | None:
        if v is None:
            return None
        for no, line in enumerate(v.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("@"):
                # paramiko cannot honour @cert-authority/@revoked; refusing is safer than ignoring.
                raise ValueError(f"known_hosts line {no}: markers like {line.split()[0]} are not supported")
            parts = line.split()
            if len(parts) < 3:
                raise ValueError(f"known_hosts line {no}: expected 'hosts keytype base64'")
            parse_public_key(" ".join(parts[1:3]), f"known_hosts line {no}")
        return v

    @field_validator("host_keys")
    @classmethod
    def _host_keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, entry in enumerate(v):
            parse_public_key(entry, f"host_keys[{i}]")
        return tuple(e.strip() for e in v)

    @model_validator(mode="after")
    def _consistent(self) -> SftpConfig:
        if not self.known_hosts and not self.host_keys:
            raise ValueError("pin the server's host key: set known_hosts or host_keys")
        if self.private_key_path and self.private_key:
            raise ValueError("set private_key_path or private_key, not both")
        if not (self.password or self.private_key_path or self.private_key):
            raise ValueError("set a password or a private key")
        paths = [f.path for f in self.folders]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ValueError(f"drop folders listed twice: {', '.join(dupes)}")
        # An archive or outbound folder that is also polled would feed our own output back in.
        for f in self.folders:
            for other in (f.archive_path, f.outbound_path):
                if other in paths:
                    raise ValueError(f"drop folder {f.path}: {other} is itself a drop folder")
        return self

    @property
    def hostkey_name(self) -> str:
        """The name OpenSSH uses for this server in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def pinned_keys(self) -> list[paramiko.PKey]:
        """Every pinned key that applies to this host."""
        keys = [parse_public_key(e, "host_keys") for e in self.host_keys]
        name = self.hostkey_name
        for no, line in enumerate((self.known_hosts or "").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            hosts, keytype, blob = line.split()[:3]
            # Own matching rather than paramiko.HostKeys, which keeps one key per type and so
            # would drop the second key during a key rotation. Hashed names (|1|...) supported.
            for h in hosts.split(","):
                if h == name or (h.startswith("|1|") and paramiko.HostKeys.hash_host(name, h) == h):
                    keys.append(parse_public_key(f"{keytype} {blob}", f"known_hosts line {no}"))
                    break
        return keys


class SftpSettings(SftpConfig):
    """An SFTP server with drop folders to poll (``[[sftp]]``), with its name and interval."""

    name: str = Field(min_length=1, max_length=100)
    interval_seconds: float = Field(300.0, gt=0)
