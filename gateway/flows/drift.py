"""Reference data both ways: drift between the ERP master and what Anaplan's lists (or a trading
partner's documents) hold, shown side by side; write-back to Plex only when the flow allows it and
an operator approved that one change (who, when, why kept on the row).

* A reference flow (``reference: suppliers | cost_centres``, target a list) is checked by reading
  the Anaplan list back and comparing it with the ERP master as the flow last read it (its stored
  records): an item in Anaplan the ERP does not have, a name that differs (renamed), an item the
  ERP has deactivated.
* Each EDI partner's Plex supplier (its mapping file's ``plex.supplier_code`` and every supplier an
  operator chose for it) is checked against the Plex supplier master the gateway keeps: missing,
  renamed, inactive, or a tax id other than the one the partner's documents carry.

A finding stays one open row while it lasts; it is *resolved* when a later check no longer finds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import orjson
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from gateway.flows.files import FlowFile
from gateway.flows.model import compile_field
from gateway.flows.tables import Drift, FlowRecord

DRIFT = Drift.__table__
RECORDS = FlowRecord.__table__


@dataclass(frozen=True)
class Finding:
    key: str
    issue: str
    theirs: dict[str, Any]
    erp: dict[str, Any] | None
    proposal: dict[str, Any] | None = None


@dataclass
class ScanReport:
    subject: str
    opened: int = 0
    still_open: int = 0
    resolved: int = 0
    findings: list[Finding] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.subject}: {len(self.findings)} difference(s): {self.opened} new, {self.still_open} already "
                f"shown, {self.resolved} gone")


def _norm(text: Any) -> str:
    from gateway.integrations.plex.suppliers import normalize_name

    return normalize_name(str(text or ""))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _erp_active(system: str, raw: dict[str, Any]) -> bool:
    if system == "plex":
        return str(raw.get("status") or "Active") == "Active"
    return str(raw.get("OnHold") or "N").upper() != "Y"  # SYSPRO ApSupplier


def erp_master(engine: Engine, flow_file: FlowFile) -> dict[str, dict[str, Any]]:
    """The ERP master as the reference flow last read it: code -> {name, active, raw}."""
    flow = flow_file.flow
    specs = flow.field_specs()
    code_of = compile_field("code", specs["code"]) if "code" in specs else None
    name_of = compile_field("name", specs["name"]) if "name" in specs else None
    out: dict[str, dict[str, Any]] = {}
    last = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(select(RECORDS.c.id, RECORDS.c.raw).where(RECORDS.c.flow == flow.name,
                                                                          RECORDS.c.id > last)
                                .order_by(RECORDS.c.id).limit(5000)).all()
        if not rows:
            return out
        for _, raw in rows:
            record = orjson.loads(raw)
            name = name_of(record) if name_of else ""
            code = code_of(record) if code_of else name
            out[code] = {"code": code, "name": name, "active": _erp_active(flow.source.system, record)}
        last = rows[-1][0]


def compare_reference(flow_file: FlowFile, items: Iterable[dict[str, Any]], erp: dict[str, dict[str, Any]]
                      ) -> list[Finding]:
    """Anaplan's list items against the ERP master (pure)."""
    flow = flow_file.flow
    wb = flow.write_back
    can_write = wb.allowed and flow.source.system == "plex" and flow.reference == "suppliers"
    findings = []
    for item in items:
        code = str(item.get("code") or item.get("name") or "")
        theirs = {"code": code, "name": item.get("name"), "properties": item.get("properties") or {}}
        mine = erp.get(code)
        if mine is None:
            proposal = {"action": "create", "code": code, "name": item.get("name")} if can_write and wb.create \
                else None
            findings.append(Finding(code, "missing_in_erp", theirs, None, proposal))
        elif item.get("name") and mine["name"] and _norm(item["name"]) != _norm(mine["name"]):
            proposal = {"action": "update", "code": code, "name": item.get("name")} if can_write and wb.update \
                else None
            findings.append(Finding(code, "renamed", theirs, mine, proposal))
        elif not mine["active"]:
            findings.append(Finding(code, "deactivated", theirs, mine))
    return findings


def record(engine: Engine, kind: str, subject: str, findings: list[Finding]) -> ScanReport:
    """Store a check's findings: new ones opened, open ones no longer found resolved."""
    report = ScanReport(subject, findings=findings)
    now = _now()
    with engine.begin() as conn:
        open_rows = {(r.key, r.issue): r for r in conn.execute(
            select(DRIFT).where(DRIFT.c.kind == kind, DRIFT.c.subject == subject, DRIFT.c.state == "open"))}
        seen = set()
        for f in findings:
            seen.add((f.key, f.issue))
            values = {"theirs": json.dumps(f.theirs, default=str), "erp": json.dumps(f.erp, default=str)
                      if f.erp is not None else None,
                      "proposal": json.dumps(f.proposal) if f.proposal else None, "updated_at": now}
            row = open_rows.get((f.key, f.issue))
            if row is None:
                conn.execute(DRIFT.insert().values(kind=kind, subject=subject, key=f.key, issue=f.issue, state="open",
                                                   detected_at=now, **values))
                report.opened += 1
            else:
                conn.execute(update(DRIFT).where(DRIFT.c.id == row.id).values(**values))
                report.still_open += 1
        for (key, issue), row in open_rows.items():
            if (key, issue) not in seen:
                conn.execute(update(DRIFT).where(DRIFT.c.id == row.id).values(state="resolved", updated_at=now))
                report.resolved += 1
    return report


