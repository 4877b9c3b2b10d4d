"""The record flows' sandbox: the SYSPRO simulator and an Anaplan tenant with the flows' imports.

Used by the demo, the flow tests and ``benchmarks/flows.py``.
"""

from __future__ import annotations

from typing import Any

from gateway.integrations.syspro.simulator import (
    ENET_COMPANY, ENET_OPERATOR, ENET_PASSWORD, ODATA_OPERATOR, ODATA_PASSWORD, SysproSim, SysproSimSettings,
)
from gateway.integrations.anaplan.simulator.app import (
    DEFAULT_PASSWORD, DEFAULT_USER, MODEL_ID, WORKSPACE_ID, SimColumnRule, SimFile, SimImport, SimModel,
    SimTenant, default_tenant,
)
from gateway.sandbox.server import RunningServer, serve_app

STOCK_IMPORT_ID, STOCK_FILE_ID = "112000000010", "113000000010"
SUPPLIERS_IMPORT_ID, SUPPLIERS_FILE_ID = "112000000011", "113000000011"
GL_IMPORT_ID, GL_FILE_ID = "112000000012", "113000000012"
PLEX_IMPORT_ID, PLEX_FILE_ID = "112000000013", "113000000013"
STOCK_TOTALS_IMPORT_ID = "112000000014"  # reads the stock file too: the process's second step
STOCK_PROCESS_ID = "118000000001"
SUPPLIERS_LIST_ID, COST_CENTRES_LIST_ID = "101000000001", "101000000002"
STOCK_HEADERS = ["Item", "Stock Code", "Warehouse", "On Hand", "Allocated", "Unit Cost", "Source"]
WAREHOUSE_NAMES = {"FG": "Finished Goods", "RM": "Raw Materials", "S1": "Spares", "WIP": "Work in Progress"}


def flows_tenant() -> SimTenant:
    """The default tenant plus the imports the example flows feed."""
    tenant = default_tenant()
    add_flow_imports(tenant.models[0])
    return tenant


def add_flow_imports(model: SimModel) -> None:
    """The flows' imports and files in a simulated model (also one already served: the demo's)."""
    model.files += [SimFile(id=STOCK_FILE_ID, name="Stock_by_warehouse.csv"),
                    SimFile(id=SUPPLIERS_FILE_ID, name="Suppliers.csv"),
                    SimFile(id=GL_FILE_ID, name="GL_accounts.csv"),
                    SimFile(id=PLEX_FILE_ID, name="Plex_records.csv")]
    model.imports += [
        SimImport(id=STOCK_IMPORT_ID, name="Stock by warehouse from SYSPRO", file_id=STOCK_FILE_ID,
                  header_names=STOCK_HEADERS, key_columns=["Item"], target_name="Stock by Warehouse",
                  rules={"Item": SimColumnRule(required=True), "On Hand": SimColumnRule(required=True, type="number"),
                         "Allocated": SimColumnRule(type="number"), "Unit Cost": SimColumnRule(type="number"),
                         "Warehouse": SimColumnRule(allowed=sorted(WAREHOUSE_NAMES.values()), list_name="Warehouses")}),
        SimImport(id=SUPPLIERS_IMPORT_ID, name="Suppliers", file_id=SUPPLIERS_FILE_ID,
                  header_names=["Code", "Name", "Currency", "On Hold", "Tax Number", "Source"], key_columns=["Code"],
                  target_name="Suppliers", rules={"Code": SimColumnRule(required=True),
                                                  "Name": SimColumnRule(required=True)}),
        SimImport(id=GL_IMPORT_ID, name="GL accounts", file_id=GL_FILE_ID,
                  header_names=["Account", "Description", "Type", "Source"], key_columns=["Account"],
                  target_name="GL Accounts", rules={"Account": SimColumnRule(required=True)}),
        SimImport(id=STOCK_TOTALS_IMPORT_ID, name="Stock totals from SYSPRO", file_id=STOCK_FILE_ID,
                  header_names=STOCK_HEADERS, key_columns=["Stock Code", "Warehouse"], target_name="Stock Totals",
                  rules={"On Hand": SimColumnRule(required=True, type="number")}),
        SimImport(id=PLEX_IMPORT_ID, name="Plex records", file_id=PLEX_FILE_ID,
                  header_names=["Key", "Name", "Value", "Source"], key_columns=["Key"], target_name="Plex Records",
                  rules={"Key": SimColumnRule(required=True), "Value": SimColumnRule(type="number")}),
    ]


def add_flow_actions(anaplan: Any) -> None:
    """A process (stock, then stock totals, from one upload) and two reference lists, in a served
    simulator's model."""
    from gateway.integrations.anaplan.simulator.lists import SimList, SimProcess, add_list, add_process

    add_process(anaplan, MODEL_ID, SimProcess(id=STOCK_PROCESS_ID, name="Stock refresh",
                                              actions=[STOCK_IMPORT_ID, STOCK_TOTALS_IMPORT_ID]))
    add_list(anaplan, MODEL_ID, SimList(id=SUPPLIERS_LIST_ID, name="Suppliers",
                                        properties=["Currency", "Tax Number", "On Hold"]))
    add_list(anaplan, MODEL_ID, SimList(id=COST_CENTRES_LIST_ID, name="Cost Centres"))


