"""``gateway reprocess``, ``gateway interchanges``, and the long-running processes:
``gateway run`` (pollers + workers + panel in one process), ``gateway worker``, ``gateway poll``
and ``gateway web`` (each alone, for several processes on PostgreSQL).
"""

from __future__ import annotations

import getpass
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from gateway.commands.common import ConfigOption, err, guard, runtime

_PROGRESS_FROM = 200  # show a progress bar from this many documents
SWITCH_INTERVAL = 0.001  # seconds a thread runs before another may take the interpreter (Python's default: 0.005)


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (a container with an arbitrary uid)
        return f"uid-{os.getuid()}" if hasattr(os, "getuid") else "operator"


def _fail(line: str, code: int = 2) -> None:
    err(line)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    interchanges_app = typer.Typer(help="Interchanges as received: force a duplicate through, retry a failed one.",
                                   no_args_is_help=True)
    app.add_typer(interchanges_app, name="interchanges")
    _register_reprocess(app)
    _register_interchanges(interchanges_app)
    _register_services(app)


def _register_reprocess(app: typer.Typer) -> None:
    """``gateway reprocess``."""

    @app.command()
    def reprocess(
        ids: Annotated[list[str] | None, typer.Argument(help="Document ids.", show_default=False)] = None,
        partner: Annotated[str | None, typer.Option(help="Partner id (mapping file id).")] = None,
        kind: Annotated[str | None, typer.Option(help="purchase_order or invoice.")] = None,
        state: Annotated[str | None, typer.Option(help="Document state, e.g. failed.")] = None,
        stage: Annotated[str | None, typer.Option(help="Stage the document is at or failed at.")] = None,
        since: Annotated[str | None, typer.Option(help="Received on or after (YYYY-MM-DD[THH:MM]).")] = None,
        until: Annotated[str | None, typer.Option(help="Received on or before (YYYY-MM-DD[THH:MM]).")] = None,
        from_stage: Annotated[str | None, typer.Option(
            "--from-stage", help="Restart here instead of at the stage each document failed at.")] = None,
        reason: Annotated[str | None, typer.Option(help="Why (kept in the audit trail). Required.")] = None,
        actor: Annotated[str | None, typer.Option(help="Who (default: your user name).")] = None,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Send documents back through the pipeline, by id or by filter, with a reason.

        Each document resumes at the stage it failed at (or --from-stage); each gets an audit event
        naming you and the reason. Exit 0 when every selected document was sent back, 1 when some
        were skipped (each listed with why), 2 when the request was refused (nothing changed).
        """

        def body():
            from sqlalchemy import func, select as sa_select
            from sqlmodel import Session

            from gateway.operations import Selection, parse_when, reprocess_documents

            if not reason or not reason.strip():
                _fail("gateway reprocess: --reason is required (say why, for the audit trail)")
            doc_ids: list[int] = []
            for raw in ids or []:
                try:
                    doc_ids.append(int(raw))
                except ValueError:
                    _fail(f"gateway reprocess: {raw!r} is not a document id (a whole number)")
            try:
                selection = Selection(
                    ids=tuple(doc_ids), partner=partner, kind=kind, state=state, stage=stage,
                    since=parse_when(since) if since else None,
                    until=parse_when(until, end=True) if until else None,
                )
            except ValueError as exc:
                _fail(f"gateway reprocess: {exc}")
            if selection.empty:
                _fail("gateway reprocess: name the documents: ids, or at least one of --partner --kind --state "
                      "--stage --since --until")
            rt = runtime(config)
            try:
                with Session(rt.engine) as s:
                    try:
                        query = selection.query(s)
                    except ValueError as exc:
                        _fail(f"gateway reprocess: {exc}")
                    total = s.execute(sa_select(func.count()).select_from(query.order_by(None).subquery())).scalar_one()
                if total == 0:
                    _fail(f"gateway reprocess: no document matches ({selection.describe()})", 1)
                where = f"from {from_stage}" if from_stage else "from the stage each is at or failed at"
                if not yes and (total > 1 or not selection.ids):
                    if not sys.stdin.isatty():
                        _fail(f"gateway reprocess: {total} document(s) match ({selection.describe()}); "
                              "add --yes to reprocess them")
                    if not typer.confirm(f"Reprocess {total} document(s) ({selection.describe()}) {where}?"):
                        _fail("gateway reprocess: nothing done", 1)
                who = (actor or _default_actor()).strip()
                if total >= _PROGRESS_FROM:
                    report = _with_progress(total, lambda progress: reprocess_documents(
                        rt.engine, selection, actor=who, reason=reason, from_stage=from_stage, progress=progress))
                else:
                    report = reprocess_documents(rt.engine, selection, actor=who, reason=reason,
                                                 from_stage=from_stage)
            except ValueError as exc:
                _fail(f"gateway reprocess: {exc}")
            finally:
                rt.engine.dispose()
            typer.echo(f"{report.done} document(s) sent back for reprocessing {where} (actor {who})")
            for doc_id, why in report.skipped[:20]:
                err(f"skipped document {doc_id}: {why}")
            if len(report.skipped) > 20:
                err(f"... and {len(report.skipped) - 20} more skipped")
            if report.skipped:
                raise typer.Exit(1)

        guard(body)


def _register_interchanges(interchanges_app: typer.Typer) -> None:
    """``gateway interchanges force|retry``."""

    @interchanges_app.command("force")
    def interchanges_force(
        interchange_id: Annotated[int, typer.Argument(metavar="ID", help="Interchange id.")],
        reason: Annotated[str | None, typer.Option(help="Why (kept in the audit trail). Required.")] = None,
        actor: Annotated[str | None, typer.Option(help="Who (default: your user name).")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Push an interchange recorded as a duplicate through the pipeline after all."""
        _interchange_action("force", interchange_id, reason, actor, config)

    @interchanges_app.command("retry")
    def interchanges_retry(
        interchange_id: Annotated[int, typer.Argument(metavar="ID", help="Interchange id.")],
        reason: Annotated[str | None, typer.Option(help="Why (kept in the audit trail). Required.")] = None,
        actor: Annotated[str | None, typer.Option(help="Who (default: your user name).")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Split a failed interchange again (one that produced no documents)."""
        _interchange_action("retry", interchange_id, reason, actor, config)


def _register_services(app: typer.Typer) -> None:
    """``gateway run|worker|poll|web``."""

    @app.command()
    def run(
        config: ConfigOption = None,
        workers: Annotated[int | None, typer.Option(help="Worker threads (default workers.count).")] = None,
        web: Annotated[bool, typer.Option("--web/--no-web", help="Serve the panel.")] = True,
        poll: Annotated[bool, typer.Option("--poll/--no-poll", help="Poll the sources.")] = True,
    ) -> None:
        """Run the gateway in one process: pollers, workers and the panel's web server."""
        guard(lambda: serve(config, poll=poll, workers=workers, web=web, what="run"))

    @app.command()
    def worker(
        config: ConfigOption = None,
        threads: Annotated[int | None, typer.Option(help="Worker threads (default workers.count).")] = None,
    ) -> None:
        """Run workers only (start several on PostgreSQL: they share the work through leases)."""
        guard(lambda: serve(config, poll=False, workers=threads if threads is not None else -1, web=False,
                            what="worker"))

    @app.command("poll")
    def poll_cmd(
        config: ConfigOption = None,
        once: Annotated[bool, typer.Option("--once", help="Poll every source once, then exit.")] = False,
    ) -> None:
        """Run the source pollers only (each source is polled by one process at a time)."""

        def body():
            if once:
                _poll_once(config)
                return
            serve(config, poll=True, workers=0, web=False, what="poll")

        guard(body)

    @app.command("web")
    def web_cmd(config: ConfigOption = None) -> None:
        """Run the panel's web server only."""
        guard(lambda: serve(config, poll=False, workers=0, web=True, what="web"))



def _interchange_action(action: str, interchange_id: int, reason: str | None, actor: str | None,
                        config: Path | None) -> None:
    def body():
        from gateway.operations import force_duplicate, retry_interchange

        if not reason or not reason.strip():
            _fail(f"gateway interchanges {action}: --reason is required (say why, for the audit trail)")
        rt = runtime(config)
        fn = force_duplicate if action == "force" else retry_interchange
        try:
            ich = fn(rt.engine, interchange_id, actor=(actor or _default_actor()), reason=reason)
        except ValueError as exc:
            _fail(f"gateway interchanges {action}: {exc}")
        finally:
            rt.engine.dispose()
        verb = "forced through" if action == "force" else "queued to be split again"
        typer.echo(f"interchange {ich.id} {verb}")

    guard(body)


def _with_progress(total: int, run):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("reprocessing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task("reprocess", total=total)
        return run(lambda done, _total: bar.update(task, completed=done))


def _poll_once(config: Path | None) -> None:
    from gateway.logging import configure_logging

    rt = runtime(config)
    configure_logging(rt.settings)
    try:
        from gateway.pollers import poll_all_once
    except ImportError as exc:
        _fail(f"gateway poll: the pollers are not available in this build ({exc})")
    try:
        reports = poll_all_once(rt)
    finally:
        rt.engine.dispose()
    failed = False
    for r in reports:
        error = getattr(r, "error", None)
        if not getattr(r, "polled", True):
            typer.echo(f"{r.source}: polled by {getattr(r, 'held_by', None) or 'another process'} right now; skipped")
            continue
        typer.echo(f"{r.source}: {getattr(r, 'taken', 0)} taken" + (f"; error: {error}" if error else ""))
        failed = failed or bool(error)
    if not reports:
        typer.echo("no sources configured")
    if failed:
        raise typer.Exit(1)


def serve(config: Path | None, *, poll: bool, workers: int | None, web: bool, what: str) -> None:
    """Start the chosen parts as threads of this process; stop cleanly on SIGTERM or Ctrl-C.

    ``workers``: None = ``workers.count`` (but 0 is allowed), -1 = ``workers.count`` at least 1.
    """
    from gateway.logging import configure_logging, get_logger
    from gateway.runtime import instance_id

    rt = runtime(config)
    rt.instance = instance_id("gateway" if what == "run" else what)
    # Most of this process's threads wait on sockets and the store. A thread coming back from a
    # wait (holding the SQLite write lock, say) gets the interpreter back within 1 ms instead of 5.
    sys.setswitchinterval(SWITCH_INTERVAL)
    configure_logging(rt.settings)
    log = get_logger("gateway.run").bind(instance=rt.instance)
    stop = threading.Event()
    _install_signal_handlers(stop, log)

    parts: list[tuple[str, threading.Thread]] = []
    server = None
    if workers is not None and workers < 0:
        workers = max(1, rt.settings.workers.count)
    elif workers is None:
        workers = rt.settings.workers.count
    if workers:
        from gateway.pipeline.worker import run_workers

        parts += [("worker", t) for t in run_workers(rt, stop, count=workers)]
    if poll:
        try:
            from gateway.pollers import run_pollers
        except ImportError as exc:
            log.warning("pollers_unavailable", error=str(exc))
        else:
            if not rt.settings.source_names():
                if not workers and not web:
                    rt.engine.dispose()
                    _fail(f"gateway {what}: no sources configured (add [[sterling]], [[sftp]] or [[local]] "
                          "to the settings)")
                log.warning("no_sources_configured")
            t = threading.Thread(target=_logged(run_pollers, log, "pollers"), args=(rt, stop), name="pollers",
                                 daemon=True)
            t.start()
            parts.append(("pollers", t))
    if poll and rt.settings.alerts is not None and rt.settings.alerts.enabled:
        # Alerts ride with the pollers (`gateway run`, `gateway poll`); one process at a time sends.
        from gateway.alerts import run_alerts

        t = threading.Thread(target=_logged(run_alerts, log, "alerts"), args=(rt, stop), name="alerts", daemon=True)
        t.start()
        parts.append(("alerts", t))
    if poll and rt.settings.anaplan is not None and rt.settings.flows_dir.is_dir():
        # Switched-on record flows run on their schedule beside the pollers (one run of a flow at a time).
        from gateway.flows.schedule import run_flow_schedule

        t = threading.Thread(target=_logged(run_flow_schedule, log, "flows"), args=(rt, stop), name="flows",
                             daemon=True)
        t.start()
        parts.append(("flows", t))
    if web:
        server = _start_web(rt, log, parts)
    if not parts:
        rt.engine.dispose()
        _fail(f"gateway {what}: nothing to run (no workers, no pollers, no web server)")
    log.info("started", parts=sorted({name for name, _ in parts}), workers=workers, store=rt.engine.dialect.name)
    failed = False
    try:
        while not stop.wait(0.5):
            dead = [name for name, t in parts if not t.is_alive()]
            if dead:
                # A part that ends on its own (the port taken, a crash) stops the process: a supervisor
                # restarting it is better than a gateway quietly running without its panel or workers.
                log.error("part_stopped_unexpectedly", parts=sorted(set(dead)))
                failed = True
                stop.set()
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        deadline = max(5.0, min(60.0, rt.settings.workers.lease_seconds))
        for name, t in parts:
            t.join(timeout=deadline)
            if t.is_alive():
                log.warning("part_did_not_stop", part=name, thread=t.name)
        from gateway.pipeline.worker import release_leases

        try:
            # Everything this process still holds (a worker stuck past the deadline, say) goes back now.
            released = sum(release_leases(rt.engine, owner) for owner in _owners(rt))
            if released:
                log.info("leases_released", count=released)
        except Exception:  # noqa: BLE001 - they expire anyway
            log.exception("lease_release_failed")
        rt.engine.dispose()
        log.info("stopped", clean=not failed)
    if failed:
        raise typer.Exit(1)


def _owners(rt) -> list[str]:
    from sqlmodel import Session, select

    from gateway.store.models import Document, Interchange

    prefix = rt.instance + "/"
    with Session(rt.engine) as s:
        owners = set(s.exec(select(Document.lease_owner).where(Document.lease_owner.startswith(prefix, autoescape=True)).distinct()))
        owners |= set(s.exec(select(Interchange.lease_owner).where(Interchange.lease_owner.startswith(prefix, autoescape=True))
                             .distinct()))
    return sorted(o for o in owners if o)


def _logged(fn, log, part: str):
    def target(*args):
        try:
            fn(*args)
        except BaseException:  # noqa: BLE001 - uvicorn ends with SystemExit when it cannot bind
            log.exception("part_crashed", part=part)

    return target


def _start_web(rt, log, parts: list):
    try:
        from gateway.web import create_app
    except ImportError as exc:
        log.warning("web_unavailable", error=str(exc))
        return None
    import uvicorn

    from gateway.web.server import server_config

    app = create_app(rt)
    server = uvicorn.Server(server_config(app, rt.settings.web))
    t = threading.Thread(target=_logged(server.run, log, "web"), name="web", daemon=True)
    t.start()
    parts.append(("web", t))
    log.info("web_listening", url=f"http://{rt.settings.web.host}:{rt.settings.web.port}/")
    return server


def _install_signal_handlers(stop: threading.Event, log) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, _frame):
        if stop.is_set():
            log.warning("second_signal_exiting_now", signal=signal.Signals(signum).name)
            os._exit(130)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
