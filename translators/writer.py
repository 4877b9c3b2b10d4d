"""Canonical documents written back as EDI: the inverse of the message mappers.

Pure functions that turn canonical dicts (see :mod:`translators.canonical`) into an X12 or an
EDIFACT interchange. The tests (round trips), the benchmark and the demo use them to produce
partner files; they are not a full outbound EDI writer.

Every canonical field the mappers read back is written, in the segment and qualifier the
standard mapping reads it from:

X12 (850 / 810)
  BEG01 purpose, BEG03 po_number, BEG05 po_date / BIG01 invoice_date, BIG02 invoice_number,
  BIG04 po_number, BIG08 purpose; CUR02 currency; REF references; ITD12 terms; DTM*002
  requested_delivery, DTM*013 due_date; N1 loops (N1 name/qualifier/id, N3 address lines,
  N4 city/region/postal code/country, REF*TJ tax id) with BY SU ST BT RE; PO1 / IT1 line
  number, quantity, unit, price and the pairs BP (buyer part), VP (supplier part), UP (gtin);
  PID05 description; DTM*002 line requested_delivery; AMT*1 line amount; CTT + AMT*TT total
  (850); TDS total (N2), TXI*TX tax, SAC charges (SAC05 N2, SAC15 description) (810).

EDIFACT (ORDERS / INVOIC)
  BGM 1004 number, 1225 purpose; DTM 137 po_date, 2 requested_delivery, 3 invoice_date, 13
  due_date (format 102); RFF references (RFF+ON po_number on an invoice); NAD (C082 id and its
  agency as the qualifier, C080 name, C059 street lines, city, region, postal code, country)
  with BY SU DP IV RE, RFF+VA tax id; CUX currency; PAT C110 terms text; ALC + MOA 8 charges;
  LIN (gtin, EN), PIA (buyer part IN, supplier part SA), IMD description, QTY (21 / 47) with its
  unit, DTM 2 line requested_delivery, MOA 203 line amount, PRI AAA unit price (carrying the unit
  when there is no quantity); UNS, MOA 86 (order) / 77 (invoice) total, MOA 176 tax.

Values the standard cannot carry raise :class:`ValueError`: X12 text holding one of the
interchange's delimiters, CR/LF or other control characters anywhere, more decimals than an X12
implied-decimal (N2) field has, more than four EDIFACT street lines, an EDIFACT unit with neither
quantity nor price to hold it, text the declared EDIFACT character set cannot encode.
EDIFACT text is escaped with the release character (``?+ ?: ?' ??``) by
:func:`translators.model.render_segment`.
"""

from __future__ import annotations

from typing import Any

from decimal import Decimal, InvalidOperation

from translators.decoding import EDIFACT_CHARSETS
from translators.messages.edifact_common import PURPOSES as EDIFACT_PURPOSES
from translators.messages.x12_common import PURPOSES as X12_PURPOSES
from translators.model import Delimiters, render_segment

__all__ = ["write_x12", "write_edifact", "X12_PARTY_CODES", "EDIFACT_PARTY_CODES"]

# Party role → the qualifier written (X12 N101 / EDIFACT NAD 3035); each is the first choice of
# its role in the standard mapping (EDIFACT ship-to DP and bill-to IV are second choices there).
X12_PARTY_CODES = {"buyer": "BY", "supplier": "SU", "ship_to": "ST", "bill_to": "BT", "remit_to": "RE"}
EDIFACT_PARTY_CODES = {"buyer": "BY", "supplier": "SU", "ship_to": "DP", "bill_to": "IV", "remit_to": "RE"}

_X12_PURPOSE_CODES = {name: code for code, name in X12_PURPOSES.items()}
_EDIFACT_PURPOSE_CODES = {name: code for code, name in EDIFACT_PURPOSES.items()}

_X12_TYPES = {"purchase_order": ("850", "PO"), "invoice": ("810", "IN")}
_EDIFACT_TYPES = {"purchase_order": ("ORDERS", "220"), "invoice": ("INVOIC", "380")}


