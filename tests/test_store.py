"""The store and the state machine, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, select

from gateway.partners import load_partner_directory
from gateway.integrations.base import Outcome
from gateway.pipeline.machine import (
    DeliveryRow,
    StageName,
    State,
    apply_outcome,
    delivery_transition,
    derive,
    reprocess,
)
from gateway.retry import Backoff
from gateway.pipeline.translation import envelope_duplicate, retranslate, split_interchange, translation_event
from gateway.store import Delivery, Document, Event, Interchange, RawPayload, transaction, utcnow
from gateway.store.db import (
    current_revision,
    durable,
    insert_many,
    is_conflict,
    is_postgres,
    reader,
    reading,
    retry_conflicts,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "edi" / "demo"


@pytest.fixture(scope="module")
def partners():
    return load_partner_directory(ROOT / "partners")


def _store(engine, name: str, data: bytes) -> int:
    with transaction(engine) as s:
        ich = Interchange(sha256=hashlib.sha256(data).hexdigest(), size=len(data), source="test", remote_name=name)
        s.add(ich)
        s.flush()
        s.add(RawPayload(interchange_id=ich.id, data=data))
        return ich.id


def _split(engine, ich_id: int, partners):
    now = utcnow()
    with transaction(engine) as s:
        ich = s.get(Interchange, ich_id)
        raw = s.get(RawPayload, ich_id).data
        out = split_interchange(ich, raw, partners, now=now)
        for d in out.documents:
            s.add(d)
        s.flush()
        for d in out.documents:
            s.add(translation_event(d, actor="test", now=now, duration_ms=1.0))
        ich.state = "failed" if out.failed else "split"
        ich.error = out.error
        ich.ack = "\n".join(a.text for a in out.acknowledgments) or None
    return out


def test_schema_is_at_head(engine):
    from alembic.script import ScriptDirectory

    from gateway.store.db import MIGRATIONS

    heads = ScriptDirectory(str(MIGRATIONS)).get_heads()
    assert len(heads) == 1, f"the migrations have several heads: {heads} (renumber the newest)"
    assert current_revision(engine) == heads[0]


def test_split_creates_one_document_per_set_with_trail(engine, partners):
    data = (DEMO / "europa-components-ORDERS-EC-7781.edi").read_bytes()
    ich_id = _store(engine, "orders.edi", data)
    _split(engine, ich_id, partners)
    with Session(engine) as s:
        docs = s.exec(select(Document).where(Document.interchange_id == ich_id)).all()
        ich = s.get(Interchange, ich_id)
        events = s.exec(select(Event).where(Event.interchange_id == ich_id)).all()
    assert ich.state == "split" and ich.standard == "edifact" and ich.control_number
    assert ich.ack and "CONTRL" in ich.ack
    assert len(docs) == ich.document_count >= 1
    d = docs[0]
    assert d.state == State.TRANSLATED and d.stage == StageName.MATCH
    assert d.partner == "europa-components" and d.kind == "purchase_order"
    assert d.po_number == json.loads(d.canonical)["po_number"] == "EC-7781"
    assert d.edi.startswith("UNH")
    assert [(e.stage, e.outcome, e.document_id) for e in events] == [("translate", "ok", d.id)]


def test_a_second_split_of_the_same_interchange_is_refused(engine, partners):
    data = (DEMO / "acme-fasteners-810-INV-10234.x12").read_bytes()
    ich_id = _store(engine, "inv.x12", data)
    _split(engine, ich_id, partners)
    with pytest.raises(IntegrityError):
        _split(engine, ich_id, partners)
    with Session(engine) as s:
        assert len(s.exec(select(Document).where(Document.interchange_id == ich_id)).all()) == 1


def test_broken_document_fails_at_translate_naming_segment_and_element(engine, partners):
    data = (DEMO / "northwind-retail-850-NW-4480-broken.x12").read_bytes()
    ich_id = _store(engine, "nw-broken.x12", data)
    _split(engine, ich_id, partners)
    with Session(engine) as s:
        (doc,) = s.exec(select(Document).where(Document.interchange_id == ich_id)).all()
    assert doc.state == State.FAILED and doc.stage == StageName.TRANSLATE
    assert "nw-broken.x12" in doc.error and "PO1" in doc.error and doc.error_code


def test_garbage_fails_the_interchange_and_keeps_the_bytes(engine, partners):
    data = b"this is not EDI at all\n"
    ich_id = _store(engine, "junk.txt", data)
    out = _split(engine, ich_id, partners)
    assert out.failed and "junk.txt" in out.error
    with Session(engine) as s:
        assert s.get(Interchange, ich_id).state == "failed"
        assert s.get(RawPayload, ich_id).data == data


def test_envelope_duplicate_found_by_sender_receiver_control(engine, partners):
    data = (DEMO / "acme-fasteners-810-INV-10234.x12").read_bytes()
    first = _store(engine, "a.x12", data)
    _split(engine, first, partners)
    second = _store(engine, "b.x12", data.replace(b"INV-10234", b"INV-10235"))
    with transaction(engine) as s:
        ich = s.get(Interchange, second)
        split_interchange(ich, s.get(RawPayload, second).data, partners, now=utcnow())
        dup = envelope_duplicate(s, ich)
    assert dup is not None and dup.id == first


def _doc(engine, state=State.TRANSLATED, stage=StageName.MATCH) -> int:
    ich_id = _store(engine, "x", b"x")
    with transaction(engine) as s:
        d = Document(interchange_id=ich_id, position=1, standard="x12", state=state.value, stage=stage.value)
        s.add(d)
        s.flush()
        return d.id


def test_step_outcomes_move_the_document_and_write_one_event_each(engine):
    doc_id = _doc(engine)
    policy = Backoff(attempts=2, initial=10)
    now = utcnow()
    with transaction(engine) as s:
        d = s.get(Document, doc_id)
        s.add(apply_outcome(d, StageName.MATCH, Outcome.retry("Plex's supplier master is not read yet"), now=now,
                            retry=policy, actor="w1"))
    with transaction(engine) as s:
        d = s.get(Document, doc_id)
        assert (d.state, d.stage, d.attempts) == ("translated", "match", 1)
        assert d.next_attempt_at is not None and d.next_attempt_at.replace(tzinfo=now.tzinfo) >= now + timedelta(seconds=9)
        s.add(apply_outcome(d, StageName.MATCH, Outcome.retry("Plex's supplier master is not read yet"), now=now,
                            retry=policy))
    with transaction(engine) as s:
        d = s.get(Document, doc_id)
        assert (d.state, d.stage) == ("failed", "match")
        assert "gave up after 2 attempts" in d.error
        s.add(reprocess(d, [], actor="alice", reason="Plex is back"))
    with transaction(engine) as s:
        d = s.get(Document, doc_id)
        assert (d.state, d.stage, d.attempts, d.error) == ("translated", "match", 0, None)
        s.add(apply_outcome(d, StageName.MATCH, Outcome.ok(supplier_code="S-1"), now=now))
    with Session(engine) as s:
        d = s.get(Document, doc_id)
        # Matched: delivering, its route not chosen yet (the worker routes it in the same transaction).
        assert (d.state, d.stage, d.supplier_code) == ("delivering", None, "S-1")
        trail = s.exec(select(Event).where(Event.document_id == doc_id).order_by(Event.id)).all()
    assert [(e.stage, e.outcome, e.actor) for e in trail] == [
        ("match", "retry", "w1"), ("match", "fail", "gateway"), ("match", "reprocess", "alice"),
        ("match", "ok", "gateway")]
    assert json.loads(trail[2].detail)["reason"] == "Plex is back"


def _row(destination="plex", position=1, state="pending", **kw):
    return DeliveryRow(kw.pop("id", position), 1, destination, position, state, **kw)


def test_a_routed_document_is_what_its_deliveries_say():
    def derived(*rows):
        d = derive(rows)
        return d.state.value, d.stage, d.unblock

    assert derived() == ("done", None, ())  # routed nowhere
    assert derived(_row(state="blocked"), _row("anaplan", 2, "blocked")) == ("delivering", "plex", (1,))
    assert derived(_row(state="done"), _row("anaplan", 2, "blocked")) == ("delivering", "anaplan", (2,))
    assert derived(_row(state="skipped"), _row("anaplan", 2, "waiting")) == ("delivering", "anaplan", ())
    assert derived(_row(state="done"), _row("anaplan", 2, "batched")) == ("delivering", "anaplan", ())
    assert derived(_row(state="done"), _row("anaplan", 2, "skipped")) == ("done", None, ())
    failed = derive([_row(state="failed", error="Plex refused it"), _row("anaplan", 2, "blocked")])
    assert (failed.state, failed.stage, failed.error, failed.unblock) == (State.FAILED, "plex", "Plex refused it", ())
    # Two destinations at one position go side by side; the next waits for both.
    assert derived(_row(state="done"), _row("fake", 1, "pending", id=3), _row("anaplan", 2, "blocked")) == (
        "delivering", "fake", ())


def test_delivery_outcomes_count_attempts_but_not_waits():
    now = utcnow()
    retry, wait = Backoff(attempts=3, initial=2), Backoff(initial=1, maximum=4)
    row = _row(attempts=1)
    values, event = delivery_transition(row, Outcome.retry("503"), now=now, retry=retry, wait=wait)
    assert (values["state"], values["attempts"], event["outcome"], event["attempt"]) == ("pending", 2, "retry", 2)
    assert values["next_attempt_at"] == now + timedelta(seconds=4)
    values, event = delivery_transition(_row(attempts=2), Outcome.retry("503"), now=now, retry=retry, wait=wait)
    assert (values["state"], event["outcome"]) == ("failed", "fail") and "gave up after 3" in values["error"]
    values, event = delivery_transition(row, Outcome.wait(reason="model locked"), now=now, retry=retry, wait=wait)
    assert (values["state"], values["waits"], values["error"], event["attempt"]) == ("waiting", 1, "model locked", None)
    assert "attempts" not in values
    again = _row(state="waiting", waits=5)
    values, event = delivery_transition(again, Outcome.wait(reason="model locked"), now=now, retry=retry, wait=wait)
    assert event is None and values["next_attempt_at"] == now + timedelta(seconds=4)  # capped; no event per look
    values, event = delivery_transition(again, Outcome.ok(reference="ap_invoice:7"), now=now)
    assert (values["state"], values["reference"], values["waits"], event["outcome"]) == ("done", "ap_invoice:7", 0, "ok")


def test_reprocess_from_a_destination_sends_it_and_those_after_it_back(engine):
    doc_id = _doc(engine, State.FAILED, StageName.MATCH)
    now = utcnow()
    with transaction(engine) as s:
        d = s.get(Document, doc_id)
        d.stage = "anaplan"
        plex = Delivery(document_id=doc_id, destination="plex", position=1, state="done", reference="ap_invoice:1")
        anaplan = Delivery(document_id=doc_id, destination="anaplan", position=2, state="failed", attempts=3,
                           error="rejected", batch_id=None)
        s.add_all([plex, anaplan])
        s.flush()
        with pytest.raises(ValueError, match="never went to fake"):
            reprocess(d, [plex, anaplan], actor="a", reason="r", from_stage="fake", now=now)
        ev = reprocess(d, [plex, anaplan], actor="a", reason="model fixed", now=now)
        assert (d.state, d.stage, ev.stage) == ("delivering", "anaplan", "anaplan")
        assert (plex.state, plex.reference) == ("done", "ap_invoice:1")  # Plex is not posted again
        assert (anaplan.state, anaplan.attempts, anaplan.error, anaplan.next_attempt_at) == ("pending", 0, None, now)
        reprocess(d, [plex, anaplan], actor="a", reason="post again", from_stage="post", now=now)  # the old name
        assert (d.stage, plex.state, anaplan.state, plex.reference) == ("plex", "pending", "blocked", "ap_invoice:1")
        reprocess(d, [plex, anaplan], actor="a", reason="mapping fixed", from_stage="translate", now=now)
        assert (d.state, plex.state, anaplan.state) == ("received", "blocked", "blocked")
        anaplan.state = "batched"
        with pytest.raises(ValueError, match="on its way to anaplan"):
            reprocess(d, [plex, anaplan], actor="a", reason="r", now=now)


def test_attention_wait_and_reprocess_rules(engine):
    doc_id = _doc(engine)
    now = utcnow()
    with transaction(engine) as s:
        d = s.get(Document, doc_id)
        ev = apply_outcome(d, StageName.MATCH, Outcome.attention("two suppliers match", detail={"candidates": ["A", "B"]}), now=now)
        s.add(ev)
        assert (d.state, d.stage) == ("needs_attention", "match")
        ev2 = apply_outcome(d, StageName.MATCH, Outcome.wait(after=3), now=now)
        assert ev2.attempt is None and d.attempts == 0 and d.state == "translated"
        with pytest.raises(ValueError):
            reprocess(d, [], actor="bob", reason="  ")
        d.lease_owner, d.lease_until = "w9", now + timedelta(seconds=30)
        with pytest.raises(ValueError, match="being worked on"):
            reprocess(d, [], actor="bob", reason="retry", now=now)
        d.lease_owner = d.lease_until = None
        reprocess(d, [], actor="bob", reason="from the top", from_stage=StageName.TRANSLATE, now=now)
        assert (d.state, d.stage) == ("received", "translate")


def test_retranslate_picks_up_a_fixed_partner_file(engine, partners):
    data = (DEMO / "northwind-retail-850-NW-4471.x12").read_bytes()
    ich_id = _store(engine, "nw.x12", data)
    _split(engine, ich_id, partners)
    with transaction(engine) as s:
        d = s.exec(select(Document).where(Document.interchange_id == ich_id)).one()
        before = json.loads(d.canonical)
        out = retranslate(d, data, partners, source="nw.x12")
        assert out.kind == "ok" and json.loads(out.changes["canonical"]) == before
        empty = retranslate(d, data, type(partners)(), source="nw.x12")
        assert empty.kind == "ok" and json.loads(empty.changes["canonical"])["partner"] is None
        d.position = 5
        gone = retranslate(d, data, partners, source="nw.x12")
        assert gone.kind == "fail" and "set 5 is gone" in gone.error


def test_a_transaction_that_loses_a_deadlock_runs_again(engine):
    if not is_postgres(engine):
        pytest.skip("SQLite runs one writer at a time: no deadlock to lose")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE race (id int PRIMARY KEY, v int NOT NULL)"))
        conn.execute(text("INSERT INTO race VALUES (1, 0), (2, 0)"))
    both_hold_one = threading.Barrier(2)
    runs: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def update_both(first: int, second: int) -> None:
        def once() -> None:
            runs.append((first, second))
            with engine.begin() as conn:
                conn.execute(text("UPDATE race SET v = v + 1 WHERE id = :i"), {"i": first})
                if len(runs) <= 2:  # the first two runs each hold one row and want the other's
                    both_hold_one.wait(timeout=10)
                conn.execute(text("UPDATE race SET v = v + 1 WHERE id = :i"), {"i": second})
        try:
            retry_conflicts(once)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=update_both, args=pair) for pair in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # PostgreSQL broke the deadlock by rolling one back; that one ran again and both went through once.
    assert errors == [] and len(runs) == 3
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, v FROM race ORDER BY id")).all() == [(1, 2), (2, 2)]


def test_only_lost_races_are_run_again():
    calls = []

    def broken() -> None:
        calls.append(1)
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("the store is down"))

    with pytest.raises(OperationalError):
        retry_conflicts(broken)
    assert len(calls) == 1 and not is_conflict(OperationalError("SELECT 1", {}, ConnectionRefusedError()))


def test_readers_see_committed_rows_beside_a_writer_and_may_not_write(engine, partners):
    ich_id = _store(engine, "nw.x12", (DEMO / "northwind-retail-850-NW-4471.x12").read_bytes())
    writing, read_done = threading.Event(), threading.Event()
    seen: list[int] = []

    def writer() -> None:
        with transaction(engine) as s:  # holds the write lock (SQLite) until the reader is through
            s.get(Interchange, ich_id).error = "being written"
            s.flush()
            writing.set()
            read_done.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert writing.wait(10)
    try:
        with reading(engine) as s:  # on SQLite a writer's BEGIN IMMEDIATE would wait here for 30 s
            seen.append(s.get(RawPayload, ich_id).interchange_id)
            assert s.get(Interchange, ich_id).error is None  # the writer's change is not committed yet
    finally:
        read_done.set()
        t.join(10)
    assert seen == [ich_id]
    with reader(engine).connect() as conn, pytest.raises(RuntimeError, match="read-only"):
        conn.execute(Interchange.__table__.update().values(error="x"))
    with reading(engine) as s:
        assert s.get(Interchange, ich_id).error == "being written"


def test_durable_transactions_sync_the_sqlite_wal_at_commit_and_others_do_not(engine):
    if is_postgres(engine):
        pytest.skip("PostgreSQL syncs every commit (synchronous_commit)")

    def synchronous(eng) -> int:
        with transaction(eng) as s:
            return s.connection().exec_driver_sql("PRAGMA synchronous").scalar()

    assert synchronous(engine) == 1  # NORMAL: survives a crash of the process
    assert synchronous(durable(engine)) == 2  # FULL: survives a power cut (intake's commit)
    assert synchronous(engine) == 1  # the pooled connection is not left syncing


def test_insert_many_keeps_every_value_and_fills_the_defaults(engine):
    ich_id = _store(engine, "x.edi", b"ISA*")
    tricky = 'tab\there, line\nbreak, back\\slash, "quotes", \u00e9\u20ac\U0001f4e6, \\N, \\.'
    at = utcnow()
    rows = [{"interchange_id": ich_id, "stage": "translate", "outcome": "ok", "detail": tricky, "at": at,
             "duration_ms": 1.5, "attempt": None},
            {"interchange_id": ich_id, "stage": "ack", "outcome": "fail", "detail": None, "at": at,
             "duration_ms": None, "attempt": 3}]
    with engine.begin() as conn:
        insert_many(conn, Event.__table__, rows)
    with reading(engine) as s:
        got = s.exec(select(Event).where(Event.interchange_id == ich_id).order_by(Event.id)).all()
    got = [e for e in got if e.stage in ("translate", "ack")]
    assert [(e.stage, e.outcome, e.detail, e.duration_ms, e.attempt, e.actor) for e in got] == [
        ("translate", "ok", tricky, 1.5, None, "gateway"), ("ack", "fail", None, None, 3, "gateway")]
    assert all(abs((e.at.replace(tzinfo=None) - at.replace(tzinfo=None)).total_seconds()) < 1 for e in got)


def test_planned_outcomes_share_the_text_of_a_shared_detail_and_keep_their_own_additions():
    from types import SimpleNamespace

    from gateway.pipeline.machine import plan_outcomes

    now = utcnow()
    docs = [SimpleNamespace(id=n, interchange_id=7, attempts=a) for n, a in ((1, 0), (2, 0), (3, 0), (4, 1))]
    done = Outcome.ok({"anaplan": {"batch": 3, "rows": 2}})
    again = Outcome.retry("Plex is down", code="plex.unavailable", detail={"plex": "503"})
    planned = plan_outcomes([(d, StageName.MATCH, done, None) for d in docs[:2]]
                            + [(d, StageName.MATCH, again, 1.0) for d in docs[2:]], actor="t", now=now,
                            retry=Backoff(attempts=2, initial=1.0, maximum=1.0))
    [e1], [e2], [e3], [e4] = (planned[n][1] for n in (1, 2, 3, 4))
    assert [json.loads(e["detail"]) for e in (e1, e2)] == [{"anaplan": {"batch": 3, "rows": 2}}] * 2
    assert e1["detail"] is e2["detail"]  # one text for both
    # The retry adds what each document's attempt made of it: its own text (the second gave up).
    assert json.loads(e3["detail"]) == {"plex": "503", "error": "Plex is down", "code": "plex.unavailable",
                                        "next_attempt_in_s": 1.0}
    assert json.loads(e4["detail"])["gave_up_after"] == 2
    assert [planned[n][0].state for n in (1, 2, 3, 4)] == ["delivering", "delivering", "translated", "failed"]


def test_sqlite_writers_wait_their_turn_and_a_lock_never_given_back_ends_in_database_is_locked(tmp_path):
    import subprocess
    import sys
    import time as clock

    from gateway.store.db import make_engine

    path = tmp_path / "q.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v INT)"))
    # Another process holds the write lock for half a second: our writer waits for it (BEGIN
    # IMMEDIATE, SQLite's busy handler), then goes, rather than failing.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
         " c.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(0.5); c.execute('COMMIT')",
         str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = clock.monotonic()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    waited = clock.monotonic() - started
    holder.wait(10)
    assert 0.2 < waited < 5.0
    # A reader does not wait for a writer: it reads the last committed snapshot.
    blocker = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
         " c.execute('BEGIN IMMEDIATE'); c.execute('INSERT INTO t VALUES (9)'); print('held', flush=True);"
         " time.sleep(2); c.execute('ROLLBACK')", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout.readline().strip() == "held"
        with reading(engine) as s:
            assert s.connection().execute(text("SELECT v FROM t")).scalars().all() == [1]
        # A turn never given back within the lock timeout ends in the store's usual "database is locked".
        slow = make_engine(f"sqlite:///{path}", lock_timeout=0.2)
        with pytest.raises(OperationalError, match="database is locked"), slow.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (5)"))
    finally:
        blocker.wait(10)
