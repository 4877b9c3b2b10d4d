"""Helpers for the pipeline tests: generated X12 interchanges, a runtime on a test store, stored payloads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gateway.runtime import Runtime
from gateway.settings import Settings, WorkerSettings
from gateway.store import Interchange, RawPayload, make_engine, transaction

ROOT = Path(__file__).resolve().parent.parent
PARTNERS = ROOT / "partners"


def x12_850(control: int, pos: list[str], *, broken: tuple[int, ...] = (), sender: str = "2065550147",
            receiver: str = "MFGPLANT01") -> bytes:
    """A Northwind Retail interchange with one 850 per PO number; sets listed in ``broken`` have a bad quantity."""
    sets = []
    for n, po in enumerate(pos, 1):
        qty = "TWELVE" if n in broken else "12"
        segs = [
            f"ST*850*{n:04d}",
            f"BEG*00*SA*{po}**20261119",
            "CUR*BY*USD",
            "N1*BY*NORTHWIND RETAIL GROUP*92*NW-HQ",
            f"PO1*1*{qty}*CA*45.00**CB*MFG-PANEL-A4*VC*NWV-5511",
            "CTT*1",
        ]
        segs.append(f"SE*{len(segs) + 1}*{n:04d}")
        sets += segs
    head = [
        f"ISA*00*          *00*          *12*{sender:<15}*ZZ*{receiver:<15}*261120*0930*U*00401*{control:09d}*1*P*>",
        f"GS*PO*NWRETAIL*{receiver}*20261120*0930*{control}*X*004010",
    ]
    tail = [f"GE*{len(pos)}*{control}", f"IEA*1*{control:09d}"]
    return ("~\n".join(head + sets + tail) + "~\n").encode()


def make_runtime(url: str, tmp_path: Path, **workers) -> Runtime:
    opts = dict(batch_size=50, lease_seconds=60, idle_seconds=0.05, max_attempts=3, backoff_initial=0.0)
    opts.update(workers)
    settings = Settings(data_dir=tmp_path, database_url=url, partners_dir=PARTNERS, workers=WorkerSettings(**opts))
    return Runtime(settings=settings, engine=make_engine(url), instance="test")


def store_payload(engine, data: bytes, name: str = "in.x12", source: str = "test") -> int:
    """An interchange as intake leaves it: state received, raw bytes beside it."""
    with transaction(engine) as s:
        ich = Interchange(sha256=hashlib.sha256(data).hexdigest(), size=len(data), source=source,
                          remote_name=name, remote_id=name)
        s.add(ich)
        s.flush()
        s.add(RawPayload(interchange_id=ich.id, data=data))
        return ich.id


class FakeDestination:
    """A destination for pipeline tests: ``fn(item) -> Outcome`` per delivery, or ``batch=True``:
    ``fn(items) -> {delivery_id: Outcome}``; records what it was given."""

    def __init__(self, name: str, fn, *, batch: bool = False) -> None:
        self.name, self.fn, self.batch = name, fn, batch
        self.calls: list[list] = []

    def deliver(self, items):
        self.calls.append(list(items))
        if self.batch:
            return self.fn(items)
        return {i.delivery_id: self.fn(i) for i in items}

    def check(self):
        return []

    def close(self) -> None:
        pass


def step(fn, *, batch: bool = False):
    """A document step for pipeline tests from ``fn(doc, runtime) -> Outcome`` (or, ``batch``,
    ``fn(docs, runtime) -> {doc_id: Outcome}``)."""
    if batch:
        return fn

    def run(docs, runtime):
        return {d.id: fn(d, runtime) for d in docs}
    return run


def pipeline(*, match=None, batch: bool = False, destinations=()):
    """A pipeline with the given match step (per document, or ``batch``) and destinations."""
    from gateway.pipeline.wiring import Pipeline

    return Pipeline(steps={"match": step(match, batch=batch)} if match is not None else {},
                    destinations={d.name: d for d in destinations})


def matched(doc, runtime):
    """A match step that finds supplier S-1 for everything."""
    from gateway.integrations.base import Outcome

    return Outcome.ok({"supplier": "S-1"}, supplier_code="S-1")
