"""The server-rendered pages and their forms: what they show, bad input refused with a message, nothing changed."""

from __future__ import annotations

import re

import pytest
from sqlmodel import Session, select

from gateway.store import Document, PartnerFile, transaction
from tests.test_web_support import (
    BAD_MAPPING,
    DEMO,
    GOOD_MAPPING,
    FakeDelivery,
    add_user,
    client_for,
    docs_where,
    events_of,
    ingest,
    new_runtime,
    sign_in,
    x12_850,
    zenith_sample,
)


@pytest.fixture
def rt(tmp_path):
    from gateway.store.db import upgrade

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    runtime = new_runtime(url, tmp_path)
    add_user(runtime.engine, "olga", "operator")
    add_user(runtime.engine, "victor", "viewer")
    yield runtime
    runtime.engine.dispose()


@pytest.fixture
def op(rt):
    c = client_for(rt)
    c.csrf = sign_in(c, "olga")
    return c


def test_every_page_renders_for_a_viewer_without_actions(rt):
    delivery = FakeDelivery()
    done = ingest(rt, (DEMO / "northwind-retail-850-NW-4471.x12").read_bytes(), "nw.x12", delivery)[0]
    c = client_for(rt)
    sign_in(c, "victor")
    pages = {
        "/": ["Needs a person", "Documents received per hour", "northwind-retail"],
        "/documents": ["NW-4471"],
        f"/documents/{done}": ["BEG*00*SA*NW-4471", "Timeline", "Canonical document", "Acknowledgment"],
        "/partners": ["northwind-retail", "europa-components"],
        "/partners/northwind-retail": ["northwind-retail.yaml", "2065550147"],
        "/sources": ["Sources"],
    }
    for path, words in pages.items():
        r = c.get(path)
        assert r.status_code == 200, path
        for w in words:
            assert w in r.text, (path, w)
        # A viewer is offered no action.
        for action in ('id="reprocess-form"', 'id="mapping-form"', 'id="bulk-link"', 'id="onboard"'):
            assert action not in r.text, (path, action)
    assert c.get("/partners/new").status_code == 403
    assert c.get("/partners/nobody").status_code == 404
    r = c.get("/documents/123456")
    assert r.status_code == 404 and "no such document" in r.text


def test_pages_escape_what_partners_send(rt, op):
    doc_id = ingest(rt, x12_850(31, ["PO-1"], broken=(1,)))[0]
    with transaction(rt.engine) as s:
        d = s.get(Document, doc_id)
        d.error = "<script>alert(1)</script>"
        d.po_number = "<img src=x onerror=alert(2)>"
    op.app.state.cache.drop()  # the overview's counts are cached (and served stale while refreshed)
    for path in ("/documents", f"/documents/{doc_id}", "/"):
        text = op.get(path).text
        assert "<script>alert(1)</script>" not in text and "<img src=x" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    r = op.get("/")
    assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"


def test_documents_page_filters_paging_and_bad_filters(rt, op):
    ids = ingest(rt, x12_850(41, [f"P-{n:02d}" for n in range(1, 8)], broken=(3,)))
    r = op.get("/documents", params={"limit": 3})
    shown = re.findall(r'data-id="(\d+)"', r.text)
    assert shown == [str(i) for i in sorted(ids, reverse=True)[:3]] and 'id="page-next"' in r.text
    nxt = re.search(r'id="page-next" href="([^"]+)"', r.text).group(1).replace("&amp;", "&")
    r2 = op.get(nxt)
    assert re.findall(r'data-id="(\d+)"', r2.text) == [str(i) for i in sorted(ids, reverse=True)[3:6]]
    assert 'id="page-prev"' in r2.text
    r = op.get("/documents", params={"state": "failed"})
    assert re.findall(r'data-id="(\d+)"', r.text) == [str(ids[2])] and 'id="bulk-link"' in r.text
    r = op.get("/documents", params={"number": "P-05"})
    assert re.findall(r'data-id="(\d+)"', r.text) == [str(ids[4])]
    for params, says in [({"state": "bogus"}, "state: &#39;bogus&#39; is not one of"),
                         ({"since": "31/12/2026"}, "since: &#39;31/12/2026&#39; is not a date"),
                         ({"limit": "many"}, "limit: must be a whole number")]:
        r = op.get("/documents", params=params)
        assert r.status_code == 400 and says in r.text, (params, r.text[-2000:])