def syspro_settings(sim: SysproSim, server: RunningServer, **overrides: Any) -> dict[str, Any]:
    """``[[syspro]]`` settings for the simulator (its published fake credentials)."""
    values: dict[str, Any] = {
        "name": "syspro", "read": "odata", "timeout_seconds": 30.0, "trust_env": False,
        "odata": {"url": sim.odata_root(server.base_url), "operator": ODATA_OPERATOR, "password": ODATA_PASSWORD},
        "enet": {"url": sim.enet_root(server.base_url), "operator": ENET_OPERATOR, "password": ENET_PASSWORD,
                 "company_id": ENET_COMPANY},
        "retry": {"max_attempts": 3, "backoff_initial": 0.05, "backoff_max": 0.5},
    }
    values.update(overrides)
    return values


def suppliers_list_flow_text(*, system: str = "syspro", write_back: bool = False) -> str:
    """Suppliers into the Anaplan Suppliers list through the list-items API (reference data)."""
    if system == "plex":
        source = "{system: plex, entity: suppliers, changes: {kind: modified, overlap: 5m, window: 7d}}"
        fields = '  code: code\n  name: name\n  Currency: {const: USD}\n  On Hold: {column: status, translate: {Active: "N", Inactive: "Y"}}\n'
    else:
        source = "{system: syspro, entity: ApSupplier}"
        fields = "  code: Supplier\n  name: SupplierName\n  Currency: Currency\n  Tax Number: TaxRegnNum\n  On Hold: OnHold\n"
    return f"""name: {system}-suppliers-list
description: Suppliers from {system} into the Anaplan Suppliers list (reference data)
source: {source}
target: {{kind: list_items, workspace_id: {WORKSPACE_ID}, model_id: {MODEL_ID}, list_id: "{SUPPLIERS_LIST_ID}"}}
reference: suppliers
write_back: {{allowed: {str(write_back).lower()}}}
fields:
{fields}"""


def stock_flow_text(*, name: str = "syspro-stock", mode: str = "insert", poll_seconds: float = 0.2,
                    page_size: int | None = None, chunk_mb: float = 8.0, enabled: bool = False) -> str:
    """The example SYSPRO InvWarehouse -> Anaplan flow (the file ``flows/syspro-stock.yaml`` holds)."""
    page = f"\n  page_size: {page_size}" if page_size else ""
    return f"""name: {name}
description: SYSPRO stock on hand per warehouse into Anaplan's Stock by Warehouse module
enabled: {str(enabled).lower()}
source:
  system: syspro
  entity: InvWarehouse
  changes: {{kind: rowversion, column: TimeStamp}}{page}
target:
  kind: import
  workspace_id: {WORKSPACE_ID}
  model_id: {MODEL_ID}
  import_id: "{STOCK_IMPORT_ID}"
  file_id: "{STOCK_FILE_ID}"
  poll_seconds: {poll_seconds}
  chunk_mb: {chunk_mb}
mode: {mode}
schedule: {{every_minutes: 15}}
fields:
  Item: {{template: "{{StockCode}}-{{Warehouse}}"}}
  Stock Code: StockCode
  Warehouse:
    column: Warehouse
    translate: {{{", ".join(f"{k}: {v}" for k, v in WAREHOUSE_NAMES.items())}}}
  On Hand: QtyOnHand
  Allocated: QtyAllocated
  Unit Cost: UnitCost
  Source: {{const: SYSPRO}}
"""


def anaplan_settings(url: str) -> dict[str, Any]:
    """``[anaplan]`` settings for the simulator: credentials only (flows name their own imports)."""
    return {"url": url, "auth": "basic", "username": DEFAULT_USER, "password": DEFAULT_PASSWORD,
            "retry_attempts": 3, "retry_max_seconds": 1.0}


