"""Shared by the delivery and end-to-end tests: the simulators, a runtime on the test's store, a worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from gateway.intake import take
from gateway.pipeline.machine import RESTING
from gateway.pipeline.wiring import Pipeline
from gateway.pipeline.worker import Worker
from gateway.runtime import Runtime, open_runtime
from gateway.sandbox.environment import Sandbox, start_sandbox
from gateway.settings import Settings
from gateway.store.models import Delivery, Document, Event

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "edi" / "demo"
PARTNERS = ROOT / "partners"
RESTING_STATES = {s.value for s in RESTING}


@dataclass
class Gateway:
    """One gateway process in a test: runtime, its pipeline (steps, destinations) and a worker driven by
    :meth:`settle`."""

    runtime: Runtime
    pipeline: Pipeline
    worker: Worker
    sandbox: Sandbox

    @property
    def engine(self):
        return self.runtime.engine

    def feed(self, name: str, data: bytes) -> int:
        return take(self.engine, source="local:test", remote_name=name, remote_id=name, data=data).interchange_id

    def feed_files(self, *names: str) -> None:
        for name in names:
            self.feed(name, (DEMO / name).read_bytes())

    def documents(self) -> list[Document]:
        with Session(self.engine) as s:
            return list(s.exec(select(Document).order_by(Document.id)).all())

    def document(self, **where: Any) -> Document:
        docs = [d for d in self.documents() if all(getattr(d, k) == v for k, v in where.items())]
        assert len(docs) == 1, f"{len(docs)} documents match {where}"
        return docs[0]

    def deliveries(self, doc_id: int) -> dict[str, Delivery]:
        """A document's deliveries by destination."""
        with Session(self.engine) as s:
            return {d.destination: d for d in s.exec(select(Delivery).where(Delivery.document_id == doc_id)).all()}

    def reference(self, doc_id: int, destination: str = "plex") -> str | None:
        found = self.deliveries(doc_id).get(destination)
        return found.reference if found is not None else None

    def events(self, doc_id: int) -> list[Event]:
        with Session(self.engine) as s:
            return list(s.exec(select(Event).where(Event.document_id == doc_id).order_by(Event.id)).all())

    def settle(self, timeout: float = 60.0) -> list[Document]:
        """Run the worker until every document rests (done, failed, needs attention, ...)."""
        deadline = time.monotonic() + timeout
        while True:
            self.worker.run_until_idle()
            docs = self.documents()
            if docs and all(d.state in RESTING_STATES for d in docs):
                return docs
            if time.monotonic() > deadline:
                raise AssertionError("not settled: " + ", ".join(f"{d.id}:{d.state}@{d.stage}" for d in docs))
            time.sleep(0.05)


def settings_for(sandbox: Sandbox, store_url: str, data_dir: Path, *, plex: dict | None = None,
                 anaplan: dict | None = None) -> Settings:
    return Settings(
        data_dir=data_dir, database_url=store_url, partners_dir=PARTNERS,
        plex=sandbox.plex_settings(requests_per_minute=6000, burst=100, **(plex or {})),
        anaplan=sandbox.anaplan_settings(**{"poll_interval": 0.1, "max_age": 0.3, **(anaplan or {})}),
        workers={"count": 1, "batch_size": 50, "backoff_initial": 0.1, "backoff_max": 1.0, "max_attempts": 6},
    )


@contextmanager
def gateway(store_url: str, data_dir: Path, *, sandbox: Sandbox | None = None, plex: dict | None = None,
            anaplan: dict | None = None) -> Iterator[Gateway]:
    own = sandbox is None
    sandbox = sandbox or start_sandbox(plex_rate_limit=None)
    runtime = open_runtime(settings_for(sandbox, store_url, data_dir, plex=plex, anaplan=anaplan), migrate=False)
    pipeline = Pipeline.configure(runtime)
    try:
        yield Gateway(runtime, pipeline, Worker(runtime, pipeline=pipeline), sandbox)
    finally:
        pipeline.close()
        runtime.engine.dispose()
        if own:
            sandbox.close()
