"""Plex as a destination against its simulator: one delivery at a time, each fault on its own.

What matters is the simulator's state (exactly one record) and the outcome the pipeline gets.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.integrations.plex.destination import PostStage, invoice_draft
from gateway.integrations.plex.suppliers import SupplierMaster
from gateway.integrations.plex.client import (
    APInvoiceAccounts, OAuthClientCredentials, PlexClient, PlexConfig, RetryPolicy, SupplierMatching,
)
from gateway.partners import load_partner_directory
from gateway.integrations.base import DeliveryItem, OutcomeKind
from gateway.sandbox.environment import seed_partners
from gateway.integrations.plex.simulator.app import (
    SIM_API_KEY, SIM_CLIENT_ID, SIM_CLIENT_SECRET, SIM_SOAP_PASSWORD, SIM_SOAP_USER, PlexSim, SimSettings,
)
from translators.translate import translate

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "edi" / "demo"
PARTNERS = load_partner_directory(ROOT / "partners")
ACCOUNTS = APInvoiceAccounts(expense_account="5000-100-00", tax_account="2300-000-00")


@pytest.fixture(scope="module")
def served():
    sim = PlexSim(SimSettings(rate_limit_per_minute=None))
    server = sim.serve()
    yield sim
    server.stop()


@pytest.fixture
def sim(served):
    served.reset()
    seed_partners(served)
    return served


def client(sim: PlexSim, **overrides) -> PlexClient:
    values = dict(connect_url=sim.base_url, api_key=SIM_API_KEY,
                  soap={"url": sim.soap_url, "username": SIM_SOAP_USER, "password": SIM_SOAP_PASSWORD},
                  timeout_seconds=0.5, requests_per_minute=60_000, burst=1000,
                  retry=RetryPolicy(max_attempts=2, backoff_initial=0.01, backoff_max=0.05, jitter=0,
                                    max_retry_after=0.5, ambiguous_recheck_delay=0.05))
    values.update(overrides)
    return PlexClient(PlexConfig(**values))


def stage(c: PlexClient) -> PostStage:
    master = SupplierMaster(None, c, SupplierMatching(), owner="test")  # type: ignore[arg-type]
    return PostStage(c, master, accounts=ACCOUNTS, partners=lambda: PARTNERS, concurrency=2)


def document(name: str, supplier_code: str, doc_id: int = 1) -> DeliveryItem:
    """The Plex delivery (id ``doc_id``) of the demo document in ``name``, as the worker hands it over."""
    result = translate((DEMO / name).read_bytes(), PARTNERS, source=name)
    d = result.documents[0]
    return DeliveryItem(delivery_id=doc_id, document_id=doc_id, destination="plex", kind=d.kind, partner=d.partner,
                        standard=d.standard, message_type=d.type, canonical=json.loads(json.dumps(d.document)),
                        supplier_code=supplier_code)


INVOICE = ("acme-fasteners-810-INV-10234.x12", "ACME01")
ORDER = ("europa-components-ORDERS-EC-7781.edi", "EUROCOMP")
CUSTOMER_ORDER = ("northwind-retail-850-NW-4471.x12", "NWRETAIL")


def post(c: PlexClient, which: tuple[str, str]):
    s = stage(c)
    try:
        return s([document(*which)])[1]
    finally:
        s.close()


def invoices(sim: PlexSim, number: str = "INV-10234") -> list[dict]:
    return [r for r in sim.state(log=False)["ap_invoices"] if r["invoiceNumber"] == number]


def test_invoice_posted_with_its_audit_detail(sim):
    out = post(client(sim), INVOICE)
    assert out.kind is OutcomeKind.OK
    [record] = invoices(sim)
    assert out.reference == f"ap_invoice:{record['id']}"
    plex = out.detail["plex"]
    assert plex["disposition"] == "created" and plex["response"]["voucherNumber"] == record["voucherNumber"]
    assert [c["operation"] for c in out.detail["calls"]] == ["ap_invoice.find", "ap_invoice.create"]
    assert "gateway document 1" in record["note"]
    # Posting it again finds it: no second invoice.
    again = post(client(sim), INVOICE)
    assert again.detail["plex"]["disposition"] == "already_existed" and len(invoices(sim)) == 1


def test_a_lost_answer_is_found_again_not_created_twice(sim):
    sim.add_fault(kind="timeout_after_commit", surface="rest", method="POST", path="/accounting/v1/ap-invoices",
                  delay=1.0)
    out = post(client(sim), INVOICE)
    assert out.kind is OutcomeKind.OK and out.detail["plex"]["recovered"] is True
    assert len(invoices(sim)) == 1
    ops = [(c["operation"], c["outcome"]) for c in out.detail["calls"]]
    assert ops == [("ap_invoice.find", "ok"), ("ap_invoice.create", "PlexTimeoutError"), ("ap_invoice.find", "ok")]


def test_when_the_look_up_after_a_timeout_fails_the_pipeline_retries_and_finds_it(sim):
    sim.add_fault(kind="timeout_after_commit", surface="rest", method="POST", path="/accounting/v1/ap-invoices",
                  delay=1.0)
    sim.add_fault(kind="server_error", surface="rest", method="GET", path="/accounting/v1/ap-invoices", status=503,
                  skip=1, times=2)
    first = post(client(sim), INVOICE)
    assert first.kind is OutcomeKind.RETRY and first.code == "plex.transient"
    assert len(invoices(sim)) == 1  # committed, although nobody heard it
    second = post(client(sim), INVOICE)  # the next attempt looks before it creates
    assert second.kind is OutcomeKind.OK and second.detail["plex"]["disposition"] == "already_existed"
    assert [c["operation"] for c in second.detail["calls"]] == ["ap_invoice.find"]
    assert len(invoices(sim)) == 1


def test_purchase_order_through_soap_survives_an_error_after_commit(sim):
    sim.add_fault(kind="error_after_commit", surface="soap", operation="90001", status=502)
    sim.add_fault(kind="server_error", surface="soap", operation="90003")  # one line add answers soap:Server
    out = post(client(sim), ORDER)
    assert out.kind is OutcomeKind.OK, out.error
    pos = [p for p in sim.state(log=False)["purchase_orders"] if p["poNumber"] == "EC-7781"]
    assert len(pos) == 1 and pos[0]["lineItemCount"] == 2
    assert out.reference == f"purchase_order:{pos[0]['_poKey']}"
    assert out.detail["plex"]["record"] == "purchase_order" and out.detail["plex"]["recovered"] is True


def test_customer_orders_become_sales_orders(sim):
    out = post(client(sim), CUSTOMER_ORDER)
    assert out.kind is OutcomeKind.OK, out.error
    [order] = [o for o in sim.state(log=False)["sales_orders"] if o["poNumber"] == "NW-4471"]
    customer = next(c for c in sim.state(log=False)["customers"] if c["code"] == "NWRETAIL")
    assert order["customerId"] == customer["id"] and len(order["lines"]) == 2
    assert sim.state(log=False)["purchase_orders"] == [p for p in sim.state(log=False)["purchase_orders"]
                                                      if p["poNumber"] != "NW-4471"]


def test_429_with_a_long_retry_after_goes_back_to_the_pipeline_as_a_wait(sim):
    sim.add_fault(kind="throttle_retry_after", surface="rest", method="GET", path="/accounting/v1/ap-invoices",
                  retry_after=7)
    out = post(client(sim), INVOICE)
    # A wait, not a failed attempt: the worker looks again when Plex said.
    assert out.kind is OutcomeKind.WAIT and out.code == "plex.throttled" and out.after == 7
    assert "throttling" in out.error
    assert invoices(sim) == []


def test_429_without_retry_after_is_backed_off_in_the_call(sim):
    sim.add_fault(kind="throttle_no_header", surface="rest", method="GET", path="/accounting/v1/ap-invoices")
    out = post(client(sim), INVOICE)
    assert out.kind is OutcomeKind.OK and len(invoices(sim)) == 1
    assert [c["status"] for c in out.detail["calls"]][:2] == [429, 200]


def test_403_is_a_permission_error_on_the_document(sim):
    sim.add_fault(kind="forbidden", surface="rest", method="POST", path="/accounting/v1/ap-invoices", times=None)
    out = post(client(sim), INVOICE)
    assert out.kind is OutcomeKind.FAIL and out.code == "plex.permission" and "403" in out.error
    assert invoices(sim) == []
    assert sum(1 for c in out.detail["calls"] if c["operation"] == "ap_invoice.create") == 1  # not retried


def test_401_reauthenticates_once(sim):
    oauth = OAuthClientCredentials(token_url=sim.base_url + "/op/token", client_id=SIM_CLIENT_ID,
                                   client_secret=SIM_CLIENT_SECRET)
    sim.add_fault(kind="unauthorized", surface="rest", method="POST", path="/accounting/v1/ap-invoices", times=1)
    out = post(client(sim, api_key=None, oauth=oauth), INVOICE)
    assert out.kind is OutcomeKind.OK and len(invoices(sim)) == 1
    assert sim.state(log=False)["counters"]["tokens_issued"] == 2  # the first token, and one refresh

    # Refused again after the one re-authentication: the document fails, no third try.
    sim.add_fault(kind="unauthorized", surface="rest", method="GET", path="/accounting/v1/ap-invoices", times=2)
    other = document(*INVOICE)
    other = replace(other, canonical={**other.canonical, "invoice_number": "INV-10234-B"})
    s = stage(client(sim, api_key=None, oauth=oauth))
    out = s([other])[1]
    s.close()
    assert out.kind is OutcomeKind.FAIL and out.code == "plex.auth"
    assert [c["status"] for c in out.detail["calls"]] == [401, 401]


def test_plex_validation_errors_fail_with_plexs_message(sim):
    d = replace(document(*INVOICE), supplier_code="NOSUCH")
    s = stage(client(sim))
    out = s([d])[1]
    s.close()
    assert out.kind is OutcomeKind.FAIL and out.code == "plex.rejected"
    assert "supplierId/supplierCode does not identify a supplier" in out.error


def test_invoice_mapping_refuses_what_plex_cannot_take():
    d = document(*INVOICE)
    canonical = {**d.canonical, "invoice_date": None}
    with pytest.raises(ValueError, match="no invoice date"):
        invoice_draft(d, canonical, ACCOUNTS)
    canonical = dict(d.canonical)
    draft = invoice_draft(d, canonical, ACCOUNTS.model_copy(update={"charge_account": "6100-000-00"}))
    assert [ln.account_number for ln in draft.lines] == ["5000-100-00"] * 3 + ["6100-000-00", "2300-000-00"]
    assert draft.lines[-1].is_tax_line and draft.currency_code == "USD" and draft.po_number == "PO-88121"


def test_a_claim_too_big_for_the_budget_is_posted_in_part_and_the_rest_waits(sim):
    c = client(sim)
    s = PostStage(c, SupplierMaster(None, c, SupplierMatching(), owner="test"),  # type: ignore[arg-type]
                  accounts=ACCOUNTS, partners=lambda: PARTNERS, concurrency=1, time_budget=0.0)
    first, second = document(*INVOICE, doc_id=1), document(*ORDER, doc_id=2)
    out = s([first, second])
    s.close()
    # With no time left, nothing was started: both wait (no attempt used) for the next claim.
    assert {o.kind for o in out.values()} == {OutcomeKind.WAIT}
    assert invoices(sim) == [] and sim.state(log=False)["counters"]["requests"] == {}
