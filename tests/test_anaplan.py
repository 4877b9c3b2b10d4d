"""Anaplan adapter against the Anaplan simulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import csv
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import structlog.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.integrations.anaplan.client import (
    AnaplanAuthError, AnaplanBatch, AnaplanClient, AnaplanConfigError, AnaplanImports,
    AnaplanEndpoints, AnaplanImportConfig, BasicAuth, CertificateAuth, Const, CsvFormat,
    InMemoryRequestBudget, OAuth2RefreshTokenAuth, RequestCounter, RetryPolicy, build_csv, neutralise_cell,
)
from gateway.integrations.anaplan.simulator.app import (
    DEFAULT_PASSWORD, DEFAULT_USER, INVOICES_FILE_ID, INVOICES_IMPORT_ID, MODEL_ID,
    OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_REDIRECT_URI, PO_LINES_FILE_ID, PO_LINES_IMPORT_ID,
    WORKSPACE_ID, AnaplanSimulator, default_tenant,
)
from gateway.sandbox.server import serve_app

PO_HEADERS = ["PO Number", "Line", "Supplier", "Buyer Part", "Quantity", "Unit Price",
              "Delivery Date", "Source"]
FAST_RETRY = RetryPolicy(attempts=5, initial_s=0.01, multiplier=2, max_s=0.1, jitter_s=0)
AUTH_ROUTE = "POST /token/authenticate"
CHUNK_ROUTE = ("PUT /2/0/workspaces/{workspaceId}/models/{modelId}/files/{fileId}/chunks/{chunkId}")
FILE_ROUTE = "POST /2/0/workspaces/{workspaceId}/models/{modelId}/files/{fileId}"
META_ROUTE = "GET /2/0/workspaces/{workspaceId}/models/{modelId}/imports/{importId}"


# ------------------------------------------------------------------------------ fixtures

class Sim:
    """A running simulator plus HTTP helpers for its control endpoints."""

    def __init__(self, sim: AnaplanSimulator, base_url: str) -> None:
        self.sim, self.base_url = sim, base_url
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def faults(self, **changes: Any) -> None:
        self.http.post("/_sim/faults", json=changes).raise_for_status()

    def state(self) -> dict[str, Any]:
        return self.http.get("/_sim/state").json()

    def count(self, route: str) -> int:
        return self.state()["requests"].get(route, 0)

    def statuses(self, route_glob: str = "") -> list[int]:
        return [e["status"] for e in self.state()["request_log"] if route_glob in e["route"]]

    def file_content(self, file_id: str) -> bytes:
        resp = self.http.get(f"/_sim/files/{file_id}")
        resp.raise_for_status()
        return resp.content


class _Slot:
    """ASGI app that forwards to the simulator currently plugged in, so one real HTTP server can
    host a fresh simulator per test (starting uvicorn per simulator costs more than the tests)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def slots() -> Iterator[list[tuple[_Slot, str]]]:
    pairs = [(slot, serve_app(slot)) for slot in (_Slot(), _Slot())]
    servers = [srv for _, srv in pairs]
    yield [(slot, srv.base_url) for slot, srv in pairs]
    for srv in servers:
        srv.stop()


@pytest.fixture
def start_sim(slots: list[tuple[_Slot, str]]) -> Iterator[Any]:
    """``start_sim(tenant=None, **faults)`` -> a fresh simulator on a loopback server (≤ 2 per test)."""
    handles: list[Sim] = []

    def start(tenant: Any = None, **faults: Any) -> Sim:
        slot, base_url = slots[len(handles)]
        sim = AnaplanSimulator(tenant)
        slot.app = sim.app
        handle = Sim(sim, base_url)
        handles.append(handle)
        if faults:
            handle.faults(**faults)
        return handle

    yield start
    for handle in handles:
        handle.http.close()


@pytest.fixture
def sim(start_sim: Any) -> Sim:
    return start_sim()


def make_client(sim: Sim, auth: Any = None, **kwargs: Any) -> AnaplanClient:
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("budget", InMemoryRequestBudget(per_minute=60_000))
    return AnaplanClient(auth or BasicAuth(DEFAULT_USER, DEFAULT_PASSWORD),
                         endpoints=AnaplanEndpoints.single_host(sim.base_url), **kwargs)


