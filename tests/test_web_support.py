"""Helpers for the panel's tests (API, pages, browser): a runtime, users, documents driven by the real worker.

Only matching and the destinations are stand-ins (:class:`FakeDelivery`): small functions returning
outcomes, stored by the real :class:`gateway.pipeline.worker.Worker` through the state machine,
with a switch to make Plex "fail" and "recover".
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from gateway.integrations.base import Outcome
from gateway.pipeline.worker import Worker
from gateway.store import ApiToken, Document, Event, User, transaction, utcnow
from gateway.web import create_app
from gateway.web.security import hash_password, new_api_token, token_hash
from tests.pipeline_fixtures import FakeDestination, make_runtime, pipeline, store_payload, x12_850

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "edi" / "demo"
PASSWORD = "correct horse battery"
_HASH = hash_password(PASSWORD)  # argon2 is slow on purpose: hash once for every test user

GOOD_MAPPING = """\
id: zenith-tools
name: Zenith Tools Ltd
identifiers:
  x12:
    - qualifier: ZZ
      id: ZENITHTOOLS
documents: [purchase_order]
versions: ["004010"]
mapping:
  translations:
    uom: {CA: CS}
"""
BAD_MAPPING = GOOD_MAPPING.replace("  translations:", "  translatons:")  # a typo at mapping.translatons, line 10


def zenith_sample(po: str = "ZT-1001") -> str:
    """An 850 from Zenith Tools (ISA ZZ:ZENITHTOOLS): only the mapping above identifies it."""
    text = x12_850(4242, [po], sender="ZENITHTOOLS").decode()
    return text.replace("*12*ZENITHTOOLS    *", "*ZZ*ZENITHTOOLS    *").replace("GS*PO*NWRETAIL*", "GS*PO*ZENITH*")


__all__ = ["BAD_MAPPING", "GOOD_MAPPING", "zenith_sample", "DEMO", "PASSWORD", "FakeDelivery", "add_token", "add_user", "csrf_of", "docs_where", "events_of",
           "ingest", "new_runtime", "sign_in", "x12_850"]


def new_runtime(url: str, tmp_path: Path):
    return make_runtime(url, tmp_path)


def add_user(engine, username: str, role: str = "operator", *, password: str | None = None) -> int:
    with transaction(engine) as s:
        u = User(username=username, password_hash=hash_password(password) if password else _HASH, role=role)
        s.add(u)
        s.flush()
        return u.id


def add_token(engine, username: str, name: str = "test") -> str:
    token = new_api_token()
    with transaction(engine) as s:
        u = s.exec(select(User).where(User.username == username)).one()
        s.add(ApiToken(user_id=u.id, name=name, token_hash=token_hash(token)))
    return token


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    page = client.get("/login")
    r = client.post("/login", data={"username": username, "password": password, "csrf_token": csrf_of(page.text),
                                    "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/").text)


class FakeDelivery:
    """Matching, Plex and Anaplan as tiny functions; ``plex_fault`` makes posting fail."""

    def __init__(self):
        self.plex_fault: str | None = None
        self.attention: set[str] = set()  # PO numbers whose supplier a person must choose

    def match(self, doc, rt):
        if doc.po_number in self.attention and not doc.supplier_code:
            return Outcome.attention("several Plex suppliers match 'NORTHWIND RETAIL GROUP'; choose one",
                                     code="match.ambiguous",
                                     candidates=json.dumps([{"code": "NWR01", "name": "Northwind Retail", "score": 91},
                                                            {"code": "NWR02", "name": "Northwind Retail Grp", "score": 90}]))
        return Outcome.ok({"rule": "partner"}, supplier_code=doc.supplier_code or "NWR01")

    def post(self, item):
        if self.plex_fault:
            return Outcome.fail(self.plex_fault, code="plex.rejected",
                                detail={"plex": {"status": 422, "body": {"message": self.plex_fault}}})
        return Outcome.ok({"plex": {"status": 201, "id": f"SO-{item.document_id}", "disposition": "created"}},
                          reference=f"SO-{item.document_id}")

    def forward(self, item):
        return Outcome.ok({"anaplan": {"batch": 1, "rows": 1, "task": "T1", "result": "success", "failures": 0}},
                          reference="batch 1, task T1")

    def worker(self, rt) -> Worker:
        return Worker(rt, pipeline=pipeline(match=self.match, destinations=[
            FakeDestination("plex", self.post), FakeDestination("anaplan", self.forward)]), name="test-worker")


def ingest(rt, data: bytes, name: str = "in.x12", delivery: FakeDelivery | None = None) -> list[int]:
    """Store an interchange and run the real worker on it (translation only, or with fake delivery)."""
    ich = store_payload(rt.engine, data, name)
    if delivery:
        delivery.worker(rt).run_until_idle()
    else:
        Worker(rt, pipeline=pipeline(), name="test-worker").split_interchanges()
    with Session(rt.engine) as s:
        return list(s.exec(select(Document.id).where(Document.interchange_id == ich).order_by(Document.position)))


def docs_where(engine, **eq) -> list[Document]:
    with Session(engine) as s:
        q = select(Document)
        for k, v in eq.items():
            q = q.where(getattr(Document, k) == v)
        return list(s.exec(q.order_by(Document.id)))


def events_of(engine, doc_id: int) -> list[Event]:
    with Session(engine) as s:
        return list(s.exec(select(Event).where(Event.document_id == doc_id).order_by(Event.id)))


def client_for(rt) -> TestClient:
    # A name the panel serves (the Host check refuses TestClient's default "testserver").
    return TestClient(create_app(rt), base_url="http://localhost")


def lease(engine, doc_id: int, owner: str = "other-worker") -> None:
    with transaction(engine) as s:
        d = s.get(Document, doc_id)
        d.lease_owner, d.lease_until = owner, utcnow() + timedelta(minutes=5)
