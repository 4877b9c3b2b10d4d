"""The long fuzz campaign of issue 14: mutated fixtures and corpus files through every public
call, in worker processes; prints the inputs tried, the crashes (unhandled exceptions), the
inputs over 10 s and the inputs that took a worker over 500 MB.

    .venv/bin/python scripts/fuzz_campaign.py [--inputs 200000] [--seed 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzzing import exercise, mutate, seed_files  # noqa: E402

SLOW_SECONDS = 10
BIG_MB = 500


class _Slow(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001 - signal handler
    raise _Slow


def _batch(args: tuple[int, int]) -> dict:
    seed, count = args
    seeds = seed_files()
    rng = random.Random(seed)
    signal.signal(signal.SIGALRM, _alarm)
    out: dict = {"tried": 0, "crashes": [], "slow": [], "big": []}
    for _ in range(count):
        data = mutate(rng.choice(seeds), seeds, rng)
        out["tried"] += 1
        signal.alarm(SLOW_SECONDS)
        start = time.monotonic()
        try:
            exercise(data)
        except _Slow:
            out["slow"].append(repr(data[:200]))
        except Exception:  # noqa: BLE001 - a crash is what the campaign looks for
            out["crashes"].append(f"{data[:200]!r}: {traceback.format_exc(limit=3).splitlines()[-1]}")
        finally:
            signal.alarm(0)
        if time.monotonic() - start > SLOW_SECONDS:
            out["slow"].append(repr(data[:200]))
        if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 > BIG_MB:
            out["big"].append(repr(data[:200]))
            break  # the worker's peak stays high from here on: stop this batch
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2_000)
    args = ap.parse_args()
    batches = [(args.seed * 1_000_003 + n, min(args.batch, args.inputs - n * args.batch))
               for n in range((args.inputs + args.batch - 1) // args.batch)]
    totals = {"tried": 0, "crashes": [], "slow": [], "big": []}
    peak = 0.0
    start = time.monotonic()
    # A fresh worker per batch keeps each batch's memory peak its own.
    with multiprocessing.get_context("fork").Pool(args.workers, maxtasksperchild=1) as pool:
        for res in pool.imap_unordered(_batch, batches):
            for key in ("crashes", "slow", "big"):
                totals[key] += res[key]
            totals["tried"] += res["tried"]
            peak = max(peak, res["peak_mb"])
            print(f"\r{totals['tried']} inputs, {len(totals['crashes'])} crashes", end="", file=sys.stderr)
    print(file=sys.stderr)
    elapsed = time.monotonic() - start
    print(f"inputs tried: {totals['tried']} in {elapsed:.0f} s ({args.workers} workers, seed {args.seed})")
    print(f"unhandled exceptions: {len(totals['crashes'])}")
    print(f"inputs over {SLOW_SECONDS} s: {len(totals['slow'])}")
    print(f"inputs taking a worker over {BIG_MB} MB: {len(totals['big'])} (highest worker peak {peak:.0f} MB)")
    for what in ("crashes", "slow", "big"):
        for line in totals[what][:10]:
            print(f"  {what}: {line}")
    return 1 if totals["crashes"] or totals["slow"] or totals["big"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
