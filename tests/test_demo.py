"""``gateway demo`` run to settlement as a user runs it: a separate process, real HTTP, SQLite."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, select

from gateway.store.db import make_engine, sqlite_url
from gateway.store.models import Delivery, Document, Event, Interchange, User

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
GATEWAY = Path(sys.executable).with_name("gateway")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_settles_with_the_outcome_the_readme_promises(tmp_path):
    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.run(
        [str(GATEWAY), "demo", "--exit-when-settled", "--timeout", "90", "--data-dir", str(data),
         "--port", str(_free_port()), "--fixtures", str(ROOT / "fixtures/edi/demo"),
         "--partners", str(ROOT / "partners")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in out + proc.stderr

    # It told the user where the panel is and how to sign in, and showed progress.
    login = re.search(r"Panel: http://127\.0\.0\.1:(\d+)/\s+login: operator / (\S+)", out)
    assert login, out
    assert re.search(r"files 6/6 · documents: .*4 done", out)
    assert "Every document has come to rest" in out

    engine = make_engine(sqlite_url(data))
    with Session(engine) as s:
        docs = {d.invoice_number or d.po_number: d for d in s.exec(select(Document)).all()}
        went = {(x.document_id, x.destination): x for x in s.exec(select(Delivery)).all()}
        interchanges = s.exec(select(Interchange)).all()
        user = s.exec(select(User).where(User.username == "operator")).one()
        events = {d.id: s.exec(select(Event).where(Event.document_id == d.id).order_by(Event.id)).all()
                  for d in docs.values()}
    engine.dispose()
    from gateway.web.security import verify_password

    assert user.role == "operator" and verify_password(user.password_hash, login.group(2))
    assert {i.source for i in interchanges} == {"local:demo-drop", "sterling:van-mailbox"}

    # The good documents reached Plex and Anaplan (their records and Plex's answers are in the trail).
    for number, record in (("INV-10234", "ap_invoice"), ("EC-INV-5521", "ap_invoice"),
                           ("EC-7781", "purchase_order"), ("NW-4471", "sales_order")):
        doc = docs[number]
        assert doc.state == "done" and went[(doc.id, "plex")].reference.startswith(record + ":"), (
            number, doc.state, doc.error)
        post = next(e for e in events[doc.id] if e.stage == "plex" and e.outcome == "ok")
        assert json.loads(post.detail)["plex"]["disposition"] == "created"
        confirm = next(e for e in events[doc.id] if e.stage == "anaplan" and e.outcome == "ok")
        assert json.loads(confirm.detail)["anaplan"]["counts"]["failed"] == 0
    # The broken one failed with its reason; the unknown supplier waits for a person.
    broken = docs["NW-4480"]
    assert broken.state == "failed" and broken.stage == "translate"
    assert "PO102" in broken.error and "'TWELVE' is not a number" in broken.error
    globex = docs["77-5510"]
    assert globex.state == "needs_attention" and globex.stage == "match" and globex.error_code == "match.unmatched"
    assert len(docs) == 6
