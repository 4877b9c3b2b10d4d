"""The SYSPRO company tables the simulator serves: their columns, keys and seeded rows.

Column names, keys and types follow the SYSPRO 7 company schema (specs/syspro.md B.4). Rows are
kept as plain dicts for the small master and transaction tables; ``InvWarehouse`` is *generated*
from its row number (a million rows never exist as Python objects at once), with an overlay of
the rows changed since start-up.

Every row carries ``TimeStamp``, SQL Server's rowversion: one counter for the whole database,
bumped on every insert or update. It is served as ``Edm.Binary`` (8 bytes, base64).
"""

from __future__ import annotations

import base64
import random
import threading
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Callable, Iterable, Iterator

# Column kinds: "s" text, "d" decimal, "t" date (Edm.DateTimeOffset at 00:00), "i" integer, "b" rowversion
Columns = tuple[tuple[str, str], ...]

SCHEMAS: dict[str, tuple[tuple[str, ...], Columns]] = {
    "ApSupplier": (("Supplier",), (
        ("Supplier", "s"), ("SupplierName", "s"), ("SupShortName", "s"), ("SupplierType", "s"),
        ("SupplierClass", "s"), ("Branch", "s"), ("Currency", "s"), ("TermsCode", "s"), ("OnHold", "s"),
        ("CurrentBalance", "d"), ("Telephone", "s"), ("Contact", "s"), ("Email", "s"), ("TaxRegnNum", "s"),
        ("Nationality", "s"), ("DateSuppAdded", "t"), ("LastPurchDate", "t"), ("TimeStamp", "b"))),
    "ApInvoice": (("Supplier", "Invoice"), (
        ("Supplier", "s"), ("Invoice", "s"), ("InvoiceDate", "t"), ("DueDate", "t"), ("JournalDate", "t"),
        ("Journal", "i"), ("Reference", "s"), ("OrigInvValue", "d"), ("MthInvBal1", "d"), ("InvoiceStatus", "s"),
        ("Currency", "s"), ("ExchangeRate", "d"), ("FirstTaxCode", "s"), ("InvoiceYear", "i"),
        ("InvoiceMonth", "i"), ("TimeStamp", "b"))),
    "ApInvoicePay": (("Supplier", "Invoice", "EntryNumber"), (
        ("Supplier", "s"), ("Invoice", "s"), ("EntryNumber", "i"), ("TrnType", "s"), ("JournalDate", "t"),
        ("PaymentReference", "s"), ("TrnValue", "d"), ("PostValue", "d"), ("PostCurrency", "s"),
        ("TimeStamp", "b"))),
    "ArCustomer": (("Customer",), (
        ("Customer", "s"), ("Name", "s"), ("ShortName", "s"), ("CustomerClass", "s"), ("Branch", "s"),
        ("Salesperson", "s"), ("TermsCode", "s"), ("Currency", "s"), ("CreditLimit", "d"), ("CreditStatus", "s"),
        ("CustomerOnHold", "s"), ("Email", "s"), ("SoldToAddr1", "s"), ("SoldPostalCode", "s"),
        ("Nationality", "s"), ("DateCustAdded", "t"), ("DateLastSale", "t"), ("TimeStamp", "b"))),
    "ArInvoice": (("Customer", "Invoice", "DocumentType"), (
        ("Customer", "s"), ("Invoice", "s"), ("DocumentType", "s"), ("InvoiceDate", "t"), ("SalesOrder", "s"),
        ("CustomerPoNumber", "s"), ("Salesperson", "s"), ("Branch", "s"), ("TermsCode", "s"),
        ("InvoiceBal1", "d"), ("CurrencyValue", "d"), ("TaxPortion", "d"), ("TaxCode", "s"),
        ("InvoiceYear", "i"), ("InvoiceMonth", "i"), ("TimeStamp", "b"))),
    "ArInvoicePay": (("Customer", "Invoice", "DocumentType", "Journal"), (
        ("Customer", "s"), ("Invoice", "s"), ("DocumentType", "s"), ("Journal", "i"), ("JournalDate", "t"),
        ("TrnType", "s"), ("TrnValue", "d"), ("PostCurrency", "s"), ("TimeStamp", "b"))),
    "GenMaster": (("Company", "GlCode"), (
        ("Company", "s"), ("GlCode", "s"), ("Description", "s"), ("AccountType", "s"), ("GlGroup", "s"),
        ("ReportIndex1", "s"), ("TimeStamp", "b"))),
    "InvMaster": (("StockCode",), (
        ("StockCode", "s"), ("Description", "s"), ("LongDesc", "s"), ("StockUom", "s"), ("ProductClass", "s"),
        ("Supplier", "s"), ("TaxCode", "s"), ("PartCategory", "s"), ("WarehouseToUse", "s"), ("Buyer", "s"),
        ("LeadTime", "i"), ("MaterialCost", "d"), ("StockOnHold", "s"), ("DateStkAdded", "t"), ("TimeStamp", "b"))),
    "InvWarehouse": (("StockCode", "Warehouse"), (
        ("StockCode", "s"), ("Warehouse", "s"), ("QtyOnHand", "d"), ("QtyAllocated", "d"), ("QtyOnOrder", "d"),
        ("QtyOnBackOrder", "d"), ("MinimumQty", "d"), ("MaximumQty", "d"), ("SafetyStockQty", "d"),
        ("UnitCost", "d"), ("DefaultBin", "s"), ("DateLastSale", "t"), ("DateLastStockMove", "t"),
        ("TimeStamp", "b"))),
    "PorMasterHdr": (("PurchaseOrder",), (
        ("PurchaseOrder", "s"), ("Supplier", "s"), ("OrderStatus", "s"), ("CancelledFlag", "s"),
        ("OrderType", "s"), ("OrderEntryDate", "t"), ("OrderDueDate", "t"), ("DatePoCompleted", "t"),
        ("Warehouse", "s"), ("Currency", "s"), ("ExchangeRate", "d"), ("Buyer", "s"), ("CustomerPoNumber", "s"),
        ("TimeStamp", "b"))),
    "PorMasterDetail": (("PurchaseOrder", "Line"), (
        ("PurchaseOrder", "s"), ("Line", "i"), ("LineType", "s"), ("MStockCode", "s"), ("MStockDes", "s"),
        ("MWarehouse", "s"), ("MOrderUom", "s"), ("MOrderQty", "d"), ("MReceivedQty", "d"), ("MPrice", "d"),
        ("MGlCode", "s"), ("MCompleteFlag", "s"), ("MLatestDueDate", "t"), ("OrderLineStatus", "s"),
        ("TimeStamp", "b"))),
}