# --------------------------------------------------------------------------------------------
# Shared helpers


def _kind(doc: dict[str, Any]) -> str:
    kind = doc.get("kind")
    if kind not in _X12_TYPES:
        raise ValueError(f"document kind {kind!r} is neither 'purchase_order' nor 'invoice'")
    return str(kind)


def _check_control_chars(value: str, where: str) -> None:
    for ch in value:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ValueError(f"{where}: {value!r} holds the control character {ch!r}, which EDI cannot carry")


def _decimal(value: object, where: str) -> Decimal:
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{where}: {value!r} is not a decimal number") from None
    if not d.is_finite():
        raise ValueError(f"{where}: {value!r} is not a finite decimal number")
    return d


def _plain(value: object, where: str) -> str:
    """A canonical decimal as EDI text: the string as given when it is plain, else its 'f' form."""
    text = str(value).strip()
    d = _decimal(text, where)
    body = text.lstrip("+-")
    if body.replace(".", "", 1).isdecimal() and body.count(".") <= 1 and not body.startswith(".") and not body.endswith("."):
        return text.lstrip("+")
    return format(d, "f")


def _implied2(value: object, where: str) -> str:
    """A decimal as X12 N2 (implied two decimals): ``12.5`` → ``1250``."""
    d = _decimal(value, where)
    cents = d.scaleb(2)
    if cents != cents.to_integral_value():
        raise ValueError(f"{where}: {value!r} has more than 2 decimals, which an X12 N2 field cannot carry")
    return str(int(cents))


def _ccyymmdd(value: object, where: str) -> str:
    v = str(value).strip()
    if len(v) != 10 or v[4] != "-" or v[7] != "-" or not (v[:4] + v[5:7] + v[8:]).isdecimal():
        raise ValueError(f"{where}: {value!r} is not an ISO date (YYYY-MM-DD)")
    return v[:4] + v[5:7] + v[8:]


def _trim(elements: list[Any]) -> list[Any]:
    """Drop trailing empty elements (and trailing empty components of a composite)."""
    out = []
    for el in elements:
        if isinstance(el, list):
            while len(el) > 1 and el[-1] == "":
                el = el[:-1]
            if len(el) == 1:
                el = el[0]
        out.append(el)
    while len(out) > 1 and (out[-1] == "" or out[-1] == [""]):
        out.pop()
    return out


def _purpose_code(purpose: object, table: dict[str, str]) -> str:
    if purpose is None:
        return ""
    return table.get(str(purpose), str(purpose))


# --------------------------------------------------------------------------------------------
# X12


