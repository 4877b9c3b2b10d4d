"""``gateway demo``: the whole gateway on one machine, against the simulators, in one command.

It starts the Sterling, Plex and Anaplan simulators on loopback, writes a configuration (its
credentials stored encrypted in the vault, the file refers to them), creates an operator login
for the panel, drops the example partners' EDI files into a local drop folder (and one into the
Sterling mailbox), and runs pollers, workers and the panel with the same code as ``gateway run``.
It prints what happens to each document, then keeps running until Ctrl-C
(``--exit-when-settled`` stops once every document has come to rest; the tests use it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from gateway.commands.common import err, guard

#: The file that arrives through the Sterling mailbox (an unknown sender: no acknowledgment to route);
#: the others go to the local drop folder.
STERLING_FILE = "globex-unknown-810-77-5510.x12"
STERLING_MAILBOX = "/EDI_VAN/Inbox"
DEMO_USER = "operator"


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def to_toml(values: dict, prefix: str = "") -> str:
    """Settings as TOML: scalars first, then tables, then arrays of tables (enough for gateway.toml)."""
    scalars = {k: v for k, v in values.items()
               if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))}
    text = "".join(f"{toml_value(str(k))} = {toml_value(v)}\n" for k, v in scalars.items())
    for key, value in values.items():
        name = f"{prefix}.{toml_value(str(key))}" if prefix else toml_value(str(key))
        if isinstance(value, dict):
            text += f"\n[{name}]\n" + to_toml(value, name)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                text += f"\n[[{name}]]\n" + to_toml(item, name)
    return text


def demo_settings(*, data: Path, partners: Path, port: int, sandbox, drop: Path, syspro: dict | None = None) -> dict:
    """The demo's settings: every credential a ``secret:`` reference into the vault."""
    plex = sandbox.plex_settings(api_key="secret:plex-api-key")
    plex["soap"] = {**plex["soap"], "password": "secret:plex-soap-password"}
    flows = {"flows_dir": str(data / "flows"), "syspro": [syspro]} if syspro else {}
    return {
        "data_dir": str(data), "partners_dir": str(partners), "log_level": "WARNING", **flows,
        "workers": {"count": 2, "batch_size": 100, "idle_seconds": 0.2, "backoff_initial": 1.0, "backoff_max": 10.0},
        "web": {"host": "127.0.0.1", "port": port},
        "local": [{"name": "demo-drop", "path": str(drop), "archive_path": str(data / "archive"),
                   "outbound_path": str(data / "outbound" / "{partner}"), "interval_seconds": 1.0}],
        "sterling": [sandbox.sterling_source("van-mailbox", [STERLING_MAILBOX], password="secret:sterling-password",
                                             interval_seconds=2.0)],
        "plex": plex,
        "anaplan": sandbox.anaplan_settings(poll_interval=1.0, max_age=3.0, password="secret:anaplan-password"),
    }


def store_secrets(url: str, key_file: Path) -> None:
    """The simulators' (published, fake) credentials into the vault, as ``gateway secrets set`` would."""
    from gateway.integrations.anaplan.simulator.app import DEFAULT_PASSWORD
    from gateway.sandbox.environment import STERLING_PASSWORD
    from gateway.integrations.plex.simulator.app import SIM_API_KEY, SIM_SOAP_PASSWORD
    from gateway.secrets import Vault, load_key
    from gateway.store.db import make_engine, upgrade

    upgrade(url)
    engine = make_engine(url)
    vault = Vault(engine, load_key(key_file))
    from gateway.integrations.syspro.simulator import ODATA_PASSWORD

    for name, value in (("plex-api-key", SIM_API_KEY), ("plex-soap-password", SIM_SOAP_PASSWORD),
                        ("anaplan-password", DEFAULT_PASSWORD), ("sterling-password", STERLING_PASSWORD),
                        ("syspro-odata-password", ODATA_PASSWORD)):
        vault.set(name, value)
    engine.dispose()