def make_destination(sim: Sim, auth: Any = None, **kwargs: Any) -> AnaplanImports:
    lock = kwargs.pop("file_lock", None)
    return AnaplanImports(make_client(sim, auth, **kwargs), file_lock=lock, lock_timeout_s=30)


def po_config(**overrides: Any) -> AnaplanImportConfig:
    values: dict[str, Any] = dict(
        workspace_id=WORKSPACE_ID, model_id=MODEL_ID, import_id=PO_LINES_IMPORT_ID,
        file_id=PO_LINES_FILE_ID,
        # Deliberately not in headerNames order: the CSV must follow the import, not the mapping.
        columns={"Source": {"const": "EDI"}, "Quantity": "lines[].quantity",
                 "PO Number": "po_number", "Line": "lines[].line_number",
                 "Supplier": "parties.supplier.name", "Buyer Part": "lines[].buyer_part",
                 "Unit Price": "lines[].unit_price", "Delivery Date": "lines[].requested_delivery"},
        chunk_size=1_000_000, poll_interval_s=0.02, poll_max_interval_s=0.1, task_timeout_s=20)
    values.update(overrides)
    return AnaplanImportConfig(**values)


def po_doc(doc_id: Any, po_number: str, quantities: list[str], supplier: str = "ACME Corp") -> dict:
    return {
        "id": doc_id, "kind": "purchase_order", "standard": "x12", "version": "004010",
        "po_number": po_number, "po_date": "2024-03-01", "currency": "USD",
        "parties": {"buyer": None, "supplier": {"name": supplier, "id": "SUP1"}, "ship_to": None,
                    "bill_to": None, "remit_to": None},
        "lines": [{"line_number": str(i + 1), "quantity": q, "uom": "EA", "unit_price": "2.50",
                   "buyer_part": f"BP-{i + 1}", "requested_delivery": "2024-04-01"}
                  for i, q in enumerate(quantities)],
    }


def batch(batch_id: str, docs: list[dict], config: AnaplanImportConfig | None = None) -> AnaplanBatch:
    return AnaplanBatch(batch_id=batch_id, config=config or po_config(), documents=docs)


def imported(sim: Sim, import_id: str = PO_LINES_IMPORT_ID) -> dict[tuple[str, str], dict]:
    rows = sim.state()["imported_rows"].get(import_id, [])
    return {(r["PO Number"], r["Line"]): r for r in rows}


@pytest.fixture(scope="module")
def cert_and_key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEFAULT_USER)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# ------------------------------------------------------------------------------ authentication

def test_basic_auth_token_is_reused_across_batches(sim: Sim) -> None:
    dest = make_destination(sim)
    first = dest.run_import(batch("b1", [po_doc(1, "PO-1", ["3"])]))
    second = dest.run_import(batch("b2", [po_doc(2, "PO-2", ["4", "5"])]))

    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert sim.count(AUTH_ROUTE) == 1  # one token for the whole session, not one per call
    assert sim.count("POST /token/refresh") == 0
    assert sim.count(META_ROUTE) == 1  # import metadata cached between batches
    # The outcome's request count is exactly what reached Anaplan.
    assert first.requests_used + second.requests_used == sum(sim.state()["requests"].values())
    assert set(imported(sim)) == {("PO-1", "1"), ("PO-2", "1"), ("PO-2", "2")}

    token = next(iter(sim.sim._tokens))
    assert sim.http.get("/token/validate",
                        headers={"Authorization": f"AnaplanAuthToken {token}"}).status_code == 200
    dest.client.close()  # logs the token out
    assert sim.count("POST /token/logout") == 1
    assert sim.http.get("/token/validate",
                        headers={"Authorization": f"AnaplanAuthToken {token}"}).status_code == 401


