"""An SFTP server's drop folders as a source: files that stopped changing are fetched, stored, then
archived or deleted (see :mod:`gateway.integrations.sftp.client`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from gateway.integrations.base import Check, Intake
from gateway.integrations.files import StabilityTracker
from gateway.integrations.sftp.client import RemoteFileChanged, RemoteFileGone, SftpClient, SftpError
from gateway.integrations.sftp.settings import SftpSettings

__all__ = ["SftpSource"]


class SftpSource:
    """``[[sftp]]``: one server, its pinned host keys and drop folders."""

    kind: ClassVar[str] = "sftp"

    def __init__(self, settings: SftpSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.interval_seconds = settings.interval_seconds

    @classmethod
    def configured(cls, settings: Any) -> Sequence[SftpSource]:
        return [cls(c) for c in settings.sftp]

    def poll(self, intake: Intake) -> None:
        # What each file looked like at the last poll: a file is taken once it looked the same twice.
        tracker = StabilityTracker.from_dict(intake.cursor.get("stability"),
                                             quiet_seconds=self.settings.quiet_seconds)
        try:
            with SftpClient(self.settings, tracker) as client:
                for f in client.list_pending():
                    intake.listed()
                    try:
                        data = client.fetch(f)
                    except (RemoteFileGone, RemoteFileChanged) as exc:
                        intake.skip(str(exc))
                        continue
                    intake.take(f.name, f"{f.remote_id}@{f.mtime}", data, lambda f=f: client.acknowledge(f))
                for folder, reason in client.folder_errors.items():
                    intake.fail(f"SFTP {self.settings.hostkey_name}: drop folder {folder}: {reason}")
        finally:
            intake.cursor["stability"] = tracker.to_dict()

    def check(self) -> list[Check]:
        try:
            with SftpClient(self.settings) as client:
                problems = client.unreadable_folders()
        except SftpError as exc:
            return [Check(f"SFTP {self.settings.hostkey_name}", False, str(exc))]
        checks = [Check(f"SFTP {self.settings.hostkey_name}", True, "host key pinned, signed in")]
        checks += [Check(f"drop folder {f.path}", f.path not in problems, problems.get(f.path, "readable"))
                   for f in self.settings.folders]
        return checks