def _create_login(data: Path) -> str | None:
    """An operator login for the panel; None when this build has no panel."""
    try:
        from gateway.web.security import hash_password
    except ImportError:
        return None
    from sqlmodel import select

    from gateway.store.db import make_engine, sqlite_url, transaction
    from gateway.store.models import User

    password = secrets.token_urlsafe(12)
    engine = make_engine(sqlite_url(data))
    with transaction(engine) as s:
        user = s.exec(select(User).where(User.username == DEMO_USER)).first() or User(
            username=DEMO_USER, password_hash="", role="operator")
        user.password_hash, user.role, user.disabled = hash_password(password), "operator", False
        s.add(user)
    engine.dispose()
    return password


def _feed(fixtures: Path, drop: Path, sandbox) -> list[str]:
    files = sorted(p for p in fixtures.iterdir() if p.is_file())
    drop.mkdir(parents=True, exist_ok=True)
    old = time.time() - 60  # finished files: the poller takes them on first sight
    for path in files:
        if path.name == STERLING_FILE and sandbox.sterling is not None:
            sandbox.sterling.deposit(STERLING_MAILBOX, path.name, path.read_bytes())
            continue
        target = drop / path.name
        shutil.copyfile(path, target)
        os.utime(target, (old, old))
    return [p.name for p in files]


class Progress:
    """Prints what the store says, as it changes; ``settled`` once everything fed has come to rest."""

    def __init__(self, data: Path, expected_files: int, out=typer.echo) -> None:
        from gateway.store.db import make_engine, sqlite_url

        self.engine = make_engine(sqlite_url(data))
        self.expected = expected_files
        self.out = out
        self.started = time.monotonic()
        self.settled = threading.Event()
        self._last: str | None = None
        self.deliveries: dict[int, list] = {}

    def snapshot(self) -> tuple[int, list]:
        from sqlmodel import Session, select

        from gateway.store.models import Delivery, Document, Interchange

        with Session(self.engine) as s:
            received = s.exec(select(Interchange.state)).all()
            docs = s.exec(select(Document).order_by(Document.id)).all()
            self.deliveries = {}
            for d in s.exec(select(Delivery).order_by(Delivery.position)).all():
                self.deliveries.setdefault(d.document_id, []).append(d)
        return len([r for r in received if r != "received"]), docs

    def tick(self) -> bool:
        from gateway.pipeline.machine import RESTING

        split, docs = self.snapshot()
        counts = Counter(d.state for d in docs)
        line = (f"[{time.monotonic() - self.started:5.1f}s] files {split}/{self.expected} · documents: "
                + (", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none yet"))
        if line.split("] ", 1)[1] != (self._last or "").split("] ", 1)[-1]:
            self.out(line)
            self._last = line
        resting = {s.value for s in RESTING}
        done = split >= self.expected and docs and all(d.state in resting for d in docs)
        if done and not self.settled.is_set():
            self.settled.set()
            self.report(docs)
        return bool(done)

    def report(self, docs) -> None:
        self.out("\nEvery document has come to rest:")
        for d in docs:
            number = d.invoice_number or d.po_number or "?"
            went = ", ".join(f"{x.destination}: {x.reference or x.state}" for x in self.deliveries.get(d.id, []))
            where = {"done": went or "delivered nowhere (no destination is configured for it)",
                     "needs_attention": "waits for a person to choose the Plex supplier (panel: Needs attention)",
                     "failed": f"failed at {d.stage}: {d.error}"}.get(d.state, d.error or "")
            self.out(f"  #{d.id:<3} {d.partner or 'unknown sender':18} {d.message_type or d.kind or '?':7} "
                     f"{number:14} {d.state:16} {where}")

    def close(self) -> None:
        self.engine.dispose()


DEMO_STOCK_ROWS = 20_000