class _X12:
    def __init__(self, d: Delimiters):
        self.d = d
        self.forbidden = {c for c in (d.element, d.component, d.segment, d.repetition) if c}

    def v(self, value: object, where: str) -> str:
        """A text value, checked against the delimiters ('' for None)."""
        if value is None:
            return ""
        value = str(value)
        _check_control_chars(value, where)
        for ch in self.forbidden:
            if ch in value:
                raise ValueError(
                    f"{where}: {value!r} contains {ch!r}, a delimiter of this X12 interchange; X12 has no "
                    "release character, so the value cannot be written"
                )
        return value

    def seg(self, *elements: object) -> list[str]:
        return _trim([str(e) for e in elements])

    # -- one transaction set ------------------------------------------------------------------
    def transaction(self, doc: dict[str, Any], st_control: str, type_: str) -> list[list[str]]:
        v = self.v
        invoice = type_ == "810"
        segs: list[list[str]] = [["ST", type_, st_control]]
        if invoice:
            segs.append(self.seg(
                "BIG",
                _ccyymmdd(doc["invoice_date"], "invoice_date") if doc.get("invoice_date") else "",
                v(doc.get("invoice_number"), "invoice_number"),
                "",
                v(doc.get("po_number"), "po_number"),
                "", "", "",
                v(_purpose_code(doc.get("purpose"), _X12_PURPOSE_CODES), "purpose"),
            ))
        else:
            segs.append(self.seg(
                "BEG",
                v(_purpose_code(doc.get("purpose"), _X12_PURPOSE_CODES), "purpose"),
                "SA",
                v(doc.get("po_number"), "po_number"),
                "",
                _ccyymmdd(doc["po_date"], "po_date") if doc.get("po_date") else "",
            ))
        if doc.get("currency"):
            segs.append(["CUR", "BY" if not invoice else "SE", v(doc["currency"], "currency")])
        for q, value in (doc.get("references") or {}).items():
            segs.append(["REF", v(q, f"references qualifier {q!r}"), v(value, f"references.{q}")])
        if invoice and doc.get("terms"):
            segs.append(["ITD", "01", "3", "", "", "", "", "", "", "", "", "", v(doc["terms"], "terms")])
        if not invoice and doc.get("requested_delivery"):
            segs.append(["DTM", "002", _ccyymmdd(doc["requested_delivery"], "requested_delivery")])
        if invoice and doc.get("due_date"):
            segs.append(["DTM", "013", _ccyymmdd(doc["due_date"], "due_date")])
        for role, code in X12_PARTY_CODES.items():
            party = (doc.get("parties") or {}).get(role)
            if party is not None:
                segs += self.party(code, party, f"parties.{role}")
        for n, line in enumerate(doc.get("lines") or []):
            segs += self.line(line, "IT1" if invoice else "PO1", f"lines[{n}]")
        if invoice:
            total = doc.get("total_amount")
            segs.append(["TDS", _implied2(total, "total_amount") if total not in (None, "") else ""])
            if doc.get("tax_amount") not in (None, ""):
                segs.append(["TXI", "TX", _plain(doc["tax_amount"], "tax_amount")])
            for n, charge in enumerate(doc.get("charges") or []):
                segs.append(self.charge(charge, f"charges[{n}]"))
            segs.append(["CTT", str(len(doc.get("lines") or []))])
        else:
            segs.append(["CTT", str(len(doc.get("lines") or []))])
            if doc.get("total_amount") not in (None, ""):
                segs.append(["AMT", "TT", _plain(doc["total_amount"], "total_amount")])
        segs.append(["SE", str(len(segs) + 1), st_control])
        return segs

    def party(self, code: str, p: dict[str, Any], where: str) -> list[list[str]]:
        v = self.v
        segs = [self.seg("N1", code, v(p.get("name"), f"{where}.name"),
                         v(p.get("id_qualifier"), f"{where}.id_qualifier"), v(p.get("id"), f"{where}.id"))]
        a = p.get("address")
        if a:
            lines = [v(x, f"{where}.address.lines") for x in a.get("lines") or [] if x]
            for k in range(0, len(lines), 2):
                segs.append(["N3", *lines[k : k + 2]])
            n4 = [a.get("city"), a.get("region"), a.get("postal_code"), a.get("country")]
            if any(n4):
                segs.append(self.seg("N4", *(v(x, f"{where}.address") for x in n4)))
        if p.get("tax_id"):
            segs.append(["REF", "TJ", v(p["tax_id"], f"{where}.tax_id")])
        return segs

    def line(self, line: dict[str, Any], tag: str, where: str) -> list[list[str]]:
        v = self.v
        el = [
            tag,
            v(line.get("line_number"), f"{where}.line_number"),
            _plain(line["quantity"], f"{where}.quantity") if line.get("quantity") not in (None, "") else "",
            v(line.get("uom"), f"{where}.uom"),
            _plain(line["unit_price"], f"{where}.unit_price") if line.get("unit_price") not in (None, "") else "",
            "",
        ]
        for field, q in (("buyer_part", "BP"), ("supplier_part", "VP"), ("gtin", "UP")):
            if line.get(field):
                el += [q, v(line[field], f"{where}.{field}")]
        segs = [self.seg(*el)]
        if line.get("description"):
            segs.append(["PID", "F", "", "", "", v(line["description"], f"{where}.description")])
        if line.get("requested_delivery"):
            segs.append(["DTM", "002", _ccyymmdd(line["requested_delivery"], f"{where}.requested_delivery")])
        if line.get("amount") not in (None, ""):
            segs.append(["AMT", "1", _plain(line["amount"], f"{where}.amount")])
        return segs

    def charge(self, c: dict[str, Any], where: str) -> list[str]:
        amount = c.get("amount")
        indicator, n2 = "C", ""
        if amount not in (None, ""):
            d = _decimal(amount, f"{where}.amount")
            indicator = "A" if d < 0 else "C"
            n2 = _implied2(abs(d), f"{where}.amount")
        return self.seg("SAC", indicator, self.v(c.get("code"), f"{where}.code"), "", "", n2,
                        "", "", "", "", "", "", "", "", "", self.v(c.get("description"), f"{where}.description"))


