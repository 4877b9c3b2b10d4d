"""Property tests: canonical → EDI → canonical round trips, and mutated files that never crash.

**Round trips.** Hypothesis builds canonical documents, :mod:`translators.writer` writes them
as X12 850 / 810 or EDIFACT ORDERS / INVOIC, :func:`translators.translate` reads them back, and
the result must equal the original on *every* canonical field (the whole dict is compared),
after the normalisations the contract defines:

- decimals (``translators.messages.common.decimal_text``): leading zeros and a leading ``+``
  go, a decimal comma becomes a point, the number of decimals *as written* is kept
  (``"1.50"`` stays ``"1.50"``, ``"007.5"`` becomes ``"7.5"``) and zero loses its sign
  (``"-0.00"`` → ``"0.00"``). X12 implied-decimal (N2) fields — TDS01 total and SAC05 charge
  amounts — always come back with exactly two decimals (``"12.5"`` → ``"12.50"``);
- the envelope fields (standard, version, sender/receiver ids, control numbers) are the
  writer's, ``partner`` is null (no partner directory);
- the standard mapping's party fallbacks: the supplier falls back to the remit-to party, and
  in X12 the buyer to the bill-to party (N1*BT is in both lists);
- an EDIFACT invoice's ``po_number`` travels as RFF+ON, so it is also ``references["ON"]``;
- an address with nothing in it is null; texts are generated stripped (the mappers strip).

X12 text is drawn from a safe alphabet (no delimiter of any variant: X12 has no release
character — the writer raises ValueError for those). EDIFACT text includes the service
characters ``+ : ' ? *`` and non-ASCII letters (UTF-8 under UNOW/UNOY, Latin-1 under UNOC),
with decimal point and decimal comma, with and without UNA, syntax 3 and 4, other service
characters.

**Mutations.** Every corpus file, mutated (byte ranges deleted / duplicated, bytes flipped or
inserted — delimiters among them —, truncation, two segments swapped, a digit of a trailer count
changed, a digit replaced by a Unicode digit), fed to ``translate`` and ``envelope.read_bytes``: only TranslationError may come out,
and every document translated is valid canonical JSON. ``gateway translate`` on a few mutated
files exits 0 or 1 and never prints a traceback.

Everything runs derandomized (fixed seeds, no example database) so CI is reproducible.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import string
import subprocess
import sys
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests import corpus
from translators import translate
from translators.canonical import PARTY_ROLES, new_document, validate_canonical
from translators.envelope import read_bytes
from translators.findings import TranslationError
from translators.messages.edifact_common import PURPOSES as EDIFACT_PURPOSES
from translators.messages.x12_common import PURPOSES as X12_PURPOSES
from translators.model import Delimiters
from translators.writer import write_edifact, write_x12

REPO = Path(__file__).resolve().parent.parent

ROUND_TRIP = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------------------------
# Strategies: canonical documents

X12_DELIMITER_CHARS = "*>~^|\\':!"
X12_ALPHABET = string.ascii_letters + string.digits + " -./#&,()@$%=_;" + "éÜñß"
assert not set(X12_ALPHABET) & set(X12_DELIMITER_CHARS)

EDIFACT_SPECIALS = "+:'?*|^~\\"
UNICODE_CHARS = st.one_of(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S")),
    st.sampled_from(list(EDIFACT_SPECIALS) + [" ", "ä", "Ł", "Ж", "日", "€"]),
)
# Latin-1 letters À..ÿ: as single bytes they are never valid UTF-8, so the reader's "valid
# UTF-8 wins" rule cannot reinterpret them.
LATIN1_CHARS = st.sampled_from(list(string.ascii_letters + string.digits + " .-/" + EDIFACT_SPECIALS)
                               + [chr(c) for c in range(0xC0, 0x100)])


def texts(chars, max_size: int = 18):
    if isinstance(chars, str):
        chars = st.sampled_from(list(chars))
    return st.text(chars, min_size=1, max_size=max_size).map(str.strip).filter(bool)


def opt(strategy):
    return st.one_of(st.none(), strategy)


def _decimal_text(parts) -> str:
    pad, whole, frac, negative = parts
    out = f"{pad}{whole}" + (f".{frac}" if frac else "")
    return "-" + out if negative else out


def decimals(places: int = 4, signed: bool = True, max_int: int = 10**9):
    """Canonical decimal strings: up to ``places`` decimals, sometimes zero-padded or -0."""
    return st.tuples(
        st.sampled_from(["", "", "", "0", "00"]),
        st.integers(0, max_int),
        st.text("0123456789", max_size=places),
        st.booleans() if signed else st.just(False),
    ).map(_decimal_text)


iso_dates = st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)).map(date.isoformat)
currencies = st.sampled_from(["USD", "EUR", "GBP", "JPY", "CHF", "PLN"])
uoms = st.sampled_from(["EA", "CA", "PC", "KGM", "PCE", "BX", "LB", "C62"])
x12_uoms = st.sampled_from(["EA", "CA", "PC", "BX", "LB", "KG"])  # X12 355 is ID 2/2
x12_quantities = decimals(places=2, signed=False, max_int=10**5)
ID_QUALIFIERS = {"x12": ["1", "9", "91", "92", "ZZ", "UL"], "edifact": ["9", "16", "91", "92", "ZZZ"]}
# Not PO / ON: an invoice reads its PO number from those (see expected()).
REF_QUALIFIERS = {"x12": ["IA", "DP", "VR", "CT", "ZZ", "AH", "VN"], "edifact": ["CT", "AAK", "DQ", "IA", "VN", "ZZZ", "AAB"]}
CHARGE_CODES = {"x12": ["D240", "C310", "F050", "H850"], "edifact": ["FC", "ABW", "DL", "SH", "TAE"]}
PURPOSE_NAMES = {"x12": sorted(set(X12_PURPOSES.values())) + ["ZZ"],
                 "edifact": sorted(set(EDIFACT_PURPOSES.values())) + ["99"]}
TEXT = {"x12": texts(X12_ALPHABET), "unicode": texts(UNICODE_CHARS), "latin1": texts(LATIN1_CHARS)}


def _nonempty_address(a: dict) -> bool:
    return bool(a["lines"]) or any(a[k] for k in ("city", "region", "postal_code", "country"))


def _party(p: dict) -> dict:
    if p["id"] is None:
        p["id_qualifier"] = None
    return p


def _line(standard: str):
    def fix(line: dict) -> dict:
        if standard == "edifact" and line["quantity"] is None and line["unit_price"] is None:
            line["uom"] = None  # nothing in EDIFACT holds a unit without a QTY or a PRI
        return line
    return fix


def _document(kind: str, standard: str):
    def build(fields: dict) -> dict:
        doc = new_document(kind, standard)
        doc.update(fields)
        validate_canonical(doc)
        return doc
    return build


@functools.cache
def documents(standard: str, kind: str, alphabet: str):
    """Canonical documents of one kind, as the writer for ``standard`` can carry them."""
    text = TEXT[alphabet]
    x12 = standard == "x12"
    x12_invoice = x12 and kind == "invoice"
    address = st.fixed_dictionaries({
        "lines": st.lists(text, max_size=4 if not x12 else 5),
        "city": opt(text),
        "region": opt(text),
        "postal_code": opt(text),
        "country": opt(st.sampled_from(["US", "DE", "PL", "FR"]) | text),
    }).filter(_nonempty_address)
    party = st.fixed_dictionaries({
        "name": opt(text),
        "id": opt(text),
        "id_qualifier": opt(st.sampled_from(ID_QUALIFIERS[standard])),
        "tax_id": opt(text),
        "address": opt(address),
    }).map(_party)
    line = st.fixed_dictionaries({
        "line_number": opt(st.integers(1, 99999).map(str) | text),
        # An X12 IT1 without IT102 / IT104 is refused (rightly).
        # X12 IT102 is R 1/10 and PO102 R 1/15 (digits, zero padding included).
        "quantity": (x12_quantities if x12_invoice else opt(x12_quantities if x12 else decimals(signed=False))),
        "uom": opt(x12_uoms if standard == "x12" else uoms),
        "unit_price": decimals() if x12_invoice else opt(decimals()),
        "amount": opt(decimals()),
        "buyer_part": opt(text),
        "supplier_part": opt(text),
        "gtin": opt(st.text("0123456789", min_size=8, max_size=14) | text),
        "description": opt(text),
        "requested_delivery": opt(iso_dates),
        "po_number": st.none(),  # the writer states the order once, in the header
    }).map(_line(standard))
    purposes = st.sampled_from(PURPOSE_NAMES[standard])
    fields = {
        "purpose": purposes if x12 and kind == "purchase_order" else opt(purposes),
        "currency": opt(currencies),
        "references": st.dictionaries(st.sampled_from(REF_QUALIFIERS[standard]), text, max_size=3),
        "parties": st.fixed_dictionaries({role: opt(party) for role in PARTY_ROLES}),
        "lines": st.lists(line, min_size=1 if x12 else 0, max_size=4),
    }
    if kind == "purchase_order":
        fields.update({
            # X12 BEG03 and BEG05 are mandatory: an 850 without them is refused (rightly).
            "po_number": text if x12 else opt(text),
            "po_date": iso_dates if x12 else opt(iso_dates),
            "requested_delivery": opt(iso_dates),
            "total_amount": opt(decimals()),
        })
    else:
        # TDS01 and SAC05 are N2 (implied two decimals): at most two decimals in X12; TDS is mandatory.
        money = decimals(places=2) if x12 else decimals()
        fields.update({
            "invoice_number": text if x12 else opt(text),
            "invoice_date": iso_dates,  # BIG01 / the INVOIC message date are mandatory
            "po_number": opt(text),
            "due_date": opt(iso_dates),
            "tax_amount": opt(decimals()),
            "terms": opt(text),
            "total_amount": money if x12 else opt(money),
            "charges": st.lists(st.fixed_dictionaries({
                "code": opt(st.sampled_from(CHARGE_CODES[standard])),
                "description": opt(text),
                "amount": opt(money),
            }), max_size=3),
        })
    return st.fixed_dictionaries(fields).map(_document(kind, standard))


X12_VARIANTS = [
    {"version": "004010"},
    {"version": "005010"},
    {"version": "003040"},
    {"version": "004010", "delimiters": Delimiters(element="|", component="\\", segment="'")},
    {"version": "005010", "delimiters": Delimiters(element="*", component=":", segment="!", repetition="^")},
    {"version": "004010", "newlines": True},
]

EDIFACT_VARIANTS = [
    {"charset": "UNOW"},
    {"charset": "UNOW", "decimal_mark": ","},
    {"charset": "UNOW", "una": False},
    {"charset": "UNOY", "decimal_mark": ",", "una": False},
    {"charset": "UNOC"},
    {"charset": "UNOC", "decimal_mark": ",", "newlines": True},
    {"charset": "UNOW", "syntax_version": "4",
     "delimiters": Delimiters(element="+", component=":", segment="'", repetition="*", release="?")},
    {"charset": "UNOW", "decimal_mark": ",",
     "delimiters": Delimiters(element="|", component="^", segment="~", release="\\", decimal=",")},
]


@st.composite
def x12_cases(draw, kind: str):
    variant = dict(draw(st.sampled_from(X12_VARIANTS)))
    variant["control"] = draw(st.integers(0, 999_999_999))
    doc = draw(documents("x12", kind, "x12"))
    return doc, variant


@st.composite
def edifact_cases(draw, kind: str):
    variant = dict(draw(st.sampled_from(EDIFACT_VARIANTS)))
    variant["control"] = draw(st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=14))
    variant["directory"] = draw(st.sampled_from(["D96A", "D01B", "D93A"]))
    doc = draw(documents("edifact", kind, "latin1" if variant["charset"] == "UNOC" else "unicode"))
    return doc, variant


# --------------------------------------------------------------------------------------------
# What must come back


def canon_decimal(value: str | None, implied: int = 0) -> str | None:
    """The canonical form of a decimal after a trip through EDI (see the module docstring)."""
    if value is None:
        return None
    d = Decimal(value)
    if implied:
        d = d.quantize(Decimal(1).scaleb(-implied))
    if d == 0:
        d = abs(d)
    return format(d, "f")


def _expected_party(p: dict | None) -> dict | None:
    if p is None:
        return None
    p = dict(p)
    a = p["address"]
    if a is not None:
        a = dict(a, lines=[x for x in a["lines"] if x])
        if not a["lines"] and not any(a[k] for k in ("city", "region", "postal_code", "country")):
            a = None
    p["address"] = a
    return p


def expected(doc: dict, standard: str, variant: dict, position: int = 1, group: int = 0) -> dict:
    """The canonical document the translator must give back for ``doc`` written with ``variant``."""
    out = json.loads(json.dumps(doc))
    out["standard"] = standard
    out["partner"] = None
    control = variant.get("control", 1 if standard == "x12" else "1")
    if standard == "x12":
        out["version"] = variant.get("version", "004010")
        out["sender_id"], out["receiver_id"] = "SENDER", "RECEIVER"
        out["control"] = {"interchange": f"{control:09d}", "group": str(control + group), "message": f"{position:04d}",
                          "envelope": "interchange", "test": False, "relaxed": []}
    else:
        out["version"] = variant.get("directory", "D96A")
        out["sender_id"], out["receiver_id"] = "SENDER", "RECEIVER"
        out["control"] = {"interchange": control, "group": None, "message": str(position),
                          "envelope": "interchange", "test": False, "relaxed": []}
    invoice = doc["kind"] == "invoice"
    implied = 2 if standard == "x12" and invoice else 0
    out["total_amount"] = canon_decimal(doc["total_amount"], implied)
    for line in out["lines"]:
        for k in ("quantity", "unit_price", "amount"):
            line[k] = canon_decimal(line[k])
    parties = {role: _expected_party(p) for role, p in out["parties"].items()}
    if parties["supplier"] is None:
        parties["supplier"] = parties["remit_to"]
    if standard == "x12" and parties["buyer"] is None:
        parties["buyer"] = parties["bill_to"]
    out["parties"] = json.loads(json.dumps(parties))
    if invoice:
        out["tax_amount"] = canon_decimal(doc["tax_amount"])
        for c in out["charges"]:
            c["amount"] = canon_decimal(c["amount"], implied)
        if standard == "edifact" and doc["po_number"] is not None:
            out["references"]["ON"] = doc["po_number"]
    return out


def translated(data: bytes) -> list[dict]:
    result = translate(data)
    errors = [f.describe() for f in result.errors()]
    assert result.ok and not errors, "\n".join(errors) + "\n" + data.decode("utf-8", "replace")
    docs = [d.document for d in result.documents]
    for d in docs:
        validate_canonical(d)
    return docs


def assert_round_trip(doc: dict, standard: str, variant: dict) -> None:
    writer = write_x12 if standard == "x12" else write_edifact
    data = writer([doc], **variant)
    note(data.decode("utf-8", "replace"))
    (back,) = translated(data)
    want = expected(doc, standard, variant)
    diff = {k: (want[k], back.get(k)) for k in want if want[k] != back.get(k)}
    assert not diff, f"fields differ (expected, translated): {diff}"
    assert back == want


# --------------------------------------------------------------------------------------------
# Round trips


@ROUND_TRIP
@given(case=x12_cases("purchase_order"))
def test_x12_850_round_trip(case):
    assert_round_trip(case[0], "x12", case[1])


@ROUND_TRIP
@given(case=x12_cases("invoice"))
def test_x12_810_round_trip(case):
    assert_round_trip(case[0], "x12", case[1])


@ROUND_TRIP
@given(case=edifact_cases("purchase_order"))
def test_edifact_orders_round_trip(case):
    assert_round_trip(case[0], "edifact", case[1])


@ROUND_TRIP
@given(case=edifact_cases("invoice"))
def test_edifact_invoic_round_trip(case):
    assert_round_trip(case[0], "edifact", case[1])


def _kinds():
    return st.lists(st.sampled_from(["purchase_order", "invoice"]), min_size=1, max_size=5)


@settings(ROUND_TRIP, max_examples=25)
@given(data=st.data(), kinds=_kinds())
def test_x12_interchange_with_both_kinds(data, kinds):
    """One GS per kind, in order of first appearance; counts and control numbers all agree."""
    docs = [data.draw(documents("x12", k, "x12")) for k in kinds]
    variant = {"control": data.draw(st.integers(0, 999_999_998))}
    raw = write_x12(docs, **variant)
    result = translate(raw)
    assert result.ok and not [f for i in result.interchanges for f in i.findings], \
        [f.describe() for i in result.interchanges for f in i.findings]
    order = list(dict.fromkeys(kinds))
    want = []
    for g, kind in enumerate(order):
        group = [d for d in docs if d["kind"] == kind]
        want += [expected(d, "x12", variant, n, g) for n, d in enumerate(group, start=1)]
    assert [d.document for d in result.documents] == want
    assert raw.count(b"~GS*") == len(order)


@settings(ROUND_TRIP, max_examples=25)
@given(data=st.data(), kinds=_kinds())
def test_edifact_interchange_with_both_kinds(data, kinds):
    docs = [data.draw(documents("edifact", k, "unicode")) for k in kinds]
    variant = {"charset": "UNOW", "control": data.draw(st.text(string.digits, min_size=1, max_size=9))}
    result = translate(write_edifact(docs, **variant))
    assert result.ok and not [f for i in result.interchanges for f in i.findings]
    assert [d.document for d in result.documents] == [
        expected(d, "edifact", variant, n) for n, d in enumerate(docs, start=1)
    ]


@pytest.mark.parametrize("value", ["A*B", "A~B", "A>B", "line\nbreak"])
def test_x12_writer_refuses_what_x12_cannot_carry(value):
    doc = new_document("purchase_order", "x12")
    doc.update(purpose="original", po_number=value, po_date="2026-11-01")
    with pytest.raises(ValueError, match="po_number"):
        write_x12([doc])


def test_writer_refuses_lossy_values():
    inv = new_document("invoice", "x12")
    inv.update(invoice_number="1", invoice_date="2026-11-01", total_amount="1.005")
    with pytest.raises(ValueError, match="N2"):
        write_x12([inv])
    po = new_document("purchase_order", "edifact")
    po.update(po_number="Łódź")
    with pytest.raises(ValueError, match="UNOW"):
        write_edifact([po], charset="UNOA")
    assert translate(write_edifact([po], charset="UNOW")).canonical[0]["po_number"] == "Łódź"


def test_edifact_release_characters_are_written():
    po = new_document("purchase_order", "edifact")
    po.update(po_number="A+B:C'D?E")
    raw = write_edifact([po])
    assert b"BGM+220+A?+B?:C?'D??E'" in raw
    assert translate(raw).canonical[0]["po_number"] == "A+B:C'D?E"


# --------------------------------------------------------------------------------------------
# Mutated corpus files


MUTATION = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

INSERTS = [b"~", b"*", b":", b">", b"^", b"'", b"+", b"?", b"??", b"?'", b"\n", b"\r\n", b"\x00", b"\xff", b"\xc3",
           b"\xe2\x82", b"ISA", b"UNA", b"UNB+", b"UNH+", b"ST*", b"SE*", b"UNT+", b"UNZ+", b"IEA*", b"GS*", b"GE*",
           b"UNA:+.? '", b"~ST*850*1~", b"'UNH+1+ORDERS:D:96A:UN'", b"-", b".", b",", b"9" * 20, b"\xef\xbb\xbf"]

UNICODE_DIGITS = [b"\xb2", "\u00b2".encode(), "\u0663".encode(), "\uff15".encode()]  # ² (Latin-1, UTF-8), ٣, ５
_COUNT = re.compile(rb"(?:SE|GE|IEA|UNT|UNZ|UNE|CTT)[^A-Za-z0-9\s](\d+)")


@functools.cache
def _sample_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def _terminator(data: bytes) -> bytes:
    start = data.find(b"ISA")
    if 0 <= start and len(data) > start + 105 and data.find(b"UNB") < 0:
        return data[start + 105 : start + 106]
    una = data.find(b"UNA")
    if 0 <= una and len(data) > una + 8:
        return data[una + 8 : una + 9]
    return b"'"


def _mutate(data: bytes, op: tuple) -> bytes:
    kind, a, b = op
    n = len(data)
    if n == 0:
        return b if kind == "insert" else data
    i = a % n
    if kind == "delete":
        return data[:i] + data[i + 1 + b % 200 :]
    if kind == "duplicate":
        j = min(n, i + 1 + b % 300)
        return data[:j] + data[i:j] + data[j:]
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (1 << (b % 8))]) + data[i + 1 :]
    if kind == "insert":
        return data[:i] + b + data[i:]
    if kind == "replace":
        return data[:i] + b + data[i + 1 :]
    if kind == "truncate":
        return data[:i]
    if kind == "swap":
        parts = data.split(_terminator(data))
        if len(parts) < 2:
            return data
        x, y = a % len(parts), b % len(parts)
        parts[x], parts[y] = parts[y], parts[x]
        return _terminator(data).join(parts)
    if kind == "digit":
        # A digit replaced by a Unicode digit: str.isdigit() is True for it, int() refuses it.
        spots = [k for k in range(n) if 0x30 <= data[k] <= 0x39]
        if not spots:
            return data
        k = spots[a % len(spots)]
        return data[:k] + UNICODE_DIGITS[b % len(UNICODE_DIGITS)] + data[k + 1 :]
    if kind == "count":
        hits = list(_COUNT.finditer(data))
        if not hits:
            return data
        m = hits[a % len(hits)]
        digits = bytearray(m.group(1))
        k = b % len(digits)
        digits[k] = ord("0") + (digits[k] - ord("0") + 1 + b % 9) % 10
        return data[: m.start(1)] + bytes(digits) + data[m.end(1) :]
    raise AssertionError(kind)


positions = st.integers(0, 2**31)
mutations = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["delete", "duplicate", "flip", "truncate", "swap", "count", "digit"]), positions, positions),
        st.tuples(st.sampled_from(["insert", "replace"]), positions, st.sampled_from(INSERTS) | st.binary(min_size=1, max_size=4)),
    ),
    min_size=1,
    max_size=3,
)


@contextmanager
def _time_limit(seconds: int, data: bytes):
    """A hang is a failure too (where SIGALRM exists)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def boom(signum, frame):
        raise TimeoutError(f"no answer after {seconds} s for the mutated bytes {data!r}")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_never_crashes(data: bytes) -> None:
    """translate() and read_bytes() return normally or raise TranslationError, nothing else."""
    step = "translate"
    try:
        with _time_limit(20, data):
            result = translate(data, source="mutated")
            step = "report"
            for f in result.errors():
                f.describe("mutated")
            for d in result.documents:
                if d.status == "translated":
                    step = "validate_canonical"
                    validate_canonical(d.document)
            json.dumps(result.canonical, ensure_ascii=False)
            step = "read_bytes"
            for _ in read_bytes(data):
                pass
    except TranslationError:
        pass
    except Exception as exc:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"{step} raised {type(exc).__name__}: {exc}\nmutated bytes: {data!r}") from exc