#: Date columns a $filter can window on (specs/syspro.md E.4); the rest are read as snapshots.
DATE_COLUMNS = {
    "ApInvoice": "JournalDate", "ApInvoicePay": "JournalDate", "ArInvoice": "InvoiceDate",
    "ArInvoicePay": "JournalDate", "PorMasterHdr": "OrderEntryDate",
}

WAREHOUSES = ("FG", "RM", "S1", "WIP")


def rowversion_text(version: int) -> str:
    """A rowversion as OData serialises Edm.Binary: base64 of the 8 big-endian bytes."""
    return base64.b64encode(version.to_bytes(8, "big")).decode("ascii")


def rowversion_value(text: str) -> int:
    """The counter behind a base64 (or base64url) rowversion."""
    raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    if len(raw) != 8:
        raise ValueError("a rowversion is 8 bytes")
    return int.from_bytes(raw, "big")


def day(d: date) -> str:
    """A SYSPRO date as OData returns it: the business day at midnight, UTC offset (B.2)."""
    return f"{d.isoformat()}T00:00:00Z"


class Clock:
    """The database's rowversion counter (one for every table, as in SQL Server)."""

    def __init__(self, start: int = 0) -> None:
        self._value = start
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._value += 1
            return self._value

    @property
    def value(self) -> int:
        return self._value

    def advance_to(self, value: int) -> None:
        with self._lock:
            self._value = max(self._value, value)


