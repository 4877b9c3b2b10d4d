"""Record flows against the SYSPRO and Anaplan simulators, on SQLite and PostgreSQL: first load,
incremental reads by rowversion and by date, Insert and All, rejected records and replay, a failed
import carried over, and a run interrupted at each step."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from gateway.flows.files import FlowFileError, check_flow_directory, flow_json_schema_text, parse_flow_text
from gateway.flows.runner import set_enabled
from gateway.flows.tables import RecordEvent
from gateway.integrations.anaplan.simulator.app import MODEL_ID, WORKSPACE_ID
from gateway.sandbox.flows import GL_IMPORT_ID, STOCK_IMPORT_ID, SUPPLIERS_IMPORT_ID, stock_flow_text
from tests.flows_env import FlowEnv, start_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(engine, tmp_path):
    e = start_env(engine, tmp_path, warehouse_rows=1200, page_size=500)
    yield e
    e.syspro_server.stop()
    e.anaplan_server.stop()


def stock(**kw) -> str:
    return stock_flow_text(poll_seconds=0.05, **kw)


def gl_flow(mode: str = "all") -> str:
    return f"""name: syspro-gl
source: {{system: syspro, entity: GenMaster}}
target: {{kind: import, workspace_id: {WORKSPACE_ID}, model_id: {MODEL_ID}, import_id: "{GL_IMPORT_ID}",
          file_id: "113000000012", poll_seconds: 0.05}}
mode: {mode}
fields:
  Account: GlCode
  Description: Description
  Type: {{column: AccountType, translate: {{A: Asset, L: Liability, C: Equity, R: Revenue, E: Expense}}}}
  Source: {{const: SYSPRO}}
"""


def invoice_flow() -> str:
    return f"""name: syspro-ap-suppliers
source:
  system: syspro
  entity: ApInvoice
  changes: {{kind: date, column: JournalDate, overlap: 3d}}
target: {{kind: import, workspace_id: {WORKSPACE_ID}, model_id: {MODEL_ID}, import_id: "{SUPPLIERS_IMPORT_ID}",
          file_id: "113000000011", poll_seconds: 0.05}}
fields:
  Code: {{template: "{{Supplier}}/{{Invoice}}"}}
  Name: Reference
  Currency: Currency
  On Hold: {{const: "N"}}
  Tax Number: {{column: FirstTaxCode, default: "-"}}
  Source: {{const: AP}}
