"""Bytes in, canonical documents and findings out.

:func:`iter_translate` streams: it yields a :class:`DocumentResult` per transaction set as soon
as the set is read, then an :class:`InterchangeResult` when its interchange closes (its
envelope findings can still fail the documents already yielded — the caller decides).
:func:`translate` collects a whole file and applies that verdict itself.
"""

from __future__ import annotations

from typing import Any

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from translators.envelope import CHUNK, read
from translators.findings import Finding, Level, Severity, finding
from translators.mapping import STANDARD, MessageMapping, PartnerDirectory, PartnerMapping
from translators.model import GroupInfo, InterchangeSummary, TransactionSet

# (standard, message type) → (canonical kind, module, function)
MESSAGES: dict[tuple[str, str], tuple[str, str, str]] = {
    ("x12", "850"): ("purchase_order", "translators.messages.x12_850", "map_850"),
    ("x12", "810"): ("invoice", "translators.messages.x12_810", "map_810"),
    ("edifact", "ORDERS"): ("purchase_order", "translators.messages.edifact_orders", "map_orders"),
    ("edifact", "INVOIC"): ("invoice", "translators.messages.edifact_invoic", "map_invoic"),
}

Mapper = Callable[[TransactionSet, MessageMapping], tuple[dict[str, Any], list[Finding]]]
_mappers: dict[tuple[str, str], Mapper] = {}


def _mapper(key: tuple[str, str]) -> Mapper:
    fn = _mappers.get(key)
    if fn is None:
        _, module, name = MESSAGES[key]
        fn = _mappers[key] = getattr(importlib.import_module(module), name)
    return fn


@dataclass(slots=True)
class DocumentResult:
    """One transaction set / message after translation."""

    standard: str
    type: str
    kind: str | None  # "purchase_order" | "invoice" | None when not a business document we map
    control: dict[str, Any]
    partner: str | None
    document: dict[str, Any] | None
    findings: list[Finding]
    first_segment_index: int
    segment_count: int
    transaction_set: TransactionSet = field(repr=False)
    status: str = "translated"  # "translated" | "failed" | "ignored"

    @property
    def edi(self) -> str:
        """The set's segments written back as EDI, one per line: what the store keeps per document."""
        return self.transaction_set.to_edi()

    @property
    def ok(self) -> bool:
        return self.status == "translated"

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]


@dataclass(slots=True)
class InterchangeResult:
    """An interchange's envelope verdict, after all its documents were yielded."""

    summary: InterchangeSummary
    partner: str | None
    _verdicts: dict[int, Finding | None] | None = field(default=None, repr=False)

    @property
    def findings(self) -> list[Finding]:
        s = self.summary
        return s.findings + [f for g in s.groups for f in g.findings]

    @property
    def rejected(self) -> bool:
        """True when the envelope itself is broken: every document in it fails."""
        return any(f.is_error for f in self.summary.findings)

    def rejection(self, ts: TransactionSet) -> Finding | None:
        """The envelope error that fails ``ts`` (a set of this interchange): the interchange's
        first error, else the first error of its functional group; None when neither is broken."""
        return self.rejection_in(ts.group)

    def rejection_in(self, group: GroupInfo | None) -> Finding | None:
        """:meth:`rejection` for a set of ``group`` (None: a set outside any group)."""
        verdicts = self._verdicts
        if verdicts is None:
            # Worked out once per interchange: an interchange may hold thousands of groups.
            top = next((f for f in self.summary.findings if f.is_error), None)
            verdicts = {id(None): top}
            for g in self.summary.groups:
                verdicts[id(g.info)] = top or next((f for f in g.findings if f.is_error), None)
            self._verdicts = verdicts
        return verdicts.get(id(group), verdicts[id(None)])


