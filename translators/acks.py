"""Acknowledgment builders: 997, 999, TA1 and CONTRL from an interchange's findings.

Pure functions: no I/O and no clock. The caller passes ``now`` and the control numbers the
acknowledgment uses (it owns the counters), and gets text back, written with the received
interchange's delimiters and addressed back to its sender (sender and receiver reversed).

What comes from where:

- A transaction set / message is **accepted** (AK5/IK5 ``A``, UCM action 7) when it has no
  findings, **accepted with errors** (``E``) when it has only warnings, **rejected** (``R``, UCM
  action 4) when any finding is an error.
- A functional group is rejected (AK9 ``R`` with the AK905 codes, UCF action 4) when it has any
  group-level finding (trailer count or control number mismatch, missing trailer …); otherwise
  AK9 is ``A``/``E``/``P``/``R`` from its sets (``P``: some rejected, some not).
- Interchange-level findings go into a TA1 (TA104 ``R`` when any is an error, ``E`` when all
  are warnings, TA105 the note code of the first) or into CONTRL's UCI (action 4 on an error).
- AK3/IK3 report a segment at its ``Finding.set_position`` (ST is 1) with the segment rule's
  code (``8`` when only its elements are in error); AK4/IK4 the ``element_index`` (with the
  ``component_index``), the rule's code and a copy of the bad value (at most 99 characters,
  delimiters and control characters replaced).
- CONTRL: UCS carries the segment position (UNH is 1) and code; UCD the code and S011 — whose
  0098 counts the segment tag as position 1 (ISO 9735), so it is ``element_index + 1``.

:func:`build_acknowledgment` chooses: an X12 interchange rejected at the envelope gets a TA1
only; otherwise a 997 (versions up to 004010 and the other 004xxx) or a 999 (005010 and later),
with a TA1 riding in the same envelope when one was requested (ISA14 = 1) or the envelope has
warnings. EDIFACT gets a CONTRL. An interchange that was never readable (no usable ISA/UNB, no
one to address it to) gets nothing: the builders return ``None``.
"""

from __future__ import annotations

from typing import Any

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from translators.findings import RULES, Finding, Level
from translators.model import (
    Delimiters,
    GroupSummary,
    InterchangeSummary,
    SetSummary,
    TransactionSet,
    render_segment,
)

__all__ = [
    "AckStatus",
    "Acknowledgment",
    "GroupAck",
    "Party",
    "SetAck",
    "build_997",
    "build_999",
    "build_acknowledgment",
    "build_contrl",
    "build_ta1",
]

IMPLEMENTATION_999 = "005010X231A1"
_SET_LEVELS = frozenset({Level.TRANSACTION, Level.SEGMENT, Level.ELEMENT})
_DETAIL_LEVELS = frozenset({Level.SEGMENT, Level.ELEMENT})
_EDIFACT_SERVICE = frozenset({"UNA", "UNB", "UNZ", "UNG", "UNE", "UNH", "UNT"})
_MAX_CODES = 5  # AK502-AK506, AK905-AK909
_MAX_ELEMENT_NOTES = 99  # AK4/IK4 per AK3, UCD per UCS
_MAX_SEGMENT_NOTES = 999  # UCS per UCM (X12 allows more; nobody reads them)


# --------------------------------------------------------------------------------------------
# Results


class AckStatus(StrEnum):
    ACCEPTED = "accepted"
    ACCEPTED_WITH_ERRORS = "accepted_with_errors"
    PARTIALLY_ACCEPTED = "partially_accepted"  # groups only: some sets rejected
    REJECTED = "rejected"

    @property
    def x12(self) -> str:
        """The X12 code: AK5/IK5/AK9 A, E, P or R (TA104 uses A, E, R)."""
        return {"accepted": "A", "accepted_with_errors": "E", "partially_accepted": "P", "rejected": "R"}[self.value]


@dataclass(frozen=True, slots=True)
class Party:
    """An interchange party: identifier and qualifier (ISA05/07, UNB S002/S003 0007)."""

    id: str
    qualifier: str | None = None


@dataclass(frozen=True, slots=True)
class SetAck:
    """A received transaction set / message and what the acknowledgment says of it.

    ``status`` is the verdict on the document: ``rejected`` also when its group or its
    interchange was rejected (the AK5/UCM segment itself reports the set's own syntax).
    """

    group_control: str | None
    type: str
    control_number: str | None
    status: AckStatus
    codes: tuple[str, ...] = ()  # AK502.. / UCM 0085


@dataclass(frozen=True, slots=True)
class GroupAck:
    control_number: str | None
    functional_id: str | None
    status: AckStatus  # rejected also when the interchange was rejected
    codes: tuple[str, ...] = ()  # AK905.. / UCF 0085


