"""The acknowledgments page: every 997/999/TA1/CONTRL with its verdict and whether it went out (or why not),
filtered by partner, verdict, sent and date, each downloadable; the verdict stored at split and filled in
for stores from before."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from gateway.store import Interchange, transaction, utcnow
from tests.test_web_support import DEMO, add_token, add_user, client_for, ingest, new_runtime, sign_in, x12_850


@pytest.fixture
def rt(tmp_path):
    from gateway.integrations.local.settings import LocalSettings
    from gateway.store.db import upgrade

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    runtime = new_runtime(url, tmp_path)
    # Northwind's acknowledgments go back through a local drop folder tied to it.
    runtime.settings = runtime.settings.model_copy(update={"local": [
        LocalSettings(name="nw", path=tmp_path / "in", outbound_path=tmp_path / "out", partners=("northwind-retail",))]})
    add_user(runtime.engine, "victor", "viewer")
    yield runtime
    runtime.engine.dispose()


def _ich(engine, **eq) -> Interchange:
    with Session(engine) as s:
        q = select(Interchange)
        for k, v in eq.items():
            q = q.where(getattr(Interchange, k) == v)
        return s.exec(q).one()


def _rows(html: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(0) for m in re.finditer(
        r'<tr class="ack [^"]*" data-interchange="(\d+)".*?</tr>', html, re.S)}


def test_every_acknowledgment_with_its_verdict_and_sent_or_why_not(rt):
    ingest(rt, (DEMO / "northwind-retail-850-NW-4471.x12").read_bytes(), "good.x12")
    ingest(rt, x12_850(3301, ["BAD-1"], broken=(1,)), "bad.x12")
    ingest(rt, x12_850(3302, ["MIX-1", "MIX-2"], broken=(2,)), "mixed.x12")
    ingest(rt, x12_850(3303, ["UNK-1"], sender="NOBODYKNOWN"), "unknown.x12")
    good, bad = _ich(rt.engine, remote_name="good.x12"), _ich(rt.engine, remote_name="bad.x12")
    mixed, unknown = _ich(rt.engine, remote_name="mixed.x12"), _ich(rt.engine, remote_name="unknown.x12")
    # The verdict is stored at split, from the acknowledgment built.
    assert (good.ack_status, bad.ack_status, mixed.ack_status) == ("accepted", "rejected", "partially_accepted")
    with transaction(rt.engine) as s:
        row = s.get(Interchange, good.id)
        row.ack_sent_at, row.ack_sent_to = utcnow(), "local:nw:/out/997_000007002_1.x12"
        old = s.get(Interchange, mixed.id)
        old.received_at = utcnow() - timedelta(days=30)

    c = client_for(rt)
    sign_in(c, "victor")
    page = c.get("/acknowledgments")
    assert page.status_code == 200
    rows = _rows(page.text)
    assert list(rows) == [unknown.id, bad.id, good.id, mixed.id]  # newest received first
    assert "accepted</span>" in rows[good.id] and "sent to local:nw:" in rows[good.id]
    assert 'data-status="rejected"' in rows[bad.id] and ">rejected</span>" in rows[bad.id]
    assert "rejects 850 0001" in rows[bad.id]  # which set it rejects
    assert "waiting to be written to local:nw" in rows[bad.id]
    assert "partly rejected" in rows[mixed.id] and "will not be sent: older than 7 days" in rows[mixed.id]
    assert "not sent: the sender has no mapping file" in rows[unknown.id]

    def shown(query: str) -> list[int]:
        r = c.get("/acknowledgments?" + query)
        assert r.status_code == 200, r.text
        return list(_rows(r.text))

    assert shown("status=rejected") == [bad.id]
    assert shown("sent=sent") == [good.id]
    assert shown("partner=-") == [unknown.id]
    assert shown("partner=northwind-retail&sent=not_sent") == [bad.id, mixed.id]
    since = (utcnow() - timedelta(days=2)).date().isoformat()
    until = (utcnow() - timedelta(days=10)).date().isoformat()
    assert shown(f"since={since}") == [unknown.id, bad.id, good.id]
    assert shown(f"until={until}") == [mixed.id]
    assert shown("kind=CONTRL") == []
    nothing = c.get("/acknowledgments?status=accepted_with_errors")
    assert 'id="no-acks"' in nothing.text and "show them all" in nothing.text
    bad_date = c.get("/acknowledgments?since=12/01/2026")
    assert bad_date.status_code == 400 and "YYYY-MM-DD" in bad_date.text
    assert c.get("/acknowledgments?status=maybe").status_code == 400

    # Download: the acknowledgment as the partner gets it.
    r = c.get(f"/acknowledgments/{bad.id}")
    assert r.status_code == 200 and r.text == _ich(rt.engine, id=bad.id).ack
    assert r.text.startswith("ISA*") and "AK5*R" in r.text
    assert 'filename="997_000003301_' in r.headers["content-disposition"]
    assert c.get("/acknowledgments/999999").status_code == 404

    # The document page says the same, in the same words.
    from tests.test_web_support import docs_where

    doc = docs_where(rt.engine, interchange_id=bad.id)[0]
    text = c.get(f"/documents/{doc.id}").text
    ack = re.search(r'<dd id="ack-status">(.*?)</dd>', text, re.S).group(1)
    assert "rejected" in ack and "waiting to be written" in ack and "not sent yet" not in ack

    # And the API, for scripts.
    api = client_for(rt)
    api.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'victor')}"
    items = api.get("/api/acknowledgments?status=rejected").json()["items"]
    assert [(i["interchange_id"], i["status"], i["rejects"]) for i in items] == [(bad.id, "rejected", ["850 0001"])]


def test_stores_from_before_get_the_verdict_filled_in(tmp_path):
    from gateway.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0005")
    engine = make_engine(url)
    rejecting = ("ISA*00*          *00*          *ZZ*MFGPLANT01     *12*2065550147     *261120*0931*U*00401*"
                 "000000001*0*P*>~GS*FA*MFGPLANT01*NWRETAIL*20261120*0931*1*X*004010~ST*997*0001~AK1*PO*3301~"
                 "AK2*850*0001~AK5*R*5~AK9*R*1*1*0~SE*6*0001~GE*1*1~IEA*1*000000001~")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO interchanges (id, sha256, size, source, received_at, state, forced, document_count, "
            "attempts, ack_kind, ack) VALUES (1, 'x', 1, 'test', '2026-11-01 10:00:00', 'split', 0, 1, 0, '997', ?)",
            (rejecting,))
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as s:
        assert s.get(Interchange, 1).ack_status == "rejected"
    engine.dispose()