@dataclass(slots=True)
class Translation:
    """A whole file's translation."""

    source: str | None
    documents: list[DocumentResult] = field(default_factory=list)
    interchanges: list[InterchangeResult] = field(default_factory=list)
    file_findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not any(f.is_error for f in self.file_findings)
            and all(d.status != "failed" for d in self.documents)
            and not any(f.is_error for i in self.interchanges for f in i.findings)
        )

    @property
    def canonical(self) -> list[dict[str, Any]]:
        return [d.document for d in self.documents if d.status == "translated" and d.document is not None]

    def errors(self) -> list[Finding]:
        """Every error, file, envelope and document level, in file order."""
        out = [f for f in self.file_findings if f.is_error]
        for i in self.interchanges:
            out += [f for f in i.findings if f.is_error]
        for d in self.documents:
            out += d.errors
        # A document failed by its envelope repeats the envelope's error: listed once.
        unique = list({id(f): f for f in out}.values())
        return sorted(unique, key=lambda f: f.segment_index or 0)


def iter_translate(
    chunks: Iterable[bytes], partners: PartnerDirectory | None = None, partner: str | None = None
) -> Iterator[DocumentResult | InterchangeResult | Finding]:
    """Translate a byte stream; memory is bounded by the largest transaction set.

    ``partner`` is what the source knows of the sender (a drop folder's configured partner, a
    Sterling mailbox ``/<Partner>/Inbox``): the partner id used when no interchange header
    names a known sender, and for bare sets and messages (no ISA / UNB) the source of their
    sender id.
    """
    partners = partners or PartnerDirectory()
    hint = partners.get(partner) if partner else None
    current: PartnerMapping | None = None
    current_ich = None
    for ev in read(chunks):
        if isinstance(ev, TransactionSet):
            if ev.interchange is not current_ich:
                current_ich = ev.interchange
                if ev.interchange.bare:
                    _fill_bare(ev, hint)
                current = _identify(partners, ev) or hint
            yield translate_set(ev, current)
        elif isinstance(ev, InterchangeSummary):
            if current_ich is not ev.info:
                current_ich = ev.info
                current = _identify_interchange(partners, ev) or hint
            if current is not None and current.validation.relax:
                relax = frozenset(current.validation.relax)
                _relax(ev.findings, relax, [])
                for g in ev.groups:
                    _relax(g.findings, relax, [])
            yield InterchangeResult(summary=ev, partner=current.id if current else None)
        else:
            yield ev


def translate(data: bytes, partners: PartnerDirectory | None = None, source: str | None = None,
              partner: str | None = None) -> Translation:
    """Translate a whole file held in memory (``partner``: see :func:`iter_translate`)."""
    result = Translation(source=source)
    pending: list[DocumentResult] = []
    chunks = (data[i : i + CHUNK] for i in range(0, max(len(data), 1), CHUNK))
    for ev in iter_translate(chunks, partners, partner):
        if isinstance(ev, DocumentResult):
            pending.append(ev)
        elif isinstance(ev, InterchangeResult):
            for d in pending:
                _envelope_verdict(d, ev)
            result.documents += pending
            pending = []
            result.interchanges.append(ev)
        else:
            result.file_findings.append(ev)
    result.documents += pending
    if not result.documents and result.ok:
        result.file_findings.append(nothing_found(result.interchanges))
    return result


def nothing_found(interchanges: list[InterchangeResult]) -> Finding:
    """The error for a file that held envelopes but no set or message: never an empty success."""
    if interchanges:
        summary = interchanges[-1].summary
        info = summary.info
        header = info.header or (summary.groups[0].info.header if summary.groups else [])
        tag = header[0] if header and isinstance(header[0], str) else ("ISA" if info.standard == "x12" else "UNB")
        return finding("file.no_messages", f"The {tag} envelope holds no transaction set or message",
                       segment_tag=tag, segment_index=info.segment_index or 1,
                       interchange_control=info.control_number)
    return finding("file.no_messages", "The file holds no transaction set or message", segment_index=1)


def _envelope_verdict(d: DocumentResult, ev: InterchangeResult) -> None:
    """Apply the interchange's verdict to one of its documents: a broken interchange or group
    fails it, naming the envelope error; relaxed envelope checks are recorded on it."""
    if d.document is not None and ev.partner is not None:
        relaxed: list[str] = d.document["control"]["relaxed"]
        for f in ev.findings:
            check = f.extra.get("check")
            if check and not f.is_error and f.extra.get("relaxed") and check not in relaxed:
                if f.level is Level.INTERCHANGE or (d.transaction_set.group is not None
                                                    and f.group_control == d.transaction_set.group.control_number):
                    relaxed.append(check)
    error = ev.rejection(d.transaction_set)
    if error is not None and d.status != "ignored":
        d.status = "failed"
        d.findings = [*d.findings, error]  # its own list: the set's acknowledgment view stays as it was


