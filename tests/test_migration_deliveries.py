"""Migration 0008 (deliveries and batches) carries a store of the release before deliveries over: every document, event and
outside reference kept, the Plex and Anaplan columns turned into deliveries and batches — on SQLite
and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.store.db import make_engine, upgrade
from tests.db import drop_pg_schema, new_pg_schema, require_postgres

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)

# (id, state, stage, plex_key, anaplan_batch_id, error): one document in every state the release knew
DOCUMENTS = [
    (1, "received", "translate", None, None, None),
    (2, "translated", "match", None, None, None),
    (3, "matched", "post", None, None, None),
    (4, "posted", "forward", "ap_invoice:4001", None, None),
    (5, "posted", "forward", "ap_invoice:4002", 1, None),  # joined an open batch
    (6, "forwarded", "confirm", "purchase_order:PO-6", 2, None),  # its import is running
    (7, "done", None, "sales_order:SO-7", 3, None),
    (8, "done", None, "ap_invoice:4008", None, None),  # done without Anaplan
    (9, "failed", "post", None, None, "Plex rejected it: duplicate invoice"),
    (10, "failed", "confirm", "ap_invoice:4010", 3, "Anaplan rejected row 2: unknown supplier"),
    (11, "failed", "translate", None, None, "PO102 'TWELVE' is not a number"),
    (12, "needs_attention", "match", None, None, "no Plex supplier matches"),
    (13, "duplicate", None, None, None, "duplicate of document 7"),
    (14, "ignored", None, None, None, "not a purchase order or invoice"),
    (15, "failed", "forward", "ap_invoice:4015", None, "Anaplan: the import's columns changed"),
]
BATCHES = [(1, "invoice", "open", None), (2, "purchase_order", "running", "TASK-2"),
           (3, "invoice", "done", "TASK-3"), (4, "invoice", "retry", "TASK-4")]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_store(request, tmp_path: Path) -> Iterator[str]:
    """A store at revision 0003 (the release before deliveries)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        upgrade(url, "0003")
        yield url
        return
    require_postgres()
    schema, url = new_pg_schema()
    try:
        upgrade(url, "0003")
        yield url
    finally:
        drop_pg_schema(schema)


def _fill(url: str) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO interchanges (id, sha256, size, source, received_at, state, forced, "
                          "document_count, attempts) VALUES (1, :sha, 10, 'local:demo', :t, 'split', false, 15, 1)"),
                     {"sha": "a" * 64, "t": T0})
        for bid, key, state, task in BATCHES:
            conn.execute(text(
                "INSERT INTO anaplan_batches (id, import_name, state, document_count, file_id, task_id, result, "
                "created_at, updated_at, lease_until) VALUES (:id, :key, :state, 2, '113000000001', :task, :result, "
                ":t, :t, :until)"), {"id": bid, "key": key, "state": state, "task": task, "t": T0,
                                     "result": json.dumps({"members": [5, 6, 7, 10]}),
                                     "until": T0 + timedelta(seconds=5)})
        for did, state, stage, plex_key, batch, error in DOCUMENTS:
            conn.execute(text(
                "INSERT INTO documents (id, interchange_id, position, kind, standard, state, stage, error, attempts, "
                "plex_key, anaplan_batch_id, canonical, created_at, updated_at) VALUES (:id, 1, :id, 'invoice', "
                "'x12', :state, :stage, :error, 2, :plex, :batch, '{}', :t, :t)"),
                {"id": did, "state": state, "stage": stage, "error": error, "plex": plex_key, "batch": batch,
                 "t": T0})
            for n, (st, outcome) in enumerate((("translate", "ok"), ("post", "ok"), ("confirm", "wait"))):
                conn.execute(text("INSERT INTO events (document_id, interchange_id, stage, outcome, actor, at, "
                                  "detail) VALUES (:d, 1, :st, :o, 'gateway', :t, :detail)"),
                             {"d": did, "st": st, "o": outcome, "t": T0 + timedelta(seconds=n),
                              "detail": json.dumps({"n": n})})
        if engine.dialect.name == "postgresql":
            for table in ("interchanges", "documents", "anaplan_batches"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 100)"))
    engine.dispose()


