"""Local-folder intake (the demo's and the crash tests' source), the poll lease, the poller loop and local acks."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from sqlmodel import Session, select

import gateway.intake as intake_module
from gateway.acks_outbound import send_acknowledgments
from gateway.intake import take
from gateway.leases import holder
from gateway.pollers import poll_all_once, poll_source, run_pollers
from gateway.runtime import Runtime
from gateway.integrations.local import source as local_source
from gateway.integrations.local.settings import LocalSettings
from gateway.settings import Settings
from gateway.store import Event, Interchange, RawPayload, SourceStatus, transaction

X12 = b"ISA*00*          *00*          *ZZ*ACME           *ZZ*GATEWAY        *240502*0914*U*00401*000000123*0*P*>~"
OLD = 1_700_000_000  # an mtime long past: the file is finished


def runtime(engine, tmp_path: Path, **local) -> Runtime:
    local.setdefault("archive_path", tmp_path / "archive")
    cfg = LocalSettings(name="demo", path=tmp_path / "in", **local)
    (tmp_path / "in").mkdir(exist_ok=True)
    settings = Settings(data_dir=tmp_path, partners_dir=tmp_path / "partners", local=[cfg])
    return Runtime(settings=settings, engine=engine)


def drop(folder: Path, name: str, data: bytes, mtime: float | None = OLD) -> Path:
    path = folder / name
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def interchanges(engine) -> list[Interchange]:
    with Session(engine) as s:
        return list(s.exec(select(Interchange).order_by(Interchange.id)))


def status(engine, source: str = "local:demo") -> SourceStatus:
    with Session(engine) as s:
        return s.get(SourceStatus, source)


def test_finished_file_taken_stored_byte_exact_then_archived(engine, tmp_path):
    rt = runtime(engine, tmp_path)
    data = b"\xef\xbb\xbf" + X12 + b"\r\n\x00"
    drop(tmp_path / "in", "PO1.edi", data)
    report = poll_source(rt, "local:demo")
    assert (report.polled, report.stored, report.acknowledged, report.errors) == (True, 1, 1, [])
    (ich,) = interchanges(engine)
    assert (ich.source, ich.remote_name, ich.state, ich.size) == ("local:demo", "PO1.edi", "received", len(data))
    assert ich.remote_id == f"{tmp_path / 'in' / 'PO1.edi'}@{OLD * 10**9}"
    assert ich.sha256 == hashlib.sha256(data).hexdigest()
    with Session(engine) as s:
        assert s.get(RawPayload, ich.id).data == data
    assert not (tmp_path / "in" / "PO1.edi").exists()
    assert (tmp_path / "archive" / "PO1.edi").read_bytes() == data
    st = status(engine)
    assert st.files_taken == 1 and st.last_poll_at and st.last_success_at and st.last_error is None
    assert poll_source(rt, "local:demo").listed == 0  # nothing offered twice


def test_delete_after_intake_by_configuration(engine, tmp_path):
    rt = runtime(engine, tmp_path, archive_path=None)
    drop(tmp_path / "in", "PO1.edi", X12)
    assert poll_source(rt, "demo").stored == 1
    assert os.listdir(tmp_path / "in") == [] and not (tmp_path / "archive").exists()


def test_archive_never_overwrites_an_earlier_file_of_the_same_name(engine, tmp_path):
    rt = runtime(engine, tmp_path)
    drop(tmp_path / "in", "PO.edi", X12)
    poll_source(rt, "demo")
    drop(tmp_path / "in", "PO.edi", X12 + b"2", mtime=OLD + 60)
    poll_source(rt, "demo")
    archived = sorted(p.read_bytes() for p in (tmp_path / "archive").iterdir())
    assert archived == [X12, X12 + b"2"]


def test_fresh_file_waits_for_a_second_look_and_growing_file_is_left_alone(engine, tmp_path):
    rt = runtime(engine, tmp_path, quiet_seconds=0)  # two looks in a row suffice here
    now = time.time()
    drop(tmp_path / "in", "done.edi", X12, mtime=now)
    growing = drop(tmp_path / "in", "growing.edi", X12[:40], mtime=now)
    assert poll_source(rt, "demo").listed == 0  # first sight of files just written: not taken yet
    with growing.open("ab") as fh:
        fh.write(X12[40:80])
    os.utime(growing, (now + 1, now + 1))
    report = poll_source(rt, "demo")
    assert report.stored == 1 and [i.remote_name for i in interchanges(engine)] == ["done.edi"]
    assert growing.exists()
    report = poll_source(rt, "demo")  # unchanged since the last poll: finished
    assert report.stored == 1
    (_, ich) = interchanges(engine)
    with Session(engine) as s:
        assert s.get(RawPayload, ich.id).data == X12[:80]


def test_temporary_and_hidden_names_are_never_taken(engine, tmp_path):
    rt = runtime(engine, tmp_path)
    for name in ("PO.edi.part", "PO.edi.tmp", ".PO.edi.x1y2", "INV.FILEPART"):
        drop(tmp_path / "in", name, X12)
    (tmp_path / "in" / "sub").mkdir()
    for _ in range(2):
        assert poll_source(rt, "demo").listed == 0
    os.rename(tmp_path / "in" / "PO.edi.part", tmp_path / "in" / "PO.edi")  # the upload completes
    assert poll_source(rt, "demo").stored == 1
    assert sorted(os.listdir(tmp_path / "in")) == [".PO.edi.x1y2", "INV.FILEPART", "PO.edi.tmp", "sub"]


def test_settling_state_survives_a_restart(engine, tmp_path):
    first = runtime(engine, tmp_path, quiet_seconds=0)
    drop(tmp_path / "in", "PO.edi", X12, mtime=time.time())
    assert poll_source(first, "demo").listed == 0
    cursor = json.loads(status(engine).cursor)
    assert list(cursor["stability"]["files"]) == [str(tmp_path / "in" / "PO.edi")]
    restarted = Runtime(settings=first.settings, engine=engine)  # another process, same store
    assert poll_source(restarted, "demo").stored == 1


def test_crash_between_store_and_acknowledge_is_recognised_by_hash(engine, tmp_path, monkeypatch):
    rt = runtime(engine, tmp_path)
    drop(tmp_path / "in", "PO.edi", X12)
    real = local_source.archive_or_delete
    calls = []

    def ack_fails_once(cfg, path, taken):
        calls.append(path)
        if len(calls) == 1:
            raise OSError("simulated crash before the file was archived")
        real(cfg, path, taken)

    monkeypatch.setattr(local_source, "archive_or_delete", ack_fails_once)
    first = poll_source(rt, "demo")
    assert (first.stored, first.acknowledged) == (1, 0)
    assert "simulated crash" in first.error and "simulated crash" in status(engine).last_error
    assert (tmp_path / "in" / "PO.edi").exists()
    second = poll_source(rt, "demo")
    assert (second.stored, second.already_stored, second.acknowledged, second.errors) == (0, 1, 1, [])
    assert len(interchanges(engine)) == 1
    assert not (tmp_path / "in" / "PO.edi").exists() and (tmp_path / "archive" / "PO.edi").exists()
    assert status(engine).files_taken == 1


def test_store_failure_leaves_the_file_in_place(engine, tmp_path, monkeypatch):
    rt = runtime(engine, tmp_path)
    drop(tmp_path / "in", "PO.edi", X12)

    def store_down(*args, **kwargs):
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(intake_module, "take", store_down)
    report = poll_source(rt, "demo")
    assert report.acknowledged == 0 and "database unreachable" in report.error
    assert (tmp_path / "in" / "PO.edi").read_bytes() == X12
    monkeypatch.setattr(intake_module, "take", take)
    assert poll_source(rt, "demo").stored == 1


def test_same_name_uploaded_again_later_is_a_recorded_duplicate(engine, tmp_path):
    rt = runtime(engine, tmp_path)
    drop(tmp_path / "in", "PO.edi", X12)
    poll_source(rt, "demo")
    drop(tmp_path / "in", "PO.edi", X12, mtime=OLD + 3600)  # the partner sends the same file again
    assert poll_source(rt, "demo").duplicates == 1
    first, again = interchanges(engine)
    assert (again.state, again.duplicate_of) == ("duplicate", first.id)
    assert status(engine).files_taken == 2


def test_missing_folder_is_an_error_on_the_source(engine, tmp_path):
    rt = runtime(engine, tmp_path)
    (tmp_path / "in").rmdir()
    report = poll_source(rt, "demo")
    assert report.polled and "local folder" in report.error
    st = status(engine)
    assert st.last_error == report.error and st.last_error_at and st.last_success_at is None


def test_two_pollers_racing_on_one_source_exactly_one_polls(engine, tmp_path, monkeypatch):
    """Four processes (runtimes) poll one source at the same moment: one holds the lease and polls."""
    base = runtime(engine, tmp_path)
    drop(tmp_path / "in", "PO.edi", X12)
    n = 4
    attempts = threading.Barrier(n)
    others_refused = threading.Event()
    refused: list[int] = []
    real = local_source.LocalSource.poll

    def slow_poll(self, intake):
        # Hold the lease until every other poller has tried and been turned away.
        others_refused.wait(10)
        real(self, intake)

    monkeypatch.setattr(local_source.LocalSource, "poll", slow_poll)
    reports = []

    def run(rt: Runtime) -> None:
        attempts.wait()
        report = poll_source(rt, "local:demo")
        if not report.polled:
            refused.append(1)
            if len(refused) == n - 1:
                others_refused.set()
        reports.append(report)

    runtimes = [Runtime(settings=base.settings, engine=engine) for _ in range(n)]
    threads = [threading.Thread(target=run, args=(rt,)) for rt in runtimes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    polled = [r for r in reports if r.polled]
    assert len(reports) == n and len(polled) == 1 and polled[0].stored == 1
    assert all(r.held_by and r.held_by.split("#")[0] in {rt.instance for rt in runtimes}
               for r in reports if not r.polled)
    assert len(interchanges(engine)) == 1
    assert holder(engine, "poll:local:demo") is None  # released after the poll


def test_poll_all_once_and_the_poller_loop(engine, tmp_path):
    rt = runtime(engine, tmp_path, interval_seconds=0.2)
    drop(tmp_path / "in", "a.edi", X12)
    (report,) = poll_all_once(rt)
    assert report.source == "local:demo" and report.stored == 1
    drop(tmp_path / "in", "b.edi", X12 + b"b")
    stop = threading.Event()
    loop = threading.Thread(target=run_pollers, args=(rt, stop))
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while len(interchanges(engine)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join(20)
    assert not loop.is_alive()
    assert [i.remote_name for i in interchanges(engine)] == ["a.edi", "b.edi"]


# ------------------------------------------------------------------------------ acknowledgments


PARTNER = """id: {id}
name: {id}
identifiers:
  x12: [{{qualifier: ZZ, id: {sender}}}]
