"""The acknowledgments page: every 997 / 999 / TA1 / CONTRL the gateway built, what it says of the
interchange (accepted, accepted with errors, partly or wholly rejected), and whether it went to the
partner — sent, or not sent and why.

Paged by seek on ``(received_at, id)`` like the documents list; the verdict filter uses the
``(ack_status, received_at)`` index, the partner filter the partner index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, or_, select as sa_select, tuple_
from sqlmodel import Session

from gateway.acks_outbound import ACK_MAX_AGE, ACK_STATUSES, ack_file_name, ack_target
from gateway.store.models import Interchange, SourceStatus, utcnow
from gateway.web.queries import DEFAULT_LIMIT, MAX_LIMIT, BadRequest, as_utc, parse_when

ACK_KINDS = ("997", "999", "TA1", "CONTRL")
SENT = ("sent", "not_sent")
STATUS_WORDS = {"accepted": "accepted", "accepted_with_errors": "accepted with errors",
                "partially_accepted": "partly rejected", "rejected": "rejected"}
FILTER_KEYS = ("partner", "status", "sent", "kind", "since", "until")


@dataclass(frozen=True)
class AckFilter:
    partner: str | None = None  # '-' : senders no mapping file names
    status: str | None = None
    sent: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> AckFilter:
        def get(key: str) -> str | None:
            v = str(params.get(key) or "").strip()
            return v or None

        status, sent, kind, partner = get("status"), get("sent"), get("kind"), get("partner")
        if status and status not in ACK_STATUSES:
            raise BadRequest(f"status: {status!r} is not one of {', '.join(ACK_STATUSES)}")
        if sent and sent not in SENT:
            raise BadRequest("sent: 'sent' or 'not_sent'")
        if kind and kind not in ACK_KINDS:
            raise BadRequest(f"kind: {kind!r} is not one of {', '.join(ACK_KINDS)}")
        if partner and len(partner) > 100:
            raise BadRequest("partner: at most 100 characters")
        since = parse_when("since", get("since"), end=False) if get("since") else None
        until = parse_when("until", get("until"), end=True) if get("until") else None
        if since and until and since >= until:
            raise BadRequest("since: must be before until")
        return cls(partner=partner, status=status, sent=sent, kind=kind, since=since, until=until)

    def conditions(self) -> list:
        c = [Interchange.ack.is_not(None)]
        if self.partner == "-":
            c.append(Interchange.partner.is_(None))
        elif self.partner:
            c.append(Interchange.partner == self.partner)
        if self.status:
            c.append(Interchange.ack_status == self.status)
        if self.sent == "sent":
            c.append(Interchange.ack_sent_at.is_not(None))
        elif self.sent == "not_sent":
            c.append(Interchange.ack_sent_at.is_(None))
        if self.kind:
            # ack_kind holds e.g. '997' or 'TA1+997' when a TA1 rides in the 997's envelope.
            c.append(or_(Interchange.ack_kind == self.kind, Interchange.ack_kind.like(f"%{self.kind}%")))
        if self.since:
            c.append(Interchange.received_at >= self.since)
        if self.until:
            c.append(Interchange.received_at < self.until)
        return c


COLUMNS = (Interchange.id, Interchange.received_at, Interchange.source, Interchange.remote_id,
           Interchange.remote_name, Interchange.partner, Interchange.sender_id, Interchange.control_number,
           Interchange.ack_kind, Interchange.ack_status, Interchange.ack_sent_to, Interchange.ack_sent_at,
           Interchange.document_count, Interchange.state)


def _cursor(ts: datetime, ich_id: int) -> str:
    micros = (as_utc(ts) - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    return f"{micros}.{ich_id}"


def _parse_cursor(text: str) -> tuple[datetime, int]:
    m = re.fullmatch(r"(-?[0-9]{1,20})\.([0-9]{1,19})", text or "")
    try:
        if not m:
            raise OverflowError
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(m.group(1))), int(m.group(2))
    except OverflowError:
        raise BadRequest(f"after: {(text or '')[:60]!r} is not a page cursor from this panel") from None


def delivery_note(row, partners, settings, *, now: datetime | None = None,
                  failures: Mapping[str, str] | None = None) -> dict:
    """Sent (where, when), or not sent and why — in words an operator can act on."""
    now = now or utcnow()
    if row.ack_sent_at:
        return {"sent": True, "text": f"sent to {row.ack_sent_to}", "at": as_utc(row.ack_sent_at)}
    if not row.partner:
        return {"sent": False, "final": True,
                "text": "not sent: the sender has no mapping file (onboard it to send acknowledgments)"}
    partner = partners.get(row.partner)
    if partner is None:
        return {"sent": False, "final": True, "text": f"not sent: {row.partner} has no mapping file in force"}
    ack = partner.acknowledgments
    if not ack.send:
        return {"sent": False, "final": True,
                "text": f"not sent: {row.partner}'s mapping file does not ask for them (acknowledgments.send)"}
    if as_utc(row.received_at) < now - ACK_MAX_AGE:
        return {"sent": False, "final": True,
                "text": f"will not be sent: older than {ACK_MAX_AGE.days} days when sending was switched on"}
    target = ack_target(settings, row.source, row.remote_id, row.partner, ack)
    if target is None:
        return {"sent": False, "final": False,
                "text": "waiting: there is nowhere to send it — set acknowledgments.outbound_folder in the "
                        "mapping file, or outbound_path on the partner's drop folder"}
    name = ack_file_name(row.id, row.ack_kind, row.control_number)
    failed = (failures or {}).get(target.source)
    if failed and name in failed:
        return {"sent": False, "final": False, "text": f"waiting: the last try failed: {failed}"}
    return {"sent": False, "final": False, "text": f"waiting to be written to {target.source} {target.folder}"}


def list_acks(session: Session, flt: AckFilter, *, partners, settings, limit: int = DEFAULT_LIMIT,
              after: str | None = None) -> dict:
    """One page of acknowledgments, newest first, each with its verdict and whether it was sent."""
    from gateway.alerts.rules import ack_verdict

    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: must be between 1 and {MAX_LIMIT}")
    stmt = sa_select(*COLUMNS).where(*flt.conditions())
    if after:
        ts, ich_id = _parse_cursor(after)
        stmt = stmt.where(tuple_(Interchange.received_at, Interchange.id) < tuple_(ts, ich_id))
    rows = session.execute(stmt.order_by(Interchange.received_at.desc(), Interchange.id.desc())
                           .limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    failures = {r.source: r.last_error for r in session.execute(
        sa_select(SourceStatus.source, SourceStatus.last_error).where(SourceStatus.last_error.is_not(None)))}
    texts = {r.id: r.ack for r in session.execute(sa_select(Interchange.id, Interchange.ack).where(
        Interchange.id.in_([r.id for r in rows])))} if rows else {}
    now = utcnow()
    items = []
    for r in rows:
        verdict = ack_verdict(texts.get(r.id) or "")
        status = r.ack_status or verdict.status
        items.append({
            "interchange_id": r.id, "received_at": as_utc(r.received_at), "source": r.source,
            "file": r.remote_name, "partner": r.partner, "sender_id": r.sender_id,
            "control_number": r.control_number, "kind": r.ack_kind, "status": status,
            "status_words": STATUS_WORDS.get(status, status), "rejects": list(verdict.rejected),
            "documents": r.document_count, "delivery": delivery_note(r, partners, settings, now=now,
                                                                       failures=failures),
            "filename": ack_file_name(r.id, r.ack_kind, r.control_number),
        })
    return {"items": items, "next": _cursor(rows[-1].received_at, rows[-1].id) if more and rows else None}
