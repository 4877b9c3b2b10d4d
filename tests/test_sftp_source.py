"""SFTP drop-folder source against a real OpenSSH sshd (fixture `sshd_server` in tests/sshd.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import paramiko
import pytest
import structlog
from pydantic import ValidationError

from gateway.integrations.files import StabilityTracker
from gateway.integrations.sftp.client import (
    HostKeyMismatch,
    RemoteFile,
    RemoteFileChanged,
    RemoteFileGone,
    SftpAuthError,
    SftpConfigError,
    SftpConnectionError,
    SftpClient,
    SftpError,
    UnknownHostKey,
)
from gateway.integrations.sftp.settings import DropFolder, SftpConfig

pytestmark = pytest.mark.sshd

EDI = b"\xef\xbb\xbfISA*00*          *00*          *ZZ*ACME*ZZ*US*240101*1200*U*00401*000000001*0*P*>~\r\nGS*PO~\r\n"


@pytest.fixture
def base(sshd_server) -> Path:
    """A fresh directory per test inside the server's drop root."""
    path = sshd_server.root / uuid.uuid4().hex[:8]
    path.mkdir()
    return path


def make_config(server, folders=(), **overrides) -> SftpConfig:
    values = dict(
        host=server.host,
        port=server.port,
        username=server.username,
        private_key_path=server.client_key_path,
        host_keys=[server.host_key],
        folders=folders,
        connect_timeout=5,
        retry_attempts=2,
        retry_max_wait=0.2,
        quiet_seconds=0,  # two looks in a row suffice here; the quiet period has a test of its own
    )
    values.update(overrides)
    return SftpConfig(**values)


def folder(path: Path, **kw) -> DropFolder:
    kw.setdefault("archive_path", str(path.parent / (path.name + "-archive")))
    return DropFolder(path=str(path), **kw)