def _identify(partners: PartnerDirectory, ts: TransactionSet) -> PartnerMapping | None:
    ich = ts.interchange
    return partners.match(
        ts.standard, ich.sender_id, ich.sender_qualifier, ts.group.sender_id if ts.group else None
    )


def _fill_bare(ts: TransactionSet, hint: PartnerMapping | None) -> None:
    """Sender and receiver of a bare set or message: the group's (GS02 / GS03, UNG) where one was
    sent, else the sender id of the partner the source named (the first in its mapping file)."""
    ich = ts.interchange
    group = ts.group
    if group is not None:
        ich.sender_id = ich.sender_id or group.sender_id
        ich.receiver_id = ich.receiver_id or group.receiver_id
    if hint is not None and not ich.sender_id:
        idents = hint.identifiers.x12 if ts.standard == "x12" else hint.identifiers.edifact
        if idents:
            ich.sender_id, ich.sender_qualifier = idents[0].id, idents[0].qualifier


def _bare_header(ts: TransactionSet, findings: list[Finding]) -> None:
    """A bare set or message must begin with its header segment (BEG / BIG / BGM) right after
    ST / UNH: without an envelope, nothing else vouches that it is whole."""
    header = _HEADERS.get((ts.standard, ts.type))
    if header is None:
        return
    segs = ts.segments
    tags = [s[0] if isinstance(s[0], str) else "" for s in segs]
    if header not in tags:
        findings.append(_at_header(ts, "segment.mandatory_missing",
                                   f"The bare {ts.type} has no {header} segment: it is refused",
                                   severity=Severity.ERROR))
    elif len(tags) > 1 and tags[1] != header:
        at = 1
        findings.append(finding(
            "segment.unexpected",
            f"Segment {tags[at] or '?'} comes before {header} in a bare {ts.type}: it is refused",
            segment_tag=tags[at] or "?", segment_index=ts.first_segment_index + at, set_position=at + 1,
            interchange_control=ts.interchange.control_number,
            group_control=ts.group.control_number if ts.group else None, message_control=ts.control_number))


_HEADERS: dict[tuple[str, str], str] = {("x12", "850"): "BEG", ("x12", "810"): "BIG", ("edifact", "ORDERS"): "BGM",
                                        ("edifact", "INVOIC"): "BGM"}


def _identify_interchange(partners: PartnerDirectory, summary: InterchangeSummary) -> PartnerMapping | None:
    """The partner of an interchange that held no set (its envelope findings may be relaxed)."""
    ich = summary.info
    group = summary.groups[0].info.sender_id if summary.groups else None
    return partners.match(ich.standard, ich.sender_id, ich.sender_qualifier, group)


def _relax(findings: list[Finding], relax: frozenset[str], applied: list[str]) -> None:
    """Turn the errors of the checks a partner relaxed into warnings, in place (the list is shared
    with the acknowledgment's view); ``applied`` collects the checks that were relaxed."""
    for n, f in enumerate(findings):
        check = f.extra.get("check")
        if check in relax and f.is_error:
            findings[n] = replace(f, severity=Severity.WARNING,
                                  message=f"{f.message} (a warning for this partner: validation.relax {check})",
                                  extra={**f.extra, "relaxed": True})
            if check not in applied:
                applied.append(check)


