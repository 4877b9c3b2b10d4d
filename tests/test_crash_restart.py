"""A gateway process killed with SIGKILL at random moments during intake and translation, restarted five times:
every file stored once, every document present once, none lost (SQLite and PostgreSQL).

Files arrive in a local drop folder while ``gateway run --no-web`` (pollers + workers) is running;
each round kills it at a random moment after it started, the next round restarts it. A last run
is let finish and stopped with SIGTERM; then the store is checked against what was dropped.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from gateway.store import Document, Event, Interchange, make_engine
from tests.pipeline_fixtures import PARTNERS, ROOT, x12_850

pytestmark = pytest.mark.slow

ROUNDS = 5
FILES_PER_ROUND = 12
GATEWAY = [sys.executable, "-m", "gateway.cli", "run", "--no-web"]


def _config(tmp_path: Path, url: str, drop: Path, archive: Path) -> Path:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\ndatabase_url = "{url}"\npartners_dir = "{PARTNERS}"\n'
        "log_json = true\n"
        "[workers]\ncount = 2\nbatch_size = 40\nidle_seconds = 0.05\nlease_seconds = 3\n"
        f'[[local]]\nname = "drop"\npath = "{drop}"\narchive_path = "{archive}"\ninterval_seconds = 0.3\n'
    )
    return cfg


class Feed:
    """The files the partners send: mostly good X12 850 interchanges, some with a broken set, some junk."""

    def __init__(self, drop: Path, rnd: random.Random) -> None:
        self.drop, self.rnd = drop, rnd
        self.files: dict[str, bytes] = {}  # name -> bytes
        self.sets: dict[str, int] = {}  # name -> transaction sets in it (0 for junk)
        self.broken: dict[str, int] = {}  # name -> sets expected to fail
        self.control = 5000

    def drop_files(self, n: int) -> None:
        for _ in range(n):
            self.control += 1
            c = self.control
            if self.rnd.random() < 0.08:
                name, data, sets, broken = f"junk-{c}.txt", f"not an interchange #{c}\n".encode(), 0, 0
            else:
                sets = self.rnd.randint(1, 60)
                bad = (self.rnd.randint(1, sets),) if self.rnd.random() < 0.25 else ()
                name, data, broken = f"po-{c}.x12", x12_850(c, [f"PO-{c}-{k}" for k in range(sets)], broken=bad), len(bad)
            part = self.drop / (name + ".part")
            part.write_bytes(data)  # written under a temporary name, then renamed: never taken half-written
            if self.rnd.random() < 0.5:
                old = time.time() - 30  # looks settled: taken on first sight
                os.utime(part, (old, old))
            os.rename(part, self.drop / name)
            self.files[name], self.sets[name], self.broken[name] = data, sets, broken


def _start(cfg: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen([*GATEWAY, "-c", str(cfg)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)


def _wait_started(proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if '"event": "started"' in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"gateway exited early: {log.read_text()[-2000:]}"
        time.sleep(0.05)
    raise AssertionError("gateway did not start")


def _counts(engine) -> tuple[int, int, int]:
    with Session(engine) as s:
        ichs = s.exec(select(func.count()).select_from(Interchange)).one()
        pending = s.exec(select(func.count()).select_from(Interchange).where(Interchange.state == "received")).one()
        docs = s.exec(select(func.count()).select_from(Document)).one()
    return ichs, pending, docs


def test_sigkill_during_intake_and_translation_loses_and_doubles_nothing(store_url, tmp_path):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    drop, archive = tmp_path / "drop", tmp_path / "archive"
    drop.mkdir()
    archive.mkdir()
    cfg = _config(tmp_path, store_url, drop, archive)
    feed = Feed(drop, rnd)
    engine = make_engine(store_url)
    kills = []
    for n in range(ROUNDS):
        feed.drop_files(FILES_PER_ROUND // 2)
        log = tmp_path / f"run-{n}.log"
        proc = _start(cfg, log)
        try:
            _wait_started(proc, log)
            before = _counts(engine)[0]
            feed.drop_files(FILES_PER_ROUND - FILES_PER_ROUND // 2)  # more arrive while it runs
            # Kill while it works: once intake has begun in this run (or a poll lease left by the
            # previous kill keeps it from polling for a while), at a random moment soon after.
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and _counts(engine)[0] == before:
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.0, 0.4))
        finally:
            proc.kill()  # SIGKILL: no clean-up of any kind
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        kills.append(_counts(engine))

    log = tmp_path / "final.log"
    proc = _start(cfg, log)
    try:
        _wait_started(proc, log)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ichs, pending, docs = _counts(engine)
            if not any(drop.iterdir()) and ichs == len(feed.files) and pending == 0:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    context = f"seed {seed}; (interchanges, unsplit, documents) at each kill: {kills}"
    print(context)
    assert proc.returncode == 0, context + "\n" + log.read_text()[-3000:]
    assert "Traceback" not in "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log")), context

    assert not any(drop.iterdir()), context  # every file taken from the drop ...
    archived = Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in archive.iterdir())
    expected = {hashlib.sha256(d).hexdigest(): name for name, d in feed.files.items()}
    assert set(archived) == set(expected), context  # ... and archived, none lost

    with Session(engine) as s:
        ichs = s.exec(select(Interchange)).all()
        docs = s.exec(select(Document)).all()
        split_events = Counter(s.exec(select(Event.interchange_id).where(
            Event.stage == "translate", Event.document_id.is_(None))).all())
        doc_events = Counter(s.exec(select(Event.document_id).where(
            Event.stage == "translate", Event.document_id.is_not(None))).all())
    # Every file stored exactly once: one interchange per file, by hash; no duplicates, none missing.
    by_hash = Counter(i.sha256 for i in ichs)
    assert by_hash == {h: 1 for h in expected}, context
    assert all(i.state != "duplicate" for i in ichs), context
    for i in ichs:
        name = expected[i.sha256]
        assert i.remote_name == name
        assert split_events[i.id] == 1, context  # split exactly once
        if feed.sets[name] == 0:
            assert i.state == "failed" and name in i.error, context
        else:
            assert i.state == "split" and i.document_count == feed.sets[name], context
    # Every document present exactly once, translated or failed with its reason.
    per_ich = Counter(d.interchange_id for d in docs)
    assert {expected[i.sha256]: per_ich[i.id] for i in ichs} == feed.sets | {
        n: 0 for n, c in feed.sets.items() if c == 0}, context
    assert len(docs) == sum(feed.sets.values()), context
    assert len({(d.interchange_id, d.position) for d in docs}) == len(docs)
    assert doc_events == {d.id: 1 for d in docs}, context
    failed = [d for d in docs if d.state == "failed"]
    assert all(d.state in ("translated", "failed") for d in docs), context
    assert all(d.error and d.stage == "translate" for d in failed), context
    assert len(failed) == sum(feed.broken.values()), context
    assert all(d.lease_owner is None for d in docs) and all(i.lease_owner is None for i in ichs), context
    engine.dispose()
