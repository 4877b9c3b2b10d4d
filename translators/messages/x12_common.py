"""What the X12 message mappers (850, 810) share.

:class:`X12Mapper` walks a transaction set once, dispatching on the segment tag through a
plain dict of handlers, and builds the canonical dict directly (no pydantic, no regex per
segment). It keeps just enough loop state to know where a segment belongs:

- ``party`` — the N1 loop being read (N2/N3/N4/REF/PER after an N1 belong to it);
- ``line`` — the PO1 / IT1 loop being read (DTM, AMT, PID, SCH, SAC ... belong to the line);
- ``summary`` — after CTT (850) or TDS (810): AMT, SAC, TXI are document totals.

The message modules subclass it with their own header segment (BEG / BIG), line tag and
summary handling; everything generic (parties, references, dates, items, charges, terms,
syntax notes, findings) is here.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from translators.canonical import LINE_FIELDS, new_document
from translators.findings import Finding, Severity, finding
from translators.mapping import STANDARD, MessageMapping
from translators.codelists import X12_DT_8_FROM, digits, is_currency, is_unit, x12_number_limit
from translators.messages.common import MAX_NUMBER_LENGTH, ValueProblem, decimal_text, x12_date
from translators.model import InterchangeInfo, TransactionSet

ERROR: Final = Severity.ERROR
WARNING: Final = Severity.WARNING

# X12 353 (transaction set purpose code) → canonical purpose; other codes pass through raw.
PURPOSES: Final = {
    "00": "original",
    "01": "cancel",
    "02": "add",
    "03": "delete",
    "04": "change",
    "05": "replace",
    "06": "confirmation",
    "07": "duplicate",
    "08": "status",
    "13": "request",
    "15": "resubmission",
    "16": "proposal",
    "17": "cancel_reissue",
    "18": "reissue",
    "19": "seller_change",
    "22": "information_copy",
}

# REF01 qualifiers inside an N1 loop that carry the party's tax identifier, best first:
# TJ federal taxpayer id, EI employer id, VX VAT registration number, GT GST registration.
TAX_REF_QUALIFIERS: Final = {"TJ": 0, "EI": 1, "VX": 2, "GT": 3}
# N103 identification qualifiers whose N104 is itself a tax id: 24 EIN, FI federal taxpayer id, 34 SSN.
TAX_ID_QUALIFIERS: Final = frozenset({"24", "FI", "34"})
# Segments that may follow N1 inside its loop (header or line); anything else ends the loop.
N1_LOOP: Final = frozenset({"N1", "N2", "N3", "N4", "NX2", "REF", "PER", "SI", "FOB", "TD1", "TD3", "TD4", "TD5",
                     "PKG", "DMG", "QTY", "DTM", "SCH", "YNQ"})
# AMT01 qualifiers that give a line's amount inside a PO1 / IT1 loop.
LINE_AMOUNT_QUALIFIERS: Final = frozenset({"1", "LI", "GV"})
# SAC01: A allowance (negative), C charge; N (no allowance or charge) and requests are not charges.
CHARGE_SIGN: Final = {"A": "-", "C": ""}

# Element names for messages a person can read.
ELEMENT_NAMES: Final = {
    ("BEG", 1): "transaction set purpose code",
    ("BEG", 2): "purchase order type code",
    ("BEG", 3): "purchase order number",
    ("BEG", 5): "purchase order date",
    ("BIG", 1): "invoice date",
    ("BIG", 2): "invoice number",
    ("BIG", 3): "purchase order date",
    ("PO1", 2): "quantity ordered",
    ("PO1", 3): "unit of measure",
    ("PO1", 4): "unit price",
    ("PO1", 5): "basis of unit price code",
    ("IT1", 2): "quantity invoiced",
    ("IT1", 3): "unit of measure",
    ("IT1", 4): "unit price",
    ("IT1", 5): "basis of unit price code",
    ("N1", 1): "entity identifier code",
    ("N1", 2): "name",
    ("N1", 3): "identification code qualifier",
    ("N1", 4): "identification code",
    ("N3", 1): "address line",
    ("REF", 1): "reference qualifier",
    ("REF", 2): "reference identification",
    ("REF", 3): "description",
    ("N9", 1): "reference qualifier",
    ("N9", 2): "reference identification",
    ("N9", 3): "free-form description",
    ("DTM", 1): "date/time qualifier",
    ("DTM", 2): "date",
    ("DTM", 3): "time",
    ("DTM", 5): "date time period format qualifier",
    ("DTM", 6): "date time period",
    ("CUR", 1): "entity identifier code",
    ("CUR", 2): "currency code",
    ("AMT", 1): "amount qualifier",
    ("AMT", 2): "amount",
    ("TDS", 1): "total invoice amount",
    ("CTT", 1): "number of line items",
    ("PID", 1): "item description type",
    ("PID", 4): "product description code",
    ("PID", 5): "description",
    ("PID", 3): "agency qualifier code",
    ("SAC", 1): "allowance or charge indicator",
    ("SAC", 2): "service, promotion, allowance or charge code",
    ("SAC", 3): "agency qualifier code",
    ("SAC", 4): "agency service, promotion, allowance or charge code",
    ("SAC", 5): "amount",
    ("SAC", 6): "percent qualifier",
    ("SAC", 7): "percent",
    ("TXI", 1): "tax type code",
    ("TXI", 2): "tax amount",
    ("TXI", 3): "percent",
    ("TXI", 4): "tax jurisdiction code qualifier",
    ("TXI", 5): "tax jurisdiction code",
    ("TXI", 6): "tax exempt code",
    ("ITD", 4): "terms discount due date",
    ("ITD", 6): "terms net due date",
    ("SCH", 1): "quantity",
    ("SCH", 2): "unit of measure",
    ("SCH", 5): "date/time qualifier",
    ("SCH", 6): "date",
    ("SCH", 9): "date",
    ("PER", 3): "communication number qualifier",
    ("PER", 4): "communication number",
    ("PER", 5): "communication number qualifier",
    ("PER", 6): "communication number",
    ("PER", 7): "communication number qualifier",
    ("PER", 8): "communication number",
}

# Per-segment checks: (mandatory elements, syntax notes). Syntax notes as in the X12 standard:
# P paired (all or none), R required (at least one), C conditional (if the first, then the rest),
# E exclusion (at most one). Mandatory elements missing are errors; syntax notes are warnings.
CHECKS: Final[dict[str, tuple[tuple[int, ...], tuple[tuple[str, tuple[int, ...]], ...]]]] = {
    "BEG": ((1, 2, 3, 5), ()),
    "BIG": ((1, 2), ()),
    "N1": ((1,), (("R", (2, 3)), ("P", (3, 4)))),
    "N3": ((1,), ()),
    "REF": ((1,), (("R", (2, 3)),)),
    "N9": ((1,), (("R", (2, 3)),)),
    "DTM": ((1,), ()),  # its syntax notes depend on the version: checked in the handler
    "CUR": ((1, 2), ()),
    "AMT": ((1, 2), ()),
    "TDS": ((1,), ()),
    "CTT": ((1,), ()),
    "PID": ((1,), (("C", (4, 3)), ("R", (4, 5)))),
    "SAC": ((1,), (("R", (2, 3)), ("P", (3, 4)), ("P", (6, 7)))),
    "TXI": ((1,), (("R", (2, 3, 6)), ("P", (4, 5)))),
    "PER": ((1,), (("P", (3, 4)), ("P", (5, 6)), ("P", (7, 8)))),
    "PO1": ((), (("C", (3, 2)), ("C", (5, 4)))),
    "IT1": ((), (("C", (5, 4)),)),  # IT102/03/04: checked by the 810 mapper
}
# 004010 and later; older versions number some of these elements differently.
CHECKS_4010: Final = {
    **CHECKS,
    "PO4": ((), (("P", (2, 3)), ("C", (5, 6)), ("P", (6, 7)), ("P", (8, 9)))),
}


Spec = tuple[tuple[int, ...], tuple[tuple[str, tuple[int, ...]], ...]]


def _has(seg: list[str], n: int, k: int) -> bool:
    return k < n and seg[k] != ""


def passes(seg: list[str], spec: Spec) -> bool:
    """Whether a segment passes its checks (the fast test every segment takes; only a failing
    one goes through :meth:`X12Mapper._check`, which explains)."""
    mandatory, notes = spec
    n = len(seg)
    for k in mandatory:
        if k >= n or not seg[k].strip():
            return False
    for kind, els in notes:
        if kind == "C":
            if _has(seg, n, els[0]):
                for k in els[1:]:
                    if not _has(seg, n, k):
                        return False
            continue
        count = 0
        for k in els:
            if _has(seg, n, k):
                count += 1
        if kind == "P":
            if count and count != len(els):
                return False
        elif kind == "R":
            if not count:
                return False
        elif kind == "E":
            if count > 1:
                return False
    return True


def text(seg: list[str], n: int) -> str | None:
    """Element *n* stripped, or None when absent or empty."""
    if n < len(seg):
        v = seg[n].strip()
        return v or None
    return None


def raw(seg: list[str], n: int) -> str:
    """Element *n* stripped ('' when absent)."""
    return seg[n].strip() if n < len(seg) else ""


def purpose_name(code: str | None) -> str | None:
    if not code:
        return None
    return PURPOSES.get(code, code)


def unknown_purpose(code: str | None) -> bool:
    """A purpose code (353) the gateway does not name: kept raw, with a warning."""
    return bool(code) and code not in PURPOSES


def _is_zero(v: str) -> bool:
    return not v.lstrip("-").replace(".", "").strip("0")


def _plain_number(v: str) -> str:
    """'1.000' → '1', '010' → '10' (for terms text); anything odd stays as sent."""
    try:
        plain = decimal_text(v)  # bounded: no exponent, at most MAX_NUMBER_LENGTH characters
    except ValueProblem:
        return v
    return format(Decimal(plain).normalize(), "f") if plain is not None else v


def _ranks(codes: list[str]) -> dict[str, int]:
    """Code → its rank in a preference list (the first mention counts)."""
    out: dict[str, int] = {}
    for rank, code in enumerate(codes):
        out.setdefault(code, rank)
    return out


class Plan:
    """A partner mapping compiled into the lookups the mappers use per segment."""

    def __init__(self, mapping: Any):
        self.mapping = mapping
        pn = mapping.part_numbers
        parts: dict[str, tuple[str, int]] = {}
        lists = (("buyer", "buyer_part", pn.buyer), ("supplier", "supplier_part", pn.supplier), ("gtin", "gtin", pn.gtin))
        # Lists the partner file sets claim their qualifiers first, so a partner that sends its
        # supplier part under BP gets exactly that even though BP is a buyer code by default.
        explicit = pn.model_fields_set
        for _, field, quals in sorted(lists, key=lambda x: x[0] not in explicit):
            for rank, q in enumerate(quals):
                parts.setdefault(q, (field, rank))
        self.parts: dict[str, tuple[str, int]] = parts
        tr = mapping.translations
        self.uom: dict[str, str] = dict(tr.uom)
        self.currency: dict[str, str] = dict(tr.currency)
        self.party_q: dict[str, str] = dict(tr.party_qualifier)
        self.refs: frozenset[str] | None = frozenset(mapping.references) if mapping.references is not None else None
        # Each role: qualifiers in order of preference; the supplier falls back to remit-to.
        self.roles: tuple[tuple[str, tuple[str, ...]], ...] = (
            ("buyer", tuple(mapping.buyer_party)),
            ("supplier", tuple(mapping.supplier_party) + tuple(mapping.remit_to_party)),
            ("ship_to", tuple(mapping.ship_to_party)),
            ("bill_to", tuple(mapping.bill_to_party)),
            ("remit_to", tuple(mapping.remit_to_party)),
        )
        # The same, by qualifier: the roles it can fill, each with its rank there (its first place
        # in that role's list): one look-up per party sent instead of one per qualifier listed.
        role_ranks: dict[str, list[tuple[int, int]]] = {}
        for slot, (_, quals) in enumerate(self.roles):
            for rank, q in enumerate(quals):
                places = role_ranks.setdefault(q, [])
                if all(s != slot for s, _ in places):
                    places.append((slot, rank))
        self.role_ranks: dict[str, list[tuple[int, int]]] = role_ranks
        d = mapping.dates
        self.req: dict[str, int] = _ranks(d.requested_delivery)
        self.dates: dict[str, dict[str, int]] = {
            "requested_delivery": self.req,
            "po_date": _ranks(d.po_date),
            "invoice_date": _ranks(d.invoice_date),
            "due_date": _ranks(d.due_date),
        }


_PLANS: Final[dict[int, Plan]] = {}


def plan_for(mapping: MessageMapping | None) -> Plan:
    """The compiled plan of a mapping (memoised: mappings are frozen); None is the standard mapping."""
    if mapping is None:
        mapping = STANDARD
    p = _PLANS.get(id(mapping))
    if p is not None and p.mapping is mapping:
        return p
    if len(_PLANS) > 256:
        _PLANS.clear()
    p = _PLANS[id(mapping)] = Plan(mapping)
    return p


def _new_party(name: str | None, id_: str | None, qualifier: str | None) -> dict[str, Any]:
    return {"name": name, "id": id_, "id_qualifier": qualifier, "tax_id": None, "address": None}


def _address(party: dict[str, Any]) -> dict[str, Any]:
    a: dict[str, Any] | None = party["address"]
    if a is None:
        a = {"lines": [], "city": None, "region": None, "postal_code": None, "country": None}
        party["address"] = a
    return a


# What the walk does with a segment, by tag: IGNORE a known segment the canonical does not use;
# the others name a handler (message-specific ones from HEADER on).
IGNORE: Final = 0
N1: Final = 1
N3: Final = 2
N4: Final = 3
REF: Final = 4
CUR: Final = 5
DTM: Final = 6
PID: Final = 7
AMT: Final = 8
SAC: Final = 9
TXI: Final = 10
ITD: Final = 11
LIN: Final = 12
SCH: Final = 13
HEADER: Final = 20
LINE: Final = 21
CTT: Final = 22
TDS: Final = 23


_EMPTY_LINE: Final[dict[str, Any]] = dict.fromkeys(LINE_FIELDS)


class Checks:
    """A segment's checks: its mandatory elements and syntax notes (see CHECKS)."""

    def __init__(self, spec: Spec):
        self.spec = spec


