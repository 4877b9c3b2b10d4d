"""A local folder as a source: files that stopped changing are read, stored, then archived or deleted.

A file is taken once its size and modification time have not changed for ``quiet_seconds``
(default 10) over two polls, or at once when its mtime is that old (it is read between two looks
that must agree); never while it carries a temporary upload suffix or is hidden. A file written to
after it was taken is left in the folder and taken again as a new version. Its remote id is its path plus its modification time, so the same name written again later
is a new arrival, while a re-read after a crash is the same one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import structlog

from gateway.integrations.base import Check, Intake
from gateway.integrations.files import StabilityTracker, accepts_name, unique_names
from gateway.integrations.local.settings import LocalSettings

__all__ = ["LocalSource", "archive_or_delete"]

log = structlog.get_logger("gateway.integrations.local")


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
        tracker = StabilityTracker.from_dict(intake.cursor.get("stability"), quiet_seconds=cfg.quiet_seconds)
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
                age = now - st.st_mtime
                stable = tracker.observe(str(path), st.st_size, st.st_mtime_ns, now=now, age=age)
                if not stable and (cfg.quiet_seconds <= 0 or age < cfg.quiet_seconds):
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
                taken = (st.st_size, st.st_mtime_ns)
                intake.take(path.name, f"{path}@{st.st_mtime_ns}", data,
                            lambda path=path, taken=taken: archive_or_delete(cfg, path, taken))
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


def _same(path: Path, taken: tuple[int, int] | None) -> bool | None:
    """Whether ``path`` still has the size and mtime it was taken with (None: gone, or nothing to compare)."""
    if taken is None:
        return None
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns) == taken


def archive_or_delete(cfg: LocalSettings, path: Path, taken: tuple[int, int] | None = None) -> None:
    """Archive or delete a stored local file; one already gone counts as done. A file written to
    after it was read (``taken``: its size and mtime then) stays where it is, to be taken again as a
    new version once quiet: never archived or deleted with bytes nobody stored."""
    if _same(path, taken) is False:
        log.warning("local.changed_after_intake", file=str(path))
        return
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
        if _same(path, taken) is False:  # written to between the look and the link: keep it in the drop
            target.unlink(missing_ok=True)
            log.warning("local.changed_after_intake", file=str(path))
            return
        path.unlink(missing_ok=True)
        return
    raise OSError(f"no free archive name for {path.name} in {archive}")
