"""A Sterling B2B Integrator mailbox as a source: each extractable message is fetched, stored, then
acknowledged by the configured policy (see :mod:`gateway.integrations.sterling.client`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from gateway.integrations.base import Check, Intake
from gateway.integrations.sterling.client import (
    MessageGone,
    PayloadSizeMismatch,
    PayloadTooLarge,
    SterlingAuthError,
    SterlingClient,
    SterlingError,
    SterlingProtocolError,
)
from gateway.integrations.sterling.settings import SterlingSettings

__all__ = ["SterlingSource"]


class SterlingSource:
    """``[[sterling]]``: one B2Bi instance and its mailboxes."""

    kind: ClassVar[str] = "sterling"

    def __init__(self, settings: SterlingSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.interval_seconds = settings.interval_seconds

    @classmethod
    def configured(cls, settings: Any) -> Sequence[SterlingSource]:
        return [cls(c) for c in settings.sterling]

    def poll(self, intake: Intake) -> None:
        with SterlingClient(self.settings) as client:
            for msg in client.list_pending():
                intake.listed()
                try:
                    data = client.fetch(msg)
                except MessageGone as exc:
                    intake.skip(str(exc))
                    continue
                except (PayloadTooLarge, PayloadSizeMismatch, SterlingProtocolError) as exc:
                    intake.fail(str(exc))  # this message needs a person; the others still come in
                    continue
                intake.take(msg.name, msg.remote_id, data, lambda msg=msg: client.acknowledge(msg))

    def check(self) -> list[Check]:
        """Sign in and list each mailbox (``gateway check``): nothing is fetched or acknowledged."""
        host = urlsplit(self.settings.base_url).netloc
        checks = []
        with SterlingClient(self.settings) as client:
            for path in self.settings.mailboxes:
                try:
                    waiting = client.waiting(path)
                except SterlingAuthError as exc:
                    return [Check(f"sign-in at {host}", False, str(exc))]
                except SterlingError as exc:
                    checks.append(Check(f"mailbox {path}", False, str(exc)))
                else:
                    checks.append(Check(f"mailbox {path}", True, f"listed: {waiting} message(s) waiting"))
        return [Check(f"sign-in at {host}", True, f"as {self.settings.username}")] + checks
