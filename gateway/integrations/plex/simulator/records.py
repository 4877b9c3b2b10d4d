"""The Plex simulator's master-data and accounting reads for record flows (specs/plex.md §3.1,
§3.6; addendum "Plex Connect (source side)"): parts, supply items, containers, the chart of
accounts, GL journal entries (lines carrying the cost-centre segment) and the trial balance, plus
purchase orders with lines in realistic numbers. Like Connect: bare arrays, no paging, unknown
parameters ignored; only the resources the addendum lists with a changed-since filter honour one
(journal entries take ``modifiedDateBegin/End``, parts ``beginUpdatedDateTime/endUpdatedDateTime``).
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from gateway.integrations.plex.simulator.app import PlexSim

COST_CENTRES = (("100", "Plant 1 Moulding"), ("110", "Plant 1 Assembly"), ("200", "Plant 2 Machining"),
                ("300", "Warehouse"), ("400", "Administration"), ("500", "Sales"))
ACCOUNTS = (("1200", "Inventory - raw material", "Asset"), ("1210", "Inventory - finished goods", "Asset"),
            ("2000", "Accounts payable", "Liability"), ("4000", "Sales", "Revenue"),
            ("5000", "Material cost", "Expense"), ("5100", "Direct labour", "Expense"),
            ("6100", "Freight in", "Expense"), ("6200", "Maintenance", "Expense"), ("3000", "Retained earnings", "Equity"))
PART_TYPES = ("Finished Good", "Raw Material", "Sub Assembly")


def seed_records(sim: PlexSim, *, parts: int = 120, purchase_orders: int = 60, journal_entries: int = 80,
                 seed: int = 11) -> None:
    """Give every tenant parts, supply items, containers, accounts, POs with lines and journal entries."""
    from gateway.integrations.plex.simulator.app import stamp

    rng = random.Random(seed)
    now = sim.now()
    with sim._lock:
        for tenant in sim.settings.tenants:
            pcn = tenant.pcn
            store = sim.records.setdefault(pcn, {})
            for kind in ("parts", "supply_items", "containers", "accounts", "journal_entries", "trial_balance"):
                store.setdefault(kind, {})  # the accounts a tenant starts with are kept

            def new(kind: str, record: dict[str, Any], days_ago: int) -> dict[str, Any]:
                rid = sim._uuid()
                when = stamp(now - timedelta(days=days_ago, seconds=rng.randint(0, 86399)))
                store[kind][rid] = {"id": rid, **record, "createdDate": when, "modifiedDate": when, "_tenant": pcn}
                return store[kind][rid]

            for i in range(parts):
                new("parts", {"number": f"P-{10000 + i}", "name": f"Part {i}", "revision": "A",
                              "description": f"{rng.choice(('Bracket', 'Housing', 'Shaft', 'Cover'))} {i}",
                              "type": rng.choice(PART_TYPES), "group": "General", "source": "Make",
                              "productType": "Production", "status": "Active" if rng.random() > 0.05 else "Obsolete",
                              "leadTimeDays": rng.randint(1, 30), "buildingCode": "B1"}, rng.randint(1, 400))
            items = [new("supply_items", {"supplyItemNumber": f"SI-{500 + i}", "description": f"Consumable {i}",
                                          "category": rng.choice(("MRO", "Packaging", "Tooling")),
                                          "inventoryUnit": "ea", "active": True}, rng.randint(1, 400))
                     for i in range(max(1, parts // 4))]
            part_list = list(store["parts"].values())
            for i in range(parts * 2):
                part = rng.choice(part_list)
                new("containers", {"serialNo": f"S{700000 + i}", "partId": part["id"], "partNumber": part["number"],
                                   "quantity": rng.randint(1, 500), "unit": "ea", "location": f"RACK-{rng.randint(1, 40)}",
                                   "status": rng.choice(("OK", "OK", "OK", "Hold")), "buildingCode": "B1"},
                    rng.randint(0, 30))
            for number, name, category in ACCOUNTS:
                for centre, _ in COST_CENTRES:
                    new("accounts", {"accountNumber": f"{number}-{centre}-00", "name": name,
                                     "categoryType": category, "active": True, "inactiveDate": None},
                        rng.randint(100, 900))
            accounts = list(store["accounts"].values())
            for i in range(journal_entries):
                lines = []
                for n in range(1, rng.randint(2, 4) + 1):
                    account = rng.choice(accounts)
                    base, centre, sub = account["accountNumber"].split("-")
                    amount = round(rng.uniform(10, 9000), 2)
                    lines.append({"lineId": n, "accountId": account["id"], "accountNumber": account["accountNumber"],
                                  "baseSegment": base, "costCenterSegment": centre, "subAccountSegment": sub,
                                  "debit": amount if n % 2 else 0.0, "credit": 0.0 if n % 2 else amount,
                                  "description": f"Journal {i} line {n}"})
                new("journal_entries", {"journalNumber": f"JE-{30000 + i}", "periodDisplay": "2026-11",
                                        "transactionDate": stamp(now - timedelta(days=rng.randint(0, 60))),
                                        "posted": True, "lines": lines}, rng.randint(0, 60))
            for account in accounts:
                base, centre, sub = account["accountNumber"].split("-")
                new("trial_balance", {"accountId": account["id"], "accountNumber": account["accountNumber"],
                                      "baseSegment": base, "costCenterSegment": centre, "subAccountSegment": sub,
                                      "periodDisplay": "2026-11", "balance": round(rng.uniform(-50000, 50000), 2)}, 1)
            suppliers = [s for s in sim.suppliers.values() if s["_tenant"] == pcn]
            for i in range(purchase_orders if suppliers else 0):
                supplier = rng.choice(suppliers)
                po = sim._store_po(tenant, supplier, f"PO-{tenant.code}-{5000 + i}",
                                   now - timedelta(days=rng.randint(1, 90)), now + timedelta(days=rng.randint(5, 40)),
                                   "USD", "Net 30", "", created=now - timedelta(days=rng.randint(0, 90)))
                total = 0.0
                for n in range(1, rng.randint(1, 5) + 1):
                    target = rng.choice(part_list) if rng.random() < 0.7 else rng.choice(items)
                    price = round(rng.uniform(0.5, 250), 4)
                    po["_lines"].append({
                        "id": sim._uuid(), "lineItemNumber": n, "status": "Open", "unit": "ea", "orderUnit": "ea",
                        "description": target.get("description"), "unitPrice": price,
                        "partId": target["id"] if "number" in target else None,
                        "itemId": target["id"] if "supplyItemNumber" in target else None,
                        "accountId": rng.choice(accounts)["id"], "taxCode": "", "building": "B1",
                        "department": rng.choice([c for c, _ in COST_CENTRES]),
                        "createdDate": po["createdDate"], "modifiedDate": po["modifiedDate"]})
                    total += price
                po["lineItemCount"] = len(po["_lines"])
                po["lineItemTotal"] = round(total, 2)


def touch(sim: PlexSim, kind: str, count: int, *, seed: int = 5) -> list[dict[str, Any]]:
    """Change ``count`` records of ``kind`` (their modified date moves to now)."""
    from gateway.integrations.plex.simulator.app import stamp

    rng = random.Random(seed)
    out = []
    with sim._lock:
        if kind in ("purchase_orders", "suppliers"):
            records = getattr(sim, kind)
            for record in rng.sample(sorted(records.values(), key=lambda r: r["id"]), min(count, len(records))):
                if kind == "purchase_orders":
                    record["lineItemTotal"] = round(record["lineItemTotal"] + 1, 2)
                else:
                    record["name"] = record["name"] + " (renamed)"
                record["modifiedDate"] = stamp(sim.now())
                out.append(record)
            return out
        for pcn, store in sim.records.items():
            for record in rng.sample(list(store[kind].values()), min(count, len(store[kind]))):
                if kind == "parts":
                    record["leadTimeDays"] = record["leadTimeDays"] + 1
                elif kind == "containers":
                    record["quantity"] = record["quantity"] + 1
                record["modifiedDate"] = stamp(sim.now())
                out.append(record)
    return out


def add_record_routes(app: FastAPI, sim: PlexSim, listing: Callable[..., JSONResponse]) -> None:
    """Register the record resources on the simulator's app (``listing`` is the app's own filter)."""

    def serve(kind: str, ranges: dict[str, tuple[str, str]], exact: dict[str, str]):
        async def endpoint(request: Request) -> JSONResponse:
            caller = sim.authenticate_rest(request)
            return listing(request, sim.records.get(caller.tenant.pcn, {}).get(kind, {}), caller, ranges=ranges,
                           exact=exact)
        return endpoint

    modified = {"modifiedDate": ("modifiedDateBegin", "modifiedDateEnd")}
    app.add_api_route("/mdm/v1/parts", serve("parts", {"modifiedDate": ("beginUpdatedDateTime",
                                                                           "endUpdatedDateTime")},
                                             {"number": "number", "status": "status", "type": "type"}), methods=["GET"])
    app.add_api_route("/inventory/v1/inventory-definitions/parts",
                      serve("parts", {"modifiedDate": ("beginUpdatedDateTime", "endUpdatedDateTime")},
                            {"number": "number", "status": "status"}), methods=["GET"])
    app.add_api_route("/inventory/v1/inventory-definitions/supply-items", serve("supply_items", {}, {}),
                      methods=["GET"])
    app.add_api_route("/inventory/v1/inventory-tracking/containers", serve("containers", {}, {}), methods=["GET"])
    app.add_api_route("/mdm/v1/chart-of-accounts", serve("accounts", {}, {"accountNumber": "accountNumber"}),
                      methods=["GET"])
    app.add_api_route("/accounting/v2/journal-entries", serve("journal_entries", modified, {}), methods=["GET"])
    app.add_api_route("/accounting/v1/trial-balance", serve("trial_balance", {}, {"periodDisplay": "periodDisplay"}),
                      methods=["GET"])
