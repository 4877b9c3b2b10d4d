"""The panel against hostile clients: the sign-in throttle, server-side sessions, errors, hosts, limits.

In-process through the app (TestClient) on SQLite and PostgreSQL; what needs real sockets (body
streaming and trickling, forwarded headers, memory under two 150 MB bodies) is in
``test_web_limits.py``.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from gateway.store import Document, LoginThrottle, User, WebSession, transaction, utcnow
from tests.db import store_url  # noqa: F401 - fixture
from tests.test_web_support import PASSWORD, add_token, add_user, client_for, csrf_of, ingest, new_runtime, sign_in, x12_850


@pytest.fixture
def rt(store_url, tmp_path):  # noqa: F811
    runtime = new_runtime(store_url, tmp_path)
    add_user(runtime.engine, "olga", "operator")
    add_user(runtime.engine, "victor", "viewer")
    yield runtime
    runtime.engine.dispose()


def _web(rt, **changes):
    rt.settings = rt.settings.model_copy(update={"web": rt.settings.web.model_copy(update=changes)})
    return rt


def _login(c, username: str, password: str, token: str):
    return c.post("/login", data={"username": username, "password": password, "csrf_token": token, "next": "/"},
                  follow_redirects=False)


# --------------------------------------------------------------------------------------------- sign-in throttle


def test_after_five_failures_no_variant_of_the_name_signs_in_for_fifteen_minutes(rt):
    c = client_for(rt)
    token = csrf_of(c.get("/login").text)
    for _ in range(5):
        assert _login(c, "olga", "a wrong guess", token).status_code == 401
    for variant in ("olga", " olga", "olga ", "OLGA", "Olga\t", "\uff4f\uff4c\uff47\uff41", "olga\u00a0", "\u2003olga"):
        r = _login(c, variant, PASSWORD, token)
        assert r.status_code == 429 and "Too many failed sign-ins" in r.text, variant
    # Another panel process on the same store counts the same failures.
    other = client_for(rt)
    assert _login(other, "olga", PASSWORD, csrf_of(other.get("/login").text)).status_code == 429
    # A different account is not held by olga's lock.
    assert _login(other, "victor", PASSWORD, csrf_of(other.get("/login").text)).status_code == 303
    # Fifteen minutes on, olga signs in again.
    with transaction(rt.engine) as s:
        s.execute(update(LoginThrottle).values(locked_until=utcnow() - timedelta(seconds=1),
                                               window_start=utcnow() - timedelta(minutes=16)))
    assert _login(c, " olga", PASSWORD, token).status_code == 303


def test_parallel_guesses_are_counted_before_they_are_checked(rt):
    from gateway.web.throttle import SignInThrottle

    throttle = SignInThrottle(rt.engine, per_user=5, per_address=1000)
    start = threading.Barrier(12)

    def guess(i: int) -> float:
        if i < 12:
            start.wait()
        return throttle.reserve("olga", f"a:192.0.2.{i}")

    with ThreadPoolExecutor(12) as pool:
        waits = list(pool.map(guess, range(24)))
    assert sum(1 for w in waits if w == 0.0) == 5  # 24 parallel guesses, a limit of 5: 5 checked
    assert all(w > 14 * 60 for w in waits if w)


def test_the_address_is_limited_too_and_made_up_names_do_not_grow_the_store(rt):
    _web(rt, login_max_failures_per_address=8)
    c = client_for(rt)
    token = csrf_of(c.get("/login").text)
    for i in range(8):
        assert _login(c, f"nobody{i}", "guess", token).status_code == 401
    assert _login(c, "olga", PASSWORD, token).status_code == 429  # this address is locked, whatever the name
    with transaction(rt.engine) as s:
        s.execute(update(LoginThrottle).values(locked_until=None, window_start=utcnow() - timedelta(minutes=20)))
    # A name no account can have (too long, or not a user name) adds no row of its own.
    for name in ("x" * 60_000, "olga" * 30, "<script>", "a\u202eb"):
        assert _login(c, name, "guess", token).status_code == 401
    with Session(rt.engine) as s:
        keys = list(s.exec(select(LoginThrottle.key)))
    assert keys == ["a:testclient"], keys  # the stale rows went at the next attempt; only the address counts
    assert _login(c, "olga", PASSWORD, token).status_code == 303


# --------------------------------------------------------------------------------------------- sessions


def test_a_cookie_saved_before_sign_out_is_refused_after_it(rt):
    c = client_for(rt)
    csrf = sign_in(c, "olga")
    saved = dict(c.cookies)
    assert c.get("/api/me").json()["via"] == "session"
    assert c.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    replay = client_for(rt)
    replay.cookies.update(saved)
    assert replay.get("/api/me").status_code == 401
    assert replay.get("/documents", follow_redirects=False).status_code == 303
    with Session(rt.engine) as s:
        assert s.exec(select(WebSession)).all() == []


def test_sessions_end_when_idle_or_too_old_and_when_the_user_is_disabled_or_changes_password(rt, tmp_path):
    _web(rt, session_idle_minutes=30, session_max_hours=8)
    c = client_for(rt)
    sign_in(c, "olga")
    with transaction(rt.engine) as s:
        s.execute(update(WebSession).values(last_seen_at=utcnow() - timedelta(minutes=31)))
    assert c.get("/api/me").status_code == 401  # idle too long
    sign_in(c, "olga")
    assert c.get("/api/me").status_code == 200
    with transaction(rt.engine) as s:
        s.execute(update(WebSession).values(created_at=utcnow() - timedelta(hours=8, minutes=1)))
    assert c.get("/api/me").status_code == 401  # signed in too long ago, however busy

    from typer.testing import CliRunner

    from gateway.cli import app

    env = {"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_DATABASE_URL": rt.settings.store_url}
    for command, user in ((["users", "disable", "victor"], "victor"), (["users", "password", "olga", "--password-stdin"], "olga")):
        client = client_for(rt)
        sign_in(client, user)
        saved = dict(client.cookies)
        r = CliRunner().invoke(app, command, input="a brand new password\n", env=env)
        assert r.exit_code == 0, r.output
        with Session(rt.engine) as s:
            uid = s.exec(select(User.id).where(User.username == user)).one()
            assert s.exec(select(WebSession).where(WebSession.user_id == uid)).all() == []
        replay = client_for(rt)
        replay.cookies.update(saved)
        assert replay.get("/api/me").status_code == 401, command


def test_session_cookie_is_secure_unless_the_panel_listens_on_loopback(rt):
    from gateway.settings import WebSettings

    assert not WebSettings(host="127.0.0.1").cookies_secure()
    assert not WebSettings(host="::1").cookies_secure() and not WebSettings(host="localhost").cookies_secure()
    assert WebSettings(host="0.0.0.0").cookies_secure() and WebSettings(host="10.1.2.3").cookies_secure()
    assert not WebSettings(host="0.0.0.0", secure_cookies=False).cookies_secure()
    _web(rt, host="0.0.0.0", allowed_hosts=["localhost"])
    c = client_for(rt)
    cookie = c.get("/login").headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie


# --------------------------------------------------------------------------------------------- errors and headers


SECURITY = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "same-origin"}


def _has_security_headers(r) -> None:
    for name, value in SECURITY.items():
        assert r.headers.get(name) == value, (r.status_code, name)
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"


def test_every_error_is_a_4xx_or_500_with_detail_headers_and_no_traceback_or_csrf_token(rt):
    api = client_for(rt)
    api.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'olga')}"
    for path, status in (("/api/documents/12345", 404), ("/api/nowhere", 404), ("/api/documents?limit=0", 400),
                         ("/api/documents/99999999999999999999", 422), ("/api/documents/abc", 422)):
        r = api.get(path)
        assert r.status_code == status and r.json()["detail"], path
        _has_security_headers(r)
    page = client_for(rt)
    sign_in(page, "olga")
    r = page.get("/documents/12345")
    assert r.status_code == 404 and "no such document" in r.text and 'name="csrf_token"' not in r.text
    _has_security_headers(r)

    # An unexpected error: 500, the same headers, a plain message; the traceback only in the log.
    def broken():
        raise RuntimeError("secret internals")

    for c in (api, page):
        c.app.add_api_route("/api/broken", broken)
        c.app.add_api_route("/broken", broken)
    r = api.get("/api/broken")
    assert r.status_code == 500 and r.json() == {"detail": "something went wrong on our side; it has been logged"}
    _has_security_headers(r)
    r = page.get("/broken")
    assert r.status_code == 500 and "secret internals" not in r.text and "Traceback" not in r.text
    assert 'name="csrf_token"' not in r.text
    _has_security_headers(r)


@pytest.mark.parametrize("path, content_type, size, status", [
    ("/api/documents/1/reprocess", "application/json", 70_000, 413),      # JSON: web.max_json_bytes
    ("/login", "application/x-www-form-urlencoded", 70_000, 413),         # forms: web.max_form_bytes
    ("/api/partners/validate", "application/json", 70_000, 401),          # uploads: allowed, then not signed in
    ("/api/partners/validate", "application/json", 17 * 1024 * 1024, 413),  # ... up to web.max_upload_bytes
])
def test_bodies_are_limited_by_route_class_before_anything_reads_them(rt, path, content_type, size, status):
    c = client_for(rt)
    body = b'{"text": "' + b"x" * (size - 12) + b'"}'
    r = c.post(path, content=body, headers={"content-type": content_type})
    assert r.status_code == status, r.text[:200]
    if status == 413:
        assert "larger than" in r.text and r.headers["connection"] == "close"
    _has_security_headers(r)

    def chunks():  # no Content-Length: counted as it streams, cut off at the limit
        for _ in range(size // 10_000 + 1):
            yield b"y" * 10_000

    signed = client_for(rt)
    signed.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'olga')}"
    r = signed.post(path, content=chunks(), headers={"content-type": content_type})
    assert r.status_code == (413 if status == 413 else 422), r.text[:200]


def test_hosts_the_panel_does_not_serve_are_refused(rt):
    c = client_for(rt)
    r = c.get("/login", headers={"host": "attacker.example"})
    assert r.status_code == 400 and "web.allowed_hosts" in r.text
    _has_security_headers(r)
    assert c.get("/api/me", headers={"host": "attacker.example:8080"}).json()["detail"].startswith("the Host header")
    assert c.get("/healthz", headers={"host": "10.0.0.7:8080"}).status_code == 200  # probes may use any name
    assert c.get("/login", headers={"host": "127.0.0.1:8080"}).status_code == 200
    _web(rt, allowed_hosts=["*.example.com"])
    c = client_for(rt)
    assert c.get("/login", headers={"host": "panel.example.com"}).status_code == 200
    assert c.get("/login", headers={"host": "example.com.attacker.net"}).status_code == 400


def test_swagger_ui_comes_from_the_package_and_can_be_turned_off(rt):
    c = client_for(rt)
    sign_in(c, "victor")
    page = c.get("/api/docs")
    assert page.status_code == 200 and "/api/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower() and "<script>" not in page.text  # no inline script, no CDN
    assert "script-src 'self';" in page.headers["content-security-policy"]
    asset = c.get("/api/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    _web(rt, api_docs=False)
    c = client_for(rt)
    sign_in(c, "victor")
    assert c.get("/api/docs").status_code == 404 and c.get("/api/docs/assets/swagger-ui.css").status_code == 404


def test_the_data_folder_and_store_files_are_private(tmp_path):
    from gateway.runtime import open_runtime
    from gateway.settings import Settings

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    rt = open_runtime(Settings(data_dir=data, partners_dir=tmp_path / "partners"), resolve_secrets=False)
    add_user(rt.engine, "olga")  # a write: the WAL exists now
    from gateway.web.security import session_secret

    session_secret(None, data)
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}  # before the WAL is checkpointed away
    rt.engine.dispose()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {"gateway.db", "gateway.db-wal", "web-session.key"} <= set(files), files
    assert all(mode == 0o600 for mode in files.values()), files


# --------------------------------------------------------------------------------------------- input that used to 500


def test_inputs_that_used_to_answer_500_are_4xx(rt):
    api = client_for(rt)
    api.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'olga')}"
    page = client_for(rt)
    sign_in(page, "olga")
    cases = [
        (api.get, "/api/documents/99999999999999999999", 422),            # ids beyond 64 bits
        (api.get, "/api/documents/9223372036854775808/status", 422),
        (api.get, "/api/documents?until=9999-12-31", 400),                # far-future dates
        (api.get, "/api/documents?since=0001-01-01T00:00:00%2B14:00", 400),
        (api.get, "/api/documents?after=99999999999999999999.1", 400),    # cursor overflow
        (api.get, "/api/documents?before=1.99999999999999999999", 400),
        (api.get, "/api/documents?limit=%C2%B2", 422),                   # limit=²
        (page.get, "/documents?limit=%C2%B2", 400),
        (page.get, "/documents/99999999999999999999", 422),
        (page.get, "/documents?until=9999-12-31", 400),
    ]
    for call, path, status in cases:
        r = call(path)
        assert r.status_code == status, (path, r.status_code, r.text[:200])
    for text in ("id: a\x07b\n", "[" * 50_000, "- " * 5_000 + "x", "a: &a [*a, *a]\nb: *a\n"):  # control characters, nesting
        r = api.post("/api/partners/validate", json={"text": text})
        assert r.status_code == 200 and r.json()["ok"] is False and r.json()["problems"], text[:20]
    deep = b'{"reason": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = api.post("/api/documents/1/reprocess", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 413  # larger than a JSON body may be
    deep = b'{"reason": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert api.post("/api/documents/1/reprocess", content=deep,
                    headers={"content-type": "application/json"}).status_code in (400, 422)
    r = api.post("/api/documents/1/reprocess", content=b'{"reason": "\\ud800"}', headers={"content-type": "application/json"})
    assert r.status_code == 422  # a lone surrogate
    token = csrf_of(page.get("/").text)
    r = page.post("/documents/1/reprocess", content="csrf_token=%ED%A0%80&reason=x".encode(),
                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403 and token
    fresh = client_for(rt)
    login = csrf_of(fresh.get("/login").text)
    r = fresh.post("/login", content=f"username=%ED%A0%80&password=%ED%A0%80&csrf_token={login}".encode(),
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 401


# --------------------------------------------------------------------------------------------- large documents


def test_a_document_with_many_lines_is_shown_a_page_at_a_time(rt):
    doc_id = ingest(rt, x12_850(31, ["PO-BIG"]))[0]
    with transaction(rt.engine) as s:
        d = s.get(Document, doc_id)
        canonical = json.loads(d.canonical)
        canonical["lines"] = [dict(canonical["lines"][0], line_number=str(n)) for n in range(1, 1201)]
        d.canonical = json.dumps(canonical)
        d.edi = "\n".join(f"PO1*{n}*1*EA*1.00" for n in range(1, 1201))
        d.findings = json.dumps([{"set_position": 777, "severity": "error", "code": "element.invalid_number",
                                  "message": "bad"}])
    api = client_for(rt)
    api.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'olga')}"
    d = api.get(f"/api/documents/{doc_id}").json()
    # It opens at the page holding the failing segment.
    assert d["segments_page"] == {"from": 501, "count": 500, "total": 1200, "size": 500, "next": 1001, "prev": 1}
    assert [s["n"] for s in d["segments"] if s["error"]] == [777]
    assert len(d["canonical"]["lines"]) == 200 and d["lines_page"]["total"] == 1200
    d = api.get(f"/api/documents/{doc_id}?segments_from=1001&lines_from=1101").json()
    assert d["segments"][0]["n"] == 1001 and len(d["segments"]) == 200 and d["segments_page"]["next"] is None
    assert d["canonical"]["lines"][0]["line_number"] == "1101" and len(d["canonical"]["lines"]) == 100
    assert api.get(f"/api/documents/{doc_id}?segments_from=0").status_code == 422
    page = client_for(rt)
    sign_in(page, "victor")
    html = page.get(f"/documents/{doc_id}").text
    assert "Segments 501–1000 of 1200" in html and "Lines 1–200 of 1200" in html
    assert html.count('id="seg-') == 500 and len(html) < 1_000_000
    assert page.get(f"/documents/{doc_id}?segments_from=x").status_code == 400


# --------------------------------------------------------------------------------------------- readiness


def test_readiness_names_the_failing_source_and_destination_with_since_when(rt):
    from gateway.pipeline.machine import Outcome
    from gateway.pollers import poll_source
    from gateway.integrations.sterling.simulator.app import run_sterling_sim
    from gateway.integrations.sterling.settings import SterlingSettings as SterlingSource
    from tests.test_web_support import FakeDelivery

    c = client_for(rt)
    assert c.get("/readyz").json()["status"] == "ready"
    with run_sterling_sim(users={"edi_api": "the right password"}, partners=["ACME_EDI"]) as sim:
        rt.settings = rt.settings.model_copy(update={"plex": {"api_key": "k"}, "sterling": [SterlingSource(
            name="b2bi", base_url=sim.base_url, username="edi_api", password="an old password",
            mailboxes=["/ACME_EDI/Inbox"], timeout=2.0, retry_attempts=1)]})
        before = utcnow()
        assert poll_source(rt, "sterling:b2bi").errors  # Sterling answers 401
        assert poll_source(rt, "sterling:b2bi").errors
    delivery = FakeDelivery()
    delivery.post = lambda item: Outcome.fail("Plex refused permission (HTTP 403): not allowed for this PCN",
                                                       code="plex.permission")
    ingest(rt, x12_850(41, ["PO-41"]), delivery=delivery)
    c = client_for(rt)
    assert c.get("/healthz").status_code == 200  # liveness is not readiness
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "degraded"
    failing = {p["part"]: p for p in r.json()["failing"]}
    assert set(failing) == {"source:sterling:b2bi", "destination:plex"}, failing
    for part in failing.values():
        from datetime import datetime

        assert datetime.fromisoformat(part["since"]) >= before - timedelta(seconds=1)
    assert failing["destination:plex"]["reason"] == "plex.permission"
    assert "password" not in r.text and "PCN" not in r.text  # no error texts without signing in
    sign_in(c, "victor")
    page = c.get("/sources").text
    assert 'data-source="sterling:b2bi"' in page and 'data-destination="plex"' in page
    assert "401" in page and "HTTP 403" in page and "an old password" not in page
    api = client_for(rt)
    api.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'victor')}"
    report = api.get("/api/readiness").json()
    assert {p["part"] for p in report["failing"]} == set(failing)