"""


def rowversion(text: str) -> int:
    return int.from_bytes(base64.b64decode(text), "big")


# ------------------------------------------------------------------------------------- flow files

def test_flow_file_problems_are_named_at_key_and_line():
    text = stock().replace("kind: import", "kind: imports").replace("  Stock Code: StockCode",
                                                                    "  Stock Code: {colum: StockCode}")
    with pytest.raises(FlowFileError) as err:
        parse_flow_text(text, "flows/syspro-stock.yaml")
    lines = str(err.value).splitlines()
    assert any(line.startswith("flows/syspro-stock.yaml:9:9:") and "target.kind: 'imports' is not one of" in line
               for line in lines), lines
    assert any("fields.Stock Code.colum: unknown key 'colum' (did you mean 'column'?)" in line for line in lines)


def test_the_committed_flows_and_schema_are_valid_and_current():
    ok, lines = check_flow_directory(ROOT / "flows")
    assert ok, lines
    assert (ROOT / "flows" / "schema.json").read_text() == flow_json_schema_text()
    assert any("syspro-stock" in line for line in lines)


def test_switching_a_flow_on_needs_a_clean_dry_run_of_that_text(env: FlowEnv):
    runner = env.runner(stock())
    with pytest.raises(ValueError, match="dry-run this version"):
        set_enabled(env.engine, runner.file, True, "alice")
    result = runner.dry_run(sample=8)
    assert result.ok and len(result.rows) == 8
    assert result.headers == ["Item", "Stock Code", "Warehouse", "On Hand", "Allocated", "Unit Cost", "Source"]
    key, row, _ = result.rows[0]
    assert key == "ST0000000|FG" and row[:3] == ["ST0000000-FG", "ST0000000", "Finished Goods"]
    assert env.records("syspro-stock") == [] and env.tasks(STOCK_IMPORT_ID) == 0  # nothing stored or sent
    set_enabled(env.engine, runner.file, True, "alice")
    changed = env.runner(stock().replace("Source: {const: SYSPRO}", "Source: {const: SYSPRO-2}"))
    with pytest.raises(ValueError, match="dry-run this version"):
        set_enabled(env.engine, changed.file, True, "alice")


# ------------------------------------------------------------------------------------- runs

def test_first_load_then_only_changed_rows_are_read_and_sent(env: FlowEnv):
    report = env.runner(stock()).run()
    assert (report.state, report.seen, report.changed, report.sent, report.failed) == ("done", 1200, 1200, 1200, 0)
    imported = env.imported(STOCK_IMPORT_ID)
    assert len(imported) == 1200
    assert imported[("ST0000001-RM",)]["Warehouse"] == "Raw Materials"
    assert rowversion(env.watermark("syspro-stock")) == 1200  # the highest rowversion confirmed
    records = env.records("syspro-stock")
    assert len(records) == 1200 and records[0].system == "syspro" and records[0].entity == "InvWarehouse"
    assert orjson.loads(records[5].raw)["StockCode"] == "ST0000001"

    changed = env.syspro.touch("InvWarehouse", 5)
    before = env.syspro.requests["odata InvWarehouse"]
    report = env.runner(stock()).run()
    assert (report.seen, report.changed, report.sent) == (5, 5, 5)
    assert env.syspro.requests["odata InvWarehouse"] - before == 1  # one page: TimeStamp gt the watermark
    assert report.anaplan_requests <= 10
    for row in changed:
        item = f"{row['StockCode']}-{row['Warehouse']}"
        assert imported[(item,)]["On Hand"] == f"{row['QtyOnHand']:.2f}"
    assert rowversion(env.watermark("syspro-stock")) == max(r["TimeStamp"] for r in changed)
    with env.engine.connect() as conn:
        events = conn.execute(select(RecordEvent.__table__)).all()
    assert sorted(e.source_key for e in events if e.outcome == "changed") == sorted(
        f"{r['StockCode']}|{r['Warehouse']}" for r in changed)

    report = env.runner(stock()).run()  # nothing changed: nothing sent, Anaplan not asked to import
    assert (report.state, report.seen, report.sent) == ("done", 0, 0)
    assert env.tasks(STOCK_IMPORT_ID) == 2


def test_insert_mode_skips_unchanged_rows_of_a_snapshot_and_all_mode_sends_them(env: FlowEnv):
    first = env.runner(gl_flow("insert")).run()
    n = len(env.syspro.company.table("GenMaster"))
    assert (first.seen, first.sent) == (n, n)
    again = env.runner(gl_flow("insert")).run()
    assert (again.seen, again.changed, again.sent) == (n, 0, 0)  # read whole, compared by content hash
    env.syspro.touch("GenMaster", 3)
    third = env.runner(gl_flow("insert")).run()
    assert (third.changed, third.sent) == (3, 3)
    all_mode = env.runner(gl_flow("all")).run()
    assert (all_mode.seen, all_mode.changed, all_mode.sent) == (n, 0, n)  # the full set each run
    assert len(env.imported(GL_IMPORT_ID)) == n


def test_a_date_window_rereads_the_overlap_but_sends_only_changes(env: FlowEnv):
    first = env.runner(invoice_flow()).run()
    total = len(env.syspro.company.table("ApInvoice"))
    assert first.sent == total
    latest = max(r["JournalDate"] for r in env.syspro.company.table("ApInvoice").rows)
    assert env.watermark("syspro-ap-suppliers") == latest
    second = env.runner(invoice_flow()).run()
    assert second.seen > 0 and second.seen < total  # the overlap window only
    assert second.sent == 0


def test_a_record_anaplan_rejects_is_marked_with_the_reason_and_can_be_replayed(env: FlowEnv):
    env.anaplan.set_faults({"task_outcome": {"row_failures": 2, "count": 1}})
    report = env.runner(stock()).run()
    assert (report.state, report.sent, report.failed) == ("done", 1200, 2)
    rejected = [r for r in env.records("syspro-stock") if r.error]
    assert [r.source_key for r in rejected] == ["ST0000000|FG", "ST0000000|RM"]  # the first two CSV lines
    assert "Row rejected by the simulator" in rejected[0].error
    assert len(env.imported(STOCK_IMPORT_ID)) == 1198
    assert rowversion(env.watermark("syspro-stock")) == 1200  # the rest was confirmed

    before = env.syspro.requests["odata InvWarehouse"]
    replay = env.runner(stock()).replay(report.run_id, actor="alice")
    assert (replay.state, replay.sent, replay.failed) == ("done", 2, 0)
    assert env.syspro.requests["odata InvWarehouse"] == before  # from the store: SYSPRO not asked again
    assert len(env.imported(STOCK_IMPORT_ID)) == 1200
    assert not any(r.error for r in env.records("syspro-stock"))


def test_a_failed_import_keeps_the_watermark_and_its_records_go_with_the_next_run(env: FlowEnv):
    env.runner(stock()).run()
    mark = env.watermark("syspro-stock")
    changed = env.syspro.touch("InvWarehouse", 4)
    env.anaplan.set_faults({"task_outcome": {"failed": "importFailedGeneralError", "count": 1}})
    failed = env.runner(stock()).run()
    assert failed.state == "failed" and "importFailedGeneralError" in (failed.error or "")
    assert env.watermark("syspro-stock") == mark  # never ahead of what Anaplan confirmed
    retry = env.runner(stock()).run()  # reads from the same watermark: the 4 rows are unchanged now...
    assert retry.state == "done" and retry.seen == 4 and retry.sent == 4  # ...but carried over and sent
    assert rowversion(env.watermark("syspro-stock")) == max(r["TimeStamp"] for r in changed)
    for row in changed:
        assert env.imported(STOCK_IMPORT_ID)[(f"{row['StockCode']}-{row['Warehouse']}",)]["On Hand"] == \
            f"{row['QtyOnHand']:.2f}"


def test_offset_paging_that_repeats_rows_stores_each_record_once(env: FlowEnv):
    env.syspro.settings.paging = "hardcap"
    env.syspro.set_faults({"mutate_between_pages": {"ApSupplier": 2}})
    text = f"""name: syspro-suppliers
