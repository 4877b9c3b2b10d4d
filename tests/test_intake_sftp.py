"""SFTP intake through the poller against a real OpenSSH sshd (fixture ``sshd_server``), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest
from sqlmodel import Session, select

from gateway.acks_outbound import send_acknowledgments
from gateway.intake import take
from gateway.pollers import poll_source
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.integrations.sftp import client as sftp_client
from gateway.integrations.sftp.settings import DropFolder, SftpSettings
from gateway.store import Event, Interchange, RawPayload, SourceStatus, transaction

pytestmark = pytest.mark.sshd

EDI = b"\xef\xbb\xbfISA*00*          *00*          *ZZ*ACME*ZZ*US*240101*1200*U*00401*000000001*0*P*>~\r\nGS*PO~\r\n"
SOURCE = "sftp:partners"


@pytest.fixture
def base(sshd_server) -> Path:
    path = sshd_server.root / uuid.uuid4().hex[:8]
    path.mkdir()
    return path


def runtime(engine, server, base: Path, folders, partners_dir: Path | None = None, **overrides) -> Runtime:
    values = dict(name="partners", host=server.host, port=server.port, username=server.username,
                  private_key_path=server.client_key_path, host_keys=[server.host_key], folders=folders,
                  connect_timeout=5, retry_attempts=2, retry_max_wait=0.2, quiet_seconds=0)
    values.update(overrides)
    settings = Settings(data_dir=base / "var", partners_dir=partners_dir or base / "no-partners",
                        sftp=[SftpSettings(**values)])
    return Runtime(settings=settings, engine=engine)


def write(path: Path, data: bytes, mtime: int | None = 1_700_000_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def interchanges(engine) -> list[Interchange]:
    with Session(engine) as s:
        return list(s.exec(select(Interchange).order_by(Interchange.id)))


def status(engine) -> SourceStatus:
    with Session(engine) as s:
        return s.get(SourceStatus, SOURCE)


def test_files_taken_from_two_drop_folders_byte_exact_then_archived_or_deleted(engine, sshd_server, base):
    big = os.urandom(2 * 1024 * 1024 + 3)
    write(base / "acme" / "PO1.edi", EDI)
    write(base / "acme" / "BIG.edi", big)
    write(base / "shared" / "INV1.edi", EDI + b"ST*810~")
    rt = runtime(engine, sshd_server, base, [
        DropFolder(path=str(base / "acme"), partners=("acme",), archive_path=str(base / "acme-archive")),
        DropFolder(path=str(base / "shared"), after_intake="delete"),
    ])
    first = poll_source(rt, SOURCE)
    assert (first.polled, first.listed, first.errors) == (True, 0, [])  # first sight: not yet stable
    assert json.loads(status(engine).cursor)["stability"]["files"]  # observations kept in the store
    second = poll_source(rt, SOURCE)
    assert (second.stored, second.acknowledged, second.errors) == (3, 3, [])

    stored = {i.remote_name: i for i in interchanges(engine)}
    assert set(stored) == {"PO1.edi", "BIG.edi", "INV1.edi"}
    with Session(engine) as s:
        for name, data in (("PO1.edi", EDI), ("BIG.edi", big), ("INV1.edi", EDI + b"ST*810~")):
            ich = stored[name]
            assert s.get(RawPayload, ich.id).data == data
            assert (ich.sha256, ich.size, ich.state, ich.source) == (hashlib.sha256(data).hexdigest(), len(data),
                                                                    "received", SOURCE)
    assert stored["PO1.edi"].remote_id == f"{base / 'acme' / 'PO1.edi'}@1700000000"
    assert os.listdir(base / "acme") == [] and os.listdir(base / "shared") == []
    assert sorted(os.listdir(base / "acme-archive")) == ["BIG.edi", "PO1.edi"]
    assert (base / "acme-archive" / "PO1.edi").read_bytes() == EDI
    st = status(engine)
    assert st.files_taken == 3 and st.last_success_at is not None and st.last_error is None
    assert poll_source(rt, SOURCE).listed == 0


def test_unknown_host_key_refused_nothing_taken_error_recorded(engine, sshd_server, base):
    write(base / "in" / "PO.edi", EDI)
    folders = [DropFolder(path=str(base / "in"), archive_path=str(base / "archive"))]
    rt = runtime(engine, sshd_server, base, folders, host_keys=[sshd_server.wrong_host_key])
    for _ in range(2):
        report = poll_source(rt, SOURCE)
        assert report.polled and report.listed == 0 and "host key mismatch" in report.error
    assert interchanges(engine) == []
    assert (base / "in" / "PO.edi").read_bytes() == EDI and not (base / "archive").exists()
    st = status(engine)
    assert "host key mismatch" in st.last_error and f"[127.0.0.1]:{sshd_server.port}" in st.last_error
    assert st.last_error_at is not None and st.last_success_at is None and st.files_taken == 0

    # No key pinned for this host at all: refused as unknown, never learned.
    unknown = runtime(engine, sshd_server, base, folders, host_keys=(),
                      known_hosts=f"otherhost {sshd_server.host_key}\n")
    assert "unknown" in poll_source(unknown, SOURCE).error
    assert interchanges(engine) == []


def test_half_written_and_temporary_files_left_alone_until_finished(engine, sshd_server, base):
    inbox = base / "in"
    growing = write(inbox / "PO.edi", EDI[:30])
    write(inbox / "INV.edi.part", EDI + b"ST*810~")
    rt = runtime(engine, sshd_server, base, [DropFolder(path=str(inbox), archive_path=str(base / "archive"))])
    assert poll_source(rt, SOURCE).listed == 0
    with growing.open("ab") as fh:  # the upload goes on between polls
        fh.write(EDI[30:60])
    assert poll_source(rt, SOURCE).listed == 0
    with growing.open("ab") as fh:
        fh.write(EDI[60:])
    os.utime(growing, (1_700_000_050, 1_700_000_050))
    assert poll_source(rt, SOURCE).listed == 0
    assert interchanges(engine) == [] and growing.exists()
    report = poll_source(rt, SOURCE)  # unchanged over two polls: finished
    assert report.stored == 1
    (ich,) = interchanges(engine)
    with Session(engine) as s:
        assert s.get(RawPayload, ich.id).data == EDI
    assert os.listdir(inbox) == ["INV.edi.part"]  # never taken while it carries the temporary suffix
    (inbox / "INV.edi.part").rename(inbox / "INV.edi")
    poll_source(rt, SOURCE)
    assert poll_source(rt, SOURCE).stored == 1 and os.listdir(inbox) == []


def test_crash_between_store_and_archive_recognised_by_hash(engine, sshd_server, base, monkeypatch):
    write(base / "in" / "PO.edi", EDI)
    rt = runtime(engine, sshd_server, base, [DropFolder(path=str(base / "in"), archive_path=str(base / "archive"))])
    real = sftp_client.SftpClient.acknowledge
    calls = []

    def acknowledge_dies_once(self, f):
        calls.append(f.remote_id)
        if len(calls) == 1:
            raise sftp_client.SftpConnectionError("connection lost before the file was archived")
        return real(self, f)

    monkeypatch.setattr(sftp_client.SftpClient, "acknowledge", acknowledge_dies_once)
    poll_source(rt, SOURCE)
    crashed = poll_source(rt, SOURCE)
    assert (crashed.stored, crashed.acknowledged) == (1, 0) and "connection lost" in crashed.error
    assert (base / "in" / "PO.edi").exists() and "connection lost" in status(engine).last_error
    # A new process (new runtime) resumes: the file is still stable, fetched again, recognised, archived.
    again = poll_source(Runtime(settings=rt.settings, engine=engine), SOURCE)
    assert (again.stored, again.already_stored, again.acknowledged, again.errors) == (0, 1, 1, [])
    assert len(interchanges(engine)) == 1
    assert not (base / "in" / "PO.edi").exists() and (base / "archive" / "PO.edi").read_bytes() == EDI
    assert status(engine).files_taken == 1


def test_missing_drop_folder_recorded_while_the_others_are_taken(engine, sshd_server, base):
    write(base / "in" / "PO.edi", EDI)
    rt = runtime(engine, sshd_server, base, [
        DropFolder(path=str(base / "gone"), after_intake="delete"),
        DropFolder(path=str(base / "in"), after_intake="delete"),
    ])
    poll_source(rt, SOURCE)
    report = poll_source(rt, SOURCE)
    assert report.stored == 1 and f"drop folder {base / 'gone'}: folder does not exist" in report.error
    assert "folder does not exist" in status(engine).last_error


PARTNER = """id: {id}
name: {id}
identifiers:
  x12: [{{qualifier: ZZ, id: {sender}}}]
