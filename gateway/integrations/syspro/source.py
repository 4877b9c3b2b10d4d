"""SYSPRO as a record source for flows (``RECORD_SOURCES["syspro"]``): OData pages (or e.net COMFND pages) of one table.

Incremental reads, by the flow's ``changes``:

* ``rowversion`` on ``TimeStamp``: ``$filter=TimeStamp gt binary'<watermark>'`` ordered by
  ``TimeStamp`` — only rows inserted or updated since the confirmed watermark are read, whatever
  the table (``InvWarehouse`` has no date that moves when a quantity does). SYSPRO's tables carry
  the rowversion [L–M in the addendum]; whether a site's OData filters on it is unverified, so a
  site that refuses it is read whole and compared by content hash, and the run says so.
* ``date``: ``<column> ge <watermark − overlap>`` (back-dated and late-posted rows are caught).
* ``snapshot``: the whole table, every run.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterator

from gateway.flows.model import Flow, seconds
from gateway.integrations.base import Read
from gateway.integrations.syspro.client import EnetSession, ODataClient, SysproRequestError, Where, odata_literal
from gateway.integrations.syspro.settings import SysproSettings


def _minus(iso: str, overlap_s: float) -> str:
    when = datetime.fromisoformat(iso.replace("Z", "+00:00")) - timedelta(seconds=overlap_s)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class SysproRecords:
    """Reads one SYSPRO site for the flows that name it."""

    system = "syspro"

    def __init__(self, settings: SysproSettings) -> None:
        self.settings = settings
        self._odata: ODataClient | None = None

    @classmethod
    def for_flow(cls, settings: Any, flow: Flow) -> SysproRecords:
        """The ``[[syspro]]`` site the flow names (``source.connection``), or the only one."""
        sites = {s.name: s for s in settings.syspro}
        if not sites:
            raise ValueError(f"flow {flow.name} reads SYSPRO but no [[syspro]] site is configured")
        name = flow.source.connection or (next(iter(sites)) if len(sites) == 1 else None)
        if name not in sites:
            raise ValueError(f"flow {flow.name}: source.connection must name one of the [[syspro]] sites: "
                             f"{', '.join(sites)}")
        return cls(sites[name])

    @property
    def odata(self) -> ODataClient:
        if self._odata is None:
            self._odata = ODataClient(self.settings)
        return self._odata

    def close(self) -> None:
        if self._odata is not None:
            self._odata.close()
            self._odata = None

    def check(self) -> list[str]:
        if self.settings.read == "enet":
            with EnetSession(self.settings) as session:
                return session.check()
        return self.odata.check()

    def key(self, flow: Flow) -> tuple[str, ...]:
        if flow.source.key:
            return tuple(flow.source.key)
        if self.settings.read == "odata":
            return self.odata.entity(flow.source.entity).key
        raise SysproRequestError(f"flow {flow.name}: reading through e.net, the flow must name its key columns "
                                 "(source.key)")

    def read(self, flow: Flow, watermark: str | None, *, limit: int | None = None) -> Read:
        key = self.key(flow)
        if self.settings.read == "enet":
            return self._read_enet(flow, key, watermark, limit)
        return self._read_odata(flow, key, watermark, limit)

    def _window(self, flow: Flow, watermark: str | None) -> tuple[str | None, list[str] | None]:
        changes = flow.source.changes
        if watermark is None or changes.kind in ("snapshot", "modified"):
            return None, None
        if changes.kind == "rowversion":
            return f"{changes.column} gt {odata_literal(watermark, 'Edm.Binary')}", [changes.column or "TimeStamp"]
        start = _minus(watermark, seconds(changes.overlap))
        edm = self.odata.entity(flow.source.entity).properties.get(changes.column or "", "Edm.DateTimeOffset")
        return f"{changes.column} ge {odata_literal(start, edm)}", None

    def _read_odata(self, flow: Flow, key: tuple[str, ...], watermark: str | None, limit: int | None) -> Read:
        window, order = self._window(flow, watermark)
        filters = [f for f in (flow.source.filter, window) if f]
        # $select only when the flow names columns: the raw record keeps what the source has
        select = list(dict.fromkeys([*key, *flow.source.select, *flow.columns_read()])) if flow.source.select else None
        read = Read(iter(()), key)
        client = self.odata

        def pages(filter_text: str | None, orderby: list[str] | None) -> Iterator[list[dict[str, Any]]]:
            before = client.requests
            try:
                yield from client.pages(flow.source.entity, select=select, filter=filter_text, orderby=orderby,
                                        page_size=flow.source.page_size, limit=limit)
            finally:
                read.requests[0] += client.requests - before

        def guarded() -> Iterator[list[dict[str, Any]]]:
            text = " and ".join(f"({f})" for f in filters) if len(filters) > 1 else (filters[0] if filters else None)
            try:
                yield from pages(text, order)
            except SysproRequestError as exc:
                if flow.source.changes.kind != "rowversion" or window is None or "TimeStamp" not in str(exc):
                    raise
                read.notes.append(f"SYSPRO refused a filter on {flow.source.changes.column} ({exc}); the table was "
                                  "read whole and compared by content hash")
                yield from pages(flow.source.filter, None)

        read.pages = guarded()
        return read

    def _read_enet(self, flow: Flow, key: tuple[str, ...], watermark: str | None, limit: int | None) -> Read:
        changes = flow.source.changes
        where: list[Where] = []
        if watermark is not None and changes.kind == "date":
            where.append(Where(changes.column or "", "GE", _minus(watermark, seconds(changes.overlap))[:10]))
        read = Read(iter(()), key)
        columns = [c for c in flow.columns_read() if c not in key] or list(key)

        def pages() -> Iterator[list[dict[str, Any]]]:
            session = EnetSession(self.settings)
            try:
                yield from session.pages(flow.source.entity, columns, key, where, limit=limit)
            finally:
                read.requests[0] += session.requests
                session.logoff()
        if watermark is not None and changes.kind == "rowversion":
            read.notes.append("e.net COMFND cannot filter on a rowversion: the table is read whole and compared "
                              "by content hash")
        read.pages = pages()
        return read
