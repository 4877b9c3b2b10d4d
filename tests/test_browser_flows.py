"""The flows pages in real headless Chromium: an operator dry-runs a flow, switches it on, runs it,
and finds a record by its source key."""

from __future__ import annotations

import threading

import pytest

from gateway.runtime import Runtime
from gateway.sandbox.flows import stock_flow_text
from tests.flows_env import start_env
from tests.test_browser import _by_id, _require_browser, _sign_in, _wait, chrome  # noqa: F401 - the fixture
from tests.test_web_support import add_user

pytestmark = [pytest.mark.browser, pytest.mark.slow]


class FlowsPanel:
    def __init__(self, url: str, env) -> None:
        self.url, self.env = url, env


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    _require_browser()
    from gateway.sandbox.server import serve_app
    from gateway.store.db import make_engine, upgrade
    from gateway.web import create_app

    tmp = tmp_path_factory.mktemp("flows-panel")
    url = f"sqlite:///{tmp / 'gateway.db'}"
    upgrade(url)
    engine = make_engine(url)
    env = start_env(engine, tmp, warehouse_rows=200, page_size=100)
    (tmp / "flows").mkdir()
    (tmp / "flows" / "syspro-stock.yaml").write_text(stock_flow_text(poll_seconds=0.05))
    rt = Runtime(settings=env.settings().model_copy(update={"flows_dir": tmp / "flows", "database_url": url}),
                 engine=engine)
    add_user(engine, "olga", "operator")
    server = serve_app(create_app(rt))
    yield FlowsPanel(server.base_url, env)
    server.stop()
    env.syspro_server.stop()
    env.anaplan_server.stop()
    engine.dispose()


def test_operator_dry_runs_switches_on_runs_and_finds_a_record(chrome, panel):  # noqa: F811
    _sign_in(chrome, panel, "olga")
    chrome.get(panel.url + "/flows")
    chrome.find_element("link text", "syspro-stock").click()
    _by_id(chrome, "dry-run").click()
    assert "20 records pulled live, clean" in _by_id(chrome, "dry").find_element("xpath", "..").text
    _by_id(chrome, "toggle").click()
    _wait(chrome, lambda d: d.find_element("id", "switch").text.startswith("on"))
    _by_id(chrome, "run-now").click()

    def run_done(driver) -> bool:  # the page does not follow the run by itself: look again
        if "done" in driver.find_element("id", "runs").text:
            return True
        threading.Event().wait(0.3)
        driver.refresh()
        return False

    _wait(chrome, run_done, timeout=30)
    search = _by_id(chrome, "record-search")
    search.find_element("name", "key").send_keys("ST0000007|")
    search.find_element("tag name", "button").click()
    _wait(chrome, lambda d: "key=" in d.current_url and "ST0000007|FG" in d.find_element("id", "records").text)
    assert "ST0000008|FG" not in _by_id(chrome, "records").text
    chrome.find_element("link text", "ST0000007|RM").click()
    _wait(chrome, lambda d: "QtyOnHand" in d.find_element("tag name", "pre").text)
