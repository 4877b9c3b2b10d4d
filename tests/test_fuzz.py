"""Bounded fuzzing: mutated fixtures (and corpus files) never make a public call raise.

At most ~40 s; the longer campaign is scripts/fuzz_campaign.py (figures in README)."""

from __future__ import annotations

import random
import time
import traceback

from tests.fuzzing import exercise, mutate, seed_files

BUDGET_SECONDS = 40
MAX_INPUTS = 20_000


def test_mutated_inputs_never_raise():
    seeds = seed_files()
    assert seeds
    rng = random.Random(14)
    crashes: list[str] = []
    tried = 0
    deadline = time.monotonic() + BUDGET_SECONDS
    while tried < MAX_INPUTS and time.monotonic() < deadline:
        data = mutate(rng.choice(seeds), seeds, rng)
        tried += 1
        try:
            exercise(data)
        except Exception:  # noqa: BLE001 - every exception is a finding of this test
            crashes.append(f"{data[:300]!r}\n{traceback.format_exc(limit=4)}")
    assert tried >= 500, f"only {tried} inputs in {BUDGET_SECONDS} s"
    assert not crashes, f"{len(crashes)} of {tried} inputs raised; first:\n{crashes[0]}"


def test_the_known_crashers_are_handled():
    seeds = [b"ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *261201*0900*U*00401*000000001*0*P*>~"
             b"GS*PO*SENDER*RECEIVER*20261201*0900*1*X*004010~ST*850*0001~BEG*00*SA*PO-1**20261201~"
             b"PO1*1*1E100000000*EA*1**BP*A~CTT*1~SE*5*0001~GE*1*1~IEA*1*000000001~"]
    exercise(seeds[0])
    exercise(seeds[0].replace(b"*ZZ*SENDER         ", b"*ZZZ*SEND>R1234567890123"))  # 3-char qualifier, > in id
    exercise(b"UNH+1+ORDERS:D:96A:UN'BG:M+220+X+9'UNT+3+1'")  # composite tag
    exercise(b"ST*810*1~BIG*20261201*I-1~TDS*1E4006000~SE*4*1~")