source: {{system: syspro, entity: ApSupplier, page_size: 50}}
target: {{kind: import, workspace_id: {WORKSPACE_ID}, model_id: {MODEL_ID}, import_id: "{SUPPLIERS_IMPORT_ID}",
          file_id: "113000000011", poll_seconds: 0.05}}
fields:
  Code: Supplier
  Name: SupplierName
  Currency: Currency
  On Hold: OnHold
  Tax Number: TaxRegnNum
  Source: {{const: SYSPRO}}
"""
    report = env.runner(text).run()
    keys = [r.source_key for r in env.records("syspro-suppliers")]
    assert len(keys) == len(set(keys))
    assert report.state == "done" and report.sent == len(keys)


def test_enet_reads_a_table_when_odata_is_not_licensed(env: FlowEnv):
    env.syspro.settings.odata_licensed = False
    text = gl_flow("insert").replace("source: {system: syspro, entity: GenMaster}",
                                     "source: {system: syspro, entity: GenMaster, key: [Company, GlCode]}")
    report = env.runner(text, settings=env.settings(read="enet")).run()
    n = len(env.syspro.company.table("GenMaster"))
    assert (report.state, report.sent) == ("done", n)
    assert env.syspro.requests["enet logon"] >= 1 and env.syspro.requests["enet logoff"] >= 1


SYSPRO_ENTITIES = {  # table -> (its key columns, a name column)
    "ApSupplier": (["Supplier"], "SupplierName"), "ApInvoice": (["Supplier", "Invoice"], "Reference"),
    "ApInvoicePay": (["Supplier", "Invoice", "EntryNumber"], "PaymentReference"),
    "ArCustomer": (["Customer"], "Name"), "ArInvoice": (["Customer", "Invoice", "DocumentType"], "CustomerPoNumber"),
    "GenMaster": (["Company", "GlCode"], "Description"), "InvMaster": (["StockCode"], "Description"),
    "InvWarehouse": (["StockCode", "Warehouse"], "DefaultBin"), "PorMasterHdr": (["PurchaseOrder"], "Supplier"),
    "PorMasterDetail": (["PurchaseOrder", "Line"], "MStockCode"),
}


@pytest.mark.parametrize("entity", sorted(SYSPRO_ENTITIES))
def test_every_syspro_table_flows_into_anaplan(env: FlowEnv, entity: str):
    from gateway.sandbox.flows import PLEX_FILE_ID, PLEX_IMPORT_ID

    if env.engine.dialect.name == "postgresql":
        pytest.skip("the store's side is the same for every table: PostgreSQL is covered by the other flow tests")

    key, name = SYSPRO_ENTITIES[entity]
    template = "/".join("{" + k + "}" for k in key)
    text = f"""name: syspro-{entity.lower()}
