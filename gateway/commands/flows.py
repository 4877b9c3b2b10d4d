"""``gateway flows list | check | run NAME | replay NAME RUN | on NAME | off NAME``: record flows."""

from __future__ import annotations

import base64
import time
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from gateway.commands.common import ConfigOption, err, guard, runtime, settings


Dir = Annotated[Path | None, typer.Option("--flows", help="Folder of flow files; default the settings' flows_dir.")]


def _fail(line: str, code: int = 2) -> None:
    err(line)
    raise typer.Exit(code)


def _flows(directory: Path):
    from gateway.flows.files import FlowFileError, load_flow_directory

    try:
        return load_flow_directory(directory)
    except FlowFileError as exc:
        for p in exc.problems:
            err(str(p))
        raise typer.Exit(2) from None


def _one(directory: Path, name: str):
    flows = _flows(directory)
    if name not in flows:
        _fail(f"no flow {name!r} in {directory} (flows: {', '.join(sorted(flows)) or 'none'})")
    return flows[name]


def since_watermark(kind: str, text: str) -> str | None:
    """``--since`` as a watermark of the flow's kind: a date for date windows, a rowversion number."""
    if kind == "rowversion":
        if not text.isdigit():
            raise ValueError(f"--since {text!r}: this flow reads by rowversion; give the counter (0: everything)")
        return base64.b64encode(int(text).to_bytes(8, "big")).decode()
    if kind == "snapshot":
        raise ValueError("--since: this flow reads its whole table every run; there is nothing to start from")
    try:
        return f"{date.fromisoformat(text[:10]).isoformat()}T00:00:00Z"
    except ValueError:
        raise ValueError(f"--since {text!r}: give a date, YYYY-MM-DD") from None


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=not console.is_terminal, disable=not console.is_terminal)
    tasks: dict[str, int] = {}

    def update(phase: str, done: int, total: int | None) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)
    return bar, update


