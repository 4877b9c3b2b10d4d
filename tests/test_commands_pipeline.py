"""The reprocess / interchanges commands and the long-running ones (worker, run) as a user runs them."""

from __future__ import annotations

import getpass
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from gateway.cli import app
from gateway.commands import pipeline as pipeline_commands
from gateway.integrations.base import Outcome
from gateway.pipeline.worker import Worker
from gateway.store import Document, Event, Interchange, make_engine, transaction, utcnow
from tests.pipeline_fixtures import PARTNERS, ROOT, make_runtime, pipeline, store_payload, x12_850

GATEWAY = [sys.executable, "-m", "gateway.cli"]


def _config(tmp_path: Path, url: str, extra: str = "") -> Path:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\ndatabase_url = "{url}"\npartners_dir = "{PARTNERS}"\n'
        f"[workers]\ncount = 2\nidle_seconds = 0.05\nlease_seconds = 30\n{extra}"
    )
    return cfg


@pytest.fixture
def setup(store_url, tmp_path):
    """Three Northwind POs failed at match, one broken at translate; a config file pointing at the store."""
    rt = make_runtime(store_url, tmp_path)
    store_payload(rt.engine, x12_850(700, ["PO-1", "PO-2", "PO-3", "BAD-4"], broken=(4,)), "nw.x12")
    Worker(rt, pipeline=pipeline(match=lambda d, _: Outcome.fail("no supplier"))).run_until_idle()
    with Session(rt.engine) as s:
        ids = list(s.exec(select(Document.id).order_by(Document.id)).all())
    yield rt, _config(tmp_path, store_url), ids
    rt.engine.dispose()


def _state(engine):
    with Session(engine) as s:
        docs = [(d.id, d.state, d.stage, d.error, d.lease_owner) for d in s.exec(select(Document).order_by(Document.id))]
        return docs, len(s.exec(select(Event)).all())


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_reprocess_by_id_records_the_actor_and_reason(setup):
    rt, cfg, ids = setup
    r = _invoke("reprocess", str(ids[0]), "--reason", "supplier created", "--actor", "alice", "-c", str(cfg))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "1 document(s) sent back for reprocessing from the stage each is at or failed at (actor alice)"
    with Session(rt.engine) as s:
        d = s.get(Document, ids[0])
        ev = s.exec(select(Event).where(Event.document_id == ids[0]).order_by(Event.id.desc())).first()
    assert (d.state, d.stage) == ("translated", "match")
    assert (ev.outcome, ev.actor, json.loads(ev.detail)["reason"]) == ("reprocess", "alice", "supplier created")


def test_reprocess_defaults_the_actor_to_the_os_user(setup):
    rt, cfg, ids = setup
    r = _invoke("reprocess", str(ids[1]), "--reason", "r", "-c", str(cfg))
    assert r.exit_code == 0, r.output
    with Session(rt.engine) as s:
        ev = s.exec(select(Event).where(Event.document_id == ids[1]).order_by(Event.id.desc())).first()
    assert ev.actor == getpass.getuser()


def test_reprocess_by_filter_needs_yes_then_reports_skips(setup):
    rt, cfg, ids = setup
    before = _state(rt.engine)
    r = _invoke("reprocess", "--partner", "northwind-retail", "--reason", "all", "-c", str(cfg))
    assert r.exit_code == 2
    assert r.stderr.strip() == ("gateway reprocess: 4 document(s) match (partner northwind-retail); "
                                "add --yes to reprocess them")
    assert _state(rt.engine) == before
    r = _invoke("reprocess", "--partner", "northwind-retail", "--from-stage", "match", "--reason", "all", "--yes",
                "-c", str(cfg))
    assert r.exit_code == 1  # the broken one cannot start at match: skipped, with why
    assert r.stdout.startswith("3 document(s) sent back for reprocessing from match")
    assert r.stderr.strip() == (f"skipped document {ids[3]}: document {ids[3]} has not got past translate; it cannot "
                                "skip ahead to match (reprocess it from translate or earlier)")


