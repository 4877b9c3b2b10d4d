"""The ``gateway`` command line, run as a user runs it: a subprocess, stdout, stderr, exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "fixtures" / "edi" / "demo"
PARTNERS = REPO / "partners"


def gateway(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_PARTNERS"}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def test_translate_prints_canonical_json_and_exits_zero():
    proc = gateway("translate", str(DEMO / "northwind-retail-850-NW-4471.x12"), "--partners", str(PARTNERS))
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    assert [d["po_number"] for d in docs] == ["NW-4471"]
    doc = docs[0]
    assert doc["partner"] == "northwind-retail"
    # The partner's qualifiers (CB/VC) and unit-of-measure table (CA -> CS) were applied.
    assert [(l["buyer_part"], l["supplier_part"], l["uom"]) for l in doc["lines"]] == [
        ("MFG-PANEL-A4", "NWV-5511", "CS"),
        ("MFG-HINGE-3X", "NWV-5512", "EA"),
    ]
    assert doc["references"] == {"DP": "0042", "IA": "V-7781"}  # only the references it keeps


def test_unknown_sender_uses_standard_mapping_with_null_partner():
    proc = gateway("translate", str(DEMO / "globex-unknown-810-77-5510.x12"), "--partners", str(PARTNERS))
    assert proc.returncode == 0, proc.stderr
    (doc,) = json.loads(proc.stdout)
    assert doc["partner"] is None
    assert doc["invoice_number"] == "77-5510"
    assert doc["total_amount"] == "120.00"  # TDS is implied 2-decimal


def test_several_files_one_array_and_a_broken_one_fails_the_run():
    files = sorted(str(p) for p in DEMO.iterdir())
    proc = gateway("translate", *files, "--partners", str(PARTNERS))
    assert proc.returncode == 1
    docs = json.loads(proc.stdout)
    numbers = {d.get("po_number") if d["kind"] == "purchase_order" else d["invoice_number"] for d in docs}
    assert {"NW-4471", "EC-7781", "INV-10234", "EC-INV-5521", "77-5510"} <= numbers
    assert "NW-4480" not in numbers  # the broken document is not printed as translated
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        f"{DEMO / 'northwind-retail-850-NW-4480-broken.x12'}: segment PO1 #6 (position 4 in the set), "
        "element 02: element.invalid_number: PO102 (quantity ordered): 'TWELVE' is not a number"
    )


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x01\x02\xff" * 50, b"hello world\n", b"ISA*00", b"UNB+UNOA:3+X", b"ISA" + b"*" * 200, b"UNA:+.? 'UNB"],
    ids=["empty", "binary", "text", "short-isa", "short-unb", "isa-stars", "una-only"],
)
def test_garbage_never_shows_a_traceback(tmp_path, content):
    f = tmp_path / "in.edi"
    f.write_bytes(content)
    proc = gateway("translate", str(f))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith(str(f) + ": ")
    assert json.loads(proc.stdout) == []


def test_missing_file_and_folder_are_clear_errors(tmp_path):
    proc = gateway("translate", str(tmp_path / "nope.edi"), str(tmp_path))
    assert proc.returncode == 1
    assert f"{tmp_path / 'nope.edi'}: no such file" in proc.stderr
    assert f"{tmp_path}: is a folder, not a file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_prints_findings_and_the_acknowledgment():
    proc = gateway("validate", str(DEMO / "northwind-retail-850-NW-4480-broken.x12"), "--partners", str(PARTNERS))
    assert proc.returncode == 1
    out = proc.stdout
    assert "element.invalid_number" in out
    assert "acknowledgment (997)" in out
    assert "AK5*R*5" in out and "AK4*2**6*TWELVE" in out


def test_validate_json_accepts_good_edifact():
    proc = gateway("validate", "--json", str(DEMO / "europa-components-ORDERS-EC-7781.edi"), "--partners", str(PARTNERS))
    assert proc.returncode == 0, proc.stderr
    (report,) = json.loads(proc.stdout)
    assert report["ok"] is True
    assert report["documents"][0]["partner"] == "europa-components"
    (ack,) = report["acknowledgments"]
    assert ack["kind"] == "CONTRL" and "UCI+" in ack["text"]


def test_partners_check_good_and_bad(tmp_path):
    ok = gateway("partners", "check", str(PARTNERS))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "partners"
    bad.mkdir()
    (bad / "oops.yaml").write_text("id: Oops Partner\nname: x\nmaping: {}\n")
    proc = gateway("partners", "check", str(bad))
    assert proc.returncode == 1
    assert "oops.yaml" in proc.stderr and "maping" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_partner_folder_stops_translate_with_named_file(tmp_path):
    (tmp_path / "broken.yaml").write_text("id: [not, a, string\n")
    proc = gateway("translate", str(DEMO / "globex-unknown-810-77-5510.x12"), "--partners", str(tmp_path))
    assert proc.returncode == 2
    assert "broken.yaml" in proc.stderr and "Traceback" not in proc.stderr
