"""End to end over real HTTP on loopback: EDI in, Plex and Anaplan records out, exactly once.

The worker runs the real stages against the Plex and Anaplan simulators; the store is SQLite or
PostgreSQL. Faults are injected in the simulators; what counts is their state afterwards.
"""

from __future__ import annotations

import json

import pytest

from gateway.operations import Selection, reprocess_documents
from gateway.integrations.anaplan.simulator.app import INVOICES_IMPORT_ID, PO_LINES_IMPORT_ID
from gateway.sandbox.environment import numbered_documents, start_sandbox
from tests.delivery_env import DEMO, gateway

pytestmark = pytest.mark.slow

GOOD = ("acme-fasteners-810-INV-10234.x12", "europa-components-INVOIC-EC-INV-5521.edi",
        "europa-components-ORDERS-EC-7781.edi", "northwind-retail-850-NW-4471.x12")


def plex_records(sandbox) -> dict[str, list[dict]]:
    state = sandbox.plex.state(log=False)
    return {k: [r for r in state[k] if not str(r.get("invoiceNumber", r.get("poNumber", ""))).startswith(("SEED-", "PO-ACME"))]
            for k in ("ap_invoices", "purchase_orders", "sales_orders")}


def anaplan_rows(sandbox) -> dict[str, list[dict]]:
    rows = sandbox.anaplan.snapshot()["imported_rows"]
    return {"invoices": rows.get(INVOICES_IMPORT_ID, []), "po_lines": rows.get(PO_LINES_IMPORT_ID, [])}


def test_purchase_orders_and_invoices_from_x12_and_edifact_reach_plex_and_anaplan(store_url, tmp_path):
    with gateway(store_url, tmp_path) as gw:
        gw.feed_files(*GOOD, "globex-unknown-810-77-5510.x12", "northwind-retail-850-NW-4480-broken.x12")
        gw.settle()
        plex, sim = plex_records(gw.sandbox), gw.sandbox.plex.state(log=False)

        # Plex: each document became exactly one record of the right kind.
        assert sorted((r["invoiceNumber"], r["supplierCode"]) for r in plex["ap_invoices"]) == [
            ("EC-INV-5521", "EUROCOMP"), ("INV-10234", "ACME01")]
        acme = next(r for r in plex["ap_invoices"] if r["invoiceNumber"] == "INV-10234")
        # Lines (500 × 0.12 + 500 × 0.04 + 2 × 18.50), the tax line and the freight charge.
        assert acme["amount"] == 117.00 + 6.50 + 10.00
        assert [ln["accountNumber"] for ln in acme["lines"]] == ["5000-100-00"] * 4 + ["2300-000-00"]
        assert [(r["poNumber"], r["lineItemCount"], r["_supplierCode"]) for r in plex["purchase_orders"]] == [
            ("EC-7781", 2, "EUROCOMP")]  # EDIFACT ORDERS through the SOAP data sources
        nw_customer = next(c for c in sim["customers"] if c["code"] == "NWRETAIL")
        assert [(r["poNumber"], r["customerId"], len(r["lines"])) for r in plex["sales_orders"]] == [
            ("NW-4471", nw_customer["id"], 2)]  # X12 850 from a customer: a sales order

        # Anaplan: one invoice row per invoice, one PO line row per line, columns as the import wants.
        rows = anaplan_rows(gw.sandbox)
        assert sorted((r["Invoice Number"], r["Supplier"], r["Currency"]) for r in rows["invoices"]) == [
            ("EC-INV-5521", "EUROCOMP", "EUR"), ("INV-10234", "ACME01", "USD")]
        assert sorted((r["PO Number"], r["Line"], r["Quantity"]) for r in rows["po_lines"]) == [
            ("EC-7781", "1", "250"), ("EC-7781", "2", "1000"), ("NW-4471", "1", "12"), ("NW-4471", "2", "40")]

        # The store: good documents done with Plex's key, the unknown supplier waiting, the broken one failed.
        for name, number in (("INV-10234", "invoice_number"), ("EC-INV-5521", "invoice_number"),
                             ("EC-7781", "po_number"), ("NW-4471", "po_number")):
            d = gw.document(**{number: name})
            went = gw.deliveries(d.id)
            assert d.state == "done" and went["plex"].reference and went["anaplan"].batch_id, (name, d.state, d.error)
            assert [(x.state, x.position) for x in (went["plex"], went["anaplan"])] == [("done", 1), ("done", 2)]
            post = [e for e in gw.events(d.id) if e.stage == "plex"][-1]
            assert json.loads(post.detail)["plex"]["disposition"] == "created"
            # The trail walks the whole path, in order: one event per step, joining the batch, its end.
            assert [(e.stage, e.outcome) for e in gw.events(d.id)] == [
                ("translate", "ok"), ("match", "ok"), ("plex", "ok"), ("anaplan", "join"), ("anaplan", "ok")]
        globex = gw.document(invoice_number="77-5510")
        assert globex.state == "needs_attention" and globex.stage == "match" and json.loads(globex.candidates) is not None
        broken = gw.document(po_number="NW-4480")
        assert broken.state == "failed" and broken.stage == "translate" and "TWELVE" in broken.error

        # Batching: a handful of Anaplan requests for the whole run, a token obtained once.
        requests = gw.sandbox.anaplan.snapshot()["requests"]
        assert requests.get("POST /token/authenticate") == 1
        assert sum(requests.values()) <= 20


