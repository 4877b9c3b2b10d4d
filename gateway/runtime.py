"""What every long-running part of the gateway shares: settings, the store, the partner files.

One :class:`Runtime` per process, passed explicitly to pollers, workers and the web app: no
process-wide globals.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from gateway.logging import StandingConditions
from gateway.settings import Settings
from gateway.store.db import make_engine, reading, upgrade
from gateway.store.models import PartnerFile
from translators.mapping import PartnerDirectory

log = structlog.get_logger("gateway")

PARTNERS_CHECK_SECONDS = 1.0  # how stale the partner directory may be in other processes


def instance_id(role: str = "gateway") -> str:
    """A name for this process in leases and audit events: host, pid and a short random tag."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    instance: str = field(default_factory=instance_id)
    _partners: PartnerDirectory | None = field(default=None, repr=False)
    _partners_version: tuple | None = field(default=None, repr=False)
    _partners_checked: float = field(default=float("-inf"), repr=False)
    _partner_problems: list = field(default_factory=list, repr=False)
    conditions: StandingConditions = field(default_factory=lambda: StandingConditions(log), repr=False)
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Clients an integration's parts share in this process (e.g. one Plex client for matching and
    # delivery), by integration name; see gateway.pipeline.wiring.
    resources: dict[str, Any] = field(default_factory=dict, repr=False)

    def partners(self) -> PartnerDirectory:
        """The partner files in force: the folder's, overridden by those activated in the panel.

        Reloaded when a file in the folder or an activated upload changes, so onboarding needs no
        restart: looked for at most once a second (every split and stage batch asks), at once after
        :meth:`partners_changed`.
        """
        now = self.monotonic()
        with self._lock:
            if self._partners is not None and now - self._partners_checked < PARTNERS_CHECK_SECONDS:
                return self._partners
        version = self._partner_version()
        with self._lock:
            if self._partners is None or version != self._partners_version:
                self._partners, problems = load_partners(self.settings.partners_dir, self.engine)
                if problems:
                    self.conditions.holds("partner_files_broken", "partner_files_broken",
                                          files=sorted({p.source for p in problems}),
                                          problems=[p.message for p in problems][:10])
                else:
                    self.conditions.ended("partner_files_broken")
                self._partner_problems = problems
                self._partners_version = version
            self._partners_checked = now
            return self._partners

    def partner_problems(self) -> list:
        """The problems of the mapping files that are not in force (a broken file holds only its partner):
        interchanges no good file claims wait while there are any (see the worker's split)."""
        self.partners()
        with self._lock:
            return list(self._partner_problems)

    def partners_changed(self) -> None:
        """A partner file was activated here: the next :meth:`partners` looks again at once."""
        with self._lock:
            self._partners_checked = float("-inf")

    def _partner_version(self) -> tuple:
        folder = Path(self.settings.partners_dir)
        stamps = tuple(
            sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.y*ml"))
        ) if folder.is_dir() else ()
        with reading(self.engine) as s:
            latest = s.exec(select(func.max(PartnerFile.activated_at), func.count()).where(PartnerFile.active)).one()
        return stamps, tuple(latest)


def load_partners(folder: Path, engine: Engine) -> tuple[PartnerDirectory, list]:
    """The folder's good mapping files, then every panel-activated one (which wins for its partner id);
    and the problems of the folder's files that are not in force."""
    from gateway.partners import load_usable_partners
    from translators.partners import parse_partner_text

    directory, problems = load_usable_partners(folder) if Path(folder).is_dir() else (PartnerDirectory(), [])
    with reading(engine) as s:
        rows = s.exec(select(PartnerFile).where(PartnerFile.active)).all()
    if not rows:
        return directory, problems
    merged = {p.id: p for p in directory}
    for row in rows:
        try:
            merged[row.partner_id] = parse_partner_text(row.text, f"panel:{row.filename}")
        except Exception as exc:  # noqa: BLE001 - a bad stored file must not stop the others
            log.error("partner_file_invalid", partner=row.partner_id, error=str(exc))
    return PartnerDirectory(list(merged.values())), problems


def open_runtime(settings: Settings, *, migrate: bool = True, resolve_secrets: bool = True) -> Runtime:
    """Connect to the store (migrating it to the latest schema) and resolve ``secret:`` references."""
    url = settings.store_url
    from gateway.store.db import private_folder

    private_folder(settings.data_dir)  # the store, the key files and the session key live here
    if migrate:
        upgrade(url)
    engine = make_engine(url)
    if resolve_secrets and settings.secret_references():
        from gateway.secrets import Vault, load_key

        vault = Vault(engine, load_key(settings.key_file))
        settings = settings.resolve_secrets(vault.get)
    return Runtime(settings=settings, engine=engine)
