"""Anaplan targets of record flows against the simulator: a process (one upload, several imports,
nested results and dumps) and the list-items API (adds and updates, per-item failures mapped back
to records, the workspace-administrator refusal said plainly)."""

from __future__ import annotations

import pytest

from gateway.integrations.anaplan.simulator.app import DEFAULT_USER
from gateway.integrations.anaplan.simulator.lists import actions
from gateway.sandbox.flows import (
    MODEL_ID, STOCK_IMPORT_ID, STOCK_PROCESS_ID, STOCK_TOTALS_IMPORT_ID, SUPPLIERS_LIST_ID, stock_flow_text,
    suppliers_list_flow_text,
)
from tests.flows_env import start_env


@pytest.fixture
def env(engine, tmp_path):
    e = start_env(engine, tmp_path, warehouse_rows=400, page_size=200)
    yield e
    e.syspro_server.stop()
    e.anaplan_server.stop()


def process_flow() -> str:
    text = stock_flow_text(poll_seconds=0.05)
    return text.replace(f'  import_id: "{STOCK_IMPORT_ID}"\n', f'  process_id: "{STOCK_PROCESS_ID}"\n').replace(
        "kind: import", "kind: process")


def supplier_items(env) -> dict[str, dict]:
    return {i["code"]: i for i in actions(env.anaplan).lists[MODEL_ID][SUPPLIERS_LIST_ID].items.values()}


def test_a_process_runs_every_import_from_one_upload(env):
    report = env.runner(process_flow()).run()
    assert (report.state, report.sent, report.failed) == ("done", 400, 0), report.line()
    assert len(env.imported(STOCK_IMPORT_ID)) == 400 and len(env.imported(STOCK_TOTALS_IMPORT_ID)) == 400
    uploads = [k for k in env.anaplan._request_counts if "/files/" in k and k.startswith("PUT")]
    assert sum(env.anaplan._request_counts[k] for k in uploads) == 1  # one chunk, read by both imports


def test_a_process_step_that_rejects_rows_maps_them_back(env):
    env.anaplan.set_faults({"task_outcome": {"row_failures": 2, "count": 1}})
    report = env.runner(process_flow()).run()
    assert (report.state, report.failed) == ("done", 2)
    rejected = sorted(r.source_key for r in env.records("syspro-stock") if r.error)
    assert rejected == ["ST0000000|FG", "ST0000000|RM"]


def test_a_failed_process_keeps_the_watermark(env):
    env.anaplan.set_faults({"task_outcome": {"failed": "importFailedGeneralError", "count": 1}})
    report = env.runner(process_flow()).run()
    assert report.state == "failed" and "importFailedGeneralError" in (report.error or "")
    assert env.watermark("syspro-stock") is None


def test_list_items_are_added_then_updated_and_a_refused_item_is_marked(env):
    table = env.syspro.company.table("ApSupplier")
    table.update(("0000005",), {"SupplierName": ""})  # Anaplan refuses an item without a name
    report = env.runner(suppliers_list_flow_text()).run()
    n = len(table)
    assert (report.state, report.sent, report.failed) == ("done", n, 1), report.line()
    items = supplier_items(env)
    assert len(items) == n - 1 and "0000005" not in items
    assert items["0000001"]["properties"]["Currency"] == table.rows[0]["Currency"]
    refused = [r for r in env.records("syspro-suppliers-list") if r.error]
    assert [r.source_key for r in refused] == ["0000005"] and "MISSING_NAME" in refused[0].error

    table.update(("0000007",), {"SupplierName": "Renamed Supplier Ltd"})
    again = env.runner(suppliers_list_flow_text()).run()
    assert (again.changed, again.sent, again.failed) == (1, 1, 0)
    assert supplier_items(env)["0000007"]["name"] == "Renamed Supplier Ltd"
    assert len(supplier_items(env)) == n - 1  # updated, not added twice


def test_a_user_who_is_not_workspace_admin_is_told_so(env):
    actions(env.anaplan).non_admins.add(DEFAULT_USER)
    report = env.runner(suppliers_list_flow_text()).run()
    assert report.state == "failed"
    assert "workspace administrator" in (report.error or "")
    assert env.watermark("syspro-suppliers-list") is None
