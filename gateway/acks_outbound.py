"""Acknowledgments out: the 997/999/TA1/CONTRL stored with an interchange, written to the partner's folder.

Only for partners whose mapping file says ``acknowledgments: {send: true}``, and never into
Sterling: the file goes to an SFTP outbound folder (the mapping file's ``outbound_folder``, else
the drop folder's ``outbound_path``) or, for a local source, its ``outbound_path`` (``{partner}``
is replaced by the partner id). Where it goes:

1. the SFTP server or local folder the interchange came from;
2. else (e.g. it came through Sterling) an SFTP server with a drop folder tied to the partner;
3. else the only SFTP server configured, when the mapping file names an outbound folder.

Writing is idempotent (an SFTP or local file that already holds the same bytes counts as written),
so a crash between writing and recording ``ack_sent_at`` re-sends nothing different. Only
interchanges received in the last :data:`ACK_MAX_AGE` are sent, so switching acknowledgments on for
a partner does not flood it with acknowledgments of old files.
"""

from __future__ import annotations

import json
import os
import posixpath
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from sqlmodel import select

from gateway.intake import record_source_status
from gateway.integrations.local.settings import LocalSettings
from gateway.integrations.sftp import client as sftp_client
from gateway.integrations.sftp.settings import SftpSettings
from gateway.leases import acquire, release
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.db import reading, transaction
from gateway.store.models import Event, Interchange, SourceStatus, utcnow
from translators.mapping import AckSettings

__all__ = ["ACK_MAX_AGE", "ACK_STATUSES", "AckTarget", "ack_file_name", "ack_target", "send_acknowledgments",
           "worst_ack_status"]

log = structlog.get_logger("gateway.acks")

ACK_MAX_AGE = timedelta(days=7)
BATCH = 500
LEASE = "acks:send"


# What an acknowledgment says of the interchange it answers, best to worst.
ACK_STATUSES = ("accepted", "accepted_with_errors", "partially_accepted", "rejected")


def worst_ack_status(acks) -> str | None:
    """One verdict for the acknowledgments built for an interchange (a TA1 and a 997 may ride together)."""
    statuses = [str(a.status) for a in acks]
    return max(statuses, key=ACK_STATUSES.index) if statuses else None


@dataclass(frozen=True)
class AckTarget:
    source: str  # "sftp:<name>" or "local:<name>"
    config: SftpSettings | LocalSettings
    folder: str


def ack_file_name(ich_id: int, ack_kind: str | None, control: str | None) -> str:
    """E.g. ``997_000000123_42.x12``: kind, the partner's interchange control number, our interchange id."""
    kind = ack_kind or "ACK"
    ext = "edi" if kind == "CONTRL" else "x12"
    safe = "".join(c for c in (control or "none") if c.isalnum() or c in "-_") or "none"
    return f"{kind}_{safe}_{ich_id}.{ext}"


def _drop_folder(remote_id: str | None) -> str | None:
    # Intake ids SFTP files as '<path>@<mtime>'.
    if not remote_id or "@" not in remote_id:
        return None
    return posixpath.dirname(remote_id.rpartition("@")[0])


def ack_target(settings: Settings, source: str, remote_id: str | None, partner: str,
               ack: AckSettings) -> AckTarget | None:
    """Where ``partner``'s acknowledgment of an interchange from ``source`` goes (see the module text)."""
    explicit = ack.outbound_folder.replace("{partner}", partner) if ack.outbound_folder else None
    kind, _, name = source.partition(":")
    if kind == "sftp":
        for cfg in settings.sftp:
            if cfg.name != name:
                continue
            came_from = _drop_folder(remote_id)
            drop = next((f for f in cfg.folders if f.path == came_from), None)
            folder = explicit or (drop.outbound_path.replace("{partner}", partner)
                                  if drop and drop.outbound_path else None)
            if folder:
                return AckTarget(source, cfg, posixpath.normpath(folder))
    if kind == "local":
        for local in settings.local:
            if local.name == name and local.outbound_path is not None:
                return AckTarget(source, local, str(local.outbound_path).replace("{partner}", partner))
    for cfg in settings.sftp:
        for f in cfg.folders:
            if partner in f.partners and (explicit or f.outbound_path):
                folder = explicit or str(f.outbound_path).replace("{partner}", partner)
                return AckTarget(f"sftp:{cfg.name}", cfg, posixpath.normpath(folder))
    if explicit and len(settings.sftp) == 1:
        cfg = settings.sftp[0]
        return AckTarget(f"sftp:{cfg.name}", cfg, posixpath.normpath(explicit))
    for local in settings.local:
        if partner in local.partners and local.outbound_path is not None:
            return AckTarget(f"local:{local.name}", local, str(local.outbound_path).replace("{partner}", partner))
    return None