source: {{system: syspro, entity: {entity}, changes: {{kind: rowversion, column: TimeStamp}}}}
target: {{kind: import, workspace_id: {WORKSPACE_ID}, model_id: {MODEL_ID}, import_id: "{PLEX_IMPORT_ID}",
          file_id: "{PLEX_FILE_ID}", poll_seconds: 0.05}}
fields:
  Key: {{template: "{entity}:{template}"}}
  Name: {{column: {name}, default: "-"}}
  Value: {{const: "1"}}
  Source: {{const: SYSPRO}}
"""
    n = len(env.syspro.company.table(entity))
    report = env.runner(text).run()
    assert (report.state, report.seen, report.sent, report.failed) == ("done", n, n, 0), report.line()
    assert sum(1 for k in env.imported(PLEX_IMPORT_ID) if k[0].startswith(entity + ":")) == n
    env.syspro.touch(entity, 2)
    again = env.runner(text).run()
    assert (again.seen, again.sent) == (2, 2)  # only the rows whose rowversion moved


def test_a_switched_on_flow_runs_on_its_schedule_and_an_off_one_does_not(env: FlowEnv, tmp_path):
    from datetime import datetime, timedelta, timezone

    from gateway.flows.files import load_flow_directory
    from gateway.flows.schedule import due_flows, run_due_flows
    from gateway.runtime import Runtime

    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "syspro-stock.yaml").write_text(stock())
    (folder / "syspro-gl.yaml").write_text(gl_flow("insert").replace("mode: insert", "mode: insert\nschedule: {every_minutes: 5}"))
    flows = load_flow_directory(folder)
    assert due_flows(env.engine, flows) == []  # both off
    runner = env.runner(stock())
    assert runner.dry_run(5).ok
    set_enabled(env.engine, flows["syspro-stock"], True, "olga")
    assert due_flows(env.engine, flows) == ["syspro-stock"]
    rt = Runtime(settings=env.settings().model_copy(update={"flows_dir": folder}), engine=env.engine)
    reports = run_due_flows(rt)
    assert [(r.flow, r.state, r.sent) for r in reports] == [("syspro-stock", "done", 1200)]
    assert due_flows(env.engine, flows) == []  # ran a moment ago: due again in 15 minutes
    later = datetime.now(timezone.utc) + timedelta(minutes=16)
    assert due_flows(env.engine, flows, now=later) == ["syspro-stock"]