# Tag → (handler code, checks or None).
Entry = tuple[int, "Checks | None"]
Table = dict[str, Entry]


def tables(codes: dict[str, int]) -> tuple[Table, Table]:
    """Tag → (handler code, checks), one lookup per segment: a message module makes its pair
    once, with the checks before 004010 and from 004010 on."""
    out = []
    for checks in (CHECKS, CHECKS_4010):
        packed = {tag: Checks(spec) for tag, spec in checks.items()}
        out.append({tag: (code, packed.get(tag)) for tag, code in codes.items()})
    return out[0], out[1]


class X12Mapper:
    """One pass over an X12 transaction set into a canonical dict plus findings.

    A subclass names its kind, its line segment (PO1 / IT1), the header dates it fills, and its
    tables of segment tags → handler codes (:func:`tables` of :func:`base_codes` and its own);
    :meth:`special` handles the codes from ``HEADER`` on.
    """

    def __init__(self, ts: TransactionSet, mapping: MessageMapping | None, kind: str, line_tag: str,
                 header_dates: tuple[str, ...], tables: tuple[Table, Table]):
        self.kind = kind
        self.line_tag = line_tag
        self.header_dates = header_dates
        self.ts = ts
        # The set's attributes read once each (a Python object's attribute costs a lookup).
        segs: list[list[str]] = ts.segments
        ich = ts.interchange
        group = ts.group
        self.segs = segs
        self.ich: InterchangeInfo | None = ich
        self.plan = plan_for(mapping)
        self.first: int = ts.first_segment_index
        self.doc: dict[str, Any] = new_document(kind, "x12")
        self.findings: list[Finding] = []
        self._controls: tuple[str | None, str | None, str | None] = (
            ich.control_number if ich else None,
            group.control_number if group else None,
            ts.control_number,
        )
        self.party: dict[str, Any] | None = None  # the N1 loop being read
        self.party_tax_rank = 99
        self.parties: list[tuple[str, dict[str, Any]]] = []  # header N1 parties: (qualifier, party)
        self.line: dict[str, Any] | None = None
        self.line_date_rank = 1 << 30
        self.line_desc08 = False
        self.line_parts: dict[str, int] = {}  # the rank of the qualifier each part number came from
        self.line_seg: list[str] = []  # the PO1 / IT1 of the line loop
        self.summary = False
        self.header_seen = -1  # index of BEG / BIG
        self.line_seen = -1  # index of the first PO1 / IT1
        self.ctt: list[str] | None = None  # the CTT segment (its counts are checked at the end)
        self.ctt_at = -1
        self.hdr_dates: dict[str, tuple[int, str]] = {}
        self.amounts: dict[str, str] = {}  # header and summary AMT: qualifier → amount
        self.summary_amounts: dict[str, str] = {}
        self.line_charges: list[dict[str, Any]] = []
        self.doc_charges: list[dict[str, Any]] = []
        self.terms: list[str] = []
        self.itd_due: str | None = None
        self.tax_summary: Decimal | None = None
        self.tax_lines: Decimal | None = None
        self.line_tt: str | None = None  # AMT*TT seen inside a line loop
        # Version: GS08 (its first 6 characters) when it is a plain X12 version, else ST03.
        st: list[str] = segs[0] if segs and segs[0][0] == "ST" else []
        gs08 = (group.version or "").strip() if group else ""
        st03 = raw(st, 3)
        version: str | None
        if gs08.startswith("00"):
            version = gs08[:6]
        elif st03:
            version = st03[:6] if st03.startswith("00") else st03
        else:
            version = ts.version or gs08 or None
        self.version = version
        # Before 004010 DTM05 is the century and the period format/value are DTM06/DTM07.
        self.old_dtm = bool(version) and version is not None and version[:6].isdecimal() and version[:6] < "004010"
        self.table = tables[0] if self.old_dtm else tables[1]
        self.lines_out: list[dict[str, Any]] = self.doc["lines"]

    # -- findings ----------------------------------------------------------------------------
    def add(self, code: str, message: str, i: int, element: int | None = None, severity: Severity = ERROR,
            value: str | None = None, tag: str | None = None, component: int | None = None,
            check: str | None = None) -> None:
        segs = self.segs
        if tag is None:
            tag = segs[i][0] if 0 <= i < len(segs) else None
        ich, grp, msg = self._controls
        self.findings.append(
            finding(
                code,
                message,
                severity=severity,
                segment_tag=tag,
                segment_index=self.first + i,
                set_position=i + 1,
                element_index=element,
                component_index=component,
                value=value,
                interchange_control=ich,
                group_control=grp,
                message_control=msg,
                extra={"check": check} if check is not None else {},
            )
        )

    def _name(self, tag: str, n: int) -> str:
        name = ELEMENT_NAMES.get((tag, n))
        return f"{tag}{n:02d} ({name})" if name else f"{tag}{n:02d}"

    def _problem(self, p: ValueProblem, seg: list[str], i: int, n: int) -> None:
        self.add(p.code, f"{self._name(seg[0], n)}: {p}", i, n, value=raw(seg, n))

    # -- value conversions -------------------------------------------------------------------
    def num(self, seg: list[str], i: int, n: int, implied: int = 0) -> str | None:
        """Element *n* as a canonical decimal string (``implied`` decimals for Nn); a finding
        and None when it is not a number."""
        if n >= len(seg):
            return None
        v = seg[n]
        if not v:
            return None
        if len(v) > 6:
            limit = x12_number_limit(seg[0], n)
            if limit is not None and digits(v) > limit:
                self.add("element.too_long", f"{self._name(seg[0], n)} has {digits(v)} digits: at most {limit}",
                         i, n, value=v.strip()[:40])
                return None
        # Fast paths for the common shapes; anything else goes through decimal_text.
        if v.isdecimal() and v.isascii() and len(v) <= MAX_NUMBER_LENGTH:
            if implied:
                q, r = divmod(int(v), 10**implied)
                return f"{q}.{r:0{implied}d}"
            return v.lstrip("0") or "0"
        if not implied:
            a, dot, b = v.partition(".")
            if dot and b.isdecimal() and b.isascii() and (not a or (a.isdecimal() and a.isascii())):
                if a and a[0] != "0":
                    return v  # already canonical: "12.34"
                return (a.lstrip("0") or "0") + "." + b
        try:
            return decimal_text(v, implied)
        except ValueProblem as p:
            self._problem(p, seg, i, n)
            return None

    def date(self, seg: list[str], i: int, n: int, century: str = "") -> str | None:
        if n >= len(seg):
            return None
        v = seg[n].strip()
        if not v:
            return None
        if century and len(v) == 6 and v.isdecimal():
            v = century + v
        elif v.isdecimal() and len(v) in (6, 8) and self.version and self.version[:6].isdecimal():
            # DT is CCYYMMDD from 004010 on: a 6-digit date there is refused (its century is a
            # guess). Before 004010 DT is YYMMDD, but CCYYMMDD was widely sent for the year 2000:
            # read, with a warning.
            if self.version[:6] >= X12_DT_8_FROM and len(v) == 6:
                self.add("element.invalid_date",
                         f"{self._name(seg[0], n)} {v!r} is not a CCYYMMDD date, as {self.version[:6]} writes dates",
                         i, n, value=v)
                return None
            if self.version[:6] < X12_DT_8_FROM and len(v) == 8:
                self.add("element.invalid_date",
                         f"{self._name(seg[0], n)} {v!r} has 8 digits where {self.version[:6]} writes YYMMDD; "
                         "read as CCYYMMDD", i, n, severity=WARNING, value=v)
        try:
            return x12_date(v)
        except ValueProblem as p:
            self._problem(p, seg, i, n)
            return None

    # -- the walk ----------------------------------------------------------------------------
    def run(self) -> tuple[dict[str, Any], list[Finding]]:
        table = self.table
        n1_loop = N1_LOOP
        segs = self.segs
        for i in range(len(segs)):
            seg = segs[i]
            tag = seg[0]
            entry = table.get(tag)
            if entry is None:
                self._unrecognized(seg, i)
                continue
            code, checks = entry
            if self.party is not None and tag not in n1_loop:
                self.party = None
            # The common segments first: one line item is a PO1 / IT1 and a PID or two. They
            # check themselves.
            if code == LINE:
                self.line_item(seg, i, checks)
                continue
            if code == PID:
                self._pid(seg, i, checks)
                continue
            self._checked(seg, i, checks)
            if code == IGNORE:
                continue
            if code == N1:
                self._n1(seg, i)
            elif code == N3:
                self._n3(seg, i)
            elif code == N4:
                self._n4(seg, i)
            elif code == REF:
                self._ref(seg, i)
            elif code == DTM:
                self._dtm(seg, i)
            elif code == AMT:
                self._amt(seg, i)
            elif code == CUR:
                self._cur(seg, i)
            elif code == SAC:
                self._sac(seg, i)
            elif code == TXI:
                self._txi(seg, i)
            elif code == ITD:
                self._itd(seg, i)
            elif code == LIN:
                self._lin(seg, i)
            elif code == SCH:
                self._sch(seg, i)
            else:
                self.special(code, seg, i)
        self.finish()
        return self.doc, self.findings

    def line_item(self, seg: list[str], i: int, checks: Checks | None) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def special(self, code: int, seg: list[str], i: int) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _unrecognized(self, seg: list[str], i: int) -> None:
        tag = seg[0]
        shown = tag if len(tag) <= 10 else tag[:10] + "…"
        self.add("segment.unrecognized",
                 f"Segment {shown!r} does not belong to an X12 {self.ts.type or self.line_tag} and was ignored",
                 i, severity=WARNING)

    def _checked(self, seg: list[str], i: int, checks: Checks | None) -> None:
        """A segment's syntax checks (None for none): findings when it fails them."""
        if checks is not None and not passes(seg, checks.spec):
            self._check(seg, i, checks.spec)

    def _check(self, seg: list[str], i: int, spec: Spec) -> None:
        """The explaining check of a segment that failed its fast predicate."""
        mandatory, notes = spec
        n = len(seg)
        tag = seg[0]
        for k in mandatory:
            if k >= n or not seg[k].strip():
                self.add("element.mandatory_missing", f"{self._name(tag, k)} is mandatory and missing", i, k)
        flagged: set[int] = set()  # one finding per element, however many notes it breaks

        def missing(k: int, why: str, code: str = "element.conditional_missing") -> None:
            if k not in flagged:
                flagged.add(k)
                self.add(code, why, i, k, severity=WARNING)

        for kind, els in notes:
            present = [k < n and bool(seg[k].strip()) for k in els]
            if kind == "P":
                if any(present) and not all(present):
                    given = ", ".join(f"{tag}{k:02d}" for k, p in zip(els, present) if p)
                    for k, p in zip(els, present):
                        if not p:
                            missing(k, f"{self._name(tag, k)} is missing: it is required when {given} is present")
            elif kind == "R":
                if not any(present):
                    names = " or ".join(f"{tag}{k:02d}" for k in els)
                    missing(els[0], f"At least one of {names} is required")
            elif kind == "C":
                if present[0]:
                    for k, p in zip(els[1:], present[1:]):
                        if not p:
                            missing(k, f"{self._name(tag, k)} is missing: "
                                       f"it is required when {tag}{els[0]:02d} is present")
            elif kind == "E":
                if sum(present) > 1:
                    second = [k for k, p in zip(els, present) if p][1]
                    names = ", ".join(f"{tag}{k:02d}" for k in els)
                    missing(second, f"Only one of {names} may be present", "element.exclusion_violated")

    # -- generic handlers --------------------------------------------------------------------
    def _n1(self, seg: list[str], i: int) -> None:
        q = raw(seg, 1)
        q = self.plan.party_q.get(q, q)
        id_q = text(seg, 3)
        id_ = text(seg, 4)
        p = _new_party(text(seg, 2), id_, id_q)
        self.party_tax_rank = 99
        if id_q in TAX_ID_QUALIFIERS and id_:
            p["tax_id"] = id_
            self.party_tax_rank = 50
        self.party = p
        if self.line is None and not self.summary:
            self.parties.append((q, p))

    def _n3(self, seg: list[str], i: int) -> None:
        p = self.party
        if p is None:
            return
        lines = _address(p)["lines"]
        for n in (1, 2):
            v = text(seg, n)
            if v:
                lines.append(v)

    def _n4(self, seg: list[str], i: int) -> None:
        p = self.party
        if p is None:
            return
        a = _address(p)
        a["city"] = text(seg, 1)
        a["region"] = text(seg, 2)
        a["postal_code"] = text(seg, 3)
        a["country"] = text(seg, 4)

    def _ref(self, seg: list[str], i: int) -> None:
        q = raw(seg, 1)
        v = text(seg, 2) or text(seg, 3)
        if not q or not v:
            return
        p = self.party
        if p is not None:
            rank = TAX_REF_QUALIFIERS.get(q)
            if rank is not None and rank < self.party_tax_rank:
                p["tax_id"] = v
                self.party_tax_rank = rank
            return
        if self.line is not None:
            if q == "PO" and self.line["po_number"] is None:
                self.line["po_number"] = v  # the order this line belongs to (invoices of several orders)
            return  # other line-level references are not part of the canonical line
        keep = self.plan.refs
        if keep is not None and q not in keep:
            return
        refs = self.doc["references"]
        if q not in refs:
            refs[q] = v

    def _cur(self, seg: list[str], i: int) -> None:
        if self.line is not None or self.doc["currency"] is not None:
            return
        c = text(seg, 2)
        if c:
            code = self.doc["currency"] = self.plan.currency.get(c, c)
            if not is_currency(code):
                self.add("element.invalid_code", f"CUR02 {c!r} is not an ISO 4217 currency code; kept as sent", i, 2,
                         severity=WARNING, value=c[:40])

    def _dtm_value(self, seg: list[str], i: int) -> str | None:
        fn, pn = (6, 7) if self.old_dtm else (5, 6)
        v = raw(seg, 2)
        fmt = raw(seg, fn)
        period = raw(seg, pn)
        if bool(fmt) != bool(period) and not (fn == 5 and len(fmt) == 2 and fmt.isdecimal()):
            k = pn if fmt else fn
            self.add("element.conditional_missing",
                     f"{self._name('DTM', k)} is missing: DTM{fn:02d} and DTM{pn:02d} go in pairs", i, k,
                     severity=WARNING)
        if v:
            # 3010-3050: DTM05 is the century when DTM02 is YYMMDD (some 4010 senders do it too).
            century = raw(seg, 5)
            return self.date(seg, i, 2, century if len(century) == 2 and century.isdecimal() else "")
        if period and fmt in ("D8", "RD8", "DT", "RDT", "D6", "RD6", "DTS", "RD8T"):
            head = period[:6] if fmt in ("D6", "RD6") else period[:8]
            try:
                return x12_date(head)
            except ValueProblem as p:
                self._problem(p, seg, i, pn)
        elif not period and not raw(seg, 3):
            self.add("element.conditional_missing",
                     f"DTM has no date: at least one of DTM02, DTM03 or DTM{fn:02d} is required", i, 2,
                     severity=WARNING)
        return None

    def _dtm(self, seg: list[str], i: int) -> None:
        iso = self._dtm_value(seg, i)
        if iso is None:
            return
        q = raw(seg, 1)
        if self.line is not None:
            rank = self.plan.req.get(q)
            if rank is not None and rank < self.line_date_rank:
                self.line["requested_delivery"] = iso
                self.line_date_rank = rank
            return
        if self.summary:
            return
        dates = self.plan.dates
        best = self.hdr_dates
        for field in self.header_dates:
            rank = dates[field].get(q)
            if rank is not None:
                cur = best.get(field)
                if cur is None or rank < cur[0]:
                    best[field] = (rank, iso)

    def _sch(self, seg: list[str], i: int) -> None:
        line = self.line
        if line is None:
            return
        self.num(seg, i, 1)
        req = self.plan.req
        offset = 1 << 20  # a line DTM beats a schedule date
        for qn, dn in ((5, 6), (8, 9)):
            q = raw(seg, qn)
            rank = req.get(q) if q else None
            iso = self.date(seg, i, dn)
            if rank is not None and iso and rank + offset < self.line_date_rank:
                line["requested_delivery"] = iso
                self.line_date_rank = rank + offset

    def _pid(self, seg: list[str], i: int, checks: Checks | None) -> None:
        self._checked(seg, i, checks)
        line = self.line
        if line is None:
            return
        d = text(seg, 5)
        if not d:
            return
        is08 = raw(seg, 2) == "08"
        if line["description"] is None or (is08 and not self.line_desc08):
            line["description"] = d
            self.line_desc08 = is08

    def _amt(self, seg: list[str], i: int) -> None:
        v = self.num(seg, i, 2)
        if v is None:
            return
        q = raw(seg, 1)
        if self.line is not None:
            if q in LINE_AMOUNT_QUALIFIERS and self.line["amount"] is None:
                self.line["amount"] = v
            elif q == "TT":
                self.line_tt = v
            return
        target = self.summary_amounts if self.summary else self.amounts
        if q not in target:
            target[q] = v

    def _sac(self, seg: list[str], i: int) -> None:
        amount = self.num(seg, i, 5, implied=2)
        sign = CHARGE_SIGN.get(raw(seg, 1))
        if sign is None:
            return
        if amount is not None and sign and not amount.startswith("-") and not _is_zero(amount):
            amount = sign + amount
        charge = {"code": text(seg, 2), "description": text(seg, 15), "amount": amount}
        (self.line_charges if self.line is not None else self.doc_charges).append(charge)

    def _txi(self, seg: list[str], i: int) -> None:
        v = self.num(seg, i, 2)
        if v is None:
            return
        d = Decimal(v)
        if self.line is not None:
            self.tax_lines = d if self.tax_lines is None else self.tax_lines + d
        else:
            self.tax_summary = d if self.tax_summary is None else self.tax_summary + d

    def _itd(self, seg: list[str], i: int) -> None:
        if self.line is not None:
            return
        disc_date = self.date(seg, i, 4)
        net_date = self.date(seg, i, 6)
        if net_date and self.itd_due is None:
            self.itd_due = net_date
        desc = text(seg, 12)
        if desc:
            self.terms.append(desc)
            return
        parts = []
        pct = text(seg, 3)
        if pct:
            t = f"{_plain_number(pct)}%"
            days = text(seg, 5)
            if days:
                t += f" {_plain_number(days)} days"
            elif disc_date:
                t += f" by {disc_date}"
            parts.append(t)
        net_days = text(seg, 7)
        if net_days:
            parts.append(f"net {_plain_number(net_days)}")
        elif net_date:
            parts.append(f"net due {net_date}")
        if parts:
            self.terms.append(", ".join(parts))

    def _lin(self, seg: list[str], i: int) -> None:
        """LIN inside a line loop: product ids the PO1 / IT1 did not carry (pairs 02/03, 04/05 ...)."""
        line = self.line
        if line is None:
            return
        self._parts(seg, i, 2, check=False)

    # -- lines -------------------------------------------------------------------------------
    def _parts(self, seg: list[str], i: int, start: int, check: bool = True) -> None:
        """Part numbers from the qualifier/value pairs from element ``start`` on."""
        plan_parts = self.plan.parts
        line = self.line
        if line is None:
            return
        best = self.line_parts
        n = len(seg)
        for k in range(start, min(n, start + 20), 2):
            q = seg[k]
            v = seg[k + 1] if k + 1 < n else ""
            if q and v:
                # The common case first: a known qualifier as sent, a value.
                hit = plan_parts.get(q)
                if hit is not None and not v.isspace():
                    field, rank = hit
                    cur = best.get(field)
                    if cur is None or rank < cur:
                        line[field] = v.strip()
                        best[field] = rank
                    continue
            if not q or not v or q.isspace() or v.isspace():
                if check and (q.strip() or v.strip()):
                    self._unpaired(seg, i, k)
                continue
            hit = plan_parts.get(q)
            if hit is None:
                hit = plan_parts.get(q.strip())
                if hit is None:
                    continue
            field, rank = hit
            cur = best.get(field)
            if cur is None or rank < cur:
                line[field] = v.strip()
                best[field] = rank

    def _unpaired(self, seg: list[str], i: int, k: int) -> None:
        tag = seg[0]
        q = seg[k].strip()
        missing, given = (k + 1, k) if q else (k, k + 1)
        what = "product id" if q else "its qualifier"
        self.add("element.conditional_missing",
                 f"{tag}{missing:02d} ({what}) is missing: {tag}{k:02d} and {tag}{k + 1:02d} go in pairs "
                 f"({tag}{given:02d} is {seg[given].strip()!r})",
                 i, missing, severity=WARNING)

    def _item(self, seg: list[str], i: int, checks: Checks | None) -> dict[str, Any]:
        """PO1 / IT1: a new line, after the segment's checks."""
        self.summary = False
        if self.line_seen < 0:
            self.line_seen = i
        plan = self.plan
        self._checked(seg, i, checks)
        n = len(seg)
        uom = seg[3].strip() if n > 3 else ""
        if uom:
            sent = uom
            uom = plan.uom.get(uom, uom)
            if not is_unit(uom, "x12"):
                wrong_length = len(uom) != 2
                self.add("element.too_long" if len(uom) > 2 else "element.too_short" if len(uom) < 2
                         else "element.invalid_code",
                         f"{self._name(seg[0], 3)} {sent!r} is not an X12 unit of measure code (355, 2 characters)",
                         i, 3, severity=ERROR if wrong_length else WARNING, value=sent[:40])
        line = _EMPTY_LINE.copy()  # cheaper than a dict display of ten keys
        if n > 1:
            line["line_number"] = seg[1].strip() or None
        if n > 2:
            line["quantity"] = self.num(seg, i, 2)
        if uom:
            line["uom"] = uom
        if n > 4:
            line["unit_price"] = self.num(seg, i, 4)
        self._open_line(line, seg, {})
        if n <= 6:
            if n == 6 and seg[5].strip() in plan.parts:
                self._shifted(seg, i)
            return line
        # Some senders leave out the empty basis-of-price element 05, so the pairs start at 05:
        # "PO1*1*10*EA*25.00*BP*SKU-A". Read them from there, and say so.
        if n % 2 == 1 and seg[5] and seg[5].strip() in plan.parts and seg[6].strip() \
                and seg[6].strip() not in plan.parts:
            self._shifted(seg, i)
            self._parts(seg, i, 5, check=False)
            return line
        self._parts(seg, i, 6)
        return line

    def _open_line(self, line: dict[str, Any], seg: list[str], ranks: dict[str, int]) -> None:
        """The line loop starts; ``ranks``: the rank of the qualifier each part number came from."""
        self.line = line
        self.line_seg = seg
        self.line_date_rank = 1 << 30
        self.line_desc08 = False
        self.line_parts = ranks
        self.lines_out.append(line)

    def _shifted(self, seg: list[str], i: int) -> None:
        q = seg[5].strip()
        self.add("element.invalid_code",
                 f"{seg[0]}05 holds the product id qualifier {q!r}: the qualifier/value pairs start one element "
                 f"early and were read from {seg[0]}05",
                 i, 5, severity=WARNING, value=q)

    # -- the end -----------------------------------------------------------------------------
    def finish_common(self) -> None:
        doc = self.doc
        ich = self.ich
        doc["sender_id"] = (ich.sender_id or "").strip() or None if ich else None
        doc["receiver_id"] = (ich.receiver_id or "").strip() or None if ich else None
        st = self.segs[0] if self.segs and self.segs[0][0] == "ST" else []
        ich_c, grp_c, msg_c = self._controls
        control: dict[str, Any] = doc["control"]  # new_document's, filled in place (same keys, same order)
        control["interchange"] = ich_c
        control["group"] = grp_c
        control["message"] = msg_c or text(st, 2)
        doc["version"] = self.version
        # Parties: each role takes the first party whose qualifier ranks best in its list.
        if self.parties:
            roles = self.plan.roles
            role_ranks = self.plan.role_ranks
            best: list[tuple[int, dict[str, Any]] | None] = [None] * len(roles)
            seen: set[str] = set()
            for q, p in self.parties:
                if q in seen:
                    continue  # the first party with a qualifier is the one its roles take
                seen.add(q)
                places = role_ranks.get(q)
                if places is None:
                    continue
                for slot, rank in places:
                    cur = best[slot]
                    if cur is None or rank < cur[0]:
                        best[slot] = (rank, p)
            parties: dict[str, Any] = doc["parties"]
            for slot, chosen in enumerate(best):
                if chosen is not None:
                    hit = chosen[1]
                    a: dict[str, Any] | None = hit["address"]
                    party = hit.copy()  # a copy per role, its address too (same keys, same order)
                    if a is not None:
                        address = a.copy()
                        address["lines"] = list(a["lines"])
                        party["address"] = address
                    parties[roles[slot][0]] = party

    def check_ctt(self) -> None:
        """CTT01 (number of line items) against the lines received, CTT02 (hash total) against the
        sum of their quantities: a truncated set must not pass for a whole one."""
        seg = self.ctt
        if seg is None:
            return
        i = self.ctt_at
        count = text(seg, 1)
        received = len(self.lines_out)
        if count is not None and count.isdecimal() and len(count) <= 6 and int(count) != received:
            self.add("segment.line_count_mismatch", f"CTT01 says {count} line items, {received} were received",
                     i, 1, value=count, check="line_count")
        stated = text(seg, 2)
        digits = stated.replace(".", "").lstrip("-+") if stated is not None else ""
        if not digits.isdecimal() or len(digits) > 15:
            return  # absent, or not a number (the element check reports it)
        # X12: a hash total sums the values' digits regardless of decimal points and signs, and
        # keeps only the rightmost digits when the sum outgrows the element.
        total = 0
        for line in self.lines_out:
            q = line["quantity"]
            if q is not None:
                total += int(q.replace(".", "").lstrip("-") or "0")
        if total % 10 ** 10 != int(digits) % 10 ** 10:  # CTT02 is R10
            self.add("segment.hash_total_mismatch",
                     f"CTT02 hash total {stated} differs from the sum of the line quantities' digits, {total}",
                     i, 2, value=stated, check="hash_total")

    def missing_segment(self, tag: str, what: str, i: int) -> None:
        """A mandatory segment absent; positioned where it was expected (segment ``i``).

        A warning, as in the EDIFACT mappers: the document is translated with what it has and
        acknowledged as accepted with errors. A partner whose documents must carry the field
        says so with ``required`` in its mapping file, which makes its absence an error.
        """
        i = max(0, min(i, len(self.segs) - 1))
        self.add("segment.mandatory_missing", f"The mandatory {tag} segment ({what}) is missing", i, tag=tag,
                 severity=WARNING)

    def index_of(self, *tags: str) -> int:
        """The first segment with one of these tags, else the last segment (SE): where a
        missing segment is reported."""
        for k, seg in enumerate(self.segs):
            if seg[0] in tags:
                return k
        return len(self.segs) - 1

    def finish(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError



def base_codes() -> dict[str, int]:
    """Handler codes every X12 mapper shares; IGNORE marks a known segment the canonical ignores."""
    return {
        "ST": IGNORE,
        "SE": IGNORE,
        "N1": N1,
        "N2": IGNORE,
        "N3": N3,
        "N4": N4,
        "NX2": IGNORE,
        "REF": REF,
        "N9": REF,
        "PER": IGNORE,
        "CUR": CUR,
        "DTM": DTM,
        "PID": PID,
        "AMT": AMT,
        "SAC": SAC,
        "TXI": TXI,
        "ITD": ITD,
        "MSG": IGNORE,
        "MTX": IGNORE,
        "NTE": IGNORE,
        "FOB": IGNORE,
        "MEA": IGNORE,
        "PWK": IGNORE,
        "PKG": IGNORE,
        "TD1": IGNORE,
        "TD3": IGNORE,
        "TD4": IGNORE,
        "TD5": IGNORE,
        "SI": IGNORE,
        "YNQ": IGNORE,
        "PAM": IGNORE,
        "LM": IGNORE,
        "LQ": IGNORE,
        "LIN": LIN,
        "CTP": IGNORE,
        "PO4": IGNORE,
        "SDQ": IGNORE,
        "QTY": IGNORE,
        "IT3": IGNORE,
        "IT8": IGNORE,
        "SLN": IGNORE,
        "TC2": IGNORE,
        "INC": IGNORE,
        "DIS": IGNORE,
        "TAX": IGNORE,
        "CSH": IGNORE,
        "MAN": IGNORE,
        "PCT": IGNORE,
        "SPI": IGNORE,
        "CB1": IGNORE,
        "G61": IGNORE,
        "DMG": IGNORE,
        "III": IGNORE,
        "CTB": IGNORE,
        "LDT": IGNORE,
        "LS": IGNORE,
        "LE": IGNORE,
        "SCH": SCH,
        "SR": IGNORE,
        "CAD": IGNORE,
        "ISS": IGNORE,
    }
