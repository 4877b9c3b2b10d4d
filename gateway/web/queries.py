"""What the panel reads from the store, shaped for pages and the API.

The documents list never counts the whole table and never reads the large columns (raw EDI,
canonical JSON): it pages by seek on ``(created_at, id)`` (or ``(updated_at, id)``) with the
indexes in :mod:`gateway.store.models`, so the millionth page costs what the first does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, case, func, or_, select as sa_select, tuple_
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from gateway.operations import stage_names
from gateway.pipeline.machine import KINDS, LEGACY_STAGES, RESTING, STATES
from gateway.store.models import (
    Batch,
    Delivery,
    Document,
    Event,
    Interchange,
    PartnerFile,
    RateWindow,
    SourceStatus,
    utcnow,
)

STAGES = stage_names()
SORTS = {
    "newest": ("created_at", True),
    "oldest": ("created_at", False),
    "updated": ("updated_at", True),
}
MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_ID = 2**63 - 1  # the store's ids are 64-bit: a larger one names nothing (and must not reach the driver)
ACTIVE_STATES = tuple(s for s in STATES if s not in {r.value for r in RESTING})
FILTER_KEYS = ("partner", "kind", "state", "stage", "since", "until", "number", "control")


class BadRequest(ValueError):
    """Input the panel cannot use; the message names the field."""


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; the store writes them in UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _parse_when(name: str, text: str, *, end: bool) -> datetime:
    text = text.strip()
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            return start + timedelta(days=1) if end else start  # 'until' a day includes that day
        return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise BadRequest(f"{name}: {text[:40]!r} is not a date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM)") from None
    except OverflowError:  # 9999-12-31 plus the day 'until' includes, or an offset past year 1 / 9999
        raise BadRequest(f"{name}: {text[:40]!r} is outside the dates the panel can show") from None


parse_when = _parse_when  # for the other lists' date filters (acknowledgments, jobs)


@dataclass(frozen=True)
class DocumentFilter:
    """A selection of documents: what the list, the bulk reprocess and the API share."""

    partner: str | None = None  # '-' : documents from senders no mapping file names
    kind: str | None = None
    state: str | None = None
    stage: str | None = None
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    number: str | None = None  # PO or invoice number; a trailing '*' searches by prefix
    control: str | None = None  # interchange (ISA13 / UNB 0020) or message (ST02 / UNH 0062) control number

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> DocumentFilter:
        """From query-string or form values; blank means 'any'. Raises :class:`BadRequest`."""

        def get(key: str) -> str | None:
            v = params.get(key)
            if v is None:
                return None
            v = str(v).strip()
            return v or None

        kind, state, stage = get("kind"), get("state"), get("stage")
        stage = LEGACY_STAGES.get(stage, stage) if stage else stage  # post, forward, confirm: as before deliveries
        if kind and kind not in KINDS:
            raise BadRequest(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
        if state and state not in STATES:
            raise BadRequest(f"state: {state!r} is not one of {', '.join(STATES)}")
        if stage and stage not in STAGES:
            raise BadRequest(f"stage: {stage!r} is not one of {', '.join(STAGES)}")
        since = _parse_when("since", get("since"), end=False) if get("since") else None
        until = _parse_when("until", get("until"), end=True) if get("until") else None
        if since and until and since >= until:
            raise BadRequest("since: must be before until")
        for key in ("partner", "number", "control"):
            v = get(key)
            if v and len(v) > 100:
                raise BadRequest(f"{key}: at most 100 characters")
        number = get("number")
        if number and number.endswith("*") and len(number.rstrip("*")) < 2:
            raise BadRequest("number: a prefix search needs at least 2 characters before '*'")
        return cls(partner=get("partner"), kind=kind, state=state, stage=stage, since=since, until=until,
                   number=number, control=get("control"))

    def is_empty(self) -> bool:
        return not any(getattr(self, k) for k in FILTER_KEYS)

    def params(self) -> dict[str, str]:
        """Back to query-string values (for links that keep the filter)."""
        out = {}
        for k in FILTER_KEYS:
            v = getattr(self, k)
            if v is None:
                continue
            out[k] = v.isoformat() if isinstance(v, datetime) else str(v)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()}

    def conditions(self) -> list:
        c = []
        if self.partner == "-":
            c.append(Document.partner.is_(None))
        elif self.partner:
            c.append(Document.partner == self.partner)
        if self.kind:
            c.append(Document.kind == self.kind)
        if self.state:
            c.append(Document.state == self.state)
        if self.stage:
            c.append(Document.stage == self.stage)
        if self.since:
            c.append(Document.created_at >= self.since)
        if self.until:
            c.append(Document.created_at < self.until)
        if self.number:
            if self.number.endswith("*"):
                # A range, not LIKE: it uses the btree index on both SQLite and PostgreSQL.
                lo = self.number.rstrip("*")
                hi = lo + "\U0010ffff"
                c.append(or_(and_(Document.po_number >= lo, Document.po_number < hi),
                             and_(Document.invoice_number >= lo, Document.invoice_number < hi)))
            else:
                c.append(or_(Document.po_number == self.number, Document.invoice_number == self.number))
        if self.control:
            c.append(or_(Document.interchange_control == self.control, Document.message_control == self.control))
        return c


# --------------------------------------------------------------------------------------------- list

LIST_COLUMNS = (
    Document.id, Document.created_at, Document.updated_at, Document.partner, Document.kind, Document.standard,
    Document.message_type, Document.po_number, Document.invoice_number, Document.interchange_control,
    Document.message_control, Document.state, Document.stage, Document.error, Document.error_code, Document.attempts,
)


@dataclass
class Page:
    items: list[dict]
    next: str | None  # cursor of the following (older, for 'newest') page
    prev: str | None
    sort: str
    limit: int


def _cursor(ts: datetime, doc_id: int) -> str:
    ts = as_utc(ts)
    micros = (ts - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    return f"{micros}.{doc_id}"


def _parse_cursor(name: str, text: str) -> tuple[datetime, int]:
    m = re.fullmatch(r"(-?[0-9]{1,20})\.([0-9]{1,19})", text or "")
    try:
        if not m or int(m.group(2)) > MAX_ID:
            raise OverflowError
        ts = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(m.group(1)))
    except OverflowError:
        raise BadRequest(f"{name}: {(text or '')[:60]!r} is not a page cursor from this panel") from None
    return ts, int(m.group(2))


def _row(r) -> dict:
    return {
        "id": r.id,
        "created_at": as_utc(r.created_at),
        "updated_at": as_utc(r.updated_at),
        "partner": r.partner,
        "kind": r.kind,
        "standard": r.standard,
        "message_type": r.message_type,
        "po_number": r.po_number,
        "invoice_number": r.invoice_number,
        "interchange_control": r.interchange_control,
        "message_control": r.message_control,
        "state": r.state,
        "stage": r.stage,
        "error": (r.error[:300] + "…") if r.error and len(r.error) > 300 else r.error,
        "error_code": r.error_code,
        "attempts": r.attempts,
    }


def list_documents(
    session: Session,
    flt: DocumentFilter,
    *,
    sort: str = "newest",
    limit: int = DEFAULT_LIMIT,
    after: str | None = None,
    before: str | None = None,
) -> Page:
    """One page of documents, by seek: ``after`` is the cursor of the last row shown, ``before`` of the first."""
    if sort not in SORTS:
        raise BadRequest(f"sort: {sort!r} is not one of {', '.join(SORTS)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: must be between 1 and {MAX_LIMIT}")
    if after and before:
        raise BadRequest("after, before: give one page cursor, not both")
    column, descending = SORTS[sort]
    ts_col = getattr(Document, column)
    key = tuple_(ts_col, Document.id)
    backwards = before is not None  # walking towards the start: reverse the order, then the rows
    down = descending != backwards
    stmt = sa_select(*LIST_COLUMNS).where(*flt.conditions())
    if after or before:
        ts, doc_id = _parse_cursor("after" if after else "before", after or before)
        stmt = stmt.where(key < tuple_(ts, doc_id) if down else key > tuple_(ts, doc_id))
    stmt = stmt.order_by(ts_col.desc(), Document.id.desc()) if down else stmt.order_by(ts_col.asc(), Document.id.asc())
    rows = session.execute(stmt.limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    items = [_row(r) for r in rows]

    def cur(item):
        return _cursor(item[column], item["id"])

    if not items:
        return Page(items, None, None, sort, limit)
    if backwards:
        nxt, prv = cur(items[-1]), (cur(items[0]) if more else None)
    else:
        nxt = cur(items[-1]) if more else None
        prv = cur(items[0]) if after else None
    return Page(items, nxt, prv, sort, limit)


def selection_ids(session: Session, flt: DocumentFilter, *, limit: int | None = None) -> list[int]:
    """The ids a filter selects (for bulk reprocess), oldest first."""
    stmt = sa_select(Document.id).where(*flt.conditions()).order_by(Document.id)
    if limit:
        stmt = stmt.limit(limit)
    return [r[0] for r in session.execute(stmt)]


def count_capped(session: Session, flt: DocumentFilter, cap: int = 100_000) -> tuple[int, bool]:
    """How many documents a filter selects, counting at most ``cap`` (True when capped)."""
    sub = sa_select(Document.id).where(*flt.conditions()).limit(cap + 1).subquery()
    n = session.execute(sa_select(func.count()).select_from(sub)).scalar_one()
    return min(n, cap), n > cap


# --------------------------------------------------------------------------------------------- detail

def _loads(text: str | None, default=None):
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return text


SEGMENT_PAGE = 500  # segments of the raw EDI shown at once
LINE_PAGE = 200  # canonical document lines shown at once
FINDING_PAGE = 200  # findings listed at once (each segment still shows its own)


@dataclass(frozen=True)
class DetailPage:
    """Which part of a large document to show: its raw segments and canonical lines come in pages."""

    segments_from: int | None = None  # 1-based; None: the page holding the first failing segment
    lines_from: int = 1  # 1-based

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> DetailPage:
        def number(key: str) -> int | None:
            text = str(params.get(key) or "").strip()
            if not text:
                return None
            if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < 1:
                raise BadRequest(f"{key}: must be a whole number from 1")
            return int(text)

        return cls(segments_from=number("segments_from"), lines_from=number("lines_from") or 1)


def _pager(start: int, count: int, total: int, size: int) -> dict:
    return {"from": start, "count": count, "total": total, "size": size,
            "next": start + size if start + size <= total else None,
            "prev": max(1, start - size) if start > 1 else None}


def segment_lines(doc: Document, findings: list[dict], start: int | None = None,
                  size: int = SEGMENT_PAGE) -> tuple[list[dict], dict]:
    """One page of the set's segments, one per line, each with the findings that point at it."""
    lines = (doc.edi or "").splitlines()
    marks: dict[int, list[dict]] = {}
    for f in findings:
        if not isinstance(f, dict):
            continue
        pos = f.get("set_position")
        if not pos and f.get("segment_index") and doc.first_segment_index:
            pos = f["segment_index"] - doc.first_segment_index + 1
        if isinstance(pos, int) and 1 <= pos <= len(lines):
            marks.setdefault(pos, []).append(f)
    if start is None:  # open where the first error is
        failing = [n for n, fs in marks.items() if any(f.get("severity") in ("error", "fatal") for f in fs)]
        start = ((min(failing) - 1) // size) * size + 1 if failing else 1
    out = []
    for n in range(start, min(len(lines), start + size - 1) + 1):
        fs = marks.get(n, [])
        out.append({
            "n": n,
            "file_index": (doc.first_segment_index + n - 1) if doc.first_segment_index else None,
            "text": lines[n - 1],
            "findings": fs,
            "error": any(f.get("severity") in ("error", "fatal") for f in fs),
        })
    return out, _pager(start, len(out), len(lines), size)


def _paged_lines(canonical: Any, start: int, size: int = LINE_PAGE) -> tuple[Any, dict | None]:
    if not isinstance(canonical, dict) or not isinstance(canonical.get("lines"), list):
        return canonical, None
    lines = canonical["lines"]
    shown = lines[start - 1: start - 1 + size]
    return {**canonical, "lines": shown}, _pager(start, len(shown), len(lines), size)


def _event(e: Event) -> dict:
    return {
        "id": e.id,
        "at": as_utc(e.at),
        "stage": e.stage,
        "outcome": e.outcome,
        "attempt": e.attempt,
        "actor": e.actor,
        "duration_ms": e.duration_ms,
        "detail": _loads(e.detail, {}),
    }


def _delivery(d: Delivery, batch: Batch | None) -> dict:
    """A delivery as the panel shows it: where it is, what it waits for, what the destination holds."""
    return {
        "id": d.id, "destination": d.destination, "position": d.position, "state": d.state,
        "attempts": d.attempts, "waits": d.waits, "next_attempt_at": as_utc(d.next_attempt_at),
        "reference": d.reference, "error": d.error, "error_code": d.error_code,
        "response": _loads(d.response), "updated_at": as_utc(d.updated_at),
        "batch": None if batch is None else {
            "id": batch.id, "key": batch.key, "state": batch.state, "reference": batch.reference,
            "members": batch.member_count, "error": batch.error, "waits": batch.waits,
            "next_attempt_at": as_utc(batch.next_attempt_at),
        },
    }


def document_detail(session: Session, doc_id: int, page: DetailPage | None = None) -> dict | None:
    """Everything about a document; its segments, canonical lines and findings a page at a time."""
    page = page or DetailPage()
    doc = session.get(Document, doc_id)
    if doc is None:
        return None
    ich = session.get(Interchange, doc.interchange_id)
    events = session.exec(select(Event).where(Event.document_id == doc_id).order_by(Event.id)).all()
    findings = _loads(doc.findings, []) or []
    deliveries = session.exec(select(Delivery).where(Delivery.document_id == doc_id)
                              .order_by(Delivery.position, Delivery.id)).all()
    batch_ids = sorted({d.batch_id for d in deliveries if d.batch_id})
    batches = {b.id: b for b in session.exec(select(Batch).where(Batch.id.in_(batch_ids))).all()} if batch_ids else {}
    batch_events = session.exec(select(Event).where(Event.batch_id.in_(batch_ids), Event.document_id.is_(None))
                                .order_by(Event.id)).all() if batch_ids else []
    timeline = [_event(e) for e in events]
    plex = next((d for d in deliveries if d.destination == "plex"), None)
    anaplan = next((d for d in deliveries if d.destination == "anaplan"), None)
    batch = batches.get(anaplan.batch_id) if anaplan is not None and anaplan.batch_id else None
    segments, segments_page = segment_lines(doc, findings, page.segments_from)
    canonical, lines_page = _paged_lines(_loads(doc.canonical), page.lines_from)
    return {
        "id": doc.id,
        "interchange_id": doc.interchange_id,
        "position": doc.position,
        "partner": doc.partner,
        "kind": doc.kind,
        "standard": doc.standard,
        "message_type": doc.message_type,
        "version": doc.version,
        "po_number": doc.po_number,
        "invoice_number": doc.invoice_number,
        "sender_id": doc.sender_id,
        "receiver_id": doc.receiver_id,
        "control": {"interchange": doc.interchange_control, "group": doc.group_control, "message": doc.message_control},
        "state": doc.state,
        "stage": doc.stage,
        "error": doc.error,
        "error_code": doc.error_code,
        "attempts": doc.attempts,
        "next_attempt_at": as_utc(doc.next_attempt_at),
        "lease_owner": doc.lease_owner,
        "lease_until": as_utc(doc.lease_until),
        "supplier_code": doc.supplier_code,
        "candidates": _candidates(doc.candidates),
        "plex_key": plex.reference if plex is not None else None,
        "test": doc.test,
        "deliveries": [_delivery(d, batches.get(d.batch_id) if d.batch_id else None) for d in deliveries],
        "created_at": as_utc(doc.created_at),
        "updated_at": as_utc(doc.updated_at),
        "canonical": canonical,
        "lines_page": lines_page,
        "findings": findings[:FINDING_PAGE],
        "findings_total": len(findings),
        "segments": segments,
        "segments_page": segments_page,
        "events": timeline,
        # What the outside systems said: the deliveries' events carry their responses in detail
        # (post, forward and confirm: events written before deliveries existed).
        "plex": [e for e in timeline if e["stage"] in ("match", "plex", "post")],
        "anaplan": [e for e in timeline if e["stage"] in ("anaplan", "forward", "confirm")]
        + [_event(e) for e in batch_events if e.stage == "anaplan"],
        "anaplan_batch": None if batch is None else {
            "id": batch.id, "import_name": batch.key, "state": batch.state, "task_id": batch.reference,
            "document_count": batch.member_count, "result": _loads(batch.result), "error": batch.error,
            "updated_at": as_utc(batch.updated_at),
        },
        "interchange": None if ich is None else {
            "id": ich.id, "source": ich.source, "remote_name": ich.remote_name, "received_at": as_utc(ich.received_at),
            "sha256": ich.sha256, "size": ich.size, "state": ich.state, "error": ich.error,
            "control_number": ich.control_number, "sender_id": ich.sender_id, "receiver_id": ich.receiver_id,
            "document_count": ich.document_count, "duplicate_of": ich.duplicate_of, "forced": ich.forced,
            "ack_kind": ich.ack_kind, "ack": ich.ack, "ack_sent_to": ich.ack_sent_to,
            "ack_sent_at": as_utc(ich.ack_sent_at), "findings": _loads(ich.findings, []) or [],
        },
    }


def _candidates(text: str | None) -> list[dict]:
    """Document.candidates as a list of {code, name, score, reason}, whatever shape the matcher wrote."""
    data = _loads(text, [])
    if isinstance(data, dict):
        data = data.get("candidates") or data.get("suppliers") or []
    out = []
    for c in data if isinstance(data, list) else []:
        if isinstance(c, str):
            out.append({"code": c, "name": None, "score": None, "reason": None})
        elif isinstance(c, dict):
            code = c.get("code") or c.get("supplier_code") or c.get("supplier")
            if code:
                out.append({"code": str(code), "name": c.get("name"), "score": c.get("score"),
                            "reason": c.get("reason") or c.get("why")})
    return out


# --------------------------------------------------------------------------------------------- overview

def _hour_bucket(engine_name: str):
    if engine_name == "postgresql":
        return func.to_char(func.date_trunc("hour", func.timezone("UTC", Document.created_at)), "YYYY-MM-DD\"T\"HH24")
    # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
    return func.replace(func.substr(Document.created_at, 1, 13), " ", "T")


def overview(session: Session, *, now: datetime | None = None) -> dict:
    now = now or utcnow()
    dialect = session.get_bind().dialect.name
    by_state = dict(session.execute(sa_select(Document.state, func.count()).group_by(Document.state)).all())
    partner_rows = session.execute(
        sa_select(Document.partner, Document.state, func.count()).group_by(Document.partner, Document.state)
    ).all()
    by_partner: dict[str, dict[str, int]] = {}
    for partner, state, n in partner_rows:
        by_partner.setdefault(partner or "-", {})[state] = n
    start = (now - timedelta(hours=23)).replace(minute=0, second=0, microsecond=0)
    bucket = _hour_bucket(dialect)
    hourly = dict(session.execute(
        sa_select(bucket, func.count()).where(Document.created_at >= start).group_by(bucket)
    ).all())
    hours = []
    for i in range(24):
        h = start + timedelta(hours=i)
        hours.append({"hour": h, "count": int(hourly.get(h.strftime("%Y-%m-%dT%H"), 0))})
    failures = session.execute(
        sa_select(*LIST_COLUMNS).where(Document.state == "failed")
        .order_by(Document.created_at.desc(), Document.id.desc()).limit(10)
    ).all()
    attention = session.execute(
        sa_select(*LIST_COLUMNS).where(Document.state == "needs_attention")
        .order_by(Document.created_at.desc(), Document.id.desc()).limit(10)
    ).all()
    return {
        "at": now,
        "by_state": {s: int(by_state.get(s, 0)) for s in STATES},
        "total": int(sum(by_state.values())),
        "by_partner": dict(sorted(by_partner.items())),
        "per_hour": hours,
        "recent_failures": [_row(r) for r in failures],
        "needs_attention": [_row(r) for r in attention],
        "interchanges_failed": int(session.execute(
            sa_select(func.count()).select_from(Interchange).where(Interchange.state == "failed")).scalar_one()),
        # Files that yielded no documents (unreadable, broken envelope) or were held back as duplicates.
        "interchanges_held": [
            {"id": r.id, "source": r.source, "remote_name": r.remote_name, "received_at": as_utc(r.received_at),
             "state": r.state, "error": r.error, "duplicate_of": r.duplicate_of}
            for r in session.execute(
                sa_select(Interchange.id, Interchange.source, Interchange.remote_name, Interchange.received_at,
                          Interchange.state, Interchange.error, Interchange.duplicate_of)
                .where(Interchange.state.in_(("failed", "duplicate"))).order_by(Interchange.id.desc()).limit(10))
        ],
    }


def budget_limit(settings, name: str) -> float | None:
    """The per-minute allowance of a shared request budget, from the settings that made it."""
    plex = getattr(settings, "plex", None)
    anaplan = getattr(settings, "anaplan", None)
    if name.startswith("plex-soap"):
        return getattr(plex, "soap_requests_per_minute", None)
    if name.startswith("plex"):
        return getattr(plex, "requests_per_minute", 200)
    if name.startswith("anaplan"):
        return getattr(anaplan, "requests_per_minute", 600)
    return None


def budgets(session: Session, settings, *, now: datetime | None = None) -> list[dict]:
    """Each shared request budget (Plex, Anaplan): requests reserved in the last minute, its limit, any hold.

    The budgets write short windows (``RateWindow``), and a server's Retry-After as a ``<name>#hold``
    row whose window_start is when the hold ends.
    """
    now = now or utcnow()
    rows = session.exec(select(RateWindow).where(
        or_(RateWindow.window_start >= now - timedelta(seconds=60), RateWindow.budget.like("%#hold")))).all()
    used: dict[str, int] = {}
    holds: dict[str, datetime] = {}
    for r in rows:
        start = as_utc(r.window_start)
        if r.budget.endswith("#hold"):
            if start > now:
                holds[r.budget[: -len("#hold")]] = start
        elif start <= now:
            used[r.budget] = used.get(r.budget, 0) + r.used
    out = []
    for name in sorted(set(used) | set(holds)):
        system = "plex" if name.startswith("plex") else "anaplan" if name.startswith("anaplan") else name.split(":")[0]
        out.append({"budget": name, "system": system, "label": budget_label(name), "used_last_minute": used.get(name, 0),
                    "limit_per_minute": budget_limit(settings, name), "held_until": holds.get(name)})
    for name in ("plex-connect", "anaplan"):
        if getattr(settings, name.split("-")[0], None) is None:
            continue
        if not any(b["label"] == budget_label(name) for b in out):
            out.append({"budget": name, "system": name.split("-")[0], "label": budget_label(name),
                        "used_last_minute": 0, "limit_per_minute": budget_limit(settings, name), "held_until": None})
    # Several keys of one kind (rare) keep one label each, told apart by a number.
    seen: dict[str, int] = {}
    for b in sorted(out, key=lambda b: b["budget"]):
        seen[b["label"]] = seen.get(b["label"], 0) + 1
        if seen[b["label"]] > 1:
            b["label"] += f" ({seen[b['label']]})"
    return sorted(out, key=lambda b: b["label"])


def budget_label(name: str) -> str:
    """One name per budget for people: the store's key names a credential by its hash, never shown."""
    if name.startswith("plex-soap"):
        return "Plex SOAP"
    if name.startswith("plex"):
        return "Plex REST"
    if name.startswith("anaplan"):
        return "Anaplan"
    return name.split(":")[0]


def sources(session: Session, settings, *, now: datetime | None = None) -> list[dict]:
    """Every configured source and every source the store has heard of, with its last poll and error."""
    now = now or utcnow()
    intervals = {f"sterling:{s.name}": s.interval_seconds for s in settings.sterling}
    intervals.update({f"sftp:{s.name}": s.interval_seconds for s in settings.sftp})
    intervals.update({f"local:{s.name}": s.interval_seconds for s in settings.local})
    rows = {r.source: r for r in session.exec(select(SourceStatus)).all()}
    out = []
    for name in sorted(set(intervals) | set(rows)):
        r = rows.get(name)
        last_poll = as_utc(r.last_poll_at) if r else None
        interval = intervals.get(name)
        stale = bool(interval and (last_poll is None or (now - last_poll).total_seconds() > 3 * interval + 60))
        error_now = bool(r and r.last_error and (r.last_success_at is None or
                                                 (r.last_error_at and as_utc(r.last_error_at) >= as_utc(r.last_success_at))))
        since = as_utc(r.failing_since or r.last_error_at) if r and error_now else None
        out.append({
            "source": name,
            "configured": name in intervals,
            "interval_seconds": interval,
            "last_poll_at": last_poll,
            "last_success_at": as_utc(r.last_success_at) if r else None,
            "last_error": r.last_error if r else None,
            "last_error_at": as_utc(r.last_error_at) if r else None,
            "files_taken": r.files_taken if r else 0,
            "failing": error_now,
            "failing_since": since,
            "stale": stale,
        })
    return out


# Error codes that say a destination as a whole is refusing the gateway (credentials, permissions,
# configuration) or cannot be reached, not that one document was wrong.
DESTINATION_CODES = {
    "plex": ("plex.auth", "plex.permission", "plex.config", "plex.transient"),
    "anaplan": ("anaplan.auth", "anaplan.config", "anaplan.retry", "anaplan.batch_failed", "anaplan.internal"),
}


def destinations(session: Session, settings) -> list[dict]:
    """Each configured destination, failing when deliveries failed or wait on a destination-wide error
    (credentials, permission, configuration, unreachable); since the oldest of them, with the latest error."""
    from gateway.store.models import Delivery

    out = []
    for name, codes in DESTINATION_CODES.items():
        if getattr(settings, name, None) is None:
            continue
        held = and_(Delivery.destination == name, Delivery.error_code.in_(codes),
                    Delivery.state.in_(("failed", "pending", "waiting")))
        first, last, count = session.execute(
            sa_select(func.min(Delivery.updated_at), func.max(Delivery.updated_at), func.count()).where(held)).one()
        latest = session.execute(sa_select(Delivery.error, Delivery.error_code).where(held)
                                 .order_by(Delivery.updated_at.desc()).limit(1)).first()
        out.append({"destination": name, "failing": bool(count), "failing_since": as_utc(first) if count else None,
                    "last_error_at": as_utc(last) if count else None, "documents": int(count),
                    "last_error": latest.error if latest else None, "error_code": latest.error_code if latest else None})
    return out


def readiness(session: Session, settings) -> dict:
    """What /readyz reports: the store answers, and which sources and destinations are failing since when."""
    parts = [{"part": f"source:{s['source']}", "failing": s["failing"] or s["stale"],
              "since": s["failing_since"] or (s["last_poll_at"] if s["stale"] else None),
              "reason": "polls fail" if s["failing"] else "not polled lately" if s["stale"] else None}
             for s in sources(session, settings) if s["configured"]]
    parts += [{"part": f"destination:{d['destination']}", "failing": d["failing"], "since": d["failing_since"],
               "reason": d["error_code"]} for d in destinations(session, settings)]
    failing = [p for p in parts if p["failing"]]
    return {"status": "degraded" if failing else "ready", "failing": failing, "parts": parts}


# --------------------------------------------------------------------------------------------- partners

ERROR_SAMPLE = 1000


def partner_activity(session: Session, partner_id: str) -> dict:
    """Last document and the error rate over its latest documents (bounded: never a full count)."""
    last = session.execute(
        sa_select(func.max(Document.created_at)).where(Document.partner == partner_id)
    ).scalar_one()
    recent = sa_select(Document.state).where(Document.partner == partner_id) \
        .order_by(Document.created_at.desc()).limit(ERROR_SAMPLE).subquery()
    total, bad = session.execute(
        sa_select(func.count(), func.coalesce(func.sum(case((recent.c.state.in_(("failed", "needs_attention")), 1),
                                                            else_=0)), 0))
    ).one()
    return {"last_activity": as_utc(last), "sample": int(total), "errors": int(bad),
            "error_rate": (bad / total) if total else None}


def partner_files(session: Session) -> dict[str, PartnerFile]:
    return {r.partner_id: r for r in session.exec(select(PartnerFile)).all()}


def health(engine: Engine) -> tuple[bool, str]:
    try:
        with engine.connect() as conn:
            conn.execute(sa_select(1)).scalar_one()
        return True, "ok"
    except Exception as exc:  # noqa: BLE001 - health reports, never raises
        return False, f"store unreachable: {type(exc).__name__}"

