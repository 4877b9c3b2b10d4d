"""Reference data both ways: an Anaplan list read back and compared with the ERP master (drift in
the panel's words), write-back to Plex only for a flow that allows it and only after an operator
approved that change; each EDI partner's Plex supplier checked against the Plex master."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.flows.drift import (
    DriftDecisionError, decide, open_drift, plex_writer, scan_partners, scan_reference,
)
from gateway.flows.tables import Drift
from gateway.integrations.anaplan.simulator.lists import actions
from gateway.partners import load_partner_directory
from gateway.sandbox.flows import MODEL_ID, SUPPLIERS_LIST_ID, plex_settings, start_plex, suppliers_list_flow_text
from gateway.store import transaction
from gateway.store.models import Document, Interchange, Supplier, SupplierAlias
from tests.flows_env import start_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(engine, tmp_path):
    plex = start_plex(records=False)
    e = start_env(engine, tmp_path, warehouse_rows=10)
    e.plex = plex
    yield e
    plex.server.stop()
    e.syspro_server.stop()
    e.anaplan_server.stop()


def settings(env):
    s = env.settings()
    plex = type(s).model_fields["plex"].annotation.__args__[0].model_validate(
        {**plex_settings(env.plex), "requests_per_minute": 6000, "burst": 500})
    return s.model_copy(update={"plex": plex})


def anaplan_list(env):
    return actions(env.anaplan).lists[MODEL_ID][SUPPLIERS_LIST_ID]


def plex_supplier(env, code):
    pcn = env.plex.settings.tenants[0].pcn
    return next((s for s in env.plex.suppliers.values() if s["code"] == code and s["_tenant"] == pcn), None)


def test_anaplan_list_drift_is_found_and_an_approved_change_is_written_back_to_plex(env):
    s = settings(env)
    runner = env.runner(suppliers_list_flow_text(system="plex", write_back=True), settings=s)
    first = runner.run()
    assert first.state == "done" and first.sent > 0
    items = anaplan_list(env)
    by_code = items.by_code()
    active = sorted(c for c in by_code if plex_supplier(env, c)["status"] == "Active")
    renamed_code = active[0]
    by_code[renamed_code]["name"] = "Renamed In Anaplan Corp"          # a planner renamed it in Anaplan
    items.items["206999999999"] = {"id": "206999999999", "name": "Brand New Supplier LLC", "code": "NEWSUP01",
                                   "parent": "", "properties": {}}        # added in Anaplan only
    inactive_code = active[1]
    plex_supplier(env, inactive_code)["status"] = "Inactive"             # deactivated in Plex
    plex_supplier(env, inactive_code)["modifiedDate"] = env.plex.now().isoformat().replace("+00:00", "Z")
    env.runner(suppliers_list_flow_text(system="plex", write_back=True), settings=s).run()

    report = scan_reference(env.engine, runner.file, runner.target)
    found = {(f.key, f.issue): f for f in report.findings}
    already_inactive = {(c, "deactivated") for c in by_code if c not in (renamed_code, inactive_code)
                        and plex_supplier(env, c)["status"] != "Active"}
    assert set(found) == {(renamed_code, "renamed"), ("NEWSUP01", "missing_in_erp"),
                          (inactive_code, "deactivated")} | already_inactive
    assert found[("NEWSUP01", "missing_in_erp")].proposal == {"action": "create", "code": "NEWSUP01",
                                                               "name": "Brand New Supplier LLC"}
    assert found[(renamed_code, "renamed")].erp["name"] != "Renamed In Anaplan Corp"
    rows = {(r.key, r.issue): r for r in open_drift(env.engine)}
    assert len(rows) == len(found)
    again = scan_reference(env.engine, runner.file, runner.target)
    assert (again.opened, again.still_open) == (0, len(found))  # one open row per difference, not one per check

    write = plex_writer(s.plex)
    with pytest.raises(DriftDecisionError, match="say why"):
        decide(env.engine, rows[("NEWSUP01", "missing_in_erp")].id, approve=True, actor="olga", reason="", write=write)
    assert plex_supplier(env, "NEWSUP01") is None  # nothing written without a decision
    state = decide(env.engine, rows[("NEWSUP01", "missing_in_erp")].id, approve=True, actor="olga",
                   reason="new supplier agreed by purchasing", write=write)
    assert state == "written"
    assert plex_supplier(env, "NEWSUP01")["name"] == "Brand New Supplier LLC"
    assert decide(env.engine, rows[(renamed_code, "renamed")].id, approve=False, actor="olga",
                  reason="Anaplan's name is a typo", write=write) == "rejected"
    assert plex_supplier(env, renamed_code)["name"] != "Renamed In Anaplan Corp"
    with env.engine.connect() as conn:
        decided = {r.key: r for r in conn.execute(select(Drift.__table__).where(Drift.__table__.c.decided_by.is_not(None)))}
    assert decided["NEWSUP01"].decided_by == "olga" and decided["NEWSUP01"].reason == "new supplier agreed by purchasing"
    assert decided["NEWSUP01"].decided_at is not None
    with pytest.raises(DriftDecisionError, match="not open"):
        decide(env.engine, rows[("NEWSUP01", "missing_in_erp")].id, approve=True, actor="olga", reason="again",
               write=write)


def test_a_flow_that_does_not_allow_write_back_proposes_nothing(env):
    s = settings(env)
    runner = env.runner(suppliers_list_flow_text(system="plex", write_back=False), settings=s)
    runner.run()
    anaplan_list(env).items["206999999998"] = {"id": "206999999998", "name": "Only In Anaplan", "code": "ONLYAP",
                                               "parent": "", "properties": {}}
    report = scan_reference(env.engine, runner.file, runner.target)
    missing = [(f.key, f.issue, f.proposal) for f in report.findings if f.issue == "missing_in_erp"]
    assert missing == [("ONLYAP", "missing_in_erp", None)]
    assert all(f.proposal is None for f in report.findings)
    row = next(r for r in open_drift(env.engine) if r.key == "ONLYAP")
    assert decide(env.engine, row.id, approve=True, actor="olga", reason="known", write=None) == "approved"
    assert plex_supplier(env, "ONLYAP") is None


def test_each_partners_plex_supplier_is_checked_against_the_master(env):
    directory = load_partner_directory(ROOT / "partners")
    partners = [directory.get(pid) for pid in ("acme-fasteners", "europa-components")]
    with transaction(env.engine) as s:
        s.add(Supplier(code="ACME01", name="Acme Fasteners Incorporated Holdings", normalized_name="x",
                       tax_id="34-9999999", status="Inactive"))
        s.add(SupplierAlias(partner="europa-components", key="x", supplier_code="EURO-OLD", created_by="olga"))
        s.add(Supplier(code="EUROCOMP", name="Europa Components GmbH", normalized_name="europa components",
                       tax_id="DE811234567", status="Active"))
        ich = Interchange(sha256="0" * 64, size=1, source="test")
        s.add(ich)
        s.flush()
        s.add(Document(interchange_id=ich.id, position=1, partner="acme-fasteners", kind="invoice", standard="x12",
                       canonical=json.dumps({"parties": {"supplier": {"name": "Acme", "tax_id": "34-1234567"}}})))
    reports = {r.subject: r for r in scan_partners(env.engine, partners)}
    acme = {(f.key, f.issue) for f in reports["acme-fasteners"].findings}
    assert acme == {("ACME01", "inactive"), ("ACME01", "renamed"), ("ACME01", "tax_id_differs")}
    tax = next(f for f in reports["acme-fasteners"].findings if f.issue == "tax_id_differs")
    assert tax.theirs["tax_ids"] == ["34-1234567"] and tax.erp["tax_id"] == "34-9999999"  # side by side
    europa = {(f.key, f.issue) for f in reports["europa-components"].findings}
    assert europa == {("EURO-OLD", "missing_in_plex")}  # the learned choice no longer exists in Plex

    with transaction(env.engine) as s:  # fixed in Plex: the next check resolves what is gone
        row = s.get(Supplier, "ACME01")
        row.status, row.name, row.tax_id = "Active", "Acme Fasteners Inc.", "34-1234567"
    again = {r.subject: r for r in scan_partners(env.engine, partners)}
    assert again["acme-fasteners"].findings == [] and again["acme-fasteners"].resolved == 3
