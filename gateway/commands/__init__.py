"""Command groups of the ``gateway`` CLI, one module per area; each has ``register(app)``."""

from __future__ import annotations

import importlib

import typer

MODULES = ("gateway.commands.store", "gateway.commands.pipeline", "gateway.commands.users", "gateway.commands.demo",
           "gateway.commands.alerts", "gateway.commands.flows",
           "gateway.commands.check")


def register_all(app: typer.Typer) -> None:
    for name in MODULES:
        importlib.import_module(name).register(app)