@dataclass(frozen=True, slots=True)
class Acknowledgment:
    kind: str  # "997" | "999" | "TA1" | "CONTRL"
    standard: str  # "x12" | "edifact"
    text: str
    interchange_status: AckStatus  # TA104 / UCI verdict on the envelope
    groups: tuple[GroupAck, ...]
    sets: tuple[SetAck, ...]
    interchange_control: str  # ISA13 / UNB 0020 of the acknowledgment
    group_control: str | None  # GS06 of the acknowledgment (X12 997/999)
    message_controls: tuple[str, ...]  # ST02 / UNH 0062 of each acknowledgment message
    acknowledged_interchange: str | None  # ISA13 / UNB 0020 of the received interchange
    includes_ta1: bool = False  # a TA1 rides in the 997/999 envelope (or kind == "TA1")

    @property
    def status(self) -> AckStatus:
        """One verdict for the whole interchange."""
        if self.interchange_status is AckStatus.REJECTED:
            return AckStatus.REJECTED
        statuses = [s.status for s in self.sets] or [g.status for g in self.groups]
        overall = _combine(statuses)
        if overall is AckStatus.ACCEPTED and self.interchange_status is AckStatus.ACCEPTED_WITH_ERRORS:
            return AckStatus.ACCEPTED_WITH_ERRORS
        return overall

    def set_status(self, control_number: str | None, group_control: str | None = None) -> AckStatus | None:
        for s in self.sets:
            if s.control_number == control_number and (group_control is None or s.group_control == group_control):
                return s.status
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "standard": self.standard,
            "status": str(self.status),
            "interchange_status": str(self.interchange_status),
            "interchange_control": self.interchange_control,
            "group_control": self.group_control,
            "message_controls": list(self.message_controls),
            "acknowledged_interchange": self.acknowledged_interchange,
            "includes_ta1": self.includes_ta1,
            "groups": [
                {"control_number": g.control_number, "functional_id": g.functional_id, "status": str(g.status), "codes": list(g.codes)}
                for g in self.groups
            ],
            "sets": [
                {"group_control": s.group_control, "type": s.type, "control_number": s.control_number,
                 "status": str(s.status), "codes": list(s.codes)}
                for s in self.sets
            ],
            "text": self.text,
        }


# --------------------------------------------------------------------------------------------
# Evaluation: findings routed to their level, statuses derived.


@dataclass(slots=True)
class _Set:
    summary: SetSummary
    findings: list[Finding]
    status: AckStatus = AckStatus.ACCEPTED


@dataclass(slots=True)
class _Group:
    summary: GroupSummary
    sets: list[_Set]
    findings: list[Finding]
    status: AckStatus = AckStatus.ACCEPTED


@dataclass(slots=True)
class _Eval:
    findings: list[Finding]  # interchange level
    status: AckStatus
    groups: list[_Group]
    loose: list[_Set]  # EDIFACT messages without UNG


def _level(f: Finding) -> Level:
    """The finding's level; a code missing from the catalogue counts as a transaction problem."""
    rule = RULES.get(f.code)
    return rule.level if rule else Level.TRANSACTION


def _x12(f: Finding) -> str | None:
    rule = RULES.get(f.code)
    return rule.x12_code if rule else None


def _edi(f: Finding) -> str | None:
    rule = RULES.get(f.code)
    return rule.edifact_code if rule else None


_CODE = {"x12_code": _x12, "edifact_code": _edi}


def _own_status(findings: list[Finding]) -> AckStatus:
    if any(f.is_error for f in findings):
        return AckStatus.REJECTED
    return AckStatus.ACCEPTED_WITH_ERRORS if findings else AckStatus.ACCEPTED


def _combine(statuses: list[AckStatus]) -> AckStatus:
    if not statuses:
        return AckStatus.ACCEPTED
    rejected = sum(s is AckStatus.REJECTED for s in statuses)
    if rejected == len(statuses):
        return AckStatus.REJECTED
    if rejected or AckStatus.PARTIALLY_ACCEPTED in statuses:
        return AckStatus.PARTIALLY_ACCEPTED
    if AckStatus.ACCEPTED_WITH_ERRORS in statuses:
        return AckStatus.ACCEPTED_WITH_ERRORS
    return AckStatus.ACCEPTED


def _errors_first(findings: Iterable[Finding]) -> list[Finding]:
    fs = list(findings)
    return [f for f in fs if f.is_error] + [f for f in fs if not f.is_error]


def _evaluate(summary: InterchangeSummary) -> _Eval:
    inter: list[Finding] = []
    group_extra: list[Finding] = []

    def take_set(s: SetSummary, sink_group: list[Finding]) -> _Set:
        own = []
        for f in s.findings:
            if _level(f) is Level.INTERCHANGE:
                inter.append(f)
            elif _level(f) is Level.GROUP:
                sink_group.append(f)
            else:  # transaction, segment, element (and a file-level problem inside the set)
                own.append(f)
        return _Set(s, own, _own_status(own))

    for f in summary.findings:
        if _level(f) is Level.INTERCHANGE:
            inter.append(f)
        elif _level(f) is Level.GROUP:
            group_extra.append(f)
        # file-level findings are about the file, not this envelope; set-level findings hung
        # on the interchange are given to their set below (by control numbers).

    groups: list[_Group] = []
    for g in summary.groups:
        gf: list[Finding] = []
        for f in g.findings:
            if _level(f) is Level.INTERCHANGE:
                inter.append(f)
            elif _level(f) not in _SET_LEVELS:
                gf.append(f)
        sets = [take_set(s, gf) for s in g.sets]
        # set-level findings hung on the group: give them to their set by control number
        for f in g.findings:
            if _level(f) in _SET_LEVELS:
                for s in sets:
                    if s.summary.control_number == f.message_control:
                        s.findings.append(f)
                        s.status = _own_status(s.findings)
                        break
        groups.append(_Group(g, sets, gf))
    for f in group_extra:
        target = next((x for x in groups if x.summary.info.control_number == f.group_control), None)
        target = target or (groups[0] if groups else None)
        if target is not None:
            target.findings.append(f)
    loose_sink: list[Finding] = []
    loose = [take_set(s, loose_sink) for s in summary.sets]
    inter.extend(loose_sink)  # a group-level finding without a group: report it at the top
    for f in summary.findings:
        if _level(f) in _SET_LEVELS and f.message_control is not None:
            candidates = [s for g in groups if g.summary.info.control_number == f.group_control for s in g.sets] or (
                loose + [s for g in groups for s in g.sets]
            )
            owner = next((s for s in candidates if s.summary.control_number == f.message_control), None)
            if owner is not None:
                owner.findings.append(f)
                owner.status = _own_status(owner.findings)

    for group in groups:
        if any(f.is_error for f in group.findings):
            group.status = AckStatus.REJECTED
        else:
            group.status = _combine([s.status for s in group.sets])
            if group.findings and group.status is AckStatus.ACCEPTED:
                group.status = AckStatus.ACCEPTED_WITH_ERRORS  # a relaxed check: reported, not rejected
    return _Eval(_errors_first(inter), _own_status(inter), groups, loose)


