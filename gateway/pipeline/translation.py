"""The translate stage: a stored interchange split into one document per transaction set.

Splitting happens once per interchange, in one transaction with the documents it creates (the
``(interchange_id, position)`` key makes a second split impossible). Reprocessing a document from
``translate`` re-reads the raw bytes with today's partner files, so a fixed mapping takes effect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from sqlmodel import Session, select

from gateway.integrations.base import Outcome
from gateway.pipeline.machine import StageName, State, initial_state
from gateway.store.models import Document, Event, Interchange
from translators.acks import Acknowledgment, build_acknowledgment
from translators.findings import Finding
from translators.mapping import PartnerDirectory
from translators.translate import DocumentResult, Translation, translate


@dataclass
class Split:
    """What splitting one interchange produced; the caller adds it all in one transaction.

    ``rows`` are the documents' column values (what the worker inserts in bulk); ``documents``
    the same as :class:`Document` objects, built when first asked for.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    acknowledgments: list[Acknowledgment] = field(default_factory=list)
    failed: bool = False
    error: str | None = None

    @cached_property
    def documents(self) -> list[Document]:
        return [Document(**r) for r in self.rows]


def findings_json(findings: list[Finding]) -> str | None:
    return json.dumps([f.to_dict() for f in findings], ensure_ascii=False) if findings else None


def _first_error(findings: list[Finding], source: str | None) -> Finding | None:
    return next((f for f in findings if f.is_error), None)


def describe(f: Finding, source: str | None) -> str:
    """One line a person can act on: the file, the segment and element, the code and message."""
    return f.describe(source)


def _document_row(ich: Interchange, position: int, d: DocumentResult, rejected_by: str | None, now: datetime) -> Document:
    return Document(**_document_values(ich, position, d, rejected_by, now))


