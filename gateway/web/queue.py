"""The work queue: what needs a person now, with counts and the oldest age, newest problems first.

Every query here is bounded by an index (state, created_at / updated_at; interchanges by state), so
the landing page costs the same at a million documents as at ten; the counts are cached briefly
by the caller (:mod:`gateway.web.views`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select as sa_select
from sqlmodel import Session

from gateway.store.models import Document, Interchange, utcnow
from gateway.web.queries import as_utc

PROBLEMS_SHOWN = 15
HELD_STATES = ("failed", "duplicate")  # files that yielded no work until a person looks


def _docs(session: Session, state: str) -> tuple[int, datetime | None, dict[str, int]]:
    rows = session.execute(
        sa_select(Document.stage, func.count(), func.min(Document.created_at))
        .where(Document.state == state).group_by(Document.stage)).all()
    count = sum(n for _, n, _ in rows)
    oldest = min((as_utc(t) for _, _, t in rows if t is not None), default=None)
    by_stage = {(stage or "—"): int(n) for stage, n, _ in sorted(rows, key=lambda r: -r[1])}
    return int(count), oldest, by_stage


def counts(session: Session, *, now: datetime | None = None) -> dict:
    """How many documents wait for a choice, have failed, and how many files are held back; the oldest of each."""
    now = now or utcnow()
    waiting, waiting_oldest, _ = _docs(session, "needs_attention")
    failed, failed_oldest, failed_by_stage = _docs(session, "failed")
    held_rows = session.execute(
        sa_select(Interchange.state, func.count(), func.min(Interchange.received_at))
        .where(Interchange.state.in_(HELD_STATES)).group_by(Interchange.state)).all()
    held = {state: (int(n), as_utc(t)) for state, n, t in held_rows}
    held_count = sum(n for n, _ in held.values())
    held_oldest = min((t for _, t in held.values() if t is not None), default=None)
    return {
        "at": now,
        "waiting": {"count": waiting, "oldest": waiting_oldest},
        "failed": {"count": failed, "oldest": failed_oldest, "by_stage": failed_by_stage},
        "held": {"count": held_count, "oldest": held_oldest,
                 "duplicates": held.get("duplicate", (0, None))[0], "unreadable": held.get("failed", (0, None))[0]},
    }


def _doc_problem(r, kind: str) -> dict:
    number = r.invoice_number or r.po_number
    return {
        "kind": kind,  # "waiting" | "failed"
        "href": f"/documents/{r.id}",
        "id": r.id,
        "at": as_utc(r.updated_at),
        "title": " ".join(x for x in (r.message_type, number) if x) or f"document {r.id}",
        "partner": r.partner,
        "stage": r.stage,
        "why": r.error,
        "code": r.error_code,
    }


def newest_problems(session: Session, limit: int = PROBLEMS_SHOWN) -> list[dict]:
    """Failed and waiting documents and held files, the most recent first (when they became a problem)."""
    cols = (Document.id, Document.updated_at, Document.message_type, Document.po_number, Document.invoice_number,
            Document.partner, Document.stage, Document.error, Document.error_code)
    out = []
    for state, kind in (("failed", "failed"), ("needs_attention", "waiting")):
        rows = session.execute(sa_select(*cols).where(Document.state == state)
                               .order_by(Document.updated_at.desc(), Document.id.desc()).limit(limit)).all()
        out += [_doc_problem(r, kind) for r in rows]
    held = session.execute(
        sa_select(Interchange.id, Interchange.received_at, Interchange.source, Interchange.remote_name,
                  Interchange.state, Interchange.error, Interchange.duplicate_of, Interchange.partner)
        .where(Interchange.state.in_(HELD_STATES)).order_by(Interchange.id.desc()).limit(limit)).all()
    for r in held:
        out.append({
            "kind": "held", "href": f"/interchanges/{r.id}", "id": r.id, "at": as_utc(r.received_at),
            "title": r.remote_name or f"file {r.id}", "partner": r.partner, "stage": r.source,
            "why": r.error or (f"the same file as interchange {r.duplicate_of}" if r.duplicate_of else None),
            "code": "duplicate" if r.state == "duplicate" else "unreadable", "state": r.state,
            "duplicate_of": r.duplicate_of,
        })
    out.sort(key=lambda p: (p["at"] is not None, p["at"]), reverse=True)
    return out[:limit]