def _set_codes(s: _Set, attr: str) -> list[str]:
    """AK502.. / IK502.. codes (or EDIFACT codes): transaction-level rules, then 5 for segments."""
    codes: list[str] = []
    for f in _errors_first(s.findings):
        code = _CODE[attr](f)
        if _level(f) is Level.TRANSACTION and code and code not in codes:
            codes.append(code)
    if attr == "x12_code" and any(_level(f) in _DETAIL_LEVELS for f in s.findings) and "5" not in codes:
        codes.append("5")
    return codes[:_MAX_CODES]


def _group_codes(g: _Group, attr: str) -> list[str]:
    codes: list[str] = []
    for f in _errors_first(g.findings):
        code = _CODE[attr](f)
        if code and code not in codes:
            codes.append(code)
    return codes[:_MAX_CODES]


# --------------------------------------------------------------------------------------------
# Segment / element notes shared by AK3/AK4, IK3/IK4 and UCS/UCD


@dataclass(slots=True)
class _Note:
    tag: str
    position: int
    loop_id: str | None
    segment: list[Finding] = field(default_factory=list)
    elements: list[Finding] = field(default_factory=list)


def _notes(findings: list[Finding]) -> list[_Note]:
    notes: dict[tuple[str, int], _Note] = {}
    for f in _errors_first(findings):
        if _level(f) not in _DETAIL_LEVELS or not f.segment_tag or f.set_position is None:
            continue
        key = (f.segment_tag, f.set_position)
        note = notes.get(key)
        if note is None:
            note = notes[key] = _Note(f.segment_tag, f.set_position, f.loop_id)
        elif note.loop_id is None:
            note.loop_id = f.loop_id
        (note.segment if _level(f) is Level.SEGMENT else note.elements).append(f)
    return sorted(notes.values(), key=lambda n: n.position)[:_MAX_SEGMENT_NOTES]


# --------------------------------------------------------------------------------------------
# Shared helpers


PartyArg = str | Party | tuple[Any, ...] | None
"""An acknowledgment's sender or receiver as given: an id, an id and qualifier, or a Party."""


def _party(value: PartyArg) -> Party | None:
    if value is None:
        return None
    if isinstance(value, Party):
        return value
    if isinstance(value, tuple):
        return Party(*value)
    return Party(str(value))


def _readable(summary: InterchangeSummary | None) -> bool:
    """Was there an interchange header at all?"""
    if summary is None or summary.info is None:
        return False
    header = summary.info.header or []
    return len(header) > 1 or summary.info.control_number is not None


def _line_end(d_segment: str, line_break: str) -> str:
    return d_segment if (not line_break or d_segment in "\r\n") else d_segment + line_break


def _pick(candidates: str, taken: Iterable[str | None]) -> str:
    used = {t for t in taken if t}
    return next(c for c in candidates if c not in used)


# --------------------------------------------------------------------------------------------
# X12


@dataclass(slots=True)
class _X12Env:
    element: str
    component: str
    segment: str
    repetition: str | None
    ours: Party
    theirs: Party
    end: str  # segment terminator (+ line break)


def _usable(ch: str | None, taken: Iterable[str | None] = ()) -> bool:
    """A character that can delimit: one character, not a letter, digit or space, not taken.

    Control characters (DEL, 0x1C-0x1F, EBCDIC NL) are legitimate X12 delimiters."""
    return ch is not None and len(ch) == 1 and not ch.isalnum() and ch not in " \t" and ch not in {t for t in taken if t}


