"""Record-flow benchmark: a million SYSPRO InvWarehouse rows into an Anaplan import, then an
incremental pass with 100 changed rows.

    .venv/bin/python benchmarks/flows.py [--rows 1000000] [--changed 100]

The SYSPRO and Anaplan simulators run in a process of their own (``python -m
gateway.sandbox.flows``); the gateway is ``gateway flows run syspro-stock --once`` in another, on
SQLite in a temporary folder, as an operator would run it. Timed end to end: from starting the
command until it exits, i.e. OData read, store, map, upload, import confirmed (the process start
included). Peak RSS is the gateway process's (``ru_maxrss`` of the waited child). Requests are
counted by the simulators. The last line is the summary the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.sandbox.flows import config_toml, stock_flow_text  # noqa: E402


def run_gateway(config: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "gateway"), "flows", "run", "syspro-stock", "--once",
                           "-c", str(config)], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"gateway flows run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=int, default=100)
    args = parser.parse_args()

    sims = subprocess.Popen([sys.executable, "-m", "gateway.sandbox.flows", "--rows", str(args.rows)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        urls = json.loads(sims.stdout.readline())
        http = httpx.Client(timeout=60)

        def counts() -> tuple[int, int, dict]:
            syspro = sum(http.get(urls["syspro"] + "/_sim/state").json()["requests"].values())
            anaplan = http.get(urls["anaplan"] + "/_sim/counts").json()
            return syspro, anaplan["requests"], anaplan["imported"]

        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            flows_dir = tmp_path / "flows"
            flows_dir.mkdir()
            (flows_dir / "syspro-stock.yaml").write_text(stock_flow_text(poll_seconds=1.0, page_size=5000,
                                                                         chunk_mb=16))
            config = tmp_path / "gateway.toml"
            config.write_text(config_toml(data_dir=str(tmp_path / "data"), flows_dir=str(flows_dir),
                                          anaplan_url=urls["anaplan"], odata_url=urls["odata"]))
            print(f"flows benchmark: {args.rows} SYSPRO InvWarehouse rows, OData pages of 5000, SQLite store, "
                  f"{os.cpu_count()} cores", flush=True)

            s0, a0, _ = counts()
            seconds, line = run_gateway(config)
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            s1, a1, imported = counts()
            loaded = imported.get("112000000010", 0)
            print(f"first load: {line}")
            print(f"  {seconds:.1f} s end to end, {s1 - s0} SYSPRO and {a1 - a0} Anaplan requests, "
                  f"{loaded} rows in the Anaplan import", flush=True)
            if loaded != args.rows:
                sys.exit(f"Anaplan holds {loaded} rows, expected {args.rows}")

            http.post(urls["syspro"] + "/_sim/touch", json={"table": "InvWarehouse", "count": args.changed})
            s2, a2, _ = counts()
            inc_seconds, inc_line = run_gateway(config)
            s3, a3, _ = counts()
            print(f"incremental: {inc_line}")
            peak_mb = max(peak_mb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
            rate = args.rows / seconds
            per_10k = (a1 - a0) / args.rows * 10_000
            changed = int(inc_line.split(" changed")[0].rsplit(" ", 1)[-1])
            print(f"flows: {args.rows} records, {rate:.0f} records/s, peak RSS {peak_mb:.0f} MB, "
                  f"{per_10k:.2f} Anaplan requests per 10000 records; incremental: {changed} changed, "
                  f"{(s3 - s2) + (a3 - a2)} requests, {inc_seconds:.1f} s")
    finally:
        sims.stdin.close()
        sims.wait(timeout=30)


if __name__ == "__main__":
    main()
