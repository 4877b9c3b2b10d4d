"""Three worker processes on one PostgreSQL store: 1,000 documents, each split once, matched once and
delivered once."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from gateway.store import Document, Event, Interchange, make_engine
from tests.pipeline_fixtures import store_payload, x12_850

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INTERCHANGES, SETS = 20, 50  # 1,000 documents


def _record_stage(log_path: str):
    """The match step of this test: appends ``match doc_id pid`` per call, then says ok."""

    def match(doc, _runtime):
        from gateway.integrations.base import Outcome

        with open(log_path, "a") as f:
            f.write(f"match {doc.id} {os.getpid()}\n")
        time.sleep(0.001)  # a step takes time: let the processes interleave
        return Outcome.ok(supplier_code="S-1")

    return match


def _record_delivery(log_path: str):
    """The destination of this test: appends ``plex doc_id pid`` per delivery, then says done."""

    def deliver(item):
        from gateway.integrations.base import Outcome

        with open(log_path, "a") as f:
            f.write(f"plex {item.document_id} {os.getpid()}\n")
        return Outcome.ok(reference=f"P-{item.document_id}")

    return deliver


def _worker_process(url: str, data_dir: str, log_path: str, ready, go, stop) -> None:
    """A separate OS process: two worker threads on the shared store until told to stop."""
    import threading

    from gateway.pipeline.worker import Worker
    from tests.pipeline_fixtures import FakeDestination, make_runtime, pipeline

    rt = make_runtime(url, Path(data_dir), batch_size=20, lease_seconds=120)
    rt.instance = f"proc{os.getpid()}"
    shared = pipeline(match=_record_stage(log_path), destinations=[FakeDestination("plex", _record_delivery(log_path))])
    workers = [Worker(rt, pipeline=shared, name=f"proc{os.getpid()}/w{n}") for n in range(2)]
    ready.set()
    go.wait(60)
    local_stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(local_stop,)) for w in workers]
    for t in threads:
        t.start()
    stop.wait(300)
    local_stop.set()
    for t in threads:
        t.join(60)
    rt.engine.dispose()


def test_three_worker_processes_process_each_document_exactly_once(postgres_url, tmp_path):
    engine = make_engine(postgres_url)
    for n in range(INTERCHANGES):
        store_payload(engine, x12_850(1000 + n, [f"PO-{n}-{k}" for k in range(SETS)]), f"batch-{n}.x12")
    ctx = multiprocessing.get_context("spawn")
    go, stop = ctx.Event(), ctx.Event()
    procs, readies, logs = [], [], []
    for n in range(3):
        ready = ctx.Event()
        log_path = str(tmp_path / f"calls-{n}.log")
        p = ctx.Process(target=_worker_process, args=(postgres_url, str(tmp_path), log_path, ready, go, stop))
        p.start()
        procs.append(p)
        readies.append(ready)
        logs.append(log_path)
    try:
        for ready in readies:
            assert ready.wait(120), "a worker process did not start"
        go.set()  # all three start claiming at once
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with Session(engine) as s:
                done = s.exec(select(func.count()).select_from(Document).where(Document.state == "done")).one()
            if done == INTERCHANGES * SETS:
                break
            assert all(p.is_alive() for p in procs), "a worker process died"
            time.sleep(0.2)
        time.sleep(0.5)  # anything done twice would show up now
        stop.set()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.kill()

    calls: Counter[tuple[str, int]] = Counter()
    per_process: Counter[str] = Counter()
    for path in logs:
        if Path(path).exists():
            for line in Path(path).read_text().splitlines():
                what, doc_id, pid = line.split()
                calls[(what, int(doc_id))] += 1
                per_process[pid] += 1
    with Session(engine) as s:
        docs = s.exec(select(Document.id, Document.state, Document.lease_owner)).all()
        ichs = s.exec(select(Interchange)).all()
        match_events = Counter(s.exec(select(Event.document_id).where(Event.stage == "match")).all())
        plex_events = Counter(s.exec(select(Event.document_id).where(Event.stage == "plex")).all())
        translate_events = Counter(s.exec(
            select(Event.document_id).where(Event.stage == "translate", Event.document_id.is_not(None))).all())
        split_events = Counter(s.exec(
            select(Event.interchange_id).where(Event.stage == "translate", Event.document_id.is_(None))).all())
    ids = {d.id for d in docs}
    assert len(docs) == INTERCHANGES * SETS
    assert all(i.state == "split" and i.document_count == SETS for i in ichs)
    assert split_events == {i.id: 1 for i in ichs}  # each interchange split exactly once
    assert translate_events == {i: 1 for i in ids}
    # Each document matched exactly once and delivered exactly once.
    assert calls == {(what, i): 1 for i in ids for what in ("match", "plex")}
    assert match_events == {i: 1 for i in ids} and plex_events == {i: 1 for i in ids}
    assert all(d.state == "done" and d.lease_owner is None for d in docs)
    print("calls per process:", dict(per_process))
    assert len(per_process) >= 2, f"the work was not shared: {dict(per_process)}"
    engine.dispose()
