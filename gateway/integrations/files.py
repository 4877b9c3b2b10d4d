"""What every file-drop source shares (SFTP drop folders, local folders): which names are uploads
still in progress, when a file has stopped changing, and free names in an archive folder."""

from __future__ import annotations

import fnmatch
import posixpath
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

__all__ = ["DEFAULT_TEMP_SUFFIXES", "StabilityTracker", "accepts_name", "unique_names"]

DEFAULT_TEMP_SUFFIXES = (".tmp", ".part", ".filepart", ".partial", ".crdownload")


def accepts_name(name: str, pattern: str = "*", *, temp_suffixes: tuple[str, ...] = DEFAULT_TEMP_SUFFIXES,
                 ignore_hidden: bool = True) -> bool:
    """True if ``name`` matches the glob (case-insensitively) and is not hidden or a temporary upload."""
    lowered = name.lower()
    if ignore_hidden and name.startswith("."):
        return False
    if any(lowered.endswith(s) for s in temp_suffixes):
        return False
    return fnmatch.fnmatchcase(lowered, pattern.lower())


class StabilityTracker:
    """Remembers each file's (size, mtime) and since when it has looked so.

    A file is stable when this look saw the same size and mtime as the previous one and it has
    looked so for at least ``quiet_seconds`` (from the look that first saw it so, or from its
    mtime, whichever is longer ago): a writer that pauses for less than that is never cut off.
    The state is plain data so the pipeline can keep it in its database across restarts.
    """

    VERSION = 2

    def __init__(self, seen: dict[str, tuple[int, int, float]] | None = None, *, quiet_seconds: float = 0.0) -> None:
        self._seen: dict[str, tuple[int, int, float]] = dict(seen or {})
        self.quiet_seconds = quiet_seconds

    def observe(self, remote_id: str, size: int, mtime: int, *, now: float | None = None,
                age: float | None = None) -> bool:
        """Record this look; True if it equals the previous one and the quiet period has passed.

        ``age``: seconds since the file's modification time, where it is known."""
        now = time.time() if now is None else now
        current = (int(size), int(mtime))
        previous = self._seen.get(remote_id)
        if previous is not None and previous[:2] == current:
            return max(now - previous[2], age or 0.0) >= self.quiet_seconds
        self._seen[remote_id] = (*current, now)
        return False

    def forget(self, remote_id: str) -> None:
        self._seen.pop(remote_id, None)

    def prune(self, folder: str, present: set[str]) -> None:
        """Drop observations of files in `folder` that are no longer there."""
        for rid in [r for r in self._seen if posixpath.dirname(r) == folder and r not in present]:
            del self._seen[rid]

    def __contains__(self, remote_id: str) -> bool:
        return remote_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, "files": {k: [s, m, t] for k, (s, m, t) in self._seen.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, quiet_seconds: float = 0.0) -> StabilityTracker:
        if not data:
            return cls(quiet_seconds=quiet_seconds)
        version = data.get("version")
        if version not in (1, cls.VERSION):
            raise ValueError(f"unsupported StabilityTracker state version {version!r}")
        # Version 1 kept no time: its observations count from when this process first reads them.
        since = time.time()
        return cls({k: (int(v[0]), int(v[1]), float(v[2]) if len(v) > 2 else since)
                    for k, v in data.get("files", {}).items()}, quiet_seconds=quiet_seconds)


def unique_names(name: str, now: datetime, limit: int = 100) -> Iterator[str]:
    """`name`, then `stem.YYYYmmddTHHMMSSZ.ext`, then the same with -2, -3, ..."""
    yield name
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension, or a leading-dot name
        stem, dot, ext = name, "", ""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    yield f"{stem}.{stamp}{dot}{ext}"
    for n in range(2, limit):
        yield f"{stem}.{stamp}-{n}{dot}{ext}"
