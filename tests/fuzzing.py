"""Mutations of EDI files and the public calls a fuzz input must survive (the bounded fuzz test
in tests/test_fuzz.py and the longer campaign, scripts/fuzz_campaign.py, share them)."""

from __future__ import annotations

import os
import random
from datetime import datetime
from pathlib import Path

import orjson

from translators import build_acknowledgment, translate
from translators.mapping import PartnerDirectory, PartnerMapping

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 8, 9, 30)
# Bytes and tokens that steer a reader somewhere interesting: separators, envelope tags,
# numbers a parser may trust too far, encodings.
TOKENS = [b"*", b"~", b":", b">", b"+", b"'", b"?", b"|", b"\n", b"\r\n", b"\x00", b"\xff", b"\xc3", b" ",
          b"ST*850*", b"SE*", b"GS*PO*", b"GE*", b"IEA*1*", b"ISA*", b"UNH+1+ORDERS:D:96A:UN'", b"UNT+", b"UNB+",
          b"UNA:+.? '", b"UNZ+", b"UNG+", b"1E100000000", b"1E4006000", b"-0", b"9" * 40, b"00000000000000001",
          b"PO1*1*", b"IT1*1*", b"CTT*", b"CNT+2:", b"QTY+21:", b"MOA+", b"BGM+", b"BEG*", b"BIG*", b"TDS*",
          b"SAC*C*", b"DTM*002*", b"DTM+137:", b"NAD+SU+", b"N1*SU*", b"PID*F****", b"AMT*TT*"]


def seed_files() -> list[bytes]:
    """Our fixtures, and the public corpus where present (``$EDI_CORPUS`` or ../shared/corpus)."""
    paths = sorted((ROOT / "fixtures" / "edi").rglob("*"))
    corpus = Path(os.environ.get("EDI_CORPUS", ROOT.parent / "shared" / "corpus"))
    if corpus.is_dir():
        paths += sorted(p for p in corpus.rglob("*") if p.parent != corpus)
    return [p.read_bytes() for p in paths if p.is_file()]


def mutate(data: bytes, others: list[bytes], rng: random.Random) -> bytes:
    """One to four random edits of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(out)
        op = rng.randrange(8)
        at = rng.randrange(n + 1)
        if op == 0 and n:
            out[min(at, n - 1)] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.choice(TOKENS)
        elif op == 2 and n:
            del out[at : at + rng.randint(1, 64)]
        elif op == 3 and n:
            span = out[at : at + rng.randint(1, 200)]
            out[at:at] = span * rng.randint(1, 3)
        elif op == 4:
            del out[at:]
        elif op == 5 and others:
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            out[at:] = other[cut:]
        elif op == 6 and n:
            # a digit run made long or an exponent: numbers must stay bounded
            out[at:at] = rng.choice([b"1E" + str(rng.randint(1, 10**9)).encode(), b"9" * rng.randint(20, 400)])
        else:
            out[at:at] = bytes([rng.choice(b"*~:+'?\n")])
    return bytes(out)


PARTNERS = PartnerDirectory([PartnerMapping.model_validate({
    "id": "fuzz", "name": "Fuzz", "identifiers": {"x12": [{"id": "SENDER"}], "edifact": [{"id": "SENDER"}]},
    "validation": {"relax": ["hash_total"]}, "mapping": {"translations": {"uom": {"CA": "CS"}}}})])


def exercise(data: bytes) -> None:
    """Every public call on one input; raises whatever they raise (a bug), else checks the rule
    that a non-empty input yields documents or is refused."""
    result = translate(data, PARTNERS, source="fuzz.edi", partner="fuzz")
    for d in result.documents:
        d.edi  # noqa: B018 - the property is what is exercised
        for f in d.findings:
            f.describe("fuzz.edi")
            f.to_dict()
        if d.document is not None:
            orjson.dumps(d.document)
    for i in result.interchanges:
        build_acknowledgment(i.summary, now=NOW, interchange_control="1")
        i.rejected  # noqa: B018
    for f in result.errors():
        f.describe("fuzz.edi")
    if data.strip(b" \t\r\n\x00\x1a") and not result.documents:
        assert not result.ok, "a non-empty input yielded nothing and no error"