def scan_reference(engine: Engine, flow_file: FlowFile, target: Any) -> ScanReport:
    """Read the flow's Anaplan list back and compare it with the ERP master."""
    return record(engine, "reference", flow_file.flow.name,
                  compare_reference(flow_file, target.read_items(), erp_master(engine, flow_file)))


def _partner_tax_ids(engine: Engine, partner: str, limit: int = 20) -> list[str]:
    """The supplier tax ids the partner's newest documents carry."""
    from gateway.store.models import Document

    t = Document.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.canonical).where(t.c.partner == partner, t.c.canonical.is_not(None))
                            .order_by(t.c.id.desc()).limit(limit)).all()
    found = []
    for (text,) in rows:
        try:
            supplier = ((json.loads(text) or {}).get("parties") or {}).get("supplier") or {}
        except ValueError:
            continue
        if supplier.get("tax_id"):
            found.append(str(supplier["tax_id"]))
    return found


def scan_partners(engine: Engine, partners: Iterable[Any]) -> list[ScanReport]:
    """Each partner's Plex supplier(s) against the Plex master the gateway keeps."""
    from gateway.integrations.plex.suppliers import normalize_tax_id
    from gateway.store.models import Supplier, SupplierAlias

    with engine.connect() as conn:
        master = {r.code: r for r in conn.execute(select(Supplier.__table__))}
        aliases: dict[str, set[str]] = {}
        for a in conn.execute(select(SupplierAlias.__table__)):
            aliases.setdefault(a.partner, set()).add(a.supplier_code)
    reports = []
    for p in partners:
        codes = set(aliases.get(p.id, set()))
        if p.plex.supplier_code:
            codes.add(p.plex.supplier_code)
        taxes = {normalize_tax_id(t): t for t in _partner_tax_ids(engine, p.id)}
        findings = []
        for code in sorted(codes):
            s = master.get(code)
            theirs = {"partner": p.id, "name": p.name, "tax_ids": sorted(taxes.values())}
            if s is None:
                findings.append(Finding(code, "missing_in_plex", theirs, None))
                continue
            erp = {"code": s.code, "name": s.name, "status": s.status, "tax_id": s.tax_id}
            if s.status and s.status != "Active":
                findings.append(Finding(code, "inactive", theirs, erp))
            if _norm(p.name) != _norm(s.name):
                findings.append(Finding(code, "renamed", theirs, erp))
            if taxes and s.tax_id and normalize_tax_id(s.tax_id) not in taxes:
                findings.append(Finding(code, "tax_id_differs", theirs, erp))
        reports.append(record(engine, "partner", p.id, findings))
    return reports


class DriftDecisionError(ValueError):
    """The decision cannot be taken (not open, no reason given, write-back not allowed)."""


def decide(engine: Engine, drift_id: int, *, approve: bool, actor: str, reason: str,
           write: Callable[[dict[str, Any]], Any] | None = None) -> str:
    """An operator's decision on one open difference. Approving one with a proposal writes it back
    (``write``) now; the row keeps who, when, why and what the ERP answered. Returns the new state."""
    reason = (reason or "").strip()
    if not reason:
        raise DriftDecisionError("say why (a reason is kept with the decision)")
    with engine.connect() as conn:
        row = conn.execute(select(DRIFT).where(DRIFT.c.id == drift_id)).first()
    if row is None:
        raise DriftDecisionError(f"no difference #{drift_id}")
    if row.state != "open":
        raise DriftDecisionError(f"difference #{drift_id} is {row.state}, not open")
    state, error = ("rejected", None)
    if approve:
        state = "approved"
        if row.proposal:
            if write is None:
                raise DriftDecisionError("no ERP connection to write the change back with")
            try:
                write(json.loads(row.proposal))
                state = "written"
            except Exception as exc:  # noqa: BLE001 - the ERP's refusal is kept on the row, shown to the operator
                state, error = "failed", f"{type(exc).__name__}: {exc}"
    with engine.begin() as conn:
        conn.execute(update(DRIFT).where(DRIFT.c.id == drift_id, DRIFT.c.state == "open").values(
            state=state, decided_by=actor, decided_at=_now(), reason=reason, error=error, updated_at=_now()))
    return state


def plex_writer(plex_config: Any) -> Callable[[dict[str, Any]], Any]:
    """Write an approved supplier change to Plex (create, or update the one with that code)."""
    def write(proposal: dict[str, Any]) -> Any:
        from gateway.integrations.plex.client import PlexClient

        with PlexClient(plex_config) as client:
            return client.save_supplier(proposal["code"], {"name": proposal.get("name")})
    return write


def open_drift(engine: Engine, limit: int = 200) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(DRIFT).where(DRIFT.c.state == "open").order_by(DRIFT.c.kind, DRIFT.c.subject,
                                                                                   DRIFT.c.key).limit(limit)).all()


def decided_drift(engine: Engine, limit: int = 50) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(DRIFT).where(DRIFT.c.state.in_(("approved", "written", "failed", "rejected")))
                            .order_by(DRIFT.c.decided_at.desc()).limit(limit)).all()


def scan_all(settings: Any, engine: Engine, partners: Iterable[Any]) -> list[ScanReport]:
    """Every reference flow's list and every partner's supplier: what the drift page's check runs."""
    from gateway.flows import load_flow_directory, make_target

    reports = scan_partners(engine, partners)
    if settings.anaplan is not None and settings.flows_dir.is_dir():
        for ff in load_flow_directory(settings.flows_dir).values():
            if ff.flow.reference and ff.flow.target.kind == "list_items":
                reports.append(scan_reference(engine, ff, make_target(settings, engine, ff)))
    return reports
