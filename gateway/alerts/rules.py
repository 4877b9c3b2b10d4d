"""What deserves an alert, read from the store by state and audit events alone.

Nothing here knows how the worker or the pollers work: a failed document is a ``documents`` row in
state ``failed`` (its failing audit event names the failure), a waiting choice one in
``needs_attention``, a failing source its ``source_status`` row, a failing destination its audit
events (retries and outage-like failures with no success since), a rejecting acknowledgment the
acknowledgment stored with its interchange. Each look returns :class:`Notice` values with a key
that is the same however often the same thing is seen, so the scanner alerts once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from gateway.alerts.settings import AlertKind
from gateway.store.models import Document, Event, Interchange, SourceStatus

MAX_ROWS = 1000  # per look and kind: more than this are alerted on the next look
_KINDS = {"purchase_order": "Purchase order", "invoice": "Invoice"}

# Events are named by the stage that wrote them: before the seam a destination's stages
# (post / forward, confirm), after it the destination's own name.
DESTINATION_STAGES: dict[str, str] = {
    "post": "plex", "plex": "plex",
    "forward": "anaplan", "confirm": "anaplan", "anaplan": "anaplan",
    "syspro": "syspro",
}
# Failures that say the outside system (or our access to it) is broken, not the document: the last
# word of the stage's error code. A rejected document (bad data, a duplicate) is not an outage.
OUTAGE_CODES = frozenset({"auth", "permission", "config", "transient", "throttled", "retry", "unavailable",
                          "internal", "batch_failed", "timeout", "busy", "locked"})


@dataclass
class Notice:
    """One thing to tell people: its key is stable across looks (the scanner alerts once per key)."""

    key: str
    kind: AlertKind
    subject: str
    title: str
    lines: list[str] = field(default_factory=list)
    link: str | None = None  # a panel path such as /documents/12
    since: datetime | None = None
    group: str | None = None  # what grouped alerts count by (the partner)


@dataclass(frozen=True)
class Health:
    """A source or destination as last seen: failing or not, since when, with its last error."""

    subject: str  # "source sterling:b2bi", "destination plex"
    failing: bool
    since: datetime | None = None  # failing: no success since then (None: never succeeded)
    error: str | None = None
    seen: datetime | None = None  # failing: when the last failure happened


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone; every timestamp in the store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def describe_age(seconds: float) -> str:
    """'40 seconds', '25 minutes', '3 hours 10 minutes', '2 days 4 hours'."""
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} seconds"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} minutes"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} hours" + (f" {minutes} minutes" if minutes else "")
    days, hours = divmod(hours, 24)
    return f"{days} days" + (f" {hours} hours" if hours else "")


def _what(doc: Any) -> str:
    number = doc.invoice_number if doc.kind == "invoice" else doc.po_number
    label = _KINDS.get(doc.kind or "", f"Document {doc.id}" + (f" ({doc.message_type})" if doc.message_type else ""))
    if label.startswith("Document"):
        return label
    return f"{label} {number}" if number else f"{label} (document {doc.id})"


def _who(doc: Any) -> str:
    return doc.partner or (f"sender {doc.sender_id}" if doc.sender_id else "an unknown sender")


def _last_events(s: Session, doc_ids: Sequence[int], outcome: str) -> dict[int, int]:
    if not doc_ids:
        return {}
    rows = s.execute(
        select(Event.document_id, func.max(Event.id))
        .where(Event.document_id.in_(doc_ids), Event.outcome == outcome)
        .group_by(Event.document_id)
    ).all()
    return {doc_id: event_id for doc_id, event_id in rows}


def _cut(text: str | None, limit: int = 400) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_DOC_COLUMNS = (Document.id, Document.partner, Document.kind, Document.message_type, Document.po_number,
                Document.invoice_number, Document.sender_id, Document.stage, Document.error, Document.error_code,
                Document.updated_at, Document.interchange_id)


def failed_documents(s: Session, since: datetime) -> list[Notice]:
    """Documents that failed since ``since`` (by their last change), one notice per failure."""
    docs = s.execute(
        select(*_DOC_COLUMNS).where(Document.state == "failed", Document.updated_at >= since)
        .order_by(Document.updated_at, Document.id).limit(MAX_ROWS)
    ).all()
    failures = _last_events(s, [d.id for d in docs], "fail")
    out = []
    for d in docs:
        # The failing event is the failure's identity: a document reprocessed and failed again alerts again.
        mark = failures.get(d.id) or aware(d.updated_at).isoformat()
        stage = f" at {d.stage}" if d.stage else ""
        lines = [_cut(d.error) or "no reason was recorded"]
        if d.error_code:
            lines.append(f"code {d.error_code}")
        lines.append(f"document {d.id}, from {_who(d)}")
        out.append(Notice(f"document_failed:{d.id}:{mark}", AlertKind.DOCUMENT_FAILED, f"document {d.id}",
                          f"{_what(d)} from {_who(d)} failed{stage}", lines, f"/documents/{d.id}",
                          aware(d.updated_at), group=d.partner or d.sender_id or "unknown"))
    return out


def failed_files(s: Session, since: datetime) -> list[Notice]:
    """Received files that could not be split into documents (a broken envelope) since ``since``."""
    events = s.execute(
        select(Event.interchange_id, func.max(Event.id))
        .where(Event.at >= since, Event.document_id.is_(None), Event.interchange_id.is_not(None),
               Event.outcome == "fail")
        .group_by(Event.interchange_id).limit(MAX_ROWS)
    ).all()
    if not events:
        return []
    marks = dict(events)
    rows = s.execute(
        select(Interchange.id, Interchange.partner, Interchange.sender_id, Interchange.remote_name,
               Interchange.source, Interchange.error, Interchange.received_at)
        .where(Interchange.id.in_(list(marks)), Interchange.state == "failed")
    ).all()
    out = []
    for r in rows:
        who = r.partner or (f"sender {r.sender_id}" if r.sender_id else "an unknown sender")
        name = r.remote_name or f"interchange {r.id}"
        out.append(Notice(f"file_failed:{r.id}:{marks[r.id]}", AlertKind.DOCUMENT_FAILED, f"interchange {r.id}",
                          f"File {name} from {who} could not be read",
                          [_cut(r.error) or "no reason was recorded", f"interchange {r.id}, taken from {r.source}"],
                          "/", aware(r.received_at), group=r.partner or r.sender_id or "unknown"))
    return out


def waiting_choices(s: Session, now: datetime, after: timedelta) -> list[Notice]:
    """Documents waiting for a person (a supplier choice) for longer than ``after``."""
    docs = s.execute(
        select(*_DOC_COLUMNS).where(Document.state == "needs_attention", Document.updated_at <= now - after)
        .order_by(Document.updated_at, Document.id).limit(MAX_ROWS)
    ).all()
    waits = _last_events(s, [d.id for d in docs], "attention")
    out = []
    for d in docs:
        since = aware(d.updated_at)
        mark = waits.get(d.id) or since.isoformat()
        lines = [_cut(d.error) or "a person must choose", f"document {d.id}, from {_who(d)}",
                 "choose the Plex supplier on the document's page"]
        out.append(Notice(f"attention_waiting:{d.id}:{mark}", AlertKind.ATTENTION_WAITING, f"document {d.id}",
                          f"{_what(d)} from {_who(d)} has waited {describe_age((now - since).total_seconds())} "
                          "for a supplier choice", lines, f"/documents/{d.id}", since,
                          group=d.partner or d.sender_id or "unknown"))
    return out


# ------------------------------------------------------------------------------ acknowledgments


@dataclass(frozen=True)
class AckVerdict:
    """What an acknowledgment says of the interchange it answers."""

    status: str  # accepted | accepted_with_errors | partially_accepted | rejected
    rejected: tuple[str, ...] = ()  # what it rejects: 'interchange 000000123', '850 0001', 'ORDERS 1'

    @property
    def rejecting(self) -> bool:
        return self.status in ("rejected", "partially_accepted")


_X12_VERDICT = {"A": "accepted", "E": "accepted_with_errors", "P": "partially_accepted", "R": "rejected",
                "M": "rejected", "W": "rejected", "X": "rejected"}
_EDIFACT_VERDICT = {"4": "rejected", "7": "accepted", "8": "accepted"}
_RANK = ("accepted", "accepted_with_errors", "partially_accepted", "rejected")


def _el(segment: list, n: int, component: int = 0) -> str:
    value = segment[n] if len(segment) > n else ""
    if isinstance(value, list):
        value = value[component] if len(value) > component else ""
    return str(value or "").strip()


def ack_verdict(text: str) -> AckVerdict:
    """Read a 997 / 999 / TA1 / CONTRL (one or several, as stored) for its verdict.

    The worst verdict wins: a TA1 or UCI rejecting the interchange, an AK9/IK5/AK5 or UCF/UCM
    rejecting a group or a set ('P' — some sets rejected — counts as rejecting too).
    """
    from translators.envelope import segments

    worst = "accepted"
    rejected: list[str] = []
    set_id: str = ""

    def note(status: str, what: str | None, part: bool = False) -> None:
        nonlocal worst
        if status == "rejected" and what:
            rejected.append(what)
        if part and status == "rejected":
            status = "partially_accepted"  # a set or message: its group's verdict says whether all were
        if _RANK.index(status) > _RANK.index(worst):
            worst = status

    for seg in segments(text.encode("utf-8", "replace")):
        tag = seg[0] if seg else ""
        if tag == "TA1":
            note(_X12_VERDICT.get(_el(seg, 4), "accepted"), f"interchange {_el(seg, 1)}")
        elif tag in ("AK2", "IK2"):
            set_id = f"{_el(seg, 1)} {_el(seg, 2)}"
        elif tag in ("AK5", "IK5"):
            note(_X12_VERDICT.get(_el(seg, 1), "accepted"), set_id or None, part=True)
        elif tag == "AK9":
            status = _X12_VERDICT.get(_el(seg, 1), "accepted")
            note(status, None if status != "rejected" or rejected else "group")
        elif tag == "UCI":
            note(_EDIFACT_VERDICT.get(_el(seg, 4), "accepted"), f"interchange {_el(seg, 1)}")
        elif tag == "UCM":
            note(_EDIFACT_VERDICT.get(_el(seg, 3), "accepted"), f"{_el(seg, 2)} {_el(seg, 1)}".strip(), part=True)
        elif tag == "UCF":
            note(_EDIFACT_VERDICT.get(_el(seg, 3), "accepted"), f"group {_el(seg, 1)}", part=True)
    return AckVerdict(worst, tuple(dict.fromkeys(rejected)))


def rejecting_acknowledgments(s: Session, since: datetime) -> list[Notice]:
    """Interchanges split since ``since`` whose acknowledgment rejects some or all of what was sent."""
    import hashlib

    split = select(Event.interchange_id).where(
        Event.at >= since, Event.document_id.is_(None), Event.interchange_id.is_not(None),
        Event.stage == "translate")
    rows = s.execute(
        select(Interchange.id, Interchange.partner, Interchange.sender_id, Interchange.remote_name,
               Interchange.control_number, Interchange.ack_kind, Interchange.ack, Interchange.ack_sent_to,
               Interchange.received_at)
        .where(Interchange.id.in_(split), Interchange.ack.is_not(None)).order_by(Interchange.id).limit(MAX_ROWS)
    ).all()
    out = []
    for r in rows:
        verdict = ack_verdict(r.ack)
        if not verdict.rejecting:
            continue
        who = r.partner or (f"sender {r.sender_id}" if r.sender_id else "an unknown sender")
        kind = r.ack_kind or "acknowledgment"
        words = "rejects" if verdict.status == "rejected" else "rejects part of"
        lines = [f"rejected: {', '.join(verdict.rejected)}" if verdict.rejected else "rejected",
                 f"interchange {r.id} ({r.remote_name or 'no name'}), control number {r.control_number or '?'}",
                 f"sent to {r.ack_sent_to}" if r.ack_sent_to else "not sent to the partner (the gateway keeps it)"]
        digest = hashlib.sha256(r.ack.encode()).hexdigest()[:16]
        out.append(Notice(f"ack_rejected:{r.id}:{digest}", AlertKind.ACK_REJECTED, f"interchange {r.id}",
                          f"The {kind} to {who} {words} interchange {r.control_number or r.id}", lines, "/",
                          aware(r.received_at), group=r.partner or r.sender_id or "unknown"))
    return out


# ------------------------------------------------------------------------------ health


def source_health(s: Session, sources: Iterable[str]) -> list[Health]:
    """Each configured source: failing when its last poll failed after its last success."""
    names = list(sources)
    if not names:
        return []
    rows = {r.source: r for r in s.scalars(select(SourceStatus).where(SourceStatus.source.in_(names)))}
    out = []
    for name in names:
        row = rows.get(name)
        if row is None or row.last_poll_at is None:
            continue  # never polled: nothing known yet
        error_at, ok_at = aware(row.last_error_at), aware(row.last_success_at)
        failing = error_at is not None and (ok_at is None or error_at > ok_at)
        out.append(Health(f"source {name}", failing, ok_at if failing else None,
                          row.last_error if failing else None, error_at if failing else None))
    return out


def destination_health(s: Session, since: datetime) -> list[Health]:
    """Destinations (Plex, Anaplan, ...) as their audit events since ``since`` show them.

    Failing: an outage-like failure or a retry after the last success; healthy: a success after the
    last of those. A destination with neither since ``since`` is left out (nothing new is known).
    """
    stages = list(DESTINATION_STAGES)
    oks = dict(s.execute(
        select(Event.stage, func.max(Event.at))
        .where(Event.at >= since, Event.stage.in_(stages), Event.outcome == "ok").group_by(Event.stage)
    ).all())
    bad_rows = s.execute(
        select(Event.stage, Event.outcome, Event.at, Event.detail)
        .where(Event.at >= since, Event.stage.in_(stages), Event.outcome.in_(("retry", "fail")))
        .order_by(Event.at.desc()).limit(MAX_ROWS)
    ).all()
    last_ok: dict[str, datetime] = {}
    for stage, at in oks.items():
        dest = DESTINATION_STAGES[stage]
        at = aware(at)
        last_ok[dest] = max(at, last_ok.get(dest, at))
    bad: dict[str, list[tuple[datetime, str]]] = {}
    for stage, outcome, at, detail in bad_rows:
        error, code = _error_of(detail)
        if outcome == "fail" and (code or "").rsplit(".", 1)[-1] not in OUTAGE_CODES:
            continue  # the document's own fault (rejected, mapping, duplicate ...)
        bad.setdefault(DESTINATION_STAGES[stage], []).append((aware(at), error or code or outcome))
    out = []
    for dest in sorted(set(last_ok) | set(bad)):
        ok_at = last_ok.get(dest)
        after = sorted(b for b in bad.get(dest, []) if ok_at is None or b[0] > ok_at)
        if after:
            out.append(Health(f"destination {dest}", True, after[0][0], after[-1][1], after[-1][0]))
        else:
            out.append(Health(f"destination {dest}", False))
    return out


def _error_of(detail: str | None) -> tuple[str | None, str | None]:
    try:
        value = json.loads(detail) if detail else {}
    except ValueError:
        return None, None
    if not isinstance(value, dict):
        return None, None
    error, code = value.get("error"), value.get("code")
    return (str(error) if error else None), (str(code) if code else None)
