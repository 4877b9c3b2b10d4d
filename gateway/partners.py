"""Partner mapping files on disk: load one, load a directory, check a directory for the CLI.

A partner directory holds one ``*.yaml`` / ``*.yml`` file per partner, plus ``schema.json``
(for editors) and a README. Parsing and validation are in :mod:`translators.partners`; this
module only reads files and reports.

    python -m gateway.partners schema [DIR]   # rewrite DIR/schema.json from the model
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

from translators.mapping import PartnerDirectory, PartnerMapping
from translators.partners import (
    PartnerFileError,
    Problem,
    check_directory_texts,
    mapping_json_schema_text,
    parse_partner_text,
)

__all__ = [
    "DEFAULT_PARTNERS_DIR",
    "PartnerCheck",
    "PartnerFileError",
    "PartnerLoadError",
    "check_partner_directory",
    "load_partner_directory",
    "load_partner_file",
    "load_usable_partners",
    "partner_files",
    "write_partner_schema",
]

DEFAULT_PARTNERS_DIR = Path("partners")
PARTNER_SUFFIXES = (".yaml", ".yml")
SCHEMA_FILE = "schema.json"
MAX_FILE_BYTES = 1_000_000  # a mapping file is a few kilobytes

PartnerLoadError = PartnerFileError
"""The name ``gateway.cli`` catches: the same exception."""


def partner_files(directory: str | Path) -> list[Path]:
    """The partner files in ``directory`` (not its subfolders), by name; hidden files are skipped."""
    d = Path(directory)
    return sorted(
        p for p in d.iterdir()
        if p.suffix.lower() in PARTNER_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _read(path: Path) -> tuple[str | None, Problem | None]:
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return None, Problem(source, "", f"the file is {size} bytes; a mapping file is at most {MAX_FILE_BYTES}")
        data = path.read_bytes()
    except OSError as e:
        return None, Problem(source, "", f"cannot read the file: {e.strerror or e}")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, Problem(source, "", f"the file is not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8", line)


def load_partner_file(path: str | Path) -> PartnerMapping:
    """Read and validate one mapping file; raises :class:`PartnerFileError`."""
    text, problem = _read(Path(path))
    if problem:
        raise PartnerFileError([problem])
    return parse_partner_text(text, str(path))


def _directory_problem(directory: Path) -> Problem | None:
    if not directory.exists():
        return Problem(str(directory), "", "no such partner directory")
    if not directory.is_dir():
        return Problem(str(directory), "", "not a directory")
    return None


def _check(directory: Path) -> tuple[PartnerDirectory, list[Problem], list[tuple[str, str]]]:
    problem = _directory_problem(directory)
    if problem:
        return PartnerDirectory(), [problem], []
    files = partner_files(directory)
    items: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for path in files:
        text, problem = _read(path)
        if problem:
            problems.append(problem)
        else:
            items.append((str(path), text))
    loaded, more = check_directory_texts(items)
    return loaded, problems + more, items


def load_usable_partners(directory: str | Path = DEFAULT_PARTNERS_DIR) -> tuple[PartnerDirectory, list[Problem]]:
    """The partners whose files are good, and the problems of the others (what a running gateway uses:
    one broken file must not stop every partner; see :meth:`gateway.runtime.Runtime.partner_problems`)."""
    loaded, problems, _ = _check(Path(directory))
    return loaded, problems


def load_partner_directory(directory: str | Path = DEFAULT_PARTNERS_DIR) -> PartnerDirectory:
    """Every partner file in ``directory``; raises :class:`PartnerFileError` listing every problem.

    All or nothing: a directory with one bad file is refused, so a typo never silently drops
    a partner back to the standard mapping.
    """
    loaded, problems, _ = _check(Path(directory))
    if problems:
        raise PartnerFileError(problems)
    return loaded


class PartnerCheck(NamedTuple):
    """What ``gateway partners check`` prints (``lines``) and whether it succeeded (exit 0)."""

    ok: bool
    lines: list[str]


def _summary(p: PartnerMapping) -> str:
    idents = [f"x12 {i.qualifier + ':' if i.qualifier else ''}{i.id}{'/' + i.group_id if i.group_id else ''}"
              for i in p.identifiers.x12]
    idents += [f"edifact {i.id}{':' + i.qualifier if i.qualifier else ''}" for i in p.identifiers.edifact]
    state = "active" if p.active else "inactive"
    return (f"{p.id} ({p.name}): {', '.join(idents) or 'no identifiers'}; "
            f"{', '.join(p.documents)}; {p.environment}, {state}")


def check_partner_directory(directory: str | Path = DEFAULT_PARTNERS_DIR) -> PartnerCheck:
    """Validate every partner file in ``directory``: one line per good file, one per problem, a summary."""
    d = Path(directory)
    loaded, problems, items = _check(d)
    bad_sources = {p.source for p in problems}
    lines = [
        f"ok   {source}: {_summary(parse_partner_text(text, source))}"
        for source, text in items if source not in bad_sources
    ]
    lines += [f"FAIL {problem}" for problem in problems]

    schema = d / SCHEMA_FILE
    if schema.is_file():
        try:
            stale = schema.read_text("utf-8") != mapping_json_schema_text()
        except OSError:
            stale = True
        if stale:
            lines.append(f"note {schema}: differs from this gateway's schema; regenerate it with "
                         f"python -m gateway.partners schema {d}")

    if _directory_problem(d) is None:
        files = partner_files(d)
        n_bad = len(bad_sources)
        if not files:
            lines.append(f"no partner files (*.yaml, *.yml) in {d}; every sender gets the standard mapping")
        else:
            lines.append(f"{len(files)} partner file{'s' if len(files) != 1 else ''} in {d}: {len(loaded)} ok, "
                         f"{n_bad} with problems ({len(problems)} problem{'s' if len(problems) != 1 else ''})")
    return PartnerCheck(ok=not problems, lines=lines)


def write_partner_schema(directory: str | Path = DEFAULT_PARTNERS_DIR) -> Path:
    """(Re)write ``schema.json`` in ``directory`` from the model; returns its path."""
    path = Path(directory) / SCHEMA_FILE
    path.write_text(mapping_json_schema_text(), encoding="utf-8")
    return path


def _main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "schema":
        print(write_partner_schema(argv[1] if len(argv) > 1 else DEFAULT_PARTNERS_DIR))
        return 0
    if len(argv) >= 1 and argv[0] == "check":
        result = check_partner_directory(argv[1] if len(argv) > 1 else DEFAULT_PARTNERS_DIR)
        print("\n".join(result.lines))
        return 0 if result.ok else 1
    print("usage: python -m gateway.partners (schema|check) [DIR]", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
