"""What the CLI's ``flows list`` and the panel's flows page show per flow."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from gateway.flows.files import FlowFile
from gateway.flows.tables import FlowRun, FlowState

RUNS = FlowRun.__table__
STATES = FlowState.__table__


@dataclass
class FlowStatus:
    name: str
    source: str
    target: str
    mode: str
    schedule: str
    enabled: bool
    switched_by: str | None
    watermark: str | None
    dry_run_clean: bool
    last: Any | None  # the last run's row
    file: FlowFile

    @property
    def last_run(self) -> str | None:
        r = self.last
        if r is None:
            return None
        when = r.started_at.strftime("%Y-%m-%d %H:%M") if isinstance(r.started_at, datetime) else r.started_at
        text = (f"#{r.id} {r.state} {when}: {r.seen} seen, {r.changed} changed, {r.sent} sent, {r.failed} failed")
        return text + (f" ({r.error})" if r.error else "")


def _target(ff: FlowFile) -> str:
    t = ff.flow.target
    ident = {"import": t.import_id, "process": t.process_id, "list_items": t.list_id}[t.kind]
    return f"Anaplan {t.kind.replace('_', ' ')} {ident}"


def flow_statuses(engine: Engine, flows: dict[str, FlowFile]) -> list[FlowStatus]:
    with engine.connect() as conn:
        states = {r.flow: r for r in conn.execute(select(STATES))}
        out = []
        for name, ff in sorted(flows.items()):
            last = conn.execute(select(RUNS).where(RUNS.c.flow == name, RUNS.c.kind != "dry_run")
                                .order_by(RUNS.c.id.desc()).limit(1)).first()
            st = states.get(name)
            enabled = ff.flow.enabled if st is None or st.enabled is None else bool(st.enabled)
            every = ff.flow.schedule.every_minutes
            out.append(FlowStatus(
                name=name, source=f"{ff.flow.source.system} {ff.flow.source.entity}", target=_target(ff),
                mode=ff.flow.mode, schedule=f"every {every:g} min" if every else "on demand", enabled=enabled,
                switched_by=st.updated_by if st else None, watermark=st.watermark if st else None,
                dry_run_clean=bool(st and st.dry_run_sha256 == ff.text_sha256), last=last, file=ff))
    return out