def test_reprocess_large_selection_shows_progress(setup, monkeypatch):
    rt, cfg, ids = setup
    monkeypatch.setattr(pipeline_commands, "_PROGRESS_FROM", 2)
    r = _invoke("reprocess", "--state", "failed", "--stage", "match", "--reason", "r", "--yes", "-c", str(cfg))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("3 document(s) sent back")
    assert _state(rt.engine)[0][0][1] == "translated"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1"], "gateway reprocess: --reason is required (say why, for the audit trail)"),
        (["1", "--reason", "   "], "gateway reprocess: --reason is required (say why, for the audit trail)"),
        (["abc", "--reason", "r"], "gateway reprocess: 'abc' is not a document id (a whole number)"),
        (["999999", "--reason", "r"], "gateway reprocess: no document with id 999999"),
        (["--reason", "r"], "gateway reprocess: name the documents: ids, or at least one of --partner --kind "
                            "--state --stage --since --until"),
        (["--state", "broken", "--reason", "r", "--yes"], "gateway reprocess: unknown state 'broken'; choose from "
         "received, translated, delivering, done, failed, needs_attention, duplicate, ignored"),
        (["--kind", "asn", "--reason", "r", "--yes"], "gateway reprocess: unknown kind 'asn'; choose from "
                                                      "purchase_order, invoice"),
        (["--since", "last week", "--reason", "r"], "gateway reprocess: 'last week' is not a date (YYYY-MM-DD) or "
                                                    "date and time (YYYY-MM-DDTHH:MM)"),
        (["--since", "2026-02-01", "--until", "2026-01-01", "--reason", "r"], "gateway reprocess: the range is "
         "reversed: since 2026-02-01T00:00:00+00:00 is after until 2026-01-01T23:59:59.999999+00:00"),
        (["1", "--from-stage", "polish", "--reason", "r"], "gateway reprocess: unknown stage 'polish'; choose from "
                                                           "translate, match, plex, anaplan"),
        (["--partner", "nobody", "--reason", "r", "--yes"], "gateway reprocess: no document matches (partner nobody)"),
    ],
)
def test_reprocess_bad_input_is_one_line_and_changes_nothing(setup, args, message):
    rt, cfg, ids = setup
    before = _state(rt.engine)
    r = _invoke("reprocess", *args, "-c", str(cfg))
    assert r.exit_code in (1, 2)
    assert r.stderr.strip() == message
    assert "Traceback" not in r.output
    assert _state(rt.engine) == before


def test_reprocess_refuses_a_document_in_flight(setup):
    rt, cfg, ids = setup
    with transaction(rt.engine) as s:
        d = s.get(Document, ids[0])
        d.lease_owner, d.lease_until = "worker@elsewhere", utcnow().replace(year=2099)
    before = _state(rt.engine)
    r = _invoke("reprocess", str(ids[0]), str(ids[1]), "--reason", "r", "--yes", "-c", str(cfg))
    assert r.exit_code == 2
    assert r.stderr.strip() == (f"gateway reprocess: document {ids[0]} is being worked on by worker@elsewhere; "
                                "try again shortly; nothing was changed")
    assert _state(rt.engine) == before


