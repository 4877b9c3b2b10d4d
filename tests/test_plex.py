"""Plex client against the Plex simulator over real HTTP on 127.0.0.1 (REST via httpx, SOAP via zeep).

Time is faked on the client side (rate budget, backoff, token expiry) and moved explicitly on the simulator
side (``/_sim/clock``), so no test sleeps for real except where a fault makes the server hold an answer past
the client's (sub-second) timeout.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
import structlog
import zeep

from gateway.integrations.plex.client import (
    APInvoiceDraft,
    APInvoiceLine,
    ChangeCursor,
    OAuthClientCredentials,
    PlexAuthError,
    PlexClient,
    PlexConfig,
    PlexDataSourceError,
    PlexPermissionError,
    PlexThrottledError,
    PurchaseOrderDataSources,
    PurchaseOrderDraft,
    PurchaseOrderLine,
    RateBudget,
    SalesOrderDraft,
    SalesOrderLine,
    SoapAccount,
)
from gateway.integrations.plex.simulator.app import (
    DS_PO_ADD,
    DS_PO_GET,
    DS_PO_LINE_ADD,
    PCN_MAIN,
    PCN_SECOND,
    SIM_API_KEY,
    SIM_CLIENT_ID,
    SIM_CLIENT_SECRET,
    SIM_LIMITED_API_KEY,
    SIM_SOAP_PASSWORD,
    SIM_SOAP_READONLY_USER,
    SIM_SOAP_USER,
    SOAP_PATH,
    PlexSim,
    run_plex_sim,
)

AP_PATH = "/accounting/v1/ap-invoices"
SUPPLIERS_PATH = "/mdm/v1/suppliers"


class FakeClock:
    """Client-side clock: ``sleep`` records and advances time instantly (optionally telling the simulator)."""

    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []
        self._on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self._on_sleep is not None:
            self._on_sleep(seconds)


# --------------------------------------------------------------------------------------------- fixtures


# One keep-alive client for the /_sim control calls (a fresh httpx client per call costs ~30 ms).
CTL = httpx.Client(timeout=10.0, trust_env=False)


@pytest.fixture(scope="module")
def served() -> Iterator[PlexSim]:
    with run_plex_sim() as sim:
        yield sim


@pytest.fixture()
def sim(served: PlexSim) -> PlexSim:
    assert CTL.post(f"{served.base_url}/_sim/reset").status_code == 204
    return served


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


def make_client(sim: PlexSim, clock: FakeClock, **overrides: Any) -> PlexClient:
    fields: dict[str, Any] = dict(
        connect_url=sim.base_url, api_key=SIM_API_KEY, customer_id=PCN_MAIN, trust_env=False,
        timeout_seconds=0.5, list_timeout_seconds=3.0, connect_timeout_seconds=2.0,
        soap=SoapAccount(url=sim.soap_url, username=SIM_SOAP_USER, password=SIM_SOAP_PASSWORD))
    fields.update(overrides)
    return PlexClient(PlexConfig(**fields), clock=clock, sleep=clock.sleep, rng=random.Random(1))


@pytest.fixture()
def client(sim: PlexSim, clock: FakeClock) -> Iterator[PlexClient]:
    c = make_client(sim, clock)
    yield c
    c.close()


def add_fault(sim: PlexSim, **rule: Any) -> dict[str, Any]:
    resp = CTL.post(f"{sim.base_url}/_sim/faults", json=rule)
    assert resp.status_code == 201, resp.text
    return resp.json()[0]


def state(sim: PlexSim) -> dict[str, Any]:
    return CTL.get(f"{sim.base_url}/_sim/state").json()


def requests_to(st: dict[str, Any], method: str, path: str, operation: str | None = None) -> list[dict[str, Any]]:
    return [e for e in st["request_log"] if e["method"] == method and e["path"] == path
            and (operation is None or e["operation"] == operation)]


def sim_rest(sim: PlexSim, method: str, path: str, **kw: Any) -> httpx.Response:
    return CTL.request(method, sim.base_url + path, headers={"X-Plex-Connect-Api-Key": SIM_API_KEY}, **kw)


def suppliers_of_main(st: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in st["suppliers"] if s["_tenant"] == PCN_MAIN]


def invoice_draft(supplier_code: str, number: str = "INV-778812") -> APInvoiceDraft:
    return APInvoiceDraft(
        invoice_number=number, supplier_code=supplier_code, invoice_date=date(2025, 3, 4),
        due_date=date(2025, 4, 3), currency_code="USD", po_number="PO-104455", note="EDI 810 ctrl 000000123",
        lines=[APInvoiceLine(account_number="5000-100-00", description="Steel bar 1in", quantity="40",
                             unit_price="12.50"),
               APInvoiceLine(account_number="2300-000-00", description="Sales tax", unit_price="41.25",
                             is_tax_line=True)])


def po_draft(supplier_code: str, number: str = "PO-850-0001") -> PurchaseOrderDraft:
    return PurchaseOrderDraft(
        po_number=number, supplier_code=supplier_code, po_date=date(2025, 3, 4), due_date=date(2025, 3, 20),
        currency_code="USD", lines=[
            PurchaseOrderLine(line_number=1, part_number="BAR-1IN", quantity="40", unit="ea", unit_price="12.50"),
            PurchaseOrderLine(line_number=2, part_number="BAR-2IN", quantity="10", unit="ea", unit_price="19.75")])


def invoices_numbered(st: dict[str, Any], number: str) -> list[dict[str, Any]]:
    return [i for i in st["ap_invoices"] if i["invoiceNumber"] == number]


# --------------------------------------------------------------------------------------------- supplier master


def test_supplier_master_paged_client_side_from_one_unpaged_request(sim: PlexSim, client: PlexClient) -> None:
    pages = list(client.iter_supplier_pages(page_size=10))
    st = state(sim)
    expected = {s["id"] for s in suppliers_of_main(st)}
    assert [len(p) for p in pages] == [10, 10, 4]
    assert {s.id for p in pages for s in p} == expected  # this tenant only, nothing lost or doubled
    assert len(requests_to(st, "GET", SUPPLIERS_PATH)) == 1  # Connect has no server paging
    first = pages[0][0]
    assert first.modified_date is not None and first.modified_date.tzinfo is not None  # 7-digit fraction parsed


def test_changed_since_windows_and_client_side_recheck(sim: PlexSim, client: PlexClient, clock: FakeClock) -> None:
    st = state(sim)
    a, b = suppliers_of_main(st)[:2]
    for sup, minutes in ((a, 0), (b, 300)):  # b changes five hours after a
        CTL.post(f"{sim.base_url}/_sim/clock", json={"advance_seconds": minutes * 60})
        resp = sim_rest(sim, "PUT", f"{SUPPLIERS_PATH}/{sup['id']}", json={**sup, "name": sup["name"] + " LLC"})
        assert resp.status_code == 200
    clock.now = datetime.fromisoformat(CTL.get(f"{sim.base_url}/_sim/clock").json()["now"]).timestamp() + 60
    since = datetime.fromtimestamp(clock.now, UTC) - timedelta(days=1)

    changed = client.read_suppliers(modified_since=since, window=timedelta(hours=6))
    assert {s.id for s in changed} == {a["id"], b["id"]}
    assert all(s.name.endswith(" LLC") for s in changed)
    assert len(requests_to(state(sim), "GET", SUPPLIERS_PATH)) == 4  # one per 6-hour slice of the day

    # Plex ignores filters it does not know instead of rejecting them: the client must re-check each row.
    add_fault(sim, kind="ignore_filter", surface="rest", path=SUPPLIERS_PATH, param="modifiedDateBegin", times=None)
    assert {s.id for s in client.read_suppliers(modified_since=since)} == {a["id"], b["id"]}


def test_poll_suppliers_overlap_has_no_duplicates_and_no_gaps(sim: PlexSim, client: PlexClient,
                                                              clock: FakeClock) -> None:
    def sim_now() -> datetime:
        return datetime.fromisoformat(CTL.get(f"{sim.base_url}/_sim/clock").json()["now"])

    def touch(sup: dict[str, Any]) -> None:
        assert sim_rest(sim, "PUT", f"{SUPPLIERS_PATH}/{sup['id']}", json={**sup, "note": "changed"}).status_code == 200

    first = client.poll_suppliers()
    assert len(first.suppliers) == 24
    again = client.poll_suppliers(first.cursor)
    assert again.suppliers == []

    a, b = suppliers_of_main(state(sim))[3:5]
    touch(a)
    clock.now = sim_now().timestamp() + 1
    second = client.poll_suppliers(again.cursor)
    assert [s.id for s in second.suppliers] == [a["id"]]

    # A writer whose clock is two minutes behind stamps b *before* the watermark: the overlap must catch it,
    # and the cursor's edge must keep a from being delivered a second time.
    CTL.post(f"{sim.base_url}/_sim/clock", json={"advance_seconds": -120})
    touch(b)
    third = client.poll_suppliers(second.cursor)
    assert [s.id for s in third.suppliers] == [b["id"]]
    assert third.cursor.watermark == second.cursor.watermark
    assert client.poll_suppliers(third.cursor).suppliers == []
    # The cursor is plain data the store can keep.
    assert ChangeCursor.model_validate_json(third.cursor.model_dump_json()) == third.cursor


# --------------------------------------------------------------------------------------------- AP invoices


def test_invoice_create_lookup_and_second_delivery(sim: PlexSim, client: PlexClient) -> None:
    supplier = suppliers_of_main(state(sim))[0]
    draft = invoice_draft(supplier["code"])
    outcome = client.post_invoice(draft)
    assert (outcome.created, outcome.recovered, outcome.disposition) == (True, False, "created")
    found = client.find_ap_invoice(draft.invoice_number, supplier_code=supplier["code"])
    assert found is not None and found.id == outcome.record_id and found.supplier_id == supplier["id"]
    assert outcome.response["voucherNumber"] == found.voucher_number
    assert outcome.response["amount"] == "541.25"  # 40 x 12.50 + 41.25: Decimals reached Plex unrounded
    assert [c.operation for c in outcome.calls] == ["ap_invoice.find", "ap_invoice.create"]

    again = client.post_invoice(draft)  # the partner sends the same 810 twice
    assert (again.created, again.record_id, again.disposition) == (False, outcome.record_id, "already_existed")
    st = state(sim)
    assert len(invoices_numbered(st, draft.invoice_number)) == 1
    assert len(requests_to(st, "POST", AP_PATH)) == 1
    assert client.find_ap_invoice(draft.invoice_number, supplier_code="NOPE99") is None


def test_invoice_lookup_survives_an_ignored_filter(sim: PlexSim, client: PlexClient) -> None:
    add_fault(sim, kind="ignore_filter", surface="rest", path=AP_PATH, param="invoiceNumber", times=None)
    supplier = suppliers_of_main(state(sim))[0]
    # Seeded invoices of this supplier come back unfiltered; none of them is INV-NEW.
    assert client.find_ap_invoice("INV-NEW", supplier_code=supplier["code"]) is None
    outcome = client.post_invoice(invoice_draft(supplier["code"], "INV-NEW"))
    assert outcome.created
    assert client.post_invoice(invoice_draft(supplier["code"], "INV-NEW")).record_id == outcome.record_id
    assert len(invoices_numbered(state(sim), "INV-NEW")) == 1


def test_invoice_create_5xx_then_success(sim: PlexSim, client: PlexClient, clock: FakeClock) -> None:
    add_fault(sim, kind="server_error", surface="rest", method="POST", path=AP_PATH, status=503)
    supplier = suppliers_of_main(state(sim))[0]
    outcome = client.post_invoice(invoice_draft(supplier["code"]))
    assert outcome.created and not outcome.recovered
    assert [(c.operation, c.status) for c in outcome.calls] == [
        ("ap_invoice.find", 200), ("ap_invoice.create", 503), ("ap_invoice.find", 200), ("ap_invoice.create", 201)]
    assert clock.sleeps and clock.sleeps[0] >= 5.0  # waited ambiguous_recheck_delay before re-checking
    assert len(invoices_numbered(state(sim), "INV-778812")) == 1


@pytest.mark.parametrize("kind", ["timeout_after_commit", "error_after_commit", "drop_after_commit", "malformed"])
def test_invoice_created_but_response_lost_posts_exactly_once(sim: PlexSim, client: PlexClient, kind: str) -> None:
    add_fault(sim, kind=kind, surface="rest", method="POST", path=AP_PATH, delay=1.5)
    supplier = suppliers_of_main(state(sim))[0]
    outcome = client.post_invoice(invoice_draft(supplier["code"]))
    assert (outcome.created, outcome.recovered) == (True, True)
    st = state(sim)
    created = invoices_numbered(st, "INV-778812")
    assert len(created) == 1 and created[0]["id"] == outcome.record_id
    assert len(requests_to(st, "POST", AP_PATH)) == 1  # the re-check found it: no second create
    assert outcome.calls[1].outcome in {"PlexTimeoutError", "PlexServerError", "PlexConnectionError",
                                        "PlexProtocolError"}


def test_reads_retry_5xx(sim: PlexSim, client: PlexClient, clock: FakeClock) -> None:
    add_fault(sim, kind="server_error", surface="rest", method="GET", path=SUPPLIERS_PATH, status=502, times=2)
    assert len(client.read_suppliers()) == 24
    assert len(requests_to(state(sim), "GET", SUPPLIERS_PATH)) == 3
    assert len(clock.sleeps) == 2 and clock.sleeps[1] > clock.sleeps[0]


# --------------------------------------------------------------------------------------------- throttling


def test_429_with_retry_after_is_honoured(sim: PlexSim, client: PlexClient, clock: FakeClock) -> None:
    add_fault(sim, kind="throttle_retry_after", surface="rest", method="GET", path=AP_PATH, retry_after=7)
    add_fault(sim, kind="throttle_retry_after", surface="rest", method="POST", path=AP_PATH, retry_after=3)
    supplier = suppliers_of_main(state(sim))[0]
    outcome = client.post_invoice(invoice_draft(supplier["code"]))
    assert outcome.created
    assert clock.sleeps == [7.0, 3.0]  # exactly what the server asked, nothing else
    # A throttled create was not processed: it is retried directly, without a re-check in between.
    assert [(c.operation, c.status) for c in outcome.calls] == [
        ("ap_invoice.find", 429), ("ap_invoice.find", 200), ("ap_invoice.create", 429), ("ap_invoice.create", 201)]
    assert len(invoices_numbered(state(sim), "INV-778812")) == 1


@pytest.mark.parametrize("kind", ["throttle_no_header", "throttle_bare"])
def test_429_without_retry_after_backs_off_exponentially(sim: PlexSim, client: PlexClient, clock: FakeClock,
                                                         kind: str) -> None:
    add_fault(sim, kind=kind, surface="rest", path=SUPPLIERS_PATH, times=3)
    assert len(client.read_suppliers()) == 24
    assert len(clock.sleeps) == 3
    for n, wait in enumerate(clock.sleeps):
        assert 2 ** n <= wait <= 2 ** n * 1.25  # 1, 2, 4 s plus at most 25 % jitter


def test_retry_after_beyond_the_cap_is_raised_not_slept(sim: PlexSim, client: PlexClient, clock: FakeClock) -> None:
    add_fault(sim, kind="throttle_retry_after", surface="rest", path=SUPPLIERS_PATH, retry_after=3600)
    with pytest.raises(PlexThrottledError) as err:
        client.read_suppliers()
    assert err.value.retry_after == 3600 and err.value.transient
    assert clock.sleeps == []


def test_rate_budget_never_exceeds_200_in_any_minute() -> None:
    clock = FakeClock()
    budget = RateBudget("plex-connect:test", 200, burst=20, clock=clock, sleep=clock.sleep)
    start = clock.now
    grants = []
    for _ in range(600):
        budget.acquire()
        grants.append(clock.now)
    assert grants[19] == start  # the burst goes out at once
    assert grants[20] > start
    busiest = max(sum(1 for g in grants[i:] if g < t + 60) for i, t in enumerate(grants))
    assert busiest <= 200
    assert busiest >= 195  # and the budget is actually used, not wasted
    assert grants[-1] - start == pytest.approx((600 - 20) / 3, rel=0.01)  # 180/min sustained after the burst


def test_client_budget_keeps_the_server_window_quiet(sim: PlexSim) -> None:
    def advance_sim(seconds: float) -> None:
        CTL.post(f"{sim.base_url}/_sim/clock", json={"advance_seconds": seconds})

    clock = FakeClock(on_sleep=advance_sim)
    with make_client(sim, clock) as client:
        for _ in range(230):
            client.list_tenants()
    responses = state(sim)["counters"]["responses"]
    assert responses.get("rest:200") == 230 and "rest:429" not in responses
    assert sum(clock.sleeps) == pytest.approx((230 - 20) / 3, rel=0.02)  # paced at 180/min after the burst


def test_simulator_enforces_200_per_minute_and_client_recovers(sim: PlexSim) -> None:
    def advance_sim(seconds: float) -> None:
        CTL.post(f"{sim.base_url}/_sim/clock", json={"advance_seconds": seconds})

    clock = FakeClock(on_sleep=advance_sim)
    # A budget far above Plex's limit: the simulator's sliding window must push back.
    with make_client(sim, clock, requests_per_minute=100_000, burst=10_000) as client:
        for _ in range(205):
            client.list_tenants()
    responses = state(sim)["counters"]["responses"]
    assert responses.get("rest:200") == 205
    assert responses.get("rest:429") == 1
    assert len(clock.sleeps) == 1 and 1 <= clock.sleeps[0] <= 60  # the window's Retry-After, honoured


# --------------------------------------------------------------------------------------------- auth and permissions


def test_403_raises_permission_error_without_retry(sim: PlexSim, client: PlexClient) -> None:
    add_fault(sim, kind="forbidden", surface="rest", method="POST", path=AP_PATH, times=None)
    supplier = suppliers_of_main(state(sim))[0]
    with pytest.raises(PlexPermissionError) as err:
        client.post_invoice(invoice_draft(supplier["code"]))
    assert err.value.status == 403 and not err.value.transient
    st = state(sim)
    assert len(requests_to(st, "POST", AP_PATH)) == 1
    assert invoices_numbered(st, "INV-778812") == []


def oauth_client(sim: PlexSim, clock: FakeClock) -> PlexClient:
    return make_client(sim, clock, api_key=None, oauth=OAuthClientCredentials(
        token_url=f"{sim.base_url}/op/token", client_id=SIM_CLIENT_ID, client_secret=SIM_CLIENT_SECRET))


def test_expired_token_is_refreshed_once(sim: PlexSim, clock: FakeClock) -> None:
    with oauth_client(sim, clock) as client:
        assert client.list_tenants()
        assert state(sim)["counters"]["tokens_issued"] == 1
        # The simulator's clock passes the token's 600 s lifetime; the client's clock does not (skew).
        CTL.post(f"{sim.base_url}/_sim/clock", json={"advance_seconds": 601})
        supplier = suppliers_of_main(state(sim))[0]
        outcome = client.post_invoice(invoice_draft(supplier["code"]))
    assert outcome.created
    assert [(c.status, c.outcome) for c in outcome.calls[:2]] == [(401, "reauthenticate"), (200, "ok")]
    assert state(sim)["counters"]["tokens_issued"] == 2


def test_persistent_401_raises_auth_error_after_one_reauthentication(sim: PlexSim, clock: FakeClock) -> None:
    add_fault(sim, kind="unauthorized", surface="rest", times=None)
    with oauth_client(sim, clock) as client, pytest.raises(PlexAuthError):
        client.list_tenants()
    st = state(sim)
    assert st["counters"]["tokens_issued"] == 2  # the first token plus exactly one refresh
    assert len(requests_to(st, "GET", "/mdm/v1/tenants")) == 2


def test_expired_api_key_picks_up_a_rotated_key_once(sim: PlexSim, clock: FakeClock) -> None:
    past = "2000-01-01T00:00:00Z"
    keys = CTL.get(f"{sim.base_url}/_sim/config").json()["api_keys"]
    keys[0]["expires_at"] = past
    keys.append({**keys[0], "key": "sim-connect-key-rotated", "expires_at": None})
    assert CTL.patch(f"{sim.base_url}/_sim/config", json={"api_keys": keys}).status_code == 200

    with make_client(sim, clock) as stale, pytest.raises(PlexAuthError) as err:
        stale.list_tenants()  # no way to get a new key: no blind retries
    assert err.value.status == 401
    assert len(requests_to(state(sim), "GET", "/mdm/v1/tenants")) == 1

    client = PlexClient(make_client(sim, clock).config, clock=clock, sleep=clock.sleep,
                        key_provider=lambda: "sim-connect-key-rotated")
    assert [t["code"] for t in client.list_tenants()] == ["ACME", "ACMEMX"]
    assert len(requests_to(state(sim), "GET", "/mdm/v1/tenants")) == 3


def test_unsubscribed_product_and_foreign_tenant_are_auth_errors(sim: PlexSim, clock: FakeClock) -> None:
    with make_client(sim, clock, api_key=SIM_LIMITED_API_KEY) as client:
        assert len(client.read_suppliers()) == 24  # mdm/ is subscribed
        with pytest.raises(PlexAuthError):
            client.find_ap_invoice("X", supplier_code="Y")  # accounting/ is not: 401, not 403
    with make_client(sim, clock, customer_id="999999") as client, pytest.raises(PlexAuthError):
        client.list_tenants()
    with make_client(sim, clock, customer_id=PCN_SECOND) as client:  # a PCN the key may reach
        mx = client.read_suppliers()
    assert {s.id for s in mx} == {s["id"] for s in state(sim)["suppliers"] if s["_tenant"] == PCN_SECOND}


def test_secrets_never_reach_logs_or_errors(sim: PlexSim, clock: FakeClock) -> None:
    secrets = [SIM_API_KEY, SIM_CLIENT_SECRET, SIM_SOAP_PASSWORD, "wrong-password-xyz"]
    errors: list[str] = []
    with structlog.testing.capture_logs() as logs:
        add_fault(sim, kind="unauthorized", surface="rest", times=None)
        with oauth_client(sim, clock) as c, pytest.raises(PlexAuthError) as e1:
            c.list_tenants()
        errors.append(str(e1.value))
        with make_client(sim, clock) as c, pytest.raises(PlexAuthError) as e2:
            c.list_tenants()
        errors.append(str(e2.value))
        bad_soap = SoapAccount(url=sim.soap_url, username=SIM_SOAP_USER, password="wrong-password-xyz")
        with make_client(sim, clock, soap=bad_soap) as c, pytest.raises(PlexAuthError) as e3:
            c.find_purchase_order("PO-1")
        errors.append(str(e3.value))
        errors.append(repr(c.config))
    assert logs and len(errors) == 4
    text = "\n".join(errors) + "\n" + "\n".join(repr(entry) for entry in logs)
    for secret in secrets:
        assert secret not in text


# --------------------------------------------------------------------------------------------- purchase orders (SOAP)


def header_only() -> PurchaseOrderDataSources:
    """A tenant whose create data source takes the header alone: the lines follow one call each."""
    sources = PurchaseOrderDataSources()
    create = sources.create.model_copy(update={"inputs": {k: v for k, v in sources.create.inputs.items()
                                                          if k != "lines"}})
    return sources.model_copy(update={"create": create})


def test_purchase_order_via_soap_data_source_with_the_simulators_wsdl(sim: PlexSim, client: PlexClient) -> None:
    supplier = suppliers_of_main(state(sim))[2]
    draft = po_draft(supplier["code"])
    outcome = client.post_purchase_order(draft)
    assert (outcome.created, outcome.lines_added, outcome.record_key is not None) == (True, 2, True)
    assert outcome.response["lines"] == [1, 2]

    st = state(sim)
    assert len(requests_to(st, "GET", SOAP_PATH)) == 1  # zeep read the simulator's WSDL once
    # WSDL, lookup, one create carrying the lines; nothing on the REST surface.
    assert st["counters"]["requests"] == {"soap": 3}
    assert not requests_to(st, "POST", SOAP_PATH, str(DS_PO_LINE_ADD))
    pos = [p for p in st["purchase_orders"] if p["poNumber"] == draft.po_number]
    assert len(pos) == 1 and pos[0]["_poKey"] == outcome.record_key and len(pos[0]["_lines"]) == 2
    assert pos[0]["_tenant"] == PCN_MAIN  # the web-service account selects the company
    # The data source wrote the same store Connect REST reads.
    rest = sim_rest(sim, "GET", "/purchasing/v1/purchase-orders", params={"poNumber": draft.po_number}).json()
    assert [(p["poNumber"], p["supplierId"], p["lineItemCount"]) for p in rest] == [
        (draft.po_number, supplier["id"], 2)]

    again = client.post_purchase_order(draft)
    assert (again.created, again.lines_added, again.record_key) == (False, 0, outcome.record_key)
    assert len(requests_to(state(sim), "POST", SOAP_PATH, str(DS_PO_ADD))) == 1


def test_purchase_order_lines_one_call_each_where_the_create_takes_only_the_header(sim: PlexSim,
                                                                                  clock: FakeClock) -> None:
    supplier = suppliers_of_main(state(sim))[2]
    draft = po_draft(supplier["code"])
    with make_client(sim, clock, purchase_orders=header_only()) as client:
        outcome = client.post_purchase_order(draft)
    assert (outcome.created, outcome.lines_added, outcome.response["lines"]) == (True, 2, [1, 2])
    st = state(sim)
    # WSDL, lookup, header create, two line adds (not read back).
    assert st["counters"]["requests"] == {"soap": 5}
    assert len(requests_to(st, "POST", SOAP_PATH, str(DS_PO_LINE_ADD))) == 2
    pos = [p for p in st["purchase_orders"] if p["poNumber"] == draft.po_number]
    assert len(pos) == 1 and sorted(ln["lineItemNumber"] for ln in pos[0]["_lines"]) == [1, 2]


def test_a_bad_line_sent_with_the_header_stores_no_purchase_order(sim: PlexSim, client: PlexClient) -> None:
    supplier = suppliers_of_main(state(sim))[2]
    body = {"Supplier_Code": supplier["code"], "PO_No": "PO-BAD-LINE",
            "Lines": '[{"Line_No": "1", "Quantity": "2"}, {"Line_No": "2", "Quantity": "many"}]'}
    with pytest.raises(PlexDataSourceError) as err:
        client.execute_data_source(DS_PO_ADD, body, retry=False)
    assert "Line 2" in str(err.value)
    assert not [p for p in state(sim)["purchase_orders"] if p["poNumber"] == "PO-BAD-LINE"]


def test_purchase_order_create_response_lost_posts_exactly_once(sim: PlexSim, client: PlexClient) -> None:
    add_fault(sim, kind="timeout_after_commit", surface="soap", operation=str(DS_PO_ADD), delay=1.5)
    supplier = suppliers_of_main(state(sim))[2]
    outcome = client.post_purchase_order(po_draft(supplier["code"]))
    assert (outcome.created, outcome.recovered, outcome.lines_added) == (True, True, 2)
    st = state(sim)
    pos = [p for p in st["purchase_orders"] if p["poNumber"] == "PO-850-0001"]
    assert len(pos) == 1 and len(pos[0]["_lines"]) == 2
    assert len(requests_to(st, "POST", SOAP_PATH, str(DS_PO_ADD))) == 1


def test_purchase_order_line_5xx_and_resume_of_a_half_posted_order(sim: PlexSim, client: PlexClient,
                                                                    clock: FakeClock) -> None:
    supplier = suppliers_of_main(state(sim))[2]
    draft = po_draft(supplier["code"])
    with make_client(sim, clock, purchase_orders=header_only()) as earlier:
        earlier.create_purchase_order_header(draft)  # an earlier run died after the header
    add_fault(sim, kind="server_error", surface="soap", operation=str(DS_PO_LINE_ADD))  # soap:Server fault
    outcome = client.post_purchase_order(draft)
    assert (outcome.created, outcome.lines_added) == (False, 2)
    pos = [p for p in state(sim)["purchase_orders"] if p["poNumber"] == draft.po_number]
    assert len(pos) == 1 and sorted(ln["lineItemNumber"] for ln in pos[0]["_lines"]) == [1, 2]


def test_duplicate_po_number_is_surfaced_not_retried(sim: PlexSim, client: PlexClient) -> None:
    supplier = suppliers_of_main(state(sim))[2]
    draft = po_draft(supplier["code"])
    client.create_purchase_order_header(draft)
    with pytest.raises(PlexDataSourceError) as err:
        client.create_purchase_order_header(draft)
    assert err.value.result_error == "1" and "already exists" in str(err.value)
    assert len(requests_to(state(sim), "POST", SOAP_PATH, str(DS_PO_ADD))) == 2


def test_soap_lookup_retries_server_fault_and_throttling(sim: PlexSim, client: PlexClient,
                                                         clock: FakeClock) -> None:
    add_fault(sim, kind="server_error", surface="soap", operation=str(DS_PO_GET), times=2)
    add_fault(sim, kind="throttle_retry_after", surface="soap", operation=str(DS_PO_GET), retry_after=4)
    found = client.find_purchase_order("PO-ACME-1000")
    assert found is not None and found.po_number == "PO-ACME-1000" and found.line_numbers == frozenset()
    assert len(requests_to(state(sim), "POST", SOAP_PATH, str(DS_PO_GET))) == 4
    assert len(clock.sleeps) == 3 and clock.sleeps[2] == 4.0  # backoff, backoff, then the 429's Retry-After


def test_soap_permission_and_credentials(sim: PlexSim, clock: FakeClock) -> None:
    readonly = SoapAccount(url=sim.soap_url, username=SIM_SOAP_READONLY_USER, password=SIM_SOAP_PASSWORD)
    supplier = suppliers_of_main(state(sim))[2]
    with make_client(sim, clock, soap=readonly) as client, pytest.raises(PlexPermissionError):
        client.post_purchase_order(po_draft(supplier["code"]))  # lookup granted, create not
    assert not [p for p in state(sim)["purchase_orders"] if p["poNumber"] == "PO-850-0001"]
    bad = SoapAccount(url=sim.soap_url, username=SIM_SOAP_USER, password="nope")
    with make_client(sim, clock, soap=bad) as client, pytest.raises(PlexAuthError) as err:
        client.find_purchase_order("PO-ACME-1000")
    assert err.value.status == 401


def test_wsdl_serves_both_operations_on_a_case_insensitive_path(sim: PlexSim) -> None:
    import requests

    session = requests.Session()
    session.auth = (SIM_SOAP_USER, SIM_SOAP_PASSWORD)
    session.trust_env = False
    zc = zeep.Client(sim.base_url + "/datasource/service.asmx?wsdl", transport=zeep.Transport(session=session))
    assert zc.wsdl.services["Service"].ports["ServiceSoap"].binding_options["address"] == sim.soap_url
    result = zc.service.ExecuteDataSourcePost(dataSourceKey=DS_PO_GET, parameterNames="@PO_No",
                                              parameterValues="PO-ACME-1000", delimeter="|")
    assert (result.Error, result.Message) == (False, "Success")
    assert result.ResultSets.ResultSet[0].Rows.Row[0].Columns.Column[1].Value == "PO-ACME-1000"


def test_json_data_source_surface_shares_the_engine(sim: PlexSim) -> None:
    url = f"{sim.base_url}/api/datasources/{DS_PO_GET}/execute"
    ok = CTL.post(url, params={"format": "2"}, json={"PO_No": "PO-ACME-1000"},
                  auth=(SIM_SOAP_USER, SIM_SOAP_PASSWORD))
    assert ok.status_code == 200 and ok.json()["rows"][0]["PO_No"] == "PO-ACME-1000" and ok.json()["transactionNo"]
    denied = CTL.post(f"{sim.base_url}/api/datasources/{DS_PO_ADD}/execute", json={"inputs": {}},
                      auth=(SIM_SOAP_READONLY_USER, SIM_SOAP_PASSWORD))
    assert denied.status_code == 403 and denied.json()["errors"][0]["code"] == "DATA_SOURCE_ACCESS_DENIED"
    assert CTL.post(url, json={"inputs": {}}, auth=(SIM_SOAP_USER, "bad")).status_code == 401


# --------------------------------------------------------------------------------------------- sales orders


def test_customer_po_as_sales_order_once(sim: PlexSim, client: PlexClient) -> None:
    customer = next(c for c in state(sim)["customers"] if c["_tenant"] == PCN_MAIN)
    draft = SalesOrderDraft(customer_id=customer["id"], po_number="CPO-5521", order_date=date(2025, 5, 1),
                            lines=[SalesOrderLine(part_number="WIDGET-7", quantity="12", unit_price="3.40")])
    add_fault(sim, kind="error_after_commit", surface="rest", method="POST", path="/sales/v1/orders", status=504)
    outcome = client.post_sales_order(draft)
    assert (outcome.created, outcome.recovered) == (True, True)
    assert outcome.record_id == client.sales_order_id(draft)  # deterministic id (spec 6.3)
    found = client.find_sales_order(customer["id"], "CPO-5521")
    assert found is not None and found.id == outcome.record_id and found.order_number == outcome.response["orderNumber"]
    assert client.post_sales_order(draft).disposition == "already_existed"
    orders = [o for o in state(sim)["sales_orders"] if o["poNumber"] == "CPO-5521"]
    assert len(orders) == 1 and orders[0]["lines"][0]["quantity"] == 12


def test_the_simulator_reads_soap_as_untrusted_xml(sim: PlexSim) -> None:
    envelope = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
                '<ExecuteDataSourcePost xmlns="http://www.plexus-online.com/DataSource">'
                f'<dataSourceKey>{DS_PO_GET}</dataSourceKey><parameterNames>@PO_No</parameterNames>'
                '<parameterValues>{value}</parameterValues><delimeter>|</delimeter>'
                '</ExecuteDataSourcePost></soap:Body></soap:Envelope>')
    headers = {"Content-Type": "text/xml; charset=utf-8",
               "SOAPAction": '"http://www.plexus-online.com/DataSource/ExecuteDataSourcePost"'}
    auth = (SIM_SOAP_USER, SIM_SOAP_PASSWORD)
    plain = httpx.post(sim.soap_url, content=envelope.replace("{value}", "PO-ACME-1000"), headers=headers, auth=auth)
    assert plain.status_code == 200 and "PO-ACME-1000" in plain.text
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
              + envelope.replace("{value}", "&lol2;"))
    refused = httpx.post(sim.soap_url, content=laughs, headers=headers, auth=auth)
    assert refused.status_code == 500 and "unable to read request" in refused.text and "lollol" not in refused.text
