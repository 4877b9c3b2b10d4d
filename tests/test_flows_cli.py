"""``gateway flows`` against the simulators: check, dry run, switch on, run, list, replay, --since."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.sandbox.flows import config_toml, stock_flow_text
from tests.flows_env import start_env

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-c", "from gateway.cli import app; app()"]


def gateway(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GATEWAY, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def setup(tmp_path):
    from gateway.store.db import make_engine, upgrade

    data = tmp_path / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'gateway.db'}"
    upgrade(url)
    engine = make_engine(url)
    e = start_env(engine, data, warehouse_rows=400, page_size=100)
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "syspro-stock.yaml").write_text(stock_flow_text(poll_seconds=0.05))
    config = tmp_path / "gateway.toml"
    config.write_text(config_toml(data_dir=str(data), flows_dir=str(flows), anaplan_url=e.anaplan_server.base_url,
                                  odata_url=e.syspro.odata_root(e.syspro_server.base_url), page_size=100,
                                  lease_seconds=5))
    yield e, config, flows
    e.syspro_server.stop()
    e.anaplan_server.stop()
    engine.dispose()


def test_check_names_the_problem_and_connect_logs_on(setup, tmp_path):
    e, config, flows = setup
    ok = gateway("flows", "check", str(flows), "-c", str(config), "--connect")
    assert ok.returncode == 0, ok.stderr
    assert "syspro-stock.yaml: syspro-stock: syspro InvWarehouse" in ok.stdout
    assert "operator INTEG01 accepted" in ok.stdout
    (flows / "broken.yaml").write_text("name: broken\nsource: {system: sap}\n")
    bad = gateway("flows", "check", str(flows))
    assert bad.returncode == 1
    assert "broken.yaml:2:" in bad.stdout and "source.system: 'sap' is not one of" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


def test_dry_run_then_switch_on_then_run_and_list(setup):
    e, config, _ = setup
    refused = gateway("flows", "on", "syspro-stock", "-c", str(config))
    assert refused.returncode == 2 and "dry-run this version" in refused.stderr
    dry = gateway("flows", "run", "syspro-stock", "--dry-run", "--sample", "3", "-c", str(config))
    assert dry.returncode == 0, dry.stderr
    assert "Item | Stock Code | Warehouse" in dry.stdout
    assert "ST0000000|FG: ST0000000-FG | ST0000000 | Finished Goods" in dry.stdout
    assert "dry run clean: 3 records" in dry.stdout
    assert e.tasks("112000000010") == 0
    assert gateway("flows", "on", "syspro-stock", "-c", str(config)).returncode == 0

    run = gateway("flows", "run", "syspro-stock", "--once", "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert "run 1 done: 400 seen, 400 changed, 400 sent, 0 failed" in run.stdout
    listed = gateway("flows", "list", "-c", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "syspro-stock: syspro InvWarehouse -> Anaplan import 112000000010, insert, every 15 min, on" in listed.stdout
    assert "last run #1 done" in listed.stdout and "watermark AAAAAAAAAZA=" in listed.stdout  # rowversion 400


def test_since_reloads_from_a_rowversion_and_a_bad_since_is_refused(setup):
    e, config, _ = setup
    assert gateway("flows", "run", "syspro-stock", "--once", "-c", str(config)).returncode == 0
    again = gateway("flows", "run", "syspro-stock", "--once", "--since", "390", "-c", str(config))
    assert again.returncode == 0, again.stderr
    assert "10 seen, 0 changed, 0 sent" in again.stdout  # rowversions 391..400 read again, unchanged
    bad = gateway("flows", "run", "syspro-stock", "--once", "--since", "2025-01-01", "-c", str(config))
    assert bad.returncode == 2 and "reads by rowversion" in bad.stderr


def test_replay_of_a_failed_run(setup):
    e, config, _ = setup
    e.anaplan.set_faults({"task_outcome": {"failed": "importFailedGeneralError", "count": 1}})
    failed = gateway("flows", "run", "syspro-stock", "--once", "-c", str(config))
    assert failed.returncode == 1 and "run 1 failed" in failed.stdout
    replay = gateway("flows", "replay", "syspro-stock", "1", "-c", str(config), "--actor", "alice")
    assert replay.returncode == 0, replay.stderr + replay.stdout
    assert "400 sent" in replay.stdout
    assert len(e.imported("112000000010")) == 400