def write_x12(
    docs: list[dict[str, Any]],
    *,
    sender: tuple[str, str] = ("ZZ", "SENDER"),
    receiver: tuple[str, str] = ("ZZ", "RECEIVER"),
    control: int = 1,
    version: str = "004010",
    delimiters: Delimiters | None = None,
    date: str = "20261122",
    time: str = "1200",
    newlines: bool = False,
) -> bytes:
    """Canonical documents as one X12 interchange (UTF-8 bytes).

    One functional group per kind (GS*PO with the 850s, GS*IN with the 810s, in order of first
    appearance); ISA13 is ``control`` (9 digits), the groups' GS06 are ``control``,
    ``control + 1``; the sets' ST02 count 0001, 0002 ... inside each group. SE01, GE01 and
    IEA01 are counted. ``sender`` / ``receiver`` are (ISA05/07 qualifier, ISA06/08 id); the ids
    also go into GS02 / GS03. ``newlines`` puts a line break after every segment terminator.
    """
    if not (version[:6].isdecimal() and len(version) >= 6):
        raise ValueError(f"X12 version {version!r} is not a GS08 version such as 004010")
    isa12 = version[:5]
    if delimiters is None:
        delimiters = Delimiters(element="*", component=">", segment="~", repetition="^" if isa12 >= "00402" else None)
    d = delimiters
    specials = [d.element, d.component, d.segment] + ([d.repetition] if d.repetition else [])
    if any(len(c) != 1 or c.isalnum() or c in " \r\n" for c in specials) or len(set(specials)) != len(specials):
        raise ValueError(f"X12 delimiters {specials!r} must be distinct single non-alphanumeric characters")
    if isa12 >= "00402" and not d.repetition:
        raise ValueError(f"X12 {version} carries a repetition separator in ISA11: give delimiters.repetition")
    if not (isinstance(control, int) and 0 <= control <= 999_999_999):
        raise ValueError(f"control {control!r} must be an integer 0..999999999 (ISA13 has 9 digits)")
    if len(date) != 8 or not date.isdecimal() or len(time) != 4 or not time.isdecimal():
        raise ValueError(f"date {date!r} / time {time!r} must be CCYYMMDD and HHMM")
    w = _X12(d)
    for (q, ident), what in ((sender, "sender"), (receiver, "receiver")):
        w.v(q, f"{what} qualifier")
        w.v(ident, f"{what} id")
        if len(q) != 2 or not 1 <= len(ident) <= 15:
            raise ValueError(f"{what} {(q, ident)!r}: ISA qualifiers have 2 characters and ids 1 to 15")

    groups: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        groups.setdefault(_kind(doc), []).append(doc)

    isa_control = f"{control:09d}"
    segs: list[list[str]] = [[
        "ISA", "00", " " * 10, "00", " " * 10,
        sender[0], sender[1].ljust(15), receiver[0], receiver[1].ljust(15),
        date[2:], time, (d.repetition or "U") if isa12 >= "00402" else "U", isa12, isa_control, "0", "P", d.component,
    ]]
    for g, (kind, group_docs) in enumerate(groups.items()):
        type_, functional_id = _X12_TYPES[kind]
        gs_control = str(control + g)
        segs.append(["GS", functional_id, sender[1], receiver[1], date, time, gs_control, "X", version])
        for n, doc in enumerate(group_docs, start=1):
            segs += w.transaction(doc, f"{n:04d}", type_)
        segs.append(["GE", str(len(group_docs)), gs_control])
    segs.append(["IEA", str(len(groups)), isa_control])
    end = "\n" if newlines else ""
    return "".join(render_segment(s, "x12", d) + end for s in segs).encode("utf-8")


