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

    Exit 0 when every file translated; otherwise 1, with one line per error on stderr naming
    the file, the segment and its position, the code and the message.
    """

    def body():
        directory = _load_partners(partners)
        ok = True
        out = sys.stdout
        out.write("[")
        first = True
        for path, result in _translations(files, directory):
            if result is None:
                ok = False
                continue
            for doc in result.canonical:
                out.write(("\n" if first else ",\n") + json.dumps(doc, ensure_ascii=False, indent=2))
                first = False
            errors = result.errors()
            if errors:
                ok = False
                for f in errors:
                    _err(f.describe(str(path)))
            elif not result.ok:
                ok = False
                _err(f"{path}: not translated")
        out.write("\n]\n" if not first else "]\n")
        out.flush()
        if not ok:
            raise typer.Exit(1)

    _guard(body)


@app.command()
def validate(
    files: Files,
    partners: PartnersOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check EDI files: print every finding and the acknowledgment that would be sent."""

    def body():
        from translators.acks import build_acknowledgment

        directory = _load_partners(partners)
        now = datetime.now(timezone.utc)
        ok = True
        reports = []
        for path, result in _translations(files, directory):
            if result is None:
                ok = False
                continue
            ok = ok and result.ok
            findings = list(result.file_findings)
            for i in result.interchanges:
                findings += i.findings
            for d in result.documents:
                findings += d.findings
            findings.sort(key=lambda f: f.segment_index or 0)
            acks = []
            for n, i in enumerate(result.interchanges, 1):
                ack = build_acknowledgment(
                    i.summary, now=now, interchange_control=f"{n:09d}", group_control=str(n)
                )
                if ack is not None:
                    acks.append(ack)
            if as_json:
                reports.append(
                    {
                        "file": str(path),
                        "ok": result.ok,
                        "documents": [
                            {"type": d.type, "control": d.control, "status": d.status, "partner": d.partner}
                            for d in result.documents
                        ],
                        "findings": [f.to_dict() for f in findings],
                        "acknowledgments": [{"kind": a.kind, "text": a.text} for a in acks],
                    }
                )
                continue
            verdict = "ok" if result.ok else "REJECTED" if not result.documents else "has errors"
            typer.echo(f"{path}: {verdict} — {len(result.documents)} document(s), {len(findings)} finding(s)")
            for d in result.documents:
                typer.echo(f"  {d.type} {d.control.get('message') or '?'}: {d.status}" + (f" (partner {d.partner})" if d.partner else ""))
            for f in findings:
                typer.echo(f"  {f.severity.value:7} {f.where()}: {f.code}: {f.message}")
            for a in acks:
                typer.echo(f"  acknowledgment ({a.kind}):")
                for line in a.text.splitlines():
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
