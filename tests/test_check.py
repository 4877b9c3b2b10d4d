"""``gateway check`` against the simulators (and a real sshd): green when right, a red line per fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.check import status_of
from gateway.integrations.anaplan.check import check_anaplan
from gateway.integrations.anaplan.client import AnaplanSettings, make_imports
from gateway.integrations.anaplan.simulator.app import INVOICES_FILE_ID
from gateway.integrations.plex.check import PlexUses, check_plex, probe_duplicates
from gateway.integrations.plex.client import PlexClient, PlexConfig
from gateway.integrations.plex.simulator.app import (
    SIM_SOAP_PASSWORD,
    SIM_SOAP_READONLY_USER,
)
from gateway.sandbox.environment import start_sandbox
from tests.alert_receivers import cli_runner
from tests.pipeline_fixtures import PARTNERS



@pytest.fixture(scope="module")
def sandbox():
    sb = start_sandbox(sterling_mailboxes=("/ACME/Inbox", "/GLOBEX/Inbox"))
    yield sb
    sb.close()


@pytest.fixture
def sim(sandbox):
    sandbox.plex.reset()
    sandbox.plex.settings.duplicate_purchase_order = "fail"
    sandbox.plex.settings.duplicate_po_line = "fail"
    restore_headers(sandbox)
    from gateway.sandbox.environment import seed_partners

    seed_partners(sandbox.plex)
    return sandbox


def restore_headers(sb) -> None:
    """The simulator's imports with their own headerNames again (a rename fault sticks until undone)."""
    from gateway.sandbox.environment import ANAPLAN_COLUMNS

    imports = sb.anaplan_settings()["imports"]
    sb.anaplan.set_faults({"model_state": None, "import_headers": {
        imports[kind]["import_id"]: list(ANAPLAN_COLUMNS[kind]) for kind in imports}})


def plex_lines(sb, uses=PlexUses(sales_orders=True, supplier_code="ACME01"), **overrides) -> dict[str, tuple[str, str]]:
    cfg = PlexConfig.model_validate(sb.plex_settings(**overrides))
    with PlexClient(cfg) as client:
        return {c.name: (status_of(c), c.detail) for c in check_plex(client, cfg, uses)}


def anaplan_lines(sb, **overrides) -> dict[str, tuple[str, str]]:
    cfg = AnaplanSettings.model_validate(sb.anaplan_settings(**overrides))
    destination = make_imports(cfg)
    try:
        return {c.name: (status_of(c), c.detail) for c in check_anaplan(destination.client, cfg)}
    finally:
        destination.client.close()


def red(lines: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: detail for name, (status, detail) in lines.items() if status == "fail"}


# ------------------------------------------------------------------------------------------- Plex


def test_plex_all_green_reads_each_endpoint_and_every_written_data_source(sim):
    before = sim.plex.state(log=False)
    lines = plex_lines(sim)
    assert red(lines) == {}
    assert set(lines) == {
        "Connect sign-in", "supplier master (mdm/v1/suppliers)", "supplier tax ids (mdm/v1/suppliers/{id}/financials)",
        "AP invoices (accounting/v1/ap-invoices)", "plex.ap_invoice_accounts.expense_account (mdm/v1/chart-of-accounts)",
        "plex.ap_invoice_accounts.tax_account (mdm/v1/chart-of-accounts)", "customers (mdm/v1/customers)",
        "sales orders (sales/v1/orders)", "purchase orders (purchasing/v1/purchase-orders)",
        "SOAP sign-in and PO look-up (data source 90002)", "PO create (data source 90001)",
        "PO line add (data source 90003)"}
    assert lines["supplier master (mdm/v1/suppliers)"][1] == "read; supplier ACME01 found"
    assert "tenants: ACME, ACMEMX" in lines["Connect sign-in"][1]
    # Only what the configuration uses is read: no sales-order partner, no sales-order lines.
    lines = plex_lines(sim, PlexUses(sales_orders=False))
    assert "sales orders (sales/v1/orders)" not in lines and "customers (mdm/v1/customers)" not in lines
    assert lines["supplier tax ids (mdm/v1/suppliers/{id}/financials)"][0] == "skip"
    after = sim.plex.state(log=False)  # reads only: nothing was created
    for records in ("purchase_orders", "ap_invoices", "sales_orders", "suppliers"):
        assert len(after[records]) == len(before[records])