def write(path: Path, data: bytes, mtime: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def names(files) -> list[str]:
    return sorted(f.name for f in files)


def fingerprint_of(public: str) -> str:
    blob = base64.b64decode(public.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def connections(server) -> int:
    return server.log().count("Connection from 127.0.0.1")


# --------------------------------------------------------------------------- listing & stability


def test_two_folders_listed_with_partner_ties(sshd_server, base):
    acme, shared = base / "acme", base / "shared"
    write(acme / "PO1.edi", EDI)
    write(acme / "notes.txt", b"not edi")  # outside the glob
    (acme / "subdir.edi").mkdir()  # a directory is never a file to take
    write(shared / "INV1.EDI", EDI + b"x")  # glob is case-insensitive
    cfg = make_config(
        sshd_server,
        [folder(acme, partners=["acme"], pattern="*.edi"), folder(shared, pattern="*.edi")],
    )
    with SftpClient(cfg) as src:
        assert list(src.list_pending()) == []
        files = list(src.list_pending())

    by_name = {f.name: f for f in files}
    assert set(by_name) == {"PO1.edi", "INV1.EDI"}
    po, inv = by_name["PO1.edi"], by_name["INV1.EDI"]
    assert po == RemoteFile(
        folder=str(acme), remote_id=str(acme / "PO1.edi"), name="PO1.edi", size=len(EDI),
        mtime=int((acme / "PO1.edi").stat().st_mtime), partners=("acme",),
    )
    assert po.source == "sftp"
    assert inv.partners == () and inv.folder == str(shared) and inv.size == len(EDI) + 1


def test_file_taken_on_second_poll_and_state_survives_restart(sshd_server, base):
    write(base / "in" / "PO.edi", EDI)
    cfg = make_config(sshd_server, [folder(base / "in")])
    with SftpClient(cfg) as src:
        assert list(src.list_pending()) == []
        state = json.loads(json.dumps(src.tracker.to_dict()))  # what the pipeline stores

    # A new process resumes from the stored observations: the second poll takes the file.
    with SftpClient(cfg, StabilityTracker.from_dict(state)) as src:
        assert names(src.list_pending()) == ["PO.edi"]
        # Not acknowledged yet, so it is offered again (at-least-once).
        assert names(src.list_pending()) == ["PO.edi"]


def test_file_that_changes_between_polls_is_not_taken(sshd_server, base):
    path = write(base / "in" / "PO.edi", EDI[:20], mtime=1_700_000_000)
    with SftpClient(make_config(sshd_server, [folder(base / "in")])) as src:
        assert list(src.list_pending()) == []
        with path.open("ab") as fh:  # still being uploaded
            fh.write(EDI[20:])
        assert list(src.list_pending()) == []
        os.utime(path, (1_700_000_100, 1_700_000_100))  # same size, rewritten
        assert list(src.list_pending()) == []
        (taken,) = src.list_pending()
        assert taken.size == len(EDI) and taken.mtime == 1_700_000_100


def test_temporary_and_hidden_files_are_never_taken_until_renamed(sshd_server, base):
    inbox = base / "in"
    for name in ("PO.edi.part", "PO2.edi.TMP", "PO3.edi.filepart", ".PO4.edi.x1y2"):
        write(inbox / name, EDI)
    with SftpClient(make_config(sshd_server, [folder(inbox, pattern="*")])) as src:
        for _ in range(3):
            assert list(src.list_pending()) == []
        (inbox / "PO.edi.part").rename(inbox / "PO.edi")
        assert list(src.list_pending()) == []  # a new name is a first sighting
        assert names(src.list_pending()) == ["PO.edi"]
        # Observations of files that disappeared are dropped, so state does not grow forever.
        assert str(inbox / "PO.edi.part") not in src.tracker
        assert len(src.tracker) == 1


# --------------------------------------------------------------------------- fetch


def test_fetch_returns_exact_bytes(sshd_server, base):
    big = os.urandom(3 * 1024 * 1024 + 7)  # several SFTP read requests
    write(base / "in" / "bom.edi", EDI)
    write(base / "in" / "big.edi", big)
    write(base / "in" / "empty.edi", b"")
    with SftpClient(make_config(sshd_server, [folder(base / "in")])) as src:
        list(src.list_pending())
        files = {f.name: f for f in src.list_pending()}
        assert src.fetch(files["bom.edi"]) == EDI  # BOM and CR LF untouched: binary mode
        assert src.fetch(files["big.edi"]) == big
        assert src.fetch(files["empty.edi"]) == b""


def test_fetch_refuses_a_file_that_changed_or_vanished(sshd_server, base):
    changed = write(base / "in" / "a.edi", EDI)
    vanished = write(base / "in" / "b.edi", EDI)
    with SftpClient(make_config(sshd_server, [folder(base / "in")])) as src:
        list(src.list_pending())
        files = {f.name: f for f in src.list_pending()}
        changed.write_bytes(EDI + b"more")
        vanished.unlink()
        with pytest.raises(RemoteFileChanged, match="a.edi"):
            src.fetch(files["a.edi"])
        with pytest.raises(RemoteFileGone, match="b.edi"):
            src.fetch(files["b.edi"])
        # The changed file starts its stability check again.
        assert list(src.list_pending()) == []


# --------------------------------------------------------------------------- acknowledge


def test_acknowledge_archives_with_unique_name_on_clash(sshd_server, base):
    inbox, archive = base / "in", base / "archive" / "2024"  # archive path does not exist yet
    stamp = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    cfg = make_config(sshd_server, [folder(inbox, archive_path=str(archive))])
    with SftpClient(cfg, clock=lambda: stamp) as src:
        for content in (b"first", b"second", b"third"):
            write(inbox / "PO.edi", content)
            list(src.list_pending())
            (f,) = src.list_pending()
            src.acknowledge(f)
            assert not (inbox / "PO.edi").exists()
        assert list(src.list_pending()) == [] and len(src.tracker) == 0

    assert {p.name: p.read_bytes() for p in archive.iterdir()} == {
        "PO.edi": b"first",
        "PO.20240506T070809Z.edi": b"second",
        "PO.20240506T070809Z-2.edi": b"third",
    }


def test_acknowledge_deletes_when_configured(sshd_server, base):
    write(base / "in" / "PO.edi", EDI)
    cfg = make_config(sshd_server, [DropFolder(path=str(base / "in"), after_intake="delete")])
    with SftpClient(cfg) as src:
        list(src.list_pending())
        (f,) = src.list_pending()
        src.acknowledge(f)
    assert os.listdir(base / "in") == []
    assert sorted(os.listdir(base)) == ["in"]  # nothing archived anywhere


@pytest.mark.parametrize("after_intake", ["archive", "delete"])
def test_acknowledge_of_vanished_file_is_done(sshd_server, base, after_intake):
    path = write(base / "in" / "PO.edi", EDI)
    cfg = make_config(sshd_server, [folder(base / "in", after_intake=after_intake)])
    with SftpClient(cfg) as src:
        list(src.list_pending())
        (f,) = src.list_pending()
        path.unlink()  # e.g. archived before a crash, then offered again from stale state
        src.acknowledge(f)
        src.acknowledge(f)
    archive = base / "in-archive"
    assert not archive.exists() or list(archive.iterdir()) == []


# --------------------------------------------------------------------------- host keys


def test_mismatched_host_key_is_refused_before_login(sshd_server, base):
    write(base / "in" / "PO.edi", EDI)
    cfg = make_config(sshd_server, [folder(base / "in")], host_keys=[sshd_server.wrong_host_key])
    before_conn, before_auth = connections(sshd_server), sshd_server.log().count("Accepted ")
    with pytest.raises(HostKeyMismatch) as err:
        with SftpClient(cfg) as src:
            list(src.list_pending())
    message = str(err.value)
    assert f"[127.0.0.1]:{sshd_server.port}" in message
    assert fingerprint_of(sshd_server.host_key) in message
    assert fingerprint_of(sshd_server.wrong_host_key) in message
    assert err.value.fingerprint.endswith(fingerprint_of(sshd_server.host_key))
    # Refused once, not retried, and no credentials were offered to the impostor.
    assert connections(sshd_server) == before_conn + 1
    assert sshd_server.log().count("Accepted ") == before_auth
    assert (base / "in" / "PO.edi").exists()


def test_host_without_pinned_key_is_unknown(sshd_server):
    # known_hosts pins this key for another address only; port-specific names as in OpenSSH.
    cfg = make_config(
        sshd_server, host_keys=(), known_hosts=f"127.0.0.1 {sshd_server.host_key}\n"
    )
    with pytest.raises(UnknownHostKey, match=r"unknown.*" + re.escape(fingerprint_of(sshd_server.host_key))):
        SftpClient(cfg).connect()


def test_known_hosts_hashed_entry_and_key_rotation(sshd_server):
    name = f"[{sshd_server.host}]:{sshd_server.port}"
    hashed = paramiko.HostKeys.hash_host(name)
    known_hosts = (
        "# rotation: old key and new key both pinned\n"
        f"{hashed} {sshd_server.wrong_host_key}\n"
        f"otherhost,{hashed} {sshd_server.host_key}\n"
    )
    src = SftpClient(make_config(sshd_server, host_keys=(), known_hosts=known_hosts))
    with src:
        assert src.connected


# --------------------------------------------------------------------------- credentials


def test_wrong_password_gives_auth_error_without_secret(sshd_server):
    secret = "Hunter2-" + uuid.uuid4().hex
    cfg = make_config(sshd_server, private_key_path=None, password=secret)
    before = connections(sshd_server)
    with structlog.testing.capture_logs() as logs, pytest.raises(SftpAuthError) as err:
        SftpClient(cfg).connect()
    message = str(err.value)
    assert sshd_server.username in message and str(sshd_server.port) in message
    assert "password" in message
    assert secret not in message and secret not in repr(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert secret not in repr(logs) and secret not in repr(cfg)
    assert connections(sshd_server) == before + 1  # permanent: not retried


def test_unauthorised_key_gives_auth_error(sshd_server, tmp_path):
    key = tmp_path / "stranger"
    paramiko.ECDSAKey.generate().write_private_key_file(str(key))
    with pytest.raises(SftpAuthError, match="key authentication was refused"):
        SftpClient(make_config(sshd_server, private_key_path=key)).connect()


def test_password_login(sshd_server, base):
    if sshd_server.password is None:
        pytest.skip("password login needs root and unshare/mount in this environment")
    write(base / "in" / "PO.edi", EDI)
    cfg = make_config(
        sshd_server, [folder(base / "in")], private_key_path=None, password=sshd_server.password
    )
    with SftpClient(cfg) as src:
        list(src.list_pending())
        (f,) = src.list_pending()
        assert src.fetch(f) == EDI


def test_encrypted_key_text_needs_its_passphrase(sshd_server):
    text = sshd_server.client_key_text
    cfg = make_config(
        sshd_server, private_key_path=None, private_key=text,
        passphrase=sshd_server.client_key_passphrase,
    )
    with SftpClient(cfg) as src:
        assert src.connected
    with pytest.raises(SftpConfigError, match="passphrase"):
        SftpClient(make_config(sshd_server, private_key_path=None, private_key=text)).connect()


# --------------------------------------------------------------------------- connection faults


def test_reconnects_after_the_connection_breaks(sshd_server, base):
    write(base / "in" / "PO.edi", EDI)
    with SftpClient(make_config(sshd_server, [folder(base / "in")])) as src:
        assert list(src.list_pending()) == []
        old_transport = src._client.get_transport()
        old_transport.sock.close()  # the network drops under us
        with structlog.testing.capture_logs() as logs:
            (f,) = src.list_pending()
            assert src.fetch(f) == EDI
        assert [e["event"] for e in logs].count("sftp.connected") == 1
        assert src.connected and src._client.get_transport() is not old_transport


def test_unreachable_server_is_retried_then_reported(sshd_server):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_config(sshd_server, port=port, retry_attempts=3, retry_max_wait=0.05)
    with structlog.testing.capture_logs() as logs, pytest.raises(SftpConnectionError, match="3 attempts"):
        SftpClient(cfg).connect()
    assert [e["event"] for e in logs].count("sftp.retry") == 2


def test_missing_folder_is_reported_and_others_still_polled(sshd_server, base):
    write(base / "ok" / "PO.edi", EDI)
    cfg = make_config(sshd_server, [folder(base / "missing"), folder(base / "ok")])
    with SftpClient(cfg) as src:
        list(src.list_pending())
        assert names(src.list_pending()) == ["PO.edi"]
        assert src.folder_errors == {str(base / "missing"): "folder does not exist"}
        (base / "missing").mkdir()
        list(src.list_pending())
        assert src.folder_errors == {}


# --------------------------------------------------------------------------- outbound


def test_outbound_write_is_atomic(sshd_server, base, monkeypatch):
    out = base / "out" / "acme"  # created on demand
    data = os.urandom(2 * 1024 * 1024)
    seen_partial: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # a partner polling the outbound folder while we upload
        while not stop.is_set():
            try:
                size = (out / "997_0001.x12").stat().st_size
            except FileNotFoundError:
                continue
            if size != len(data):
                seen_partial.append(size)

    real_rename = paramiko.SFTPClient.rename
    renames: list[tuple[str, str]] = []

    def spy_rename(self, old, new):
        # At the moment of publishing, the complete bytes exist under a name pollers ignore.
        assert not (out / "997_0001.x12").exists()
        assert Path(old).read_bytes() == data
        assert DropFolder(path="/x", after_intake="delete").accepts_name(Path(old).name) is False
        renames.append((old, new))
        return real_rename(self, old, new)

    monkeypatch.setattr(paramiko.SFTPClient, "rename", spy_rename)
    cfg = make_config(
        sshd_server, [folder(base / "in", partners=["acme"], outbound_path=str(base / "out" / "{partner}"))]
    )
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with SftpClient(cfg) as src:
            target = src.outbound_folder(str(base / "in"), "acme")
            assert target == str(out)
            final = src.write_outbound(target, "997_0001.x12", data)
            with pytest.raises(SftpError, match="already exists"):
                src.write_outbound(target, "997_0001.x12", b"other")
            # Re-sending the same bytes (retry after a lost reply) is a no-op, not an error.
            assert src.write_outbound(target, "997_0001.x12", data) == final
    finally:
        stop.set()
        watcher.join()

    assert final == str(out / "997_0001.x12")
    assert (out / "997_0001.x12").read_bytes() == data  # not replaced by the second write
    assert seen_partial == []
    assert len(renames) == 1 and Path(renames[0][0]).parent == out
    assert os.listdir(out) == ["997_0001.x12"]  # no temporary files left behind


# --------------------------------------------------------------------------- configuration


def test_configuration_is_validated():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    base = dict(host="h", username="u", password="p", host_keys=[key])
    SftpConfig(**base)
    with pytest.raises(ValidationError, match="pin the server's host key"):
        SftpConfig(**{**base, "host_keys": ()})
    with pytest.raises(ValidationError, match="not a valid"):
        SftpConfig(**{**base, "host_keys": ["ssh-ed25519 bm90IGEga2V5"]})
    with pytest.raises(ValidationError, match="needs archive_path"):
        DropFolder(path="/in")
    with pytest.raises(ValidationError, match="must differ"):
        DropFolder(path="/in", archive_path="/in/")
    with pytest.raises(ValidationError, match="itself a drop folder"):
        SftpConfig(**base, folders=[
            DropFolder(path="/a", archive_path="/b"), DropFolder(path="/b", after_intake="delete"),
        ])
    cfg = SftpConfig(**{**base, "password": "s3cret"})
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())


def test_tracker_state_round_trip():
    tracker = StabilityTracker()
    assert tracker.observe("/in/a", 10, 100) is False
    assert tracker.observe("/in/a", 10, 100) is True
    restored = StabilityTracker.from_dict(json.loads(json.dumps(tracker.to_dict())))
    assert restored.observe("/in/a", 10, 100) is True
    assert restored.observe("/in/a", 11, 100) is False
    assert StabilityTracker.from_dict(None).to_dict() == {"version": 2, "files": {}}
    old = StabilityTracker.from_dict({"version": 1, "files": {"/in/b": [5, 7]}})  # a store from before
    assert old.observe("/in/b", 5, 7) is True


def test_tracker_waits_for_the_quiet_period_across_two_looks():
    tracker = StabilityTracker(quiet_seconds=10)
    assert tracker.observe("/in/a", 10, 100, now=1000.0, age=1) is False
    assert tracker.observe("/in/a", 10, 100, now=1005.0, age=6) is False  # the same, but only 5 s quiet
    assert tracker.observe("/in/a", 12, 106, now=1006.0, age=0) is False  # the writer went on
    assert tracker.observe("/in/a", 12, 106, now=1015.0, age=9) is False
    assert tracker.observe("/in/a", 12, 106, now=1016.0, age=10) is True  # 10 s unchanged
    assert tracker.observe("/in/b", 1, 50, now=1016.0, age=900) is False  # a first look is never enough
    assert tracker.observe("/in/b", 1, 50, now=1017.0, age=901) is True  # an old file: the second look
    with pytest.raises(ValueError, match="version"):
        StabilityTracker.from_dict({"version": 99, "files": {}})


def test_a_file_written_to_after_it_was_fetched_is_left_to_be_taken_again(sshd_server, base):
    inbox, archive = base / "in", base / "in-archive"
    cfg = make_config(sshd_server, [folder(inbox)])
    write(inbox / "PO.edi", EDI[:30], mtime=1_700_000_000)
    with SftpClient(cfg) as src:
        list(src.list_pending())
        (f,) = src.list_pending()
        assert src.fetch(f) == EDI[:30]
        write(inbox / "PO.edi", EDI, mtime=1_700_000_100)  # the writer was not done
        src.acknowledge(f)
        assert (inbox / "PO.edi").read_bytes() == EDI and not (archive.exists() and list(archive.iterdir()))
        list(src.list_pending())
        (again,) = src.list_pending()  # a new version: its own size and mtime
        assert (again.size, again.mtime) == (len(EDI), 1_700_000_100) and src.fetch(again) == EDI
        src.acknowledge(again)
    assert [p.read_bytes() for p in archive.iterdir()] == [EDI] and not (inbox / "PO.edi").exists()


def test_quiet_period_over_sftp(sshd_server, base):
    cfg = make_config(sshd_server, [folder(base / "in")], quiet_seconds=10)
    write(base / "in" / "new.edi", EDI)  # just written
    write(base / "in" / "old.edi", EDI, mtime=1_700_000_000)  # quiet for long
    with SftpClient(cfg) as src:
        assert names(src.list_pending()) == []
        assert names(src.list_pending()) == ["old.edi"]  # the second look; new.edi has not been quiet 10 s
