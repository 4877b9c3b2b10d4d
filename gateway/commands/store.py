"""``gateway db`` and ``gateway secrets``: the store's schema and the encrypted credentials."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gateway.commands.common import ConfigOption, err, guard, settings


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(help="The store (SQLite or PostgreSQL).", no_args_is_help=True)
    secrets_app = typer.Typer(help="Credentials, encrypted at rest.", no_args_is_help=True)
    app.add_typer(db_app, name="db")
    app.add_typer(secrets_app, name="secrets")

    @db_app.command("upgrade")
    def db_upgrade(config: ConfigOption = None) -> None:
        """Create or migrate the store's tables to the latest schema."""

        def body():
            from gateway.store.db import current_revision, make_engine, upgrade

            s = settings(config)
            upgrade(s.store_url)
            engine = make_engine(s.store_url)
            typer.echo(f"store at revision {current_revision(engine)}: {_safe_url(s.store_url)}")
            engine.dispose()

        guard(body)

    def _vault(config):
        from gateway.secrets import Vault, load_key
        from gateway.store.db import make_engine, upgrade

        s = settings(config)
        upgrade(s.store_url)
        return Vault(make_engine(s.store_url), load_key(s.key_file))

    @secrets_app.command("set")
    def secrets_set(
        name: Annotated[str, typer.Argument(help="Secret name; refer to it in settings as \"secret:NAME\".")],
        config: ConfigOption = None,
        from_stdin: Annotated[bool, typer.Option("--stdin", help="Read the value from standard input.")] = False,
    ) -> None:
        """Store a credential encrypted (asked for without echo, or read from stdin)."""

        def body():
            value = sys.stdin.read().rstrip("\r\n") if from_stdin else typer.prompt(
                f"Value for {name}", hide_input=True, confirmation_prompt=True
            )
            if not value:
                err("gateway: an empty secret was not stored")
                raise typer.Exit(2)
            _vault(config).set(name, value)
            typer.echo(f"secret {name} stored (encrypted)")

        guard(body)

    @secrets_app.command("list")
    def secrets_list(config: ConfigOption = None) -> None:
        """The names of stored secrets (never their values)."""

        def body():
            for n in _vault(config).names():
                typer.echo(n)

        guard(body)

    @secrets_app.command("delete")
    def secrets_delete(name: str, config: ConfigOption = None) -> None:
        """Remove a stored secret."""

        def body():
            if not _vault(config).delete(name):
                err(f"gateway: no secret named {name}")
                raise typer.Exit(1)
            typer.echo(f"secret {name} deleted")

        guard(body)


def _safe_url(url: str) -> str:
    """The store URL without a password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1]
