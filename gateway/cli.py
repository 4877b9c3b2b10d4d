"""The ``gateway`` command line.

Every command catches what goes wrong and says it in one line: no traceback reaches the user.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from gateway.commands.common import err as _err
from gateway.commands.common import guard as _guard

app = typer.Typer(
    help="EDI translation gateway: X12 and EDIFACT purchase orders and invoices into Plex and Anaplan.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
partners_app = typer.Typer(help="Trading partner mapping files.", no_args_is_help=True)
app.add_typer(partners_app, name="partners")

PartnersOption = Annotated[
    Path | None,
    typer.Option("--partners", "-p", help="Folder of partner mapping files (YAML).", envvar="GATEWAY_PARTNERS"),
]
Files = Annotated[list[Path], typer.Argument(help="EDI files to read.", show_default=False)]


def _load_partners(folder: Path | None):
    from translators.mapping import PartnerDirectory

    if folder is None:
        return PartnerDirectory()
    from gateway.partners import PartnerLoadError, load_partner_directory

    try:
        return load_partner_directory(folder)
    except PartnerLoadError as exc:
        for line in str(exc).splitlines():
            _err(line)
        raise typer.Exit(2) from None
    except OSError as exc:
        _err(f"{folder}: cannot read the partner folder: {exc.strerror or exc}")
        raise typer.Exit(2) from None


def _translations(files: list[Path], directory):
    """(path, translation) per file; the translation is None for a file that cannot be read (already said)."""
    from translators import translate as run

    for path in files:
        data = _read(path)
        yield path, (None if data is None else run(data, directory, source=str(path)))


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        _err(f"{path}: is a folder, not a file")
    except FileNotFoundError:
        _err(f"{path}: no such file")
    except OSError as exc:
        _err(f"{path}: cannot be read: {exc.strerror or exc}")
    return None


@app.command()
def translate(files: Files, partners: PartnersOption = None) -> None:
    """Translate EDI files into canonical documents: a JSON array on stdout.

    Files are streamed (read in 1 MB chunks, each document written as it is made). Exit 0 when
    every file translated; otherwise 1, with one line per error on stderr naming the file, the
    segment and its position, the code and the message.
    """

    def body():
        from gateway.commands.translating import translate_file

        directory = _load_partners(partners)
        ok = True
        out = sys.stdout.buffer
        out.write(b"[")
        first = [True]
        for path in files:
            if not _readable_file(path):
                ok = False
                continue
            try:
                ok = translate_file(path, directory, out, first, _err) and ok
            except OSError as exc:
                _err(f"{path}: cannot be read: {exc.strerror or exc}")
                ok = False
        out.write(b"]\n" if first[0] else b"\n]\n")
        out.flush()
        if not ok:
            raise typer.Exit(1)

    _guard(body)


def _readable_file(path: Path) -> bool:
    if path.is_dir():
        _err(f"{path}: is a folder, not a file")
    elif not path.exists():
        _err(f"{path}: no such file")
    else:
        return True
    return False


@app.command()
def validate(
    files: Files,
    partners: PartnersOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check EDI files: print every finding and the acknowledgment that would be sent (streamed)."""

    def body():
        from gateway.commands.translating import validate_file

        directory = _load_partners(partners)
        now = datetime.now(timezone.utc)
        ok = True
        reports = []
        for path in files:
            if not _readable_file(path):
                ok = False
                continue
            try:
                report = validate_file(path, directory, now)
            except OSError as exc:
                _err(f"{path}: cannot be read: {exc.strerror or exc}")
                ok = False
                continue
            ok = ok and report["ok"]
            findings = report["findings"]
            if as_json:
                reports.append({**report, "findings": [f.to_dict() for f in findings]})
                continue
            docs = report["documents"]
            verdict = "ok" if report["ok"] else "REJECTED" if not docs else "has errors"
            typer.echo(f"{path}: {verdict} — {len(docs)} document(s), {len(findings)} finding(s)")
            for d in docs:
                typer.echo(f"  {d['type'] or '?'} {d['control'].get('message') or '?'}: {d['status']}"
                           + (f" (partner {d['partner']})" if d["partner"] else ""))
            for f in findings:
                typer.echo(f"  {f.severity.value:7} {f.where()}: {f.code}: {f.message}")
            for a in report["acknowledgments"]:
                typer.echo(f"  acknowledgment ({a['kind']}):")
                for line in a["text"].splitlines():
                    typer.echo(f"    {line}")
        if as_json:
            typer.echo(json.dumps(reports, indent=2, ensure_ascii=False))
        if not ok:
            raise typer.Exit(1)

    _guard(body)


@partners_app.command("check")
def partners_check(
    folder: Annotated[Path, typer.Argument(help="Folder of mapping files.")] = Path("partners"),
) -> None:
    """Validate every mapping file in a folder."""

    def body():
        from gateway.partners import check_partner_directory

        ok, lines = check_partner_directory(folder)
        for line in lines:
            (typer.echo if ok else _err)(line)
        if not ok:
            raise typer.Exit(1)

    _guard(body)


from gateway.commands import register_all  # noqa: E402 - the commands below need the helpers above

register_all(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
