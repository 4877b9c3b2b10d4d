"""Plex as a record source for flows (``RECORD_SOURCES["plex"]``; Connect REST; specs/plex.md §3.2, §3.6, the addendum).

Resources with a changed-since filter (purchase orders, suppliers, parts, journal entries) are
read in modified-date windows from the confirmed watermark minus the flow's overlap up to now,
cut into slices of ``changes.window`` (Connect has no paging: one request returns everything in
its filter, so windows are kept small), and every row's modified date is checked again here,
because Connect ignores a filter it does not know rather than refusing it. Resources without one
(supply items, containers, the chart of accounts) are read whole and compared by content hash.
Cost centres have no master: they are the distinct ``costCenterSegment`` values of the trial
balance. Purchase orders carry their lines (``lineItems``), one request per order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from gateway.flows.model import Flow, seconds
from gateway.integrations.base import Read
from gateway.integrations.plex.client import PlexClient, PlexConfig, _plex_dt


def parse_plex_datetime(text: str) -> datetime | None:
    """A Connect date-time (``...Z``, up to seven fraction digits), or None."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Resource:
    path: str
    changed: tuple[str, str] | None  # the begin/end filter parameters, where Connect has them
    key: tuple[str, ...] = ("id",)


RESOURCES: dict[str, Resource] = {
    "purchase-orders": Resource("/purchasing/v1/purchase-orders", ("modifiedDateBegin", "modifiedDateEnd")),
    "suppliers": Resource("/mdm/v1/suppliers", ("modifiedDateBegin", "modifiedDateEnd")),
    "parts": Resource("/mdm/v1/parts", ("beginUpdatedDateTime", "endUpdatedDateTime")),
    "supply-items": Resource("/inventory/v1/inventory-definitions/supply-items", None),
    "containers": Resource("/inventory/v1/inventory-tracking/containers", None),
    "chart-of-accounts": Resource("/mdm/v1/chart-of-accounts", None),
    "journal-entries": Resource("/accounting/v2/journal-entries", ("modifiedDateBegin", "modifiedDateEnd")),
    "cost-centres": Resource("/accounting/v1/trial-balance", None, key=("costCenterSegment",)),
}


class PlexRecordError(ValueError):
    """A flow asks Plex for something Connect cannot give (an unknown resource, a filter it lacks)."""


class PlexRecords:
    """Reads Plex Connect resources for the flows that name ``system: plex``."""

    system = "plex"

    def __init__(self, config: PlexConfig, *, client: PlexClient | None = None) -> None:
        self.config = config
        self._client = client

    @classmethod
    def for_flow(cls, settings: Any, flow: Flow) -> PlexRecords:
        if settings.plex is None:
            raise ValueError(f"flow {flow.name} reads Plex but [plex] is not configured")
        return cls(settings.plex)

    @property
    def client(self) -> PlexClient:
        if self._client is None:
            self._client = PlexClient(self.config)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def check(self) -> list[str]:
        tenants = self.client.list_tenants()
        return [f"Plex Connect {self.config.connect_url}: API key accepted; {len(tenants)} tenant(s)"]

    @staticmethod
    def resource(flow: Flow) -> Resource:
        name = flow.source.entity
        if name not in RESOURCES:
            raise PlexRecordError(f"flow {flow.name}: Plex has no record resource {name!r}; use one of "
                                  f"{', '.join(RESOURCES)}")
        res = RESOURCES[name]
        if flow.source.changes.kind == "modified" and res.changed is None:
            raise PlexRecordError(f"flow {flow.name}: Plex {name} has no modified-date filter; read it whole with "
                                  "changes: {kind: snapshot}")
        if flow.source.changes.kind in ("rowversion", "date"):
            raise PlexRecordError(f"flow {flow.name}: Plex resources change by modified date (kind: modified) or "
                                  "are read whole (kind: snapshot)")
        return res

    def read(self, flow: Flow, watermark: str | None, *, limit: int | None = None) -> Read:
        res = self.resource(flow)
        key = tuple(flow.source.key) or res.key
        read = Read(iter(()), key)
        counter = {"n": 0}

        def get(path: str, params: dict[str, str], operation: str) -> list[dict[str, Any]]:
            read.requests[0] += 1
            return self.client.list_records(path, params, operation=operation)

        def fetch(params: dict[str, str]) -> list[dict[str, Any]]:
            return get(res.path, params, f"records.{flow.source.entity}")

        def pages() -> Iterator[list[dict[str, Any]]]:
            for rows in self._windows(flow, res, watermark, read, fetch):
                if flow.source.entity == "cost-centres":
                    rows = _cost_centres(rows)
                if limit is not None:
                    rows = rows[: max(0, limit - counter["n"])]
                if flow.source.entity == "purchase-orders":
                    for po in rows:
                        po["lineItems"] = get(f"/purchasing/v1/purchase-orders/{po['id']}/line-items", {},
                                              "records.purchase-order-lines")
                counter["n"] += len(rows)
                if rows:
                    yield rows
                if limit is not None and counter["n"] >= limit:
                    return

        read.pages = pages()
        return read

    def _windows(self, flow: Flow, res: Resource, watermark: str | None, read: Read, fetch
                 ) -> Iterator[list[dict[str, Any]]]:
        changes = flow.source.changes
        if changes.kind != "modified" or res.changed is None:
            yield fetch({})
            return
        end = datetime.now(timezone.utc)
        read.window_end = _plex_dt(end)
        if watermark is None:
            read.notes.append(f"first run: every {flow.source.entity} record read (no watermark yet)")
            yield [r for r in fetch({}) if _before(r, end)]
            return
        begin = _parse(watermark) - timedelta(seconds=seconds(changes.overlap))
        step = timedelta(seconds=seconds(changes.window)) if changes.window else end - begin
        seen: set[tuple[str, str]] = set()
        while begin < end:
            until = min(begin + step, end)
            rows = fetch({res.changed[0]: _plex_dt(begin), res.changed[1]: _plex_dt(until)})
            fresh = []
            for row in rows:  # Connect ignores filters it does not know: check the dates here
                stamp = parse_plex_datetime(str(row.get("modifiedDate") or ""))
                if stamp is None or not begin <= stamp <= until:
                    continue
                token = (str(row.get("id")), str(row.get("modifiedDate")))
                if token not in seen:
                    seen.add(token)
                    fresh.append(row)
            yield fresh
            begin = until


def _parse(text: str) -> datetime:
    parsed = parse_plex_datetime(text) or datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _before(row: dict[str, Any], end: datetime) -> bool:
    stamp = parse_plex_datetime(str(row.get("modifiedDate") or ""))
    return stamp is None or stamp <= end


def _cost_centres(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct cost-centre segments of trial-balance lines, with the accounts that use them."""
    centres: dict[str, set[str]] = {}
    for row in rows:
        segment = row.get("costCenterSegment")
        if segment:
            centres.setdefault(str(segment), set()).add(str(row.get("baseSegment") or row.get("accountNumber")))
    return [{"costCenterSegment": c, "accounts": sorted(a)} for c, a in sorted(centres.items())]