def _x12_env(summary: InterchangeSummary, sender: PartyArg, receiver: PartyArg, line_break: str) -> _X12Env | None:
    info = summary.info
    if info.standard != "x12":
        raise ValueError(f"an X12 acknowledgment needs an X12 interchange, not {info.standard!r}")
    if not _readable(summary) or len(info.header or []) < 9:
        return None
    d: Delimiters = info.delimiters
    header = info.header

    def hdr(n: int) -> str:
        return header[n].strip() if len(header) > n else ""

    ours = _party(sender) or Party(info.receiver_id or hdr(8), info.receiver_qualifier or hdr(7) or None)
    theirs = _party(receiver) or Party(info.sender_id or hdr(6), info.sender_qualifier or hdr(5) or None)
    if not ours.id or not theirs.id:
        return None
    # The received delimiters, unless one cannot work in an acknowledgment: a space terminator
    # (ISA02 is blank, AK404 may hold spaces) or a component separator the ISA did not declare.
    element = d.element if _usable(d.element) else "*"
    segment = d.segment if (d.segment in ("\r", "\n") or _usable(d.segment, (element,))) else _pick("~!|'", (element,))
    unknown_component = len(header) < 17 or header[16] in ("", d.segment) or any(
        f.code == "interchange.separator_invalid" and f.element_index == 16 for f in summary.findings
    )
    comp = d.component if (_usable(d.component, (element, segment)) and not unknown_component) else _pick(
        ":>^<\\|", (element, segment, d.repetition)
    )
    explicit = [p for p, given in ((ours, sender), (theirs, receiver)) if given is not None]
    for p in explicit:  # the caller's own values: a mistake of the caller
        if len(p.id) > 15 or (p.qualifier and len(p.qualifier) > 2):
            raise ValueError(f"{p} does not fit the ISA (id at most 15, qualifier 2 characters)")
        if any(ch in p.id + (p.qualifier or "") for ch in (element, comp, segment)):
            raise ValueError(f"{p} holds a delimiter of the interchange")
    received = [p for p in (ours, theirs) if p not in explicit]
    if any(len(p.id) > 15 or (p.qualifier and len(p.qualifier) > 2) for p in received):
        return None  # the received ISA names a party no ISA can address: no acknowledgment
    text = "".join(p.id + (p.qualifier or "") for p in (ours, theirs))
    if any(ch in text for ch in (element, comp, segment)):
        # A received id holds a delimiter: answer with delimiters that it does not hold.
        element = next((c for c in (element, *"*|^!") if _usable(c) and c not in text), "")
        segment = next((c for c in (segment, *"~!|'") if _usable(c, (element,)) and c not in text), "")
        comp = next((c for c in (comp, *":>^<\\|") if _usable(c, (element, segment)) and c not in text), "")
        if not (element and segment and comp):
            return None
    return _X12Env(element, comp, segment, d.repetition if d.repetition not in (element, comp, segment) else None,
                   ours, theirs, _line_end(segment, line_break))


def _x12_clean(value: str, env: _X12Env, limit: int = 99) -> str:
    """A value copied into the acknowledgment: no delimiters, no control characters."""
    bad = {env.element, env.component, env.segment, env.repetition}
    sub = _pick("?. ", bad)
    out = "".join(sub if (ch in bad or not (" " <= ch <= "~")) else ch for ch in value)
    return out[:limit]


def _render_x12(seg: list[str], env: _X12Env) -> str:
    if seg[0] != "ISA":
        while len(seg) > 1 and seg[-1] == "":
            seg = seg[:-1]
    return env.element.join(seg) + env.end


def _control(value: str | int, what: str, width: int | None = None) -> str:
    v = str(value).strip()
    if not v.isdecimal() or len(v) > 9:
        raise ValueError(f"{what} {value!r} must be 1 to 9 digits")
    return v.zfill(width) if width else v


def _isa12(summary: InterchangeSummary) -> str | None:
    v = (summary.info.version or "").strip()
    return v if len(v) == 5 and v.isdecimal() else None


def _x12_base_version(summary: InterchangeSummary) -> str:
    """The functional version of the received groups: GS08's first six digits (or ISA12)."""
    for g in summary.groups:
        v = (g.info.version or "").strip()
        if len(v) >= 6 and v[:6].isdecimal():
            return v[:6]
    isa12 = _isa12(summary)
    return isa12 + "0" if isa12 else "004010"


def _isa(summary: InterchangeSummary, env: _X12Env, now: datetime, icn: str, isa12: str) -> list[str]:
    if isa12 >= "00402":
        isa11 = env.repetition if _usable(env.repetition, (env.element, env.component, env.segment)) else _pick(
            "^{}|!`", (env.element, env.component, env.segment)
        )
    else:
        isa11 = "U"
    return [
        "ISA", "00", " " * 10, "00", " " * 10,
        (env.ours.qualifier or "ZZ").ljust(2), env.ours.id.ljust(15),
        (env.theirs.qualifier or "ZZ").ljust(2), env.theirs.id.ljust(15),
        now.strftime("%y%m%d"), now.strftime("%H%M"), isa11 or "U", isa12, icn, "0",
        "T" if summary.info.test else "P", env.component,
    ]  # fmt: skip


def _ta1_segment(summary: InterchangeSummary, ev: _Eval, now: datetime) -> list[str]:
    info = summary.info
    header = info.header or []

    def hdr(n: int) -> str:
        return header[n].strip() if len(header) > n else ""

    ctl = hdr(13) or (info.control_number or "")
    ta101 = ctl.zfill(9) if ctl.isdecimal() and len(ctl) <= 9 else "000000000"
    date = hdr(9)
    if not (len(date) == 6 and date.isdecimal()):
        date = info.date.replace("-", "")[2:] if info.date else now.strftime("%y%m%d")
    time = hdr(10)
    if not (len(time) == 4 and time.isdecimal()):
        time = info.time.replace(":", "") if info.time else now.strftime("%H%M")
    if ev.findings:
        first = ev.findings[0]  # errors come first
        note = _x12(first) or ""
        note = note if len(note) == 3 and note.isdecimal() else "022"  # TA105 is a three-digit note code
        code = "R" if first.is_error else "E"
    else:
        code, note = "A", "000"
    return ["TA1", ta101, date, time, code, note]


