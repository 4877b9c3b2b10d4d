"""What every command shares: one-line errors, no tracebacks, the settings option."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Settings file (TOML); default $GATEWAY_CONFIG or ./gateway.toml.",
                 show_default=False),
]


def err(line: str) -> None:
    typer.echo(line, err=True)


def guard(fn):
    """Run a command body; an unexpected fault becomes one line on stderr and exit 2."""
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback
        from gateway.secrets import SecretError
        from gateway.settings import SettingsError

        if isinstance(exc, (SettingsError, SecretError)):
            for line in str(exc).splitlines():
                err(line)
            raise typer.Exit(2) from None
        err(f"gateway: internal error: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from None


def settings(config: Path | None, **overrides):
    from gateway.settings import load_settings

    return load_settings(config, **overrides)


def runtime(config: Path | None, *, migrate: bool = True, **overrides):
    """Settings loaded, the store migrated and connected, secrets resolved."""
    from gateway.runtime import open_runtime

    return open_runtime(settings(config, **overrides), migrate=migrate)
