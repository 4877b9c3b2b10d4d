"""Partner onboarding from the panel: a mapping file as a draft, validated, dry-run on a sample, activated.

A draft lives in the ``partner_files`` table with ``active`` false. Editing a file that is already
live keeps the live version working: the edit is stored under ``<id>#draft`` (a key no partner id
can have) and replaces the live row only when activated. Activation needs a dry run of that exact
text in which the sample's documents were identified as this partner and translated; every save,
dry run and activation is an audit event (stage ``onboard``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, select

from gateway.store.db import transaction
from gateway.store.models import Event, PartnerFile, utcnow
from gateway.web.queries import BadRequest
from translators.mapping import PartnerDirectory, PartnerMapping
from translators.partners import PartnerFileError, Problem, parse_partner_text

DRAFT_SUFFIX = "#draft"
MAX_MAPPING_BYTES = 1_000_000
MAX_SAMPLE_BYTES = 10_000_000
STAGE = "onboard"


PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # what translators.mapping accepts as an id


def draft_key(partner_id: str) -> str:
    return partner_id + DRAFT_SUFFIX


def check_partner_id(partner_id: str) -> None:
    """A partner id from a URL: anything else than a real id (e.g. a draft key) names no partner."""
    if not PARTNER_ID.match(partner_id or ""):
        raise LookupError(f"partner {partner_id!r}: no such partner (ids are lower-case letters, digits, - and _)")


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def decode_upload(name: str, data: bytes, limit: int) -> str:
    if len(data) > limit:
        raise BadRequest(f"{name}: the file is {len(data)} bytes; at most {limit}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadRequest(f"{name}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8") from None


def check_filename(filename: str | None, partner_id: str | None = None) -> str:
    name = Path((filename or "").replace("\\", "/")).name.strip()
    if not name:
        name = f"{partner_id or 'partner'}.yaml"
    if len(name) > 300:
        raise BadRequest("filename: at most 300 characters")
    return name


@dataclass
class Validation:
    mapping: PartnerMapping | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mapping is not None and not self.problems

    def problem_dicts(self) -> list[dict]:
        return [{"path": p.path, "message": p.message, "line": p.line, "column": p.column, "text": str(p)}
                for p in self.problems]


def validate(text: str, filename: str) -> Validation:
    """Parse a mapping file; problems carry the key path and, where YAML says, line and column."""
    if not text.strip():
        return Validation(None, [Problem(filename, "", "the mapping file is empty")])
    if len(text.encode("utf-8")) > MAX_MAPPING_BYTES:
        return Validation(None, [Problem(filename, "", f"the file is larger than {MAX_MAPPING_BYTES} bytes")])
    try:
        return Validation(parse_partner_text(text, filename))
    except PartnerFileError as exc:
        return Validation(None, exc.problems)


def annotated_lines(text: str, problems: list[Problem]) -> tuple[list[dict], list[Problem]]:
    """The file's lines, each with the problems placed on it; and the problems with no line."""
    at: dict[int, list[Problem]] = {}
    loose = []
    lines = text.splitlines() or [""]
    for p in problems:
        if p.line and 1 <= p.line <= len(lines):
            at.setdefault(p.line, []).append(p)
        else:
            loose.append(p)
    return [{"n": n, "text": t, "problems": at.get(n, [])} for n, t in enumerate(lines, 1)], loose


def _event(outcome: str, actor: str, detail: dict) -> Event:
    return Event(stage=STAGE, outcome=outcome, actor=actor, at=utcnow(),
                 detail=json.dumps(detail, ensure_ascii=False, sort_keys=True))


def save_draft(engine, text: str, filename: str, *, actor: str) -> tuple[str, Validation]:
    """Store a valid mapping file as a draft; an invalid one is refused (nothing stored)."""
    given = check_filename(filename) if (filename or "").strip() else None
    v = validate(text, given or "mapping file")
    if not v.ok:
        return "", v
    pid = v.mapping.id
    filename = given or f"{pid}.yaml"
    with transaction(engine) as s:
        live = s.get(PartnerFile, pid)
        key = draft_key(pid) if live is not None and live.active else pid
        row = s.get(PartnerFile, key)
        if row is None:
            row = PartnerFile(partner_id=key, filename=filename, text=text, active=False, updated_by=actor)
        else:
            row.filename, row.text, row.active, row.updated_by = filename, text, False, actor
        row.updated_at = utcnow()
        s.add(row)
        s.add(_event("draft", actor, {"partner": pid, "filename": filename, "text_sha256": text_sha(text)}))
    return pid, v


def current_draft(session: Session, partner_id: str) -> PartnerFile | None:
    """The draft awaiting activation for a partner, if any."""
    check_partner_id(partner_id)
    row = session.get(PartnerFile, draft_key(partner_id))
    if row is not None:
        return row
    row = session.get(PartnerFile, partner_id)
    return row if row is not None and not row.active else None


def folder_file(folder: Path, partner_id: str) -> tuple[str, str] | None:
    """(file name, text) of the partner's file in the partners folder, if it has one."""
    from gateway.partners import partner_files

    if not Path(folder).is_dir():
        return None
    files = partner_files(folder)
    # The file is named after the partner by convention; else look inside.
    files.sort(key=lambda p: p.stem != partner_id)
    for path in files:
        try:
            text = path.read_text("utf-8-sig")
            if parse_partner_text(text, str(path)).id == partner_id:
                return path.name, text
        except (OSError, ValueError):
            continue
    return None


