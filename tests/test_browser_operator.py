"""The operator's day in real headless Chromium: the work queue, the outage banner, held files, local times,
phone width. The app is served by uvicorn on 127.0.0.1 with the real worker beside it.

Screenshots of the pages are written to ``$GATEWAY_SHOTS`` (a folder outside the repository) when it is set.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from gateway.store import SourceStatus, transaction, utcnow
from gateway.store.db import upgrade
from tests.test_browser import CHROMEDRIVER, CHROMIUM, _by_id, _require_browser, _sign_in, _text, _wait
from tests.test_web_support import DEMO, FakeDelivery, add_user, ingest, new_runtime, x12_850

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = os.environ.get("GATEWAY_SHOTS")
TIMEZONE = "America/Chicago"  # the viewer's zone: never the server's UTC


def shoot(driver, name: str, *, full: bool = True) -> None:
    """A PNG of the page (its whole height) into $GATEWAY_SHOTS, when set."""
    if not SHOTS:
        return
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    width = driver.execute_script("return window.innerWidth")
    size = driver.get_window_size()
    if full:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(max(height + 120, 600), 6000))
        time.sleep(0.2)
    driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))
    driver.set_window_size(size["width"], size["height"])
    assert width


class Panel:
    def __init__(self, url, rt, delivery, ids):
        self.url, self.rt, self.delivery, self.ids = url, rt, delivery, ids


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    _require_browser()
    import uvicorn

    from gateway.integrations.local.settings import LocalSettings
    from gateway.web import create_app

    tmp = tmp_path_factory.mktemp("operator")
    url = f"sqlite:///{tmp / 'gateway.db'}"
    upgrade(url)
    rt = new_runtime(url, tmp)
    rt.settings = rt.settings.model_copy(update={"local": [LocalSettings(name="drop", path=tmp)]})
    add_user(rt.engine, "olga", "operator")
    delivery = FakeDelivery()
    delivery.attention = {"ATT-7"}
    ids = {
        "done": ingest(rt, (DEMO / "northwind-retail-850-NW-4471.x12").read_bytes(), "NW-4471.x12", delivery)[0],
        "broken": ingest(rt, (DEMO / "northwind-retail-850-NW-4480-broken.x12").read_bytes(), "NW-4480.x12")[0],
        "waiting": ingest(rt, x12_850(7107, ["ATT-7"]), "ATT-7.x12", delivery)[0],
    }
    with transaction(rt.engine) as s:
        s.add(SourceStatus(source="local:drop", last_poll_at=utcnow(), last_success_at=utcnow()))

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(rt), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield Panel(f"http://127.0.0.1:{port}", rt, delivery, ids)
    server.should_exit = True
    thread.join(10)
    sock.close()
    rt.engine.dispose()


@pytest.fixture(scope="module")
def chrome(panel):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": TIMEZONE})
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def browser(chrome, panel):
    chrome.set_window_size(1400, 1000)
    chrome.get(panel.url + "/login")
    chrome.delete_all_cookies()
    _sign_in(chrome, panel, "olga")
    return chrome


def _count(driver, card: str) -> int:
    return int(driver.find_element("css selector", f"#{card} .n").text.replace(",", ""))


def test_the_overview_is_a_work_queue_that_refreshes_itself(browser, panel):
    browser.get(panel.url + "/?refresh=2")
    assert _count(browser, "q-waiting") == 1 and _count(browser, "q-failed") == 1
    shoot(browser, "overview")
    rows = browser.find_elements("css selector", "#problems tr.problem")
    assert {r.get_attribute("data-kind") for r in rows} == {"failed", "waiting"}
    browser.execute_script("window.notReloaded = true;")
    # A new failure arrives while the page is open: it shows up without anyone reloading.
    new = ingest(panel.rt, x12_850(7108, ["BRK-8"], broken=(1,)), "BRK-8.x12")[0]
    _wait(browser, lambda d: _count(d, "q-failed") == 2, timeout=20)
    assert browser.execute_script("return window.notReloaded === true")
    first = browser.find_element("css selector", "#problems tr.problem")
    assert first.get_attribute("data-id") == str(new) and "TWELVE" in first.text
    first.find_element("link text", "Look").click()
    _wait(browser, lambda d: d.current_url.endswith(f"/documents/{new}"))


def test_times_show_in_the_viewers_zone_with_utc_on_hover(browser, panel):
    browser.get(panel.url + f"/documents/{panel.ids['done']}")
    t = next(t for t in browser.find_elements("css selector", "time[datetime]") if "ago" not in t.text)
    iso, shown, hover = t.get_attribute("datetime"), t.text, t.get_attribute("title")
    assert hover.endswith(" UTC") and not shown.endswith("UTC")
    from datetime import datetime
    from zoneinfo import ZoneInfo

    local = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(TIMEZONE))
    assert shown.startswith(local.strftime("%Y-%m-%d %H:%M")), (shown, iso)


def test_a_failing_source_shows_a_banner_on_every_page(browser, panel):
    with transaction(panel.rt.engine) as s:
        row = s.get(SourceStatus, "local:drop")
        row.last_error, row.last_error_at = "/srv/drop: Permission denied", utcnow()
    try:
        for path in ("/documents", f"/documents/{panel.ids['broken']}", "/partners"):
            # The banner's data is cached for a few seconds per panel process: look again until it shows.
            banner = _wait(browser, lambda d: d.get(panel.url + path) or d.find_element("id", "outage"), timeout=15)
            assert "Local folder drop is failing" in banner.text and "Permission denied" in banner.text
            assert "What to do" in banner.text
    finally:
        with transaction(panel.rt.engine) as s:
            row = s.get(SourceStatus, "local:drop")
            row.last_success_at = utcnow()
    browser.get(panel.url + "/?refresh=2")
    _wait(browser, lambda d: not d.find_elements("id", "outage"), timeout=20)


def test_pages_are_usable_at_phone_width(browser, panel):
    browser.set_window_size(390, 844)
    for path, name in (("/", "overview-phone"), ("/documents", "documents-phone"),
                       (f"/documents/{panel.ids['broken']}", "document-phone")):
        browser.get(panel.url + path)
        _by_id(browser, "whoami")
        # Nothing wider than the screen: tables scroll inside their own box, the navigation wraps.
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390, path
        for link in browser.find_elements("css selector", ".top nav a"):
            assert link.is_displayed() and link.rect["x"] + link.rect["width"] <= 390, (path, link.text)
        shoot(browser, name)
    assert "failed" in _text(browser, "doc-state")


def test_acknowledgments_are_listed_filtered_and_downloadable(browser, panel):
    browser.get(panel.url + "/acknowledgments")
    rows = browser.find_elements("css selector", "#acks tr.ack")
    assert {r.get_attribute("data-status") for r in rows} >= {"accepted", "rejected"}
    shoot(browser, "acknowledgments")
    from selenium.webdriver.support.ui import Select

    Select(_by_id(browser, "a-status")).select_by_visible_text("rejected")
    _by_id(browser, "a-search").click()
    _wait(browser, lambda d: "status=rejected" in d.current_url)
    rows = browser.find_elements("css selector", "#acks tr.ack")
    assert rows and {r.get_attribute("data-status") for r in rows} == {"rejected"}
    assert "rejects 850" in rows[0].text
    link = rows[0].find_element("link text", "Download")
    assert link.get_attribute("href").endswith(f"/acknowledgments/{rows[0].get_attribute('data-interchange')}")
