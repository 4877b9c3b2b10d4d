"""``gateway alerts``: send a test alert, look once now, list what was noticed."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.commands.common import ConfigOption, err, guard, runtime


def _alert_settings(rt, command: str):
    cfg = rt.settings.alerts
    if cfg is None:
        rt.engine.dispose()
        err(f"gateway alerts {command}: no [alerts] section in the settings (see gateway.example.toml)")
        raise typer.Exit(2)
    return cfg


def register(app: typer.Typer) -> None:
    alerts_app = typer.Typer(help="Alerts by webhook and e-mail: test the channels, look now, list.",
                             no_args_is_help=True)
    app.add_typer(alerts_app, name="alerts")

    @alerts_app.command("test")
    def alerts_test(
        config: ConfigOption = None,
        actor: Annotated[str | None, typer.Option(help="Who sends it (default: your user name).")] = None,
    ) -> None:
        """Send a test alert through every configured channel now; exit 1 if any did not take it."""

        def body():
            from gateway.alerts import send_test
            from gateway.commands.pipeline import _default_actor

            rt = runtime(config)
            try:
                results = send_test(_alert_settings(rt, "test"), actor=actor or _default_actor(), engine=rt.engine)
            finally:
                rt.engine.dispose()
            for r in results:
                (typer.echo if r.ok else err)(f"{r.channel}: {r.detail}")
            if any(not r.ok for r in results):
                raise typer.Exit(1)

        guard(body)

    @alerts_app.command("scan")
    def alerts_scan(config: ConfigOption = None) -> None:
        """Look at the store once now and send what is due (as the running gateway does every minute)."""

        def body():
            from gateway.alerts.scanner import Scanner
            from gateway.runtime import instance_id

            rt = runtime(config)
            try:
                cfg = _alert_settings(rt, "scan")
                report = Scanner(rt.engine, cfg, rt.settings.source_names(), owner=instance_id("alerts")).scan()
            finally:
                rt.engine.dispose()
            if not report.scanned:
                typer.echo(f"another process is looking right now ({report.held_by or 'lease held'}); nothing done")
                return
            typer.echo(f"{report.noticed} noticed, {report.sent} sent, {report.held} summed up (hourly limit), "
                       f"{report.failed} not sent")
            for e in dict.fromkeys(report.errors):
                err(e)
            if report.failed:
                raise typer.Exit(1)

        guard(body)

    @alerts_app.command("list")
    def alerts_list(
        config: ConfigOption = None,
        limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 30,
    ) -> None:
        """The newest alerts: when, what, whether it was sent."""

        def body():
            from gateway.alerts import recent_alerts

            rt = runtime(config)
            try:
                rows = recent_alerts(rt.engine, limit)
            finally:
                rt.engine.dispose()
            if not rows:
                typer.echo("no alerts yet")
            for r in rows:
                typer.echo(f"{r.created_at:%Y-%m-%d %H:%M} {r.status:9} {r.kind:17} {r.title}")

        guard(body)
