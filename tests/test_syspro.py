"""SYSPRO client against the SYSPRO simulator over real HTTP on 127.0.0.1: OData paging, filters,
the operator that is not enabled for OData, faults; the e.net session, COMFND and its expiry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.integrations.syspro.client import (
    EnetSession, ODataClient, SysproAuthError, SysproRequestError, SysproSessionError, SysproUnavailable, Where,
    comfnd_xml,
)
from gateway.integrations.syspro.settings import SysproSettings
from gateway.integrations.syspro.simulator import (
    ENET_COMPANY, ENET_OPERATOR, ENET_PASSWORD, ODATA_OPERATOR, ODATA_PASSWORD, SysproSim, SysproSimSettings,
)
from gateway.integrations.syspro.simulator.tables import rowversion_text
from gateway.sandbox.server import RunningServer, serve_app


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[SysproSim, RunningServer]]:
    sim = SysproSim(SysproSimSettings(page_size=600, warehouse_rows=2_500,
                                      other_operators={"CLERK": "clerk-pass"}))
    with serve_app(sim.app) as server:
        yield sim, server


@pytest.fixture
def sim(site) -> Iterator[SysproSim]:
    simulator, _ = site
    simulator.set_faults({"errors": [], "latency_s": {}, "unauthorized": 0, "error_rate": 0.0,
                          "filter_on_timestamp": True, "mutate_between_pages": {}})
    simulator.settings.paging = "nextlink"
    simulator.settings.odata_operators = {ODATA_OPERATOR: ODATA_PASSWORD}
    simulator.restart_odata()
    yield simulator


def settings(sim: SysproSim, server: RunningServer, **odata: Any) -> SysproSettings:
    return SysproSettings(
        odata={"url": sim.odata_root(server.base_url), "operator": ODATA_OPERATOR, "password": ODATA_PASSWORD,
               **odata},
        enet={"url": sim.enet_root(server.base_url), "operator": ENET_OPERATOR, "password": ENET_PASSWORD,
              "company_id": ENET_COMPANY, "page_size": 50},
        timeout_seconds=5, trust_env=False, retry={"max_attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.05})


@pytest.fixture
def server(site) -> RunningServer:
    return site[1]


def keys(rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[tuple[Any, ...]]:
    return [tuple(r[k] for k in key) for r in rows]


# ------------------------------------------------------------------------------------------ OData

def test_metadata_lists_every_table_with_its_key_and_types(sim, server):
    with ODataClient(settings(sim, server)) as client:
        sets = client.metadata()
    assert {"ApSupplier", "ApInvoice", "ArInvoice", "ArCustomer", "GenMaster", "InvMaster", "InvWarehouse",
            "PorMasterHdr", "PorMasterDetail"} <= set(sets)
    assert sets["InvWarehouse"].key == ("StockCode", "Warehouse")
    assert sets["ApInvoice"].key == ("Supplier", "Invoice")
    assert sets["ApInvoice"].properties["InvoiceDate"] == "Edm.DateTimeOffset"
    assert sets["InvWarehouse"].properties["TimeStamp"] == "Edm.Binary"


@pytest.mark.parametrize("entity", ["ApSupplier", "ApInvoice", "ArInvoice", "ArCustomer", "GenMaster", "InvMaster",
                                    "InvWarehouse", "PorMasterHdr", "PorMasterDetail"])
def test_every_entity_reads_whole_in_pages(sim, server, entity):
    table = sim.company.table(entity)
    with ODataClient(settings(sim, server, page_size=400)) as client:
        pages = list(client.pages(entity))
        requests = client.requests
    rows = [r for p in pages for r in p]
    assert len(rows) == len(table)
    assert len(set(keys(rows, table.key))) == len(rows)
    assert keys(rows, table.key) == sorted(keys(rows, table.key))
    assert all(len(p) <= 400 for p in pages)
    # one $metadata (for the key order) and one request per page, plus an empty one when the last
    # page was full ($top below the server's cap: offset paging cannot know it was the last)
    assert requests == 1 + len(pages) + (len(table) % 400 == 0)


def test_server_paging_caps_a_larger_top_and_the_next_link_is_followed(sim, server):
    with ODataClient(settings(sim, server, page_size=5000)) as client:  # the site caps at 600
        pages = list(client.pages("InvWarehouse"))
    assert [len(p) for p in pages] == [600, 600, 600, 600, 100]


def test_hard_cap_paging_without_next_link_pages_by_skip_and_refuses_too_large_a_top(sim, server):
    sim.settings.paging = "hardcap"
    with ODataClient(settings(sim, server, page_size=500)) as client:
        rows = [r for p in client.pages("InvWarehouse") for r in p]
        assert len(rows) == 2_500 and len({(r["StockCode"], r["Warehouse"]) for r in rows}) == 2_500
    with ODataClient(settings(sim, server, page_size=5000)) as client:
        with pytest.raises(SysproRequestError, match="limit of '600' for Top"):
            list(client.pages("InvWarehouse"))


def test_filter_on_a_date_column_returns_exactly_the_window(sim, server):
    expected = {(r["Supplier"], r["Invoice"]) for r in sim.company.table("ApInvoice").rows
                if r["JournalDate"] >= "2025-10-01T00:00:00Z"}
    assert 0 < len(expected) < len(sim.company.table("ApInvoice"))
    with ODataClient(settings(sim, server)) as client:
        rows = [r for p in client.pages("ApInvoice", filter="JournalDate ge 2025-10-01T00:00:00Z",
                                        select=["Supplier", "Invoice", "JournalDate", "MthInvBal1"]) for r in p]
    assert {(r["Supplier"], r["Invoice"]) for r in rows} == expected
    assert set(rows[0]) == {"Supplier", "Invoice", "JournalDate", "MthInvBal1"}
    assert isinstance(rows[0]["MthInvBal1"], str)  # IEEE754Compatible: decimals exact, as strings


def test_v3_datetime_literal_is_refused_with_the_servers_message(sim, server):
    with ODataClient(settings(sim, server)) as client:
        with pytest.raises(SysproRequestError, match="OData 4"):
            list(client.pages("ApInvoice", filter="InvoiceDate ge datetime'2025-01-01T00:00:00'"))


def test_rowversion_filter_returns_only_rows_changed_since(sim, server):
    start = sim.company.clock.value
    changed = sim.touch("InvWarehouse", 7)
    with ODataClient(settings(sim, server)) as client:
        pages = list(client.pages("InvWarehouse", filter=f"TimeStamp gt binary'{rowversion_text(start)}'",
                                  orderby=["TimeStamp"]))
        assert client.requests == 1  # one page, no $metadata needed with an explicit order
    rows = [r for p in pages for r in p]
    assert {(r["StockCode"], r["Warehouse"]) for r in rows} == {(r["StockCode"], r["Warehouse"]) for r in changed}
    assert [r["QtyOnHand"] for r in rows] == [f"{r['QtyOnHand']:.2f}" for r in changed]


def test_operator_not_enabled_for_odata_gets_a_message_that_says_so(sim, server):
    s = settings(sim, server)
    s.odata.operator = "CLERK"  # exists in SYSPRO, not enabled for OData
    with ODataClient(s) as client:
        with pytest.raises(SysproAuthError) as err:
            client.metadata()
    message = str(err.value)
    assert "'CLERK'" in message and "not enabled for OData" in message and "restart" in message
    assert "clerk-pass" not in message

    # enabled in Operator Maintenance: still refused until the OData service restarts (read at start-up)
    sim.settings.odata_operators = {**sim.settings.odata_operators, "CLERK": "clerk-odata"}
    s.odata.password = type(s.odata.password)("clerk-odata")
    with ODataClient(s) as client:
        with pytest.raises(SysproAuthError):
            client.metadata()
    sim.restart_odata()
    with ODataClient(s) as client:
        assert "InvWarehouse" in client.metadata()


def test_server_errors_are_retried_and_then_reported(sim, server):
    sim.set_faults({"errors": [{"route": "GET /SYSPROOData/*/ApSupplier", "status": 503, "count": 2}]})
    with ODataClient(settings(sim, server)) as client:
        rows = [r for p in client.pages("ApSupplier", orderby=["Supplier"]) for r in p]
        assert len(rows) == len(sim.company.table("ApSupplier"))
        assert client.requests == 1  # the retries are inside one logical request
    assert sim.requests["odata ApSupplier"] >= 3
    sim.set_faults({"errors": [{"route": "GET /SYSPROOData/*/ApSupplier", "status": 500, "count": 10}]})
    with ODataClient(settings(sim, server)) as client:
        with pytest.raises(SysproUnavailable, match="did not answer after 3 tries.*HTTP 500"):
            list(client.pages("ApSupplier", orderby=["Supplier"]))


def test_a_slow_answer_times_out_and_is_retried(sim, server):
    sim.set_faults({"latency_s": {"GET /SYSPROOData/*/GenMaster": 1.5}})
    s = settings(sim, server)
    s.timeout_seconds = 0.3
    with ODataClient(s) as client:
        with pytest.raises(SysproUnavailable, match="ReadTimeout"):
            list(client.pages("GenMaster", orderby=["Company", "GlCode"]))


def test_a_401_mid_read_is_an_auth_error(sim, server):
    with ODataClient(settings(sim, server, page_size=1000)) as client:
        pages = client.pages("InvWarehouse", orderby=["StockCode", "Warehouse"])
        next(pages)
        sim.set_faults({"unauthorized": 1})
        with pytest.raises(SysproAuthError):
            next(pages)


def test_a_site_without_odata_is_told_to_use_enet(server):
    sim = SysproSim(SysproSimSettings(odata_licensed=False, warehouse_rows=10))
    with serve_app(sim.app) as srv:
        with ODataClient(settings(sim, srv)) as client:
            with pytest.raises(SysproRequestError, match="read = 'enet'"):
                client.metadata()


def test_limit_stops_after_a_sample(sim, server):
    with ODataClient(settings(sim, server, page_size=400)) as client:
        rows = [r for p in client.pages("InvWarehouse", orderby=["StockCode", "Warehouse"], limit=25) for r in p]
        assert len(rows) == 25 and client.requests == 1


# ------------------------------------------------------------------------------------------ e.net

def test_logon_returns_the_trimmed_user_id_and_logoff_ends_the_session(sim, server):
    session = EnetSession(settings(sim, server))
    token = session.logon()
    assert len(token) == 34 and token == token.strip()
    assert token in sim.sessions
    session.logoff()
    assert token not in sim.sessions


def test_json_quoted_token_from_a_syspro_8_host_is_unwrapped(sim, server):
    sim.settings.token_json_quoted, sim.settings.token_mode = True, "v8"
    try:
        with EnetSession(settings(sim, server)) as session:
            assert session.user_id and '"' not in session.user_id and len(session.user_id) > 34
            assert session.user_id in sim.sessions
    finally:
        sim.settings.token_json_quoted, sim.settings.token_mode = False, "v7"


def test_bad_password_is_an_auth_error_with_syspros_words(sim, server):
    s = settings(sim, server)
    s.enet.password = type(s.enet.password)("wrong")
    with pytest.raises(SysproAuthError, match="Invalid operator password"):
        EnetSession(s).logon()


def test_comfnd_pages_a_composite_key_by_last_key_seen(sim, server):
    table = sim.company.table("PorMasterDetail")
    with EnetSession(settings(sim, server)) as session:
        pages = list(session.pages("PorMasterDetail", ["MStockCode", "MOrderQty"], key=["PurchaseOrder", "Line"]))
    rows = [r for p in pages for r in p]
    assert len(pages) > 2 and all(len(p) <= 50 for p in pages)
    assert len(rows) == len(table)
    assert len({(r["PurchaseOrder"], r["Line"].strip()) for r in rows}) == len(table)
    assert all(r["MOrderQty"] == r["MOrderQty"].strip() for r in rows)  # padding gone from numbers


def test_comfnd_where_matches_the_same_rows_as_odata(sim, server):
    expected = sorted(r["Invoice"] for r in sim.company.table("ApInvoice").rows
                      if r["Supplier"] == "0000012" and r["InvoiceDate"] >= "2025-06-01T00:00:00Z")
    with EnetSession(settings(sim, server)) as session:
        rows = session.comfnd("ApInvoice", ["Supplier", "Invoice", "InvoiceDate"],
                              [Where("Supplier", "EQ", "0000012"), Where("InvoiceDate", "GE", "2025-06-01")],
                              order_by=["Invoice"])
    assert [r["Invoice"] for r in rows] == expected
    assert all(r["Supplier"] == "0000012" for r in rows)  # padded keys kept


def test_session_expiry_logs_on_again_once(sim, server):
    with EnetSession(settings(sim, server)) as session:
        first = session.user_id
        session.comfnd("GenMaster", ["GlCode"], return_rows=3)
        sim.expire_sessions()  # a person logged on with the gateway's operator
        rows = session.comfnd("GenMaster", ["GlCode"], return_rows=3)
        assert len(rows) == 3 and session.logons == 2 and session.user_id != first


def test_idle_timeout_expires_the_session(sim, server):
    sim.settings.idle_timeout_s = 0.2
    try:
        with EnetSession(settings(sim, server)) as session:
            import time
            time.sleep(0.3)
            assert len(session.comfnd("ApSupplier", ["Supplier"], return_rows=2)) == 2
            assert session.logons == 2
    finally:
        sim.settings.idle_timeout_s = 1200


def test_unlicensed_business_object_and_unknown_table_are_clear_errors(sim, server):
    with EnetSession(settings(sim, server)) as session:
        with pytest.raises(SysproSessionError, match="not licensed"):
            session.query("INVQRY", "<Query/>")
        with pytest.raises(SysproSessionError, match="Table 'NoSuchTable' not found"):
            session.comfnd("NoSuchTable", ["X"])


def test_enet_paths_are_case_insensitive_and_answer_as_syspro_does(sim, server):
    r = httpx.get(sim.enet_root(server.base_url).lower() + "/getversion")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.text == sim.settings.version
    r = httpx.get(sim.enet_root(server.base_url) + "/Query/Query",
                  params={"UserId": "NOPE", "BusinessObject": "COMFND", "XmlIn": comfnd_xml("ApSupplier", ["Supplier"])})
    assert r.status_code == 200 and r.text == "ERROR: The supplied UserID is invalid."