SAMPLES = corpus.params()


@pytest.mark.parametrize("sample", SAMPLES)
@MUTATION
@given(ops=mutations)
def test_mutated_corpus_file_never_crashes(sample, ops):
    data = _sample_bytes(str(sample.path))
    for op in ops:
        data = _mutate(data, op)
    note(f"mutated bytes: {data!r}")
    check_never_crashes(data)


# Crashes the mutations found, as the smallest inputs that show them (see the report to the lead).
_PO = (b"ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *261122*1200*U*00401*000000001*0*P*>~"
       b"GS*PO*SENDER*RECEIVER*20261122*1200*1*X*004010~ST*850*0001~BEG*00*SA*1**20261101~PO1*1*1*EA*1~CTT*1~"
       b"SE*5*0001~GE*1*1~IEA*1*000000001~")
_ORDERS = (b"UNA:+.? 'UNB+UNOC:3+SENDER:14+RECEIVER:14+261122:1200+1'UNH+1+ORDERS:D:96A:UN'BGM+220+1+9'"
           b"DTM+137:20261101:102'UNS+S'UNT+5+1'UNZ+1+1'")
KNOWN_CRASHES = {
    "edifact-unb-cut-short": b"UNB",
    "edifact-unb-then-newlines": b"UNB\r\n\r\n\r\n",
    "x12-isa09-unicode-digit": _PO.replace(b"*261122*", b"*2\xb21122*"),
    "x12-beg05-yymmdd-unicode-digit": _PO.replace(b"*20261101~", b"*2\xb21101~"),
    "edifact-unb-date-unicode-digit": _ORDERS.replace(b"+261122:", b"+2\xb21122:"),
    "edifact-dtm-101-unicode-digit": _ORDERS.replace(b"137:20261101:102", "137:2\u00b21101:101".encode()),
    "edifact-composite-segment-tag": b"UNB+UNOC:3+S+R+261122:1200+1'UNH+1+ORDERS:D:96A:UN'A:B'UNT+3+1'UNZ+1+1'",
}