def test_upgrade_keeps_every_document_event_and_outside_reference(old_store):
    _fill(old_store)
    upgrade(old_store)
    engine = make_engine(old_store)
    with engine.connect() as conn:
        docs = {r.id: r for r in conn.execute(text("SELECT id, state, stage, error FROM documents"))}
        deliveries = {(r.document_id, r.destination): r for r in conn.execute(text(
            "SELECT document_id, destination, position, state, reference, batch_id, error, next_attempt_at "
            "FROM deliveries"))}
        batches = {r.id: r for r in conn.execute(text("SELECT id, destination, key, state, reference, result, "
                                                      "next_attempt_at FROM batches"))}
        events = conn.execute(text("SELECT document_id, stage, outcome, detail FROM events ORDER BY id")).all()
        columns = {r[0] for r in conn.execute(text(
            "SELECT name FROM pragma_table_info('documents')" if engine.dialect.name == "sqlite" else
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'documents' "
            "AND table_schema = current_schema()"))}
    engine.dispose()
    assert sorted(docs) == [d[0] for d in DOCUMENTS]
    assert len(events) == 3 * len(DOCUMENTS)
    assert [(e.stage, e.outcome, json.loads(e.detail)) for e in events[:3]] == [
        ("translate", "ok", {"n": 0}), ("post", "ok", {"n": 1}), ("confirm", "wait", {"n": 2})]
    assert "plex_key" not in columns and "anaplan_batch_id" not in columns and "test" in columns
    # Every Plex key is a done Plex delivery's reference.
    for did, _, _, plex_key, _, _ in DOCUMENTS:
        if plex_key:
            assert (deliveries[(did, "plex")].state, deliveries[(did, "plex")].reference) == ("done", plex_key)
    # Every Anaplan batch is a batch, by the same id; a batch to send again is open again.
    assert {b: (r.destination, r.key, r.state, r.reference) for b, r in batches.items()} == {
        1: ("anaplan", "invoice", "open", None), 2: ("anaplan", "purchase_order", "running", "TASK-2"),
        3: ("anaplan", "invoice", "done", "TASK-3"), 4: ("anaplan", "invoice", "open", "TASK-4")}
    assert json.loads(batches[3].result) == {"members": [5, 6, 7, 10], "file_id": "113000000001"}
    assert batches[2].next_attempt_at is not None and batches[3].next_attempt_at is None
    expected = {
        1: ("received", "translate", []), 2: ("translated", "match", []),
        3: ("delivering", "plex", [("plex", "pending", None), ("anaplan", "blocked", None)]),
        4: ("delivering", "anaplan", [("plex", "done", None), ("anaplan", "pending", None)]),
        5: ("delivering", "anaplan", [("plex", "done", None), ("anaplan", "batched", 1)]),
        6: ("delivering", "anaplan", [("plex", "done", None), ("anaplan", "batched", 2)]),
        7: ("done", None, [("plex", "done", None), ("anaplan", "done", 3)]),
        8: ("done", None, [("plex", "done", None), ("anaplan", "skipped", None)]),
        9: ("failed", "plex", [("plex", "failed", None), ("anaplan", "blocked", None)]),
        10: ("failed", "anaplan", [("plex", "done", None), ("anaplan", "failed", 3)]),
        11: ("failed", "translate", []), 12: ("needs_attention", "match", []),
        13: ("duplicate", None, []), 14: ("ignored", None, []),
        15: ("failed", "anaplan", [("plex", "done", None), ("anaplan", "failed", None)]),
    }
    for did, (state, stage, wanted) in expected.items():
        assert (docs[did].state, docs[did].stage) == (state, stage), did
        got = sorted((d.destination, d.state, d.batch_id) for (doc, _), d in deliveries.items() if doc == did)
        assert got == sorted(wanted), did
    # Errors stay where a person reads them: on the document and on the failed delivery.
    assert docs[9].error == deliveries[(9, "plex")].error == "Plex rejected it: duplicate invoice"
    assert deliveries[(10, "anaplan")].error.startswith("Anaplan rejected row 2")
    assert deliveries[(3, "plex")].next_attempt_at is not None and deliveries[(4, "anaplan")].next_attempt_at
    assert (deliveries[(7, "plex")].position, deliveries[(7, "anaplan")].position) == (1, 2)


def test_an_upgraded_store_takes_new_documents_and_batches(old_store):
    """Ids go on from the carried-over rows (PostgreSQL's sequences included)."""
    _fill(old_store)
    upgrade(old_store)
    engine = make_engine(old_store)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO batches (destination, key, state, member_count, attempts, waits, created_at, "
                          "updated_at) VALUES ('anaplan', 'invoice', 'open', 0, 0, 0, :t, :t)"), {"t": T0})
        conn.execute(text("INSERT INTO deliveries (document_id, destination, position, state, attempts, waits, "
                          "created_at, updated_at) VALUES (2, 'plex', 1, 'blocked', 0, 0, :t, :t)"), {"t": T0})
        assert conn.execute(text("SELECT max(id) FROM batches")).scalar() == 5
    engine.dispose()
