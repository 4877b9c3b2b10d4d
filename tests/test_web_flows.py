"""The panel's flows pages against the simulators: what a viewer sees, what an operator can do
(dry run, switch on after it, run, replay), records found by source key, CSRF and roles enforced."""

from __future__ import annotations

import time

import pytest

from gateway.runtime import Runtime
from gateway.sandbox.flows import STOCK_IMPORT_ID, stock_flow_text
from tests.flows_env import start_env
from tests.test_web_support import add_user, client_for, csrf_of, sign_in


@pytest.fixture
def panel(tmp_path):
    from gateway.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    engine = make_engine(url)
    env = start_env(engine, tmp_path, warehouse_rows=300, page_size=100)
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "syspro-stock.yaml").write_text(stock_flow_text(poll_seconds=0.05))
    settings = env.settings().model_copy(update={"flows_dir": flows, "database_url": url})
    rt = Runtime(settings=settings, engine=engine)
    add_user(engine, "olga", "operator")
    add_user(engine, "victor", "viewer")
    yield env, rt
    env.syspro_server.stop()
    env.anaplan_server.stop()
    engine.dispose()


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_viewer_sees_flows_but_no_actions(panel):
    env, rt = panel
    c = client_for(rt)
    sign_in(c, "victor")
    r = c.get("/flows")
    assert r.status_code == 200
    assert "syspro-stock" in r.text and "syspro InvWarehouse" in r.text and "never" in r.text
    page = c.get("/flows/syspro-stock")
    assert page.status_code == 200 and 'id="dry-run"' not in page.text and "Never run." in page.text
    assert c.post("/flows/syspro-stock/dry-run", data={"csrf_token": csrf_of(page.text)}).status_code == 403
    assert c.get("/flows/nobody").status_code == 404


def test_operator_dry_runs_switches_on_runs_and_finds_a_record(panel):
    env, rt = panel
    c = client_for(rt)
    token = sign_in(c, "olga")
    refused = c.post("/flows/syspro-stock/switch", data={"csrf_token": token, "on": "1"})
    assert refused.status_code == 409 and "dry-run this version" in refused.text
    assert c.post("/flows/syspro-stock/dry-run", data={}).status_code == 403  # no CSRF token
    dry = c.post("/flows/syspro-stock/dry-run", data={"csrf_token": token})
    assert dry.status_code == 200 and "20 records pulled live, clean" in dry.text
    assert "ST0000000-FG" in dry.text and env.tasks(STOCK_IMPORT_ID) == 0
    on = c.post("/flows/syspro-stock/switch", data={"csrf_token": token, "on": "1"}, follow_redirects=False)
    assert on.status_code == 303
    assert "(by olga)" in c.get("/flows/syspro-stock").text

    env.anaplan.set_faults({"task_outcome": {"row_failures": 1, "count": 1}})
    assert c.post("/flows/syspro-stock/run", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    wait_for(lambda: env.runs("syspro-stock") and env.runs("syspro-stock")[-1].state == "done")
    page = c.get("/flows/syspro-stock")
    assert "#1" in page.text and "300" in page.text and "Row rejected by the simulator" in page.text
    assert "by olga" in page.text
    found = c.get("/flows/syspro-stock", params={"key": "ST0000010|"})
    assert "ST0000010|FG" in found.text and "ST0000011|FG" not in found.text
    rejected = c.get("/flows/syspro-stock", params={"failed": "1"})
    assert "ST0000000|FG" in rejected.text and "ST0000000|RM" not in rejected.text
    record_id = env.records("syspro-stock")[0].id
    detail = c.get(f"/flows/syspro-stock/records/{record_id}")
    assert detail.status_code == 200 and "QtyOnHand" in detail.text and "rejected" in detail.text

    replay = c.post("/flows/syspro-stock/runs/1/replay", data={"csrf_token": token}, follow_redirects=False)
    assert replay.status_code == 303
    wait_for(lambda: len(env.runs("syspro-stock")) == 2 and env.runs("syspro-stock")[-1].state == "done")
    assert len(env.imported(STOCK_IMPORT_ID)) == 300
    assert "replay" in c.get("/flows/syspro-stock").text


def test_drift_page_shows_differences_side_by_side_and_an_operator_decides(panel):
    from gateway.flows.drift import Finding, record

    env, rt = panel
    record(rt.engine, "partner", "acme-fasteners", [
        Finding("ACME01", "tax_id_differs", {"name": "Acme Fasteners Inc.", "tax_ids": ["34-1234567"]},
                {"code": "ACME01", "name": "Acme Fasteners Inc.", "status": "Active", "tax_id": "34-9999999"})])
    viewer = client_for(rt)
    sign_in(viewer, "victor")
    page = viewer.get("/drift")
    assert page.status_code == 200 and "34-1234567" in page.text and "34-9999999" in page.text
    assert 'id="check"' not in page.text
    c = client_for(rt)
    token = sign_in(c, "olga")
    no_reason = c.post("/drift/1/approve", data={"csrf_token": token, "reason": ""})
    assert no_reason.status_code == 409 and "say why" in no_reason.text
    assert c.post("/drift/1/approve", data={"reason": "x"}).status_code == 403  # no CSRF token
    done = c.post("/drift/1/approve", data={"csrf_token": token, "reason": "the partner uses its parent's id"},
                  follow_redirects=False)
    assert done.status_code == 303
    page = c.get("/drift")
    assert "No open differences." in page.text and "the partner uses its parent" in page.text and "olga" in page.text