def test_plex_wrong_key_is_one_red_sign_in_line(sim):
    lines = plex_lines(sim, api_key="not-the-key")
    assert red(lines).keys() == {"Connect sign-in"}
    assert "credentials refused" in lines["Connect sign-in"][1] and "not-the-key" not in lines["Connect sign-in"][1]
    assert lines["Connect reads"] == ("skip", "not checked: the sign-in failed")
    assert lines["PO create (data source 90001)"][0] == "ok"  # SOAP has its own account


def test_plex_403_on_one_endpoint_and_a_data_source_not_granted(sim):
    sim.plex.add_fault(kind="forbidden", surface="rest", path="/accounting/v1/ap-invoices", times=None)
    lines = plex_lines(sim, soap={"url": sim.plex.soap_url, "username": SIM_SOAP_READONLY_USER,
                                  "password": SIM_SOAP_PASSWORD})
    assert set(red(lines)) == {"AP invoices (accounting/v1/ap-invoices)", "PO create (data source 90001)",
                               "PO line add (data source 90003)"}
    assert red(lines)["AP invoices (accounting/v1/ap-invoices)"].startswith("permission refused")
    assert "not authorized to execute data source 90001" in red(lines)["PO create (data source 90001)"]
    assert lines["SOAP sign-in and PO look-up (data source 90002)"][0] == "ok"  # the read-only account may look up


def test_plex_wrong_soap_password_and_misnamed_inputs_and_unknown_gl_accounts(sim):
    lines = plex_lines(sim, soap={"url": sim.plex.soap_url, "username": "AcmeDetroitWs@plex.com",
                                  "password": "wrong"})
    assert red(lines).keys() == {"SOAP sign-in and PO look-up (data source 90002)"}
    assert "credentials refused" in red(lines)["SOAP sign-in and PO look-up (data source 90002)"]
    lines = plex_lines(sim, purchase_orders={"create": {
        "key": 90001, "inputs": {"supplier_code": "Supplier_Code", "po_number": "PO_Number"},
        "outputs": {"po_key": "@PO_Key"}}},
        ap_invoice_accounts={"expense_account": "9999-000-00", "tax_account": "5900-000-00"})
    bad = red(lines)
    assert "has no input po_number -> @PO_Number" in bad["PO create (data source 90001)"]
    assert "GL account 9999-000-00 is not in Plex's chart of accounts" in \
        bad["plex.ap_invoice_accounts.expense_account (mdm/v1/chart-of-accounts)"]
    assert "inactive" in bad["plex.ap_invoice_accounts.tax_account (mdm/v1/chart-of-accounts)"]
    lines = plex_lines(sim, soap=None)
    assert "cannot be sent" in red(lines)["SOAP data sources"]


@pytest.mark.parametrize("behaviour, says, needed", [
    ("fail", "a repeated create is refused", "not strictly needed"),
    ("update", "a repeated create updates the same PO", "is needed"),
    ("create", "a repeated create makes a second PO", "is needed"),
])
def test_probe_duplicates_tells_each_behaviour(sim, behaviour, says, needed):
    sim.plex.settings.duplicate_purchase_order = behaviour
    sim.plex.settings.duplicate_po_line = behaviour
    cfg = PlexConfig.model_validate(sim.plex_settings())
    with PlexClient(cfg) as client:
        header, line = probe_duplicates(client, cfg, "ACME01")
    assert header.ok and header.detail.startswith(says) and needed in header.detail
    assert "the guard is configured (look-up data source 90002 found the probe PO)" in header.detail
    number = header.detail.split("Probe PO ")[1].split()[0]
    pos = [p for p in sim.plex.state(log=False)["purchase_orders"] if p["poNumber"] == number]
    assert len(pos) == (2 if behaviour == "create" else 1)
    line_says = {"fail": "a repeated line add is refused", "update": "a repeated line add updates the line",
                 "create": "a repeated line add makes a second line"}[behaviour]
    assert line.ok and line.detail.startswith(line_says)
    assert len(pos[0]["_lines"]) == (2 if behaviour == "create" else 1)