def _write_local(folder: str, name: str, data: bytes) -> str:
    """Write atomically (temporary name, then rename); an existing file with the same bytes is done."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    final = target / name
    if final.exists():
        if final.read_bytes() == data:
            return str(final)
        raise FileExistsError(f"outbound file {final} already exists with other content; not replacing it")
    temp = target / f".{name}.{uuid.uuid4().hex[:12]}.part"
    try:
        temp.write_bytes(data)
        os.link(temp, final)  # fails rather than replace a file that appeared meanwhile
    finally:
        temp.unlink(missing_ok=True)
    return str(final)


class _Writers:
    """One SFTP connection per server for the whole run; a server that failed is not tried again this run."""

    def __init__(self) -> None:
        self.clients: dict[str, sftp_client.SftpClient] = {}
        self.broken: dict[str, str] = {}

    def write(self, target: AckTarget, name: str, data: bytes) -> str:
        if target.source in self.broken:
            raise sftp_client.SftpError(self.broken[target.source])
        if isinstance(target.config, LocalSettings):
            return _write_local(target.folder, name, data)
        client = self.clients.get(target.source)
        if client is None:
            client = self.clients[target.source] = sftp_client.SftpClient(target.config)
        try:
            return client.write_outbound(target.folder, name, data)
        except (sftp_client.HostKeyError, sftp_client.SftpAuthError, sftp_client.SftpConnectionError) as exc:
            self.broken[target.source] = str(exc)
            raise

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def send_acknowledgments(runtime: Runtime, *, now: datetime | None = None) -> int:
    """Write every due acknowledgment; return how many were written. Failures are logged and recorded on the
    target source's status, and retried next time."""
    now = now or utcnow()
    wanted = {p.id: p.acknowledgments for p in runtime.partners() if p.acknowledgments.send}
    if not wanted:
        return 0
    owner = f"{runtime.instance}#{threading.get_ident()}"  # per thread: the pollers' threads share a runtime
    if not acquire(runtime.engine, LEASE, owner, 300):
        return 0  # another process is sending them
    writers = _Writers()
    sent = 0
    try:
        with reading(runtime.engine) as s:
            due = s.exec(
                select(Interchange.id, Interchange.source, Interchange.remote_id, Interchange.partner,
                       Interchange.ack_kind, Interchange.control_number)
                .where(Interchange.ack.is_not(None), Interchange.ack_sent_at.is_(None),
                       Interchange.partner.in_(sorted(wanted)), Interchange.received_at >= now - ACK_MAX_AGE)
                .order_by(Interchange.id)
                .limit(BATCH)
            ).all()
        for row in due:
            target = ack_target(runtime.settings, row.source, row.remote_id, row.partner, wanted[row.partner])
            if target is None:
                # A standing condition of the partner's configuration: said once, not once per look.
                runtime.conditions.holds(f"ack.no_outbound_folder:{row.partner}", "ack.no_outbound_folder",
                                         partner=row.partner, first_interchange=row.id,
                                         hint="set acknowledgments.outbound_folder in the mapping file or "
                                              "outbound_path on the partner's SFTP drop folder or local source")
                continue
            runtime.conditions.ended(f"ack.no_outbound_folder:{row.partner}")
            with reading(runtime.engine) as s:
                text = s.get(Interchange, row.id).ack
            name = ack_file_name(row.id, row.ack_kind, row.control_number)
            try:
                path = writers.write(target, name, text.encode("utf-8"))
            except Exception as exc:  # noqa: BLE001 - recorded; retried next time
                error = f"acknowledgment {name} for interchange {row.id} to {target.folder}: {exc}"
                log.error("ack.write_failed", interchange=row.id, target=target.source, error=error)

                def failed(st: SourceStatus, error: str = error) -> None:
                    st.last_error, st.last_error_at = error[:4000], utcnow()

                record_source_status(runtime.engine, target.source, failed)
                continue
            with transaction(runtime.engine) as s:
                ich = s.get(Interchange, row.id)
                ich.ack_sent_to = f"{target.source}:{path}"
                ich.ack_sent_at = utcnow()
                s.add(Event(interchange_id=row.id, stage="ack", outcome="ok", actor=runtime.instance,
                            at=ich.ack_sent_at,
                            detail=json.dumps({"to": ich.ack_sent_to, "kind": row.ack_kind, "partner": row.partner,
                                               "size": len(text.encode("utf-8"))}, sort_keys=True)))
            sent += 1
            log.info("ack.sent", interchange=row.id, partner=row.partner, to=f"{target.source}:{path}")
    finally:
        writers.close()
        release(runtime.engine, LEASE, owner)
    return sent