def dry_run(runtime, partner_id: str, sample: bytes, sample_name: str, *, actor: str) -> dict:
    """Translate a sample EDI file with the partner's draft in force; recorded for the activation check."""
    if not sample:
        raise BadRequest("sample: the sample EDI file is empty")
    if len(sample) > MAX_SAMPLE_BYTES:
        raise BadRequest(f"sample: the file is {len(sample)} bytes; at most {MAX_SAMPLE_BYTES}")
    from translators.translate import translate

    with Session(runtime.engine) as s:
        draft = current_draft(s, partner_id)
    if draft is None:
        raise LookupError(f"partner {partner_id}: no draft to try; save the mapping file first")
    v = validate(draft.text, draft.filename)
    if not v.ok:
        raise BadRequest(f"partner {partner_id}: the draft no longer validates: {v.problems[0]}")
    others = [p for p in runtime.partners() if p.id != partner_id]
    directory = PartnerDirectory(others + [v.mapping])
    sample_name = check_filename(sample_name, "sample.edi") if sample_name else "sample.edi"
    result = translate(sample, directory, source=sample_name)
    documents = []
    for d in result.documents:
        documents.append({
            "type": d.type, "kind": d.kind, "standard": d.standard, "status": d.status, "partner": d.partner,
            "control": d.control, "canonical": d.document,
            "findings": [{"severity": str(f.severity), "code": f.code, "where": f.where(), "message": f.message}
                         for f in d.findings],
        })
    envelope = [f for f in result.file_findings] + [f for i in result.interchanges for f in i.findings]
    matched = [d for d in documents if d["partner"] == partner_id]
    ok = bool(matched) and all(d["status"] == "translated" for d in matched)
    if not documents:
        verdict = "no X12 or EDIFACT transaction set found in the sample"
    elif not matched:
        senders = sorted({d["partner"] or "no partner (standard mapping)" for d in documents})
        verdict = (f"the sample's sender did not match {partner_id}'s identifiers "
                   f"(it was read as: {', '.join(senders)}); check identifiers in the mapping file")
    elif not ok:
        verdict = "some documents did not translate; see their findings"
    else:
        verdict = f"{len(matched)} document(s) translated with {partner_id}'s mapping"
    out = {
        "partner": partner_id, "filename": draft.filename, "sample": sample_name, "ok": ok, "verdict": verdict,
        "documents": documents,
        "envelope_findings": [{"severity": str(f.severity), "code": f.code, "where": f.where(), "message": f.message}
                              for f in envelope],
        "text_sha256": text_sha(draft.text),
    }
    with transaction(runtime.engine) as s:
        s.add(_event("dry_run", actor, {"partner": partner_id, "text_sha256": out["text_sha256"], "ok": ok,
                                        "sample": sample_name, "documents": len(documents),
                                        "matched": len(matched), "verdict": verdict}))
    return out


def _dry_run_passed(session: Session, partner_id: str, sha: str, since) -> bool:
    rows = session.exec(
        select(Event.detail).where(Event.stage == STAGE, Event.outcome == "dry_run", Event.at >= since)
        .order_by(Event.id.desc()).limit(500)
    ).all()
    for detail in rows:
        try:
            d = json.loads(detail or "{}")
        except ValueError:
            continue
        if d.get("partner") == partner_id and d.get("text_sha256") == sha and d.get("ok"):
            return True
    return False


def activate(runtime, partner_id: str, *, actor: str) -> PartnerFile:
    """Put the partner's draft in force (the runtime's partner directory reloads on its next use)."""
    now = utcnow()
    with transaction(runtime.engine) as s:
        draft = current_draft(s, partner_id)
        if draft is None:
            raise LookupError(f"partner {partner_id}: no draft to activate")
        v = validate(draft.text, draft.filename)
        if not v.ok:
            raise BadRequest(f"partner {partner_id}: the draft does not validate: {v.problems[0]}")
        sha = text_sha(draft.text)
        since = draft.updated_at if draft.updated_at.tzinfo else draft.updated_at.replace(tzinfo=now.tzinfo)
        if not _dry_run_passed(s, partner_id, sha, since - _slack()):
            raise PermissionError(f"partner {partner_id}: try this draft on a sample first (dry run), "
                                  "then activate it")
        live = s.get(PartnerFile, partner_id)
        if draft.partner_id != partner_id:  # an edit of a live file: it replaces the live row
            if live is None:
                live = PartnerFile(partner_id=partner_id, filename=draft.filename, text=draft.text, updated_by=actor)
            live.filename, live.text = draft.filename, draft.text
            s.delete(draft)
            row = live
        else:
            row = draft
        row.active = True
        row.activated_at = now
        row.updated_by = actor
        row.updated_at = now
        s.add(row)
        s.add(_event("activate", actor, {"partner": partner_id, "filename": row.filename, "text_sha256": sha}))
    runtime.partners_changed()
    return row


def _slack():
    from datetime import timedelta

    return timedelta(seconds=1)  # clocks of two panel processes may disagree slightly


def discard_draft(engine, partner_id: str, *, actor: str) -> None:
    with transaction(engine) as s:
        draft = current_draft(s, partner_id)
        if draft is None:
            raise LookupError(f"partner {partner_id}: no draft to discard")
        s.delete(draft)
        s.add(_event("discard", actor, {"partner": partner_id, "filename": draft.filename}))
