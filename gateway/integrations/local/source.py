"""A local folder as a source: files that stopped changing are read, stored, then archived or deleted.

A file is taken once it looked the same (size and modification time) on two polls, or at once when
untouched for :data:`LOCAL_SETTLE_SECONDS`; never while it carries a temporary upload suffix or is
hidden. Its remote id is its path plus its modification time, so the same name written again later
is a new arrival, while a re-read after a crash is the same one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from gateway.integrations.base import Check, Intake
from gateway.integrations.files import StabilityTracker, accepts_name, unique_names
from gateway.integrations.local.settings import LocalSettings

__all__ = ["LOCAL_SETTLE_SECONDS", "LocalSource", "archive_or_delete"]

#: A local file whose modification time is at least this old is finished, even on first sight.
LOCAL_SETTLE_SECONDS = 3.0


class LocalSource:
    """``[[local]]``: one folder on this machine."""

    kind: ClassVar[str] = "local"

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.interval_seconds = settings.interval_seconds

    @classmethod
    def configured(cls, settings: Any) -> Sequence[LocalSource]:
        return [cls(c) for c in settings.local]

    def poll(self, intake: Intake) -> None:
        cfg = self.settings
        tracker = StabilityTracker.from_dict(intake.cursor.get("stability"))
        folder = str(Path(cfg.path))
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            intake.fail(f"local folder {folder}: {exc.strerror or exc}")
            return
        try:
            now = time.time()
            present: set[str] = set()
            for entry in sorted(entries, key=lambda e: e.name):
                if not entry.is_file(follow_symlinks=False) or not accepts_name(entry.name, cfg.pattern):
                    continue
                path = Path(entry.path)
                st = entry.stat(follow_symlinks=False)
                present.add(str(path))
                stable = tracker.observe(str(path), st.st_size, st.st_mtime_ns)
                if not stable and now - st.st_mtime < LOCAL_SETTLE_SECONDS:
                    continue  # may still be being written: look again next poll
                intake.listed()
                try:
                    data = path.read_bytes()
                    after = path.stat()
                except FileNotFoundError:
                    intake.skip(f"{path} disappeared before it was read")
                    continue
                except OSError as exc:
                    intake.fail(f"{path}: cannot read: {exc.strerror or exc}")
                    continue
                if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or len(data) != st.st_size:
                    tracker.forget(str(path))
                    intake.skip(f"{path} changed while it was read; it will be taken once stable")
                    continue
                intake.take(path.name, f"{path}@{st.st_mtime_ns}", data,
                            lambda path=path: archive_or_delete(cfg, path))
                tracker.forget(str(path))
            tracker.prune(folder, present)
        finally:
            intake.cursor["stability"] = tracker.to_dict()

    def check(self) -> list[Check]:
        folder = Path(self.settings.path)
        readable = folder.is_dir() and os.access(folder, os.R_OK | os.X_OK)
        checks = [Check(f"folder {folder}", readable, "readable" if readable else "missing or not readable")]
        if self.settings.archive_path is not None:
            archive = Path(self.settings.archive_path)
            ok = archive.is_dir() and os.access(archive, os.W_OK) or not archive.exists()
            checks.append(Check(f"archive {archive}", ok, "writable" if ok else "not writable"))
        return checks


def archive_or_delete(cfg: LocalSettings, path: Path) -> None:
    """Archive or delete a stored local file; one already gone counts as done."""
    if cfg.archive_path is None:
        path.unlink(missing_ok=True)
        return
    archive = Path(cfg.archive_path)
    archive.mkdir(parents=True, exist_ok=True)
    for name in unique_names(path.name, datetime.now(UTC)):
        target = archive / name
        if target.exists():
            continue
        try:
            os.link(path, target)  # never replaces an existing archive file, unlike rename
        except FileExistsError:
            continue
        except FileNotFoundError:
            return
        except OSError:  # no hard links here (another file system): a plain rename
            if target.exists():
                continue
            try:
                os.rename(path, target)
            except FileNotFoundError:
                return
            return
        path.unlink(missing_ok=True)
        return
    raise OSError(f"no free archive name for {path.name} in {archive}")