def test_probe_refuses_production_and_needs_a_working_look_up(sim):
    cfg = PlexConfig.model_validate(sim.plex_settings(soap={
        "url": "https://api.plexonline.com/DataSource/Service.asmx", "username": "x", "password": "y"}))
    with PlexClient(cfg) as client:
        (refused,) = probe_duplicates(client, cfg, "ACME01")
    assert not refused.ok and "production host" in refused.detail
    # A look-up that never finds anything: the guard would not work, whatever the create does.
    sim.plex.settings.duplicate_purchase_order = "create"
    cfg = PlexConfig.model_validate(sim.plex_settings(purchase_orders={
        "lookup": {"key": 90002, "inputs": {"po_number": "PO_No", "supplier_code": "Supplier_Code"},
                   "columns": {"po_key": "PO_Key", "po_number": "Status"}}, "add_line": None}))
    with PlexClient(cfg) as client:
        (header,) = probe_duplicates(client, cfg, "ACME01")
    assert not header.ok and "the guard is NOT working" in header.detail
    with PlexClient(cfg) as client:
        (unknown,) = probe_duplicates(client, cfg, "NO-SUCH-SUPPLIER")
    assert not unknown.ok and "is supplier NO-SUCH-SUPPLIER in the test tenant?" in unknown.detail


# ------------------------------------------------------------------------------------------- Anaplan


def test_anaplan_green_then_wrong_password_missing_import_header_mismatch_wrong_file(sim):
    lines = anaplan_lines(sim)
    assert red(lines) == {} and len(lines) == 9
    assert lines["purchase order: columns"][1] == "the 8 configured columns are the import's headerNames"
    lines = anaplan_lines(sim, password="wrong")
    assert list(lines) == ["sign-in"] and "rejected" in lines["sign-in"][1] and "wrong" not in lines["sign-in"][1]

    settings = sim.anaplan_settings()
    imports = settings["imports"]
    sim.anaplan.set_faults({"import_headers": {imports["invoice"]["import_id"]: [
        "Invoice No", "Invoice Date", "PO Number", "Supplier", "Currency", "Total"]}})
    broken = {**imports, "purchase_order": {**imports["purchase_order"], "import_id": "112000000099"}}
    bad = red(anaplan_lines(sim, imports=broken))
    assert bad == {"purchase order: import 112000000099": "no such import in the model",
                   "invoice: columns": bad["invoice: columns"]}
    assert "not mapped: 'Invoice No'" in bad["invoice: columns"]
    assert "not in the import's headerNames: 'Invoice Number'" in bad["invoice: columns"]

    restore_headers(sim)
    wrong_file = {**imports, "purchase_order": {**imports["purchase_order"], "file_id": INVOICES_FILE_ID}}
    bad = red(anaplan_lines(sim, imports=wrong_file))
    assert list(bad) == [f"purchase order: file {INVOICES_FILE_ID}"]
    assert "uploads would not reach it" in bad[f"purchase order: file {INVOICES_FILE_ID}"]
    other_model = {"invoice": {**imports["invoice"], "model_id": "F" * 32}}
    bad = red(anaplan_lines(sim, imports=other_model))
    assert list(bad) == [f"invoice: model {'F' * 32}"] and "ids are case-sensitive" in bad[f"invoice: model {'F' * 32}"]


# ------------------------------------------------------------------------------------------- the command


