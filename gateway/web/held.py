"""A file as received, before anyone forces it through: its segments (numbered by line in the file),
what translating it now would give, and how it differs from the file it repeats.

Translation here is the pure translator run in the request on the stored bytes (no store writes):
it shows an operator what forcing a duplicate through, or splitting a failed file again, would do.
"""

from __future__ import annotations

import difflib
import json

from sqlalchemy import select as sa_select
from sqlmodel import Session

from gateway.store.models import Document, Interchange, RawPayload
from gateway.web.queries import as_utc

SEGMENTS_SHOWN = 1000
PREVIEW_LIMIT = 5_000_000  # bytes: larger files are shown, not translated in a request
DIFF_LINES = 400


def _terminator(text: str) -> str:
    body = text.lstrip()
    if body.startswith("ISA") and len(body) > 105:
        return body[105]
    if body.startswith("UNA") and len(body) > 8:
        return body[8]
    return "'" if body.startswith("UN") else "~"


def segment_lines(data: bytes) -> list[str]:
    """The file's segments, one per line, as a person reads them (line n = segment n of the file)."""
    text = data.decode("utf-8", errors="replace")
    term = _terminator(text)
    if term in ("\n", "\r"):
        pieces = text.splitlines()
    else:
        pieces = text.split(term)
    return [p.strip("\r\n") for p in pieces if p.strip()]


def _finding(f) -> dict:
    d = f.to_dict() if hasattr(f, "to_dict") else dict(f)
    from translators.findings import RULES

    rule = RULES.get(d.get("code") or "")
    d["title"] = rule.title if rule else None
    return d


def preview(runtime, data: bytes, name: str | None) -> dict:
    """What translating the file now would give, per document (status, numbers, findings)."""
    if len(data) > PREVIEW_LIMIT:
        return {"skipped": f"the file is {len(data):,} bytes; only files up to {PREVIEW_LIMIT:,} are tried here"}
    from translators.translate import translate

    result = translate(data, runtime.partners(), source=name)
    docs = []
    for d in result.documents:
        canonical = d.document or {}
        docs.append({
            "type": d.type, "kind": d.kind, "status": d.status, "partner": d.partner,
            "number": canonical.get("invoice_number") or canonical.get("po_number"),
            "control": d.control, "findings": [_finding(f) for f in d.findings],
        })
    envelope = [_finding(f) for f in result.file_findings] + [_finding(f) for i in result.interchanges
                                                             for f in i.findings]
    return {"documents": docs, "envelope_findings": envelope}


def _diff(original: bytes, this: bytes) -> list[dict]:
    a, b = segment_lines(original), segment_lines(this)
    out = []
    for line in difflib.unified_diff(a, b, "first file", "this file", lineterm="", n=1):
        kind = "add" if line.startswith("+") else "del" if line.startswith("-") else "hunk" if line.startswith("@@") \
            else "same"
        if line.startswith(("+++", "---")):
            continue
        out.append({"kind": kind, "text": line})
        if len(out) >= DIFF_LINES:
            out.append({"kind": "hunk", "text": "… (more differences not shown)"})
            break
    return out


def interchange_view(session: Session, runtime, ich_id: int) -> dict | None:
    """Everything an operator needs to decide about a file: facts, segments, findings, preview, diff."""
    ich = session.get(Interchange, ich_id)
    if ich is None:
        return None
    raw = session.get(RawPayload, ich_id)
    data = raw.data if raw is not None else b""
    lines = segment_lines(data) if data else []
    findings = json.loads(ich.findings or "[]") if ich.findings else []
    marks: dict[int, list[dict]] = {}
    for f in findings:
        if isinstance(f, dict) and isinstance(f.get("segment_index"), int):
            marks.setdefault(f["segment_index"], []).append(_finding(f))
    original = session.get(Interchange, ich.duplicate_of) if ich.duplicate_of else None
    same_bytes = original is not None and original.sha256 == ich.sha256
    diff = None
    if original is not None and not same_bytes:
        original_raw = session.get(RawPayload, original.id)
        if original_raw is not None:
            diff = _diff(original_raw.data, data)
    documents = session.execute(
        sa_select(Document.id, Document.position, Document.message_type, Document.po_number, Document.invoice_number,
                  Document.state, Document.stage, Document.error)
        .where(Document.interchange_id == ich_id).order_by(Document.position).limit(200)).all()
    held = ich.state in ("duplicate", "failed")
    return {
        "id": ich.id, "source": ich.source, "remote_name": ich.remote_name, "received_at": as_utc(ich.received_at),
        "size": ich.size, "sha256": ich.sha256, "standard": ich.standard, "sender_id": ich.sender_id,
        "receiver_id": ich.receiver_id, "control_number": ich.control_number, "partner": ich.partner,
        "state": ich.state, "error": ich.error, "forced": ich.forced, "document_count": ich.document_count,
        "held": held,
        "original": None if original is None else {
            "id": original.id, "remote_name": original.remote_name, "received_at": as_utc(original.received_at),
            "state": original.state, "same_bytes": same_bytes},
        "diff": diff,
        "segments": [{"n": n, "text": t, "findings": marks.get(n, [])}
                     for n, t in enumerate(lines[:SEGMENTS_SHOWN], 1)],
        "segments_total": len(lines),
        "findings": [_finding(f) for f in findings if isinstance(f, dict)],
        "documents": [dict(r._mapping) for r in documents],
        "preview": preview(runtime, data, ich.remote_name) if held and data else None,
    }