class FakeClock:
    """Wall clock plus a test-controlled offset: moves the client's notion of time forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_token_refreshed_near_expiry_and_reauthenticated_on_401(sim: Sim) -> None:
    clock = FakeClock()
    client = make_client(sim, clock=clock)  # default margin: refresh when < 5 min remain

    def call() -> int:
        return client.request(RequestCounter(), "GET", "/users/me").status_code

    assert [call(), call(), call()] == [200, 200, 200]
    assert (sim.count(AUTH_ROUTE), sim.count("POST /token/refresh")) == (1, 0)

    clock.offset = 2100 - 290  # 35-minute token, 4 min 50 s left: extend it
    assert call() == 200
    assert (sim.count(AUTH_ROUTE), sim.count("POST /token/refresh")) == (1, 1)
    clock.offset = 0
    assert call() == 200
    assert (sim.count(AUTH_ROUTE), sim.count("POST /token/refresh")) == (1, 1)

    sim.faults(expire_token_now=True)  # the API answers 401 -> one re-authentication, replay
    assert call() == 200
    assert sim.count(AUTH_ROUTE) == 2
    assert sim.statuses("/users/me") == [200] * 5 + [401, 200]


def test_certificate_auth(start_sim: Any, cert_and_key: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = cert_and_key
    sim = start_sim(default_tenant(certificates={DEFAULT_USER: cert_pem.decode()}))
    dest = make_destination(sim, CertificateAuth(cert_pem, key_pem))
    out = dest.run_import(batch("cert", [po_doc(1, "PO-C", ["1"])]))
    assert out.status == "succeeded"
    assert sim.count(AUTH_ROUTE) == 1

    # Same certificate, wrong private key: the simulator's signature check must refuse it.
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    bad = make_client(sim, CertificateAuth(cert_pem, other_key))
    with pytest.raises(AnaplanAuthError) as err:
        bad.import_metadata(po_config())
    assert "401" in str(err.value)
    assert "PRIVATE KEY" not in str(err.value) and "PRIVATE KEY" not in repr(bad._tokens._auth)


def test_oauth_refresh_token_rotation(sim: Sim) -> None:
    http = sim.http
    # Operator's one-time authorisation (authorization-code grant) yields the first refresh token.
    redirect = http.get("/auth/authorize", params={
        "response_type": "code", "client_id": OAUTH_CLIENT_ID, "redirect_uri": OAUTH_REDIRECT_URI,
        "scope": "openid profile email offline_access", "state": "s1"})
    assert redirect.status_code == 302
    code = parse_qs(urlparse(redirect.headers["location"]).query)["code"][0]
    grant = http.post("/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "client_id": OAUTH_CLIENT_ID,
        "client_secret": OAUTH_CLIENT_SECRET, "redirect_uri": OAUTH_REDIRECT_URI}).json()
    first_refresh = grant["refresh_token"]

    persisted: list[str] = []
    auth = OAuth2RefreshTokenAuth(OAUTH_CLIENT_ID, first_refresh, client_secret=OAUTH_CLIENT_SECRET,
                                  on_refresh_token=persisted.append)
    clock = FakeClock()
    client = make_client(sim, auth, clock=clock)
    cfg = po_config()

    client.import_metadata(cfg)
    client.import_metadata(cfg)  # access token reused
    assert sim.count("POST /oauth/token") == 2  # code exchange + one refresh
    assert len(persisted) == 1 and persisted[0] != first_refresh

    clock.offset = 2100 - 200  # inside the 5-minute margin: refresh, the token rotates again
    client.import_metadata(cfg)
    assert sim.count("POST /oauth/token") == 3
    assert len(persisted) == 2 and len(set(persisted + [first_refresh])) == 3

    # Rotated tokens are single use: the original one is dead now.
    reused = http.post("/oauth/token", json={"grant_type": "refresh_token",
                                             "client_id": OAUTH_CLIENT_ID,
                                             "client_secret": OAUTH_CLIENT_SECRET,
                                             "refresh_token": first_refresh})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert sim.state()["oauth"]["refresh_reuse_rejected"] == 1
    assert sim.count(AUTH_ROUTE) == 0  # never fell back to Basic


# ------------------------------------------------------------------------------ CSV building

def test_build_csv_follows_header_names_and_neutralises_cells() -> None:
    cfg = po_config()
    docs = [po_doc("d1", "=cmd|' /C calc'!A0", ["-5.00", "+SUM(A1)"], supplier="@evil"),
            po_doc("d2", "PO-2", ["-2+3"], supplier="\tTabbed"),
            po_doc("d3", "PO-3", [], supplier="ACME"),
            po_doc("d4", "PO-4", ["1"], supplier="\rCR and\nnewline")]
    data, row_map = build_csv(docs, cfg, PO_HEADERS)
    records = list(csv.reader(io.StringIO(data.decode(), newline="")))

    assert records[0] == PO_HEADERS
    assert data.startswith(b'"PO Number","Line","Supplier"')
    assert row_map.rows == ["d1", "d1", "d2", "d4"]  # one row per line; d3 has none
    assert "d3" in row_map.rejected and "lines" in row_map.rejected["d3"]
    assert row_map.document_for_line(3) == "d1" and row_map.document_for_line(5) == "d4"
    d1a, d1b, d2, d4 = records[1:]
    assert d1a[0] == "'=cmd|' /C calc'!A0"
    assert d1a[2] == "'@evil"
    assert d1a[4] == "-5.00"  # a plain negative number is data, not a formula
    assert d1b[4] == "'+SUM(A1)"
    assert d2[4] == "'-2+3" and d2[2] == "'\tTabbed"
    assert d4[2] == "' CR and newline" and len(records) == 5  # no embedded line breaks
    assert [r[7] for r in records[1:]] == ["EDI"] * 4 and d1a[1] == "1" and d1b[1] == "2"
    assert neutralise_cell("plain") == "plain" and neutralise_cell("=1+1") == "'=1+1"

    # Header-level import (no line field): one row per document.
    inv_cfg = AnaplanImportConfig(
        workspace_id=WORKSPACE_ID, model_id=MODEL_ID, import_id=INVOICES_IMPORT_ID,
        file_id=INVOICES_FILE_ID,
        columns={"Invoice Number": "invoice_number", "Invoice Date": "invoice_date",
                 "PO Number": "po_number", "Supplier": "parties.supplier.name",
                 "Currency": "currency", "Total": "total_amount"})
    invoices = [{"id": 7, "document": {"invoice_number": "INV-1", "invoice_date": "2024-01-02",
                                       "po_number": "PO-1", "currency": "USD", "total_amount": "10.00",
                                       "parties": {"supplier": {"name": "ACME"}},
                                       "lines": [{}, {}]}}]
    inv_headers = ["Invoice Number", "Invoice Date", "PO Number", "Supplier", "Currency", "Total"]
    inv_data, inv_map = build_csv(invoices, inv_cfg, inv_headers, CsvFormat(separator="\t"))
    assert inv_data.decode().splitlines() == ['"' + '"\t"'.join(inv_headers) + '"',
                                              '"INV-1"\t"2024-01-02"\t"PO-1"\t"ACME"\t"USD"\t"10.00"']
    assert inv_map.rows == [7]

    with pytest.raises(AnaplanConfigError, match="not mapped: 'Extra'"):
        build_csv(docs, cfg, [*PO_HEADERS, "Extra"])
    with pytest.raises(ValueError, match="different arrays"):
        po_config(columns={**po_config().columns, "Source": "charges[].code"})
    assert isinstance(po_config().columns["Source"], Const)


# ------------------------------------------------------------------------------ import runs

def test_chunked_upload_is_reassembled_by_the_simulator(sim: Sim) -> None:
    cfg = po_config(chunk_size=64)
    docs = [po_doc(i, f"PO-{i:03}", ["1", "2"], supplier="=HYPERLINK(1)" if i == 0 else "ACME")
            for i in range(10)]
    out = make_destination(sim).run_import(batch("chunks", docs, cfg))
    expected, _ = build_csv(docs, cfg, PO_HEADERS)

    assert out.status == "succeeded"
    n = -(-len(expected) // 64)
    assert n > 10
    info = sim.state()["files"][PO_LINES_FILE_ID][DEFAULT_USER]
    assert info["chunkCount"] == n and info["complete"]
    assert info["chunkSizes"] == [64] * (n - 1) + [len(expected) - 64 * (n - 1)]
    assert info["wireSizes"] != info["chunkSizes"]  # chunks travelled gzipped
    assert sim.file_content(PO_LINES_FILE_ID) == expected
    assert sim.count(CHUNK_ROUTE) == n
    rows = imported(sim)
    assert len(rows) == 20 and rows[("PO-000", "1")]["Supplier"] == "'=HYPERLINK(1)"
    assert out.counts is not None and out.counts.created == 20 and out.counts.failed == 0


def test_bad_row_fails_only_its_document(sim: Sim) -> None:
    docs = [po_doc("A", "PO-A", ["1", "2"]), po_doc("B", "PO-B", ["3", "ten"]),
            po_doc("C", "PO-C", ["5"])]
    out = make_destination(sim).run_import(batch("bad-row", docs))

    assert out.status == "partial"
    bad = out.result_for("B")
    assert not bad.ok and "Invalid number: ten" in (bad.reason or "") and "row 4" in bad.reason
    assert out.result_for("A").ok and out.result_for("C").ok
    assert out.counts is not None and (out.counts.failed, out.counts.successful) == (1, 4)
    assert out.failure_dump is not None and b"_Line_" in out.failure_dump
    assert set(imported(sim)) == {("PO-A", "1"), ("PO-A", "2"), ("PO-B", "1"), ("PO-C", "1")}


def test_wrong_header_fails_the_whole_batch_with_a_clear_reason(sim: Sim) -> None:
    dest = make_destination(sim)
    assert dest.run_import(batch("ok", [po_doc(1, "PO-1", ["1"])])).status == "succeeded"

    # A model builder renames a column; our cached metadata is now stale.
    renamed = [h if h != "Quantity" else "Qty" for h in PO_HEADERS]
    sim.faults(import_headers={PO_LINES_IMPORT_ID: renamed})
    out = dest.run_import(batch("stale", [po_doc(2, "PO-2", ["1"]), po_doc(3, "PO-3", ["2"])]))
    assert out.status == "failed" and not out.retryable
    assert all(not d.ok for d in out.documents)
    assert "missingFields" in (out.reason or "") and "'Qty'" in (out.reason or "")
    assert ("PO-2", "1") not in imported(sim)

    # The next batch re-reads the import and stops before uploading: a configuration error.
    puts = sim.count(CHUNK_ROUTE)
    again = dest.run_import(batch("again", [po_doc(4, "PO-4", ["1"])]))
    assert again.status == "failed" and "not mapped: 'Qty'" in (again.reason or "")
    assert sim.count(CHUNK_ROUTE) == puts


def test_429_and_model_locked_are_retried_then_succeed(sim: Sim) -> None:
    sim.faults(burst_429=[{"count": 2, "route": "PUT */chunks/*", "retry_after": 0},
                          {"count": 1, "route": "POST */tasks", "retry_after": None}],
               model_state={"state": "LOCKED", "count": 2})
    out = make_destination(sim).run_import(batch("faults", [po_doc(1, "PO-1", ["1", "2"])]))

    assert out.status == "succeeded"
    assert sim.statuses("/chunks/") == [429, 429, 204]
    assert sim.statuses("/files/{fileId}")[:3] == [423, 423, 200]
    assert sim.statuses("/tasks")[:2] == [429, 200]
    assert set(imported(sim)) == {("PO-1", "1"), ("PO-1", "2")}


def test_slow_task_is_polled_to_completion(sim: Sim) -> None:
    sim.faults(task_timing={"queue_s": 0.15, "run_s": 0.4, "progress_steps": 4})
    out = make_destination(sim).run_import(batch("slow", [po_doc(1, "PO-S", ["1"])]))

    assert out.status == "succeeded" and out.task_id
    task = next(t for t in sim.state()["tasks"] if t["taskId"] == out.task_id)
    assert {"NOT_STARTED", "IN_PROGRESS"} <= set(task["polledStates"])
    assert task["polledStates"][-1] == "COMPLETE"
    gaps = [b - a for a, b in zip(task["pollTimes"], task["pollTimes"][1:])]
    assert all(g >= 0.015 for g in gaps)  # never hammered faster than the poll interval


def test_task_that_never_finishes_is_cancelled_and_retried_later(sim: Sim) -> None:
    sim.faults(task_timing={"queue_s": 0, "run_s": 5, "progress_steps": 50})
    out = make_destination(sim).run_import(
        batch("stuck", [po_doc(1, "PO-T", ["1"])], po_config(task_timeout_s=0.3)))
    assert out.status == "retry" and out.retryable and "did not finish" in (out.reason or "")
    assert sim.count("DELETE /2/0/workspaces/{workspaceId}/models/{modelId}/imports/{importId}"
                     "/tasks/{taskId}") == 1
    deadline = time.time() + 3
    while time.time() < deadline:
        states = [t["taskState"] for t in sim.state()["tasks"]]
        if states == ["CANCELLED"]:
            break
        time.sleep(0.05)
    assert states == ["CANCELLED"] and imported(sim) == {}


class _NoLock:
    @contextmanager
    def hold(self, key: str, *, timeout: float) -> Iterator[None]:
        yield


def _run_two_batches(dest: AnaplanImports) -> list[Any]:
    cfg = po_config(chunk_size=64)
    batches = [batch(f"c{n}", [po_doc(f"{n}-{i}", f"PO-{n}{i}", ["1", str(n + 2)]) for i in range(6)],
                     cfg) for n in range(2)]
    barrier = threading.Barrier(2)

    def run(b: AnaplanBatch) -> Any:
        barrier.wait()
        return dest.run_import(b)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(run, batches))


def test_concurrent_batches_on_one_file_are_serialised(start_sim: Any) -> None:
    knobs = dict(task_timing={"queue_s": 0.2, "run_s": 0.05},
                 latency_ms={"min_ms": 2, "max_ms": 4, "route": "PUT */chunks/*"})
    sim = start_sim(**knobs)
    outcomes = _run_two_batches(make_destination(sim))
    assert [o.status for o in outcomes] == ["succeeded", "succeeded"]
    assert sim.state()["file_conflicts"] == []
    rows = imported(sim)
    assert len(rows) == 24
    assert rows[("PO-05", "2")]["Quantity"] == "2" and rows[("PO-15", "2")]["Quantity"] == "3"
    tasks = sorted(sim.state()["tasks"], key=lambda t: t["creationTime"])
    first_done = max(tasks[0]["pollTimes"])
    second_upload = [e["t"] for e in sim.state()["request_log"] if e["route"] == FILE_ROUTE.split(" ")[1]
                     and e["method"] == "POST"][1]
    assert second_upload >= first_done  # batch 2 uploaded only after batch 1 was fully read

    # Control: without the lock the same run clobbers the file (the check above can fail).
    control = start_sim(**knobs)
    _run_two_batches(make_destination(control, file_lock=_NoLock()))
    assert control.state()["file_conflicts"]


# ------------------------------------------------------------------------------ budget & secrets

def test_request_budget_and_tenant_rate_limit(start_sim: Any) -> None:
    sim = start_sim()
    tight = make_destination(sim, budget=InMemoryRequestBudget(per_minute=3, burst=3),
                             budget_max_wait_s=0.0)
    out = tight.run_import(batch("budget", [po_doc(1, "PO-1", ["1"])]))
    assert out.status == "retry" and out.retryable and "budget" in (out.reason or "")
    assert out.requests_used == 3 == sum(sim.state()["requests"].values())

    # The simulator's tenant bucket (600/min by default) answers 429 with Retry-After when empty.
    limited = start_sim(rate_limit={"capacity": 2, "refill_per_s": 0.01})
    out = make_destination(limited, retry=RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02,
                                                      jitter_s=0)).run_import(
        batch("limited", [po_doc(1, "PO-1", ["1"])]))
    assert out.status == "retry" and "429" in (out.reason or "")
    log = [e for e in limited.state()["request_log"] if e["route"].startswith("/2/0")]
    assert [e["status"] for e in log] == [200, 200, 429, 429]


def test_secrets_stay_out_of_logs_and_errors(sim: Sim) -> None:
    wrong = "wrong-secret-123"
    with structlog.testing.capture_logs() as logs:
        out = make_destination(sim, BasicAuth(DEFAULT_USER, wrong)).run_import(
            batch("badpw", [po_doc(1, "PO-1", ["1"])]))
        good = make_destination(sim)
        assert good.run_import(batch("ok", [po_doc(2, "PO-2", ["1"])])).status == "succeeded"
    assert out.status == "failed" and "401" in (out.reason or "")
    assert any(e["event"] == "anaplan.batch_done" for e in logs)  # logging did happen
    text = repr(logs) + (out.reason or "") + repr(good.client._tokens._auth) + out.model_dump_json()
    tokens = list(sim.sim._tokens)
    assert tokens
    for secret in [wrong, DEFAULT_PASSWORD, *tokens]:
        assert secret not in text


def test_unknown_file_id_is_refused_not_silently_created(sim: Sim) -> None:
    cfg = po_config(file_id="113999999999")
    dest = make_destination(sim)
    # First guard: the import's importDataSourceId names another file.
    out = dest.run_import(batch("nofile", [po_doc(1, "PO-1", ["1"])], cfg))
    assert out.status == "failed" and "reads file 113000000001" in (out.reason or "")
    assert sim.count(FILE_ROUTE) == 0
    # Second guard: Anaplan answers POST files/<unknown id> by creating a new private file (§5.2).
    with pytest.raises(AnaplanConfigError, match="created file 113"):
        dest.client.upload(cfg, b"x", RequestCounter())
    assert sim.count(FILE_ROUTE) == 1 and sim.count(CHUNK_ROUTE) == 0