def _config(tmp_path: Path, sb, extra: str = "") -> Path:
    from gateway.sandbox.environment import STERLING_USER

    plex, anaplan = sb.plex_settings(api_key="secret:plex-key"), sb.anaplan_settings(password="secret:anaplan-pw")
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
data_dir = "{tmp_path / 'data'}"
database_url = "sqlite:///{tmp_path / 'gw.db'}"
partners_dir = "{PARTNERS}"
[[sterling]]
name = "b2bi"
base_url = "{sb.sterling.server.base_url}"
username = "{STERLING_USER}"
password = "secret:sterling-pw"
mailboxes = ["/ACME/Inbox", "/GLOBEX/Inbox"]
[[local]]
name = "drop"
path = "{tmp_path}"
{extra}
[plex]
{_toml(plex)}
[anaplan]
{_toml(anaplan)}
""")
    return cfg


def _toml(values: dict) -> str:
    """Flat keys and inline tables (enough for the sandbox settings)."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + " }"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return str(v)
    return "\n".join(f"{k} = {value(v)}" for k, v in values.items() if v is not None)


@pytest.fixture
def cli(monkeypatch):
    return cli_runner(monkeypatch)


def _secrets(cli, cfg: Path, **values: str) -> None:
    for name, value in values.items():
        r = cli("secrets", "set", name, "--stdin", "-c", str(cfg), input=value + "\n")
        assert r.exit_code == 0, r.output


def test_gateway_check_table_json_and_exit_status(cli, sim, tmp_path):
    from gateway.integrations.anaplan.simulator.app import DEFAULT_PASSWORD
    from gateway.integrations.plex.simulator.app import SIM_API_KEY
    from gateway.sandbox.environment import STERLING_PASSWORD

    sim.sterling.deposit("/ACME/Inbox", "po1.x12", b"ISA*...")
    cfg = _config(tmp_path, sim)
    _secrets(cli, cfg, **{"plex-key": SIM_API_KEY, "anaplan-pw": DEFAULT_PASSWORD, "sterling-pw": STERLING_PASSWORD})
    r = cli("check", "-c", str(cfg))
    assert r.exit_code == 0, r.output
    assert "all green" in r.output and "FAIL" not in r.output
    assert "mailbox /ACME/Inbox" in r.output and "listed: 1 message(s) waiting" in r.output
    r = cli("check", "-c", str(cfg), "--json", "--system", "anaplan", "--system", "sterling")
    data = json.loads(r.output)
    assert [d["system"] for d in data] == ["sterling:b2bi", "anaplan"] and all(d["ok"] for d in data)

    # Sterling's password rotated, an Anaplan column renamed: two red lines, exit 1, no secret shown.
    _secrets(cli, cfg, **{"sterling-pw": "an-old-password"})
    sim.anaplan.set_faults({"import_headers": {sim.anaplan_settings()["imports"]["invoice"]["import_id"]: [
        "Invoice", "Invoice Date", "PO Number", "Supplier", "Currency", "Total"]}})
    r = cli("check", "-c", str(cfg))
    assert r.exit_code == 1
    failed = [line for line in r.output.splitlines() if "FAIL" in line]
    assert len(failed) == 2, r.output
    assert "sign-in at" in failed[0] and "HTTP 401" in failed[0]
    assert "invoice: columns" in failed[1] and "not mapped: 'Invoice'" in failed[1]
    assert "2 red line(s)" in r.output
    for secret in ("an-old-password", SIM_API_KEY, DEFAULT_PASSWORD):
        assert secret not in r.output
    r = cli("check", "-c", str(cfg), "--system", "syspro")
    assert r.exit_code == 2 and "no system named syspro" in r.output