# --------------------------------------------------------------------------------------------
# EDIFACT


class _Edifact:
    def __init__(self, d: Delimiters, decimal_mark: str):
        self.d = d
        self.dm = decimal_mark

    @staticmethod
    def v(value: object, where: str) -> str:
        if value is None:
            return ""
        value = str(value)
        _check_control_chars(value, where)
        return value

    def num(self, value: object, where: str) -> str:
        if value in (None, ""):
            return ""
        return _plain(value, where).replace(".", self.dm)

    def message(self, doc: dict[str, Any], ref: str, type_: str, directory: str) -> list[list[Any]]:
        v, num = self.v, self.num
        invoice = type_ == "INVOIC"
        doc_code = _EDIFACT_TYPES["invoice" if invoice else "purchase_order"][1]
        release = directory[1:] if len(directory) == 4 else directory
        agency = "UN"
        segs: list[list[Any]] = [["UNH", ref, [type_, directory[:1], release, agency]]]
        number = "invoice_number" if invoice else "po_number"
        segs.append(_trim(["BGM", doc_code, v(doc.get(number), number),
                           v(_purpose_code(doc.get("purpose"), _EDIFACT_PURPOSE_CODES), "purpose")]))
        dates = (("3", "invoice_date"), ("13", "due_date")) if invoice else (("137", "po_date"), ("2", "requested_delivery"))
        for q, field in dates:
            if doc.get(field):
                segs.append(["DTM", [q, _ccyymmdd(doc[field], field), "102"]])
        refs = dict(doc.get("references") or {})
        if invoice and doc.get("po_number"):
            po = v(doc["po_number"], "po_number")
            if refs.get("ON", po) != po:
                raise ValueError(
                    f"po_number {po!r} and references.ON {refs['ON']!r} differ: an INVOIC carries both in RFF+ON"
                )
            refs.pop("ON", None)
            segs.append(["RFF", ["ON", po]])
        for q, value in refs.items():
            segs.append(["RFF", [v(q, f"references qualifier {q!r}"), v(value, f"references.{q}")]])
        for role, code in EDIFACT_PARTY_CODES.items():
            party = (doc.get("parties") or {}).get(role)
            if party is not None:
                segs += self.party(code, party, f"parties.{role}")
        if doc.get("currency"):
            segs.append(["CUX", ["2", v(doc["currency"], "currency"), "9" if not invoice else "4"]])
        if invoice and doc.get("terms"):
            segs.append(["PAT", "1", ["", "", "", v(doc["terms"], "terms")]])
        if invoice:
            for n, charge in enumerate(doc.get("charges") or []):
                segs += self.charge(charge, f"charges[{n}]")
        for n, line in enumerate(doc.get("lines") or []):
            segs += self.line(line, invoice, f"lines[{n}]")
        segs.append(["UNS", "S"])
        if doc.get("total_amount") not in (None, ""):
            segs.append(["MOA", ["77" if invoice else "86", num(doc["total_amount"], "total_amount")]])
        if invoice and doc.get("tax_amount") not in (None, ""):
            segs.append(["MOA", ["176", num(doc["tax_amount"], "tax_amount")]])
        segs.append(["UNT", str(len(segs) + 1), ref])
        return segs

    def party(self, code: str, p: dict[str, Any], where: str) -> list[list[Any]]:
        v = self.v
        a = p.get("address") or {}
        lines = [v(x, f"{where}.address.lines") for x in a.get("lines") or [] if x]
        if len(lines) > 4:
            raise ValueError(f"{where}.address.lines: {len(lines)} street lines; an EDIFACT NAD (C059) holds 4")
        c082 = ["", "", ""]
        if p.get("id"):
            c082 = [v(p["id"], f"{where}.id"), "", v(p.get("id_qualifier"), f"{where}.id_qualifier")]
        elif p.get("id_qualifier"):
            raise ValueError(f"{where}: an id qualifier without an id cannot be written in a NAD (C082)")
        segs = [_trim([
            "NAD", code, c082, "", [v(p.get("name"), f"{where}.name")], lines or [""],
            v(a.get("city"), f"{where}.address.city"), [v(a.get("region"), f"{where}.address.region")],
            v(a.get("postal_code"), f"{where}.address.postal_code"), v(a.get("country"), f"{where}.address.country"),
        ])]
        if p.get("tax_id"):
            segs.append(["RFF", ["VA", v(p["tax_id"], f"{where}.tax_id")]])
        return segs

    def charge(self, c: dict[str, Any], where: str) -> list[list[Any]]:
        amount = c.get("amount")
        indicator, value = "C", ""
        if amount not in (None, ""):
            d = _decimal(amount, f"{where}.amount")
            indicator = "A" if d < 0 else "C"
            value = self.num(_plain(amount, f"{where}.amount").lstrip("-"), f"{where}.amount")
        code = self.v(c.get("code"), f"{where}.code")
        desc = self.v(c.get("description"), f"{where}.description")
        segs = [_trim(["ALC", indicator, "", "", "", [code, "", "", desc]])]
        if value:
            segs.append(["MOA", ["8", value]])
        return segs

    def line(self, line: dict[str, Any], invoice: bool, where: str) -> list[list[Any]]:
        v, num = self.v, self.num
        lin: list[Any] = ["LIN", v(line.get("line_number"), f"{where}.line_number"), ""]
        if line.get("gtin"):
            lin.append([v(line["gtin"], f"{where}.gtin"), "EN"])
        segs = [_trim(lin)]
        pia: list[Any] = ["PIA", "5"]
        for field, q in (("buyer_part", "IN"), ("supplier_part", "SA")):
            if line.get(field):
                pia.append([v(line[field], f"{where}.{field}"), q])
        if len(pia) > 2:
            segs.append(pia)
        if line.get("description"):
            segs.append(["IMD", "F", "", ["", "", "", v(line["description"], f"{where}.description")]])
        uom = v(line.get("uom"), f"{where}.uom")
        has_qty = line.get("quantity") not in (None, "")
        has_price = line.get("unit_price") not in (None, "")
        if has_qty:
            segs.append(_trim(["QTY", ["47" if invoice else "21", num(line["quantity"], f"{where}.quantity"), uom]]))
        elif uom and not has_price:
            raise ValueError(f"{where}.uom: {uom!r} needs a quantity (QTY) or a unit price (PRI) to travel in EDIFACT")
        if line.get("requested_delivery"):
            segs.append(["DTM", ["2", _ccyymmdd(line["requested_delivery"], f"{where}.requested_delivery"), "102"]])
        if line.get("amount") not in (None, ""):
            segs.append(["MOA", ["203", num(line["amount"], f"{where}.amount")]])
        if has_price:
            pri = ["AAA", num(line["unit_price"], f"{where}.unit_price")]
            if uom and not has_qty:
                pri += ["", "", "", uom]
            segs.append(["PRI", pri])
        return segs