def config_toml(*, data_dir: str, flows_dir: str, anaplan_url: str, odata_url: str, page_size: int = 5000,
                anaplan_timeout: float = 120.0, database_url: str | None = None, lease_seconds: float = 120.0) -> str:
    """A gateway settings file (TOML) for the flows sandbox: the demo's, the benchmark's, the tests'."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, (int, float)) else json.dumps(str(v))

    anaplan = {**anaplan_settings(anaplan_url), "timeout_seconds": anaplan_timeout}
    lines = [f"data_dir = {value(data_dir)}", f"flows_dir = {value(flows_dir)}", 'log_level = "WARNING"',
             f"flows_lease_seconds = {value(lease_seconds)}"]
    if database_url:
        lines.append(f"database_url = {value(database_url)}")
    lines += ["", "[anaplan]", *(f"{k} = {value(v)}" for k, v in anaplan.items()),
              "", "[[syspro]]", 'name = "syspro"', 'read = "odata"', "timeout_seconds = 120", "trust_env = false",
              "", "[syspro.odata]", f"url = {value(odata_url)}", f"operator = {value(ODATA_OPERATOR)}",
              f"password = {value(ODATA_PASSWORD)}", f"page_size = {page_size}"]
    return "\n".join(lines) + "\n"


#: Per Plex record resource: (name column, numeric value column, changes) for the example flows and tests.
PLEX_FLOWS: dict[str, tuple[str, str, str]] = {
    "purchase-orders": ("poNumber", "lineItemTotal", "{kind: modified, overlap: 5m, window: 1d}"),
    "suppliers": ("name", "", "{kind: modified, overlap: 5m, window: 7d}"),
    "parts": ("number", "leadTimeDays", "{kind: modified, overlap: 5m, window: 30d}"),
    "supply-items": ("supplyItemNumber", "", "{kind: snapshot}"),
    "containers": ("serialNo", "quantity", "{kind: snapshot}"),
    "chart-of-accounts": ("accountNumber", "", "{kind: snapshot}"),
    "journal-entries": ("journalNumber", "", "{kind: modified, overlap: 5m, window: 7d}"),
    "cost-centres": ("costCenterSegment", "", "{kind: snapshot}"),
}


def plex_flow_text(entity: str, *, poll_seconds: float = 0.2) -> str:
    """A Plex -> Anaplan flow of one resource into the simulator's "Plex records" import."""
    name_col, value_col, changes = PLEX_FLOWS[entity]
    key = "costCenterSegment" if entity == "cost-centres" else "id"
    value = f"{{column: {value_col}, default: '0'}}" if value_col else "{const: '0'}"
    return f"""name: plex-{entity}
description: Plex {entity} into Anaplan
source: {{system: plex, entity: {entity}, changes: {changes}}}
target: {{kind: import, workspace_id: {WORKSPACE_ID}, model_id: {MODEL_ID}, import_id: "{PLEX_IMPORT_ID}",
          file_id: "{PLEX_FILE_ID}", poll_seconds: {poll_seconds}}}
fields:
  Key: {key}
  Name: {{column: {name_col}, default: "-"}}
  Value: {value}
  Source: {{const: PLEX}}
"""


def start_plex(*, records: bool = True):
    """The Plex simulator (its example suppliers, and the record resources seeded) on loopback."""
    from gateway.integrations.plex.simulator.app import PlexSim, SimSettings
    from gateway.integrations.plex.simulator.records import seed_records
    from gateway.sandbox.environment import seed_partners

    plex = PlexSim(SimSettings(rate_limit_per_minute=None, request_log_limit=2000))
    plex.serve()
    seed_partners(plex)
    if records:
        seed_records(plex)
    return plex


def plex_settings(plex: Any) -> dict[str, Any]:
    from gateway.integrations.plex.simulator.app import SIM_API_KEY

    return {"connect_url": plex.base_url, "api_key": SIM_API_KEY, "trust_env": False, "timeout_seconds": 10.0,
            "retry": {"max_attempts": 3, "backoff_initial": 0.1, "backoff_max": 1.0, "max_retry_after": 5.0,
                      "ambiguous_recheck_delay": 0.1}}


def start_syspro(**settings: Any) -> tuple[SysproSim, RunningServer]:
    sim = SysproSim(SysproSimSettings(**settings))
    return sim, serve_app(sim.app)


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.sandbox.flows --rows N``: serve the SYSPRO and Anaplan simulators in this
    process (the benchmark keeps them off the gateway's process), print their addresses as one
    JSON line, and serve until stdin closes."""
    import argparse
    import json
    import sys

    from gateway.integrations.anaplan.simulator.app import AnaplanSimulator

    parser = argparse.ArgumentParser(prog="python -m gateway.sandbox.flows")
    parser.add_argument("--rows", type=int, default=2000, help="InvWarehouse rows")
    parser.add_argument("--page-size", type=int, default=5000, help="the OData service's page cap")
    parser.add_argument("--anaplan-rate", type=float, default=600, help="Anaplan tenant requests per minute")
    args = parser.parse_args(argv)
    sim, server = start_syspro(warehouse_rows=args.rows, page_size=args.page_size)
    anaplan = AnaplanSimulator(tenant=flows_tenant())
    add_flow_actions(anaplan)
    anaplan.set_faults({"rate_limit": {"capacity": args.anaplan_rate, "refill_per_s": args.anaplan_rate / 60}})

    @anaplan.app.get("/_sim/counts")
    async def counts() -> dict:  # /_sim/state would carry every imported row: a million of them here
        return {"requests": sum(anaplan._request_counts.values()),
                "imported": {k: len(v) for k, v in anaplan._imported.items()},
                "tasks": len(anaplan._tasks)}

    anaplan_server = serve_app(anaplan.app)
    print(json.dumps({"syspro": server.base_url, "anaplan": anaplan_server.base_url,
                      "odata": sim.odata_root(server.base_url), "enet": sim.enet_root(server.base_url)}), flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()
        anaplan_server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