def test_no_duplicate_is_created_under_timeouts_5xx_and_429(store_url, tmp_path):
    sandbox = start_sandbox(plex_rate_limit=None)
    plex = sandbox.plex
    try:
        # AP invoice create: committed, then the answer is lost (client timeout); look-ups fail for a while.
        plex.add_fault(kind="timeout_after_commit", surface="rest", method="POST", path="/accounting/v1/ap-invoices",
                       delay=1.5, times=1)
        plex.add_fault(kind="server_error", surface="rest", method="GET", path="/accounting/v1/ap-invoices",
                       status=503, skip=2, times=3)
        # SOAP PO (lines sent with the header): the look-up answers a soap:Server fault once; the create
        # is committed, then answers 502.
        plex.add_fault(kind="server_error", surface="soap", operation="90002", times=1)
        plex.add_fault(kind="error_after_commit", surface="soap", operation="90001", status=502, times=1)
        # Sales order: 500 before anything is written, then a dropped connection after the commit.
        plex.add_fault(kind="server_error", surface="rest", method="POST", path="/sales/v1/orders", times=1)
        plex.add_fault(kind="drop_after_commit", surface="rest", method="POST", path="/sales/v1/orders", times=1)
        # 429 with and without Retry-After on the look-ups.
        plex.add_fault(kind="throttle_retry_after", surface="rest", method="GET", path="/sales/v1/orders",
                       retry_after=1, times=1)
        plex.add_fault(kind="throttle_no_header", surface="rest", method="GET", path="/accounting/v1/ap-invoices",
                       retry_after=1, times=1)
        # Anaplan: 429s on the chunk upload and a 503 on a task poll.
        sandbox.anaplan.set_faults({"burst_429": [{"count": 2, "route": "PUT */chunks/*", "retry_after": 0}],
                                    "transient_5xx": {"rate": 0.0}})
        with gateway(store_url, tmp_path, sandbox=sandbox,
                     plex={"timeout_seconds": 0.75, "retry": {"max_attempts": 2, "max_retry_after": 0.5}}) as gw:
            gw.feed_files(*GOOD)
            gw.settle(timeout=90)
            for d in gw.documents():
                assert d.state == "done", (d.id, d.state, d.stage, d.error)
            records = plex_records(sandbox)
            # Exactly one record per document in Plex, whatever was retried.
            assert sorted(r["invoiceNumber"] for r in records["ap_invoices"]) == ["EC-INV-5521", "INV-10234"]
            assert [(r["poNumber"], r["lineItemCount"]) for r in records["purchase_orders"]] == [("EC-7781", 2)]
            assert [r["poNumber"] for r in records["sales_orders"]] == ["NW-4471"]
            assert all(f["fired"] >= 1 for f in plex.state(log=False)["faults"]), plex.state(log=False)["faults"]
            # Every posting that met an ambiguous failure ended on the one record (found again, not re-created).
            for d in gw.documents():
                posts = [json.loads(e.detail) for e in gw.events(d.id) if e.stage == "plex" and e.outcome == "ok"]
                assert len(posts) == 1
                creates = [c for c in posts[0]["calls"] if c["operation"].endswith(".create") and c["outcome"] == "ok"]
                assert len(creates) <= 1
            # A 429 whose Retry-After exceeds what the client waits in-process goes back as a wait: Plex's
            # delay, no attempt used.
            nw = gw.document(po_number="NW-4471")
            waits = [e for e in gw.events(nw.id) if e.stage == "plex" and e.outcome == "wait"]
            throttled = [json.loads(e.detail) for e in waits]
            assert throttled and throttled[0]["code"] == "plex.throttled" and throttled[0]["next_look_in_s"] == 1.0
            assert all(e.attempt is None for e in waits)
            # Anaplan: every row once.
            rows = anaplan_rows(sandbox)
            assert len(rows["invoices"]) == 2 and len(rows["po_lines"]) == 4
    finally:
        sandbox.close()


