"""The panel's JSON API and its guards, on SQLite and PostgreSQL: every action, bad input, roles, CSRF."""

from __future__ import annotations

import base64
import json
import time

import pytest
from sqlmodel import Session, select

from gateway.store import Event, PartnerFile, transaction
from tests.db import store_url  # noqa: F401 - fixture
from tests.test_web_support import (
    BAD_MAPPING,
    DEMO,
    GOOD_MAPPING,
    FakeDelivery,
    add_token,
    add_user,
    client_for,
    docs_where,
    events_of,
    ingest,
    lease,
    new_runtime,
    sign_in,
    x12_850,
    zenith_sample,
)

@pytest.fixture
def rt(store_url, tmp_path):  # noqa: F811
    runtime = new_runtime(store_url, tmp_path)
    add_user(runtime.engine, "olga", "operator")
    add_user(runtime.engine, "victor", "viewer")
    yield runtime
    runtime.engine.dispose()


@pytest.fixture
def delivery():
    return FakeDelivery()


@pytest.fixture
def api(rt):
    """A client carrying the operator's API token."""
    c = client_for(rt)
    c.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'olga')}"
    return c


@pytest.fixture
def viewer_api(rt):
    c = client_for(rt)
    c.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'victor')}"
    return c


def _snapshot(engine):
    """Every document's state and every event id: what 'nothing changed' compares."""
    with Session(engine) as s:
        docs = [(d.id, d.state, d.stage, d.error, d.attempts) for d in docs_where(engine)]
        events = list(s.exec(select(Event.id).order_by(Event.id)))
    return docs, events


# --------------------------------------------------------------------------------------------- access