acknowledgments: {{send: {send}}}
"""


def test_acks_written_to_the_partners_sftp_outbound_folder_only_when_asked(engine, sshd_server, base):
    partners = base / "partners"
    partners.mkdir()
    (partners / "acme.yaml").write_text(PARTNER.format(id="acme", sender="ACME", send="true"))
    (partners / "globex.yaml").write_text(PARTNER.format(id="globex", sender="GLOBEX", send="false"))
    rt = runtime(engine, sshd_server, base, [
        DropFolder(path=str(base / "acme"), partners=("acme",), after_intake="delete",
                   outbound_path=str(base / "outbound" / "{partner}")),
        DropFolder(path=str(base / "globex"), partners=("globex",), after_intake="delete",
                   outbound_path=str(base / "outbound" / "{partner}")),
    ], partners_dir=partners)
    write(base / "acme" / "PO.edi", EDI)
    write(base / "globex" / "PO.edi", EDI + b"globex")
    poll_source(rt, SOURCE)
    assert poll_source(rt, SOURCE).stored == 2
    # The same partner's file taken from the Sterling mailbox: its acknowledgment goes to SFTP too.
    via_sterling = take(engine, source="sterling:b2bi", remote_name="po2.edi", remote_id="90817",
                        data=EDI + b"sterling").interchange_id
    globex = next(i.id for i in interchanges(engine) if i.remote_id.startswith(str(base / "globex")))
    acme = next(i.id for i in interchanges(engine) if i.remote_id.startswith(str(base / "acme")))
    for ich_id, partner, control in ((acme, "acme", "000000001"), (globex, "globex", "000000002"),
                                     (via_sterling, "acme", "000000003")):
        with transaction(engine) as s:  # what the worker does when it splits the interchange
            ich = s.get(Interchange, ich_id)
            ich.state, ich.partner, ich.control_number = "split", partner, control
            ich.ack_kind, ich.ack = "997", f"ISA*997*{control}~"

    assert send_acknowledgments(rt) == 2
    out = base / "outbound" / "acme"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        f"997_000000001_{acme}.x12": b"ISA*997*000000001~",
        f"997_000000003_{via_sterling}.x12": b"ISA*997*000000003~",
    }
    assert not (base / "outbound" / "globex").exists()
    with Session(engine) as s:
        sent = {i.id: i for i in s.exec(select(Interchange))}
        assert sent[acme].ack_sent_to == f"{SOURCE}:{out / f'997_000000001_{acme}.x12'}"
        assert sent[via_sterling].ack_sent_to.startswith(f"{SOURCE}:")
        assert sent[acme].ack_sent_at and sent[via_sterling].ack_sent_at and sent[globex].ack_sent_at is None
        assert len(s.exec(select(Event).where(Event.stage == "ack", Event.outcome == "ok")).all()) == 2
    assert send_acknowledgments(rt) == 0


def test_ack_to_an_unreachable_server_is_recorded_and_retried(engine, sshd_server, base):
    partners = base / "partners"
    partners.mkdir()
    (partners / "acme.yaml").write_text(PARTNER.format(id="acme", sender="ACME", send="true"))
    folders = [DropFolder(path=str(base / "acme"), partners=("acme",), after_intake="delete",
                          outbound_path=str(base / "outbound"))]
    wrong = runtime(engine, sshd_server, base, folders, partners_dir=partners, host_keys=[sshd_server.wrong_host_key])
    ich_id = take(engine, source=SOURCE, remote_name="PO.edi", remote_id=f"{base / 'acme' / 'PO.edi'}@1",
                  data=EDI).interchange_id
    with transaction(engine) as s:
        ich = s.get(Interchange, ich_id)
        ich.partner, ich.ack_kind, ich.ack, ich.control_number = "acme", "997", "ISA*997~", "1"
    assert send_acknowledgments(wrong) == 0
    assert "host key mismatch" in status(engine).last_error
    right = runtime(engine, sshd_server, base, folders, partners_dir=partners)
    assert send_acknowledgments(right) == 1
    assert (base / "outbound" / f"997_1_{ich_id}.x12").read_bytes() == b"ISA*997~"