def translate_set(ts: TransactionSet, partner: PartnerMapping | None) -> DocumentResult:
    """Map one transaction set with the partner's mapping (or the standard one)."""
    key = (ts.standard, ts.type)
    control = {
        "interchange": ts.interchange.control_number,
        "group": ts.group.control_number if ts.group else None,
        "message": ts.control_number,
    }
    findings = ts.findings  # shared with the envelope's SetSummary, so acknowledgments see mapping findings
    spec = MESSAGES.get(key)
    partner_id = partner.id if partner else None
    relaxed: list[str] = []
    if partner is not None and partner.validation.relax:
        _relax(findings, frozenset(partner.validation.relax), relaxed)
    if spec is None and not ts.type and any(f.is_error for f in findings):
        # A set whose header is corrupt or missing: refused on its own (its siblings go on).
        return DocumentResult(ts.standard, ts.type, None, control, partner_id, None, findings,
                              ts.first_segment_index, len(ts.segments), ts, "failed")
    if spec is None:
        findings.append(
            _at_header(
                ts,
                "transaction.unsupported",
                f"{ts.type or 'A message'} is not a purchase order or invoice; it is recorded and not translated",
                severity=Severity.WARNING,
                element_index=1 if ts.standard == "x12" else 2,
                value=ts.type,
            )
        )
        return DocumentResult(ts.standard, ts.type, None, control, partner_id, None, findings,
                              ts.first_segment_index, len(ts.segments), ts, "ignored")
    mapping: MessageMapping = partner.mapping if partner else STANDARD
    if ts.interchange.bare:
        _bare_header(ts, findings)
    doc, mapped = _mapper(key)(ts, mapping)
    if mapped:
        findings.extend(mapped)
    doc["partner"] = partner_id
    control_block = doc["control"]
    control_block["test"] = ts.interchange.test
    control_block["envelope"] = _envelope_kind(ts)
    control_block["relaxed"] = relaxed
    if partner is not None:
        if partner.validation.relax:
            _relax(findings, frozenset(partner.validation.relax), relaxed)  # the mapper's (CTT, CNT)
        _apply_partner_rules(doc, ts, partner, findings)
    status = "failed" if findings and any(f.is_error for f in findings) else "translated"
    # Positional: this runs once per document (see the field order of DocumentResult).
    return DocumentResult(ts.standard, ts.type, spec[0], control, partner_id, doc, findings,
                          ts.first_segment_index, len(ts.segments), ts, status)


def _envelope_kind(ts: TransactionSet) -> str:
    if not ts.interchange.bare:
        return "interchange"
    return "group" if ts.group is not None else "none"


def _apply_partner_rules(doc: dict[str, Any], ts: TransactionSet, partner: PartnerMapping, findings: list[Finding]) -> None:
    m = partner.mapping
    for key, value in m.defaults.items():
        if key in doc and doc[key] in (None, ""):
            doc[key] = value
    for path in m.required:
        missing = _missing(doc, path)
        if missing:
            findings.append(
                _at_header(ts, "mapping.required_missing", f"Partner {partner.id} must send {path}, and {missing}")
            )
    if doc["kind"] not in partner.documents:
        findings.append(
            _at_header(
                ts,
                "transaction.unsupported",
                f"Partner {partner.id} is not set up to send {doc['kind'].replace('_', ' ')}s",
                severity=Severity.WARNING,
            )
        )


def _at_header(ts: TransactionSet, code: str, message: str, **kw: Any) -> Finding:
    """A finding about the whole set, positioned on its ST / UNH with its control numbers."""
    return finding(
        code,
        message,
        segment_tag=ts.segments[0][0],
        segment_index=ts.first_segment_index,
        set_position=1,
        interchange_control=ts.interchange.control_number,
        group_control=ts.group.control_number if ts.group else None,
        message_control=ts.control_number,
        **kw,
    )


def _missing(doc: dict[str, Any], path: str) -> str | None:
    """Why the field at ``path`` is absent (None when present). ``lines.x`` checks every line."""
    head, _, rest = path.partition(".")
    if head == "lines" and rest:
        if not doc.get("lines"):
            return "the document has no lines"
        bad = [str(line.get("line_number") or n + 1) for n, line in enumerate(doc["lines"]) if _missing(line, rest)]
        return f"line(s) {', '.join(bad[:10])} lack it" if bad else None
    value = doc.get(head)
    if rest:
        return "it is absent" if not isinstance(value, dict) else _missing(value, rest)
    return "it is absent" if value in (None, "", [], {}) else None