def test_a_failure_dump_row_fails_exactly_its_document_and_reprocessing_finishes_it(store_url, tmp_path):
    with gateway(store_url, tmp_path) as gw:
        # The model rejects the first data row of the next import.
        gw.sandbox.anaplan.set_faults({"task_outcome": {"row_failures": 1, "count": 1}})
        files = numbered_documents(DEMO, 8)
        for name, data in files:
            gw.feed(name, data)
        gw.settle()
        docs = gw.documents()
        failed = [d for d in docs if d.state == "failed"]
        assert len(failed) == 1, [(d.id, d.state, d.error) for d in docs]
        bad = failed[0]
        assert bad.stage == "anaplan" and bad.error_code == "anaplan.rejected"
        assert "Row rejected by the simulator" in bad.error and "row 1" in bad.error
        assert all(d.state == "done" for d in docs if d.id != bad.id)
        number = bad.invoice_number or bad.po_number
        column = "Invoice Number" if bad.invoice_number else "PO Number"
        rows = anaplan_rows(gw.sandbox)
        imported = {r[column] for r in rows["invoices" if bad.invoice_number else "po_lines"]}
        assert number not in imported
        assert len({r["Invoice Number"] for r in rows["invoices"]} | {r["PO Number"] for r in rows["po_lines"]}) == 7

        # The fault is cleared; reprocessing the document sends it in the next batch, without posting again.
        gw.sandbox.anaplan.set_faults({"task_outcome": {}})
        plex_before = plex_records(gw.sandbox)
        report = reprocess_documents(gw.engine, Selection(ids=(bad.id,)), actor="alice", reason="model fixed")
        assert report.done == 1
        gw.settle()
        again = gw.document(id=bad.id)
        assert again.state == "done", (again.state, again.error)
        rows = anaplan_rows(gw.sandbox)
        assert number in {r[column] for r in rows["invoices" if bad.invoice_number else "po_lines"]}
        assert plex_records(gw.sandbox) == plex_before  # Plex untouched by the reprocess
        trail = [(e.stage, e.outcome) for e in gw.events(bad.id)]
        assert ("anaplan", "fail") in trail and trail[-1] == ("anaplan", "ok")
        assert [x for x in trail if x[0] == "plex"] == [("plex", "ok")]  # posted once
        assert any(e.outcome == "reprocess" and e.actor == "alice" for e in gw.events(bad.id))
