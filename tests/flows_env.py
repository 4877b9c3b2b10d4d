"""Shared by the record-flow tests: the SYSPRO and Anaplan simulators, settings, a runner per flow text."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from gateway.flows import open_flow
from gateway.flows.files import FlowFile, parse_flow_text
from gateway.flows.runner import FlowRunner
from gateway.flows.tables import FlowRecord, FlowRun, FlowState
from gateway.integrations.syspro.simulator import SysproSim
from gateway.integrations.anaplan.simulator.app import AnaplanSimulator
from gateway.sandbox.flows import add_flow_actions, anaplan_settings, flows_tenant, start_syspro, syspro_settings
from gateway.sandbox.server import RunningServer, serve_app
from gateway.settings import Settings


@dataclass
class FlowEnv:
    syspro: SysproSim
    syspro_server: RunningServer
    anaplan: AnaplanSimulator
    anaplan_server: RunningServer
    engine: Engine
    data_dir: Path

    def settings(self, **syspro: Any) -> Settings:
        return Settings(data_dir=self.data_dir, anaplan=anaplan_settings(self.anaplan_server.base_url),
                        syspro=[syspro_settings(self.syspro, self.syspro_server, **syspro)])

    def runner(self, text: str, *, settings: Settings | None = None, owner: str = "test") -> FlowRunner:
        flow = parse_flow_text(text, f"{text.split()[1]}.yaml")
        ff = FlowFile(flow, f"flows/{flow.name}.yaml", hashlib.sha256(text.encode()).hexdigest())
        return open_flow(settings or self.settings(), self.engine, ff, owner=owner, lease_seconds=30)

    def imported(self, import_id: str) -> dict[tuple[str, ...], dict[str, str]]:
        return self.anaplan._imported.get(import_id, {})

    def tasks(self, import_id: str) -> int:
        return sum(1 for t in self.anaplan._tasks.values() if t.import_id == import_id)

    def runs(self, flow: str) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(select(FlowRun.__table__).where(FlowRun.__table__.c.flow == flow)
                                .order_by(FlowRun.__table__.c.id)).all()

    def records(self, flow: str) -> list[Any]:
        t = FlowRecord.__table__
        with self.engine.connect() as conn:
            return conn.execute(select(t).where(t.c.flow == flow).order_by(t.c.id)).all()

    def watermark(self, flow: str) -> str | None:
        t = FlowState.__table__
        with self.engine.connect() as conn:
            return conn.execute(select(t.c.watermark).where(t.c.flow == flow)).scalar()


def start_env(engine: Engine, data_dir: Path, **syspro: Any) -> FlowEnv:
    sim, server = start_syspro(**syspro)
    anaplan = AnaplanSimulator(tenant=flows_tenant())
    add_flow_actions(anaplan)
    anaplan.set_faults({"rate_limit": None})
    return FlowEnv(sim, server, anaplan, serve_app(anaplan.app), engine, data_dir)