def test_signed_out_gets_401_from_api_and_a_redirect_from_pages(rt):
    c = client_for(rt)
    for path in ("/api/documents", "/api/overview", "/api/partners", "/api/sources", "/api/documents/1",
                 "/api/openapi.json", "/api/docs", "/metrics"):
        r = c.get(path)
        assert r.status_code == 401, path
        assert "sign in" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
    for path in ("/", "/documents", "/documents/1", "/partners", "/partners/new", "/sources", "/bulk?state=failed"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    r = c.post("/api/documents/1/reprocess", json={"reason": "x"})
    assert r.status_code == 401
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_bad_or_revoked_tokens_are_refused(rt, api):
    c = client_for(rt)
    assert c.get("/api/me", headers={"Authorization": "Bearer gwt_nope"}).status_code == 401
    assert c.get("/api/me", headers={"Authorization": "Basic b2xnYTp4"}).status_code == 401
    assert api.get("/api/me").json() == {"username": "olga", "role": "operator", "via": "token"}
    from gateway.store import ApiToken

    with transaction(rt.engine) as s:
        for t in s.exec(select(ApiToken)).all():
            s.delete(t)
    assert api.get("/api/me").status_code == 401


def test_sign_in_sets_a_safe_cookie_and_sign_out_ends_the_session(rt):
    c = client_for(rt)
    page = c.get("/login")
    from tests.test_web_support import csrf_of

    token = csrf_of(page.text)
    r = c.post("/login", data={"username": "olga", "password": "wrong password", "csrf_token": token, "next": "/"})
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = c.post("/login", data={"username": "olga", "password": "correct horse battery", "csrf_token": token,
                               "next": "//evil.example/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # never an off-site redirect
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert c.get("/api/me").json()["via"] == "session"
    # Sign-out needs the CSRF token too.
    assert c.post("/logout", data={}).status_code == 403
    assert c.get("/api/me").status_code == 200
    r = c.post("/logout", data={"csrf_token": sign_in_csrf(c)}, follow_redirects=False)
    assert r.status_code == 303
    assert c.get("/api/me").status_code == 401


def sign_in_csrf(c) -> str:
    from tests.test_web_support import csrf_of

    return csrf_of(c.get("/").text)


def test_login_without_csrf_is_refused_and_failures_are_throttled(rt):
    c = client_for(rt)
    c.get("/login")
    r = c.post("/login", data={"username": "olga", "password": "correct horse battery"})
    assert r.status_code == 403 and c.get("/api/me").status_code == 401
    from tests.test_web_support import csrf_of

    token = csrf_of(c.get("/login").text)
    for _ in range(5):
        r = c.post("/login", data={"username": "olga", "password": "guess", "csrf_token": token})
        assert r.status_code == 401
    # Locked for a while, even with the right password.
    r = c.post("/login", data={"username": "olga", "password": "correct horse battery", "csrf_token": token})
    assert r.status_code == 429 and "Too many failed sign-ins" in r.text
    assert c.get("/api/me").status_code == 401


def test_disabling_a_user_or_changing_the_password_ends_their_sessions(rt):
    from gateway.store import User
    from gateway.web.security import hash_password

    c = client_for(rt)
    sign_in(c, "olga")
    assert c.get("/api/me").status_code == 200
    with transaction(rt.engine) as s:
        s.exec(select(User).where(User.username == "olga")).one().password_hash = hash_password("another password")
    assert c.get("/api/me").status_code == 401
    c2 = client_for(rt)
    sign_in(c2, "victor")
    with transaction(rt.engine) as s:
        s.exec(select(User).where(User.username == "victor")).one().disabled = True
    assert c2.get("/", follow_redirects=False).status_code == 303


def test_session_actions_need_the_csrf_token_and_viewers_cannot_act(rt, delivery):
    doc_id = ingest(rt, x12_850(11, ["PO-1"], broken=(1,)))[0]
    before = _snapshot(rt.engine)
    op = client_for(rt)
    token = sign_in(op, "olga")
    r = op.post(f"/api/documents/{doc_id}/reprocess", json={"reason": "retry"})
    assert r.status_code == 403 and "security token" in r.json()["detail"]
    r = op.post(f"/documents/{doc_id}/reprocess", data={"reason": "retry", "csrf_token": "forged"})
    assert r.status_code == 403
    viewer = client_for(rt)
    vtoken = sign_in(viewer, "victor")
    r = viewer.post(f"/api/documents/{doc_id}/reprocess", json={"reason": "retry"}, headers={"X-CSRF-Token": vtoken})
    assert r.status_code == 403 and "only operators" in r.json()["detail"]
    r = viewer.post(f"/documents/{doc_id}/reprocess", data={"reason": "retry", "csrf_token": vtoken})
    assert r.status_code == 403 and "only operators" in r.text
    assert viewer.get("/bulk?state=failed").status_code == 403
    assert _snapshot(rt.engine) == before
    # The same call with the session's token works.
    r = op.post(f"/api/documents/{doc_id}/reprocess", json={"reason": "retry"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["state"] == "received"


# --------------------------------------------------------------------------------------------- documents


def test_documents_filters_search_and_seek_paging(rt, api):
    pos = [f"NW-{n:04d}" for n in range(1, 13)]
    ids = ingest(rt, x12_850(101, pos[:6], broken=(2,)), "a.x12")
    ids += ingest(rt, x12_850(102, pos[6:]), "b.x12")
    ids += ingest(rt, (DEMO / "acme-fasteners-810-INV-10234.x12").read_bytes(), "inv.x12")
    assert len(ids) == 13

    every = []
    page = api.get("/api/documents", params={"limit": 5}).json()
    while True:
        every += [d["id"] for d in page["items"]]
        if not page["next"]:
            break
        page = api.get("/api/documents", params={"limit": 5, "after": page["next"]}).json()
    assert every == sorted(ids, reverse=True)  # newest first, each exactly once
    # Back one page from the last: the page before it.
    prev = api.get("/api/documents", params={"limit": 5, "before": page["prev"]}).json()
    assert [d["id"] for d in prev["items"]] == every[5:10]
    oldest = api.get("/api/documents", params={"sort": "oldest", "limit": 3}).json()
    assert [d["id"] for d in oldest["items"]] == sorted(ids)[:3]

    def found(**params):
        return [d["id"] for d in api.get("/api/documents", params=params).json()["items"]]

    assert len(found(partner="northwind-retail")) == 12
    assert len(found(partner="acme-fasteners", kind="invoice")) == 1
    assert found(state="failed") == [ids[1]]
    assert found(state="failed", stage="translate") == [ids[1]]
    assert found(number="NW-0007") == [ids[6]]
    assert found(number="INV-10234") == [ids[12]]
    assert sorted(found(number="NW-000*")) == sorted(ids[:9])
    assert sorted(found(control="000000102")) == sorted(ids[6:12])
    assert found(since="2000-01-01", until="2000-01-02") == []
    assert len(found(since="2000-01-01")) == 13
    assert found(number="nothing-like-it") == []
    item = api.get("/api/documents", params={"number": "NW-0002"}).json()["items"][0]
    assert item["state"] == "failed" and "TWELVE" in item["error"] and "canonical" not in item

    for params, word in [({"state": "lost"}, "state"), ({"kind": "memo"}, "kind"), ({"stage": "fly"}, "stage"),
                         ({"since": "yesterday"}, "since"), ({"since": "2026-02-01", "until": "2026-01-01"}, "since"),
                         ({"after": "garbage"}, "after"), ({"limit": 0}, "limit"), ({"sort": "random"}, "sort"),
                         ({"number": "N*"}, "number")]:
        r = api.get("/api/documents", params=params)
        assert r.status_code == 400 and r.json()["detail"].startswith(word), (params, r.text)
    r = api.get("/api/documents", params={"limit": "ten"})
    assert r.status_code == 422 and "limit" in r.json()["detail"]


def test_document_detail_has_segments_failing_segment_timeline_and_ack(rt, api):
    doc_id = ingest(rt, (DEMO / "northwind-retail-850-NW-4480-broken.x12").read_bytes(), "broken.x12")[0]
    d = api.get(f"/api/documents/{doc_id}").json()
    assert d["state"] == "failed" and d["stage"] == "translate" and d["po_number"] == "NW-4480"
    texts = [s["text"] for s in d["segments"]]
    assert texts[0].startswith("ST*850") and texts[-1].startswith("SE*")
    failing = [s for s in d["segments"] if s["error"]]
    assert [s["text"].split("*")[0] for s in failing] == ["PO1"]
    assert failing[0]["findings"][0]["code"] == "element.invalid_number"
    assert [(e["stage"], e["outcome"], e["attempt"]) for e in d["events"]] == [("translate", "fail", 1)]
    assert d["interchange"]["ack"] and d["interchange"]["ack_kind"] in (None, "997", "999")
    assert "997" in d["interchange"]["ack"] or "999" in d["interchange"]["ack"]
    assert api.get("/api/documents/999999").status_code == 404
    assert api.get("/api/documents/abc").status_code == 422


def test_reprocess_after_the_fault_is_cleared_reaches_done(rt, api, delivery):
    delivery.plex_fault = "Plex refused the sales order: customer NWR01 is on hold"
    doc_id = ingest(rt, x12_850(201, ["NW-9001"]), delivery=delivery)[0]
    d = api.get(f"/api/documents/{doc_id}").json()
    assert (d["state"], d["stage"]) == ("failed", "plex") and "on hold" in d["error"]
    assert [e["detail"].get("plex", {}).get("status") for e in d["plex"] if e["stage"] == "plex"] == [422]
    assert [(x["destination"], x["state"]) for x in d["deliveries"]] == [("plex", "failed"), ("anaplan", "blocked")]

    delivery.plex_fault = None
    r = api.post(f"/api/documents/{doc_id}/reprocess", json={"reason": "customer released in Plex"})
    assert r.status_code == 200 and (r.json()["state"], r.json()["stage"]) == ("delivering", "plex")
    delivery.worker(rt).run_until_idle()
    d = api.get(f"/api/documents/{doc_id}").json()
    assert d["state"] == "done" and d["plex_key"] == f"SO-{doc_id}"
    trail = [(e["stage"], e["outcome"], e["actor"]) for e in d["events"]]
    assert ("plex", "reprocess", "olga") in trail
    assert trail[-2:] == [("plex", "ok", "test-worker"), ("anaplan", "ok", "test-worker")]
    assert [e for e in d["events"] if e["outcome"] == "reprocess"][0]["detail"]["reason"] == \
        "customer released in Plex"


def test_reprocess_bad_input_changes_nothing(rt, api):
    doc_id = ingest(rt, x12_850(301, ["NW-1"], broken=(1,)))[0]
    other = ingest(rt, x12_850(302, ["NW-2"]))[0]
    before = _snapshot(rt.engine)
    cases = [
        (f"/api/documents/{doc_id}/reprocess", {"reason": "  "}, 400, "reason"),
        (f"/api/documents/{doc_id}/reprocess", {}, 422, "reason"),
        (f"/api/documents/{doc_id}/reprocess", {"reason": "x", "from_stage": "teleport"}, 400, "from_stage"),
        (f"/api/documents/{doc_id}/reprocess", {"reason": "x", "extra": 1}, 422, "extra"),
        (f"/api/documents/{doc_id}/reprocess", {"reason": "x" * 501}, 422, "reason"),
        ("/api/documents/424242/reprocess", {"reason": "x"}, 404, "document 424242"),
        # Translated only: it cannot skip ahead to posting.
        (f"/api/documents/{other}/reprocess", {"reason": "x", "from_stage": "post"}, 409, "document"),
    ]
    for url, body, status, word in cases:
        r = api.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        assert word in r.json()["detail"], (body, r.text)
    lease(rt.engine, doc_id)
    before = _snapshot(rt.engine)
    r = api.post(f"/api/documents/{doc_id}/reprocess", json={"reason": "x"})
    assert r.status_code == 409 and "being worked on" in r.json()["detail"]
    assert _snapshot(rt.engine) == before
    r = api.post(f"/api/documents/{doc_id}/reprocess", content=b"not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_bulk_reprocess_with_progress(rt, api, viewer_api):
    ids = ingest(rt, x12_850(401, [f"B-{n}" for n in range(1, 8)], broken=(1, 3, 5)))
    failed = [ids[0], ids[2], ids[4]]
    before = _snapshot(rt.engine)
    for body, status, word in [
        ({"reason": "x"}, 400, "selection"),
        ({"reason": "", "state": "failed"}, 400, "reason"),
        ({"reason": "x", "state": "nope"}, 400, "state"),
        ({"reason": "x", "partner": "nobody"}, 400, "no document matches"),
        ({"reason": "x", "state": "failed", "from_stage": "sideways"}, 400, "from_stage"),
    ]:
        r = api.post("/api/reprocess", json=body)
        assert r.status_code == status and word in r.json()["detail"], (body, r.text)
    assert viewer_api.post("/api/reprocess", json={"reason": "x", "state": "failed"}).status_code == 403
    assert _snapshot(rt.engine) == before

    r = api.post("/api/reprocess", json={"reason": "mapping fixed", "state": "failed", "partner": "northwind-retail"})
    assert r.status_code == 202
    job = r.json()
    assert job["total"] == 3
    for _ in range(200):
        job = api.get(f"/api/jobs/{job['id']}").json()
        if job["state"] in ("finished", "failed"):
            break
        time.sleep(0.05)
    assert job["state"] == "finished" and job["done"] == 3 and job["reprocessed"] == 3 and job["percent"] == 100.0
    assert [d.id for d in docs_where(rt.engine, state="received")] == failed
    assert all(events_of(rt.engine, i)[-1].actor == "olga" for i in failed)
    assert api.get("/api/jobs/nope").status_code == 404


def test_choose_supplier_for_a_needs_attention_document(rt, api, viewer_api, delivery):
    delivery.attention = {"NW-77"}
    doc_id = ingest(rt, x12_850(501, ["NW-77"]), delivery=delivery)[0]
    d = api.get(f"/api/documents/{doc_id}").json()
    assert d["state"] == "needs_attention" and [c["code"] for c in d["candidates"]] == ["NWR01", "NWR02"]
    done_id = ingest(rt, x12_850(502, ["NW-78"]), delivery=delivery)[0]
    before = _snapshot(rt.engine)
    for url, body, status, word in [
        (f"/api/documents/{doc_id}/supplier", {"supplier_code": ""}, 400, "supplier_code"),
        (f"/api/documents/{doc_id}/supplier", {"supplier_code": "NOPE"}, 400, "NOPE"),
        (f"/api/documents/{done_id}/supplier", {"supplier_code": "NWR01"}, 409, "done"),
        ("/api/documents/9999/supplier", {"supplier_code": "NWR01"}, 404, "9999"),
    ]:
        r = api.post(url, json=body)
        assert r.status_code == status and word in r.json()["detail"], (body, r.text)
    assert viewer_api.post(f"/api/documents/{doc_id}/supplier", json={"supplier_code": "NWR02"}).status_code == 403
    assert _snapshot(rt.engine) == before
    r = api.post(f"/api/documents/{doc_id}/supplier", json={"supplier_code": "NWR02"})
    assert r.status_code == 200, r.text
    doc = docs_where(rt.engine, id=doc_id)[0]
    assert doc.supplier_code == "NWR02" and doc.state in ("matched", "translated")
    assert events_of(rt.engine, doc_id)[-1].actor == "olga"


# --------------------------------------------------------------------------------------------- partners


def test_partner_onboarding_validate_draft_dry_run_activate(rt, api, viewer_api):
    r = api.post("/api/partners/validate", json={"text": BAD_MAPPING, "filename": "zenith.yaml"})
    assert r.status_code == 200 and r.json()["ok"] is False
    problem = r.json()["problems"][0]
    assert problem["path"] == "mapping.translatons" and problem["line"] == 10 and "translations" in problem["message"]

    r = api.post("/api/partners", json={"text": BAD_MAPPING, "filename": "zenith.yaml"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "mapping.translatons"
    with Session(rt.engine) as s:
        assert s.exec(select(PartnerFile)).all() == []
    assert viewer_api.post("/api/partners", json={"text": GOOD_MAPPING}).status_code == 403

    r = api.post("/api/partners", json={"text": GOOD_MAPPING, "filename": "zenith.yaml"})
    assert r.json() == {"ok": True, "partner": "zenith-tools", "draft": True}
    assert rt.partners().get("zenith-tools") is None  # a draft is not in force
    r = api.post("/api/partners/zenith-tools/activate")
    assert r.status_code == 409 and "dry run" in r.json()["detail"]

    # A sample from someone else: translated, but not as this partner.
    other = (DEMO / "northwind-retail-850-NW-4471.x12").read_text()
    r = api.post("/api/partners/zenith-tools/dry-run", json={"sample": other})
    assert r.status_code == 200 and r.json()["ok"] is False and "did not match" in r.json()["verdict"]
    assert api.post("/api/partners/zenith-tools/activate").status_code == 409
    for body, status in [({}, 400), ({"sample": "x", "sample_base64": "eA=="}, 400), ({"sample_base64": "%%%"}, 400),
                         ({"sample": ""}, 400)]:
        assert api.post("/api/partners/zenith-tools/dry-run", json=body).status_code == status, body
    assert api.post("/api/partners/nobody/dry-run", json={"sample": other}).status_code == 404

    sample = zenith_sample()
    r = api.post("/api/partners/zenith-tools/dry-run",
                 json={"sample_base64": base64.b64encode(sample.encode()).decode(), "sample_name": "zt.x12"})
    result = r.json()
    assert result["ok"] is True, result
    doc = result["documents"][0]
    assert doc["partner"] == "zenith-tools" and doc["canonical"]["po_number"] == "ZT-1001"
    assert doc["canonical"]["lines"][0]["uom"] == "CS"  # the draft's translation table applied

    r = api.post("/api/partners/zenith-tools/activate")
    assert r.status_code == 200 and r.json()["partner"] == "zenith-tools"
    assert rt.partners().get("zenith-tools").name == "Zenith Tools Ltd"
    listed = {p["id"]: p for p in api.get("/api/partners").json()}
    assert listed["zenith-tools"]["origin"] == "panel" and listed["zenith-tools"]["draft"] is None
    assert listed["northwind-retail"]["origin"] == "folder"

    # Editing a live file keeps the live version in force until the edit is activated.
    edited = GOOD_MAPPING.replace("Zenith Tools Ltd", "Zenith Tools Limited")
    assert api.post("/api/partners", json={"text": edited, "filename": "zenith.yaml"}).status_code == 200
    assert rt.partners().get("zenith-tools").name == "Zenith Tools Ltd"
    assert api.get("/api/partners/zenith-tools").json()["draft"]["filename"] == "zenith.yaml"
    assert api.post("/api/partners/zenith-tools/activate").status_code == 409  # new text: dry-run it again
    assert api.post("/api/partners/zenith-tools/dry-run", json={"sample": sample}).json()["ok"] is True
    assert api.post("/api/partners/zenith-tools/activate").status_code == 200
    assert rt.partners().get("zenith-tools").name == "Zenith Tools Limited"
    with Session(rt.engine) as s:
        rows = s.exec(select(PartnerFile)).all()
        trail = [json.loads(e.detail)["partner"] + ":" + e.outcome
                 for e in s.exec(select(Event).where(Event.stage == "onboard").order_by(Event.id))]
    assert [(r.partner_id, r.active) for r in rows] == [("zenith-tools", True)]
    assert trail[0] == "zenith-tools:draft" and trail[-1] == "zenith-tools:activate"
    assert api.post("/api/partners/zenith-tools/activate").status_code == 404  # no draft left
    assert api.post("/api/partners/zenith-tools%23draft/activate").status_code == 404  # a draft key is no id
    assert api.get("/api/partners/zenith-tools%23draft").status_code == 404


# --------------------------------------------------------------------------------------------- overview


def test_overview_sources_budgets_metrics_and_secrets_masked(store_url, tmp_path):  # noqa: F811
    from gateway.integrations.local.settings import LocalSettings
    from datetime import timedelta

    from gateway.store import RateWindow, SourceStatus, utcnow

    rt = new_runtime(store_url, tmp_path)
    rt.settings = rt.settings.model_copy(update={
        "local": [LocalSettings(name="drop", path=tmp_path)],
        "web": rt.settings.web.model_copy(update={"session_secret": None}),
        "anaplan": {"password": "hunter2-very-secret"},
    })
    add_user(rt.engine, "olga", "operator")
    ingest(rt, x12_850(601, ["O-1", "O-2", "O-3"], broken=(2,)))
    assert ingest(rt, b"this is not EDI at all\n", "junk.txt") == []
    now = utcnow()
    with transaction(rt.engine) as s:
        s.add(SourceStatus(source="local:drop", last_poll_at=now, last_error="login as edi:hunter2-very-secret failed",
                           last_error_at=now, files_taken=4))
        s.add(RateWindow(budget="plex-connect:abc", window_start=now - timedelta(seconds=10), used=10))
        s.add(RateWindow(budget="plex-connect:abc", window_start=now - timedelta(seconds=4), used=7))
        s.add(RateWindow(budget="plex-connect:abc", window_start=now - timedelta(minutes=5), used=99))
    c = client_for(rt)
    c.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'olga')}"
    o = c.get("/api/overview").json()
    assert o["by_state"]["failed"] == 1 and o["by_state"]["translated"] == 2 and o["total"] == 3
    assert o["by_partner"]["northwind-retail"] == {"failed": 1, "translated": 2}
    assert sum(h["count"] for h in o["per_hour"]) == 3 and len(o["per_hour"]) == 24
    assert [d["po_number"] for d in o["recent_failures"]] == ["O-2"]
    held = o["interchanges_held"]
    assert [(i["remote_name"], i["state"]) for i in held] == [("junk.txt", "failed")] and held[0]["error"]
    src = {s["source"]: s for s in o["sources"]}["local:drop"]
    assert src["failing"] and "hunter2" not in json.dumps(o) and "***" in src["last_error"]
    budgets = {b["budget"]: b for b in o["budgets"]}
    assert budgets["plex-connect:abc"]["used_last_minute"] == 17 and budgets["plex-connect:abc"]["limit_per_minute"]
    assert budgets["anaplan"]["used_last_minute"] == 0
    page = c.get("/sources")
    assert page.status_code == 200 and "hunter2" not in page.text and "local:drop" in page.text
    assert "hunter2" not in c.get("/").text
    metrics = c.get("/metrics").text
    assert 'gateway_documents{state="failed"} 1.0' in metrics
    assert 'gateway_source_failing{source="local:drop"} 1.0' in metrics
    assert 'gateway_budget_used_last_minute{budget="plex-connect:abc"} 17.0' in metrics
    assert "gateway_http_requests_total" in metrics
    assert c.get("/api/openapi.json").json()["paths"]["/api/documents/{doc_id}/reprocess"]
    rt.engine.dispose()


# --------------------------------------------------------------------------------------- files held back


def _interchanges(engine):
    from gateway.store import Interchange

    with Session(engine) as s:
        return {i.id: (i.state, i.forced) for i in s.exec(select(Interchange).order_by(Interchange.id))}


def test_files_held_back_are_forced_through_or_split_again_by_operators_only(rt, api, viewer_api):
    from gateway.store import Interchange

    data = x12_850(601, ["DUP-1"])
    assert len(ingest(rt, data, "first.x12")) == 1
    assert ingest(rt, data, "again.x12") == []  # same sender, receiver and control number: held back
    assert ingest(rt, b"this is not EDI\n", "junk.txt") == []
    held = _interchanges(rt.engine)
    dup = next(i for i, (state, _) in held.items() if state == "duplicate")
    junk = next(i for i, (state, _) in held.items() if state == "failed")
    before = (held, _snapshot(rt.engine))
    cases = [
        (viewer_api, f"/api/interchanges/{dup}/force", {"reason": "resent on purpose"}, 403, "only operators"),
        (api, f"/api/interchanges/{dup}/force", {"reason": "  "}, 400, "reason"),
        (api, "/api/interchanges/424242/force", {"reason": "x"}, 404, "interchange 424242"),
        (api, f"/api/interchanges/{dup}/retry", {"reason": "x"}, 409, "has not failed"),
        (api, f"/api/interchanges/{junk}/force", {"reason": "x"}, 409, "not a duplicate"),
    ]
    for client, url, body, status, words in cases:
        r = client.post(url, json=body)
        assert r.status_code == status and words in r.json()["detail"], (url, r.text)
    assert (_interchanges(rt.engine), _snapshot(rt.engine)) == before

    r = api.post(f"/api/interchanges/{dup}/force", json={"reason": "resent on purpose"})
    assert r.status_code == 200 and r.json()["state"] == "received" and r.json()["forced"] is True
    from gateway.pipeline.wiring import Pipeline
    from gateway.pipeline.worker import Worker

    Worker(rt, pipeline=Pipeline(), name="test-worker").split_interchanges()  # the forced duplicate is split after all
    assert [d.po_number for d in docs_where(rt.engine, interchange_id=dup)] == ["DUP-1"]
    with Session(rt.engine) as s:
        trail = [(e.stage, e.outcome, e.actor) for e in s.exec(select(Event).where(Event.interchange_id == dup))]
    assert any(actor == "olga" for _, _, actor in trail)

    # The overview lists the held file; its page offers the action to operators (with the CSRF token),
    # not to viewers.
    op = client_for(rt)
    sign_in(op, "olga")
    assert f'href="/interchanges/{junk}"' in op.get("/").text
    page = op.get(f"/interchanges/{junk}")
    assert f'action="/interchanges/{junk}/retry"' in page.text and "Split again" in page.text
    assert "not EDI" in page.text  # the file itself, shown before anyone acts
    viewer = client_for(rt)
    sign_in(viewer, "victor")
    assert f"/interchanges/{junk}/retry" not in viewer.get(f"/interchanges/{junk}").text
    from tests.test_web_support import csrf_of

    r = op.post(f"/interchanges/{junk}/retry", data={"reason": "translator fixed", "csrf_token": csrf_of(page.text)},
                follow_redirects=False)
    assert r.status_code == 303
    with Session(rt.engine) as s:
        assert s.get(Interchange, junk).state == "received"
    r = op.post(f"/interchanges/{junk}/retry", data={"reason": "again", "csrf_token": "forged"})
    assert r.status_code == 403
