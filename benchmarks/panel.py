"""Panel response times at a million documents, on SQLite and PostgreSQL, through the real app.

    .venv/bin/python benchmarks/panel.py                          # 1,000,000 documents, both stores
    .venv/bin/python benchmarks/panel.py --documents 100000 --stores sqlite

Seeds the store in bulk (executemany on SQLite, COPY on PostgreSQL) with documents spread over a
year, 20 partners, both kinds and every state, then measures p50/p95 of requests made through
the FastAPI app (Starlette's TestClient: routing, auth by API token, the query, rendering or JSON)
for: the documents list (HTML page and API), a page deep in the list (seek cursor), filtered
searches, a PO-number search, a control-number search and the overview. Target: p95 < 150 ms.

PostgreSQL is the server tests use (``$GATEWAY_TEST_POSTGRES``, default 127.0.0.1:5432 db test);
the benchmark works in a schema of its own and drops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARTNERS = [f"partner-{n:02d}" for n in range(1, 21)]
PG_DSN = os.environ.get("GATEWAY_TEST_POSTGRES", "host=127.0.0.1 port=5432 dbname=test user=postgres")
PER_INTERCHANGE = 50
STATES = [("done", 0.90), ("failed", 0.04), ("needs_attention", 0.01), ("translated", 0.02), ("matched", 0.01),
          ("posted", 0.005), ("forwarded", 0.005), ("ignored", 0.005), ("duplicate", 0.005)]
STAGE_OF = {"failed": ["translate", "match", "post", "forward"], "needs_attention": ["match"], "translated": ["match"],
            "matched": ["post"], "posted": ["forward"], "forwarded": ["confirm"]}
ERRORS = {"translate": "in.x12: segment PO1 #6 (position 4 in the set), element 02: element.invalid_number: 'TWELVE' "
                       "is not a number",
          "match": "no Plex suppliers match 'ACME FASTENERS'; choose one",
          "post": "Plex refused the purchase order: supplier is inactive",
          "forward": "Anaplan import failed: model locked"}


def _weighted(rnd: random.Random) -> str:
    x = rnd.random()
    for state, w in STATES:
        x -= w
        if x <= 0:
            return state
    return "done"


def rows(n: int, seed: int = 11):
    """(interchanges, documents) as tuples, oldest first; created_at grows with the id, over a year."""
    rnd = random.Random(seed)
    end = datetime.now(timezone.utc).replace(microsecond=0)
    start = end - timedelta(days=365)
    step = (end - start) / n
    n_ich = (n + PER_INTERCHANGE - 1) // PER_INTERCHANGE
    ichs = []
    for i in range(1, n_ich + 1):
        at = start + step * ((i - 1) * PER_INTERCHANGE)
        partner = PARTNERS[i % len(PARTNERS)] if i % 23 else None
        ichs.append((i, f"{i:064x}", 40_000, "sftp:drop", f"file-{i}.x12", at, "x12", partner or "UNKNOWN",
                     "MFGPLANT01", f"{i:09d}", partner, "split", PER_INTERCHANGE))
    docs = []
    for d in range(1, n + 1):
        i = (d - 1) // PER_INTERCHANGE + 1
        pos = (d - 1) % PER_INTERCHANGE + 1
        partner = ichs[i - 1][10]
        kind = "purchase_order" if d % 5 < 3 else "invoice"
        state = _weighted(rnd)
        stage = rnd.choice(STAGE_OF[state]) if state in STAGE_OF else None
        created = start + step * (d - 1)
        updated = created + timedelta(seconds=rnd.randint(1, 600))
        edi = f"ST*850*{pos:04d}\nBEG*00*SA*PO-{d:07d}**20261119\nPO1*1*12*EA*4.50**BP*P-{d % 997}\nSE*4*{pos:04d}"
        docs.append((
            d, i, pos, partner, kind, "x12", "850" if kind == "purchase_order" else "810", "004010",
            f"PO-{d:07d}" if kind == "purchase_order" else f"PO-{d - 1:07d}",
            f"INV-{d:07d}" if kind == "invoice" else None,
            partner or "UNKNOWN", "MFGPLANT01", f"{i:09d}", str(i), f"{pos:04d}", state, stage,
            ERRORS.get(stage) if state == "failed" else None, 1 if state == "failed" else 0,
            edi, 1 + (pos - 1) * 4, created, updated,
        ))
    return ichs, docs


ICH_COLS = ("id", "sha256", "size", "source", "remote_name", "received_at", "standard", "sender_id", "receiver_id",
            "control_number", "partner", "state", "document_count")
DOC_COLS = ("id", "interchange_id", "position", "partner", "kind", "standard", "message_type", "version", "po_number",
            "invoice_number", "sender_id", "receiver_id", "interchange_control", "group_control", "message_control",
            "state", "stage", "error", "attempts", "edi", "first_segment_index", "created_at", "updated_at")


def _sqlite_ts(v):
    return v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v


def seed_sqlite(engine, ichs, docs) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cur.execute("BEGIN")
        cur.executemany(f"INSERT INTO interchanges ({', '.join(ICH_COLS)}, forced, attempts) VALUES "
                        f"({', '.join('?' * len(ICH_COLS))}, 0, 0)",
                        ([_sqlite_ts(v) for v in r] for r in ichs))
        cur.executemany(f"INSERT INTO documents ({', '.join(DOC_COLS)}) VALUES ({', '.join('?' * len(DOC_COLS))})",
                        ([_sqlite_ts(v) for v in r] for r in docs))
        cur.execute("COMMIT")
        cur.execute("ANALYZE")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        raw.close()


def seed_postgres(engine, ichs, docs) -> None:
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cur:
            with cur.copy(f"COPY interchanges ({', '.join(ICH_COLS)}, forced, attempts) FROM STDIN") as cp:
                for r in ichs:
                    cp.write_row((*r, False, 0))
            with cur.copy(f"COPY documents ({', '.join(DOC_COLS)}) FROM STDIN") as cp:
                for r in docs:
                    cp.write_row(r)
            cur.execute("SELECT setval(pg_get_serial_sequence('documents', 'id'), (SELECT max(id) FROM documents))")
            cur.execute("SELECT setval(pg_get_serial_sequence('interchanges', 'id'), "
                        "(SELECT max(id) FROM interchanges))")
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE documents")
            cur.execute("VACUUM ANALYZE interchanges")
        conn.autocommit = False
    finally:
        raw.close()


def measure(client, name: str, make_url, n: int) -> dict:
    for _ in range(max(3, n // 20)):  # warm-up: connections, caches, the planner
        client.get(make_url())
    times = []
    for _ in range(n):
        url = make_url()
        t0 = time.perf_counter()
        r = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{name}: {url} answered {r.status_code}: {r.text[:300]}")
    times.sort()
    return {"name": name, "p50": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))],
            "max": times[-1], "n": n}


def run_store(kind: str, n_docs: int, n_requests: int, ichs, docs) -> list[dict]:
    from fastapi.testclient import TestClient

    from gateway.runtime import Runtime
    from gateway.settings import Settings
    from gateway.store import ApiToken, User, make_engine, transaction, upgrade
    from gateway.web import create_app
    from gateway.web.security import hash_password, new_api_token, token_hash

    tmp = Path(tempfile.mkdtemp(prefix="panel-bench-"))
    schema = None
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'gateway.db'}"
    else:
        import psycopg

        schema = "bench_" + uuid.uuid4().hex[:10]
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        parts = dict(p.split("=", 1) for p in PG_DSN.split())
        url = (f"postgresql+psycopg://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
               f"{parts.get('port', '5432')}/{parts.get('dbname', 'test')}?options=-csearch_path%3D{schema}")
    try:
        upgrade(url)
        engine = make_engine(url)
        t0 = time.perf_counter()
        (seed_sqlite if kind == "sqlite" else seed_postgres)(engine, ichs, docs)
        seeded = time.perf_counter() - t0
        print(f"{kind}: seeded {n_docs:,} documents in {seeded:.1f} s", file=sys.stderr)
        token = new_api_token()
        with transaction(engine) as s:
            u = User(username="bench", password_hash=hash_password("benchmark-password"), role="operator")
            s.add(u)
            s.flush()
            s.add(ApiToken(user_id=u.id, name="bench", token_hash=token_hash(token)))
        settings = Settings(data_dir=tmp, database_url=url, partners_dir=tmp / "no-partners")
        client = TestClient(create_app(Runtime(settings=settings, engine=engine)))
        client.headers["Authorization"] = f"Bearer {token}"
        rnd = random.Random(5)
        n = len(docs)

        def cursor_at(d):
            created = d[21]
            micros = (created - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
            return f"{micros}.{d[0]}"

        def po():
            return f"PO-{rnd.randrange(1, n):07d}"

        results = [
            measure(client, "documents page (HTML, newest 50)", lambda: "/documents", n_requests),
            measure(client, "documents list (API, newest 50)", lambda: "/api/documents?limit=50", n_requests),
            measure(client, "deep page (API, seek cursor at random)",
                    lambda: f"/api/documents?limit=50&after={cursor_at(docs[rnd.randrange(n)])}", n_requests),
            measure(client, "filter partner + state=failed (HTML)",
                    lambda: f"/documents?partner={rnd.choice(PARTNERS)}&state=failed", n_requests),
            measure(client, "filter state + stage + kind + 30 days (API)",
                    lambda: "/api/documents?state=failed&stage=post&kind=invoice&since="
                            + (datetime.now(timezone.utc) - timedelta(days=rnd.randint(30, 300))).date().isoformat(),
                    n_requests),
            measure(client, "filter partner + needs_attention (API)",
                    lambda: f"/api/documents?partner={rnd.choice(PARTNERS)}&state=needs_attention", n_requests),
            measure(client, "PO-number search (HTML)", lambda: f"/documents?number={po()}", n_requests),
            measure(client, "PO-number prefix search (API)", lambda: f"/api/documents?number={po()[:-2]}*",
                    n_requests),
            measure(client, "control-number search (API)",
                    lambda: f"/api/documents?control={rnd.randrange(1, len(ichs)):09d}", n_requests),
            measure(client, "document detail (HTML)", lambda: f"/documents/{rnd.randrange(1, n)}", n_requests),
        ]
        t0 = time.perf_counter()
        client.get("/api/overview")
        cold = (time.perf_counter() - t0) * 1000
        results.append(measure(client, "overview (HTML, counts cached 10 s)", lambda: "/", n_requests))
        results.append({"name": "overview, cold (whole-table counts)", "p50": cold, "p95": cold, "max": cold, "n": 1})
        engine.dispose()
        return results
    finally:
        if schema:
            import psycopg

            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--documents", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=200, help="requests per measured query")
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.INFO)
    t0 = time.perf_counter()
    ichs, docs = rows(args.documents)
    print(f"generated {len(docs):,} documents in {len(ichs):,} interchanges in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    report = {}
    for kind in [s.strip() for s in args.stores.split(",") if s.strip()]:
        report[kind] = run_store(kind, args.documents, args.requests, ichs, docs)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"panel at {args.documents:,} documents, {args.requests} requests each (ms; target p95 < 150)")
    print(f"{'request':48} {'store':9} {'p50':>7} {'p95':>7} {'max':>7}")
    worst = 0.0
    for kind, results in report.items():
        for r in results:
            mark = "" if r["n"] == 1 or r["p95"] < 150 else "  over budget"
            if r["n"] > 1:
                worst = max(worst, r["p95"])
            print(f"{r['name']:48} {kind:9} {r['p50']:7.1f} {r['p95']:7.1f} {r['max']:7.1f}{mark}")
    print(f"worst p95: {worst:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
