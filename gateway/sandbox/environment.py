"""The three simulators on loopback, and the settings that point the gateway at them.

Used by ``gateway demo``, the end-to-end tests and ``benchmarks/pipeline.py``::

    sandbox = start_sandbox()
    settings = Settings(data_dir=..., plex=sandbox.plex_settings(), anaplan=sandbox.anaplan_settings(), ...)
    ...
    sandbox.close()

``seed_partners`` gives the Plex simulator the suppliers and the customer the example partners
in ``partners/`` are matched to (Globex, the demo's unknown supplier, is deliberately absent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.integrations.anaplan.simulator.app import (
    DEFAULT_PASSWORD, DEFAULT_USER, INVOICES_FILE_ID, INVOICES_IMPORT_ID, MODEL_ID, PO_LINES_FILE_ID,
    PO_LINES_IMPORT_ID, WORKSPACE_ID, AnaplanSimulator, SimFaults,
)
from gateway.integrations.plex.simulator.app import SIM_API_KEY, SIM_SOAP_PASSWORD, SIM_SOAP_USER, PlexSim, SimSettings
from gateway.sandbox.server import RunningServer, serve_app
from gateway.integrations.sterling.simulator.app import SterlingSim

__all__ = ["ANAPLAN_COLUMNS", "DEMO_CUSTOMERS", "DEMO_SUPPLIERS", "STERLING_PASSWORD", "STERLING_USER", "Sandbox",
           "batched_interchanges", "numbered_documents", "seed_partners", "start_sandbox"]

#: (code, name, tax id) of the example partners' Plex suppliers.
DEMO_SUPPLIERS = (("ACME01", "Acme Fasteners Inc.", "34-1234567"),
                  ("EUROCOMP", "Europa Components GmbH", "DE811234567"))
#: (code, name) of the example customer whose 850s become sales orders.
DEMO_CUSTOMERS = (("NWRETAIL", "Northwind Retail Group"),)
STERLING_USER, STERLING_PASSWORD = "gateway", "sim-sterling-password"

#: How canonical fields fill the simulator's two imports (column order comes from headerNames).
ANAPLAN_COLUMNS: dict[str, dict[str, Any]] = {
    "purchase_order": {
        "PO Number": "po_number", "Line": "lines[].line_number", "Supplier": "gateway.supplier_code",
        "Buyer Part": "lines[].buyer_part", "Quantity": "lines[].quantity", "Unit Price": "lines[].unit_price",
        "Delivery Date": "lines[].requested_delivery", "Source": {"const": "EDI"},
    },
    "invoice": {
        "Invoice Number": "invoice_number", "Invoice Date": "invoice_date", "PO Number": "po_number",
        "Supplier": "gateway.supplier_code", "Currency": "currency", "Total": "total_amount",
    },
}


def seed_partners(plex: PlexSim) -> None:
    for code, name, tax_id in DEMO_SUPPLIERS:
        plex.add_supplier(code, name, tax_id=tax_id)
    for code, name in DEMO_CUSTOMERS:
        plex.add_customer(code, name)


@dataclass
class Sandbox:
    plex: PlexSim
    anaplan: AnaplanSimulator
    anaplan_server: RunningServer
    sterling: SterlingSim | None = None
    _servers: list[RunningServer] = field(default_factory=list)

    @property
    def anaplan_url(self) -> str:
        return self.anaplan_server.base_url

    def plex_settings(self, **overrides: Any) -> dict[str, Any]:
        """``[plex]`` settings for the simulator (the sandbox's published fake credentials)."""
        values: dict[str, Any] = {
            "connect_url": self.plex.base_url, "api_key": SIM_API_KEY,
            "soap": {"url": self.plex.soap_url, "username": SIM_SOAP_USER, "password": SIM_SOAP_PASSWORD},
            "requests_per_minute": 200, "burst": 20, "timeout_seconds": 10.0,
            "trust_env": False,  # loopback: never through a proxy (and no environment scan per request)
            "retry": {"max_attempts": 3, "backoff_initial": 0.2, "backoff_max": 2.0, "max_retry_after": 5.0,
                      "ambiguous_recheck_delay": 0.2},
            "matching": {"refresh_seconds": 60.0},
            # The simulator's chart of accounts (SimSettings.gl_accounts).
            "ap_invoice_accounts": {"expense_account": "5000-100-00", "tax_account": "2300-000-00"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return values

    def anaplan_settings(self, *, poll_interval: float = 0.5, max_age: float = 2.0, max_documents: int = 2000,
                         **overrides: Any) -> dict[str, Any]:
        """``[anaplan]`` settings for the simulator's PO-lines and invoices imports."""
        common = {"workspace_id": WORKSPACE_ID, "model_id": MODEL_ID, "poll_interval_s": poll_interval,
                  "poll_max_interval_s": max(poll_interval, 5.0), "task_timeout_s": 120.0}
        values: dict[str, Any] = {
            "url": self.anaplan_url, "auth": "basic", "username": DEFAULT_USER, "password": DEFAULT_PASSWORD,
            "imports": {
                "purchase_order": {**common, "import_id": PO_LINES_IMPORT_ID, "file_id": PO_LINES_FILE_ID,
                                   "columns": ANAPLAN_COLUMNS["purchase_order"]},
                "invoice": {**common, "import_id": INVOICES_IMPORT_ID, "file_id": INVOICES_FILE_ID,
                            "columns": ANAPLAN_COLUMNS["invoice"]},
            },
            "batch": {"max_documents": max_documents, "max_age_seconds": max_age, "retry_seconds": 1.0},
            "retry_attempts": 2, "retry_max_seconds": 1.0,
        }
        values.update(overrides)
        return values

    def sterling_source(self, name: str, mailboxes: list[str], **overrides: Any) -> dict[str, Any]:
        assert self.sterling is not None and self.sterling.server is not None
        return {"name": name, "base_url": self.sterling.server.base_url, "username": STERLING_USER,
                "password": STERLING_PASSWORD, "mailboxes": mailboxes, "interval_seconds": 2.0, **overrides}

    def close(self) -> None:
        for server in [*self._servers, self.anaplan_server]:
            server.stop()
        if self.plex.server is not None:
            self.plex.server.stop()


def start_sandbox(*, plex_rate_limit: int | None = 200, anaplan_rate_limit: float | None = 600,
                  sterling_mailboxes: tuple[str, ...] = (), seed: bool = True) -> Sandbox:
    """Start the Plex and Anaplan simulators (and Sterling when mailboxes are named) on free ports.

    ``plex_rate_limit`` is the Plex simulator's per-key limit per minute and ``anaplan_rate_limit``
    the Anaplan tenant bucket (None: no limit; the benchmark's choice, said in its output)."""
    plex = PlexSim(SimSettings(rate_limit_per_minute=plex_rate_limit, request_log_limit=2000))
    plex.serve()
    if seed:
        seed_partners(plex)
    faults = SimFaults(rate_limit=None if anaplan_rate_limit is None else
                       {"capacity": anaplan_rate_limit, "refill_per_s": anaplan_rate_limit / 60.0})
    anaplan = AnaplanSimulator(faults=faults)
    anaplan_server = serve_app(anaplan.app)
    sandbox = Sandbox(plex, anaplan, anaplan_server)
    if sterling_mailboxes:
        sterling = SterlingSim({STERLING_USER: STERLING_PASSWORD}, ())
        for mailbox in sterling_mailboxes:
            sterling.ensure_mailbox(mailbox)
        sandbox.sterling = sterling
        sandbox._servers.append(sterling.serve())
    return sandbox


# ------------------------------------------------------------------------------------- generated EDI

def _x12_controls(text: str, n: int) -> str:
    """Give an X12 interchange fresh ISA13/IEA02 and GS06/GE02 control numbers (``n``)."""
    out = []
    for seg in text.split("~"):
        el = seg.strip("\r\n").split("*")
        if el[0] == "ISA":
            el[13] = f"{n % 1_000_000_000:09d}"
        elif el[0] == "IEA":
            el[2] = f"{n % 1_000_000_000:09d}"
        elif el[0] in ("GS", "GE"):
            el[6 if el[0] == "GS" else 2] = str(n % 1_000_000_000)
        out.append("*".join(el) if seg.strip("\r\n") else seg)
    return "~".join(out)


def _edifact_controls(text: str, n: int) -> str:
    out = []
    for seg in text.split("'"):
        body = seg.strip("\r\n")
        el = body.split("+")
        if el[0] == "UNB" and len(el) > 5:
            el[5] = str(n)
        elif el[0] == "UNZ" and len(el) > 2:
            el[2] = str(n)
        out.append("+".join(el) if body else seg)
    return "'".join(out)


def numbered_documents(folder: str | Path, count: int, *, start: int = 1) -> list[tuple[str, bytes]]:
    """``count`` distinct interchanges made from the good demo files: the same partners, each with its
    own PO or invoice number and control numbers, so none is a duplicate. Returns (name, bytes)."""
    templates = [
        ("acme-fasteners-810-INV-10234.x12", "INV-10234", "x12"),
        ("europa-components-INVOIC-EC-INV-5521.edi", "EC-INV-5521", "edifact"),
        ("europa-components-ORDERS-EC-7781.edi", "EC-7781", "edifact"),
        ("northwind-retail-850-NW-4471.x12", "NW-4471", "x12"),
    ]
    texts = [(name, Path(folder, name).read_text("latin-1"), number, std) for name, number, std in templates]
    out = []
    for i in range(start, start + count):
        name, text, number, std = texts[i % len(texts)]
        text = text.replace(number, f"{number}-{i}")
        text = _x12_controls(text, 100_000 + i) if std == "x12" else _edifact_controls(text, 100_000 + i)
        out.append((f"{i:06d}-{name.replace(number, f'{number}-{i}')}", text.encode("latin-1")))
    return out


_TEMPLATES = (
    ("acme-fasteners-810-INV-10234.x12", "INV-10234", "x12"),
    ("europa-components-INVOIC-EC-INV-5521.edi", "EC-INV-5521", "edifact"),
    ("europa-components-ORDERS-EC-7781.edi", "EC-7781", "edifact"),
    ("northwind-retail-850-NW-4471.x12", "NW-4471", "x12"),
)


def _repeat_sets(text: str, std: str, number: str, numbers: list[str], control: int) -> str:
    """One interchange holding the template's transaction set once per number (fresh set controls)."""
    term, sep = ("~", "*") if std == "x12" else ("'", "+")
    segs = [s.strip("\r\n") for s in text.split(term) if s.strip("\r\n")]
    first = next(i for i, s in enumerate(segs) if s.split(sep)[0] in ("ST", "UNH"))
    last = next(i for i, s in enumerate(segs) if s.split(sep)[0] in ("SE", "UNT"))
    head, body, tail = segs[:first], segs[first:last + 1], segs[last + 1:]
    sets = []
    for j, n in enumerate(numbers, 1):
        block = [s.replace(number, n) for s in body]
        opening, closing = block[0].split(sep), block[-1].split(sep)
        ref = f"{j:04d}" if std == "x12" else str(j)
        opening[2 if std == "x12" else 1] = ref
        closing[2] = ref
        block[0], block[-1] = sep.join(opening), sep.join(closing)
        sets += block
    out = []
    for seg in head + sets + tail:
        el = seg.split(sep)
        if el[0] in ("ISA", "IEA"):
            el[13 if el[0] == "ISA" else 2] = f"{control % 1_000_000_000:09d}"
        elif el[0] == "GS":
            el[6] = str(control % 1_000_000_000)
        elif el[0] == "GE":
            el[1], el[2] = str(len(numbers)), str(control % 1_000_000_000)
        elif el[0] == "UNB":
            el[5] = str(control)
        elif el[0] == "UNZ":
            el[1], el[2] = str(len(numbers)), str(control)
        out.append(sep.join(el))
    return term.join(out) + term


def batched_interchanges(folder: str | Path, documents: int, *, per_file: int = 100,
                         start: int = 1) -> list[tuple[str, bytes]]:
    """``documents`` distinct documents from the good demo files, ``per_file`` transaction sets to an
    interchange (partners send many orders or invoices in one file). Returns (name, bytes)."""
    out = []
    i, n = 0, start
    while i < documents:
        name, number, std = _TEMPLATES[len(out) % len(_TEMPLATES)]
        count = min(per_file, documents - i)
        numbers = [f"{number}-{k}" for k in range(n, n + count)]
        text = Path(folder, name).read_text("latin-1")
        data = _repeat_sets(text, std, number, numbers, 200_000 + len(out) + start).encode("latin-1")
        out.append((f"{len(out) + 1:05d}-{name}", data))
        i, n = i + count, n + count
    return out
