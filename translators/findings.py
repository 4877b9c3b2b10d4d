"""Validation findings and the acknowledgment codes they map onto.

Every problem the translators see is a :class:`Finding`. Its ``code`` is stable (tests, the
store and the panel key on it); its ``level`` says which acknowledgment segment reports it
(TA1, AK9/AK5/AK3/AK4 or their 999 twins IK5/IK3/IK4, and UCI/UCM/UCS/UCD in CONTRL); and
``x12_code`` / ``edifact_code`` are the values that go into that segment.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass, field
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"  # the document (or envelope) is rejected at this level
    WARNING = "warning"  # accepted with errors: reported in the acknowledgment, document goes on


class Level(StrEnum):
    """Where a finding is reported in an acknowledgment."""

    INTERCHANGE = "interchange"  # X12 TA1, EDIFACT UCI
    GROUP = "group"  # X12 AK9, EDIFACT UCF
    TRANSACTION = "transaction"  # X12 AK5/IK5, EDIFACT UCM
    SEGMENT = "segment"  # X12 AK3/IK3, EDIFACT UCS
    ELEMENT = "element"  # X12 AK4/IK4, EDIFACT UCD
    FILE = "file"  # nothing recognisable as EDI: no acknowledgment can be built


@dataclass(frozen=True, slots=True)
class Rule:
    """A kind of finding: its stable code, level and acknowledgment codes."""

    code: str
    level: Level
    x12_code: str | None  # TA105 note code, AK905, AK502/IK502, AK304/IK304, AK403/IK403
    edifact_code: str | None  # CONTRL syntax error code (data element 0085)
    title: str


def _rules(*rules: Rule) -> dict[str, Rule]:
    return {r.code: r for r in rules}


L = Level
RULES: dict[str, Rule] = _rules(
    # Nothing recognisable.
    Rule("file.empty", L.FILE, None, None, "The file is empty"),
    Rule("file.not_edi", L.FILE, None, None, "The file is neither X12 nor EDIFACT"),
    Rule("file.encoding", L.FILE, None, "21", "The bytes cannot be decoded in the declared character set"),
    Rule("file.trailing_data", L.FILE, None, "33", "Data after the last interchange trailer"),
    Rule("file.no_messages", L.FILE, None, None, "The file holds envelopes but no transaction set or message"),
    # Interchange envelope (TA1 / UCI).
    Rule("interchange.header_invalid", L.INTERCHANGE, "022", "12", "Interchange header is malformed"),
    Rule("interchange.separator_invalid", L.INTERCHANGE, "026", "20", "A separator character is invalid"),
    Rule("interchange.version_unsupported", L.INTERCHANGE, "017", "2", "Interchange version not supported"),
    Rule("interchange.date_invalid", L.INTERCHANGE, "014", "12", "Interchange date is invalid"),
    Rule("interchange.time_invalid", L.INTERCHANGE, "015", "12", "Interchange time is invalid"),
    Rule("interchange.control_number_invalid", L.INTERCHANGE, "018", "12", "Interchange control number is invalid"),
    Rule("interchange.test_indicator_invalid", L.INTERCHANGE, "020", "25", "Test indicator is invalid"),
    Rule("interchange.trailer_missing", L.INTERCHANGE, "023", "13", "Interchange trailer is missing: the file may be truncated"),
    Rule("interchange.control_number_mismatch", L.INTERCHANGE, "001", "28", "Interchange control numbers in header and trailer differ"),
    Rule("interchange.count_mismatch", L.INTERCHANGE, "021", "29", "Interchange trailer count differs from the groups or messages received"),
    Rule("interchange.content_invalid", L.INTERCHANGE, "024", "33", "Segment outside any group or transaction set"),
    Rule("interchange.empty", L.INTERCHANGE, "024", "32", "Interchange holds no group or message"),
    Rule("interchange.sender_invalid", L.INTERCHANGE, "006", "23", "Interchange sender is missing or invalid"),
    Rule("interchange.receiver_invalid", L.INTERCHANGE, "008", "7", "Interchange receiver is missing or invalid"),
    # Functional group (AK9 / UCF).
    Rule("group.trailer_missing", L.GROUP, "3", "13", "Functional group trailer is missing"),
    Rule("group.control_number_mismatch", L.GROUP, "4", "28", "Group control numbers in header and trailer differ"),
    Rule("group.count_mismatch", L.GROUP, "5", "29", "Group trailer count differs from the transaction sets received"),
    Rule("group.version_unsupported", L.GROUP, "2", "2", "Functional group version not supported"),
    Rule("group.header_invalid", L.GROUP, "6", "12", "Functional group header is malformed"),
    # Transaction set / message (AK5 / UCM).
    Rule("transaction.unsupported", L.TRANSACTION, "1", "14", "Transaction set or message type not supported"),
    Rule("transaction.trailer_missing", L.TRANSACTION, "2", "13", "Transaction set trailer is missing"),
    Rule("transaction.control_number_mismatch", L.TRANSACTION, "3", "28", "Transaction set control numbers in header and trailer differ"),
    Rule("transaction.count_mismatch", L.TRANSACTION, "4", "29", "Segment count in the trailer differs from the segments received"),
    Rule("transaction.segment_errors", L.TRANSACTION, "5", "18", "One or more segments in error"),
    Rule("transaction.header_invalid", L.TRANSACTION, "6", "12", "Transaction set header is missing or invalid"),
    Rule("transaction.control_number_duplicate", L.TRANSACTION, "23", "26", "Transaction set control number not unique within the group"),
    # Segment (AK3 / UCS).
    Rule("segment.unrecognized", L.SEGMENT, "1", "14", "Unrecognised segment"),
    Rule("segment.unexpected", L.SEGMENT, "2", "15", "Segment not expected here"),
    Rule("segment.mandatory_missing", L.SEGMENT, "3", "13", "Mandatory segment is missing"),
    Rule("segment.too_many", L.SEGMENT, "5", "35", "Segment exceeds its maximum use"),
    Rule("segment.element_errors", L.SEGMENT, "8", "12", "Segment has data element errors"),
    Rule("segment.line_count_mismatch", L.SEGMENT, "8", "12", "The line count in the summary (CTT01 / CNT 2) differs from the lines received"),
    Rule("segment.hash_total_mismatch", L.SEGMENT, "8", "12", "The hash total (CTT02) differs from the sum of the line quantities"),
    # Element (AK4 / UCD).
    Rule("element.mandatory_missing", L.ELEMENT, "1", "13", "Mandatory data element is missing"),
    Rule("element.conditional_missing", L.ELEMENT, "2", "13", "Conditionally required data element is missing"),
    Rule("element.too_many", L.ELEMENT, "3", "16", "Too many data elements"),
    Rule("element.too_short", L.ELEMENT, "4", "40", "Data element too short"),
    Rule("element.too_long", L.ELEMENT, "5", "39", "Data element too long"),
    Rule("element.invalid_character", L.ELEMENT, "6", "21", "Invalid character in data element"),
    Rule("element.invalid_code", L.ELEMENT, "7", "12", "Invalid code value"),
    Rule("element.invalid_date", L.ELEMENT, "8", "12", "Invalid date"),
    Rule("element.invalid_time", L.ELEMENT, "9", "12", "Invalid time"),
    Rule("element.exclusion_violated", L.ELEMENT, "10", "12", "Exclusion condition violated"),
    Rule("element.invalid_number", L.ELEMENT, "6", "37", "Numeric data element holds a non-numeric value"),
    # Mapping: the EDI is well formed, but the partner's mapping file requires something absent.
    Rule("mapping.required_missing", L.TRANSACTION, "5", "18", "A field the partner's mapping file requires is absent"),
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One validation finding, positioned where a person (and an acknowledgment) can find it.

    ``segment_index`` is the segment's 1-based position in the file; ``set_position`` its
    1-based position inside its transaction set / message (ST or UNH is 1), which is what
    AK302/IK302 and UCS report. ``element_index`` and ``component_index`` are 1-based.
    """

    code: str
    message: str
    severity: Severity = Severity.ERROR
    segment_tag: str | None = None
    segment_index: int | None = None
    set_position: int | None = None
    element_index: int | None = None
    component_index: int | None = None
    loop_id: str | None = None
    value: str | None = None
    # Control numbers of the envelope the finding belongs to, filled in by the envelope reader.
    interchange_control: str | None = None
    group_control: str | None = None
    message_control: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def rule(self) -> Rule:
        return RULES[self.code]

    @property
    def level(self) -> Level:
        return RULES[self.code].level

    @property
    def x12_code(self) -> str | None:
        return RULES[self.code].x12_code

    @property
    def edifact_code(self) -> str | None:
        return RULES[self.code].edifact_code

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def where(self) -> str:
        """Human position, e.g. ``segment PO1 #14 (position 6 in the set), element 02``."""
        parts = []
        if self.segment_tag:
            seg = f"segment {self.segment_tag}"
            if self.segment_index is not None:
                seg += f" #{self.segment_index}"
            if self.set_position is not None:
                seg += f" (position {self.set_position} in the set)"
            parts.append(seg)
        elif self.segment_index is not None:
            parts.append(f"segment #{self.segment_index}")
        if self.element_index is not None:
            el = f"element {self.element_index:02d}"
            if self.component_index is not None:
                el += f"-{self.component_index}"
            parts.append(el)
        return ", ".join(parts) or "file"

    def describe(self, source: str | None = None) -> str:
        """One line for a person: file, position, code and message."""
        prefix = f"{source}: " if source else ""
        return f"{prefix}{self.where()}: {self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": str(self.severity),
            "level": str(self.level),
            "message": self.message,
            "segment_tag": self.segment_tag,
            "segment_index": self.segment_index,
            "set_position": self.set_position,
            "element_index": self.element_index,
            "component_index": self.component_index,
            "value": self.value,
            "x12_code": self.x12_code,
            "edifact_code": self.edifact_code,
            "control": {
                "interchange": self.interchange_control,
                "group": self.group_control,
                "message": self.message_control,
            },
        }


def finding(code: str, message: str | None = None, **where: Any) -> Finding:
    """Build a finding for a known rule; the message defaults to the rule's title."""
    if code not in RULES:
        raise KeyError(f"unknown finding code {code!r}")
    return Finding(code=code, message=message or RULES[code].title, **where)


class TranslationError(Exception):
    """The one exception type the translators raise: carries the findings that caused it."""

    def __init__(self, findings: list[Finding] | Finding, source: str | None = None):
        self.findings = [findings] if isinstance(findings, Finding) else list(findings)
        self.source = source
        first = self.findings[0] if self.findings else None
        super().__init__(first.describe(source) if first else (source or "translation failed"))
