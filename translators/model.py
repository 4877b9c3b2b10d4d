"""What the envelope readers hand to the message mappers and to the acknowledgment builders.

Segments are plain lists, the fastest form Python has:

- X12: ``["PO1", "1", "16", "CA", "12.34", "", "BP", "A-1"]`` — index *n* is element *n*;
  composites stay joined with ``delimiters.component`` (split them with :func:`components`).
- EDIFACT: ``["NAD", "BY", ["792820524", "", "16"], "", "CUMMINS"]`` — an element with
  components is a list of strings, a simple element a string; release characters are
  already resolved.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass, field

from translators.findings import Finding

Segment = list[Any]


@dataclass(frozen=True, slots=True)
class Delimiters:
    element: str
    component: str
    segment: str
    repetition: str | None = None
    release: str | None = None  # EDIFACT only
    decimal: str = "."  # EDIFACT UNA decimal mark


@dataclass(slots=True)
class InterchangeInfo:
    """The interchange header (ISA or UNB) and what was learnt reading it."""

    standard: str  # "x12" | "edifact"
    delimiters: Delimiters
    sender_id: str | None = None
    sender_qualifier: str | None = None
    receiver_id: str | None = None
    receiver_qualifier: str | None = None
    control_number: str | None = None
    version: str | None = None  # ISA12, or the EDIFACT syntax version number (S001 0002)
    syntax_identifier: str | None = None  # EDIFACT S001 0001, e.g. UNOC
    date: str | None = None  # ISO date
    time: str | None = None  # HH:MM
    test: bool = False
    ack_requested: bool = False  # ISA14 = 1 / UNB 0031 = 1
    segment_index: int = 0  # file position of ISA / UNB (1-based)
    header: Segment = field(default_factory=list)
    charset: str | None = None
    # No ISA / UNB was sent (a bare ST..SE or UNH..UNT, or a GS..GE alone): these values come
    # from the caller's source hint or the partner's mapping file, not from the file.
    bare: bool = False


@dataclass(slots=True)
class GroupInfo:
    """A functional group header (GS or UNG)."""

    functional_id: str | None = None  # GS01 / UNG 0038
    sender_id: str | None = None  # GS02
    receiver_id: str | None = None  # GS03
    control_number: str | None = None  # GS06 / UNG 0048
    version: str | None = None  # GS08 / UNG S008
    date: str | None = None
    segment_index: int = 0
    header: Segment = field(default_factory=list)


@dataclass(slots=True)
class TransactionSet:
    """One transaction set (ST..SE) or message (UNH..UNT), with the envelopes around it."""

    standard: str
    type: str  # "850", "810", "ORDERS", "INVOIC", ...
    control_number: str | None
    version: str | None  # "004010", "D96A", ...
    segments: list[Segment]  # from ST/UNH through SE/UNT inclusive (trailer may be missing)
    first_segment_index: int  # file position (1-based) of ST / UNH
    interchange: InterchangeInfo
    group: GroupInfo | None
    association: str | None = None  # EDIFACT association assigned code (EAN008) / X12 GS08 suffix
    findings: list[Finding] = field(default_factory=list)  # envelope findings for this set

    @property
    def delimiters(self) -> Delimiters:
        return self.interchange.delimiters

    def to_edi(self) -> str:
        """The set's segments written back as EDI text, one segment per line."""
        return "\n".join(render_segment(s, self.standard, self.delimiters) for s in self.segments) + "\n"


@dataclass(slots=True)
class SetSummary:
    """What an acknowledgment needs to know of one transaction set, after translation."""

    type: str
    control_number: str | None
    findings: list[Finding]
    implementation_reference: str | None = None  # ST03 (999 IK503 / AK2 03)
    version: str | None = None  # "004010", "D96A": CONTRL UCM reports the message's version
    association: str | None = None  # EDIFACT association assigned code, e.g. EAN008


@dataclass(slots=True)
class GroupSummary:
    info: GroupInfo
    sets: list[SetSummary] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    trailer_count: str | None = None


@dataclass(slots=True)
class InterchangeSummary:
    """An interchange's envelope after reading: groups, sets and envelope findings."""

    info: InterchangeInfo
    groups: list[GroupSummary] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # EDIFACT messages sent without UNG groups hang here.
    sets: list[SetSummary] = field(default_factory=list)
    complete: bool = True  # trailer (IEA/UNZ) seen

    def all_sets(self) -> list[SetSummary]:
        return self.sets + [s for g in self.groups for s in g.sets]


def components(value: str, delimiters: Delimiters) -> list[str]:
    """Split an X12 composite element into its components."""
    return value.split(delimiters.component)


def element(segment: Segment, n: int) -> str:
    """Element *n* of a segment as text ('' when absent); the first component of a composite."""
    if n >= len(segment):
        return ""
    v = segment[n]
    return str(v[0]) if isinstance(v, list) else str(v)


def component(segment: Segment, n: int, c: int) -> str:
    """Component *c* (1-based) of EDIFACT element *n* ('' when absent)."""
    if n >= len(segment):
        return ""
    v = segment[n]
    if isinstance(v, list):
        return v[c - 1] if c <= len(v) else ""
    return v if c == 1 else ""


def render_segment(segment: Segment, standard: str, d: Delimiters) -> str:
    """Write one segment back as EDI text (escaping EDIFACT service characters)."""
    if standard == "x12":
        return d.element.join(e if isinstance(e, str) else d.component.join(e) for e in segment) + d.segment
    table = _release_table(d)
    out: list[str] = []
    for el in segment:
        if isinstance(el, list):
            out.append(d.component.join([p.translate(table) for p in el]) if table else d.component.join(el))
        else:
            out.append(el.translate(table) if table else el)
    return d.element.join(out) + d.segment


_RELEASE_TABLES: dict[tuple[str | None, ...], dict[int, str]] = {}


def _release_table(d: Delimiters) -> dict[int, str]:
    """``str.translate`` table putting the release character before each service character (the
    release character itself doubled; a space separator is never escaped). Empty: no release character."""
    key = (d.release, d.element, d.component, d.segment, d.repetition)
    table = _RELEASE_TABLES.get(key)
    if table is None:
        table = {}
        if d.release:
            for ch in (d.element, d.component, d.segment, d.repetition):
                if ch and ch != " ":
                    table[ord(ch)] = d.release + ch
            table[ord(d.release)] = d.release + d.release
        _RELEASE_TABLES[key] = table
    return table
