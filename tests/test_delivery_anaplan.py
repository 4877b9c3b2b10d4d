"""The forward and confirm stages against the Anaplan simulator: batching, one uploader per file,
429 and locked models sent back with ``after``, configuration errors failing the batch."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from gateway.delivery import Delivery
from gateway.partners import load_partner_directory
from gateway.pipeline.machine import OutcomeKind, StageName
from gateway.pipeline.worker import Worker
from gateway.runtime import instance_id, open_runtime
from gateway.sandbox.environment import numbered_documents, start_sandbox
from gateway.store import transaction
from gateway.store.models import AnaplanBatch, Document, Event, Interchange, utcnow
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
    """Documents already matched and posted: ready for Anaplan."""
    ids = []
    with transaction(engine) as s:
        for name, data in numbered_documents(DEMO, count * 2):
            d = translate(data, DIRECTORY, source=name).documents[0]
            if d.kind not in kinds or len(ids) >= count:
                continue
            ich = Interchange(sha256=name.ljust(64, "0")[:64], size=len(data), source="test", remote_name=name)
            s.add(ich)
            s.flush()
            doc = Document(interchange_id=ich.id, position=1, partner=d.partner, kind=d.kind, standard=d.standard,
                           state="posted", stage="forward", canonical=json.dumps(d.document), supplier_code="ACME01",
                           plex_key="x", po_number=d.document.get("po_number"),
                           invoice_number=d.document.get("invoice_number"))
            s.add(doc)
            s.flush()
            ids.append(doc.id)
    return ids


def orders_the_second_without_lines(engine, count: int) -> list[int]:
    """Posted purchase orders; the second has no lines, so it makes no row in the import."""
    ids = posted_documents(engine, count, kinds=("purchase_order",))
    with transaction(engine) as s:
        bare = s.get(Document, ids[1])
        bare.canonical = json.dumps({**json.loads(bare.canonical), "lines": []})
    return ids


def stored(engine, ids: list[int]) -> list[Document]:
    """These documents as a worker claims them: fresh from the store."""
    with Session(engine, expire_on_commit=False) as s:
        return [s.get(Document, i) for i in ids]


def runtime_for(sandbox, store_url, tmp_path, **anaplan):
    rt = open_runtime(settings_for(sandbox, store_url, tmp_path, anaplan=anaplan), migrate=False)
    rt.instance = instance_id("test")
    return rt


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


def test_documents_wait_for_the_batch_to_fill_then_go_in_one_import(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=6, max_age=60)
    ids = posted_documents(rt.engine, 10, kinds=("invoice",))
    delivery = Delivery(rt)
    forward = delivery.stages()[StageName.FORWARD]

    def docs(chosen):  # as the worker claims them: fresh from the store
        with Session(rt.engine, expire_on_commit=False) as s:
            return [s.get(Document, i) for i in chosen]

    first = forward(docs(ids[:4]), rt)
    # Four of six, and more on their way (posted, not yet in a batch): nobody sends yet. They wait
    # (no attempt used) until the batch wakes them, ten seconds at most.
    assert {o.kind for o in first.values()} == {OutcomeKind.WAIT}
    assert all(0 < o.after <= 10.0 for o in first.values())
    assert sandbox.anaplan.snapshot()["requests"] == {}
    second = forward(docs(ids[4:8]), rt)
    # The batch is full: sent with all eight documents it holds; these four are forwarded at once.
    assert {o.kind for o in second.values()} == {OutcomeKind.OK}
    with Session(rt.engine) as s:
        [batch] = s.exec(select(AnaplanBatch)).all()
    assert batch.state == "running" and batch.document_count == 8 and batch.task_id
    assert json.loads(batch.result)["members"] == ids[:8]
    # One of the documents that sent it polls the import; the others are not woken to hear "running".
    assert json.loads(batch.result)["poller"] == ids[4]
    assert all(d.next_attempt_at is None for d in docs(ids[:8]))
    # The first four come back: their batch is running, so they are forwarded too.
    again = forward(docs(ids[:4]), rt)
    assert {o.kind for o in again.values()} == {OutcomeKind.OK}
    assert all(o.changes["anaplan_batch_id"] == batch.id for o in again.values())
    # Confirm reads the result for each document.
    confirm = delivery.stages()[StageName.CONFIRM]
    deadline = time.monotonic() + 10
    while True:
        out = confirm(docs(ids[:8]), rt)
        if {o.kind for o in out.values()} == {OutcomeKind.OK} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {o.kind for o in out.values()} == {OutcomeKind.OK}
    assert out[ids[0]].detail["anaplan"]["counts"]["successful"] == 8
    assert len(sandbox.anaplan.snapshot()["imported_rows"]["112000000002"]) == 8
    delivery.close()


def test_forwarded_documents_sleep_through_the_import_and_a_late_sleep_is_settled(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=4, max_age=60)
    ids = posted_documents(rt.engine, 4, kinds=("invoice",))
    delivery = Delivery(rt)
    forward = delivery.stages()[StageName.FORWARD]
    with Session(rt.engine, expire_on_commit=False) as s:
        docs = [s.get(Document, i) for i in ids]
    out = forward(docs, rt)
    # Sent and running: forwarded, and confirm not due before the first poll (the first member) or
    # before the batch wakes them (the others): no claim just to hear "still running".
    assert {o.kind for o in out.values()} == {OutcomeKind.OK}
    assert 0 < out[ids[0]].after <= 1.0 and all(out[i].after == 10.0 for i in ids[1:])
    later = utcnow() + timedelta(seconds=10)
    with transaction(rt.engine) as s:
        for d in s.exec(select(Document).where(Document.id.in_(ids))).all():
            d.state, d.stage, d.next_attempt_at = "forwarded", "confirm", later  # as the worker stores them

    def due() -> list[bool]:
        with Session(rt.engine) as s:
            return [d.next_attempt_at.replace(tzinfo=None) <= utcnow().replace(tzinfo=None)
                    for d in s.exec(select(Document).where(Document.id.in_(ids)).order_by(Document.id)).all()]

    with rt.engine.begin() as conn:
        forward.settle(conn, ids, utcnow())
    assert due() == [False] * 4  # still running: they sleep on
    # Another process read the finished import and woke the members before these sleeps were stored.
    with transaction(rt.engine) as s:
        [batch] = s.exec(select(AnaplanBatch)).all()
        batch.state = "done"
    with rt.engine.begin() as conn:
        forward.settle(conn, ids, utcnow())
    assert due() == [True] * 4
    delivery.close()


def _claimed_in_a_chain(engine, ids: list[int]) -> list:
    """These documents as a claim that matched and posted them sees them, while the store still holds
    them as translated (the claim stores its outcomes when it ends)."""
    from gateway.pipeline.worker import ClaimedDocument

    with Session(engine, expire_on_commit=False) as s:
        docs = [s.get(Document, i) for i in ids]
    claimed = [ClaimedDocument(**{c.name: getattr(d, c.name) for c in Document.__table__.columns}) for d in docs]
    with transaction(engine) as s:
        for d in s.exec(select(Document).where(Document.id.in_(ids))).all():
            d.state, d.stage, d.supplier_code = "translated", "match", None
    return claimed


@pytest.mark.parametrize("fills", [True, False], ids=["full", "nothing-more-coming"])
def test_the_claim_that_completes_a_batch_sends_it_with_its_own_documents(sandbox, store_url, tmp_path, fills):
    rt = runtime_for(sandbox, store_url, tmp_path, batch={"max_documents": 4 if fills else 1000,
                                                          "max_age_seconds": 60, "min_age_seconds": 0.0})
    ids = posted_documents(rt.engine, 4, kinds=("invoice",))
    delivery = Delivery(rt)
    forward = delivery.stages()[StageName.FORWARD]
    chained = _claimed_in_a_chain(rt.engine, ids[2:])
    with Session(rt.engine, expire_on_commit=False) as s:
        waiting = [s.get(Document, i) for i in ids[:2]]
    first = forward(waiting, rt)
    # The other two are still being posted: the first two wait for them.
    assert {o.kind for o in first.values()} == {OutcomeKind.WAIT}
    assert sandbox.anaplan.snapshot()["imported_rows"] == {}
    second = forward(chained, rt)
    # The claim that posted the last two sends at once, with them in it as that claim sees them.
    assert {o.kind for o in second.values()} == {OutcomeKind.OK}
    with Session(rt.engine) as s:
        [batch] = s.exec(select(AnaplanBatch)).all()
    assert json.loads(batch.result)["members"] == ids
    deadline = time.monotonic() + 10
    while not sandbox.anaplan.snapshot()["imported_rows"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the simulator runs the import task on its own time
    [rows] = sandbox.anaplan.snapshot()["imported_rows"].values()
    assert len(rows) == 4 and all("ACME01" in json.dumps(r) for r in rows), rows
    delivery.close()


def test_two_claims_finishing_together_send_one_batch_without_sleeping(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, batch={"max_documents": 1000, "max_age_seconds": 60,
                                                          "min_age_seconds": 0.0})
    ids = posted_documents(rt.engine, 4, kinds=("invoice",))
    delivery = Delivery(rt)
    forward = delivery.stages()[StageName.FORWARD]
    first, second = _claimed_in_a_chain(rt.engine, ids[:2]), _claimed_in_a_chain(rt.engine, ids[2:])
    # The first claim forwards while the second is still posting: more is coming, it sleeps.
    early = forward(first, rt)
    assert {o.kind for o in early.values()} == {OutcomeKind.WAIT} and all(o.after > 1 for o in early.values())
    # The second forwards before the first claim's postings are stored: they are joining this batch,
    # so it waits a moment instead of sending without them (or sleeping like the first).
    late = forward(second, rt)
    assert {o.kind for o in late.values()} == {OutcomeKind.WAIT} and all(o.after <= 0.1 for o in late.values())
    assert sandbox.anaplan.snapshot()["imported_rows"] == {}
    with transaction(rt.engine) as s:  # the first claim ends
        for d in s.exec(select(Document).where(Document.id.in_(ids[:2]))).all():
            d.state, d.stage, d.supplier_code = "posted", "forward", "ACME01"
    assert {o.kind for o in forward(second, rt).values()} == {OutcomeKind.OK}
    with Session(rt.engine) as s:
        [batch] = s.exec(select(AnaplanBatch)).all()
    assert json.loads(batch.result)["members"] == ids and json.loads(batch.result)["poller"] == ids[2]
    delivery.close()


def test_a_document_that_made_no_row_fails_and_the_rest_of_a_clean_import_is_done(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=3, max_age=60)
    ids = orders_the_second_without_lines(rt.engine, 3)
    delivery = Delivery(rt)
    stages = delivery.stages()

    def docs():
        return stored(rt.engine, ids)

    assert {o.kind for o in stages[StageName.FORWARD](docs(), rt).values()} == {OutcomeKind.OK}
    deadline = time.monotonic() + 10
    while True:
        out = stages[StageName.CONFIRM](docs(), rt)
        if OutcomeKind.WAIT not in {o.kind for o in out.values()} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [out[i].kind for i in ids] == [OutcomeKind.OK, OutcomeKind.FAIL, OutcomeKind.OK]
    assert "no lines to import" in out[ids[1]].error and out[ids[1]].code == "anaplan.rejected"
    with Session(rt.engine) as s:
        [batch] = s.exec(select(AnaplanBatch)).all()
    result = json.loads(batch.result)
    assert batch.state == "done" and result["status"] == "partial" and list(result["failed"]) == [str(ids[1])]
    assert len(sandbox.anaplan.snapshot()["imported_rows"]["112000000001"]) == 4  # two orders, two lines each
    delivery.close()


def test_the_end_of_an_import_concludes_the_members_nobody_holds_in_one_go(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=4, max_age=60)
    ids = orders_the_second_without_lines(rt.engine, 4)
    delivery = Delivery(rt)
    stages = delivery.stages()

    def docs(chosen):
        return stored(rt.engine, chosen)

    assert {o.kind for o in stages[StageName.FORWARD](docs(ids[:2]), rt).values()} == {OutcomeKind.WAIT}
    assert {o.kind for o in stages[StageName.FORWARD](docs(ids[2:]), rt).values()} == {OutcomeKind.OK}
    # As the workers stored those outcomes: the first two sleep on in posted, the last two are
    # forwarded, and the claim of ids[2] goes on to confirm it (it holds its lease).
    with transaction(rt.engine) as s:
        for d in s.exec(select(Document).where(Document.id.in_(ids[2:]))).all():
            d.state, d.stage = "forwarded", "confirm"
        held = s.get(Document, ids[2])
        held.lease_owner, held.lease_until = "another-worker", utcnow() + timedelta(seconds=60)
    deadline = time.monotonic() + 10
    while True:
        out = stages[StageName.CONFIRM](docs(ids[2:3]), rt)
        if out[ids[2]].kind is not OutcomeKind.WAIT or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out[ids[2]].kind is OutcomeKind.OK
    with Session(rt.engine) as s:
        rows = {d.id: d for d in s.exec(select(Document).where(Document.id.in_(ids))).all()}
        trail = {i: [(e.stage, e.outcome, e.actor) for e in s.exec(
            select(Event).where(Event.document_id == i).order_by(Event.id)).all()] for i in ids}
    # Nobody came back for the three nobody held: the poller concluded them as their own claims would.
    assert [(rows[i].state, rows[i].stage, rows[i].lease_owner) for i in ids] == [
        ("done", None, None), ("failed", "confirm", None), ("forwarded", "confirm", "another-worker"),
        ("done", None, None)]
    assert rows[ids[1]].error_code == "anaplan.rejected" and "no lines to import" in rows[ids[1]].error
    assert trail[ids[0]] == [("forward", "ok", rt.instance), ("confirm", "ok", rt.instance)]
    assert trail[ids[1]] == [("forward", "ok", rt.instance), ("confirm", "fail", rt.instance)]
    assert trail[ids[2]] == [] and trail[ids[3]] == [("confirm", "ok", rt.instance)]
    delivery.close()


def test_an_old_batch_goes_although_it_is_not_full(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=1000, max_age=0.2)
    posted_documents(rt.engine, 3, kinds=("invoice",))
    delivery = Delivery(rt)
    docs = settle([Worker(rt, stages=delivery.stages())], rt.engine)
    assert [d.state for d in docs] == ["done"] * 3
    with Session(rt.engine) as s:
        batches = s.exec(select(AnaplanBatch)).all()
    assert [(b.state, b.document_count) for b in batches] == [("done", 3)]
    delivery.close()


def test_a_batch_goes_early_when_nothing_more_is_coming(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_documents=1000, max_age=3600)
    posted_documents(rt.engine, 3, kinds=("invoice",))
    delivery = Delivery(rt)
    started = time.monotonic()
    docs = settle([Worker(rt, stages=delivery.stages())], rt.engine)
    assert [d.state for d in docs] == ["done"] * 3 and time.monotonic() - started < 30
    with Session(rt.engine) as s:
        assert [(b.state, b.document_count) for b in s.exec(select(AnaplanBatch)).all()] == [("done", 3)]
    delivery.close()


def test_two_processes_never_upload_to_one_file_at_once(sandbox, store_url, tmp_path):
    # Slow imports and small batches: without the file lease, a second batch would land mid-import.
    sandbox.anaplan.set_faults({"task_timing": {"queue_s": 0.1, "run_s": 0.3}})
    runtimes = [runtime_for(sandbox, store_url, tmp_path / str(n), max_documents=5, max_age=0.05) for n in range(2)]
    posted_documents(runtimes[0].engine, 24)
    deliveries = [Delivery(rt) for rt in runtimes]
    workers = [Worker(rt, stages=d.stages()) for rt, d in zip(runtimes, deliveries)]
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
    with Session(runtimes[0].engine) as s:
        batches = s.exec(select(AnaplanBatch).order_by(AnaplanBatch.id)).all()
    members = [m for b in batches for m in json.loads(b.result or "{}").get("members", [])]
    assert sorted(members) == sorted(set(members)) and len(members) == 24, [  # each document in one batch
        (b.id, b.import_name, b.state, b.error, json.loads(b.result or "{}").get("members")) for b in batches]
    by_file: dict[str, list[tuple[float, float]]] = {}
    for task in snap["tasks"]:
        by_file.setdefault(task["importId"], []).append((task["creationTime"] / 1000, max(task["pollTimes"])))
    for spans in by_file.values():
        spans.sort()
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))  # one at a time
    rows = snap["imported_rows"]
    assert sum(len(v) for v in rows.values()) == 12 + 2 * 12  # invoices: a row each; orders: two lines each
    for d in deliveries:
        d.close()


def test_429_and_a_locked_model_send_the_documents_back_with_after(sandbox, store_url, tmp_path):
    rt = runtime_for(sandbox, store_url, tmp_path, max_age=0)
    ids = posted_documents(rt.engine, 2, kinds=("invoice",))
    sandbox.anaplan.set_faults({"burst_429": [{"count": 5, "route": "PUT */chunks/*", "retry_after": 4}]})
    delivery = Delivery(rt)
    forward = delivery.stages()[StageName.FORWARD]
    with Session(rt.engine, expire_on_commit=False) as s:
        docs = [s.get(Document, i) for i in ids]
    out = forward(docs, rt)
    assert {o.kind for o in out.values()} == {OutcomeKind.RETRY}
    assert all(o.after == 4 and o.code == "anaplan.retry" and "429" in o.error for o in out.values())
    with Session(rt.engine) as s:
        [batch] = s.exec(select(AnaplanBatch)).all()
    assert batch.state == "open" and batch.lease_until is not None  # sent again after the wait, not before
    assert forward(docs, rt)[ids[0]].kind is OutcomeKind.WAIT
    # Locked model: the same, with the simulator's 423.
    sandbox.anaplan.set_faults({"burst_429": [], "model_state": {"state": "LOCKED", "count": 10}})
    with transaction(rt.engine) as s:
        b = s.get(AnaplanBatch, batch.id)
        b.lease_until = utcnow() - timedelta(seconds=1)
    out = forward(docs, rt)
    assert {o.kind for o in out.values()} == {OutcomeKind.RETRY} and "423" in out[ids[0]].error
    # Once Anaplan lets us, the same batch goes.
    sandbox.anaplan.set_faults({"model_state": None})
    with transaction(rt.engine) as s:
        b = s.get(AnaplanBatch, batch.id)
        b.lease_until = utcnow() - timedelta(seconds=1)
    assert {o.kind for o in forward(docs, rt).values()} == {OutcomeKind.OK}
    delivery.close()


def test_a_mapping_that_does_not_fit_the_import_fails_the_batch_without_uploading(sandbox, store_url, tmp_path):
    sandbox.anaplan.set_faults({"import_headers": {"112000000002": ["Invoice Number", "Invoice Date", "Amount"]}})
    rt = runtime_for(sandbox, store_url, tmp_path, max_age=0)
    posted_documents(rt.engine, 2, kinds=("invoice",))
    delivery = Delivery(rt)
    docs = settle([Worker(rt, stages=delivery.stages())], rt.engine)
    assert [(d.state, d.stage, d.error_code) for d in docs] == [("failed", "forward", "anaplan.batch_failed")] * 2
    assert "not mapped: 'Amount'" in docs[0].error
    requests = sandbox.anaplan.snapshot()["requests"]
    assert not any("/chunks/" in route for route in requests)
    delivery.close()