def test_reprocess_form_refuses_bad_input_and_records_who_and_why(rt, op):
    doc_id = ingest(rt, x12_850(51, ["R-1"], broken=(1,)))[0]
    before = [(e.id, e.outcome) for e in events_of(rt.engine, doc_id)]
    r = op.post(f"/documents/{doc_id}/reprocess", data={"reason": " ", "csrf_token": op.csrf})
    assert r.status_code == 400 and "reason: say why" in r.text
    r = op.post(f"/documents/{doc_id}/reprocess", data={"reason": "x", "from_stage": "warp", "csrf_token": op.csrf})
    assert r.status_code == 400 and "from_stage" in r.text
    r = op.post("/documents/999/reprocess", data={"reason": "x", "csrf_token": op.csrf})
    assert r.status_code == 404
    assert [(e.id, e.outcome) for e in events_of(rt.engine, doc_id)] == before
    assert docs_where(rt.engine, id=doc_id)[0].state == "failed"

    r = op.post(f"/documents/{doc_id}/reprocess", data={"reason": "partner resent", "csrf_token": op.csrf},
                follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/documents/{doc_id}"
    page = op.get(f"/documents/{doc_id}").text
    assert "sent back for processing" in page and "partner resent" in page
    last = events_of(rt.engine, doc_id)[-1]
    assert (last.outcome, last.actor, last.stage) == ("reprocess", "olga", "translate")


def test_supplier_form_for_a_needs_attention_document(rt, op):
    delivery = FakeDelivery()
    delivery.attention = {"S-1"}
    doc_id = ingest(rt, x12_850(61, ["S-1"]), delivery=delivery)[0]
    page = op.get(f"/documents/{doc_id}").text
    assert 'id="supplier-form"' in page and 'value="NWR01"' in page and 'value="NWR02"' in page
    r = op.post(f"/documents/{doc_id}/supplier", data={"supplier_code": "ZZZ", "csrf_token": op.csrf})
    assert r.status_code == 400 and "ZZZ" in r.text
    assert docs_where(rt.engine, id=doc_id)[0].state == "needs_attention"
    r = op.post(f"/documents/{doc_id}/supplier", data={"supplier_code": "NWR02", "csrf_token": op.csrf},
                follow_redirects=False)
    assert r.status_code == 303
    assert docs_where(rt.engine, id=doc_id)[0].supplier_code == "NWR02"


def test_bulk_pages(rt, op):
    ingest(rt, x12_850(71, ["B-1", "B-2", "B-3"], broken=(1, 2)))
    r = op.get("/bulk")
    assert r.status_code == 400 and "at least one filter" in r.text
    r = op.get("/bulk", params={"state": "failed"})
    assert r.status_code == 200 and re.search(r'id="bulk-count"><b>2</b>', r.text)
    r = op.post("/bulk", data={"state": "failed", "reason": "", "csrf_token": op.csrf})
    assert r.status_code == 400 and "reason" in r.text
    r = op.post("/bulk", data={"state": "failed", "reason": "fixed", "csrf_token": op.csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/jobs/")
    page = op.get(r.headers["location"])
    assert page.status_code == 200 and 'id="job-progress"' in page.text
    assert op.get("/jobs/unknown").status_code == 404


def test_partner_forms_show_problems_at_their_key_and_refuse_to_activate_untried(rt, op):
    r = op.post("/partners", data={"csrf_token": op.csrf, "filename": "zenith.yaml"},
                files={"file": ("zenith-tools.yaml", BAD_MAPPING.encode(), "text/yaml")})
    assert r.status_code == 422
    assert 'data-key="mapping.translatons"' in r.text and 'id="line-10" class="marked failing"' in r.text
    assert "nothing was saved" in r.text
    r = op.post("/partners", data={"csrf_token": op.csrf},
                files={"file": ("latin1.yaml", "name: Müller".encode("latin-1"), "text/yaml")})
    assert r.status_code == 400 and "not UTF-8" in r.text
    with Session(rt.engine) as s:
        assert s.exec(select(PartnerFile)).all() == []

    r = op.post("/partners", data={"csrf_token": op.csrf, "text": GOOD_MAPPING, "filename": "zenith.yaml"},
                follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/partners/zenith-tools"
    r = op.post("/partners/zenith-tools/activate", data={"csrf_token": op.csrf})
    assert r.status_code == 409 and "dry run" in r.text
    r = op.post("/partners/zenith-tools/dry-run", data={"csrf_token": op.csrf, "sample_text": ""})
    assert r.status_code == 400 and "empty" in r.text
    r = op.post("/partners/zenith-tools/dry-run", data={"csrf_token": op.csrf},
                files={"sample": ("zt.x12", zenith_sample().encode(), "application/edi-x12")})
    assert r.status_code == 200 and 'data-ok="yes"' in r.text and "ZT-1001" in r.text
    r = op.post("/partners/zenith-tools/activate", data={"csrf_token": op.csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert rt.partners().get("zenith-tools") is not None
    r = op.post("/partners/zenith-tools/discard", data={"csrf_token": op.csrf})
    assert r.status_code == 404  # nothing left to discard
