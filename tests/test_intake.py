"""Intake (gateway.intake.take) on SQLite and PostgreSQL: stored first, re-reads recognised, duplicates recorded."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import timedelta

import pytest
from sqlmodel import Session, func, select

from gateway.intake import take
from gateway.intake import PollReport
from gateway.integrations.local.settings import LocalSettings
from gateway.pollers import find_source
from gateway.settings import Settings
from gateway.store import Event, Interchange, RawPayload, utcnow

X12 = b"ISA*00*          *00*          *ZZ*ACME           *ZZ*GATEWAY        *240502*0914*U*00401*000000123*0*P*>~"


def rows(engine) -> list[Interchange]:
    with Session(engine) as s:
        return list(s.exec(select(Interchange).order_by(Interchange.id)))


def events(engine, ich_id: int) -> list[Event]:
    with Session(engine) as s:
        return list(s.exec(select(Event).where(Event.interchange_id == ich_id).order_by(Event.id)))


def test_stored_byte_exact_with_hash_and_an_intake_event(engine):
    now = utcnow()
    data = b"\x00\xff" + X12 + b"\r\n\xef\xbb\xbf"
    result = take(engine, source="sftp:acme", remote_name="PO.edi", remote_id="/in/PO.edi@1700000000",
                  data=data, now=now, actor="gateway@host:1")
    assert (result.status, result.new, result.size) == ("stored", True, len(data))
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    (ich,) = rows(engine)
    assert (ich.id, ich.state, ich.sha256, ich.size, ich.source, ich.remote_name, ich.remote_id) == (
        result.interchange_id, "received", result.sha256, len(data), "sftp:acme", "PO.edi", "/in/PO.edi@1700000000")
    assert ich.duplicate_of is None
    with Session(engine) as s:
        assert s.get(RawPayload, ich.id).data == data
    (ev,) = events(engine, ich.id)
    assert (ev.stage, ev.outcome, ev.actor, ev.document_id) == ("intake", "ok", "gateway@host:1", None)
    assert json.loads(ev.detail) == {"source": "sftp:acme", "remote_name": "PO.edi",
                                     "remote_id": "/in/PO.edi@1700000000", "size": len(data),
                                     "sha256": result.sha256}


def test_reread_after_crash_is_recognised_and_nothing_is_added(engine):
    first = take(engine, source="sterling:b2bi", remote_name="po.edi", remote_id="90817", data=X12)
    again = take(engine, source="sterling:b2bi", remote_name="po.edi", remote_id="90817", data=X12)
    assert again.status == "already_stored" and not again.new
    assert again.interchange_id == first.interchange_id
    assert len(rows(engine)) == 1 and len(events(engine, first.interchange_id)) == 1


def test_same_bytes_under_another_id_or_source_is_a_recorded_duplicate(engine):
    first = take(engine, source="sterling:b2bi", remote_name="po.edi", remote_id="1", data=X12)
    dup = take(engine, source="sterling:b2bi", remote_name="po.edi", remote_id="2", data=X12)
    other = take(engine, source="sftp:acme", remote_name="po.edi", remote_id="/in/po.edi@5", data=X12)
    assert (dup.status, dup.duplicate_of) == ("duplicate", first.interchange_id)
    assert (other.status, other.duplicate_of) == ("duplicate", first.interchange_id)  # the original, not a copy
    stored = rows(engine)
    assert [r.state for r in stored] == ["received", "duplicate", "duplicate"]
    assert stored[1].duplicate_of == stored[2].duplicate_of == first.interchange_id
    assert f"interchange {first.interchange_id}" in stored[1].error
    with Session(engine) as s:
        assert s.get(RawPayload, dup.interchange_id).data == X12  # raw bytes are kept for a forced reprocess
    (ev,) = events(engine, dup.interchange_id)
    assert (ev.stage, ev.outcome) == ("intake", "duplicate")
    assert json.loads(ev.detail)["duplicate_of"] == first.interchange_id
    # The copy re-read after a crash is recognised like any other.
    assert take(engine, source="sterling:b2bi", remote_name="po.edi", remote_id="2", data=X12).status == \
        "already_stored"
    assert len(rows(engine)) == 3


def test_same_remote_id_with_new_bytes_is_a_new_interchange(engine):
    a = take(engine, source="sterling:b2bi", remote_name="po.edi", remote_id="7", data=X12)
    b = take(engine, source="sterling:b2bi", remote_name="po.edi", remote_id="7", data=X12 + b"GS*PO~")
    assert (a.status, b.status) == ("stored", "stored") and a.interchange_id != b.interchange_id


def test_concurrent_takes_of_the_same_bytes_store_one_original(engine):
    """Eight pollers of eight sources take identical bytes at the same moment: one original, seven duplicates."""
    barrier = threading.Barrier(8)
    results = []

    def grab(n: int) -> None:
        barrier.wait()
        results.append(take(engine, source=f"sftp:s{n}", remote_name="po.edi", remote_id=f"/in/po.edi@{n}",
                            data=X12))

    threads = [threading.Thread(target=grab, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in results) == ["duplicate"] * 7 + ["stored"]
    original = next(r.interchange_id for r in results if r.status == "stored")
    assert {r.duplicate_of for r in results if r.status == "duplicate"} == {original}
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(Interchange).where(Interchange.state == "received")).one() == 1


def test_received_at_is_the_given_time(engine):
    then = utcnow() - timedelta(hours=3)
    r = take(engine, source="local:demo", remote_name="a", remote_id="a@1", data=b"x", now=then)
    (ich,) = rows(engine)
    got = ich.received_at if ich.received_at.tzinfo else ich.received_at.replace(tzinfo=then.tzinfo)
    assert got == then and r.status == "stored"


def test_source_names_resolve_and_bad_ones_say_what_exists(tmp_path):
    settings = Settings(data_dir=tmp_path, local=[LocalSettings(name="demo", path=tmp_path / "in")])
    assert find_source(settings, "local:demo").kind == "local"
    assert find_source(settings, "demo").name == "demo"
    with pytest.raises(KeyError, match=r"'sftp:demo' is not configured \(sources: local:demo\)"):
        find_source(settings, "sftp:demo")


def test_poll_report_summary():
    report = PollReport("local:demo", polled=True, stored=2, duplicates=1, errors=["a", "b"])
    assert (report.taken, report.error, report.ok) == (3, "a; b", False)
    assert PollReport("x", polled=True).ok and not PollReport("x").ok