@pytest.mark.sshd
def test_gateway_check_sftp_host_key_and_login(cli, sim, tmp_path, sshd_server):
    from gateway.integrations.anaplan.simulator.app import DEFAULT_PASSWORD
    from gateway.integrations.plex.simulator.app import SIM_API_KEY
    from gateway.sandbox.environment import STERLING_PASSWORD

    folder = sshd_server.root / f"check-{tmp_path.name}"
    folder.mkdir()

    def sftp(host_key: str) -> str:
        return (f'[[sftp]]\nname = "partners"\nhost = "{sshd_server.host}"\nport = {sshd_server.port}\n'
                f'username = "{sshd_server.username}"\nprivate_key_path = "{sshd_server.client_key_path}"\n'
                f'host_keys = ["{host_key}"]\n[[sftp.folders]]\npath = "{folder}"\nafter_intake = "delete"\n')

    cfg = _config(tmp_path, sim, sftp(sshd_server.host_key))
    _secrets(cli, cfg, **{"plex-key": SIM_API_KEY, "anaplan-pw": DEFAULT_PASSWORD, "sterling-pw": STERLING_PASSWORD})
    r = cli("check", "-c", str(cfg), "--system", "sftp")
    assert r.exit_code == 0, r.output
    assert "host key pinned, signed in" in r.output and f"drop folder {folder}" in r.output
    cfg = _config(tmp_path, sim, sftp(sshd_server.wrong_host_key))
    r = cli("check", "-c", str(cfg), "--system", "sftp")
    assert r.exit_code == 1 and "FAIL" in r.output and "host key" in r.output.lower()


def test_syspro_sites_are_checked_odata_and_enet(tmp_path):
    """A [[syspro]] site: the operator signs in (OData or e.net); a wrong password is a red line."""
    from gateway.check import check_systems
    from gateway.runtime import open_runtime
    from gateway.sandbox.flows import start_syspro, syspro_settings
    from gateway.settings import Settings

    sim, server = start_syspro()
    try:
        site = syspro_settings(sim, server)
        sites = [site, {**site, "name": "erp-enet", "read": "enet"},
                 {**site, "name": "erp-old", "odata": {**site["odata"], "password": "not-it"}}]
        settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'gw.db'}", syspro=sites)
        rt = open_runtime(settings)
        try:
            reports = {r.system: r for r in check_systems(rt)}
        finally:
            rt.engine.dispose()
    finally:
        server.stop()
    assert set(reports) == {"syspro:syspro", "syspro:erp-enet", "syspro:erp-old"}
    assert reports["syspro:syspro"].ok and "accepted" in reports["syspro:syspro"].lines[0].detail
    assert reports["syspro:erp-enet"].ok and "COMFND answers" in reports["syspro:erp-enet"].lines[0].detail
    (line,) = reports["syspro:erp-old"].lines
    assert line.status == "fail" and "not-it" not in line.detail and line.detail


def test_gateway_check_probe_duplicates_from_the_command_line(cli, sim, tmp_path):
    from gateway.integrations.anaplan.simulator.app import DEFAULT_PASSWORD
    from gateway.integrations.plex.simulator.app import SIM_API_KEY
    from gateway.sandbox.environment import STERLING_PASSWORD

    sim.plex.settings.duplicate_purchase_order = "create"
    cfg = _config(tmp_path, sim)
    _secrets(cli, cfg, **{"plex-key": SIM_API_KEY, "anaplan-pw": DEFAULT_PASSWORD, "sterling-pw": STERLING_PASSWORD})
    r = cli("check", "-c", str(cfg), "--system", "plex", "--probe-duplicates", "--json")
    assert r.exit_code == 0, r.output
    plex, probe = json.loads(r.output)
    assert plex["system"] == "plex" and probe["system"] == "plex: duplicate probe"
    header = probe["checks"][0]
    assert header["status"] == "ok" and header["detail"].startswith("a repeated create makes a second PO")
    # The supplier came from a partner file (plex.supplier_code), as none was named.
    number = header["detail"].split("Probe PO ")[1].split()[0]
    made = [p for p in sim.plex.state(log=False)["purchase_orders"] if p["poNumber"] == number]
    assert len(made) == 2 and {p["_supplierCode"] for p in made} <= {"ACME01", "EUROCOMP"}
