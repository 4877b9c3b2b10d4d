"""The translation core is typed strictly (issue 15): ``mypy --strict translators/`` finds nothing.

The same mypy compiles the hot modules with mypyc (setup.py), so the types are also what the
compiled code relies on."""

from __future__ import annotations

from pathlib import Path

from mypy import api as mypy_api

REPO = Path(__file__).resolve().parent.parent


def test_translators_pass_mypy_strict(tmp_path):
    out, err, status = mypy_api.run(["--strict", "--cache-dir", str(tmp_path / "cache"), str(REPO / "translators")])
    assert status == 0, out + err
    assert out.startswith("Success: no issues found")
