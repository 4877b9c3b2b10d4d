"""SFTP drop-folder source.

Partners (or their VANs) upload interchanges into drop folders on an SFTP server; this module
lists the files that are ready, fetches their bytes, and — only after the pipeline has stored
them — archives or deletes them. Guarantees an operator can rely on:

* the server's host key must match a pinned key; unknown or changed keys are refused, never
  learned;
* a file is offered only once it looked the same (size and mtime) on two consecutive polls and
  does not carry a temporary upload suffix, so half-written uploads are not taken;
* a file is offered again on every poll until it is acknowledged (at-least-once delivery: the
  pipeline deduplicates by content hash);
* acknowledging a file that is already gone is a success (crash between archive and record);
* outbound files (acknowledgments) appear under their final name only when complete.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import posixpath
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import paramiko
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

__all__ = [
    "HostKeyError",
    "HostKeyMismatch",
    "RemoteFile",
    "RemoteFileChanged",
    "RemoteFileGone",
    "SftpAuthError",
    "SftpConfigError",
    "SftpConnectionError",
    "SftpError",
    "SftpClient",
    "UnknownHostKey",
    "fingerprint",
]

from gateway.integrations.base import SourceError
from gateway.integrations.files import StabilityTracker, unique_names
from gateway.integrations.sftp.settings import SftpConfig


log = structlog.get_logger(__name__)

T = TypeVar("T")

# --------------------------------------------------------------------------- errors


class SftpError(SourceError):
    """Base class for every error raised by the SFTP source."""

    #: Permanent errors need a person (configuration, credentials, host key); retrying is futile.
    permanent: bool = True


class SftpConfigError(SftpError):
    """The configuration cannot be used (e.g. the private key cannot be loaded)."""


class SftpAuthError(SftpError):
    """The server refused our credentials."""


class HostKeyError(SftpError):
    """The server's host key is not one we pinned. Nothing was sent to or read from it."""

    def __init__(self, message: str, *, host: str, port: int, fingerprint: str) -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.fingerprint = fingerprint


class UnknownHostKey(HostKeyError):
    """No key is pinned for this host at all."""


class HostKeyMismatch(HostKeyError):
    """Keys are pinned for this host, but the server presented a different one."""


class SftpConnectionError(SftpError):
    """The server could not be reached or the connection kept breaking (after retries)."""

    permanent = False


class RemoteFileGone(SftpError):
    """The file disappeared between listing and fetching."""

    permanent = False


class RemoteFileChanged(SftpError):
    """The file changed between listing and fetching; it will be offered again once stable."""

    permanent = False


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint, e.g. 'ssh-ed25519 SHA256:abc...'."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


# --------------------------------------------------------------------------- source


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file in a drop folder that is ready to be taken."""

    folder: str
    remote_id: str
    name: str
    size: int
    mtime: int
    partners: tuple[str, ...]
    source: Literal["sftp"] = "sftp"


class _PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept only pinned keys.

    No keys are loaded into the SSHClient, so paramiko consults this policy for every
    connection and the decision is made here (supporting several keys of one type, for
    rotation) instead of paramiko's one-key-per-type table.
    """

    def __init__(self, config: SftpConfig, pinned: list[paramiko.PKey]) -> None:
        self._config = config
        self._pinned = pinned

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        blob = key.asbytes()
        if any(p.asbytes() == blob for p in self._pinned):
            return
        cfg, got = self._config, fingerprint(key)
        if not self._pinned:
            raise UnknownHostKey(
                f"host key of {cfg.hostkey_name} is unknown: the server presented {got}, and no key "
                f"is pinned for this host; verify it out of band and add it to the configuration",
                host=cfg.host, port=cfg.port, fingerprint=got,
            )
        expected = ", ".join(fingerprint(p) for p in self._pinned)
        raise HostKeyMismatch(
            f"host key mismatch for {cfg.hostkey_name}: the server presented {got}, pinned is "
            f"{expected}; the server may have been replaced or the connection intercepted",
            host=cfg.host, port=cfg.port, fingerprint=got,
        )