def _start_flows(data: Path, sandbox) -> tuple[object, object, dict]:
    """The SYSPRO simulator, the flows' imports in the Anaplan simulator, the example flow file."""
    from gateway.integrations.plex.simulator.records import seed_records
    from gateway.sandbox.flows import (
        add_flow_actions, add_flow_imports, plex_flow_text, start_syspro, stock_flow_text, syspro_settings,
    )

    syspro, server = start_syspro(warehouse_rows=DEMO_STOCK_ROWS)
    add_flow_imports(sandbox.anaplan.tenant.models[0])
    add_flow_actions(sandbox.anaplan)
    seed_records(sandbox.plex)
    (data / "flows").mkdir(parents=True, exist_ok=True)
    (data / "flows" / "syspro-stock.yaml").write_text(stock_flow_text(poll_seconds=1.0), encoding="utf-8")
    (data / "flows" / "plex-parts.yaml").write_text(plex_flow_text("parts", poll_seconds=1.0), encoding="utf-8")
    settings = syspro_settings(syspro, server)
    settings["odata"] = {**settings["odata"], "password": "secret:syspro-odata-password"}
    return syspro, server, settings


def _run_flows(config: Path, out=typer.echo) -> bool:
    """Each example flow once, with what moved; True when every run was confirmed by Anaplan."""
    from gateway.flows import load_flow_directory, open_flow
    from gateway.runtime import instance_id, open_runtime
    from gateway.settings import load_settings

    rt = open_runtime(load_settings(config), migrate=False)  # migrated already; alembic is not thread-safe
    ok = True
    try:
        for name, ff in sorted(load_flow_directory(rt.settings.flows_dir).items()):
            runner = open_flow(rt.settings, rt.engine, ff, owner=instance_id("demo-flows"))
            try:
                report = runner.run(actor="demo")
            finally:
                runner.source.close()
            source = f"{ff.flow.source.system.upper()} {ff.flow.source.entity}"
            out(f"Record flow {name}: {source} -> Anaplan {ff.flow.target.kind} "
                f"{ff.flow.target.import_id or ff.flow.target.process_id or ff.flow.target.list_id}: {report.seen} read, "
                f"{report.sent} sent, {report.failed} rejected, {report.state} "
                f"({report.source_requests} source and {report.anaplan_requests} Anaplan requests, "
                f"{report.seconds:.1f} s)")
            ok = ok and report.state == "done"
    finally:
        rt.engine.dispose()
    return ok


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        data_dir: Annotated[Path | None, typer.Option(
            "--data-dir", help="Where the demo keeps its store and files (default: a new temporary folder).")] = None,
        fixtures: Annotated[Path, typer.Option(help="EDI files to feed.")] = Path("fixtures/edi/demo"),
        partners: Annotated[Path, typer.Option("--partners", "-p", help="Partner mapping files.")] = Path("partners"),
        port: Annotated[int, typer.Option(help="The panel's port (another free one if taken).")] = 8080,
        exit_when_settled: Annotated[bool, typer.Option(
            "--exit-when-settled", help="Stop once every document has come to rest (for tests).")] = False,
        timeout: Annotated[float, typer.Option(help="With --exit-when-settled: give up after this many seconds.")] = 120.0,
    ) -> None:
        """Run the gateway against the Sterling, Plex and Anaplan simulators with the example partners.

        Prints the panel's address and an operator login, then what happens to each document: the
        good ones reach Plex and Anaplan, the broken one fails with its reason, the one from an
        unknown supplier waits for a person. Ctrl-C stops it.
        """

        def body():
            from gateway.commands.pipeline import serve
            from gateway.sandbox.environment import start_sandbox

            if not fixtures.is_dir() or not any(fixtures.iterdir()):
                err(f"gateway demo: {fixtures}: no demo files found (run it from the repository root)")
                raise typer.Exit(2)
            if not partners.is_dir():
                err(f"gateway demo: {partners}: no partner folder (run it from the repository root)")
                raise typer.Exit(2)
            data = (data_dir or Path(tempfile.mkdtemp(prefix="gateway-demo-"))).resolve()
            data.mkdir(parents=True, exist_ok=True)
            drop = data / "drop"
            web_port = _free_port(port)
            typer.echo("Starting the Sterling, Plex and Anaplan simulators on 127.0.0.1 ...")
            sandbox = start_sandbox(plex_rate_limit=200, sterling_mailboxes=(STERLING_MAILBOX,))
            progress = None
            syspro_server = None
            flows_done = threading.Event()
            flows_ok = [False]
            try:
                _syspro, syspro_server, syspro_settings = _start_flows(data, sandbox)
                from gateway.store.db import sqlite_url

                store_secrets(sqlite_url(data), data / "secret.key")
                config = data / "gateway.toml"
                settings = demo_settings(data=data, partners=partners.resolve(), port=web_port, sandbox=sandbox,
                                         drop=drop, syspro=syspro_settings)
                config.write_text("# Written by `gateway demo`: the simulators on loopback, the example partners.\n"
                                  + to_toml(settings), encoding="utf-8")
                password = _create_login(data)
                typer.echo(f"  Plex      {sandbox.plex.base_url}  (REST, SOAP at {sandbox.plex.soap_url})")
                typer.echo(f"  Anaplan   {sandbox.anaplan_url}")
                typer.echo(f"  Sterling  {sandbox.sterling.server.base_url}  (mailbox {STERLING_MAILBOX})")
                typer.echo(f"  SYSPRO    {syspro_server.base_url}  (OData and e.net; {DEMO_STOCK_ROWS} InvWarehouse rows)")
                typer.echo(f"Data, store and configuration in {data}")
                if password:
                    typer.echo(f"\nPanel: http://127.0.0.1:{web_port}/   login: {DEMO_USER} / {password}\n")
                else:
                    typer.echo("\nPanel: not part of this build\n")
                names = _feed(fixtures, drop, sandbox)
                typer.echo(f"Fed {len(names)} EDI files: {STERLING_FILE} into the Sterling mailbox, the others "
                           f"into {drop}")
                progress = Progress(data, len(names))
                stop_watch = threading.Event()
                deadline = time.monotonic() + timeout

                def flows() -> None:
                    try:
                        flows_ok[0] = _run_flows(config)
                    except Exception as exc:  # noqa: BLE001 - said, and the demo goes on with the EDI part
                        err(f"record flows: {type(exc).__name__}: {exc}")
                    finally:
                        flows_done.set()

                threading.Thread(target=flows, name="demo-flows", daemon=True).start()

                def watch() -> None:
                    while not stop_watch.wait(1.0):
                        try:
                            settled = progress.tick() and flows_done.is_set()
                        except Exception as exc:  # noqa: BLE001 - the store is busy starting up: try again
                            settled = False
                            err(f"(progress unavailable: {type(exc).__name__})")
                        if exit_when_settled and (settled or time.monotonic() > deadline):
                            if not settled:
                                err(f"gateway demo: not settled after {timeout:.0f} s")
                            os.kill(os.getpid(), signal.SIGINT)  # serve() stops cleanly on it
                            return

                watcher = threading.Thread(target=watch, name="demo-progress", daemon=True)
                watcher.start()
                if not exit_when_settled:
                    typer.echo("Running; press Ctrl-C to stop.\n")
                serve(config, poll=True, workers=None, web=True, what="demo")
                stop_watch.set()
                watcher.join(5)
            finally:
                sandbox.close()
                if syspro_server is not None:
                    syspro_server.stop()
                if progress is not None:
                    progress.close()
            typer.echo(f"Stopped. The store and files are in {data}")
            if exit_when_settled and not (progress.settled.is_set() and flows_ok[0]):
                raise typer.Exit(1)

        guard(body)
