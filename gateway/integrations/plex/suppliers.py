"""Plex's supplier master, cached in the store and refreshed by modified-date polling.

One process at a time polls Plex (lease ``plex-suppliers``); the cursor (high-water mark and the
rows already seen inside the overlap) is kept in ``SourceStatus`` row ``plex:suppliers``, so the
panel's sources page shows the last refresh and its error. Every process matches against an
in-memory snapshot of the ``suppliers`` table, re-read when another process has refreshed it.

Customers (the senders of 850s that become Plex sales orders) are few and have no change filter
worth trusting: they are listed from Plex and kept in memory for ``refresh_seconds``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta, timezone

import structlog
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from gateway import leases
from gateway.integrations.plex.client import ChangeCursor, PlexClient, PlexError, SupplierMatching
from gateway.store.db import reading, transaction
from gateway.store.models import SourceStatus, Supplier, utcnow

log = structlog.get_logger("gateway.integrations.plex.suppliers")

STATUS_ROW = "plex:suppliers"
LEASE = "plex-suppliers"

# Legal forms say nothing about who a company is: "Acme Fasteners Inc." is "Acme Fasteners LLC".
_LEGAL_FORMS = {
    "inc", "incorporated", "llc", "ltd", "limited", "co", "corp", "corporation", "company", "gmbh", "ag",
    "kg", "sa", "sas", "sarl", "srl", "spa", "bv", "nv", "plc", "pty", "oy", "ab", "as", "kk", "the", "and",
}


def normalize_name(name: str | None) -> str:
    """Lower case, accents and punctuation dropped, legal forms removed: what name matching compares."""
    if not name:
        return ""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower().replace("&", " and ")
    words = [w for w in re.split(r"[^a-z0-9]+", text) if w and w not in _LEGAL_FORMS]
    return " ".join(words)


def normalize_tax_id(value: str | None) -> str:
    return re.sub(r"[^A-Z0-9]", "", (value or "").upper())


@dataclass(frozen=True)
class Counterparty:
    """A Plex supplier (or customer) as matching sees it."""

    code: str
    name: str
    normalized: str
    plex_id: str | None = None
    old_code: str | None = None
    tax_id: str | None = None
    status: str | None = None
    kind: str = "supplier"


@dataclass
class Snapshot:
    """Every matchable counterparty, with the lookups matching needs."""

    parties: list[Counterparty] = field(default_factory=list)
    loaded_at: float = 0.0

    def __post_init__(self) -> None:
        self.by_code = {p.code.upper(): p for p in self.parties}
        self.by_old_code: dict[str, list[Counterparty]] = {}
        self.by_tax_id: dict[str, list[Counterparty]] = {}
        for p in self.parties:
            if p.old_code:
                self.by_old_code.setdefault(p.old_code.upper(), []).append(p)
            if p.tax_id:
                self.by_tax_id.setdefault(normalize_tax_id(p.tax_id), []).append(p)
        self.names = [p.normalized for p in self.parties]

    def get(self, code: str | None) -> Counterparty | None:
        return self.by_code.get(code.upper()) if code else None


class SupplierMaster:
    """The cached supplier master of one Plex company, plus its customers."""

    def __init__(self, engine: Engine, client: PlexClient, settings: SupplierMatching, *, owner: str,
                 clock: Callable[[], float] = time.time, reload_seconds: float = 5.0) -> None:
        self.engine, self.client, self.settings, self.owner = engine, client, settings, owner
        self._clock = clock
        self._reload_seconds = reload_seconds
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._snapshot_stamp: tuple | None = None
        self._checked_at = 0.0
        self._customers: Snapshot | None = None
        self.on_refreshed: Callable[[], None] | None = None  # e.g. the partners' drift check, after each refresh

    # ---------------------------------------------------------------- suppliers
    def ensure_fresh(self) -> None:
        """Poll Plex for changed suppliers when the last successful poll is older than ``refresh_seconds``.

        Cheap when nothing is due (checked against the store at most every few seconds). A failed poll
        is recorded on the status row and logged; matching goes on with the cache it has."""
        now = self._clock()
        with self._lock:
            if now - self._checked_at < min(self._reload_seconds, self.settings.refresh_seconds):
                return
            self._checked_at = now
        with reading(self.engine) as s:
            status = s.get(SourceStatus, STATUS_ROW)
            last = status.last_success_at if status else None
        if last is not None:
            last = last if last.tzinfo else last.replace(tzinfo=timezone.utc)
            if (utcnow() - last).total_seconds() < self.settings.refresh_seconds:
                return
        try:
            self.refresh()
        except PlexError as exc:
            log.warning("plex.suppliers.refresh_failed", error=str(exc))

    def refresh(self, *, full: bool = False) -> int:
        """Read the suppliers changed since the last poll (all on the first) into the store.

        Returns how many rows changed; 0 when another process holds the poll lease."""
        if not leases.acquire(self.engine, LEASE, self.owner, ttl=300):
            return 0
        try:
            return self._refresh(full)
        finally:
            leases.release(self.engine, LEASE, self.owner)

    def _refresh(self, full: bool) -> int:
        with reading(self.engine) as s:
            status = s.get(SourceStatus, STATUS_ROW)
            cursor = (ChangeCursor.model_validate_json(status.cursor)
                      if status and status.cursor and not full else None)
        started = utcnow()
        try:
            changes = self.client.poll_suppliers(cursor, overlap=timedelta(seconds=self.settings.overlap_seconds))
        except PlexError as exc:
            self._failed(started, exc)
            raise
        # A changed supplier's tax id is unknown again (None) until its financials are read.
        rows = [Supplier(code=sup.code, plex_id=sup.id, name=sup.name or sup.code,
                         normalized_name=normalize_name(sup.name or sup.code)[:300], tax_id=None, status=sup.status,
                         modified_at=sup.modified_date, record=sup.model_dump_json(by_alias=True), refreshed_at=started)
                 for sup in changes.suppliers]
        with transaction(self.engine) as s:
            for row in rows:
                s.merge(row)
            status = s.get(SourceStatus, STATUS_ROW) or SourceStatus(source=STATUS_ROW)
            status.cursor = changes.cursor.model_dump_json()
            status.last_poll_at = status.last_success_at = started
            status.last_error = None
            status.files_taken = (status.files_taken or 0) + len(rows)
            s.add(status)
        if self.settings.fetch_tax_ids:
            self._tax_ids(started)
        log.info("plex.suppliers.refreshed", changed=len(rows))
        with self._lock:
            self._snapshot_stamp = None  # re-read now
        if self.on_refreshed is not None:
            try:
                self.on_refreshed()
            except Exception as exc:  # noqa: BLE001 - a failed check must not fail the refresh
                log.warning("plex.suppliers.after_refresh_failed", error=f"{type(exc).__name__}: {exc}")
        return len(rows)

    def _tax_ids(self, started) -> None:
        """Read financials for suppliers whose tax id is unknown, a bounded number per refresh
        (one request each); '' records "Plex has none" so it is not asked again."""
        with reading(self.engine) as s:
            todo = s.exec(select(Supplier).where(Supplier.tax_id.is_(None)).order_by(Supplier.code)
                          .limit(self.settings.tax_ids_per_refresh)).all()
        found: dict[str, str] = {}
        for sup in todo:
            if not sup.plex_id:
                found[sup.code] = ""
                continue
            try:
                fin = self.client.get_supplier_financials(sup.plex_id) or {}
            except PlexError as exc:  # no access to financials, or a blip: match without it, try next time
                log.info("plex.suppliers.no_financials", code=sup.code, error=type(exc).__name__)
                if not exc.transient:
                    found[sup.code] = ""
                continue
            found[sup.code] = str(fin.get("taxId") or "")[:100]
        if found:
            with transaction(self.engine) as s:
                for code, tax_id in found.items():
                    row = s.get(Supplier, code)
                    if row is not None:
                        row.tax_id, row.refreshed_at = tax_id, started
                        s.add(row)

    def _failed(self, started, exc: Exception) -> None:
        with transaction(self.engine) as s:
            status = s.get(SourceStatus, STATUS_ROW) or SourceStatus(source=STATUS_ROW)
            status.last_poll_at, status.last_error, status.last_error_at = started, str(exc), utcnow()
            s.add(status)

    def snapshot(self) -> Snapshot:
        """Active suppliers from the store, re-read when the table changed (checked every few seconds)."""
        now = self._clock()
        with self._lock:
            current = self._snapshot
            if current is not None and self._snapshot_stamp is not None and now - current.loaded_at < self._reload_seconds:
                return current
        with reading(self.engine) as s:
            stamp = tuple(s.exec(select(func.count(), func.max(Supplier.refreshed_at))).one())
            with self._lock:
                if self._snapshot is not None and stamp == self._snapshot_stamp:
                    self._snapshot.loaded_at = now
                    return self._snapshot
            rows = s.exec(select(Supplier)).all()
        snap = Snapshot([self._party(r) for r in rows if self._active(r.status)], loaded_at=now)
        with self._lock:
            self._snapshot, self._snapshot_stamp = snap, stamp
        return snap

    def _active(self, status: str | None) -> bool:
        return status is None or status in self.settings.active_statuses

    @staticmethod
    def _party(row: Supplier) -> Counterparty:
        old_code = None
        if row.record:
            try:
                old_code = json.loads(row.record).get("oldCode") or None
            except ValueError:
                old_code = None
        return Counterparty(code=row.code, name=row.name, normalized=row.normalized_name, plex_id=row.plex_id,
                            old_code=old_code, tax_id=row.tax_id or None, status=row.status)

    # ---------------------------------------------------------------- customers
    def customers(self) -> Snapshot:
        """Plex customers (for 850s routed to sales orders), listed at most every ``refresh_seconds``."""
        now = self._clock()
        with self._lock:
            if self._customers is not None and now - self._customers.loaded_at < self.settings.refresh_seconds:
                return self._customers
        rows = self.client.list_customers()
        parties = [Counterparty(code=r["code"], name=r.get("name") or r["code"],
                                normalized=normalize_name(r.get("name") or r["code"]), plex_id=r.get("id"),
                                status=r.get("status"), kind="customer")
                   for r in rows if r.get("code") and self._active(r.get("status"))]
        snap = Snapshot(parties, loaded_at=now)
        with self._lock:
            self._customers = snap
        return snap

    def customer_id(self, code: str) -> str | None:
        party = self.customers().get(code)
        if party is None:  # added since the last listing?
            with self._lock:
                self._customers = None
            party = self.customers().get(code)
        return party.plex_id if party else None


def suppliers_in_store(engine: Engine, codes: Iterable[str]) -> set[str]:
    """Which of ``codes`` are in the cached supplier master."""
    wanted = list(codes)
    if not wanted:
        return set()
    with reading(engine) as s:
        return set(s.exec(select(Supplier.code).where(Supplier.code.in_(wanted))).all())


__all__ = ["Counterparty", "Snapshot", "SupplierMaster", "normalize_name", "normalize_tax_id",
           "suppliers_in_store", "STATUS_ROW"]

