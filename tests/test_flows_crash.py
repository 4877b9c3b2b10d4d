"""A flow run killed with SIGKILL at each step, then run again: no record lost, none imported
twice, the watermark never ahead of what Anaplan confirmed."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.sandbox.flows import STOCK_IMPORT_ID, config_toml, stock_flow_text
from tests.flows_env import FlowEnv, start_env

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-c", "from gateway.cli import app; app()"]
ROWS = 1200


@pytest.fixture
def env(tmp_path):
    from gateway.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'data' / 'gateway.db'}"
    (tmp_path / "data").mkdir()
    upgrade(url)
    engine = make_engine(url)
    e = start_env(engine, tmp_path / "data", warehouse_rows=ROWS, page_size=100)
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "syspro-stock.yaml").write_text(stock_flow_text(poll_seconds=0.1, page_size=100))
    (tmp_path / "gateway.toml").write_text(config_toml(
        data_dir=str(tmp_path / "data"), flows_dir=str(flows), anaplan_url=e.anaplan_server.base_url,
        odata_url=e.syspro.odata_root(e.syspro_server.base_url), page_size=100, anaplan_timeout=3.0,
        lease_seconds=2.0))
    yield e, tmp_path / "gateway.toml"
    e.syspro_server.stop()
    e.anaplan_server.stop()
    engine.dispose()


def start_run(config: Path) -> subprocess.Popen:
    return subprocess.Popen([*GATEWAY, "flows", "run", "syspro-stock", "--once", "-c", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(proc: subprocess.Popen, env: FlowEnv, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = env.runs("syspro-stock")
        if runs and condition(runs[-1]):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the moment to kill it: {proc.stdout.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the run never reached the moment to kill it")


def run_to_end(config: Path, env: FlowEnv) -> str:
    from gateway import leases

    deadline = time.monotonic() + 30
    while leases.holder(env.engine, "flow:syspro-stock") is not None:  # the dead run's lease lapses
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc = subprocess.run([*GATEWAY, "flows", "run", "syspro-stock", "--once", "-c", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def assert_everything_once(env: FlowEnv) -> None:
    imported = env.imported(STOCK_IMPORT_ID)
    assert len(imported) == ROWS  # no record lost
    table = env.syspro.company.table("InvWarehouse")
    for i in (0, 1, ROWS // 2, ROWS - 1):
        row = table.row(i)
        assert imported[(f"{row['StockCode']}-{row['Warehouse']}",)]["On Hand"] == f"{row['QtyOnHand']:.2f}"
    assert env.tasks(STOCK_IMPORT_ID) == 1  # imported once
    mark = env.watermark("syspro-stock")
    assert mark is not None and int.from_bytes(base64.b64decode(mark), "big") == ROWS
    assert [r.state for r in env.runs("syspro-stock")][-1] == "done"


def test_killed_while_reading(env):
    e, config = env
    e.syspro.set_faults({"latency_s": {"GET /SYSPROOData/*/InvWarehouse": 0.15}})
    proc = start_run(config)
    kill_when(proc, e, lambda run: run.state == "reading" and run.seen >= 300)
    assert e.watermark("syspro-stock") is None and e.tasks(STOCK_IMPORT_ID) == 0
    e.syspro.set_faults({"latency_s": {}})
    out = run_to_end(config, e)
    assert "done" in out
    states = [r.state for r in e.runs("syspro-stock")]
    assert states == ["abandoned", "done"]
    assert_everything_once(e)


def test_killed_while_anaplan_imports(env):
    e, config = env
    e.anaplan.set_faults({"task_timing": {"queue_s": 0.0, "run_s": 3.0}})
    proc = start_run(config)
    kill_when(proc, e, lambda run: run.state == "importing" and run.task_id is not None)
    assert e.watermark("syspro-stock") is None  # Anaplan has not confirmed anything yet
    e.anaplan.set_faults({"task_timing": {"queue_s": 0.0, "run_s": 0.0}})
    run_to_end(config, e)
    states = [r.state for r in e.runs("syspro-stock")]
    assert states[0] == "done"  # the first run concluded from the task it had started, not imported again
    assert_everything_once(e)


def test_killed_while_asking_for_the_import(env):
    """The request to start the import was on its way (Anaplan held it: the process died before the
    answer). The next run waits until the request cannot arrive any more, finds no task Anaplan
    started, and sends the records with its own import: one import in all."""
    e, config = env
    e.anaplan.set_faults({"latency_ms": {"min_ms": 1500, "max_ms": 1500, "route": "POST */imports/*/tasks"}})
    proc = start_run(config)
    kill_when(proc, e, lambda run: run.state == "importing" and run.task_id is None)
    assert e.watermark("syspro-stock") is None
    e.anaplan.set_faults({"latency_ms": None})
    run_to_end(config, e)
    assert [r.state for r in e.runs("syspro-stock")] == ["abandoned", "done"]
    assert_everything_once(e)


def test_a_run_that_died_before_keeping_its_task_id_adopts_the_task_anaplan_started(env):
    """As if the process died between Anaplan starting the import and the task id being stored:
    the next run finds that task by its start time and concludes from it, importing nothing again."""
    from sqlalchemy import update

    from gateway.flows.tables import FlowRun, FlowState

    e, _ = env
    runner = e.runner(stock_flow_text(poll_seconds=0.05))
    first = runner.run()
    assert first.state == "done" and e.tasks(STOCK_IMPORT_ID) == 1
    with e.engine.begin() as conn:
        conn.execute(update(FlowRun.__table__).where(FlowRun.__table__.c.id == first.run_id)
                     .values(state="importing", task_id=None, finished_at=None))
        conn.execute(update(FlowState.__table__).values(watermark=None))
    again = e.runner(stock_flow_text(poll_seconds=0.05))
    again.sleep = lambda seconds: None  # no request can still be on its way in this test
    report = again.run()
    runs = e.runs("syspro-stock")
    assert runs[0].state == "done" and runs[0].task_id is not None  # adopted
    assert e.tasks(STOCK_IMPORT_ID) == 1
    assert report.seen == 0 and report.sent == 0  # the watermark came back with the adopted run
    assert_everything_once(e)
