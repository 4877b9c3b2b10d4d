"""``gateway alerts test|scan|list`` as a user runs them, and the scanner hosted by ``gateway poll``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.alert_receivers import SECRET_KEY, TOKEN_PATH, WebhookReceiver, cli_runner
from tests.pipeline_fixtures import ROOT

GATEWAY = [sys.executable, "-m", "gateway.cli"]


def _config(tmp_path: Path, extra: str) -> Path:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\ndatabase_url = "sqlite:///{tmp_path / "gw.db"}"\n{extra}')
    return cfg


ALERTS = """
[alerts]
interval_seconds = 1
outage_after_minutes = 0.02
panel_url = "https://edi.example.com"
[[alerts.webhooks]]
name = "ops"
url = "secret:ops-hook"
format = "slack"
"""


@pytest.fixture
def cli(monkeypatch):
    return cli_runner(monkeypatch)


def test_alerts_test_command(cli, tmp_path):
    cfg = _config(tmp_path, ALERTS)
    with WebhookReceiver() as hook:
        r = cli("secrets", "set", "ops-hook", "--stdin", "-c", str(cfg), input=hook.url + "\n")
        assert r.exit_code == 0, r.output
        r = cli("alerts", "test", "-c", str(cfg), "--actor", "olga")
        assert r.exit_code == 0, r.output
        assert r.output.strip() == "ops: sent"
        (body,) = hook.wait_for(1)
        assert body["text"].startswith("*Test alert from the EDI gateway*") and "Sent by olga" in body["text"]
        assert "<https://edi.example.com/sources|Open in the panel>" in body["text"]
        hook.status = 404
        r = cli("alerts", "test", "-c", str(cfg))
        assert r.exit_code == 1 and "ops: webhook ops: HTTP 404" in r.output
        assert "SeCrEtToKeN42" not in r.output
        r = cli("alerts", "list", "-c", str(cfg))
        assert r.exit_code == 0
        lines = r.output.splitlines()
        assert len(lines) == 2 and "failed" in lines[0] and "sent" in lines[1] and "Test alert sent by olga" in lines[1]
    (tmp_path / "bare").mkdir()
    r = cli("alerts", "test", "-c", str(_config(tmp_path / "bare", "")))
    assert r.exit_code == 2 and "no [alerts] section" in r.output


def test_alerts_scan_command_says_what_it_did(cli, tmp_path):
    cfg = _config(tmp_path, ALERTS + '\n[[local]]\nname = "drop"\npath = "' + str(tmp_path / "missing") + '"\n')
    with WebhookReceiver() as hook:
        assert cli("secrets", "set", "ops-hook", "--stdin", "-c", str(cfg), input=hook.url + "\n").exit_code == 0
        r = cli("alerts", "scan", "-c", str(cfg))
        assert r.exit_code == 0, r.output
        assert r.output.strip() == "0 noticed, 0 sent, 0 summed up (hourly limit), 0 not sent"
        assert hook.bodies() == []


@pytest.mark.slow
def test_gateway_poll_hosts_the_scanner(cli, tmp_path):
    """A source that cannot be read: `gateway poll` notices and sends one outage alert, never the URL."""
    folder = tmp_path / "missing"
    cfg = _config(tmp_path, ALERTS + f'\n[[local]]\nname = "drop"\npath = "{folder}"\ninterval_seconds = 0.5\n')
    with WebhookReceiver() as hook:
        assert cli("secrets", "set", "ops-hook", "--stdin", "-c", str(cfg), input=hook.url + "\n").exit_code == 0
        env = {**os.environ, "GATEWAY_LOG_JSON": "true", "GATEWAY_SECRET_KEY": SECRET_KEY}
        proc = subprocess.Popen([*GATEWAY, "poll", "-c", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            (body,) = hook.wait_for(1, timeout=60)
            assert body["text"].startswith("*Source local:drop has failed for ")
            assert f"last error: local folder {folder}" in body["text"]
            folder.mkdir()  # the folder is back: the source recovers, and says so
            back = hook.wait_for(2, timeout=60)[1]
            assert back["text"].startswith("*Source local:drop works again*")
            proc.send_signal(signal.SIGTERM)
            out, errs = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, errs
    assert TOKEN_PATH not in errs and "SeCrEtToKeN42" not in out + errs
    events = [json.loads(line)["event"] for line in errs.splitlines() if line.startswith("{")]
    assert "started" in events and "stopped" in events
    assert len(hook.bodies()) == 2


def test_panel_sources_page_sends_a_test_alert(tmp_path):
    """The button on the sources page: operators only, CSRF-checked; each channel's answer is shown."""
    from gateway.alerts.settings import AlertSettings
    from gateway.store.db import upgrade
    from tests.test_web_support import add_user, client_for, new_runtime, sign_in

    url = f"sqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    rt = new_runtime(url, tmp_path)
    add_user(rt.engine, "olga", "operator", password="a long password")
    add_user(rt.engine, "victor", "viewer", password="a long password")
    with WebhookReceiver() as hook:
        rt.settings = rt.settings.model_copy(update={"alerts": AlertSettings(
            webhooks=[{"name": "ops", "url": hook.url, "format": "json"}])})
        with client_for(rt) as client:
            token = sign_in(client, "olga", "a long password")
            page = client.get("/sources").text
            assert 'id="alerts-test"' in page and "ops — webhook (json)" in page and hook.url not in page
            assert client.post("/alerts/test", data={}, follow_redirects=False).status_code == 403  # no CSRF token
            assert hook.bodies() == []
            r = client.post("/alerts/test", data={"csrf_token": token}, follow_redirects=True)
            assert r.status_code == 200 and "Test alert, ops: sent" in r.text
            assert hook.wait_for(1)[0]["lines"][1].startswith("Sent by olga")
            assert "Test alert sent by olga" in client.get("/sources").text
        with client_for(rt) as client:
            token = sign_in(client, "victor", "a long password")
            assert 'id="alerts-test"' not in client.get("/sources").text
            assert client.post("/alerts/test", data={"csrf_token": token}).status_code == 403
    assert len(hook.bodies()) == 1