acknowledgments: {{send: {send}}}
"""


def _split_like_the_worker(engine, ich_id: int, partner: str, ack: str) -> None:
    with transaction(engine) as s:
        ich = s.get(Interchange, ich_id)
        ich.state, ich.partner, ich.ack_kind, ich.ack, ich.control_number = "split", partner, "997", ack, "000000123"


def test_acks_written_to_the_local_outbound_folder_only_for_partners_that_ask(engine, tmp_path):
    partners = tmp_path / "partners"
    partners.mkdir()
    (partners / "acme.yaml").write_text(PARTNER.format(id="acme", sender="ACME", send="true"))
    (partners / "globex.yaml").write_text(PARTNER.format(id="globex", sender="GLOBEX", send="false"))
    rt = runtime(engine, tmp_path, outbound_path=tmp_path / "out" / "{partner}")
    drop(tmp_path / "in", "a.edi", X12)
    drop(tmp_path / "in", "g.edi", X12 + b"g")
    poll_source(rt, "demo")
    a, g = interchanges(engine)
    _split_like_the_worker(engine, a.id, "acme", "ISA*997 for acme~")
    _split_like_the_worker(engine, g.id, "globex", "ISA*997 for globex~")

    assert send_acknowledgments(rt) == 1
    (written,) = (tmp_path / "out" / "acme").iterdir()
    assert written.name == f"997_000000123_{a.id}.x12" and written.read_bytes() == b"ISA*997 for acme~"
    assert not (tmp_path / "out" / "globex").exists()
    a, g = interchanges(engine)
    assert a.ack_sent_to == f"local:demo:{written}" and a.ack_sent_at is not None
    assert g.ack_sent_at is None
    with Session(engine) as s:
        ev = s.exec(select(Event).where(Event.interchange_id == a.id, Event.stage == "ack")).one()
    assert ev.outcome == "ok" and json.loads(ev.detail)["to"] == a.ack_sent_to
    assert send_acknowledgments(rt) == 0  # sent once
    assert [p.name for p in (tmp_path / "out" / "acme").iterdir()] == [written.name]


def test_ack_rewritten_after_a_crash_before_it_was_recorded_is_not_an_error(engine, tmp_path):
    partners = tmp_path / "partners"
    partners.mkdir()
    (partners / "acme.yaml").write_text(PARTNER.format(id="acme", sender="ACME", send="true"))
    rt = runtime(engine, tmp_path, outbound_path=tmp_path / "out")
    drop(tmp_path / "in", "a.edi", X12)
    poll_source(rt, "demo")
    (a,) = interchanges(engine)
    _split_like_the_worker(engine, a.id, "acme", "ISA*997~")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f"997_000000123_{a.id}.x12").write_bytes(b"ISA*997~")  # written, then the crash
    assert send_acknowledgments(rt) == 1
    assert interchanges(engine)[0].ack_sent_at is not None


def test_ack_never_replaces_a_different_file(engine, tmp_path):
    other = b"different bytes"
    partners = tmp_path / "partners"
    partners.mkdir()
    (partners / "acme.yaml").write_text(PARTNER.format(id="acme", sender="ACME", send="true"))
    rt = runtime(engine, tmp_path, outbound_path=tmp_path / "out")
    drop(tmp_path / "in", "a.edi", X12)
    poll_source(rt, "demo")
    (a,) = interchanges(engine)
    _split_like_the_worker(engine, a.id, "acme", "ISA*997~")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f"997_000000123_{a.id}.x12").write_bytes(other)
    assert send_acknowledgments(rt) == 0
    assert (tmp_path / "out" / f"997_000000123_{a.id}.x12").read_bytes() == other
    assert "already exists" in status(engine).last_error
    assert interchanges(engine)[0].ack_sent_at is None


def test_a_writer_pausing_five_seconds_mid_file_is_not_taken_half_written(engine, tmp_path):
    rt = runtime(engine, tmp_path)  # the default quiet period: 10 s
    path = tmp_path / "in" / "slow.x12"
    half = len(X12) // 2
    with path.open("wb") as fh:
        fh.write(X12[:half])
        fh.flush()
        paused = time.monotonic()
        while time.monotonic() - paused < 5.0:  # the writer pauses 5 s; the poller looks every 0.25 s
            assert poll_source(rt, "demo").stored == 0
            time.sleep(0.25)
        fh.write(X12[half:])
    deadline = time.monotonic() + 20
    while not interchanges(engine) and time.monotonic() < deadline:
        poll_source(rt, "demo")
        time.sleep(0.25)
    (ich,) = interchanges(engine)
    with Session(engine) as s:
        assert s.get(RawPayload, ich.id).data == X12  # whole, never the first half
    assert not path.exists()


def test_a_file_written_to_after_it_was_taken_is_taken_again_as_a_new_version(engine, tmp_path, monkeypatch):
    rt = runtime(engine, tmp_path)
    path = drop(tmp_path / "in", "PO.x12", X12[:60])
    real_take = intake_module.take

    def take_then_the_writer_goes_on(*args, **kwargs):
        result = real_take(*args, **kwargs)
        if not path.read_bytes().endswith(X12[60:]):
            with path.open("ab") as fh:  # the writer was not finished after all
                fh.write(X12[60:])
        return result

    monkeypatch.setattr(intake_module, "take", take_then_the_writer_goes_on)
    assert poll_source(rt, "demo").stored == 1
    assert path.read_bytes() == X12  # left in the drop folder, not archived behind our back
    assert not (tmp_path / "archive").exists() or list((tmp_path / "archive").iterdir()) == []
    monkeypatch.setattr(intake_module, "take", real_take)
    assert poll_source(rt, "demo").stored == 0  # just written: waits for the quiet period
    os.utime(path, (OLD + 5, OLD + 5))  # ... which has passed
    assert poll_source(rt, "demo").stored == 1
    first, second = interchanges(engine)
    with Session(engine) as s:
        assert s.get(RawPayload, first.id).data == X12[:60] and s.get(RawPayload, second.id).data == X12
    assert [p.read_bytes() for p in (tmp_path / "archive").iterdir()] == [X12] and not path.exists()


def test_a_standing_condition_is_logged_once_when_it_starts_and_once_when_it_ends(engine, tmp_path):
    import structlog

    partners = tmp_path / "partners"
    partners.mkdir()
    (partners / "acme.yaml").write_text(PARTNER.format(id="acme", sender="ACME", send="true"))
    rt = runtime(engine, tmp_path)  # no outbound_path: nowhere to write acme's acknowledgments
    drop(tmp_path / "in", "a.edi", X12)
    drop(tmp_path / "in", "b.edi", X12 + b"b")
    poll_source(rt, "demo")
    for ich in interchanges(engine):
        _split_like_the_worker(engine, ich.id, "acme", f"ISA*997 {ich.id}~")
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):  # five looks, two interchanges each
            assert send_acknowledgments(rt) == 0
    assert [e["event"] for e in logs if e["event"].startswith("ack.")] == ["ack.no_outbound_folder"]
    rt.settings = rt.settings.model_copy(update={"local": [rt.settings.local[0].model_copy(
        update={"outbound_path": tmp_path / "out" / "{partner}"})]})
    with structlog.testing.capture_logs() as logs:
        assert send_acknowledgments(rt) == 2
        assert send_acknowledgments(rt) == 0
    assert [e["event"] for e in logs if e["event"].startswith("ack.no_outbound")] == ["ack.no_outbound_folder.ended"]

    # A source that keeps failing: one warning, however many polls, and one line when it recovers.
    rt.settings = rt.settings.model_copy(update={"local": [rt.settings.local[0].model_copy(
        update={"path": tmp_path / "gone"})]})
    with structlog.testing.capture_logs() as logs:
        for _ in range(4):
            assert poll_source(rt, "demo").errors
    assert [e["event"] for e in logs if e["event"].startswith("poll.failed")] == ["poll.failed"]
    (tmp_path / "gone").mkdir()
    with structlog.testing.capture_logs() as logs:
        assert not poll_source(rt, "demo").errors
    assert [e["event"] for e in logs if e["event"].startswith("poll.failed")] == ["poll.failed.ended"]
