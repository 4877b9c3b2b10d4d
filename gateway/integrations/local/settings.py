"""Settings of a local folder used as a drop (the demo, the crash tests, or an SFTP server's own disk)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LocalSettings"]


class LocalSettings(BaseModel):
    """A folder on this machine used as a drop (``[[local]]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    path: Path
    archive_path: Path | None = None  # None: delete after intake
    outbound_path: Path | None = None  # acknowledgments; '{partner}' replaced by the partner id
    partners: tuple[str, ...] = ()
    pattern: str = "*"
    interval_seconds: float = Field(5.0, gt=0)
    quiet_seconds: float = Field(10.0, ge=0, description="a file is taken once its size and mtime have not "
                                                        "changed for this long (over two polls, or since its mtime)")