_NET_ERRNOS = {
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
}


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying right away, on a fresh connection."""
    if isinstance(exc, SftpError):
        return isinstance(exc, SftpConnectionError)
    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    if isinstance(exc, (paramiko.SSHException, EOFError, socket.timeout, socket.gaierror, ConnectionError)):
        return True
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return True
    # Plain OSErrors are mostly SFTP status codes (ENOENT, EACCES, failure): not transient.
    return isinstance(exc, OSError) and exc.errno in _NET_ERRNOS


class SftpClient:
    """Lists, fetches and acknowledges files in the configured drop folders.

    Use as a context manager; the connection is (re)opened lazily when needed, and a broken
    connection is reopened on the next attempt. Transient faults are retried a bounded number
    of times; permanent ones (host key, credentials, permissions) are raised at once.
    One instance serves one thread (the poller holding the source's lease).
    """

    def __init__(
        self,
        config: SftpConfig,
        tracker: StabilityTracker | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.tracker = tracker if tracker is not None else StabilityTracker(quiet_seconds=config.quiet_seconds)
        #: Errors per drop folder from the last `list_pending` (cleared per folder on success).
        self.folder_errors: dict[str, str] = {}
        self._clock = clock
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._folders = {f.path: f for f in config.folders}
        self._log = log.bind(sftp_host=config.host, sftp_port=config.port, sftp_user=config.username)

    # -- connection ---------------------------------------------------------------------

    def __enter__(self) -> SftpClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection (with retries) unless it is already open."""
        self._retrying(self._ensure_connected)

    def close(self) -> None:
        sftp, client = self._sftp, self._client
        self._sftp = self._client = None
        for closeable in (sftp, client):
            if closeable is not None:
                try:
                    closeable.close()
                except Exception:  # closing a broken connection must not mask the real error
                    pass

    @property
    def connected(self) -> bool:
        if self._client is None or self._sftp is None:
            return False
        transport = self._client.get_transport()
        channel = self._sftp.get_channel()
        return transport is not None and transport.is_active() and not channel.closed

    def _load_key(self) -> paramiko.PKey | None:
        cfg = self.config
        passphrase = cfg.passphrase.get_secret_value() if cfg.passphrase else None
        if cfg.private_key_path is not None:
            try:
                return paramiko.PKey.from_path(cfg.private_key_path, passphrase)
            except FileNotFoundError:
                raise SftpConfigError(f"private key file {cfg.private_key_path} not found") from None
            except Exception as exc:
                raise SftpConfigError(
                    f"cannot load private key {cfg.private_key_path}: {type(exc).__name__} "
                    "(wrong or missing passphrase, or unsupported key type)"
                ) from None
        if cfg.private_key is not None:
            text = cfg.private_key.get_secret_value()
            for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
                try:
                    return cls.from_private_key(io.StringIO(text), password=passphrase)
                except paramiko.PasswordRequiredException:
                    raise SftpConfigError("private key is encrypted; set passphrase") from None
                except (paramiko.SSHException, ValueError, TypeError):
                    continue
            raise SftpConfigError(
                "cannot load private_key (wrong passphrase, or unsupported key type)"
            )
        return None

    def _ensure_connected(self) -> paramiko.SFTPClient:
        if self.connected:
            assert self._sftp is not None
            return self._sftp
        self.close()
        cfg = self.config
        pkey = self._load_key()
        pinned = cfg.pinned_keys()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_PinnedHostKeyPolicy(cfg, pinned))
        try:
            client.connect(
                cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=cfg.password.get_secret_value() if cfg.password else None,
                pkey=pkey,
                timeout=cfg.connect_timeout,
                banner_timeout=cfg.connect_timeout,
                auth_timeout=cfg.connect_timeout,
                channel_timeout=cfg.connect_timeout,
                # Only the configured credentials: never the agent or ~/.ssh of whoever runs us.
                allow_agent=False,
                look_for_keys=False,
                transport_factory=_prefer_key_types(pinned),
            )
            sftp = client.open_sftp()
        except HostKeyError as exc:
            client.close()
            self._log.error("sftp.host_key_rejected", error=str(exc), fingerprint=exc.fingerprint)
            raise
        except paramiko.BadAuthenticationType as exc:
            client.close()
            methods = ", ".join(exc.allowed_types) or "none"
            raise SftpAuthError(
                f"SFTP login to {cfg.hostkey_name} as {cfg.username!r} refused: the server does not "
                f"accept the configured method (it allows: {methods})"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            methods = " and ".join(
                m for m, on in (("key", pkey is not None), ("password", cfg.password is not None)) if on
            )
            # paramiko's message carries no secret, but chaining is dropped to keep it that way.
            raise SftpAuthError(
                f"SFTP login to {cfg.hostkey_name} as {cfg.username!r} failed: {methods} "
                "authentication was refused; check the credentials"
            ) from None
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None and cfg.keepalive_seconds:
            transport.set_keepalive(cfg.keepalive_seconds)
        # Without a timeout a silently dead peer would block a poll forever.
        sftp.get_channel().settimeout(cfg.operation_timeout)
        self._client, self._sftp = client, sftp
        self._log.info("sftp.connected")
        return sftp

    def _retrying(self, op: Callable[[], T]) -> T:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._log.warning(
                "sftp.retry", attempt=state.attempt_number, error=f"{type(exc).__name__}: {exc}"
            )
            self.close()  # the next attempt reconnects

        retrying = Retrying(
            stop=stop_after_attempt(self.config.retry_attempts),
            wait=wait_exponential(multiplier=0.5, max=self.config.retry_max_wait),
            retry=retry_if_exception(_is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(op)
        except SftpError:
            raise
        except Exception as exc:
            if _is_transient(exc):
                self.close()
                raise SftpConnectionError(
                    f"SFTP {self.config.hostkey_name}: {type(exc).__name__}: {exc} "
                    f"(gave up after {self.config.retry_attempts} attempts)"
                ) from exc
            raise

    def _call(self, op: Callable[[paramiko.SFTPClient], T]) -> T:
        return self._retrying(lambda: op(self._ensure_connected()))

    # -- intake -------------------------------------------------------------------------

    def unreadable_folders(self) -> dict[str, str]:
        """Each drop folder that cannot be listed now, with the reason (a check, not a poll)."""
        problems: dict[str, str] = {}
        for folder in self.config.folders:
            try:
                self._call(lambda sftp, p=folder.path: sftp.listdir(p))
            except OSError as exc:
                problems[folder.path] = _describe_oserror(exc)
        return problems

    def list_pending(self) -> Iterator[RemoteFile]:
        """Yield the files that are ready to be taken, folder by folder.

        Every call is one poll for the stability check. A folder that cannot be listed (missing,
        no permission) is logged and recorded in `folder_errors`; the other folders still run.
        Connection failures that outlast the retries are raised.
        """
        for folder in self.config.folders:
            try:
                entries = self._call(lambda sftp, p=folder.path: sftp.listdir_attr(p))
            except OSError as exc:
                reason = _describe_oserror(exc)
                self.folder_errors[folder.path] = reason
                self._log.error("sftp.folder_unreadable", folder=folder.path, error=reason)
                continue
            self.folder_errors.pop(folder.path, None)
            present: set[str] = set()
            ready: list[RemoteFile] = []
            for attr in entries:
                name = attr.filename
                # Directories (e.g. an archive folder inside the drop folder) and links are skipped.
                if attr.st_mode is None or not stat.S_ISREG(attr.st_mode):
                    continue
                if not folder.accepts_name(name):
                    continue
                remote_id = posixpath.join(folder.path, name)
                present.add(remote_id)
                size, mtime = int(attr.st_size or 0), int(attr.st_mtime or 0)
                if self.tracker.observe(remote_id, size, mtime, age=time.time() - mtime):
                    ready.append(
                        RemoteFile(folder.path, remote_id, name, size, mtime, folder.partners)
                    )
                else:
                    self._log.debug("sftp.file_settling", file=remote_id, size=size, mtime=mtime)
            self.tracker.prune(folder.path, present)
            for f in sorted(ready, key=lambda r: (r.mtime, r.name)):
                self._log.debug("sftp.file_pending", file=f.remote_id, size=f.size)
                yield f

    def fetch(self, f: RemoteFile) -> bytes:
        """Return the file's exact bytes.

        Raises RemoteFileGone if it vanished and RemoteFileChanged if it is no longer the
        file that was listed (re-uploaded or still growing): it will be offered again once stable.
        """

        def op(sftp: paramiko.SFTPClient) -> bytes:
            try:
                with sftp.open(f.remote_id, "rb") as fh:
                    before = fh.stat()
                    fh.prefetch(before.st_size)
                    data = fh.read()
                    after = fh.stat()
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise RemoteFileGone(f"{f.remote_id} disappeared before it was fetched") from None
                raise
            observed = {(before.st_size, before.st_mtime), (after.st_size, after.st_mtime)}
            if observed != {(f.size, f.mtime)} or len(data) != f.size:
                self.tracker.forget(f.remote_id)
                raise RemoteFileChanged(
                    f"{f.remote_id} changed since it was listed (listed {f.size} bytes, read "
                    f"{len(data)}); it will be taken once stable"
                )
            return data

        return self._call(op)

    def acknowledge(self, f: RemoteFile) -> None:
        """Archive or delete a file the pipeline has stored. A file already gone counts as done."""
        folder = self._folders.get(f.folder)
        if folder is None:
            raise SftpConfigError(f"{f.remote_id}: folder {f.folder} is not a configured drop folder")
        self.tracker.forget(f.remote_id)
        if self._call(lambda sftp: self._changed_since_taken(sftp, f)):
            return  # written to after it was read: left in place, taken again as a new version once quiet
        if folder.after_intake == "delete":
            self._call(lambda sftp: self._delete(sftp, f))
        else:
            assert folder.archive_path is not None
            self._call(lambda sftp: self._archive(sftp, f, folder.archive_path))

    def _changed_since_taken(self, sftp: paramiko.SFTPClient, f: RemoteFile) -> bool:
        try:
            st = sftp.stat(f.remote_id)
        except OSError:
            return False  # gone: the archive or delete finds it so
        if (int(st.st_size or 0), int(st.st_mtime or 0)) == (f.size, f.mtime):
            return False
        self._log.warning("sftp.changed_after_intake", file=f.remote_id, size=st.st_size, taken_size=f.size)
        return True

    def _delete(self, sftp: paramiko.SFTPClient, f: RemoteFile) -> None:
        try:
            sftp.remove(f.remote_id)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            self._log.info("sftp.ack_already_gone", file=f.remote_id)
            return
        self._log.info("sftp.deleted", file=f.remote_id)

    def _archive(self, sftp: paramiko.SFTPClient, f: RemoteFile, archive: str) -> None:
        _makedirs(sftp, archive)
        for candidate in unique_names(f.name, self._clock()):
            target = posixpath.join(archive, candidate)
            if _exists(sftp, target):
                continue
            try:
                # Plain SFTP rename refuses to replace an existing file (OpenSSH: link+unlink),
                # so a name taken concurrently is never overwritten.
                sftp.rename(f.remote_id, target)
            except OSError:
                if not _exists(sftp, f.remote_id):
                    self._log.info("sftp.ack_already_gone", file=f.remote_id)
                    return
                if _exists(sftp, target):
                    continue
                raise
            self._log.info("sftp.archived", file=f.remote_id, archived_as=target)
            return
        raise SftpError(f"no free archive name for {f.name} in {archive}")

    # -- outbound -----------------------------------------------------------------------

    def outbound_folder(self, folder: str, partner: str) -> str | None:
        """The outbound folder for `partner`'s files received in drop folder `folder`, if any."""
        drop = self._folders.get(posixpath.normpath(folder))
        if drop is None or drop.outbound_path is None:
            return None
        path = posixpath.normpath(drop.outbound_path.replace("{partner}", partner))
        if "/" in partner or partner in ("", ".", "..") or path in self._folders:
            raise SftpConfigError(f"partner id {partner!r} gives an unusable outbound folder {path}")
        return path

    def write_outbound(self, folder: str, name: str, data: bytes) -> str:
        """Write `data` to `folder/name` atomically and return the final path.

        The bytes go to a hidden temporary name first and are renamed only when complete, so a
        partner polling `folder` never sees a partial file. An existing file is never replaced;
        if it already holds exactly `data` (a retry after a lost reply) the write is done.
        """
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid outbound file name {name!r}")
        folder = posixpath.normpath(folder)
        final = posixpath.join(folder, name)

        def op(sftp: paramiko.SFTPClient) -> str:
            _makedirs(sftp, folder)
            if _same_content(sftp, final, data):
                self._log.info("sftp.outbound_already_written", file=final)
                return final
            temp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.part")
            try:
                with sftp.open(temp, "wb") as fh:
                    fh.set_pipelined(True)
                    fh.write(data)
                if sftp.stat(temp).st_size != len(data):
                    raise SftpConnectionError(f"short write of {temp}")
                if _exists(sftp, final):
                    raise SftpError(f"outbound file {final} already exists; not replacing it")
                sftp.rename(temp, final)
            except BaseException:
                _remove_quietly(sftp, temp)
                raise
            return final

        path = self._call(op)
        self._log.info("sftp.outbound_written", file=path, size=len(data))
        return path


# --------------------------------------------------------------------------- helpers


def _prefer_key_types(pinned: list[paramiko.PKey]) -> Callable[..., paramiko.Transport]:
    """Make the server present a key of a pinned type if it has one (like OpenSSH does)."""
    wanted: list[str] = []
    for key in pinned:
        name = key.get_name()
        wanted += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if name == "ssh-rsa" else [name]

    def factory(sock: Any, **kwargs: Any) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)
        opts = transport.get_security_options()
        types = list(opts.key_types)
        opts.key_types = [t for t in types if t in wanted] + [t for t in types if t not in wanted]
        return transport

    return factory


def _describe_oserror(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "folder does not exist"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return f"{type(exc).__name__}: {exc}"


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    if _exists(sftp, path):
        return
    parent = posixpath.dirname(path)
    if parent and parent != path:
        _makedirs(sftp, parent)
    try:
        sftp.mkdir(path)
    except OSError:
        if not _exists(sftp, path):  # created concurrently is fine
            raise


def _same_content(sftp: paramiko.SFTPClient, path: str, data: bytes) -> bool:
    try:
        if sftp.stat(path).st_size != len(data):
            return False
        with sftp.open(path, "rb") as fh:
            fh.prefetch(len(data))
            return fh.read() == data
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.remove(path)
    except Exception:
        pass