@dataclass
class Table:
    """A table whose rows are dicts (masters and transactions of realistic, modest size)."""

    name: str
    clock: Clock
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, ...]:
        return SCHEMAS[self.name][0]

    @property
    def columns(self) -> Columns:
        return SCHEMAS[self.name][1]

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        full = {name: None for name, _ in self.columns}
        full.update(row)
        full["TimeStamp"] = self.clock.next()
        self.rows.append(full)
        self.rows.sort(key=lambda r: tuple(r[k] for k in self.key))
        return full

    def update(self, key: tuple[Any, ...], changes: dict[str, Any]) -> dict[str, Any]:
        for row in self.rows:
            if tuple(row[k] for k in self.key) == key:
                row.update(changes)
                row["TimeStamp"] = self.clock.next()
                return row
        raise KeyError(key)

    def scan(self) -> Iterator[dict[str, Any]]:
        """Every row in key order (the internal TimeStamp is an int until serialised)."""
        return iter(list(self.rows))

    def changed_after(self, version: int) -> list[dict[str, Any]] | None:
        return None  # no fast path: the generic filter scans

    def slice(self, start: int, stop: int) -> list[dict[str, Any]]:
        return self.rows[start:stop]


class GeneratedWarehouse:
    """``InvWarehouse`` with ``size`` rows made from their row number, plus the rows changed since.

    Row ``i`` is stock code ``ST{i // 4:07d}`` in warehouse ``WAREHOUSES[i % 4]``, so row order is
    key order; its base rowversion is ``i + 1``. A change stores the whole new row in ``overlay``
    with a fresh rowversion from the database clock (which starts above ``size``).
    """

    name = "InvWarehouse"

    def __init__(self, size: int, clock: Clock, seed: int = 17) -> None:
        self.size = size
        self.clock = clock
        self.seed = seed
        self.overlay: dict[int, dict[str, Any]] = {}
        clock.advance_to(size)
        self._base = date(2026, 1, 1)

    @property
    def key(self) -> tuple[str, ...]:
        return SCHEMAS[self.name][0]

    @property
    def columns(self) -> Columns:
        return SCHEMAS[self.name][1]

    def __len__(self) -> int:
        return self.size

    def _base_row(self, i: int) -> dict[str, Any]:
        h = (i * 2654435761 + self.seed * 97) & 0xFFFFFFFF
        on_hand = (h % 500_000) / 100
        allocated = round(on_hand * ((h >> 8) % 30) / 100, 2)
        minimum = float((h >> 12) % 200)
        return {
            "StockCode": f"ST{i // 4:07d}", "Warehouse": WAREHOUSES[i % 4],
            "QtyOnHand": on_hand, "QtyAllocated": allocated, "QtyOnOrder": float((h >> 5) % 1000),
            "QtyOnBackOrder": float((h >> 3) % 7), "MinimumQty": minimum, "MaximumQty": minimum * 10 + 100,
            "SafetyStockQty": float(minimum // 2), "UnitCost": ((h >> 4) % 250_000) / 100,
            "DefaultBin": f"B{(h >> 6) % 90 + 10:02d}-{(h >> 9) % 40 + 1:02d}",
            "DateLastSale": day(self._base + timedelta(days=h % 300)),
            "DateLastStockMove": day(self._base + timedelta(days=(h >> 7) % 300)),
            "TimeStamp": i + 1,
        }

    def row(self, i: int) -> dict[str, Any]:
        return self.overlay.get(i) or self._base_row(i)

    def index_of(self, stock_code: str, warehouse: str) -> int:
        try:
            i = int(stock_code[2:]) * 4 + WAREHOUSES.index(warehouse)
        except ValueError:
            raise KeyError((stock_code, warehouse)) from None
        if not stock_code.startswith("ST") or not 0 <= i < self.size:
            raise KeyError((stock_code, warehouse))
        return i

    def update(self, key: tuple[Any, ...], changes: dict[str, Any]) -> dict[str, Any]:
        i = self.index_of(*key)
        row = dict(self.row(i))
        row.update(changes)
        row["TimeStamp"] = self.clock.next()
        self.overlay[i] = row
        return row

    def touch(self, count: int, rng: random.Random) -> list[dict[str, Any]]:
        """Change ``count`` distinct rows at random (quantities move): the benchmark's incremental pass."""
        out = []
        for i in rng.sample(range(self.size), min(count, self.size)):
            row = self.row(i)
            out.append(self.update((row["StockCode"], row["Warehouse"]),
                                   {"QtyOnHand": round(row["QtyOnHand"] + rng.randint(1, 50), 2)}))
        return out

    def scan(self) -> Iterator[dict[str, Any]]:
        return (self.row(i) for i in range(self.size))

    def slice(self, start: int, stop: int) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(max(start, 0), min(stop, self.size))]

    def changed_after(self, version: int) -> list[dict[str, Any]]:
        """Rows whose rowversion is above ``version``, in rowversion order, without a full scan."""
        out: list[dict[str, Any]] = []
        for i in range(max(version, 0), self.size):  # base rows i have version i + 1
            if i not in self.overlay:
                out.append(self._base_row(i))
        out.extend(sorted((r for r in self.overlay.values() if r["TimeStamp"] > version),
                          key=lambda r: r["TimeStamp"]))
        return out