def write_edifact(
    docs: list[dict[str, Any]],
    *,
    sender: tuple[str, str] = ("SENDER", "14"),
    receiver: tuple[str, str] = ("RECEIVER", "14"),
    control: str = "1",
    directory: str = "D96A",
    decimal_mark: str = ".",
    una: bool = True,
    charset: str = "UNOC",
    syntax_version: str = "3",
    delimiters: Delimiters | None = None,
    date: str = "20261122",
    time: str = "1200",
    newlines: bool = False,
) -> bytes:
    """Canonical documents as one EDIFACT interchange (ORDERS / INVOIC, no UNG groups).

    ``sender`` / ``receiver`` are (UNB id, code qualifier); ``control`` is the UNB/UNZ
    interchange reference, the messages are numbered 1, 2 ... (UNH/UNT 0062); UNT and UNZ
    counts are computed. ``directory`` goes into UNH S009 (``D96A`` → ``D:96A:UN``).
    Numbers use ``decimal_mark`` (stated in the UNA). The bytes are encoded in the character
    set ``charset`` names (UNOC: ISO 8859-1, UNOW / UNOY: UTF-8 ...); text it cannot encode is
    a ValueError. Every value is escaped with the release character. Without ``una`` the
    default service characters ``:+.? '`` must be the ones in use.
    """
    if decimal_mark not in (".", ","):
        raise ValueError(f"decimal mark {decimal_mark!r} must be '.' or ','")
    if delimiters is None:
        delimiters = Delimiters(element="+", component=":", segment="'", repetition=None, release="?",
                                decimal=decimal_mark)
    d = delimiters
    if not d.release:
        raise ValueError("EDIFACT delimiters need a release character to escape values")
    specials = [d.component, d.element, d.release, d.segment] + ([d.repetition] if d.repetition else [])
    if any(len(c) != 1 or c.isalnum() or c in " \r\n" or c == decimal_mark for c in specials) \
            or len(set(specials)) != len(specials):
        raise ValueError(f"EDIFACT service characters {specials!r} must be distinct single non-alphanumeric "
                         f"characters other than the decimal mark")
    default = (d.component, d.element, d.release, d.segment, d.repetition) == (":", "+", "?", "'", None)
    if not una and not default:
        raise ValueError("service characters other than the defaults must be stated in a UNA")
    codec = EDIFACT_CHARSETS.get(charset)
    if codec is None:
        raise ValueError(f"syntax identifier {charset!r} is not one the gateway reads ({', '.join(EDIFACT_CHARSETS)})")
    if len(date) != 8 or not date.isdecimal() or len(time) != 4 or not time.isdecimal():
        raise ValueError(f"date {date!r} / time {time!r} must be CCYYMMDD and HHMM")
    w = _Edifact(d, decimal_mark)
    for (ident, q), what in ((sender, "sender"), (receiver, "receiver")):
        if not ident:
            raise ValueError(f"{what} id is empty")
        w.v(ident, f"{what} id")
        w.v(q, f"{what} qualifier")
    if not control:
        raise ValueError("the interchange control reference is empty")
    w.v(control, "control")

    segs: list[list[Any]] = [_trim([
        "UNB", [charset, str(syntax_version)], [sender[0], sender[1] or ""], [receiver[0], receiver[1] or ""],
        [date[2:] if str(syntax_version) < "4" else date, time], control,
    ])]
    count = 0
    for n, doc in enumerate(docs, start=1):
        type_ = _EDIFACT_TYPES[_kind(doc)][0]
        segs += w.message(doc, str(n), type_, directory)
        count += 1
    segs.append(["UNZ", str(count), control])
    end = "\n" if newlines else ""
    text = "".join(render_segment(s, "edifact", d) + end for s in segs)
    if una:
        text = f"UNA{d.component}{d.element}{decimal_mark}{d.release}{d.repetition or ' '}{d.segment}{end}" + text
    try:
        return text.encode(codec)
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise ValueError(
            f"{bad!r} cannot be encoded in {charset} ({codec}); use UNOW or UNOY (UTF-8) for such text"
        ) from None
