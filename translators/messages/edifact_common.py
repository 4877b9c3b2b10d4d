"""What the EDIFACT ORDERS and INVOIC mappers share: one pass over a message's segments.

:func:`scan` walks the segments once, dispatching on the tag through a dict, and collects what
both messages need (BGM, header dates, references, parties, currency, terms, charges, lines,
summary amounts) together with positioned findings. The message modules turn the result into
their canonical document.

**Where a segment belongs.** EDIFACT groups are implied by segment order, so the scanner keeps
a *section* (header, detail after the first LIN, summary after UNS+S) and a *context*: the
segment that opened the current group (NAD, RFF, TAX, ALC, PAT, CUX, PRI, LOC ...). A DTM is a
document date only at message level, an RFF+VA right after a NAD is that party's tax number, a
MOA inside a TAX or ALC group is a tax or charge amount, not a line amount, and so on.

**Code lists and the partner's mapping.** A :class:`~translators.mapping.MessageMapping` holds
lists shared by X12 and EDIFACT. They are read like this (see :func:`lookups`):

- part numbers (LIN C212 / PIA C212 7143): a list the partner file *sets* replaces the standard
  one, and its codes are taken away from the other roles. For a list the file leaves out, the
  standard list is used plus the EDIFACT codes: buyer ``IN BP``, supplier ``SA VP SN`` then
  ``MF`` (manufacturer's article number) and ``IB`` (ISBN) as last resorts, gtin ``EN SRV UP``.
- parties (NAD 3035): the partner's (or standard) list per role, after the partner's
  ``translations.party_qualifier`` table; the supplier falls back to the remit-to list
  (``RE``, ``PE`` ...); ship-to falls back to ``CN`` (consignee) and ``UC`` (ultimate consignee)
  when the list is the standard one.
- dates (DTM 2005): X12-style zero-padded codes also match their EDIFACT form ("002" is "2").
- ``translations.uom`` / ``translations.currency`` are applied to QTY/PRI 6411 and CUX 6345;
  ``references`` (None keeps all) filters the message-level RFF group.

**Lines.** One canonical line per LIN (1082 is the line number). Item numbers from LIN C212 and
PIA (function 1 or 5; substitutes 2-4 are skipped) by their 7143 code; a number with no code is
in the sender's own numbering (supplier's on an invoice, buyer's on an order) and fills that
field only when no qualified number does. Quantity from QTY 21 (ORDERS) or 47, 12, 46 (INVOIC)
with its 6411 unit (else PRI's); unit price from PRI AAA, else AAB, else any, divided by the
unit price basis 5284 when it is not 1; amount from MOA 203 (38, 66) outside TAX/ALC groups;
description from the IMD C273 7008 texts (components 4 and 5 joined; several IMDs joined with
" / "); requested delivery from the LIN group's DTM, else its delivery schedule (LOC/SCC) DTM.

**Findings.** A non-numeric QTY/PRI/MOA or an invalid date is an ``error`` when the mapping uses
the value and a ``warning`` when it does not (a reference's date, a packaging quantity): the
acknowledgment reports both, only the first fails the document. More than 35 DTM at message
or line level, a second BGM or UNS and an unknown NAD qualifier are warnings.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal, InvalidOperation
from collections.abc import Callable, Iterable
from typing import Any, Final

from translators.canonical import empty_line
from translators.findings import Finding, Severity, finding
from translators.mapping import MessageMapping
from translators.messages.common import ValueProblem, decimal_text, edifact_date, problem_finding
from translators.codelists import digits, edifact_number_limit, is_currency, is_unit
from translators.model import TransactionSet

WARNING: Final = Severity.WARNING
ERROR: Final = Severity.ERROR

# Sections of a message.
HEADER: Final = 0
DETAIL: Final = 1
SUMMARY: Final = 2

# --------------------------------------------------------------------------------------------
# Code lists

PURPOSES: Final = {
    "9": "original",
    "5": "replace",
    "1": "cancel",
    "4": "change",
    "7": "duplicate",
    "31": "copy",
    "2": "add",
    "3": "delete",
    "6": "confirmation",
    "8": "status",
    "13": "request",
    "16": "proposal",
    "17": "cancel_reissue",
    "18": "reissue",
    "19": "seller_change",
    "43": "additional_transmission",
    "46": "provisional",
    "47": "definitive",
}
"""BGM 1225 message function code → canonical purpose; other codes pass through raw."""

# NAD 3035 codes the gateway recognises (beyond those named in the mapping's lists): an
# unknown code only earns a warning.
KNOWN_PARTY_CODES: Final = frozenset(
    "AA AB AE AF AG AH AI AJ AK AM AO AP AQ AR AS AT AU AV AW BA BB BC BD BE BF BG BH BI BJ BK "
    "BL BM BN BO BP BQ BR BS BT BU BV BW BX BY BZ CA CB CC CD CE CF CG CH CI CJ CK CL CM CN CO "
    "CP CQ CR CS CT CU CV CW CX CY CZ DA DB DC DD DE DF DG DH DI DJ DK DL DM DN DO DP DQ DR DS "
    "DT DU DV DW DX DY DZ EA EB EC ED EE EF EG EH EI EJ EK EL EM EN EO EP EQ ER ES ET EU EV EW "
    "EX EY EZ FA FB FC FD FE FF FG FH FI FJ FK FL FM FN FO FP FQ FR FS FT FU FV FW FX FY FZ GA "
    "GB GC GD GE GF GH GI GJ GK GL GM GN GO GP GQ GR GS GT GU GV GW GX GY GZ HA HB HC HD HE HF "
    "HG HH HI HJ HK HL HM HN HO HP HQ HR HS HT HU HV HW HX HY HZ I1 I2 I3 I4 I5 I6 I7 I8 I9 IA "
    "IB IC ID IE IF IG IH II IJ IL IM IN IO IP IQ IR IS IT IU IV IW LA LB LC LD LE LF LG LH LI "
    "LJ LK LL LM LN LO LP LQ LR LS LT LU LV LW MA MF MG MI MP MR MS MT ND NI NP OB OH OI OO OP "
    "OR OS OT OV OY P1 P2 P3 P4 PA PB PC PD PE PF PG PH PI PJ PK PM PN PO PQ PR PS PT PW PX PY "
    "PZ RA RB RCP RD RE RF RH RI RL RM RP RS RV RW SB SE SF SG SI SK SN SO SP SR SS ST SU SX SY "
    "SZ TB TC TCP TCR TD TR TS TT UC UD UHP UP VN WD WH WM WPA WS ZZZ".split()
)

# LIN/PIA 7143 codes the EDIFACT directories (and EANCOM) use, per canonical part field.
_EDIFACT_PARTS: Final = {
    "buyer_part": ["IN", "BP"],
    "supplier_part": ["SA", "VP", "SN", "MF", "IB"],
    "gtin": ["EN", "SRV", "UP"],
}
_PART_FIELDS: Final = ("buyer_part", "supplier_part", "gtin")
_PART_MODEL_FIELDS: Final = {"buyer_part": "buyer", "supplier_part": "supplier", "gtin": "gtin"}

_SHIP_TO_EXTRA: Final = ["CN", "UC"]

# QTY 6063 per message kind, in order of preference.
QTY_ORDERS: Final = {"21": 0, "1": 1, "12": 2, "47": 3}
QTY_INVOIC: Final = {"47": 0, "12": 1, "46": 2, "21": 3, "1": 4}

# PRI 5125: net before gross, anything else last.
_PRI_RANK: Final = {"AAA": 0, "AAB": 1}

# Contexts inside a line item where QTY, MOA and RFF belong to the line itself (not to a
# sub-group such as a delivery schedule, a tax or an allowance).
_LINE_CTX: Final = frozenset({"line", "pri", "lrff"})

# Line MOA 5025: line item amount, invoice item amount, goods item total.
_LINE_AMOUNT: Final = {"203": 0, "38": 1, "66": 2}

# ALC group MOA 5025: allowance/charge amount, charge amount, allowance amount, total.
_ALC_AMOUNT: Final = {"8": 0, "23": 1, "204": 1, "131": 2}

# RFF qualifiers that carry a party's tax registration (NAD group), best first.
_TAX_REFS: Final = {"VA": 0, "FC": 1, "AHP": 2, "XA": 3}

# PAT terms wording.
_TERMS_TYPE: Final = {
    "1": "net",
    "2": "end of month",
    "3": "fixed date",
    "4": "deferred",
    "5": "discount not applicable",
    "8": "basic discount",
    "10": "instant",
    "20": "penalty",
    "21": "instalments",
    "22": "discount",
}
_TERMS_REF: Final = {
    "1": "order date",
    "2": "confirmation date",
    "5": "invoice date",
    "7": "document date",
    "9": "invoice receipt",
    "21": "goods receipt",
}
_TERMS_REL: Final = {"1": "from", "2": "before", "3": "after", "13": "from"}
_PERIODS: Final = {"D": "days", "CD": "days", "WD": "working days", "W": "weeks", "M": "months", "Y": "years"}

# DTM 2379 formats: those that start with CCYYMMDD, those that start with YYMMDD.
_CCYY_FORMATS: Final = frozenset({"102", "203", "204", "205", "303", "304", "718", "719"})
_YY_FORMATS: Final = frozenset({"101", "201", "202", "301", "302", "717"})
_GUESS_FORMAT: Final = {6: "101", 8: "102", 10: "201", 12: "203", 14: "204"}
_DATE_CACHE: Final[dict[tuple[str, str], str]] = {}  # (value, format) → ISO date, for valid dates only

# Summary MOA 5025 the mappers read, per message kind.
ORDER_TOTALS: Final = ("86", "128", "77", "39", "79", "9")
INVOICE_TOTALS: Final = ("77", "86", "39", "9", "128")
_USED_SUMMARY: Final = {
    "purchase_order": frozenset(ORDER_TOTALS),
    "invoice": frozenset(INVOICE_TOTALS + ("124", "150", "176")),
}

# Maximum use of message-level segments (UNTDID ORDERS/INVOIC, D93A-D01B).
MAX_HEADER_DTM: Final = 35
MAX_LINE_DTM: Final = 35


# --------------------------------------------------------------------------------------------
# The partner's mapping, read once per mapping object


class Lookups:
    """A :class:`MessageMapping` turned into the dicts the scanner needs."""

    __slots__ = ("mapping", "part_code", "parties", "dates", "uom", "currency", "party_qualifier",
                 "references", "known_parties", "due_codes", "requested_codes", "order_dates", "invoice_dates",
                 "untyped_invoice", "untyped_order")

    def __init__(self, mapping: MessageMapping):
        self.mapping = mapping
        # Part numbers: code → (field, rank).
        pn = mapping.part_numbers
        explicit = {f for f in _PART_FIELDS if _PART_MODEL_FIELDS[f] in pn.model_fields_set}
        claimed = {c for f in explicit for c in getattr(pn, _PART_MODEL_FIELDS[f])}
        part_code: dict[str, tuple[str, int, int]] = {}
        for slot, f in enumerate(_PART_FIELDS):
            codes = list(getattr(pn, _PART_MODEL_FIELDS[f]))
            if f not in explicit:
                codes = [c for c in codes + _EDIFACT_PARTS[f] if c not in claimed]
            for rank, c in enumerate(dict.fromkeys(codes)):
                part_code.setdefault(c, (f, slot, rank))
        self.part_code = part_code
        self.untyped_invoice = ("supplier_part", 1, 999)
        self.untyped_order = ("buyer_part", 0, 999)
        # Parties: role → qualifier list, best first.
        set_ = mapping.model_fields_set
        ship_to = list(mapping.ship_to_party)
        if "ship_to_party" not in set_:
            ship_to += _SHIP_TO_EXTRA
        remit = list(mapping.remit_to_party)
        self.parties = {
            "buyer": _dedupe(mapping.buyer_party),
            "supplier": _dedupe(list(mapping.supplier_party) + remit),
            "ship_to": _dedupe(ship_to),
            "bill_to": _dedupe(mapping.bill_to_party),
            "remit_to": _dedupe(remit),
        }
        self.known_parties = KNOWN_PARTY_CODES.union(*self.parties.values())
        # Dates: field → EDIFACT 2005 codes, best first.
        d = mapping.dates
        self.dates = {
            "po_date": _date_codes(d.po_date),
            "requested_delivery": _date_codes(d.requested_delivery),
            "invoice_date": _date_codes(d.invoice_date),
            "due_date": _date_codes(d.due_date),
        }
        self.due_codes = frozenset(self.dates["due_date"])
        self.requested_codes = {c: n for n, c in enumerate(self.dates["requested_delivery"])}
        self.order_dates = frozenset(self.dates["po_date"] + self.dates["requested_delivery"])
        self.invoice_dates = frozenset(self.dates["invoice_date"] + self.dates["due_date"])
        t = mapping.translations
        self.uom = dict(t.uom)
        self.currency = dict(t.currency)
        self.party_qualifier = dict(t.party_qualifier)
        self.references = None if mapping.references is None else frozenset(mapping.references)


def _dedupe(codes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(codes))


def _date_codes(codes: Iterable[str]) -> list[str]:
    """X12-style "002" also matches the EDIFACT "2"."""
    out = []
    for c in codes:
        out.append(c)
        if c.isdecimal() and c.startswith("0"):
            out.append(c.lstrip("0") or "0")
    return _dedupe(out)


_LOOKUPS: Final[dict[int, tuple[MessageMapping, Lookups]]] = {}


def lookups(mapping: MessageMapping) -> Lookups:
    """The lookups for a mapping, memoised per mapping object (mappings are frozen)."""
    hit = _LOOKUPS.get(id(mapping))
    if hit is not None and hit[0] is mapping:
        return hit[1]
    lk = Lookups(mapping)
    if len(_LOOKUPS) > 256:
        _LOOKUPS.clear()
    _LOOKUPS[id(mapping)] = (mapping, lk)
    return lk


# --------------------------------------------------------------------------------------------
# Small readers


def comp(seg: list[Any], n: int, c: int = 1) -> str:
    """Component *c* (1-based) of element *n*, stripped ('' when absent)."""
    if n >= len(seg):
        return ""
    v = seg[n]
    if isinstance(v, list):
        return v[c - 1].strip() if c <= len(v) else ""
    return v.strip() if c == 1 else ""


def parts(seg: list[Any], n: int) -> list[str]:
    """Element *n* as a list of its components."""
    if n >= len(seg):
        return []
    v = seg[n]
    return v if isinstance(v, list) else [v]


def join_text(values: Iterable[str]) -> str | None:
    """Free-text components joined with single spaces ('' parts dropped)."""
    text = " ".join(p.strip() for p in values if p and p.strip())
    return text or None


def message_version(unh: list[Any], fallback: str | None = None) -> str | None:
    """``D96A`` from UNH S009 0052 + 0054, tolerating stray spaces (``D: 96A``)."""
    v = (comp(unh, 2, 2) + comp(unh, 2, 3)).replace(" ", "").upper()
    return v or fallback


def purpose(code: str) -> str | None:
    code = code.strip()
    if not code:
        return None
    return PURPOSES.get(code, code)


def party_from_nad(seg: list[Any]) -> dict[str, Any]:
    """A canonical party from a NAD segment.

    Name from C080 (party name, up to five 3036 components joined) or else the first line of
    C058 (name and address); id from C082 3039 with its agency 3055 (or list 1131) as the
    qualifier; address lines from C059 (street) or the rest of C058; city 3164, region 3229
    (or C819 3228), postal code 3251, country 3207.
    """
    c082 = parts(seg, 2)
    pid = c082[0].strip() if c082 else ""
    qual = ""
    if pid:
        qual = (c082[2].strip() if len(c082) > 2 else "") or (c082[1].strip() if len(c082) > 1 else "")
    c058 = [p.strip() for p in parts(seg, 3)]
    name = join_text(parts(seg, 4)[:5])
    unstructured = [p for p in c058 if p]
    if name is None and unstructured:
        name = unstructured[0]
        unstructured = unstructured[1:]
    elif name is not None and unstructured and unstructured[0] == name:
        unstructured = unstructured[1:]
    lines = [p.strip() for p in parts(seg, 5) if p.strip()] or unstructured
    city = comp(seg, 6)
    region = comp(seg, 7) or comp(seg, 7, 4)
    postal = comp(seg, 8)
    country = comp(seg, 9)
    address = None
    if lines or city or region or postal or country:
        address = {
            "lines": lines,
            "city": city or None,
            "region": region or None,
            "postal_code": postal or None,
            "country": country or None,
        }
    return {"name": name, "id": pid or None, "id_qualifier": qual or None, "tax_id": None, "address": address}


def _copy_party(p: dict[str, Any]) -> dict[str, Any]:
    a = p["address"]
    return dict(p, address=None if a is None else dict(a, lines=list(a["lines"])))


def divide(price: str, basis: str) -> str:
    """``price`` per ``basis`` units, as a canonical decimal string (at most 6 decimals)."""
    try:
        q = Decimal(price) / Decimal(basis)
    except (InvalidOperation, ZeroDivisionError):
        return price
    exponent = q.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -6:
        q = q.quantize(Decimal("0.000001"))
    q = q.normalize() if q != q.to_integral_value() else q.to_integral_value()
    return format(q, "f")


def negate(amount: str) -> str:
    a = amount.lstrip("-")
    if a.strip("0.") == "":
        return a
    return "-" + a


# --------------------------------------------------------------------------------------------
# The scan


class Scan:
    """Everything one pass over a message collects (plain attributes, read by the mappers)."""

    def __init__(self, ts: TransactionSet, mapping: MessageMapping, kind: str):
        self.ts = ts
        self.lk = lookups(mapping)
        self.kind = kind
        self.dm = ts.interchange.delimiters.decimal or "."
        self.first = ts.first_segment_index
        self.findings: list[Finding] = []
        self.section = HEADER
        self.ctx = "msg"
        self.invoice = kind == "invoice"
        self.qty_rank = QTY_INVOIC if self.invoice else QTY_ORDERS
        self.hdate_used = self.lk.invoice_dates if self.invoice else self.lk.order_dates
        self.used_summary = _USED_SUMMARY[kind]
        self.bgm: list[Any] | None = None
        self.bgm_pos: int | None = None
        self.bgm_count = 0
        self.hdates: dict[str, str] = {}
        self.hdate_pos: dict[str, int] = {}
        self.bad_dates: set[str] = set()  # header date qualifiers that held an invalid date
        self.hdtm_count = 0
        self.references: dict[str, str] = {}
        self.po_ref: str | None = None
        self.po_ref_party: str | None = None
        self.po_ref_line: str | None = None
        self.parties: list[tuple[str, dict[str, Any]]] = []
        self.party: dict[str, Any] | None = None
        self.party_tax_rank = 99
        self.currency: str | None = None
        self.money_currency: str | None = None
        self.terms: list[dict[str, Any]] = []
        self.pat_due: str | None = None
        self.charges_header: list[dict[str, Any]] = []
        self.charges_summary: list[dict[str, Any]] = []
        self.charge: dict[str, Any] | None = None
        self.charge_rank = 99
        self.lines: list[dict[str, Any]] = []
        self.line: dict[str, Any] | None = None
        # The line being read: ranks of what filled its fields so far (see _lin).
        self.line_qty_rank = [99, 99]  # [quantity rank, amount rank]
        self.line_pri_rank = 99
        self.line_part_rank = [_NO_RANK, _NO_RANK, _NO_RANK]
        self.line_del_rank = 999
        self.line_dtm_count = 0
        self.line_pri_uom: str | None = None
        self.line_desc: str | None = None
        self.uns_pos: int | None = None
        self.uns_count = 0
        self.totals: dict[str, str] = {}
        self.tax_moa: dict[str, str] = {}
        self.tax_group_sum: str | None = None
        self.summary_moa = 0
        self.first_money_currency: str | None = None
        self.currency_at: tuple[list[Any], int] | None = None  # the CUX that named the currency  # the currency of the first MOA that names one
        self.cnt_lines: list[Any] | None = None  # CNT with 6069 = 2 (number of line items)
        self.cnt_pos = -1

    # -- positions -----------------------------------------------------------------------
    def at(self, seg: list[Any], i: int, element: int | None = None, component: int | None = None) -> dict[str, Any]:
        return {
            "segment_tag": seg[0],
            "segment_index": self.first + i,
            "set_position": i + 1,
            "element_index": element,
            "component_index": component,
        }

    def num(self, seg: list[Any], i: int, value: str, element: int = 1, component: int | None = 2,
            used: bool = True) -> str | None:
        """A numeric value as a canonical decimal; a non-numeric one is an error when the mapping
        uses the value, a warning when it does not (still reported in the acknowledgment)."""
        if not value:
            return None
        if len(value) > 15:
            limit = edifact_number_limit(seg[0] if isinstance(seg[0], str) else "", self.ts.version)
            if limit is not None and digits(value) > limit:
                self.findings.append(finding(
                    "element.too_long", f"{value[:40]!r} has {digits(value)} digits: at most {limit} in {self.ts.version}",
                    severity=ERROR if used else WARNING, value=value[:40], **self.at(seg, i, element, component)))
                return None
        # Fast path for the common shapes (digits, digits + decimal mark + digits); the result
        # is what decimal_text gives.
        if value.isascii():
            if value.isdecimal():
                return value.lstrip("0") or "0"
            a, sep, b = value.partition(self.dm)
            if sep and a.isdecimal() and b.isdecimal():
                if sep == "." and a[0] != "0":
                    return value  # already canonical: "12.34"
                return (a.lstrip("0") or "0") + "." + b
        try:
            return decimal_text(value, decimal_mark=self.dm)
        except ValueProblem as p:
            f = problem_finding(p, seg, i + 1, self.first, element, component, None if used else WARNING)
            self.findings.append(_with_value(f, value))
            return None

    def date(self, seg: list[Any], i: int, qualifier: str, value: str, fmt: str, used: bool) -> str | None:
        """DTM C507 → ISO date. An invalid date is an error when the mapping uses it (``used``), a
        warning otherwise; a format that is no calendar date (a period, a week range) is a
        warning when used, ignored otherwise."""
        if not value:
            return None
        hit = _DATE_CACHE.get((value, fmt))
        if hit is not None:
            return hit
        iso = self._date(seg, i, qualifier, value, fmt, used)
        if iso is not None:
            if len(_DATE_CACHE) > 4096:
                _DATE_CACHE.clear()
            _DATE_CACHE[(value, fmt)] = iso
        return iso

    def _date(self, seg: list[Any], i: int, qualifier: str, value: str, fmt: str, used: bool) -> str | None:
        try:
            if fmt in _CCYY_FORMATS:
                if len(value) < 8:
                    raise ValueProblem("element.invalid_date", f"{value!r} is too short for format {fmt}")
                return edifact_date(value[:8], "102")
            if fmt in _YY_FORMATS:
                if len(value) < 6:
                    raise ValueProblem("element.invalid_date", f"{value!r} is too short for format {fmt}")
                return edifact_date(value[:6], "101")
            if not fmt:
                guess = _GUESS_FORMAT.get(len(value))
                if guess is None:
                    raise ValueProblem("element.invalid_date", f"{value!r} has no format (2379) and is not a date")
                return edifact_date(value, guess)
            if fmt == "4" and len(value) == 8:  # DDMMCCYY
                return edifact_date(value[4:8] + value[2:4] + value[:2], "102")
            if fmt == "2" and len(value) == 6:  # DDMMYY
                return edifact_date(value[4:6] + value[2:4] + value[:2], "101")
            if fmt == "3" and len(value) == 6:  # MMDDYY
                return edifact_date(value[4:6] + value[:4], "101")
            if fmt == "616" and len(value) == 6 and value.isdecimal():  # CCYYWW: the Monday of that week
                try:
                    return date.fromisocalendar(int(value[:4]), int(value[4:]), 1).isoformat()
                except ValueError:
                    raise ValueProblem("element.invalid_date", f"{value!r} is not a week (CCYYWW)") from None
            if fmt in ("2", "3", "4"):
                raise ValueProblem("element.invalid_date", f"{value!r} does not fit format {fmt}")
        except ValueProblem as p:
            f = problem_finding(p, seg, i + 1, self.first, 1, 2, None if used else WARNING)
            self.findings.append(_with_value(f, value))
            return None
        if used:
            self.findings.append(finding(
                "element.invalid_date",
                f"DTM {qualifier} format {fmt} is not a calendar date the gateway reads; the date is not used",
                severity=WARNING, value=value, **self.at(seg, i, 1, 3)))
        return None

    # -- lines ---------------------------------------------------------------------------
    def close_line(self) -> None:
        line = self.line
        if line is None:
            return
        if line["uom"] is None and self.line_pri_uom:
            line["uom"] = self.line_pri_uom
        line["description"] = self.line_desc
        self.lines.append(line)
        self.line = None

    def choose_party(self, role: str) -> dict[str, Any] | None:
        codes = self.lk.parties[role]
        best, best_rank = None, len(codes)
        rank = {c: n for n, c in enumerate(codes)}
        for q, p in self.parties:
            r = rank.get(q)
            if r is not None and r < best_rank:
                best, best_rank = p, r
                if r == 0:
                    break
        return best

    def roles(self) -> dict[str, Any]:
        out = {}
        used = set()
        for role in ("buyer", "supplier", "ship_to", "bill_to", "remit_to"):
            p = self.choose_party(role)
            if p is not None:
                if id(p) in used:
                    p = _copy_party(p)
                else:
                    used.add(id(p))
            out[role] = p
        return out

    def header_date(self, field: str) -> str | None:
        for c in self.lk.dates[field]:
            v = self.hdates.get(c)
            if v is not None:
                return v
        return None

    def date_was_sent(self, field: str) -> bool:
        """Whether a message-level DTM for ``field`` was sent (even one too broken to read)."""
        return any(c in self.bad_dates for c in self.lk.dates[field])

    def terms_text(self) -> str | None:
        texts = []
        for t in self.terms:
            if t["text"]:
                texts.append(t["text"])
                continue
            words = []
            if t["pct"]:
                words.append(f"{t['pct']}%")
            kind = _TERMS_TYPE.get(t["type"], f"terms {t['type']}" if t["type"] else "terms")
            words.append(kind)
            if t["count"]:
                words.append(f"{t['count']} {_PERIODS.get(t['period'], t['period'] or 'periods')}")
                if t["ref"]:
                    words.append(_TERMS_REL.get(t["rel"], "relative to") if t["rel"] else "after")
                    words.append(_TERMS_REF.get(t["ref"], f"reference {t['ref']}"))
            if t["due"]:
                words[-1] += ","
                words.append(f"due {t['due']}")
            if len(words) > 1 or t["type"]:
                texts.append(" ".join(words))
        return "; ".join(texts) or None

    def missing(self, tag: str, position: int, message: str, severity: Severity = WARNING) -> None:
        """A missing segment, reported at the position where it was expected."""
        n = len(self.ts.segments)
        position = max(1, min(position, n or 1))
        self.findings.append(finding(
            "segment.mandatory_missing", message, severity=severity, segment_tag=tag,
            segment_index=self.first + position - 1, set_position=position))


def _with_value(f: Finding, value: str) -> Finding:
    return replace(f, value=value)


# --------------------------------------------------------------------------------------------
# Segment handlers: (scan, segment, index in the message)


def _bgm(s: Scan, seg: list[Any], i: int) -> None:
    s.bgm_count += 1
    if s.bgm is None:
        s.bgm, s.bgm_pos = seg, i
    elif s.bgm_count == 2:
        s.findings.append(finding("segment.too_many", "BGM appears more than once; the first is used",
                                  severity=WARNING, **s.at(seg, i)))


def _dtm(s: Scan, seg: list[Any], i: int) -> None:
    el = _c1(seg)
    q = el[0].strip()
    value = el[1].strip() if len(el) > 1 else ""
    fmt = el[2].strip() if len(el) > 2 else ""
    section, ctx = s.section, s.ctx
    if section == HEADER:
        if ctx == "msg":
            s.hdtm_count += 1
            if s.hdtm_count == MAX_HEADER_DTM + 1:
                s.findings.append(finding(
                    "segment.too_many", f"More than {MAX_HEADER_DTM} DTM segments at message level",
                    severity=WARNING, **s.at(seg, i)))
            iso = _DATE_CACHE.get((value, fmt)) or s.date(seg, i, q, value, fmt, q in s.hdate_used)
            if iso is None:
                if value:
                    s.bad_dates.add(q)
            elif q not in s.hdates:
                s.hdates[q] = iso
                s.hdate_pos[q] = i
        elif ctx == "pat":
            used = s.invoice and q in s.lk.due_codes
            iso = s.date(seg, i, q, value, fmt, used)
            if iso is not None and used:
                if s.pat_due is None:
                    s.pat_due = iso
                if s.terms and s.terms[-1]["due"] is None:
                    s.terms[-1]["due"] = iso
        else:
            s.date(seg, i, q, value, fmt, False)
    elif section == DETAIL:
        line = s.line
        rank = s.lk.requested_codes.get(q)
        if line is not None and ctx == "line":
            s.line_dtm_count += 1
            if s.line_dtm_count == MAX_LINE_DTM + 1:
                s.findings.append(finding(
                    "segment.too_many", f"More than {MAX_LINE_DTM} DTM segments in one line item",
                    severity=WARNING, **s.at(seg, i)))
        elif ctx in ("loc", "scc") and rank is not None:
            rank += 100  # a delivery schedule's date: only when the line itself has none
        else:
            rank = None
        iso = _DATE_CACHE.get((value, fmt)) or s.date(seg, i, q, value, fmt, rank is not None)
        if iso is not None and rank is not None and line is not None and rank < s.line_del_rank:
            line["requested_delivery"] = iso
            s.line_del_rank = rank
    else:
        s.date(seg, i, q, value, fmt, False)


def _rff(s: Scan, seg: list[Any], i: int) -> None:
    q = comp(seg, 1, 1)
    v = comp(seg, 1, 2)
    section, ctx = s.section, s.ctx
    if section == HEADER:
        if ctx == "msg" or ctx == "rff":
            s.ctx = "rff"
            if not v:
                return
            if q == "ON" and s.po_ref is None:
                s.po_ref = v
            refs = s.lk.references
            if (refs is None or q in refs) and q not in s.references:
                s.references[q] = v
        elif ctx == "nad":
            if not v or s.party is None:
                return
            r = _TAX_REFS.get(q)
            if r is not None and r < s.party_tax_rank:
                s.party["tax_id"] = v
                s.party_tax_rank = r
            elif q == "ON" and s.po_ref_party is None:
                s.po_ref_party = v
    elif section == DETAIL:
        if ctx in _LINE_CTX:
            s.ctx = "lrff"
            if q == "ON" and v:
                if s.po_ref_line is None:
                    s.po_ref_line = v
                line = s.line
                if line is not None and line["po_number"] is None:
                    line["po_number"] = v  # the order this line belongs to


def _nad(s: Scan, seg: list[Any], i: int) -> None:
    if s.section != HEADER:
        s.ctx = "lnad" if s.section == DETAIL else "other"
        return
    s.ctx = "nad"
    raw = comp(seg, 1)
    q = s.lk.party_qualifier.get(raw, raw)
    if q not in s.lk.known_parties:
        s.findings.append(finding(
            "element.invalid_code", f"NAD party qualifier {raw!r} is not one the gateway knows; the party is not used",
            severity=WARNING, value=raw, **s.at(seg, i, 1)))
    party = party_from_nad(seg)
    s.parties.append((q, party))
    s.party = party
    s.party_tax_rank = 99


def _cux(s: Scan, seg: list[Any], i: int) -> None:
    if s.section == HEADER:
        s.ctx = "cux"
        if s.currency is None:
            cur = comp(seg, 1, 2) or comp(seg, 2, 2)
            if cur:
                s.currency = cur
                s.currency_at = (seg, i)


def _pat(s: Scan, seg: list[Any], i: int) -> None:
    if s.section == DETAIL:
        s.ctx = "other"
        return
    s.ctx = "pat"
    c112 = parts(seg, 3)
    s.terms.append({
        "type": comp(seg, 1),
        "text": join_text(parts(seg, 2)[3:5]),
        "ref": c112[0].strip() if c112 else "",
        "rel": c112[1].strip() if len(c112) > 1 else "",
        "period": c112[2].strip() if len(c112) > 2 else "",
        "count": c112[3].strip() if len(c112) > 3 else "",
        "pct": None,
        "due": None,
    })


def _pcd(s: Scan, seg: list[Any], i: int) -> None:
    if s.ctx == "pat" and s.terms:
        pct = s.num(seg, i, comp(seg, 1, 2), used=s.invoice)
        if pct is not None and s.terms[-1]["pct"] is None:
            s.terms[-1]["pct"] = pct


def _alc(s: Scan, seg: list[Any], i: int) -> None:
    if s.section == DETAIL:
        s.ctx = "lalc"
        return
    s.ctx = "alc"
    code = comp(seg, 5, 1) or comp(seg, 2, 2) or comp(seg, 2, 1) or None
    charge = {"code": code, "description": join_text(parts(seg, 5)[3:5]), "amount": None,
              "_allowance": comp(seg, 1) == "A"}
    (s.charges_header if s.section == HEADER else s.charges_summary).append(charge)
    s.charge = charge
    s.charge_rank = 99


def _tax(s: Scan, seg: list[Any], i: int) -> None:
    s.ctx = "ltax" if s.section == DETAIL else "tax"


def _moa(s: Scan, seg: list[Any], i: int) -> None:
    el = _c1(seg)
    q = el[0].strip()
    raw = el[1].strip() if len(el) > 1 else ""
    if len(el) > 2:
        cur = el[2].strip()
        if cur:
            base = s.currency or s.first_money_currency
            if base is None:
                s.first_money_currency = cur
            elif cur != base:
                # The same amount restated in another currency (6345 differs from the
                # message's): checked, never counted a second time.
                s.num(seg, i, raw, used=False)
                return
    section, ctx = s.section, s.ctx
    if section == DETAIL:
        line = s.line
        r = _LINE_AMOUNT.get(q) if line is not None and ctx in _LINE_CTX else None
        value = raw if len(raw) <= 15 and raw.isdecimal() and raw.isascii() and raw[0] != "0" else s.num(seg, i, raw, used=r is not None)
        if r is not None and value is not None and line is not None and r < s.line_qty_rank[1]:
            line["amount"] = value
            s.line_qty_rank[1] = r
        return
    if ctx == "alc" and q in _ALC_AMOUNT:
        value = s.num(seg, i, raw, used=s.invoice)
        r = _ALC_AMOUNT[q]
        charge = s.charge
        if value is not None and charge is not None and r < s.charge_rank:
            charge["amount"] = negate(value) if charge["_allowance"] else value
            s.charge_rank = r
        return
    if section != SUMMARY:
        s.num(seg, i, raw, used=False)
        return
    s.summary_moa += 1
    value = s.num(seg, i, raw, used=q in s.used_summary)
    if value is None:
        return
    if s.money_currency is None and len(el) > 2 and el[2].strip():
        s.money_currency = el[2].strip()
    if ctx == "tax" and q in ("124", "125"):
        if q == "124":
            s.tax_group_sum = _add(s.tax_group_sum, value)
        return
    if q in ("124", "150", "176") and q not in s.tax_moa:
        s.tax_moa[q] = value
    if q not in s.totals:
        s.totals[q] = value


def _add(a: str | None, b: str) -> str:
    if a is None:
        return b
    return format(Decimal(a) + Decimal(b), "f")


def _lin(s: Scan, seg: list[Any], i: int) -> None:
    if s.line is not None:
        s.close_line()
    s.section = DETAIL
    s.ctx = "line"
    line = _EMPTY_LINE.copy()  # a copy: several times cheaper than building it key by key
    n = len(seg)
    num = seg[1] if n > 1 else ""
    if isinstance(num, list):
        num = num[0] if num else ""
    line["line_number"] = num.strip() or None
    s.line = line
    s.line_qty_rank = [99, 99]  # [quantity rank, amount rank]
    s.line_pri_rank = 99
    s.line_part_rank = [_NO_RANK, _NO_RANK, _NO_RANK]
    s.line_del_rank = 999
    s.line_dtm_count = 0
    s.line_pri_uom = None
    s.line_desc = None
    if n > 3:
        _part(s, seg[3])


_NO_RANK: Final = 1 << 20
_EMPTY_LINE: Final[dict[str, Any]] = empty_line()


def _part(s: Scan, c212: str | list[str]) -> None:
    """One C212 item number: into the line field its 7143 type code names."""
    if isinstance(c212, list):
        if not c212:
            return
        value = c212[0].strip()
        code = c212[1].strip() if len(c212) > 1 else ""
    else:
        value, code = c212.strip(), ""
    if not value:
        return
    hit = s.lk.part_code.get(code)
    if hit is None:
        if code:
            return
        # No item type code: the number is in the sender's own numbering, the supplier's on an
        # invoice, the buyer's on an order; only used when no qualified number fills that field.
        hit = s.lk.untyped_invoice if s.invoice else s.lk.untyped_order
    field, slot, rank = hit
    ranks = s.line_part_rank
    line = s.line
    if line is not None and rank < ranks[slot]:
        line[field] = value
        ranks[slot] = rank


def _pia(s: Scan, seg: list[Any], i: int) -> None:
    if s.line is None:
        return
    fn = seg[1] if len(seg) > 1 else ""
    if isinstance(fn, list):
        fn = fn[0] if fn else ""
    if fn in ("2", "3", "4"):  # substitutes, not this line's identification
        return
    for item in seg[2:7]:
        _part(s, item)


def _imd(s: Scan, seg: list[Any], i: int) -> None:
    if s.line is None:
        return
    text = join_text(parts(seg, 3)[3:5])
    if text is None:
        return
    if s.line_desc is None:
        s.line_desc = text
    elif text not in s.line_desc.split(" / "):
        s.line_desc += " / " + text


def _c1(seg: list[Any]) -> list[Any]:
    """Element 1 as a component list (QTY C186, PRI C509, MOA C516, DTM C507)."""
    el = seg[1] if len(seg) > 1 else ""
    if isinstance(el, list):
        return el or [""]
    return [el]


def _qty(s: Scan, seg: list[Any], i: int) -> None:
    el = _c1(seg)
    q = el[0].strip()
    line = s.line
    r = s.qty_rank.get(q) if line is not None and s.section == DETAIL and s.ctx in _LINE_CTX else None
    raw = el[1].strip() if len(el) > 1 else ""
    value = raw if len(raw) <= 15 and raw.isdecimal() and raw.isascii() and raw[0] != "0" else s.num(seg, i, raw, used=r is not None)
    if value is not None and r is not None and line is not None and r < s.line_qty_rank[0]:
        s.line_qty_rank[0] = r
        line["quantity"] = value
        uom = el[2].strip() if len(el) > 2 else ""
        unit = s.lk.uom.get(uom, uom) if uom else None
        line["uom"] = unit
        if unit is not None and not is_unit(unit, "edifact"):
            s.findings.append(finding(
                "element.invalid_code", f"QTY unit {uom!r} is not shaped as a UN/ECE Recommendation 20 code "
                "(6411, an..3); kept as sent", severity=WARNING, value=uom[:40], **s.at(seg, i, 1, 3)))


def _pri(s: Scan, seg: list[Any], i: int) -> None:
    el = _c1(seg)
    q = el[0].strip()
    used = s.section == DETAIL and s.line is not None
    raw = el[1].strip() if len(el) > 1 else ""
    value = raw if len(raw) <= 15 and raw.isdecimal() and raw.isascii() and raw[0] != "0" else s.num(seg, i, raw, used=used)
    n = len(el)
    basis = s.num(seg, i, el[4].strip(), 1, 5, used) if n > 4 and el[4].strip() else None
    if not used:
        return
    s.ctx = "pri"
    if value is None:
        return
    r = _PRI_RANK.get(q, 2)
    line = s.line
    if line is not None and r < s.line_pri_rank:
        s.line_pri_rank = r
        if basis is not None and Decimal(basis) not in (0, 1):
            value = divide(value, basis)
        line["unit_price"] = value
        uom = el[5].strip() if n > 5 else ""
        if uom:
            s.line_pri_uom = s.lk.uom.get(uom, uom)


def _uns(s: Scan, seg: list[Any], i: int) -> None:
    if comp(seg, 1) == "D":
        return
    s.uns_count += 1
    if s.uns_count == 2:
        s.findings.append(finding("segment.too_many", "UNS appears more than once", severity=WARNING, **s.at(seg, i)))
    s.close_line()
    if s.uns_pos is None:
        s.uns_pos = i
    s.section = SUMMARY
    s.ctx = "summary"


def _loc(s: Scan, seg: list[Any], i: int) -> None:
    if s.section == DETAIL and (s.ctx in _LINE_CTX or s.ctx == "loc"):
        s.ctx = "loc"


def _group(name: str) -> Callable[[Scan, list[Any], int], None]:
    def handler(s: Scan, seg: list[Any], i: int) -> None:
        s.ctx = name

    return handler


_other = _group("other")


def _cnt(s: Scan, seg: list[Any], i: int) -> None:
    if s.cnt_lines is None and comp(seg, 1, 1) == "2":
        s.cnt_lines = seg
        s.cnt_pos = i


def check_cnt(s: Scan) -> None:
    """CNT+2 (number of line items) against the LIN lines received: a truncated message must not
    pass for a whole one."""
    seg = s.cnt_lines
    if seg is None:
        return
    count = comp(seg, 1, 2)
    received = len(s.lines)
    if count.isdecimal() and len(count) <= 15 and int(count) != received:
        s.findings.append(finding(
            "segment.line_count_mismatch", f"CNT+2 says {count} line items, {received} were received",
            value=count, extra={"check": "line_count"}, **s.at(seg, s.cnt_pos, 1, 2)))

HANDLERS: Final = {
    "BGM": _bgm,
    "DTM": _dtm,
    "RFF": _rff,
    "NAD": _nad,
    "CUX": _cux,
    "PAT": _pat,
    "PCD": _pcd,
    "ALC": _alc,
    "TAX": _tax,
    "MOA": _moa,
    "LIN": _lin,
    "PIA": _pia,
    "IMD": _imd,
    "QTY": _qty,
    "PRI": _pri,
    "UNS": _uns,
    "LOC": _loc,
    "SCC": _group("scc"),
    "PAC": _other,
    "TDT": _other,
    "TOD": _other,
    "EQD": _other,
    "APR": _other,
    "RCS": _other,
    "DGS": _other,
    "RTE": _other,
    "MTD": _other,
    "CNT": _cnt,
}
"""Segment tag → handler. Tags not listed (FTX, CTA, COM, PAI, ALI, GIN, MEA ...) leave the
context as it is: they never open a group whose DTM, RFF, QTY or MOA the mappers read (CNT's
handler only notes the line count)."""


def scan(ts: TransactionSet, mapping: MessageMapping, kind: str) -> Scan:
    """One pass over the message: the collected values and findings."""
    s = Scan(ts, mapping, kind)
    get = HANDLERS.get
    segs: list[list[Any]] = ts.segments
    for i in range(1, len(segs)):
        seg = segs[i]
        if not seg:
            continue
        tag = seg[0]
        if not isinstance(tag, str):
            continue
        # The segments of a line item first, called directly; the rest through the table.
        if tag == "QTY":
            _qty(s, seg, i)
        elif tag == "PRI":
            _pri(s, seg, i)
        elif tag == "LIN":
            _lin(s, seg, i)
        elif tag == "PIA":
            _pia(s, seg, i)
        elif tag == "IMD":
            _imd(s, seg, i)
        elif tag == "MOA":
            _moa(s, seg, i)
        elif tag == "DTM":
            _dtm(s, seg, i)
        else:
            h = get(tag)
            if h is not None:
                h(s, seg, i)
    s.close_line()
    return s


def fill_common(doc: dict[str, Any], s: Scan) -> None:
    """The fields ORDERS and INVOIC fill the same way."""
    ts = s.ts
    segs = ts.segments
    unh = segs[0] if segs and segs[0] and segs[0][0] == "UNH" else None
    doc["version"] = message_version(unh, ts.version) if unh else ts.version
    ich = ts.interchange
    group = ts.group
    doc["sender_id"] = ich.sender_id
    doc["receiver_id"] = ich.receiver_id
    control: dict[str, Any] = doc["control"]  # new_document's, filled in place (same keys, same order)
    control["interchange"] = ich.control_number
    control["group"] = group.control_number if group else None
    control["message"] = (comp(unh, 1) if unh else "") or ts.control_number
    if s.bgm is not None:
        code = comp(s.bgm, 3).strip()
        doc["purpose"] = purpose(code)
        if code and code not in PURPOSES:
            s.findings.append(finding(
                "element.invalid_code", f"BGM 1225 message function {code!r} is not a code the gateway names; kept as sent",
                severity=WARNING, value=code, **s.at(s.bgm, s.bgm_pos or 0, 3)))
    cur = s.currency or s.money_currency
    if cur:
        doc["currency"] = code = s.lk.currency.get(cur, cur)
        if not is_currency(code):
            where = s.currency_at or (s.bgm or ["UNH"], s.bgm_pos or 0)
            s.findings.append(finding(
                "element.invalid_code", f"Currency {cur!r} is not an ISO 4217 code; kept as sent", severity=WARNING,
                value=cur[:40],
                **s.at(where[0], where[1], 1, 2)))
    doc["parties"] = s.roles()
    doc["lines"] = s.lines
    doc["references"] = s.references
    check_cnt(s)


def document_number(s: Scan, what: str) -> str | None:
    """BGM 1004 (simple element, or the first component of C106 in newer directories)."""
    if s.bgm is None:
        return None
    number = comp(s.bgm, 2)
    if not number:
        s.findings.append(finding(
            "element.conditional_missing", f"BGM carries no {what} number (1004)", severity=WARNING,
            **s.at(s.bgm, s.bgm_pos or 0, 2)))
        return None
    return number


def check_bgm(s: Scan) -> None:
    """A missing BGM is reported (a warning: the acknowledgment names it, the document goes on
    without a number; a partner whose documents must carry one lists it in ``required``)."""
    if s.bgm is None:
        s.missing("BGM", 2, "BGM (beginning of message) is missing: the document has no number", WARNING)


def stamped(s: Scan) -> list[Finding]:
    """The scan's findings with the control numbers of the envelopes around the message."""
    if not s.findings:
        return s.findings
    ts = s.ts
    ich = ts.interchange.control_number
    grp = ts.group.control_number if ts.group else None
    msg = ts.control_number
    return [replace(f, interchange_control=ich, group_control=grp, message_control=msg) for f in s.findings]


def first_total(s: Scan, qualifiers: Iterable[str]) -> str | None:
    for q in qualifiers:
        v = s.totals.get(q)
        if v is not None:
            return v
    return None
