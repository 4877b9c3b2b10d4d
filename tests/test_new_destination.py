"""A new destination is one folder (tests/integrations/ledger/) and one line in the registry: documents
are routed to it by the settings and reach it, through the same worker, deliveries and audit trail."""

from __future__ import annotations

import json

from sqlmodel import Session, select

from gateway import integrations
from gateway.intake import take
from gateway.pipeline.worker import Worker
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store import Delivery, Document, Event
from tests.pipeline_fixtures import PARTNERS, ROOT

DEMO = ROOT / "fixtures" / "edi" / "demo"


def test_a_destination_added_by_one_folder_and_one_registry_line_receives_documents(engine, tmp_path, monkeypatch):
    monkeypatch.setitem(integrations.DESTINATIONS, "ledger", "tests.integrations.ledger.destination:LedgerDestination")
    ledger = tmp_path / "ledger.jsonl"
    settings = Settings(data_dir=tmp_path, partners_dir=PARTNERS, destinations={"ledger": {"path": str(ledger)}},
                        routing={"invoice": ["ledger"], "purchase_order": ["ledger"]},
                        workers={"batch_size": 20, "idle_seconds": 0.05})
    rt = Runtime(settings=settings, engine=engine, instance="test")
    for name in ("acme-fasteners-810-INV-10234.x12", "europa-components-ORDERS-EC-7781.edi"):
        take(engine, source="local:test", remote_name=name, remote_id=name, data=(DEMO / name).read_bytes())
    worker = Worker(rt)  # the pipeline from the registry and the settings, as `gateway run` makes it
    assert set(worker.pipeline.destinations) == {"ledger"}
    worker.run_until_idle()
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert sorted((x["kind"], x["number"]) for x in lines) == [("invoice", "INV-10234"), ("purchase_order", "EC-7781")]
    with Session(engine) as s:
        docs = s.exec(select(Document).order_by(Document.id)).all()
        assert [(d.state, d.stage) for d in docs] == [("done", None)] * 2
        for d in docs:
            [went] = s.exec(select(Delivery).where(Delivery.document_id == d.id)).all()
            assert (went.destination, went.state, went.reference) == (
                "ledger", "done", f"{d.kind}:{d.invoice_number or d.po_number}")
            trail = [(e.stage, e.outcome) for e in s.exec(select(Event).where(Event.document_id == d.id)
                                                          .order_by(Event.id)).all()]
            assert trail == [("translate", "ok"), ("match", "ok"), ("ledger", "ok")]