def register(app: typer.Typer) -> None:
    flows_app = typer.Typer(help="Record flows: SYSPRO and Plex records into Anaplan (flows/*.yaml).",
                            no_args_is_help=True)
    app.add_typer(flows_app, name="flows")

    @flows_app.command("check")
    def check(directory: Annotated[Path | None, typer.Argument(help="Folder of flow files.")] = None,
              config: ConfigOption = None,
              connect: Annotated[bool, typer.Option(help="Also log on to each flow's source.")] = False) -> None:
        """Validate every flow file; exit 1 when one has a problem."""
        def body() -> None:
            from gateway.flows.files import check_flow_directory

            folder = directory or (settings(config).flows_dir if config or connect else Path("flows"))
            ok, lines = check_flow_directory(folder)
            for line in lines:
                typer.echo(line)
            if ok and connect:
                from gateway.flows import make_source

                s = settings(config)
                for name, ff in sorted(_flows(folder).items()):
                    source = make_source(s, ff)
                    try:
                        for line in source.check():
                            typer.echo(f"ok   {name}: {line}")
                    finally:
                        source.close()
            raise typer.Exit(0 if ok else 1)
        guard(body)

    @flows_app.command("list")
    def list_(config: ConfigOption = None, flows: Dir = None) -> None:
        """Each flow: source, target, mode, schedule, switch, watermark and its last run."""
        def body() -> None:
            from gateway.flows.status import flow_statuses

            rt = runtime(config)
            try:
                rows = flow_statuses(rt.engine, _flows(flows or rt.settings.flows_dir))
            finally:
                rt.engine.dispose()
            if not rows:
                typer.echo("no flows")
            for s in rows:
                typer.echo(f"{s.name}: {s.source} -> {s.target}, {s.mode}, {s.schedule}, {'on' if s.enabled else 'off'}"
                           f"; watermark {s.watermark or '-'}; last run {s.last_run or 'never'}")
        guard(body)

    @flows_app.command("run")
    def run(name: Annotated[str, typer.Argument(help="The flow's name.")],
            config: ConfigOption = None, flows: Dir = None,
            once: Annotated[bool, typer.Option("--once", help="One run, then exit (default: on its schedule).")] = False,
            since: Annotated[str | None, typer.Option(help="Read from this date (or rowversion) this time.")] = None,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Map a sample pulled live; send nothing.")] = False,
            sample: Annotated[int, typer.Option(help="Records in a dry run's sample.")] = 20) -> None:
        """Run a flow: read what changed, send it to Anaplan, advance the watermark once confirmed."""
        def body() -> None:
            from gateway.flows import open_flow
            from gateway.flows.runner import FlowBusy
            from gateway.logging import configure_logging
            from gateway.runtime import instance_id

            rt = runtime(config)
            configure_logging(rt.settings)
            ff = _one(flows or rt.settings.flows_dir, name)
            start = None
            if since is not None:
                try:
                    start = since_watermark(ff.flow.source.changes.kind, since)
                except ValueError as exc:
                    _fail(str(exc))
            bar, update = _progress_bar()
            runner = open_flow(rt.settings, rt.engine, ff, owner=instance_id("flows"), progress=update,
                               lease_seconds=rt.settings.flows_lease_seconds)
            try:
                if dry_run:
                    result = runner.dry_run(sample)
                    typer.echo(" | ".join(result.headers))
                    for key, row, problem in result.rows:
                        typer.echo(f"{key}: {' | '.join(row) if row else 'PROBLEM ' + str(problem)}")
                    for note in result.notes:
                        typer.echo(f"note: {note}")
                    typer.echo(f"dry run {'clean' if result.ok else 'with problems'}: {len(result.rows)} records")
                    raise typer.Exit(0 if result.ok else 1)
                while True:
                    try:
                        with bar:
                            report = runner.run(since=start)
                    except FlowBusy as exc:
                        _fail(str(exc), 1)
                    typer.echo(report.line())
                    for note in report.notes:
                        typer.echo(f"note: {note}")
                    if once or not ff.flow.schedule.every_minutes:
                        raise typer.Exit(0 if report.state == "done" else 1)
                    start = None
                    time.sleep(ff.flow.schedule.every_minutes * 60)
            finally:
                runner.source.close()
                rt.engine.dispose()
        guard(body)

    @flows_app.command("replay")
    def replay(name: str, run_id: int, config: ConfigOption = None, flows: Dir = None,
               actor: Annotated[str | None, typer.Option(help="Who asks (default: your user name).")] = None) -> None:
        """Send a failed run's records (or a done run's rejected ones) again from the store."""
        def body() -> None:
            from gateway.commands.pipeline import _default_actor
            from gateway.flows import open_flow
            from gateway.runtime import instance_id

            rt = runtime(config)
            ff = _one(flows or rt.settings.flows_dir, name)
            runner = open_flow(rt.settings, rt.engine, ff, owner=instance_id("flows"),
                               lease_seconds=rt.settings.flows_lease_seconds)
            try:
                report = runner.replay(run_id, actor=actor or _default_actor())
            except (ValueError, RuntimeError) as exc:
                _fail(str(exc))
            finally:
                rt.engine.dispose()
            typer.echo(report.line())
            raise typer.Exit(0 if report.state == "done" else 1)
        guard(body)

    @flows_app.command("drift")
    def drift(config: ConfigOption = None,
              check: Annotated[bool, typer.Option("--check", help="Compare now (lists read back, partners).")] = False
              ) -> None:
        """Reference data drift: Anaplan lists and partners' Plex suppliers against the ERP master."""
        def body() -> None:
            from gateway.flows.drift import open_drift, scan_all

            rt = runtime(config)
            try:
                if check:
                    for report in scan_all(rt.settings, rt.engine, rt.partners()):
                        typer.echo(report.line())
                rows = open_drift(rt.engine)
            finally:
                rt.engine.dispose()
            for r in rows:
                typer.echo(f"#{r.id} {r.kind} {r.subject} {r.key}: {r.issue.replace('_', ' ')}; theirs {r.theirs}; "
                           f"ERP {r.erp or 'none'}" + ("; write-back proposed (approve it in the panel)"
                                                       if r.proposal else ""))
            if not rows:
                typer.echo("no open differences")
        guard(body)

    for verb, on in (("on", True), ("off", False)):
        def switch(name: str, config: ConfigOption = None, flows: Dir = None, _on: bool = on) -> None:
            def body() -> None:
                from gateway.commands.pipeline import _default_actor
                from gateway.flows.runner import set_enabled

                rt = runtime(config)
                try:
                    set_enabled(rt.engine, _one(flows or rt.settings.flows_dir, name), _on, _default_actor())
                except ValueError as exc:
                    _fail(str(exc))
                finally:
                    rt.engine.dispose()
                typer.echo(f"{name}: {'on' if _on else 'off'}")
            guard(body)
        switch.__doc__ = ("Switch a flow on (it needs a clean dry run of the file as it is)." if on
                          else "Switch a flow off (its schedule stops; runs by hand still work).")
        flows_app.command(verb)(switch)