@pytest.mark.parametrize("data", list(KNOWN_CRASHES.values()), ids=list(KNOWN_CRASHES))
def test_known_crash_inputs(data):
    check_never_crashes(data)



def test_edifact_private_use_characters_survive():
    po = new_document("purchase_order", "edifact")
    po.update(po_number="A\ue000B+C")  # the '+' is released in the same segment: A\ue000B?+C
    assert translate(write_edifact([po], charset="UNOW")).canonical[0]["po_number"] == "A\ue000B+C"


_CLI_SAMPLES = [s for n, s in enumerate(corpus.samples()) if n % 23 == 0]


@pytest.mark.skipif(not _CLI_SAMPLES, reason="EDI corpus not found")
@settings(MUTATION, max_examples=10, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_cli_translate_on_mutated_file(tmp_path_factory, data):
    sample = data.draw(st.sampled_from(_CLI_SAMPLES))
    raw = _sample_bytes(str(sample.path))
    for op in data.draw(mutations):
        raw = _mutate(raw, op)
    path = tmp_path_factory.mktemp("mutated") / sample.name
    path.write_bytes(raw)
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "translate", str(path)], cwd=REPO,
                          capture_output=True, timeout=120)
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in out, f"{out}\nmutated bytes: {raw!r}"
    assert proc.returncode in (0, 1), f"exit {proc.returncode}: {out}\nmutated bytes: {raw!r}"