def test_interchanges_force_and_its_refusals(setup):
    rt, cfg, _ = setup
    dup = store_payload(rt.engine, x12_850(700, ["PO-1"]), "again.x12")
    Worker(rt, pipeline=pipeline()).split_interchanges()
    r = _invoke("interchanges", "force", str(dup), "-c", str(cfg))
    assert (r.exit_code, r.stderr.strip()) == (2, "gateway interchanges force: --reason is required (say why, for "
                                                  "the audit trail)")
    r = _invoke("interchanges", "force", "1", "--reason", "r", "-c", str(cfg))
    assert (r.exit_code, r.stderr.strip()) == (2, "gateway interchanges force: interchange 1 is not a duplicate (it "
                                                  "is split); only a duplicate can be forced through")
    r = _invoke("interchanges", "force", "5555", "--reason", "r", "-c", str(cfg))
    assert (r.exit_code, r.stderr.strip()) == (2, "gateway interchanges force: no interchange with id 5555")
    r = _invoke("interchanges", "force", str(dup), "--reason", "wanted twice", "--actor", "ops", "-c", str(cfg))
    assert (r.exit_code, r.stdout.strip()) == (0, f"interchange {dup} forced through")
    with Session(rt.engine) as s:
        assert (s.get(Interchange, dup).state, s.get(Interchange, dup).forced) == ("received", True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_gateway_worker_process_splits_and_stops_cleanly_on_sigterm(store_url, tmp_path):
    cfg = _config(tmp_path, store_url)
    engine = make_engine(store_url)
    ich = store_payload(engine, x12_850(710, ["PO-1", "PO-2"]), "w.x12")
    proc = subprocess.Popen([*GATEWAY, "worker", "--threads", "2", "-c", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def split():
            with Session(engine) as s:
                return s.get(Interchange, ich).state == "split"

        _wait(split, what="the split")
        proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, errs
    assert "stopped" in errs and "Traceback" not in errs
    with Session(engine) as s:
        docs = s.exec(select(Document)).all()
        assert len(docs) == 2 and all(d.lease_owner is None for d in docs)
    engine.dispose()


@pytest.mark.slow
def test_gateway_run_serves_the_panel_and_stops_on_sigint(tmp_path):
    pytest.importorskip("gateway.web", reason="the panel is not in this build")
    import httpx

    port = _free_port()
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    cfg = _config(tmp_path, url, f'[web]\nhost = "127.0.0.1"\nport = {port}\n')
    env = {**os.environ, "GATEWAY_LOG_JSON": "true"}
    proc = subprocess.Popen([*GATEWAY, "run", "-c", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        def up():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code
            except httpx.TransportError:
                return None

        status = _wait(up, what="the panel")
        assert status in (200, 302, 303, 307, 401)
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, errs
    events = [json.loads(line)["event"] for line in errs.splitlines() if line.startswith("{")]
    assert "started" in events and "stopped" in events


def test_logs_never_carry_secrets():
    from gateway.logging import configure_logging, get_logger

    buf = io.StringIO()
    configure_logging(json=True, stream=buf)
    log = get_logger("t")
    log.info("connecting", password="hunter2", api_key="k-123", headers={"Authorization": "Basic dXNlcjpwYXNz"},
             url="postgresql://gw:s3cret@db/gw", note="Bearer abcdefghijklmnop")
    try:
        raise RuntimeError("login failed for https://user:pa55word@sterling.example/B2BAPIs")
    except RuntimeError:
        log.exception("failed")
    text = buf.getvalue()
    for secret in ("hunter2", "k-123", "dXNlcjpwYXNz", "s3cret", "abcdefghijklmnop", "pa55word"):
        assert secret not in text
    first = json.loads(text.splitlines()[0])
    assert first["password"] == "***" and first["url"] == "postgresql://gw:***@db/gw"
    assert first["headers"] == {"Authorization": "***"}
    configure_logging(json=False, stream=io.StringIO())


def test_gateway_poll_once_takes_a_dropped_file_then_a_worker_splits_it(tmp_path):
    drop, archive = tmp_path / "drop", tmp_path / "archive"
    drop.mkdir()
    data = x12_850(720, ["PO-1", "PO-2"])
    (drop / "po.x12").write_bytes(data)
    old = time.time() - 60
    os.utime(drop / "po.x12", (old, old))
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    cfg = _config(tmp_path, url, f'[[local]]\nname = "drop"\npath = "{drop}"\narchive_path = "{archive}"\n')
    r = _invoke("poll", "--once", "-c", str(cfg))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "local:drop: 1 taken"
    assert not (drop / "po.x12").exists() and [p.read_bytes() for p in archive.iterdir()] == [data]
    engine = make_engine(url)
    rt = make_runtime(url, tmp_path)
    Worker(rt, pipeline=pipeline()).split_interchanges()
    with Session(engine) as s:
        assert [d.po_number for d in s.exec(select(Document).order_by(Document.id))] == ["PO-1", "PO-2"]
    engine.dispose()
    rt.engine.dispose()


@pytest.mark.slow
def test_gateway_web_exits_non_zero_when_its_port_is_taken(tmp_path):
    pytest.importorskip("gateway.web", reason="the panel is not in this build")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = _config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", f'[web]\nhost = "127.0.0.1"\nport = {port}\n')
        proc = subprocess.run([*GATEWAY, "web", "-c", str(cfg)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 1
    assert "part_stopped_unexpectedly" in proc.stderr


def test_gateway_poll_without_sources_says_so(tmp_path):
    cfg = _config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}")
    r = _invoke("poll", "-c", str(cfg))
    assert r.exit_code == 2
    assert r.stderr.strip() == ("gateway poll: no sources configured (add [[sterling]], [[sftp]] or [[local]] to "
                                "the settings)")
