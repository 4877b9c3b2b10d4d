"""Value conversions shared by the message mappers: decimals, dates, code tables."""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from translators.findings import Finding, Severity, finding


class ValueProblem(ValueError):
    """A value that cannot be converted; the mapper turns it into a positioned finding."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# The longest numeric element of X12 (R/N, 18 in 005010's longest) and EDIFACT (n..35).
MAX_NUMBER_LENGTH: Final = 35


def decimal_text(value: str, implied: int = 0, decimal_mark: str = ".") -> str | None:
    """Normalise a numeric EDI value to a canonical decimal string.

    ``implied`` is the X12 Nn implied-decimal count (TDS and SAC amounts are N2). Leading
    zeros and a leading ``+`` go; a decimal comma becomes a point. '' gives None.
    """
    v = value.strip()
    if not v:
        return None
    if decimal_mark != "." or "," in v:
        v = v.replace(decimal_mark, ".").replace(",", ".")
    # A plain decimal only: an exponent (1E100000000) would make a number millions of digits long.
    body = v[1:] if v[:1] in "+-" else v
    whole, dot, fraction = body.partition(".")
    if not (whole.isdecimal() or fraction.isdecimal()) or (whole and not whole.isdecimal()) \
            or (fraction and not fraction.isdecimal()) or not body.isascii():
        has_exponent = "e" in body.lower() and body.lower().replace("e", "", 1).lstrip("+-").replace(".", "").isdecimal()
        raise ValueProblem("element.invalid_number", f"{value[:40]!r} is not a plain decimal number (no exponent)"
                           if has_exponent else f"{value[:40]!r} is not a number")
    if len(body) > MAX_NUMBER_LENGTH:
        raise ValueProblem("element.too_long",
                           f"{value[:40]!r} has {len(body)} characters: more than any EDI number ({MAX_NUMBER_LENGTH})")
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise ValueProblem("element.invalid_number", f"{value!r} is not a number") from None
    if not d.is_finite():
        raise ValueProblem("element.invalid_number", f"{value!r} is not a number")
    if implied:
        if "." in v:
            raise ValueProblem("element.invalid_number", f"{value!r} has a decimal point in an implied-decimal field")
        d = d.scaleb(-implied)
    if d == 0:
        exponent = d.as_tuple().exponent  # an int: d is finite
        return "0" if isinstance(exponent, int) and exponent >= 0 else format(Decimal(0).quantize(d), "f")
    return format(d, "f")


# Valid dates already converted (a file repeats the same few dates; a calendar check is dear).
_X12_DATES: Final[dict[str, str]] = {}


def x12_date(value: str) -> str | None:
    """CCYYMMDD, or YYMMDD as 3040 and older send it, to ISO; '' gives None."""
    hit = _X12_DATES.get(value)
    if hit is not None:
        return hit
    v = value.strip()
    if not v:
        return None
    iso = _x12_date(v, value)
    if len(_X12_DATES) >= 4096:
        _X12_DATES.clear()
    _X12_DATES[value] = iso
    return iso


def _x12_date(v: str, value: str) -> str:
    if len(v) == 6 and v.isdecimal():
        yy = int(v[:2])
        # The X12 convention for 2-digit years: 00-49 are 20xx, 50-99 are 19xx.
        v = f"{20 if yy < 50 else 19}{v}"
    if len(v) != 8 or not v.isdecimal():
        raise ValueProblem("element.invalid_date", f"{value!r} is not a date (CCYYMMDD)")
    return _iso(v, value)


# Format code (2379) → length of the value. 718 is CCYYMMDD-CCYYMMDD, 719 CCYYMMDDHHMM-CCYYMMDDHHMM:
# for a period the gateway keeps its first date.
_EDIFACT_FORMATS: Final = {"102": 8, "101": 6, "203": 12, "204": 14, "201": 10, "718": 17, "719": 25}


def edifact_date(value: str, fmt: str | None) -> str | None:
    """A DTM C507 value in format ``fmt`` (2379) to ISO; the date part only."""
    v = value.strip()
    if not v:
        return None
    fmt = (fmt or "").strip() or ("102" if len(v) == 8 else "101" if len(v) == 6 else "203" if len(v) == 12 else "")
    width = _EDIFACT_FORMATS.get(fmt)
    if width is not None and len(v) != width:
        raise ValueProblem("element.invalid_date", f"{value!r} is not a date in format {fmt} ({width} digits)")
    if fmt in ("101", "201") or (fmt not in _EDIFACT_FORMATS and len(v) == 6):
        head = v[:6]
        if not head.isdecimal():
            raise ValueProblem("element.invalid_date", f"{value!r} is not a date in format {fmt}")
        yy = int(head[:2])
        return _iso(f"{20 if yy < 50 else 19}{head}", value)
    if fmt in ("102", "203", "204", "718") or len(v) >= 8:
        head = v[:8]
        if not head.isdecimal():
            raise ValueProblem("element.invalid_date", f"{value!r} is not a date in format {fmt}")
        return _iso(head, value)
    raise ValueProblem("element.invalid_date", f"{value!r} is not a date in a format the gateway reads ({fmt})")


_MONTH_DAYS: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _iso(ccyymmdd: str, original: str) -> str:
    if len(ccyymmdd) == 8 and ccyymmdd.isascii() and ccyymmdd.isdecimal():
        # Eight ASCII digits (nearly every date), checked as datetime.date checks them: its ISO
        # form is the same digits with dashes.
        y, m, d = int(ccyymmdd[:4]), int(ccyymmdd[4:6]), int(ccyymmdd[6:])
        leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
        if y >= 1 and 1 <= m <= 12 and 1 <= d <= (29 if m == 2 and leap else _MONTH_DAYS[m]):
            return f"{ccyymmdd[:4]}-{ccyymmdd[4:6]}-{ccyymmdd[6:]}"
    else:
        try:
            return date(int(ccyymmdd[:4]), int(ccyymmdd[4:6]), int(ccyymmdd[6:8])).isoformat()
        except ValueError:
            pass
    raise ValueProblem("element.invalid_date", f"{original!r} is not a real calendar date")


PARTY_ROLES: Final = ("buyer", "supplier", "ship_to", "bill_to", "remit_to")


def _flat_template(kind: str) -> dict[str, Any]:
    """Every contract key of a document, in contract order, all None (containers filled per copy)."""
    keys = ["kind", "standard", "version", "partner", "sender_id", "receiver_id", "control", "purpose", "currency",
            "parties", "lines", "references", "total_amount"]
    if kind == "purchase_order":
        keys += ["po_number", "po_date", "requested_delivery"]
    else:
        keys += ["invoice_number", "invoice_date", "po_number", "due_date", "tax_amount", "charges", "terms"]
    doc: dict[str, Any] = dict.fromkeys(keys)
    doc["kind"] = kind
    return doc


# A copy of a template is several times cheaper than building the dict key by key (one per set).
_TEMPLATES: Final = {kind: _flat_template(kind) for kind in ("purchase_order", "invoice")}
_CONTROL: Final[dict[str, Any]] = {"interchange": None, "group": None, "message": None, "envelope": "interchange",
                                   "test": False, "relaxed": None}
_PARTIES: Final[dict[str, Any]] = dict.fromkeys(PARTY_ROLES)


def new_document(kind: str, standard: str) -> dict[str, Any]:
    """A canonical dict with every contract key present and empty (translators.canonical)."""
    template = _TEMPLATES.get(kind)
    doc = template.copy() if template is not None else _flat_template(kind)
    doc["standard"] = standard
    control = doc["control"] = _CONTROL.copy()
    control["relaxed"] = []
    doc["parties"] = _PARTIES.copy()
    doc["lines"] = []
    doc["references"] = {}
    if kind != "purchase_order":
        doc["charges"] = []
    return doc


def common_order(lines: list[dict[str, Any]]) -> str | None:
    """The order number every line names, when they name one and the same; None when lines
    reference different orders (an invoice over several orders has no single po_number)."""
    orders = {line["po_number"] for line in lines if line["po_number"] is not None}
    return orders.pop() if len(orders) == 1 else None


def translate_code(table: dict[str, str], value: str | None) -> str | None:
    """Apply a partner's code table; codes it does not list pass through."""
    if value is None:
        return None
    return table.get(value, value)


def problem_finding(problem: ValueProblem, segment: list[Any], set_position: int, first_index: int, element: int,
                    component: int | None = None, severity: Severity | None = None) -> Finding:
    """Position a conversion problem on its segment and element."""
    kw: dict[str, Any] = {}
    if severity is not None:
        kw["severity"] = severity
    return finding(
        problem.code,
        str(problem),
        segment_tag=segment[0],
        segment_index=first_index + set_position - 1,
        set_position=set_position,
        element_index=element,
        component_index=component,
        **kw,
    )
