"""``gateway demo``: interim — translates the fixture files (the full demo replaces it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.commands.common import err as _err, guard as _guard


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        folder: Annotated[Path, typer.Option(help="EDI files to feed.")] = Path("fixtures/edi/demo"),
        partners: Annotated[Path, typer.Option("--partners", "-p", help="Partner mapping files.")] = Path("partners"),
    ) -> None:
        """Run the demo: the example partners' files through translation, with findings and acknowledgments.

        Until the pipeline, the simulators and the panel land, the demo shows the translation core
        at work on the fixture files: what each partner sent, what it became, and what failed.
        """

        def body():
            from translators import translate as run

            from gateway.cli import _load_partners

            directory = _load_partners(partners)
            files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            if not files:
                _err(f"{folder}: no demo files found")
                raise typer.Exit(2)
            typer.echo(f"Partners loaded from {partners}: {', '.join(sorted(p.id for p in directory)) or 'none'}\n")
            for path in files:
                result = run(path.read_bytes(), directory, source=str(path))
                for d in result.documents:
                    doc = d.document or {}
                    number = doc.get("po_number") if d.kind == "purchase_order" else doc.get("invoice_number")
                    who = d.partner or "unknown sender (standard mapping)"
                    mark = {"translated": "done  ", "failed": "FAILED", "ignored": "ignored"}[d.status]
                    typer.echo(f"{mark} {path.name}: {d.type} {number or ''} from {who}, {len(doc.get('lines') or [])} line(s)")
                    for f in d.findings:
                        typer.echo(f"         {f.severity.value}: {f.where()}: {f.message}")
                for f in result.errors():
                    if not any(f in d.findings for d in result.documents):
                        typer.echo(f"FAILED {path.name}: {f.where()}: {f.message}")
            typer.echo("\nTry: .venv/bin/gateway translate fixtures/edi/demo/*.edi --partners partners")

        _guard(body)


