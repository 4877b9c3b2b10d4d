"""``gateway check``: ping the real systems with the configured credentials; a green/red table."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from gateway.commands.common import ConfigOption, guard, runtime

_MARK = {"ok": ("ok", "green"), "fail": ("FAIL", "red"), "skip": ("skip", "yellow")}


def register(app: typer.Typer) -> None:
    @app.command()
    def check(
        config: ConfigOption = None,
        system: Annotated[list[str] | None, typer.Option(
            "--system", "-s", help="Only this system (a kind such as plex, or sterling:b2bi); repeatable.")] = None,
        probe_duplicates: Annotated[bool, typer.Option(
            "--probe-duplicates", help="TEST TENANT ONLY: create probe POs through each Plex SOAP data source "
                                       "the gateway writes through, to see what a repeated create does.")] = False,
        supplier: Annotated[str | None, typer.Option(
            help="Plex supplier code for the probe PO (default: a partner file's, else the cached master's).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every call on stderr too.")] = False,
    ) -> None:
        """Check every configured source and destination with its credentials: sign-in, listings,
        permissions, ids and columns. Exit 0 when all is green, 1 when any line is red."""

        def body():
            from gateway.check import check_systems
            from gateway.logging import configure_logging

            rt = runtime(config)
            # The clients log each call; here the table is what a person reads (--verbose: the calls too).
            configure_logging(rt.settings, stream=None if verbose else _Nowhere())
            try:
                reports = check_systems(rt, probe_duplicates=probe_duplicates, supplier=supplier,
                                        only=set(system) if system else None)
            finally:
                rt.engine.dispose()
            if as_json:
                typer.echo(json.dumps([r.as_dict() for r in reports], indent=2, ensure_ascii=False))
            else:
                _table(reports)
            if not reports:
                typer.echo("nothing configured to check" if not system else f"no system named {', '.join(system)}",
                           err=True)
                raise typer.Exit(2)
            if not all(r.ok for r in reports):
                raise typer.Exit(1)

        guard(body)


class _Nowhere:
    """A log stream that keeps nothing."""

    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def _table(reports) -> None:
    width_system = max([len(r.system) for r in reports] + [6])
    width_name = max([len(line.name) for r in reports for line in r.lines] + [5])
    for r in reports:
        for n, line in enumerate(r.lines):
            word, colour = _MARK[line.status]
            mark = typer.style(f"{word:4}", fg=colour, bold=line.status == "fail")
            system = r.system if n == 0 else ""
            typer.echo(f"{system:{width_system}}  {mark}  {line.name:{width_name}}  {line.detail}")
    failed = sum(1 for r in reports for line in r.lines if line.status == "fail")
    typer.echo(f"\n{len(reports)} system(s), "
               + (typer.style(f"{failed} red line(s)", fg="red", bold=True) if failed
                  else typer.style("all green", fg="green")))