def _document_values(ich: Interchange, position: int, d: DocumentResult, rejected_by: str | None,
                     now: datetime) -> dict[str, Any]:
    doc = d.document or {}
    errors = d.errors
    status = d.status
    error = None
    code = None
    if errors:
        error = describe(errors[0], ich.remote_name) + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        code = errors[0].code
    elif status == "failed" and rejected_by:
        error = f"the interchange envelope is broken: {rejected_by}"
        code = "interchange.rejected"
    state, stage = initial_state(status == "translated", status == "ignored")
    ts = d.transaction_set
    return {
        "interchange_id": ich.id,
        "position": position,
        "partner": d.partner,
        "kind": d.kind,
        "standard": d.standard,
        "message_type": d.type,
        "version": ts.version,
        "po_number": doc.get("po_number"),
        "invoice_number": doc.get("invoice_number"),
        "sender_id": ts.interchange.sender_id,
        "receiver_id": ts.interchange.receiver_id,
        "interchange_control": d.control.get("interchange"),
        "group_control": d.control.get("group"),
        "message_control": d.control.get("message"),
        "state": state.value,
        "stage": stage.value if stage else None,
        "error": error if state is State.FAILED else (
            d.findings[0].message if state is State.IGNORED and d.findings else None),
        "error_code": code if state is State.FAILED else None,
        "canonical": json.dumps(d.document, ensure_ascii=False) if d.document is not None else None,
        "edi": d.edi,
        "first_segment_index": d.first_segment_index,
        "findings": findings_json(d.findings),
        "test": bool(getattr(ts.interchange, "test", False)),
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def split_interchange(
    ich: Interchange,
    raw: bytes,
    partners: PartnerDirectory,
    *,
    now: datetime,
    actor: str = "gateway",
) -> Split:
    """Translate the stored bytes; one :class:`Document` (and one audit event) per transaction set."""
    result: Translation = translate(raw, partners, source=ich.remote_name)
    out = Split()
    envelope: list[Finding] = list(result.file_findings)
    rejected_by: str | None = None
    for i in result.interchanges:
        envelope += i.findings
        if i.rejected and rejected_by is None:
            err = _first_error(i.findings, ich.remote_name)
            rejected_by = describe(err, ich.remote_name) if err else "rejected"
    if result.interchanges:
        info = result.interchanges[0].summary.info
        ich.standard = info.standard
        ich.sender_id, ich.sender_qualifier = info.sender_id, info.sender_qualifier
        ich.receiver_id, ich.receiver_qualifier = info.receiver_id, info.receiver_qualifier
        ich.control_number = info.control_number
        ich.partner = result.interchanges[0].partner
    elif result.documents:
        ich.standard = result.documents[0].standard
    ich.findings = findings_json(envelope)
    out.rows = [_document_values(ich, n, d, rejected_by, now) for n, d in enumerate(result.documents, 1)]
    file_error = _first_error(envelope, ich.remote_name)
    if file_error is not None or not result.documents:
        out.failed = True
        out.error = (
            describe(file_error, ich.remote_name)
            if file_error is not None
            else f"{ich.remote_name or 'the file'}: no X12 or EDIFACT transaction set found"
        )
    for n, i in enumerate(result.interchanges, 1):
        ack = build_acknowledgment(
            i.summary,
            now=now,
            interchange_control=f"{((ich.id or 0) * 10 + n) % 1_000_000_000:09d}",
            group_control=str(((ich.id or 0) * 10 + n) % 1_000_000_000),
        )
        if ack is not None:
            out.acknowledgments.append(ack)
    ich.document_count = len(out.rows)
    return out


def translation_event(doc: Document, *, actor: str, now: datetime, duration_ms: float | None) -> Event:
    """The audit event a freshly split document starts its trail with."""
    values = {c: getattr(doc, c) for c in ("interchange_id", "state", "message_type", "message_control",
                                           "error", "error_code")}
    return Event(**translation_event_values(doc.id, values, actor=actor, now=now, duration_ms=duration_ms))


def translation_event_values(document_id: int | None, doc: Mapping[str, Any], *, actor: str, now: datetime,
                             duration_ms: float | None) -> dict[str, Any]:
    """:func:`translation_event` as column values, from the document's values (for bulk inserts)."""
    outcome = {"translated": "ok", "failed": "fail", "ignored": "ignore"}[doc["state"]]
    detail: dict = {"message_type": doc["message_type"], "control": doc["message_control"]}
    if doc["error"]:
        detail["error"] = doc["error"]
    if doc["error_code"]:
        detail["code"] = doc["error_code"]
    return {
        "document_id": document_id,
        "interchange_id": doc["interchange_id"],
        "stage": StageName.TRANSLATE.value,
        "outcome": outcome,
        "detail": json.dumps(detail, ensure_ascii=False),
        "actor": actor,
        "at": now,
        "duration_ms": duration_ms,
        "attempt": 1,
    }


def same_envelope(ich: Interchange) -> tuple:
    """Conditions selecting the other interchanges with ``ich``'s sender, receiver and control number."""
    return (
        Interchange.sender_id == ich.sender_id,
        Interchange.receiver_id == ich.receiver_id,
        Interchange.control_number == ich.control_number,
        Interchange.id != ich.id,
    )


def envelope_duplicate(session: Session, ich: Interchange) -> Interchange | None:
    """An earlier interchange with the same sender, receiver and control number, if any."""
    if not (ich.sender_id and ich.control_number):
        return None
    stmt = (
        select(Interchange)
        .where(
            *same_envelope(ich),
            Interchange.state.in_(("split", "received")),
            Interchange.id < ich.id,
        )
        .order_by(Interchange.id)
        .limit(1)
    )
    return session.exec(stmt).first()


def retranslate(doc: Document, raw: bytes, partners: PartnerDirectory, *, source: str | None,
                result: Translation | None = None) -> Outcome:
    """The translate stage for one document on reprocess: re-derive its canonical form from the raw bytes.

    ``result`` is the interchange already translated, when several of its documents are reprocessed at once.
    """
    if result is None:
        result = translate(raw, partners, source=source)
    if doc.position > len(result.documents):
        return Outcome.fail(
            f"{source or 'the file'}: the interchange now yields {len(result.documents)} transaction set(s); "
            f"set {doc.position} is gone",
            code="translate.position_missing",
        )
    d = result.documents[doc.position - 1]
    row = _document_row(Interchange(id=doc.interchange_id, remote_name=source), doc.position, d, None, doc.updated_at)
    changes = dict(
        partner=row.partner, kind=row.kind, po_number=row.po_number, invoice_number=row.invoice_number,
        canonical=row.canonical, edi=row.edi, findings=row.findings, first_segment_index=row.first_segment_index,
        version=row.version,
    )
    if d.status == "ignored":
        return Outcome.ignore(row.error or "not a purchase order or invoice", **changes)
    if d.status == "failed":
        if not d.errors and any(i.rejected for i in result.interchanges):
            rej = next(i for i in result.interchanges if i.rejected)
            err = _first_error(rej.findings, source)
            return Outcome.fail(f"the interchange envelope is broken: {describe(err, source) if err else 'rejected'}",
                                code="interchange.rejected", **changes)
        return Outcome.fail(row.error or "translation failed", code=row.error_code, **changes)
    return Outcome.ok({"message_type": d.type, "control": d.control.get("message")}, **changes)


HELD = "waiting for a mapping file to be fixed: "
PARTNER_HOLD_SECONDS = 15.0  # how often a held interchange is looked at again


def partner_hold(ich: Interchange, problems: list) -> str | None:
    """Why an interchange, just translated, waits instead of being stored: while a mapping file in the
    partners folder is broken, a sender no good file claims may be that file's partner, so its
    interchange must not go through the standard mapping. None: it goes on."""
    if not problems or ich.partner is not None or not ich.sender_id:
        return None
    files = sorted({p.source for p in problems})
    first = problems[0]
    where = f"{first.path}: " if first.path else ""
    return (f"{HELD}{', '.join(files)} has problems ({where}{first.message}); no other mapping file claims "
            f"sender {ich.sender_id}. It is split by itself once the file is fixed.")[:2000]