def build_ta1(
    summary: InterchangeSummary,
    *,
    now: datetime,
    interchange_control: str,
    sender: str | Party | tuple[Any, ...] | None = None,
    receiver: str | Party | tuple[Any, ...] | None = None,
    line_break: str = "",
) -> str | None:
    """A TA1 interchange acknowledgment inside its own ISA/IEA.

    TA104 ``R`` with the first interchange error's note code, ``E`` when the envelope has only
    warnings, ``A`` / ``000`` otherwise. ``None`` when the interchange was never readable.
    """
    env = _x12_env(summary, sender, receiver, line_break)
    if env is None:
        return None
    icn = _control(interchange_control, "interchange control number", 9)
    ev = _evaluate(summary)
    isa12 = _isa12(summary) or "00401"
    segs = [
        _isa(summary, env, now, icn, isa12),
        _ta1_segment(summary, ev, now),
        ["IEA", "0", icn],
    ]
    return "".join(_render_x12(s, env) for s in segs)


def build_997(
    summary: InterchangeSummary,
    *,
    now: datetime,
    interchange_control: str,
    group_control: str,
    sender: str | Party | tuple[Any, ...] | None = None,
    receiver: str | Party | tuple[Any, ...] | None = None,
    include_ta1: bool = False,
    line_break: str = "",
) -> str | None:
    """A 997 functional acknowledgment: one 997 per received functional group, in one GS*FA.

    The version follows the received group (GS08, e.g. 004010; ISA12 as received). Groups that
    are themselves acknowledgments (GS01 FA) are not acknowledged. ``include_ta1`` puts a TA1
    between the ISA and the GS. ``None`` when there is nothing to acknowledge or no one to
    address it to.
    """
    return _build_functional(summary, "997", now, interchange_control, group_control, sender, receiver, include_ta1, line_break)


def build_999(
    summary: InterchangeSummary,
    *,
    now: datetime,
    interchange_control: str,
    group_control: str,
    sender: str | Party | tuple[Any, ...] | None = None,
    receiver: str | Party | tuple[Any, ...] | None = None,
    include_ta1: bool = False,
    line_break: str = "",
) -> str | None:
    """A 999 implementation acknowledgment (005010X231A1): AK1 carries GS08, AK2 the set's ST03.

    IK3/IK4 as AK3/AK4 in a 997. CTX segments come from a finding's ``extra``:
    ``business_unit=(name, reference)`` gives ``CTX*name:reference`` after the IK3 (e.g.
    ``("BEG03", "PO-1")``); ``trigger={"segment_tag", "set_position", "loop_id",
    "element_index", "component_index", "element_reference"}`` gives a ``SITUATIONAL TRIGGER``
    context after the IK3 (segment finding) or the IK4 (element finding).
    """
    return _build_functional(summary, "999", now, interchange_control, group_control, sender, receiver, include_ta1, line_break)


def _build_functional(summary: InterchangeSummary, kind: str, now: datetime, interchange_control: str | int,
                      group_control: str | int, sender: PartyArg, receiver: PartyArg, include_ta1: bool,
                      line_break: str) -> str | None:
    env = _x12_env(summary, sender, receiver, line_break)
    if env is None:
        return None
    ev = _evaluate(summary)
    groups = [g for g in ev.groups if (g.summary.info.functional_id or "").upper() != "FA"]
    if not groups:
        return None
    icn = _control(interchange_control, "interchange control number", 9)
    gcn = _control(group_control, "group control number")
    base = _x12_base_version(summary)
    received_isa12 = _isa12(summary)
    if kind == "999":
        isa12 = received_isa12 if received_isa12 and received_isa12 >= "00501" else "00501"
        gs08 = IMPLEMENTATION_999
        long_form = True
    else:
        isa12 = received_isa12 or base[:5]
        gs08 = base
        long_form = base >= "005010"  # a 997 in 5010 has AK103 and AK203
    first = groups[0].summary.info
    explicit_sender, explicit_receiver = _party(sender), _party(receiver)
    gs02 = explicit_sender.id if explicit_sender else (first.receiver_id or env.ours.id)
    gs03 = explicit_receiver.id if explicit_receiver else (first.sender_id or env.theirs.id)
    gs04 = now.strftime("%Y%m%d") if base >= "004010" else now.strftime("%y%m%d")

    out = [_isa(summary, env, now, icn, isa12)]
    if include_ta1:
        out.append(_ta1_segment(summary, ev, now))
    out.append(["GS", "FA", _x12_clean(gs02, env, 15), _x12_clean(gs03, env, 15), gs04, now.strftime("%H%M"), gcn, "X", gs08])
    for n, g in enumerate(groups, 1):
        st02 = f"{n:04d}"
        body = [["ST", kind, st02, IMPLEMENTATION_999] if kind == "999" else ["ST", kind, st02]]
        info = g.summary.info
        ak1 = ["AK1", info.functional_id or "", info.control_number or ""]
        if long_form:
            ak1.append(_x12_clean(info.version or base, env, 12))
        body.append(ak1)
        for s in g.sets:
            body.extend(_x12_set_loop(s, kind, env, long_form, base))
        total = g.summary.trailer_count
        total = str(int(total)) if total and total.strip().isdecimal() else str(len(g.sets))
        accepted = sum(s.status is not AckStatus.REJECTED for s in g.sets)
        body.append(["AK9", g.status.x12, total, str(len(g.sets)), str(accepted), *_group_codes(g, "x12_code")])
        body.append(["SE", str(len(body) + 1), st02])
        out.extend(body)
    out.append(["GE", str(len(groups)), gcn])
    out.append(["IEA", "1", icn])
    return "".join(_render_x12(s, env) for s in out)


