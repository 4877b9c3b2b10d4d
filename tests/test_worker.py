"""Workers: splitting, stages, retries, leases — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import Session, func, select

from gateway.operations import force_duplicate, reprocess_documents
from gateway.pipeline.machine import Outcome, StageName, State
from gateway.pipeline.worker import Worker, describe_exception, is_transient
from gateway.store import Document, Event, Interchange, utcnow
from tests.pipeline_fixtures import make_runtime, store_payload, x12_850


@pytest.fixture
def runtime(store_url, tmp_path):
    rt = make_runtime(store_url, tmp_path)
    yield rt
    rt.engine.dispose()


def _docs(engine, ich_id=None):
    with Session(engine) as s:
        stmt = select(Document).order_by(Document.id)
        if ich_id is not None:
            stmt = stmt.where(Document.interchange_id == ich_id)
        return s.exec(stmt).all()


def _events(engine, **where):
    with Session(engine) as s:
        stmt = select(Event).order_by(Event.id)
        for k, v in where.items():
            stmt = stmt.where(getattr(Event, k) == v)
        return s.exec(stmt).all()


def _ich(engine, ich_id):
    with Session(engine) as s:
        return s.get(Interchange, ich_id)


def test_an_interchange_is_split_once_into_one_document_per_set(runtime):
    ich_id = store_payload(runtime.engine, x12_850(101, ["PO-1", "PO-2", "PO-3"]), "three.x12")
    a, b = Worker(runtime, stages={}, name="a"), Worker(runtime, stages={}, name="b")
    assert a.run_until_idle().split == 1
    assert b.run_until_idle().split == 0  # nothing left: the split is not redone
    docs = _docs(runtime.engine, ich_id)
    assert [(d.position, d.po_number, d.state, d.stage) for d in docs] == [
        (1, "PO-1", "translated", "match"), (2, "PO-2", "translated", "match"), (3, "PO-3", "translated", "match")]
    assert all(d.partner == "northwind-retail" and d.lease_owner is None for d in docs)
    ich = _ich(runtime.engine, ich_id)
    assert (ich.state, ich.document_count, ich.control_number, ich.lease_owner) == ("split", 3, "000000101", None)
    assert ich.ack_kind == "997" and ich.ack.startswith("ISA") and "AK1*PO*101" in ich.ack
    trail = _events(runtime.engine, interchange_id=ich_id)
    assert sorted((e.document_id is None, e.stage, e.outcome) for e in trail) == [
        (False, "translate", "ok")] * 3 + [(True, "translate", "ok")]
    assert json.loads(trail[-1].detail)["documents"] == 3 and trail[-1].actor == "a"


def test_envelope_duplicate_is_recorded_not_split_and_can_be_forced(runtime):
    first = store_payload(runtime.engine, x12_850(202, ["PO-9"]), "first.x12")
    # Same sender, receiver and control number; different bytes (so intake could not tell).
    second = store_payload(runtime.engine, x12_850(202, ["PO-9", "PO-10"]), "again.x12")
    Worker(runtime, stages={}).run_until_idle()
    assert _ich(runtime.engine, first).state == "split"
    dup = _ich(runtime.engine, second)
    assert (dup.state, dup.duplicate_of, dup.document_count) == ("duplicate", first, 0)
    assert "duplicate of interchange" in dup.error and "000000202" in dup.error
    assert _docs(runtime.engine, second) == []
    assert [e.outcome for e in _events(runtime.engine, interchange_id=second)] == ["duplicate"]

    force_duplicate(runtime.engine, second, actor="olga", reason="partner re-sent with a new PO on purpose")
    Worker(runtime, stages={}).run_until_idle()
    forced = _ich(runtime.engine, second)
    assert (forced.state, forced.forced, forced.document_count) == ("split", True, 2)
    assert [d.po_number for d in _docs(runtime.engine, second)] == ["PO-9", "PO-10"]
    ev = [e for e in _events(runtime.engine, interchange_id=second) if e.outcome == "forced"]
    assert ev and ev[0].actor == "olga" and "on purpose" in json.loads(ev[0].detail)["reason"]


def test_a_broken_sibling_does_not_stop_the_good_documents(runtime):
    ich_id = store_payload(runtime.engine, x12_850(303, ["OK-1", "BAD-2", "OK-3"], broken=(2,)), "mixed.x12")
    seen = []
    Worker(runtime, stages={StageName.MATCH: lambda d, rt: seen.append(d.po_number) or Outcome.ok()}).run_until_idle()
    docs = _docs(runtime.engine, ich_id)
    assert [(d.po_number, d.state) for d in docs] == [("OK-1", "matched"), ("BAD-2", "failed"), ("OK-3", "matched")]
    bad = docs[1]
    assert bad.stage == "translate" and "mixed.x12" in bad.error and "PO1" in bad.error
    assert bad.error_code == "element.invalid_number"
    assert sorted(seen) == ["OK-1", "OK-3"]
    assert _ich(runtime.engine, ich_id).state == "split"


def test_garbage_fails_the_interchange_with_a_reason(runtime):
    ich_id = store_payload(runtime.engine, b"hello, this is not EDI\n", "junk.txt")
    Worker(runtime, stages={}).run_until_idle()
    ich = _ich(runtime.engine, ich_id)
    assert ich.state == "failed" and "junk.txt" in ich.error and ich.lease_owner is None
    assert [e.outcome for e in _events(runtime.engine, interchange_id=ich_id)] == ["fail"]


def test_stages_run_in_order_and_outcomes_are_applied_with_one_event_each(runtime):
    store_payload(runtime.engine, x12_850(404, [f"PO-{n}" for n in range(1, 8)]), "seven.x12")
    calls = {"match": 0, "post": 0}

    def match(doc, rt):
        calls["match"] += 1
        assert rt is runtime and json.loads(doc.canonical)["po_number"] == doc.po_number
        return Outcome.ok({"supplier": "S-1"}, supplier_code="S-1")

    def post(docs, rt):
        calls["post"] += 1
        return {d.id: Outcome.ok(plex_key=f"PK-{d.po_number}") for d in docs}

    post.batch = True
    w = Worker(runtime, stages={StageName.MATCH: match, StageName.POST: post})
    w.run_until_idle()
    docs = _docs(runtime.engine)
    assert [(d.state, d.stage, d.supplier_code) for d in docs] == [("posted", "forward", "S-1")] * 7
    assert [d.plex_key for d in docs] == [f"PK-PO-{n}" for n in range(1, 8)]
    assert calls == {"match": 7, "post": 1}  # the batch stage saw all seven at once
    for d in docs:
        trail = _events(runtime.engine, document_id=d.id)
        assert [(e.stage, e.outcome) for e in trail] == [("translate", "ok"), ("match", "ok"), ("post", "ok")]
        assert all(e.duration_ms is not None for e in trail)


def test_a_claim_runs_match_post_forward_and_confirm_in_turn_and_stops_at_a_wait(runtime):
    store_payload(runtime.engine, x12_850(405, ["PO-1", "PO-2", "PO-3"]), "three.x12")
    seen: dict[str, list] = {"post": [], "forward": [], "confirm": []}
    running = {"import": True}

    def post(docs, rt):
        seen["post"] += [(d.state, d.supplier_code) for d in docs]  # the match's changes are visible
        return {d.id: Outcome.ok(plex_key=f"PK-{d.id}") for d in docs}

    def forward(docs, rt):
        seen["forward"] += [(d.state, d.plex_key == f"PK-{d.id}") for d in docs]
        return {d.id: Outcome.ok() for d in docs}

    def confirm(docs, rt):
        seen["confirm"] += [d.state for d in docs]
        return {d.id: Outcome.wait(0.01) if running["import"] else Outcome.ok() for d in docs}

    post.batch = forward.batch = confirm.batch = True
    w = Worker(runtime, stages={StageName.MATCH: lambda d, rt: Outcome.ok(supplier_code="S-1"),
                                StageName.POST: post, StageName.FORWARD: forward, StageName.CONFIRM: confirm})
    w.split_interchanges()
    report = w.run_once()
    # One claim of three documents, four stages each; confirm's "still running" ends the chain.
    assert (report.processed, report.applied) == (3, 12)
    assert seen == {"post": [("matched", "S-1")] * 3, "forward": [("posted", True)] * 3,
                    "confirm": ["forwarded"] * 3}
    docs = _docs(runtime.engine)
    assert [(d.state, d.stage, d.lease_owner) for d in docs] == [("forwarded", "confirm", None)] * 3
    for d in docs:
        assert [e.stage for e in _events(runtime.engine, document_id=d.id)] == [
            "translate", "match", "post", "forward", "confirm"]
    running["import"] = False
    time.sleep(0.05)
    w.run_until_idle()
    assert len(seen["confirm"]) == 6 and {d.state for d in _docs(runtime.engine)} == {"done"}


def test_a_stage_settles_in_the_transaction_that_stores_its_outcomes(runtime):
    store_payload(runtime.engine, x12_850(407, ["PO-1", "PO-2"]))
    settled = []

    def match(docs, rt):
        return {d.id: Outcome.wait(60) for d in docs}

    def settle(conn, ids, now):  # sees its own outcomes, not yet committed, and may correct them
        rows = conn.execute(text("SELECT id, state FROM documents ORDER BY id")).all()
        settled.append((sorted(ids), [r.state for r in rows]))
        conn.execute(text("UPDATE documents SET next_attempt_at = NULL"))

    match.batch, match.settle = True, settle
    w = Worker(runtime, stages={StageName.MATCH: match})
    w.split_interchanges()
    w.run_once()
    assert settled == [([d.id for d in _docs(runtime.engine)], ["translated", "translated"])]
    assert [d.next_attempt_at for d in _docs(runtime.engine)] == [None, None]
    assert w.run_once().processed == 2  # due at once, as the settle said


def test_outcomes_whose_transaction_lost_a_race_are_stored_on_the_next_try(runtime, monkeypatch):
    import psycopg.errors
    from sqlalchemy.exc import OperationalError

    store_payload(runtime.engine, x12_850(408, ["PO-1", "PO-2"]))
    w = Worker(runtime, stages={StageName.MATCH: lambda d, rt: Outcome.ok(supplier_code="S-1")})
    w.split_interchanges()
    store_them, lost_races = Worker._apply_all, []

    def lose_the_first_race(self, results):
        if not lost_races:
            lost_races.append(len(results))
            raise OperationalError("UPDATE documents ...", {}, psycopg.errors.DeadlockDetected("deadlock detected"))
        return store_them(self, results)

    monkeypatch.setattr(Worker, "_apply_all", lose_the_first_race)
    report = w.run_once()
    # Run again at once — not left leased as if the store were down.
    assert lost_races == [2] and report.applied == 2
    assert {(d.state, d.supplier_code, d.lease_owner) for d in _docs(runtime.engine)} == {("matched", "S-1", None)}


def test_a_chain_that_cannot_be_stored_keeps_its_first_stage(runtime):
    store_payload(runtime.engine, x12_850(406, ["PO-1", "PO-2"]))
    w = Worker(runtime, stages={StageName.MATCH: lambda d, rt: Outcome.ok(supplier_code="S-1"),
                                StageName.POST: lambda d, rt: Outcome.ok(no_such_column="x")})
    w.split_interchanges()
    w.run_once()
    docs = _docs(runtime.engine)
    assert [(d.state, d.supplier_code, d.lease_owner) for d in docs] == [("matched", "S-1", None)] * 2
    assert [e.stage for e in _events(runtime.engine, document_id=docs[0].id)] == ["translate", "match"]
    w.run_once()  # post alone now: its outcome cannot be stored, so the document fails at post saying why
    docs = _docs(runtime.engine)
    assert [(d.state, d.stage) for d in docs] == [("failed", "post")] * 2
    assert "could not be stored" in docs[0].error and "no_such_column" in docs[0].error


class Flaky(Exception):
    transient = True


@pytest.mark.parametrize("fault", [TimeoutError("Plex took too long"), httpx.ConnectError("connection refused"),
                                   Flaky("model locked")])
def test_transient_faults_are_retried_then_fail_after_the_limit(runtime, fault):
    store_payload(runtime.engine, x12_850(505, ["PO-1"]))
    tries = []

    def stage(doc, rt):
        tries.append(doc.attempts)
        raise fault

    Worker(runtime, stages={StageName.MATCH: stage}).run_until_idle()  # backoff 0 s: all tries now
    (doc,) = _docs(runtime.engine)
    assert tries == [0, 1, 2]  # max_attempts = 3
    assert (doc.state, doc.stage, doc.attempts) == ("failed", "match", 3)
    assert "gave up after 3 attempts" in doc.error and type(fault).__name__ in doc.error
    assert "Traceback" not in doc.error and "\n" not in doc.error
    assert [e.outcome for e in _events(runtime.engine, document_id=doc.id)] == ["ok", "retry", "retry", "fail"]


def test_retry_waits_for_its_backoff(store_url, tmp_path):
    rt = make_runtime(store_url, tmp_path, backoff_initial=30.0, max_attempts=5)
    store_payload(rt.engine, x12_850(506, ["PO-1"]))
    now = [utcnow()]
    tries = []

    def stage(doc, _):
        tries.append(now[0])
        raise TimeoutError("slow")

    w = Worker(rt, stages={StageName.MATCH: stage}, clock=lambda: now[0])
    w.run_until_idle()
    assert len(tries) == 1
    (doc,) = _docs(rt.engine)
    assert (doc.state, doc.attempts, doc.error) == ("translated", 1, "TimeoutError: slow")
    now[0] += timedelta(seconds=29)
    w.run_until_idle()
    assert len(tries) == 1  # not due yet
    now[0] += timedelta(seconds=2)
    w.run_until_idle()
    assert len(tries) == 2
    rt.engine.dispose()


def test_a_permanent_fault_fails_at_once_with_one_line(runtime):
    store_payload(runtime.engine, x12_850(507, ["PO-1", "PO-2"]))

    def stage(doc, _):
        if doc.po_number == "PO-1":
            raise KeyError("supplier_code\nsecond line")
        return Outcome.ok()

    Worker(runtime, stages={StageName.MATCH: stage}).run_until_idle()
    one, two = _docs(runtime.engine)
    assert (one.state, one.stage, one.attempts) == ("failed", "match", 1)
    assert one.error == "the match stage failed: KeyError: 'supplier_code\\nsecond line'"
    assert two.state == "matched"


def test_a_crashed_workers_claim_is_taken_over_and_its_late_outcome_dropped(runtime):
    store_payload(runtime.engine, x12_850(606, ["PO-1", "PO-2"]))
    Worker(runtime, stages={}).run_until_idle()
    now = utcnow()
    stale = Worker(runtime, stages={StageName.MATCH: lambda d, rt: Outcome.fail("stale says no")}, name="stale",
                   clock=lambda: now)
    claimed = stale.claim_documents()
    assert len(claimed) == 2
    # While the lease holds, nobody else gets them.
    other = Worker(runtime, stages={StageName.MATCH: lambda d, rt: Outcome.ok()}, name="fresh",
                   clock=lambda: now + timedelta(seconds=30))
    assert other.claim_documents() == []
    # The stale worker "hangs"; its lease (60 s) runs out and the fresh worker takes over.
    other.clock = lambda: now + timedelta(seconds=61)
    assert other.run_until_idle().applied == 2
    results, pending = stale.run_stages(claimed)
    assert pending == [] and len(results) == 2
    assert stale.apply(results) == (0, 2)  # applied nothing: both outcomes dropped
    docs = _docs(runtime.engine)
    assert [d.state for d in docs] == ["matched", "matched"]
    assert all(e.actor != "stale" for e in _events(runtime.engine))


def test_an_expired_interchange_claim_is_taken_over(runtime):
    ich_id = store_payload(runtime.engine, x12_850(607, ["PO-1"]))
    now = utcnow()
    crashed = Worker(runtime, stages={}, name="crashed", clock=lambda: now)
    assert [i.id for i in crashed._claim(Interchange, [Interchange.state == "received"], 5)] == [ich_id]
    later = Worker(runtime, stages={}, name="later", clock=lambda: now + timedelta(seconds=5))
    assert later.split_interchanges() == 0  # still leased
    later.clock = lambda: now + timedelta(seconds=61)
    assert later.split_interchanges() == 1
    assert _ich(runtime.engine, ich_id).state == "split" and len(_docs(runtime.engine)) == 1


def test_stop_mid_batch_gives_unprocessed_documents_back(runtime):
    store_payload(runtime.engine, x12_850(608, [f"PO-{n}" for n in range(1, 6)]))
    stop = threading.Event()
    ran = []

    def stage(doc, _):
        ran.append(doc.id)
        stop.set()  # SIGTERM arrives while the first document is at Plex
        return Outcome.ok()

    w = Worker(runtime, stages={StageName.MATCH: stage}, stop_event=stop)
    w.split_interchanges()
    w.run(stop)
    docs = _docs(runtime.engine)
    assert len(ran) == 1
    assert [d.state for d in docs] == ["matched"] + ["translated"] * 4
    assert all(d.lease_owner is None and d.lease_until is None for d in docs)


def test_reprocess_from_translate_rereads_the_raw_bytes(runtime):
    ich_id = store_payload(runtime.engine, x12_850(609, ["PO-1", "PO-2"], broken=(2,)))
    w = Worker(runtime, stages={})
    w.run_until_idle()
    docs = _docs(runtime.engine, ich_id)
    assert [d.state for d in docs] == ["translated", "failed"]
    report = reprocess_documents(runtime.engine, [d.id for d in docs], actor="ops", reason="mapping fixed",
                                 from_stage=StageName.TRANSLATE)
    assert report.done == 2
    w.run_until_idle()
    again = _docs(runtime.engine, ich_id)
    # The raw bytes did not change: the good one translates again, the broken one fails again.
    assert [(d.state, d.stage) for d in again] == [("translated", "match"), ("failed", "translate")]
    assert "PO1" in again[1].error
    trail = [(e.stage, e.outcome) for e in _events(runtime.engine, document_id=again[0].id)]
    assert trail == [("translate", "ok"), ("translate", "reprocess"), ("translate", "ok")]


def test_stage_outcomes_that_are_too_long_for_a_column_do_not_block_the_batch(runtime):
    store_payload(runtime.engine, x12_850(610, ["PO-1", "PO-2"]))
    Worker(runtime, stages={StageName.MATCH: lambda d, rt: Outcome.ok(supplier_code="S" * 500)}).run_until_idle()
    docs = _docs(runtime.engine)
    assert [(d.state, len(d.supplier_code)) for d in docs] == [("matched", 100)] * 2


def test_fault_classification():
    assert is_transient(TimeoutError()) and is_transient(httpx.ReadTimeout("x")) and is_transient(Flaky())
    assert not is_transient(ValueError("bad")) and not is_transient(KeyError("k"))
    line = describe_exception(RuntimeError("cannot reach postgresql://gw:hunter2@db/gw\n  at line 3"))
    assert line == "RuntimeError: cannot reach postgresql://gw:***@db/gw at line 3"


def test_no_registered_stage_leaves_documents_waiting(runtime):
    store_payload(runtime.engine, x12_850(611, ["PO-1"]))
    w = Worker(runtime, stages={})
    w.run_until_idle()
    assert w.claim_documents() == []
    with Session(runtime.engine) as s:
        assert s.exec(select(func.count()).select_from(Document).where(Document.state == State.TRANSLATED)).one() == 1


def test_an_overlong_po_number_does_not_stop_the_split(runtime):
    ich_id = store_payload(runtime.engine, x12_850(612, ["X" * 150, "PO-2"]))
    Worker(runtime, stages={}).run_until_idle()
    docs = _docs(runtime.engine, ich_id)
    assert _ich(runtime.engine, ich_id).state == "split" and len(docs) == 2
    assert len(docs[0].po_number) == 100 and docs[1].po_number == "PO-2"


def test_partner_files_are_looked_for_at_most_once_a_second_and_at_once_after_an_activation(store_url, tmp_path):
    import shutil

    from tests.pipeline_fixtures import PARTNERS

    folder = tmp_path / "partners"
    shutil.copytree(PARTNERS, folder)
    rt = make_runtime(store_url, tmp_path)
    rt.settings.partners_dir = folder
    clock = [100.0]
    rt.monotonic = lambda: clock[0]
    assert rt.partners().get("northwind-retail").name == "Northwind Retail Group"
    path = folder / "northwind-retail.yaml"
    path.write_text(path.read_text().replace("name: Northwind Retail Group", "name: Northwind Retail West"))
    clock[0] += 0.5
    assert rt.partners().get("northwind-retail").name == "Northwind Retail Group"  # not looked for yet
    clock[0] += 0.6
    assert rt.partners().get("northwind-retail").name == "Northwind Retail West"
    path.write_text(path.read_text().replace("Retail West", "Retail East"))
    rt.partners_changed()
    assert rt.partners().get("northwind-retail").name == "Northwind Retail East"


def test_an_idle_cycle_writes_nothing(runtime):
    from sqlalchemy import event

    w = Worker(runtime, stages={StageName.MATCH: lambda d, rt: Outcome.ok(supplier_code="S-1")})
    store_payload(runtime.engine, x12_850(409, ["PO-1"]))
    assert w.run_until_idle().processed == 1  # split, then matched
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(" ".join(statement.split()[:2]).upper())

    event.listen(runtime.engine, "before_cursor_execute", seen)
    try:
        report = w.run_once()
    finally:
        event.remove(runtime.engine, "before_cursor_execute", seen)
    # Nothing to split or to claim: looked for through a reader, no lock taken, nothing written.
    assert not report.busy
    assert statements and not [s for s in statements if s.startswith(("UPDATE", "INSERT", "DELETE", "BEGIN IMMEDIATE"))]
