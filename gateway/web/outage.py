"""Outages: sources and destinations failing now, said the way an operator needs it on every page —
what, since when, the last error, and what to do about it."""

from __future__ import annotations

import re
from datetime import datetime

from sqlmodel import Session

from gateway.store.models import utcnow

from gateway.web import queries

# What to do, by what the error says (first match wins). Plain words; the error itself is shown too.
_ADVICE = (
    (re.compile(r"host key", re.I),
     "The server's host key is not the one pinned. Ask the server's owner whether it changed; if it did, "
     "pin the new key in the settings (never accept it blindly)."),
    (re.compile(r"\b401\b|unauthori[sz]ed|password|authenticat|credential|login|sign.?in", re.I),
     "The system refuses the gateway's credentials. Check the user and password or key in the settings "
     "(gateway secrets set NAME), then wait for the next poll or reprocess."),
    (re.compile(r"\b403\b|forbidden|permission|not allowed|role", re.I),
     "The gateway's user is signed in but not allowed to do this. Ask the system's administrator to grant "
     "the role or permission named in the error."),
    (re.compile(r"\b429\b|rate|too many|budget", re.I),
     "The system is throttling the gateway. It waits and tries again by itself; nothing to do unless this "
     "lasts."),
    (re.compile(r"timed? ?out|timeout|refused|unreachable|resolve|name or service|connect|network|\b50[234]\b",
                re.I),
     "The system does not answer. Check that it is up and reachable from the gateway's host (VPN, firewall, "
     "DNS); the gateway keeps trying by itself."),
    (re.compile(r"lock|busy|maintenance", re.I),
     "The system is busy or locked (e.g. an Anaplan model open for a change). The gateway waits and tries "
     "again by itself."),
)
_DEFAULT_ADVICE = ("Read the error below; fix the cause in the system or in the settings. The gateway keeps "
                   "trying by itself, and documents that failed can be reprocessed once it works again.")
_LATE_ADVICE = ("Nothing has polled this source lately: is a gateway process with pollers running "
                "(gateway run, or gateway poll)?")


def advice(error: str | None, *, late: bool = False) -> str:
    """What an operator should do about a failing part, from the words of its last error."""
    if late and not error:
        return _LATE_ADVICE
    for pattern, text in _ADVICE:
        if error and pattern.search(error):
            return text
    return _DEFAULT_ADVICE


def _source_label(name: str) -> str:
    kind, _, own = name.partition(":")
    return f"{ {'sterling': 'Sterling', 'sftp': 'SFTP', 'local': 'Local folder'}.get(kind, kind)} {own}".strip()


def failing_parts(session: Session, settings, *, started_at: datetime | None = None) -> list[dict]:
    """Each configured source that fails or is not polled, and each destination refusing documents.

    A source never polled is late only once the panel has been up longer than it should take
    (``started_at``): right after a start, the pollers have not had their first turn yet."""
    now = utcnow()
    out = []
    for s in queries.sources(session, settings, now=now):
        if not s["configured"] or not (s["failing"] or s["stale"]):
            continue
        if not s["failing"] and s["last_poll_at"] is None and started_at is not None and s["interval_seconds"] \
                and (now - started_at).total_seconds() < 3 * s["interval_seconds"] + 60:
            continue
        late = s["stale"] and not s["failing"]
        out.append({
            "part": f"source:{s['source']}", "kind": "source", "name": s["source"],
            "label": _source_label(s["source"]),
            "since": s.get("failing_since") or s["last_error_at"] if s["failing"] else s["last_poll_at"],
            "problem": "not polled lately" if late else "polls fail",
            "error": s["last_error"] if s["failing"] else None,
            "advice": advice(s["last_error"] if s["failing"] else None, late=late),
            "href": "/sources",
        })
    destinations = getattr(queries, "destinations", None)
    for d in destinations(session, settings) if destinations else []:
        if not d["failing"]:
            continue
        out.append({
            "part": f"destination:{d['destination']}", "kind": "destination", "name": d["destination"],
            "label": d["destination"].capitalize(), "since": d["failing_since"],
            "problem": f"{d['documents']} document(s) held by it",
            "error": d["last_error"], "code": d.get("error_code"), "advice": advice(d["last_error"]),
            "href": f"/documents?state=failed&stage={d['destination']}",
        })
    return out