def _x12_set_loop(s: _Set, kind: str, env: _X12Env, long_form: bool, base: str) -> list[list[str]]:
    seg_tag, el_tag, end_tag = ("IK3", "IK4", "IK5") if kind == "999" else ("AK3", "AK4", "AK5")
    ak2 = ["AK2", s.summary.type or "", s.summary.control_number or ""]
    if long_form and s.summary.implementation_reference:
        ak2.append(_x12_clean(s.summary.implementation_reference, env, 35))
    out = [ak2]
    composite = base >= "004010" or kind == "999"
    for note in _notes(s.findings):
        seg_rule = next((f for f in note.segment if _x12(f)), None)
        code = _x12(seg_rule) if seg_rule else ("8" if note.elements else "")
        loop = note.loop_id if note.loop_id and len(note.loop_id) <= 4 else ""
        out.append([seg_tag, note.tag, str(note.position), _x12_clean(loop, env, 4), code or ""])
        if kind == "999":
            out.extend(_ctx(f, env) for f in _business_units(note))
            out.extend(_ctx_trigger(f, env) for f in note.segment if isinstance(f.extra.get("trigger"), dict))
        for f in note.elements[:_MAX_ELEMENT_NOTES]:
            if f.element_index is None:
                continue
            pos = str(f.element_index)
            if composite and (f.component_index is not None or f.extra.get("repetition_index")):
                parts = [pos, str(f.component_index or "")]
                if kind == "999" and f.extra.get("repetition_index"):
                    parts.append(str(f.extra["repetition_index"]))
                pos = env.component.join(parts).rstrip(env.component)
            bad = _x12_clean(f.value, env) if f.value and f.value.strip() else ""
            ref = str(f.extra.get("element_reference", "") or "")
            out.append([el_tag, pos, ref, _x12(f) or "", bad])
            if kind == "999" and isinstance(f.extra.get("trigger"), dict):
                out.append(_ctx_trigger(f, env))
    codes = _set_codes(s, "x12_code") if s.status is not AckStatus.ACCEPTED else []
    out.append([end_tag, s.status.x12, *codes])
    return out


def _business_units(note: _Note) -> list[Finding]:
    for f in note.segment + note.elements:
        bu = f.extra.get("business_unit")
        if isinstance(bu, (tuple, list)) and len(bu) == 2 and bu[0] and bu[1]:
            return [f]  # one business unit per IK3
    return []


def _ctx(f: Finding, env: _X12Env) -> list[str]:
    name, ref = f.extra["business_unit"]
    return ["CTX", _x12_clean(str(name), env, 35) + env.component + _x12_clean(str(ref), env, 35)]


