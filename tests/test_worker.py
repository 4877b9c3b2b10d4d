"""Workers: splitting, document steps, deliveries, retries, waits, leases — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import httpx
import pytest
from sqlmodel import Session, select

from gateway.integrations.base import Outcome
from gateway.operations import force_duplicate, reprocess_documents
from gateway.pipeline.machine import StageName
from gateway.pipeline.wiring import Pipeline
from gateway.pipeline.worker import Worker
from gateway.pipeline.worker import describe_exception, is_transient
from gateway.store import Delivery, Document, Event, Interchange, utcnow
from tests.pipeline_fixtures import FakeDestination, make_runtime, matched, pipeline, store_payload, x12_850


def W(runtime, *, match=None, batch=False, destinations=(), **kw) -> Worker:  # noqa: N802 - reads as a constructor
    """A worker with this match step (none: documents wait at translated — a step that holds them)
    and these destinations."""
    if match is None:
        match = _hold
    return Worker(runtime, pipeline=pipeline(match=match, batch=batch, destinations=destinations), **kw)


def _hold(doc, rt):
    return Outcome.wait(3600)


def _deliveries(engine, doc_id):
    with Session(engine) as s:
        return {d.destination: d for d in s.exec(select(Delivery).where(Delivery.document_id == doc_id)).all()}


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
    a, b = W(runtime, name="a"), W(runtime, name="b")
    assert a.split_interchanges() == 1
    assert b.split_interchanges() == 0  # nothing left: the split is not redone
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
    W(runtime).split_interchanges()
    assert _ich(runtime.engine, first).state == "split"
    dup = _ich(runtime.engine, second)
    assert (dup.state, dup.duplicate_of, dup.document_count) == ("duplicate", first, 0)
    assert "duplicate of interchange" in dup.error and "000000202" in dup.error
    assert _docs(runtime.engine, second) == []
    assert [e.outcome for e in _events(runtime.engine, interchange_id=second)] == ["duplicate"]

    force_duplicate(runtime.engine, second, actor="olga", reason="partner re-sent with a new PO on purpose")
    W(runtime).split_interchanges()
    forced = _ich(runtime.engine, second)
    assert (forced.state, forced.forced, forced.document_count) == ("split", True, 2)
    assert [d.po_number for d in _docs(runtime.engine, second)] == ["PO-9", "PO-10"]
    ev = [e for e in _events(runtime.engine, interchange_id=second) if e.outcome == "forced"]
    assert ev and ev[0].actor == "olga" and "on purpose" in json.loads(ev[0].detail)["reason"]


def test_a_broken_sibling_does_not_stop_the_good_documents(runtime):
    ich_id = store_payload(runtime.engine, x12_850(303, ["OK-1", "BAD-2", "OK-3"], broken=(2,)), "mixed.x12")
    seen = []
    W(runtime, match=lambda d, rt: seen.append(d.po_number) or Outcome.ok()).run_until_idle()
    docs = _docs(runtime.engine, ich_id)
    # Matched, and with no destination configured, delivered nowhere: done.
    assert [(d.po_number, d.state) for d in docs] == [("OK-1", "done"), ("BAD-2", "failed"), ("OK-3", "done")]
    bad = docs[1]
    assert bad.stage == "translate" and "mixed.x12" in bad.error and "PO1" in bad.error
    assert bad.error_code == "element.invalid_number"
    assert sorted(seen) == ["OK-1", "OK-3"]
    assert _ich(runtime.engine, ich_id).state == "split"


def test_garbage_fails_the_interchange_with_a_reason(runtime):
    ich_id = store_payload(runtime.engine, b"hello, this is not EDI\n", "junk.txt")
    W(runtime).split_interchanges()
    ich = _ich(runtime.engine, ich_id)
    assert ich.state == "failed" and "junk.txt" in ich.error and ich.lease_owner is None
    assert [e.outcome for e in _events(runtime.engine, interchange_id=ich_id)] == ["fail"]


def test_steps_and_deliveries_run_in_order_with_one_event_each(runtime):
    store_payload(runtime.engine, x12_850(404, [f"PO-{n}" for n in range(1, 8)]), "seven.x12")
    calls = {"match": 0}

    def match(doc, rt):
        calls["match"] += 1
        assert rt is runtime and json.loads(doc.canonical)["po_number"] == doc.po_number
        return Outcome.ok({"supplier": "S-1"}, supplier_code="S-1")

    plex = FakeDestination("plex", lambda items: {i.delivery_id: Outcome.ok(reference=f"PK-{i.canonical['po_number']}")
                                                  for i in items}, batch=True)
    W(runtime, match=match, destinations=[plex]).run_until_idle()
    docs = _docs(runtime.engine)
    assert [(d.state, d.stage, d.supplier_code) for d in docs] == [("done", None, "S-1")] * 7
    assert [_deliveries(runtime.engine, d.id)["plex"].reference for d in docs] == [f"PK-PO-{n}" for n in range(1, 8)]
    assert calls["match"] == 7 and len(plex.calls) == 1  # the destination saw all seven at once
    assert {i.supplier_code for i in plex.calls[0]} == {"S-1"}  # the match's changes reach the destination
    for d in docs:
        trail = _events(runtime.engine, document_id=d.id)
        assert [(e.stage, e.outcome) for e in trail] == [("translate", "ok"), ("match", "ok"), ("plex", "ok")]
        assert all(e.duration_ms is not None for e in trail)


def test_deliveries_go_in_their_order_and_a_wait_writes_one_event_when_it_starts_and_one_when_it_ends(runtime):
    store_payload(runtime.engine, x12_850(405, ["PO-1", "PO-2", "PO-3"]), "three.x12")
    running = {"import": True}
    seen: dict[str, list] = {"plex": [], "anaplan": []}

    def plex(item):
        seen["plex"].append(item.references)
        return Outcome.ok(reference=f"PK-{item.document_id}")

    def anaplan(item):
        seen["anaplan"].append(dict(item.references))
        if running["import"]:
            return Outcome.wait(0.01, reason="model locked", code="anaplan.busy")
        return Outcome.ok(reference="batch 1")

    w = W(runtime, match=matched, destinations=[FakeDestination("plex", plex), FakeDestination("anaplan", anaplan)])
    w.split_interchanges()
    report = w.run_once()
    # One cycle: the three matched and routed, then their Plex deliveries; Anaplan's come next.
    assert (report.processed, report.delivered) == (3, 3)
    docs = _docs(runtime.engine)
    assert [(d.state, d.stage) for d in docs] == [("delivering", "anaplan")] * 3
    assert seen["plex"] == [{}] * 3
    for _ in range(5):  # waiting: looked at again and again, no attempt used, no event per look
        time.sleep(0.02)
        w.run_once()
    went = _deliveries(runtime.engine, docs[0].id)
    assert (went["anaplan"].state, went["anaplan"].attempts, went["anaplan"].error) == ("waiting", 0, "model locked")
    assert went["anaplan"].waits >= 3
    assert seen["anaplan"][0] == {"plex": f"PK-{docs[0].id}"}  # the Plex reference goes on to Anaplan
    running["import"] = False
    time.sleep(0.05)
    w.run_until_idle()
    for d in _docs(runtime.engine):
        assert (d.state, d.stage) == ("done", None)
        assert [(e.stage, e.outcome) for e in _events(runtime.engine, document_id=d.id)] == [
            ("translate", "ok"), ("match", "ok"), ("plex", "ok"), ("anaplan", "wait"), ("anaplan", "ok")]
        assert [(x.position, x.state) for x in sorted(_deliveries(runtime.engine, d.id).values(),
                                                      key=lambda x: x.position)] == [(1, "done"), (2, "done")]


def test_waits_grow_from_one_second_to_the_cap_and_use_no_attempt(store_url, tmp_path):
    rt = make_runtime(store_url, tmp_path, wait_max_seconds=5.0)
    store_payload(rt.engine, x12_850(406, ["PO-1"]))
    now = [utcnow()]
    w = W(rt, match=matched, destinations=[FakeDestination("plex", lambda i: Outcome.wait(reason="Plex busy"))],
          clock=lambda: now[0])
    w.run_until_idle()
    (doc,) = _docs(rt.engine)
    gaps = []
    for _ in range(6):
        d = _deliveries(rt.engine, doc.id)["plex"]
        due = d.next_attempt_at if d.next_attempt_at.tzinfo else d.next_attempt_at.replace(tzinfo=now[0].tzinfo)
        gaps.append(round((due - now[0]).total_seconds(), 1))
        now[0] = due + timedelta(milliseconds=1)
        w.run_until_idle()
    d = _deliveries(rt.engine, doc.id)["plex"]
    assert gaps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert (d.state, d.attempts, d.waits) == ("waiting", 0, 7)
    assert [e.outcome for e in _events(rt.engine, document_id=doc.id)] == ["ok", "ok", "wait"]
    rt.engine.dispose()


def test_outcomes_whose_transaction_lost_a_race_are_stored_on_the_next_try(runtime, monkeypatch):
    import psycopg.errors
    from sqlalchemy.exc import OperationalError

    store_payload(runtime.engine, x12_850(408, ["PO-1", "PO-2"]))
    w = W(runtime, match=lambda d, rt: Outcome.ok(supplier_code="S-1"))
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
    assert {(d.state, d.supplier_code, d.lease_owner) for d in _docs(runtime.engine)} == {("done", "S-1", None)}


def test_an_outcome_that_cannot_be_stored_fails_its_document_saying_why(runtime):
    store_payload(runtime.engine, x12_850(406, ["PO-1", "PO-2"]))
    w = W(runtime, match=lambda d, rt: Outcome.ok(no_such_column="x") if d.po_number == "PO-1"
          else Outcome.ok(supplier_code="S-1"))
    w.split_interchanges()
    w.run_once()
    one, two = _docs(runtime.engine)
    # The other document of the claim is stored; this one fails at match saying why.
    assert (two.state, two.supplier_code, two.lease_owner) == ("done", "S-1", None)
    assert (one.state, one.stage) == ("failed", "match")
    assert "could not be stored" in one.error and "no_such_column" in one.error


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

    W(runtime, match=stage).run_until_idle()  # backoff 0 s: all tries now
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

    w = W(rt, match=stage, clock=lambda: now[0])
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

    W(runtime, match=stage).run_until_idle()
    one, two = _docs(runtime.engine)
    assert (one.state, one.stage, one.attempts) == ("failed", "match", 1)
    assert one.error == "match failed: KeyError: 'supplier_code\\nsecond line'"
    assert two.state == "done"


def test_a_crashed_workers_claim_is_taken_over_and_its_late_outcome_dropped(runtime):
    store_payload(runtime.engine, x12_850(606, ["PO-1", "PO-2"]))
    W(runtime).split_interchanges()
    now = utcnow()
    stale = W(runtime, match=lambda d, rt: Outcome.fail("stale says no"), name="stale", clock=lambda: now)
    claimed = stale.claim_documents()
    assert len(claimed) == 2
    # While the lease holds, nobody else gets them.
    other = W(runtime, match=lambda d, rt: Outcome.ok(), name="fresh", clock=lambda: now + timedelta(seconds=30))
    assert other.claim_documents() == []
    # The stale worker "hangs"; its lease (60 s) runs out and the fresh worker takes over.
    other.clock = lambda: now + timedelta(seconds=61)
    assert other.run_until_idle().applied == 2
    results, pending = stale.run_stages(claimed)
    assert pending == [] and len(results) == 2
    assert stale.apply(results) == (0, 2)  # applied nothing: both outcomes dropped
    docs = _docs(runtime.engine)
    assert [d.state for d in docs] == ["done", "done"]
    assert all(e.actor != "stale" for e in _events(runtime.engine))


def test_an_expired_interchange_claim_is_taken_over(runtime):
    ich_id = store_payload(runtime.engine, x12_850(607, ["PO-1"]))
    now = utcnow()
    crashed = W(runtime, name="crashed", clock=lambda: now)
    assert [i.id for i in crashed._claim(Interchange, [Interchange.state == "received"], 5)] == [ich_id]
    later = W(runtime, name="later", clock=lambda: now + timedelta(seconds=5))
    assert later.split_interchanges() == 0  # still leased
    later.clock = lambda: now + timedelta(seconds=61)
    assert later.split_interchanges() == 1
    assert _ich(runtime.engine, ich_id).state == "split" and len(_docs(runtime.engine)) == 1


def test_stop_mid_cycle_stores_what_ran_and_gives_the_rest_back(runtime):
    store_payload(runtime.engine, x12_850(608, [f"PO-{n}" for n in range(1, 6)]))
    stop = threading.Event()
    plex = FakeDestination("plex", lambda i: Outcome.ok(reference="P"))

    def match(docs, _):
        stop.set()  # SIGTERM arrives while the claim is being matched
        return {d.id: Outcome.ok(supplier_code="S-1") for d in docs}

    w = W(runtime, match=match, batch=True, destinations=[plex], stop_event=stop)
    w.split_interchanges()
    w.run(stop)
    docs = _docs(runtime.engine)
    # The claim's outcomes are stored (routed to Plex); its deliveries are left for the next worker.
    assert [(d.state, d.stage) for d in docs] == [("delivering", "plex")] * 5 and plex.calls == []
    assert all(d.lease_owner is None and d.lease_until is None for d in docs)
    for d in docs:
        (went,) = _deliveries(runtime.engine, d.id).values()
        assert (went.state, went.lease_owner) == ("pending", None)


def test_reprocess_from_translate_rereads_the_raw_bytes(runtime):
    ich_id = store_payload(runtime.engine, x12_850(609, ["PO-1", "PO-2"], broken=(2,)))
    w = W(runtime)
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
    assert trail == [("translate", "ok"), ("match", "wait"), ("translate", "reprocess"), ("translate", "ok"),
                     ("match", "wait")]


def test_stage_outcomes_that_are_too_long_for_a_column_do_not_block_the_batch(runtime):
    store_payload(runtime.engine, x12_850(610, ["PO-1", "PO-2"]))
    W(runtime, match=lambda d, rt: Outcome.ok(supplier_code="S" * 500)).run_until_idle()
    docs = _docs(runtime.engine)
    assert [(d.state, len(d.supplier_code)) for d in docs] == [("done", 100)] * 2


def test_fault_classification():
    assert is_transient(TimeoutError()) and is_transient(httpx.ReadTimeout("x")) and is_transient(Flaky())
    assert not is_transient(ValueError("bad")) and not is_transient(KeyError("k"))
    line = describe_exception(RuntimeError("cannot reach postgresql://gw:hunter2@db/gw\n  at line 3"))
    assert line == "RuntimeError: cannot reach postgresql://gw:***@db/gw at line 3"


def test_without_a_match_step_documents_are_routed_as_they_are(runtime):
    store_payload(runtime.engine, x12_850(611, ["PO-1"]))
    plex = FakeDestination("plex", lambda i: Outcome.ok(reference="P-1"))
    w = Worker(runtime, pipeline=Pipeline(destinations={"plex": plex}))
    w.run_until_idle()
    (doc,) = _docs(runtime.engine)
    assert (doc.state, doc.supplier_code) == ("done", None) and len(plex.calls) == 1
    trail = _events(runtime.engine, document_id=doc.id)
    assert [(e.stage, e.outcome) for e in trail] == [("translate", "ok"), ("match", "ok"), ("plex", "ok")]
    assert json.loads(trail[1].detail) == {"match": "no integration provides this step"}
    assert w.claim_documents() == []


def test_a_document_goes_only_where_its_kind_and_partner_are_routed(store_url, tmp_path):
    rt = make_runtime(store_url, tmp_path)
    rt.settings.routing = {"purchase_order": ["anaplan"], "invoice": ["plex", "anaplan"]}
    store_payload(rt.engine, x12_850(613, ["PO-1"]))
    plex = FakeDestination("plex", lambda i: Outcome.ok(reference="P"))
    anaplan = FakeDestination("anaplan", lambda i: Outcome.ok(reference="A"))
    Worker(rt, pipeline=pipeline(match=matched, destinations=[plex, anaplan])).run_until_idle()
    (doc,) = _docs(rt.engine)
    assert doc.state == "done" and plex.calls == [] and len(anaplan.calls) == 1
    assert {k: (v.position, v.state) for k, v in _deliveries(rt.engine, doc.id).items()} == {"anaplan": (1, "done")}
    rt.engine.dispose()


def test_an_overlong_po_number_does_not_stop_the_split(runtime):
    ich_id = store_payload(runtime.engine, x12_850(612, ["X" * 150, "PO-2"]))
    W(runtime).split_interchanges()
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

    w = W(runtime, match=matched, destinations=[FakeDestination("plex", lambda i: Outcome.ok(reference="P"))])
    store_payload(runtime.engine, x12_850(409, ["PO-1"]))
    report = w.run_until_idle()
    assert (report.processed, report.delivered) == (1, 1)  # split, matched, delivered
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(" ".join(statement.split()[:2]).upper())

    event.listen(runtime.engine, "before_cursor_execute", seen)
    try:
        report = w.run_once()
    finally:
        event.remove(runtime.engine, "before_cursor_execute", seen)
    # Nothing to split, step, deliver or send: looked for through a reader, no lock taken, nothing written.
    assert not report.busy
    assert statements and not [s for s in statements if s.startswith(("UPDATE", "INSERT", "DELETE", "BEGIN IMMEDIATE"))]