AnyTable = Table | GeneratedWarehouse

# ------------------------------------------------------------------------------------------ seed data

_NAMES = ("Acme Metals", "Bolt & Nut Supply", "Cape Steel", "Delta Plastics", "Eagle Packaging", "Fenwick Castings",
          "Granite Tooling", "Harbor Chemicals", "Ionic Electronics", "Juniper Fasteners", "Karoo Logistics",
          "Lumen Optics", "Meridian Bearings", "Northstar Resins", "Orion Springs", "Pinnacle Wire")
_SUFFIX = ("Ltd", "(Pty) Ltd", "Inc", "GmbH", "Corp", "BV")
_CURRENCIES = ("$", "R", "EUR", "GBP")
_ACCOUNT_TYPES = ("A", "L", "C", "R", "E", "E", "E", "S")
_ACCOUNT_NAMES = {"A": "Asset", "L": "Liability", "C": "Equity", "R": "Revenue", "E": "Expense", "S": "Statistical"}


@dataclass
class Company:
    """One SYSPRO company's tables, seeded."""

    company_id: str
    tables: dict[str, AnyTable]
    clock: Clock

    def table(self, name: str) -> AnyTable:
        return self.tables[name]


def _pick(rng: random.Random, items: tuple[str, ...]) -> str:
    return items[rng.randrange(len(items))]


