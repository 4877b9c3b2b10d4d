"""Anaplan as a batched destination against its simulator: deliveries gathered into batches, a batch
a work item the worker sends, looks at and concludes for its members; one batch per file at a
time; busy, locked and throttled waits use no attempt; configuration errors fail the batch."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from gateway.integrations.anaplan.destination import AnaplanDestination
from gateway.partners import load_partner_directory
from gateway.pipeline import batches as batch_work
from gateway.pipeline.wiring import Pipeline
from gateway.pipeline.worker import Worker
from gateway.runtime import instance_id, open_runtime
from gateway.sandbox.environment import numbered_documents, start_sandbox
from gateway.store import transaction
from gateway.store.models import Batch, Delivery, Document, Event, Interchange, utcnow
from tests.delivery_env import DEMO, PARTNERS, RESTING_STATES, settings_for
from translators.translate import translate

pytestmark = pytest.mark.slow
DIRECTORY = load_partner_directory(PARTNERS)


@pytest.fixture
def sandbox():
    sb = start_sandbox(plex_rate_limit=None)
    yield sb
    sb.close()


def posted_documents(engine, count: int, *, kinds: tuple[str, ...] = ("invoice", "purchase_order")) -> list[int]:
    """Documents already matched and in Plex: their Anaplan deliveries are due."""
    ids = []
    now = utcnow()
    with transaction(engine) as s:
        for name, data in numbered_documents(DEMO, count * 2):
            d = translate(data, DIRECTORY, source=name).documents[0]
            if d.kind not in kinds or len(ids) >= count:
                continue
            ich = Interchange(sha256=name.ljust(64, "0")[:64], size=len(data), source="test", remote_name=name)
            s.add(ich)
            s.flush()
            doc = Document(interchange_id=ich.id, position=1, partner=d.partner, kind=d.kind, standard=d.standard,
                           state="delivering", stage="anaplan", canonical=json.dumps(d.document),
                           supplier_code="ACME01", po_number=d.document.get("po_number"),
                           invoice_number=d.document.get("invoice_number"))
            s.add(doc)
            s.flush()
            s.add(Delivery(document_id=doc.id, destination="plex", position=1, state="done", reference=f"P-{doc.id}"))
            s.add(Delivery(document_id=doc.id, destination="anaplan", position=2, state="pending", next_attempt_at=now))
            ids.append(doc.id)
    return ids


def orders_the_second_without_lines(engine, count: int) -> list[int]:
    """Posted purchase orders; the second has no lines, so it makes no row in the import."""
    ids = posted_documents(engine, count, kinds=("purchase_order",))
    with transaction(engine) as s:
        bare = s.get(Document, ids[1])
        bare.canonical = json.dumps({**json.loads(bare.canonical), "lines": []})
    return ids


def runtime_for(sandbox, store_url, tmp_path, **anaplan):
    rt = open_runtime(settings_for(sandbox, store_url, tmp_path, anaplan=anaplan), migrate=False)
    rt.instance = instance_id("test")
    return rt


def worker(rt, **kw) -> Worker:
    """A worker with Anaplan alone (Plex is done for these documents)."""
    return Worker(rt, pipeline=Pipeline(destinations={"anaplan": AnaplanDestination.configure(rt)}), **kw)


def settle(workers: list[Worker], engine, timeout: float = 60.0) -> list[Document]:
    deadline = time.monotonic() + timeout
    while True:
        for w in workers:
            w.run_until_idle()
        with Session(engine) as s:
            docs = list(s.exec(select(Document).order_by(Document.id)).all())
        if all(d.state in RESTING_STATES for d in docs):
            return docs
        assert time.monotonic() < deadline, [(d.id, d.state, d.error) for d in docs if d.state not in RESTING_STATES]
        time.sleep(0.05)


def anaplan_of(engine, doc_ids) -> list[Delivery]:
    with Session(engine) as s:
        return [s.exec(select(Delivery).where(Delivery.document_id == i, Delivery.destination == "anaplan")).one()
                for i in doc_ids]


def all_batches(engine) -> list[Batch]:
    with Session(engine) as s:
        return list(s.exec(select(Batch).order_by(Batch.id)).all())


def trail(engine, doc_id) -> list[tuple[str, str]]:
    with Session(engine) as s:
        return [(e.stage, e.outcome) for e in s.exec(select(Event).where(Event.document_id == doc_id)
                                                     .order_by(Event.id)).all()]


def test_deliveries_join_one_batch_which_goes_when_full(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=6, max_age=60)
    ids = posted_documents(rt.engine, 10, kinds=("invoice",))
    w = worker(rt)
    w.batch_size = 4
    w.run_once()
    # Four of six, more on their way: they joined the open batch, nothing was sent.
    [batch] = all_batches(rt.engine)
    assert (batch.state, batch.member_count, batch.key) == ("open", 4, "invoice")
    assert sandbox.anaplan.snapshot()["requests"] == {}
    assert [(d.state, d.batch_id, d.next_attempt_at) for d in anaplan_of(rt.engine, ids[:4])] == [
        ("batched", batch.id, None)] * 4
    w.run_once()
    # Full: sent at once, with the eight it holds; the last two go in the next batch.
    [first] = all_batches(rt.engine)
    assert (first.state, first.member_count) == ("running", 8)
    assert first.reference and json.loads(first.result)["members"] == sorted(
        d.id for d in anaplan_of(rt.engine, ids[:8]))
    docs = settle([w], rt.engine)
    assert [d.state for d in docs] == ["done"] * 10
    assert [(b.state, b.member_count) for b in all_batches(rt.engine)] == [("done", 8), ("done", 2)]
    assert len(sandbox.anaplan.snapshot()["imported_rows"]["112000000002"]) == 10
    went = anaplan_of(rt.engine, ids)
    assert all(d.state == "done" and d.reference.startswith(f"batch {d.batch_id}, task ") for d in went)
    # Each member: one event when it joined, one when its batch concluded it.
    assert {tuple(trail(rt.engine, i)) for i in ids} == {(("anaplan", "join"), ("anaplan", "ok"))}


def test_members_write_no_event_while_the_import_runs(sandbox, store_url, tmp_path):
    sandbox.anaplan.set_faults({"task_timing": {"queue_s": 0.2, "run_s": 1.0}})
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=3, max_age=60, poll_interval=0.05)
    ids = posted_documents(rt.engine, 3, kinds=("invoice",))
    docs = settle([worker(rt)], rt.engine)
    assert [d.state for d in docs] == ["done"] * 3
    polls = [t for t in sandbox.anaplan.snapshot()["tasks"]][0]["pollTimes"]
    assert len(polls) >= 5  # looked at many times ...
    assert all(trail(rt.engine, i) == [("anaplan", "join"), ("anaplan", "ok")] for i in ids)  # ... two events each
    with Session(rt.engine) as s:
        batch_events = [e.outcome for e in s.exec(select(Event).where(Event.batch_id.is_not(None),
                                                                      Event.document_id.is_(None))).all()]
    assert batch_events == ["sent", "done"]


def test_a_document_that_made_no_row_fails_and_the_rest_of_a_clean_import_is_done(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=3, max_age=60)
    ids = orders_the_second_without_lines(rt.engine, 3)
    docs = settle([worker(rt)], rt.engine)
    assert [(d.state, d.stage) for d in docs] == [("done", None), ("failed", "anaplan"), ("done", None)]
    assert "no lines to import" in docs[1].error and docs[1].error_code == "anaplan.rejected"
    [batch] = all_batches(rt.engine)
    result = json.loads(batch.result)
    bare = anaplan_of(rt.engine, ids[1:2])[0]
    assert batch.state == "done" and result["status"] == "partial" and list(result["failed"]) == [str(bare.id)]
    assert (bare.state, bare.batch_id) == ("failed", batch.id)
    assert len(sandbox.anaplan.snapshot()["imported_rows"]["112000000001"]) == 4  # two orders, two lines each


def test_an_old_batch_goes_although_it_is_not_full(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=1000, max_age=0.2)
    posted_documents(rt.engine, 3, kinds=("invoice",))
    docs = settle([worker(rt)], rt.engine)
    assert [d.state for d in docs] == ["done"] * 3
    assert [(b.state, b.member_count) for b in all_batches(rt.engine)] == [("done", 3)]


def test_a_batch_waits_while_more_is_coming_and_goes_early_when_nothing_is(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, batch={"max_documents": 1000, "max_age_seconds": 3600,
                                                          "min_age_seconds": 0.1})
    ids = posted_documents(rt.engine, 3, kinds=("invoice",))
    # The third is still on its way to Plex (which this process does not deliver to): more is coming.
    with transaction(rt.engine) as s:
        d = s.get(Document, ids[2])
        d.stage = "plex"
        for x in s.exec(select(Delivery).where(Delivery.document_id == ids[2])).all():
            x.state, x.reference, x.next_attempt_at = ("pending", None, utcnow()) if x.destination == "plex" else (
                "blocked", None, None)
    w = worker(rt)
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        w.run_until_idle()
        time.sleep(0.05)
    [batch] = all_batches(rt.engine)
    assert (batch.state, batch.member_count) == ("open", 2)
    assert sandbox.anaplan.snapshot()["requests"] == {}
    with transaction(rt.engine) as s:  # Plex refuses it: nothing more is coming
        s.get(Document, ids[2]).state = "failed"
    docs = settle([w], rt.engine, timeout=30)
    assert [d.state for d in docs] == ["done", "done", "failed"] and time.monotonic() - started < 30
    assert [(b.state, b.member_count) for b in all_batches(rt.engine)] == [("done", 2)]


def test_two_processes_never_upload_to_one_file_at_once(sandbox, store_url, tmp_path):
    # Slow imports and small batches: without one batch at a time per file, a second would land mid-import.
    sandbox.anaplan.set_faults({"task_timing": {"queue_s": 0.1, "run_s": 0.3}})
    runtimes = [runtime_for(sandbox, store_url, tmp_path / str(n), max_documents=5, max_age=0.05) for n in range(2)]
    posted_documents(runtimes[0].engine, 24)
    workers = [worker(rt) for rt in runtimes]
    for w in workers:
        w.batch_size = 4
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with Session(runtimes[0].engine) as s:
                states = [d.state for d in s.exec(select(Document)).all()]
            if all(st in RESTING_STATES for st in states):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert states == ["done"] * 24
    snap = sandbox.anaplan.snapshot()
    assert snap["file_conflicts"] == []
    members = [m for b in all_batches(runtimes[0].engine) for m in json.loads(b.result or "{}").get("members", [])]
    assert sorted(members) == sorted(set(members)) and len(members) == 24  # each delivery in one batch
    by_file: dict[str, list[tuple[float, float]]] = {}
    for task in snap["tasks"]:
        by_file.setdefault(task["importId"], []).append((task["creationTime"] / 1000, max(task["pollTimes"])))
    for spans in by_file.values():
        spans.sort()
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))  # one at a time
    rows = snap["imported_rows"]
    assert sum(len(v) for v in rows.values()) == 12 + 2 * 12  # invoices: a row each; orders: two lines each


def _due_now(engine, batch_id: int) -> None:
    with transaction(engine) as s:
        s.get(Batch, batch_id).next_attempt_at = utcnow() - timedelta(seconds=1)


def test_429_and_a_locked_model_are_waits_that_use_no_attempt_and_show_on_the_batch(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_age=0)
    ids = posted_documents(rt.engine, 2, kinds=("invoice",))
    sandbox.anaplan.set_faults({"burst_429": [{"count": 5, "route": "PUT */chunks/*", "retry_after": 4}]})
    w = worker(rt)
    w.run_until_idle()
    [batch] = all_batches(rt.engine)
    assert (batch.state, batch.attempts, batch.waits) == ("open", 0, 1) and "429" in batch.error
    due = batch.next_attempt_at.replace(tzinfo=None) - utcnow().replace(tzinfo=None)
    assert timedelta(seconds=3) < due <= timedelta(seconds=4)  # Anaplan's Retry-After, not sooner
    assert [d.state for d in anaplan_of(rt.engine, ids)] == ["batched"] * 2  # the wait shows on their batch
    # Locked model: the same, with the simulator's 423; still no attempt used, the wait grows.
    sandbox.anaplan.set_faults({"burst_429": [], "model_state": {"state": "LOCKED", "count": 10}})
    _due_now(rt.engine, batch.id)
    w.run_until_idle()
    [batch] = all_batches(rt.engine)
    assert (batch.state, batch.attempts, batch.waits) == ("open", 0, 2) and "423" in batch.error
    # Once Anaplan lets us, the same batch goes.
    sandbox.anaplan.set_faults({"model_state": None})
    _due_now(rt.engine, batch.id)
    docs = settle([w], rt.engine)
    assert [d.state for d in docs] == ["done"] * 2
    assert all(trail(rt.engine, i) == [("anaplan", "join"), ("anaplan", "ok")] for i in ids)
    with Session(rt.engine) as s:
        batch_events = [e.outcome for e in s.exec(select(Event).where(Event.batch_id == batch.id,
                                                                      Event.document_id.is_(None))).all()]
    assert batch_events == ["wait", "sent", "done"]  # one event when the wait began, not one per look


def test_a_mapping_that_does_not_fit_the_import_fails_the_batch_without_uploading(sandbox, store_url, tmp_path):
    sandbox.anaplan.set_faults({"import_headers": {"112000000002": ["Invoice Number", "Invoice Date", "Amount"]}})
    rt = runtime_for(sandbox, store_url, tmp_path, max_age=0)
    posted_documents(rt.engine, 2, kinds=("invoice",))
    docs = settle([worker(rt)], rt.engine)
    assert [(d.state, d.stage, d.error_code) for d in docs] == [("failed", "anaplan", "anaplan.batch_failed")] * 2
    assert "not mapped: 'Amount'" in docs[0].error
    assert [b.state for b in all_batches(rt.engine)] == ["failed"]
    requests = sandbox.anaplan.snapshot()["requests"]
    assert not any("/chunks/" in route for route in requests)


def test_a_batch_whose_sender_died_is_sent_again_when_its_lease_expires(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, batch={"max_documents": 1000, "max_age_seconds": 3600,
                                                          "min_age_seconds": 3600})
    ids = posted_documents(rt.engine, 3, kinds=("invoice",))
    now = utcnow()
    dead = worker(rt, name="dead", clock=lambda: now)
    dead.run_once()  # the deliveries join a batch ...
    [batch] = all_batches(rt.engine)
    _due_now(rt.engine, batch.id)
    row = batch_work._claim(dead, ["anaplan"])  # ... which "dead" claims, starts sending, and dies
    assert row is not None and row["id"] == batch.id
    batch_work._set(dead, batch.id, state="sending")
    lease = dead.lease
    early = worker(rt, name="early", clock=lambda: now + lease - timedelta(seconds=1))
    early.run_until_idle()
    assert all_batches(rt.engine)[0].state == "sending"  # not before the lease runs out
    skew = lease + timedelta(seconds=1)  # one lease period on, time going on from there
    later = worker(rt, name="later", clock=lambda: utcnow() + skew)
    docs = settle([later], rt.engine)
    assert [d.state for d in docs] == ["done"] * 3
    assert [(b.state, b.member_count) for b in all_batches(rt.engine)] == [("done", 3)]
    assert all(trail(rt.engine, i) == [("anaplan", "join"), ("anaplan", "ok")] for i in ids)