def _ctx_trigger(f: Finding, env: _X12Env) -> list[str]:
    t = f.extra["trigger"]
    pos = ""
    if t.get("element_index"):
        pos = str(t["element_index"])
        if t.get("component_index"):
            pos += env.component + str(t["component_index"])
    return [
        "CTX", "SITUATIONAL TRIGGER", _x12_clean(str(t.get("segment_tag", "")), env, 3),
        str(t.get("set_position", "")), _x12_clean(str(t.get("loop_id") or ""), env, 4), pos,
        str(t.get("element_reference") or ""),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# EDIFACT CONTRL


def _as_list(v: object) -> list[str]:
    if v is None:
        return []
    parts = [str(p) for p in v] if isinstance(v, list) else [str(v)]
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _trim_edifact(seg: list[Any]) -> list[Any]:
    out = [seg[0]]
    for el in seg[1:]:
        if isinstance(el, list):
            el = _as_list(el)
            el = el[0] if len(el) == 1 else ("" if not el else el)
        out.append(el if el is not None else "")
    while len(out) > 1 and out[-1] == "":
        out.pop()
    return out


def _syntax(summary: InterchangeSummary) -> tuple[str, str]:
    info = summary.info
    s001 = _as_list(info.header[1]) if len(info.header or []) > 1 else []
    ident = info.syntax_identifier or (s001[0] if s001 else "") or "UNOA"
    version = (info.version or (s001[1] if len(s001) > 1 else "") or "3").strip()
    return ident, version


def _una(d: Delimiters, version: str) -> str:
    rep = d.repetition or (" " if version < "4" else "*")
    chars = (d.component, d.element, d.decimal or ".", d.release or " ", rep, d.segment)
    default = (":", "+", ".", "?", " " if version < "4" else "*", "'")
    return "" if chars == default else "UNA" + "".join(chars)


def _message_identifier(s: SetSummary, group_control: str | None,
                        lookup: Lookup) -> list[str]:
    """UCM S009: the received UNH's message identifier, as exactly as it can be known."""
    ts = lookup.get((group_control, s.control_number)) or lookup.get((None, s.control_number))
    if ts is not None and ts.segments and ts.segments[0] and ts.segments[0][0] == "UNH" and len(ts.segments[0]) > 2:
        ident = _as_list(ts.segments[0][2])
        if len(ident) >= 4:
            return ident
    if ":" in (s.type or ""):
        return s.type.split(":")
    version = getattr(s, "version", None) or (ts.version if ts is not None else None)
    association = getattr(s, "association", None) or (ts.association if ts is not None else None)
    ver, rel = "", ""
    if version:
        v = version.replace(":", "")
        ver, rel = (v[0], v[1:]) if len(v) > 1 and v[0].isalpha() else (v, "")
    out = [s.type or "", ver, rel, "UN"]
    if association:
        out.append(association)
    return out


def _service_position(f: Finding) -> list[Any]:
    """0013 service segment tag and S011 data element identification, for a service segment."""
    if f.segment_tag not in _EDIFACT_SERVICE:
        return []
    s011 = []
    if f.element_index is not None:
        s011 = [str(f.element_index + 1)] + ([str(f.component_index)] if f.component_index else [])
    return [f.segment_tag, s011]


Lookup = dict[tuple[str | None, str | None], TransactionSet]


def _ucm(s: _Set, group_control: str | None, lookup: Lookup, rejected_above: bool) -> list[list[Any]] | None:
    """UCM (+UCS/UCD) for one message; None when nothing is to be said of it."""
    errors = [f for f in s.findings if f.is_error]
    if rejected_above and not errors:
        return None
    action = "4" if (errors or rejected_above) else "7"
    ucm: list[Any] = ["UCM", s.summary.control_number or "", _message_identifier(s.summary, group_control, lookup), action]
    level_findings = [f for f in _errors_first(s.findings) if _level(f) is Level.TRANSACTION and _edi(f)]
    notes = _notes(s.findings)
    out: list[list[Any]] = []
    for note in notes:
        seg_rule = next((f for f in note.segment if _edi(f)), None)
        ucds = []
        for f in note.elements[:_MAX_ELEMENT_NOTES]:
            if f.element_index is None or not _edi(f):
                continue
            s011 = [str(f.element_index + 1)] + ([str(f.component_index)] if f.component_index else [])
            ucds.append(["UCD", _edi(f), s011])
        code = _edi(seg_rule) if seg_rule else ""
        if not code and not ucds:
            code = next((_edi(f) for f in note.elements if _edi(f)), "")
        out.append(["UCS", str(note.position), code])
        out.extend(ucds)
    if level_findings:
        first = level_findings[0]
        ucm += [_edi(first) or "", *_service_position(first)]
    elif errors and not out:
        code = next((_edi(f) for f in _errors_first(s.findings) if _edi(f)), "18")
        ucm.append(code)
    return [ucm, *out]


def build_contrl(
    summary: InterchangeSummary,
    *,
    now: datetime,
    interchange_control: str,
    message_reference: str = "1",
    sender: str | Party | tuple[Any, ...] | None = None,
    receiver: str | Party | tuple[Any, ...] | None = None,
    transaction_sets: Iterable[TransactionSet] = (),
    receipt_only: bool = False,
    line_break: str = "",
) -> str | None:
    """An EDIFACT CONTRL for a received interchange (ISO 9735: UCI, UCF, UCM, UCS, UCD).

    The message is ``CONTRL:4:1:UN`` for syntax version 4, ``CONTRL:D:3:UN`` otherwise, in an
    interchange of the received syntax identifier and version. UCI action 4 when the
    interchange has an error (nothing below it is listed), 8 when ``receipt_only``, 7 otherwise;
    every message gets a UCM (action 7 or 4, with UCS/UCD for its segment and element
    findings); UNG groups get a UCF (action 4 on any group finding). UCM's message identifier
    is taken from the received UNH when the sets are passed in ``transaction_sets``.
    """
    info = summary.info
    if info.standard != "edifact":
        raise ValueError(f"a CONTRL needs an EDIFACT interchange, not {info.standard!r}")
    if not _readable(summary):
        return None
    ref = str(interchange_control).strip()
    if not ref or len(ref) > 14:
        raise ValueError(f"interchange control reference {interchange_control!r} must be 1 to 14 characters")
    header = info.header or []
    d: Delimiters = info.delimiters
    ident, version = _syntax(summary)
    received_sender = _as_list(header[2]) if len(header) > 2 else [info.sender_id or "", info.sender_qualifier or ""]
    received_recipient = _as_list(header[3]) if len(header) > 3 else [info.receiver_id or "", info.receiver_qualifier or ""]
    ours, theirs = _party(sender), _party(receiver)
    s002 = [ours.id, ours.qualifier or ""] if ours else received_recipient
    s003 = [theirs.id, theirs.qualifier or ""] if theirs else received_sender
    if not _as_list(s002) or not _as_list(s003) or not _as_list(s002)[0] or not _as_list(s003)[0]:
        return None
    date = now.strftime("%Y%m%d" if version >= "4" else "%y%m%d")
    unb = ["UNB", [ident, version], s002, s003, [date, now.strftime("%H%M")], ref]
    if info.test:
        unb += ["", "", "", "", "", "1"]
    contrl_version = ["4", "1"] if version >= "4" else ["D", "3"]

    ev = _evaluate(summary)
    lookup: Lookup = {}
    for ts in transaction_sets:
        lookup[(ts.group.control_number if ts.group else None, ts.control_number)] = ts
    body: list[list[Any]] = [["UNH", message_reference, ["CONTRL", *contrl_version, "UN"]]]
    inter_errors = [f for f in ev.findings if f.is_error]
    if inter_errors:
        action = "4"
    elif receipt_only:
        action = "8"
    else:
        action = "7"
    uci = ["UCI", info.control_number or (header[5] if len(header) > 5 else ""), received_sender, received_recipient, action]
    if ev.findings and not receipt_only and _edi(ev.findings[0]):
        uci += [_edi(ev.findings[0]), *_service_position(ev.findings[0])]
    body.append(uci)
    if action == "7":
        for s in ev.loose:
            body.extend(_ucm(s, None, lookup, False) or [])
        for g in ev.groups:
            gi = g.summary.info
            gheader = gi.header or []
            rejected = g.status is AckStatus.REJECTED and bool(g.findings)
            ucf = [
                "UCF", gi.control_number or "",
                _as_list(gheader[2]) if len(gheader) > 2 else [gi.sender_id or ""],
                _as_list(gheader[3]) if len(gheader) > 3 else [gi.receiver_id or ""],
                "4" if rejected else "7",
            ]  # fmt: skip
            if g.findings:
                first = _errors_first(g.findings)[0]
                if _edi(first):
                    ucf += [_edi(first) or "", *_service_position(first)]
            body.append(ucf)
            for s in g.sets:
                body.extend(_ucm(s, gi.control_number, lookup, rejected) or [])
    body.append(["UNT", str(len(body) + 1), message_reference])

    end = _line_end(d.segment, line_break)
    una = _una(d, version)
    text = (una + (line_break if una and d.segment not in "\r\n" else "")) if una else ""
    for seg in [unb, *body, ["UNZ", "1", ref]]:
        text += render_segment(_trim_edifact(seg), "edifact", d)[: -len(d.segment)] + end
    return text


# --------------------------------------------------------------------------------------------
# The dispatcher


def build_acknowledgment(
    summary: InterchangeSummary | None,
    *,
    now: datetime,
    interchange_control: str,
    group_control: str | None = None,
    kind: str = "auto",
    sender: str | Party | tuple[Any, ...] | None = None,
    receiver: str | Party | tuple[Any, ...] | None = None,
    message_reference: str = "1",
    transaction_sets: Iterable[TransactionSet] = (),
    receipt_only: bool = False,
    line_break: str = "",
) -> Acknowledgment | None:
    """The acknowledgment an interchange deserves, or ``None`` when none can be built.

    ``kind``: ``"auto"`` (X12: TA1 alone when the envelope is rejected, else 997 up to 004xxx,
    999 from 005010, with a TA1 in the same envelope when ISA14 asked for one or the envelope
    has warnings; EDIFACT: CONTRL), or one of ``"997"``, ``"999"``, ``"TA1"``, ``"CONTRL"``.
    ``group_control`` (GS06) defaults to the interchange control number without its zeros.
    """
    if summary is None or not _readable(summary):
        return None
    info = summary.info
    ev = _evaluate(summary)
    kind = kind.upper() if kind != "auto" else kind
    ta1_used = False
    ctl_group: str | None = None
    message_controls: tuple[str, ...] = ()
    if info.standard == "edifact":
        if kind not in ("auto", "CONTRL"):
            raise ValueError(f"an EDIFACT interchange is acknowledged with CONTRL, not {kind}")
        kind = "CONTRL"
        text = build_contrl(summary, now=now, interchange_control=interchange_control, message_reference=message_reference,
                            sender=sender, receiver=receiver, transaction_sets=transaction_sets,
                            receipt_only=receipt_only, line_break=line_break)
        message_controls = (message_reference,)
    else:
        if kind == "CONTRL":
            raise ValueError("an X12 interchange is acknowledged with TA1, 997 or 999, not CONTRL")
        if kind not in ("auto", "997", "999", "TA1"):
            raise ValueError(f"unknown acknowledgment kind {kind!r}")
        if kind == "auto":
            if ev.status is AckStatus.REJECTED:
                kind = "TA1"
            else:
                kind = "999" if _x12_base_version(summary) >= "005010" else "997"
        text = None
        if kind in ("997", "999"):
            gcn = group_control if group_control is not None else (str(interchange_control).strip().lstrip("0") or "1")
            ta1_used = bool(info.ack_requested or ev.findings)
            builder = build_999 if kind == "999" else build_997
            text = builder(summary, now=now, interchange_control=interchange_control, group_control=gcn,
                           sender=sender, receiver=receiver, include_ta1=ta1_used, line_break=line_break)
            if text is not None:
                ctl_group = gcn
                n = len([g for g in ev.groups if (g.summary.info.functional_id or "").upper() != "FA"])
                message_controls = tuple(f"{i:04d}" for i in range(1, n + 1))
            elif ta1_used:
                kind = "TA1"  # no functional group to acknowledge, but the envelope wants a TA1
        if kind == "TA1":
            text = build_ta1(summary, now=now, interchange_control=interchange_control, sender=sender,
                             receiver=receiver, line_break=line_break)
            ta1_used = text is not None
    if text is None:
        return None

    inter_rejected = ev.status is AckStatus.REJECTED
    attr = "edifact_code" if info.standard == "edifact" else "x12_code"
    groups, sets = [], []
    for s in ev.loose:
        sets.append(SetAck(None, s.summary.type, s.summary.control_number,
                           AckStatus.REJECTED if inter_rejected else s.status, tuple(_set_codes(s, attr))))
    for g in ev.groups:
        gi = g.summary.info
        g_rejected = inter_rejected or g.status is AckStatus.REJECTED
        groups.append(GroupAck(gi.control_number, gi.functional_id, AckStatus.REJECTED if inter_rejected else g.status,
                               tuple(_group_codes(g, attr))))
        for s in g.sets:
            status = AckStatus.REJECTED if g_rejected else s.status
            sets.append(SetAck(gi.control_number, s.summary.type, s.summary.control_number, status, tuple(_set_codes(s, attr))))
    return Acknowledgment(
        kind=kind,
        standard=info.standard,
        text=text,
        interchange_status=ev.status,
        groups=tuple(groups),
        sets=tuple(sets),
        interchange_control=(_control(interchange_control, "interchange control number", 9)
                             if info.standard == "x12" else str(interchange_control).strip()),
        group_control=ctl_group,
        message_controls=message_controls,
        acknowledged_interchange=info.control_number,
        includes_ta1=ta1_used,
    )
