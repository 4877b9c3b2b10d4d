"""The alert scanner: looks at the store every ``alerts.interval_seconds`` and tells people.

One process at a time scans (the lease ``alerts``), whichever ``gateway run`` or ``gateway poll``
holds it; the others stand by. A look:

1. reads what deserves an alert (:mod:`gateway.alerts.rules`) since the cursor, less an overlap
   for transactions that committed late;
2. records each new thing once, by its key (``alerts`` rows: de-duplicated across looks and
   processes); opens, escalates and resolves outages;
3. groups many new alerts of one kind into one, keeps to ``max_per_hour`` (what is over is held
   and summed up in one alert when there is room again);
4. sends, outside any transaction, and records per channel what happened; an alert no channel
   took is tried again on the next looks, up to :data:`MAX_ATTEMPTS`.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.alerts import rules
from gateway.alerts.channels import ChannelError, Message, applies
from gateway.alerts.channels import send as send_channel
from gateway.alerts.settings import AlertKind, AlertSettings
from gateway.leases import acquire, holder, release
from gateway.store.db import reading, transaction
from gateway.store.models import AlertRecord, AlertState, utcnow

log = structlog.get_logger("gateway.alerts")

LEASE = "alerts"
OVERLAP = timedelta(seconds=120)  # a document's change may commit this long after its timestamp
MAX_ATTEMPTS = 5  # looks at which an alert no channel took is tried again
_PRIORITY = {AlertKind.OUTAGE: 0, AlertKind.DOCUMENT_FAILED: 1, AlertKind.ACK_REJECTED: 2,
             AlertKind.ATTENTION_WAITING: 3, AlertKind.DIGEST: 4, AlertKind.TEST: 5}
_GROUP_LINKS = {AlertKind.DOCUMENT_FAILED: "/documents?state=failed",
                AlertKind.ATTENTION_WAITING: "/documents?state=needs_attention"}
_SHOWN = 10  # titles listed in a grouped alert or digest

Sender = Callable[..., str]


@dataclass
class ScanReport:
    """What one look did."""

    scanned: bool = False
    held_by: str | None = None  # another process holds the lease
    noticed: int = 0  # new alerts recorded
    sent: int = 0
    held: int = 0  # over the hourly limit
    failed: int = 0  # no channel took them (will be tried again)
    errors: list[str] = field(default_factory=list)


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def severity(row: AlertRecord) -> str:
    if row.key.startswith("recovered:"):
        return "ok"
    return {AlertKind.OUTAGE: "error", AlertKind.DOCUMENT_FAILED: "error", AlertKind.ACK_REJECTED: "warning",
            AlertKind.ATTENTION_WAITING: "warning"}.get(AlertKind(row.kind), "info")


def message_of(row: AlertRecord, panel_url: str | None) -> Message:
    """The message every channel renders for a recorded alert."""
    link = f"{panel_url}{row.link}" if panel_url and row.link else None
    return Message(AlertKind(row.kind), row.title, tuple((row.body or "").splitlines()), link, row.subject,
                   severity(row), rules.aware(row.created_at) or utcnow(), {"alert_id": row.id})


def deliver(settings: AlertSettings, msg: Message, send: Sender = send_channel) -> dict[str, str]:
    """Send ``msg`` through every channel that takes its kind: per channel 'sent' or the error."""
    results: dict[str, str] = {}
    for channel in settings.channels:
        if not applies(channel, msg.kind):
            continue
        try:
            results[channel.name] = send(channel, msg)
        except ChannelError as exc:
            results[channel.name] = f"error: {exc}"
        except Exception as exc:  # noqa: BLE001 - one broken channel must not stop the others
            results[channel.name] = f"error: {type(exc).__name__}"
    return results


def _took(results: dict[str, str]) -> bool:
    return any(not v.startswith("error:") for v in results.values())


class Scanner:
    """Looks at the store and sends alerts; :meth:`scan` is one look, :meth:`run` the loop."""

    def __init__(self, engine: Engine, settings: AlertSettings, sources: Sequence[str], *, owner: str,
                 clock: Callable[[], datetime] = utcnow, send: Sender = send_channel) -> None:
        self.engine = engine
        self.settings = settings
        self.sources = list(sources)
        self.owner = owner
        self.clock = clock
        self.send = send
        self.lease_seconds = max(120.0, 3 * settings.interval_seconds)

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Look every ``interval_seconds`` until ``stop`` is set; a failed look is logged and retried."""
        try:
            while not stop.is_set():
                try:
                    report = self.scan()
                    if report.sent or report.failed or report.held:
                        log.info("alerts.scan", noticed=report.noticed, sent=report.sent, held=report.held,
                                 failed=report.failed)
                except Exception as exc:  # noqa: BLE001 - e.g. the store unreachable: look again later
                    log.error("alerts.scan_failed", error=f"{type(exc).__name__}: {exc}")
                stop.wait(self.settings.interval_seconds)
        finally:
            try:
                release(self.engine, LEASE, self.owner)
            except Exception:  # noqa: BLE001 - it expires anyway
                pass

    # -- one look ------------------------------------------------------------------------------------

    def scan(self) -> ScanReport:
        """One look: notice, record, send. Nothing happens when another process holds the lease."""
        report = ScanReport()
        if not acquire(self.engine, LEASE, self.owner, self.lease_seconds):
            report.held_by = holder(self.engine, LEASE)
            return report
        report.scanned = True
        now = self.clock()
        since = self._since(now)
        notices, health = self._look(now, since)
        with transaction(self.engine) as s:
            report.noticed = self._record(s, notices, now)
            report.noticed += self._outages(s, health, now)
            self._save_cursor(s, now)
        due = self._plan(now, report)
        for row in due:
            if not acquire(self.engine, LEASE, self.owner, self.lease_seconds):
                report.errors.append("the alerts lease was lost; the rest is sent by its new holder")
                break
            results = deliver(self.settings, message_of(row, self.settings.panel_url), self.send)
            self._store_result(row, results, report)
        return report

    def _since(self, now: datetime) -> datetime:
        with reading(self.engine) as s:
            row = s.get(AlertState, "cursor")
            value = row.value if row else None
        earliest = now - timedelta(hours=self.settings.lookback_hours)
        if not value:
            # The first look starts here: what failed before alerts were set up is on the panel already.
            return now - timedelta(seconds=self.settings.interval_seconds) - OVERLAP
        try:
            cursor = datetime.fromisoformat(value)
        except ValueError:
            return earliest
        return max(earliest, cursor - OVERLAP)

    def _save_cursor(self, s, now: datetime) -> None:
        row = s.get(AlertState, "cursor")
        if row is None:
            s.add(AlertState(name="cursor", value=_iso(now), updated_at=now))
        else:
            row.value, row.updated_at = _iso(now), now

    def _look(self, now: datetime, since: datetime) -> tuple[list[rules.Notice], list[rules.Health]]:
        cfg = self.settings
        notices: list[rules.Notice] = []
        health: list[rules.Health] = []
        with reading(self.engine) as s:
            if cfg.document_failed:
                notices += rules.failed_documents(s, since) + rules.failed_files(s, since)
            if cfg.ack_rejected:
                notices += rules.rejecting_acknowledgments(s, since)
            if cfg.attention_after_minutes:
                notices += rules.waiting_choices(s, now, timedelta(minutes=cfg.attention_after_minutes))
            if cfg.outage_after_minutes:
                health = rules.source_health(s, self.sources) + rules.destination_health(s, since)
        return notices, health

    # -- recording -------------------------------------------------------------------------------------

    def _record(self, s, notices: list[rules.Notice], now: datetime) -> int:
        """New notices become pending alerts (many of one kind: grouped into one); returns how many."""
        if not notices:
            return 0
        known: set[str] = set()
        keys = [n.key for n in notices]
        for i in range(0, len(keys), 500):
            known.update(s.scalars(select(AlertRecord.key).where(AlertRecord.key.in_(keys[i:i + 500]))))
        fresh: dict[str, rules.Notice] = {}
        for n in notices:
            if n.key not in known:
                fresh.setdefault(n.key, n)
        by_kind: dict[AlertKind, list[rules.Notice]] = {}
        for n in fresh.values():
            by_kind.setdefault(n.kind, []).append(n)
        for kind, items in by_kind.items():
            grouped = len(items) > self.settings.group_after
            for n in items:
                s.add(AlertRecord(key=n.key, kind=str(n.kind), subject=n.subject, title=n.title[:500],
                                  body="\n".join(n.lines), link=n.link, since=n.since, created_at=now,
                                  status="grouped" if grouped else "pending"))
            if grouped:
                s.add(self._group(kind, items, now))
        return len(fresh)

    def _group(self, kind: AlertKind, items: list[rules.Notice], now: datetime) -> AlertRecord:
        counts = Counter(n.group or "unknown" for n in items)
        noun = {AlertKind.DOCUMENT_FAILED: "documents or files failed",
                AlertKind.ATTENTION_WAITING: "documents have waited too long for a supplier choice",
                AlertKind.ACK_REJECTED: "acknowledgments reject what partners sent"}.get(kind, "alerts")
        by = ", ".join(f"{g} {c}" for g, c in counts.most_common(8))
        lines = [f"by partner: {by}"] + [n.title for n in items[:_SHOWN]]
        if len(items) > _SHOWN:
            lines.append(f"… and {len(items) - _SHOWN} more")
        return AlertRecord(key=f"group:{kind}:{_iso(now)}:{items[0].key}"[:300], kind=str(kind),
                           subject=f"{len(items)} {kind}", title=f"{len(items)} {noun}", body="\n".join(lines),
                           link=_GROUP_LINKS.get(kind, "/"), since=min((n.since for n in items if n.since),
                                                                       default=None), created_at=now)

    def _outages(self, s, health: list[rules.Health], now: datetime) -> int:
        """Open, escalate and resolve outages; returns how many alerts became due."""
        after = timedelta(minutes=self.settings.outage_after_minutes or 0)
        open_rows = {r.subject: r for r in s.scalars(
            select(AlertRecord).where(AlertRecord.kind == str(AlertKind.OUTAGE), AlertRecord.resolved_at.is_(None),
                                      AlertRecord.key.startswith("outage:")))}
        due = 0
        for h in health:
            row = open_rows.get(h.subject)
            if h.failing:
                seen = h.seen or now
                if row is None:
                    since = h.since or now
                    row = AlertRecord(key=f"outage:{h.subject}:{_iso(since)}"[:300], kind=str(AlertKind.OUTAGE),
                                      subject=h.subject, title=h.subject, status="watching", since=since,
                                      created_at=now)
                    s.add(row)
                    open_rows[h.subject] = row
                row.seen_at = seen
                row.body = rules._cut(h.error, 1000) if h.error else row.body
            elif row is not None:
                row.resolved_at = now
                if row.status == "watching":
                    row.status = "cleared"  # failed shorter than the threshold: nobody was told
                elif self.settings.recovery:
                    s.add(self._recovery(row, now))
                    due += 1
        for row in open_rows.values():
            if row.status != "watching" or row.resolved_at is not None:
                continue
            since, seen = rules.aware(row.since), rules.aware(row.seen_at)
            if since and seen and seen - since >= after:
                self._escalate(row, now)
                due += 1
        return due

    def _escalate(self, row: AlertRecord, now: datetime) -> None:
        since = rules.aware(row.since) or now
        name = row.subject.split(" ", 1)
        what = f"{name[0].capitalize()} {name[1]}" if len(name) == 2 else row.subject
        error = row.body or "no error was recorded"
        row.title = f"{what} has failed for {rules.describe_age((now - since).total_seconds())}"
        hint = ("its credentials, address or permissions may have changed: `gateway check` tests them"
                if name[0] == "source" else
                "documents for it wait and are retried; `gateway check` tests its credentials and permissions")
        row.body = "\n".join([f"last error: {error}", f"no success since {since:%Y-%m-%d %H:%M} UTC", hint])
        row.link = "/sources"
        row.status = "pending"

    def _recovery(self, row: AlertRecord, now: datetime) -> AlertRecord:
        since = rules.aware(row.since) or now
        name = row.subject.split(" ", 1)
        what = f"{name[0].capitalize()} {name[1]}" if len(name) == 2 else row.subject
        return AlertRecord(key=f"recovered:{row.id}", kind=str(AlertKind.OUTAGE), subject=row.subject,
                           title=f"{what} works again", created_at=now, since=since, resolved_at=now,
                           body=f"it failed for {rules.describe_age((now - since).total_seconds())}",
                           link="/sources")

    # -- sending -------------------------------------------------------------------------------------

    def _plan(self, now: datetime, report: ScanReport) -> list[AlertRecord]:
        """What to send now, within the hourly limit; what is over it is held (and summed up later)."""
        with transaction(self.engine) as s:
            sent = s.scalar(select(func.count()).select_from(AlertRecord).where(
                AlertRecord.sent_at >= now - timedelta(hours=1), AlertRecord.kind != str(AlertKind.TEST))) or 0
            room = self.settings.max_per_hour - sent
            pending = sorted(s.scalars(select(AlertRecord).where(AlertRecord.status == "pending")),
                             key=lambda r: (_PRIORITY.get(AlertKind(r.kind), 9), r.id))
            held = list(s.scalars(select(AlertRecord).where(AlertRecord.status == "held").order_by(AlertRecord.id)))
            if room <= 0:
                for r in pending:
                    r.status = "held"
                report.held += len(pending)
                return []
            if len(pending) + (1 if held else 0) <= room:
                due, over = pending, held
            else:
                due, over = pending[: room - 1], pending[room - 1:] + held
            if over:
                digest = self._digest(over, now)
                s.add(digest)
                for r in over:
                    r.status = "grouped"
                s.flush()
                due = [*due, digest]
            report.held += len([r for r in over if r in pending])
            return due

    def _digest(self, rows: list[AlertRecord], now: datetime) -> AlertRecord:
        counts = Counter(r.kind for r in rows)
        lines = ["over the limit of " f"{self.settings.max_per_hour} alerts an hour: "
                 + ", ".join(f"{c} {k.replace('_', ' ')}" for k, c in counts.most_common())]
        lines += [r.title for r in rows[:_SHOWN]]
        if len(rows) > _SHOWN:
            lines.append(f"… and {len(rows) - _SHOWN} more")
        return AlertRecord(key=f"digest:{_iso(now)}", kind=str(AlertKind.DIGEST), subject=f"{len(rows)} alerts",
                           title=f"{len(rows)} more alerts (summed up: too many this hour)", body="\n".join(lines),
                           link="/", created_at=now, since=min((rules.aware(r.created_at) for r in rows), default=now))

    def _store_result(self, row: AlertRecord, results: dict[str, str], report: ScanReport) -> None:
        now = self.clock()
        took = _took(results)
        with transaction(self.engine) as s:
            values: dict = {"attempts": AlertRecord.attempts + 1, "channels": json.dumps(results, sort_keys=True)}
            if took:
                values.update(status="sent", sent_at=now)
            elif not results:
                values.update(status="unsent")  # every channel leaves this kind out (their `kinds`)
            elif row.attempts + 1 >= MAX_ATTEMPTS:
                values.update(status="failed")
            s.execute(update(AlertRecord).where(AlertRecord.id == row.id).values(**values))
        if took:
            report.sent += 1
        elif results:
            report.failed += 1
            report.errors += [v[len("error: "):] for v in results.values()]
            log.warning("alerts.not_sent", alert=row.id, kind=row.kind, errors=list(results.values()))


def record_test(engine: Engine, results: dict[str, str], actor: str, now: datetime) -> None:
    """Keep a test alert in the store (who sent it, what each channel said)."""
    for attempt in (1, 2):
        try:
            with transaction(engine) as s:
                s.add(AlertRecord(key=f"test:{_iso(now)}:{attempt}", kind=str(AlertKind.TEST), subject=actor,
                                  title=f"Test alert sent by {actor}", created_at=now, attempts=1,
                                  status="sent" if _took(results) else "failed", sent_at=now,
                                  channels=json.dumps(results, sort_keys=True)))
            return
        except IntegrityError:  # two tests in the same microsecond
            continue