def seed_company(company_id: str = "EDU1", *, warehouse_rows: int = 2000, scale: float = 1.0,
                 seed: int = 7) -> Company:
    """A company with realistic volumes (``scale`` 1: 240 suppliers, 2,400 AP invoices, ...) and
    ``warehouse_rows`` generated InvWarehouse rows."""
    rng = random.Random(seed)
    clock = Clock()
    tables: dict[str, AnyTable] = {name: Table(name, clock) for name in SCHEMAS if name != "InvWarehouse"}
    n = lambda base: max(1, int(base * scale))  # noqa: E731
    start = date(2025, 1, 1)

    suppliers = []
    for k in range(n(240)):
        code = f"{k + 1:07d}"  # SYSPRO keeps the padding: never trim or int-convert keys (A.4)
        name = f"{_pick(rng, _NAMES)} {_pick(rng, _SUFFIX)}" + (f" {k // len(_NAMES)}" if k >= len(_NAMES) else "")
        suppliers.append(code)
        _add(tables["ApSupplier"], {
            "Supplier": code, "SupplierName": name, "SupShortName": name[:20].upper(), "SupplierType": "N",
            "SupplierClass": _pick(rng, ("RAW", "PKG", "SRV")), "Branch": "01", "Currency": _pick(rng, _CURRENCIES),
            "TermsCode": _pick(rng, ("30", "60", "CO")), "OnHold": "N" if rng.random() > 0.05 else "Y",
            "CurrentBalance": round(rng.uniform(0, 90_000), 2), "Telephone": f"+27 11 {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
            "Contact": "Accounts", "Email": f"ap{k}@supplier.example", "TaxRegnNum": f"4{rng.randint(100000000, 999999999)}",
            "Nationality": "ZA", "DateSuppAdded": day(start - timedelta(days=rng.randint(30, 2000))),
            "LastPurchDate": day(start + timedelta(days=rng.randint(0, 330))),
        })
    for k in range(n(2400)):
        supplier = rng.choice(suppliers)
        invoice_date = start + timedelta(days=rng.randint(0, 340))
        value = round(rng.uniform(-2_000, 60_000) if rng.random() < 0.05 else rng.uniform(100, 60_000), 2)
        paid = rng.random() < 0.6
        _add(tables["ApInvoice"], {
            "Supplier": supplier, "Invoice": f"INV-{20000 + k}", "InvoiceDate": day(invoice_date),
            "DueDate": day(invoice_date + timedelta(days=30)), "JournalDate": day(invoice_date + timedelta(days=rng.randint(0, 5))),
            "Journal": 1000 + k // 20, "Reference": f"GRN {rng.randint(10000, 99999)}", "OrigInvValue": value,
            "MthInvBal1": 0.0 if paid else value, "InvoiceStatus": " ", "Currency": _pick(rng, _CURRENCIES),
            "ExchangeRate": 1.0, "FirstTaxCode": "A", "InvoiceYear": invoice_date.year, "InvoiceMonth": invoice_date.month,
        })
        if paid:
            _add(tables["ApInvoicePay"], {
                "Supplier": supplier, "Invoice": f"INV-{20000 + k}", "EntryNumber": 1, "TrnType": "P",
                "JournalDate": day(invoice_date + timedelta(days=28)), "PaymentReference": f"EFT{k:06d}",
                "TrnValue": -value, "PostValue": -value, "PostCurrency": "$",
            })
    customers = []
    for k in range(n(120)):
        code = f"{k + 1:06d}"
        customers.append(code)
        _add(tables["ArCustomer"], {
            "Customer": code, "Name": f"{_pick(rng, _NAMES)} Retail {k}", "ShortName": f"RETAIL{k}",
            "CustomerClass": _pick(rng, ("WHS", "RET")), "Branch": "01", "Salesperson": f"S{rng.randint(1, 9)}",
            "TermsCode": "30", "Currency": _pick(rng, _CURRENCIES), "CreditLimit": float(rng.randint(5, 200) * 1000),
            "CreditStatus": "0", "CustomerOnHold": "N", "Email": f"buyer{k}@customer.example",
            "SoldToAddr1": f"{rng.randint(1, 200)} Main Road", "SoldPostalCode": f"{rng.randint(1000, 9999)}",
            "Nationality": "ZA", "DateCustAdded": day(start - timedelta(days=rng.randint(30, 2000))),
            "DateLastSale": day(start + timedelta(days=rng.randint(0, 330))),
        })
    for k in range(n(1800)):
        invoice_date = start + timedelta(days=rng.randint(0, 340))
        credit = rng.random() < 0.04
        value = round(rng.uniform(50, 40_000), 2) * (-1 if credit else 1)
        customer = rng.choice(customers)
        invoice = f"{300000 + k:010d}"
        if rng.random() < 0.3:
            _add(tables["ArInvoicePay"], {
                "Customer": customer, "Invoice": invoice, "DocumentType": "C" if credit else "I", "Journal": 500 + k // 25,
                "JournalDate": day(invoice_date + timedelta(days=rng.randint(5, 40))), "TrnType": "P",
                "TrnValue": -value, "PostCurrency": "$",
            })
        _add(tables["ArInvoice"], {
            "Customer": customer, "Invoice": invoice, "DocumentType": "C" if credit else "I",
            "InvoiceDate": day(invoice_date), "SalesOrder": f"{100000 + k:015d}"[-8:], "CustomerPoNumber": f"PO{rng.randint(1000, 9999)}",
            "Salesperson": f"S{rng.randint(1, 9)}", "Branch": "01", "TermsCode": "30",
            "InvoiceBal1": 0.0 if rng.random() < 0.7 else value, "CurrencyValue": value,
            "TaxPortion": round(value * 0.15, 2), "TaxCode": "A", "InvoiceYear": invoice_date.year,
            "InvoiceMonth": invoice_date.month,
        })
    for k in range(n(320)):
        account_type = _pick(rng, _ACCOUNT_TYPES)
        _add(tables["GenMaster"], {
            "Company": company_id, "GlCode": f"{rng.randint(10, 99)}-{1000 + k}-{rng.randint(0, 9):02d}",
            "Description": f"{_ACCOUNT_NAMES[account_type]} account {k}",
            "AccountType": account_type, "GlGroup": f"G{k % 12:02d}", "ReportIndex1": f"R{k % 40:03d}",
        })
    for k in range(n(600)):
        _add(tables["InvMaster"], {
            "StockCode": f"ST{k:07d}", "Description": f"Item {k} {_pick(rng, ('bracket', 'bolt M8', 'resin 25kg', 'carton', 'bearing'))}",
            "LongDesc": "", "StockUom": _pick(rng, ("EA", "KG", "M", "BOX")), "ProductClass": _pick(rng, ("RAW", "FG", "PKG")),
            "Supplier": rng.choice(suppliers), "TaxCode": "A", "PartCategory": _pick(rng, ("B", "M")),
            "WarehouseToUse": "RM", "Buyer": f"B{rng.randint(1, 5)}", "LeadTime": rng.randint(1, 60),
            "MaterialCost": round(rng.uniform(0.5, 900), 5), "StockOnHold": "N",
            "DateStkAdded": day(start - timedelta(days=rng.randint(30, 2000))),
        })
    line_total = 0
    for k in range(n(360)):
        entry = start + timedelta(days=rng.randint(0, 340))
        po = f"{k + 1:015d}"[-8:].rjust(8)
        status = _pick(rng, ("1", "4", "9", "9", "*"))
        _add(tables["PorMasterHdr"], {
            "PurchaseOrder": po, "Supplier": rng.choice(suppliers), "OrderStatus": status,
            "CancelledFlag": "Y" if status == "*" else "N", "OrderType": "L", "OrderEntryDate": day(entry),
            "OrderDueDate": day(entry + timedelta(days=21)), "DatePoCompleted": day(entry + timedelta(days=25)) if status == "9" else None,
            "Warehouse": "RM", "Currency": _pick(rng, _CURRENCIES), "ExchangeRate": 1.0, "Buyer": f"B{rng.randint(1, 5)}",
            "CustomerPoNumber": "",
        })
        for line in range(1, rng.randint(1, 6) + 1):
            line_total += 1
            qty = float(rng.randint(1, 500))
            _add(tables["PorMasterDetail"], {
                "PurchaseOrder": po, "Line": line, "LineType": "1", "MStockCode": f"ST{rng.randrange(n(600)):07d}",
                "MStockDes": "Purchased item", "MWarehouse": "RM", "MOrderUom": "EA", "MOrderQty": qty,
                "MReceivedQty": qty if status == "9" else 0.0, "MPrice": round(rng.uniform(0.5, 400), 5),
                "MGlCode": "", "MCompleteFlag": "Y" if status == "9" else "N",
                "MLatestDueDate": day(entry + timedelta(days=21)), "OrderLineStatus": "1",
            })
    for table in tables.values():
        assert isinstance(table, Table)
        table.rows.sort(key=lambda r, key=table.key: tuple(r[k] for k in key))
    tables["InvWarehouse"] = GeneratedWarehouse(warehouse_rows, clock)
    return Company(company_id, tables, clock)


def _add(table: AnyTable, row: dict[str, Any]) -> None:
    """Seed a row (appended; the table is sorted once at the end)."""
    assert isinstance(table, Table)
    full = {name: None for name, _ in table.columns}
    full.update(row)
    full["TimeStamp"] = table.clock.next()
    table.rows.append(full)


def key_of(table: AnyTable, row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in table.key)


def project(rows: Iterable[dict[str, Any]], select: list[str] | None, kinds: dict[str, str],
            ieee754: bool) -> list[dict[str, Any]]:
    """Rows as the OData payload carries them: the selected columns, rowversion in base64,
    decimals as strings when the client asked ``IEEE754Compatible=true``."""
    names = select or list(kinds)
    decimals = [n for n in names if kinds[n] == "d"] if ieee754 else []
    out = []
    for row in rows:
        item = {n: row[n] for n in names}
        if "TimeStamp" in item:
            item["TimeStamp"] = rowversion_text(item["TimeStamp"])
        for n in decimals:
            v = item[n]
            if v is not None:
                item[n] = f"{v:.2f}" if isinstance(v, float) else str(v)
        out.append(item)
    return out


Predicate = Callable[[dict[str, Any]], bool]
