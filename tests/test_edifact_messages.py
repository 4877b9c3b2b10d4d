"""The EDIFACT ORDERS and INVOIC message mappers: canonical dicts and positioned findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from translators.canonical import validate_canonical
from translators.envelope import transaction_sets
from translators.findings import RULES, Severity
from translators.mapping import DateQualifiers, MessageMapping, PartNumberQualifiers, Translations
from translators.messages.edifact_common import lookups
from translators.messages.edifact_invoic import map_invoic
from translators.messages.edifact_orders import map_orders
from translators.model import Delimiters, GroupInfo, InterchangeInfo, TransactionSet

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "edi" / "edifact"
CORPUS = ROOT.parent / "shared" / "corpus" / "edifact"
STANDARD = MessageMapping()


# -- helpers ------------------------------------------------------------------------------------


def hand_set(text: str, *, decimal: str = ".", first: int = 3, group: str | None = None) -> TransactionSet:
    """One message built by hand (split on ' + :, no release characters), independent of the
    envelope reader."""
    segs = []
    for raw in text.split("'"):
        raw = raw.strip()
        if raw:
            segs.append([e.split(":") if ":" in e else e for e in raw.split("+")])
    ich = InterchangeInfo(standard="edifact", delimiters=Delimiters("+", ":", "'", release="?", decimal=decimal),
                          sender_id="SENDER", receiver_id="RECEIVER", control_number="IC1")
    grp = GroupInfo(control_number=group) if group else None
    unh = segs[0]
    return TransactionSet(standard="edifact", type=unh[2][0], control_number=unh[1], version=None, segments=segs,
                          first_segment_index=first, interchange=ich, group=grp)


def sets_of(name: str) -> list[TransactionSet]:
    return transaction_sets((FIXTURES / name).read_bytes())


def translate(ts: TransactionSet, mapping: MessageMapping = STANDARD):
    mapper = {"ORDERS": map_orders, "INVOIC": map_invoic}[ts.type]
    doc, findings = mapper(ts, mapping)
    validate_canonical(doc)  # every dict the mappers produce honours the contract
    for f in findings:
        assert f.code in RULES
        # Positions: file index and set position agree with each other.
        assert f.segment_index == ts.first_segment_index + f.set_position - 1
        assert (f.interchange_control, f.message_control) == (ts.interchange.control_number, ts.control_number)
    return doc, findings


def errors(findings):
    return [f for f in findings if f.severity is Severity.ERROR]


def codes(findings):
    return sorted(f.code for f in findings)


# -- ORDERS -------------------------------------------------------------------------------------


def test_orders_with_decimal_comma_and_release_characters():
    [ts] = sets_of("orders_d96a_decimal_comma.edi")
    doc, findings = translate(ts)
    assert findings == []
    assert doc["kind"] == "purchase_order" and doc["standard"] == "edifact"
    assert doc["version"] == "D96A"
    assert doc["control"] == {"interchange": "ORD0001", "group": None, "message": "M1", "envelope": "interchange",
                              "test": False, "relaxed": []}
    assert (doc["sender_id"], doc["receiver_id"]) == ("5412345000013", "4012345000009")
    assert doc["partner"] is None
    assert doc["po_number"] == "PO-4711"
    assert doc["po_date"] == "2024-03-15"
    assert doc["requested_delivery"] == "2024-04-02"  # format 203, date part only
    assert doc["purpose"] == "original"
    assert doc["currency"] == "EUR"
    assert doc["total_amount"] == "618.75"
    assert doc["references"] == {"CT": "CONTRACT-9", "ON": "PO-4711"}
    buyer = doc["parties"]["buyer"]
    # ?+ and ?' resolved by the tokenizer; the two C080 components joined.
    assert buyer["name"] == "M+S M'UELLER GMBH WERK NORD"
    assert (buyer["id"], buyer["id_qualifier"], buyer["tax_id"]) == ("5412345000013", "9", "DE123456789")
    assert buyer["address"] == {"lines": ["INDUSTRIESTR. 7", "HALLE B"], "city": "KOELN", "region": "NW",
                                "postal_code": "50667", "country": "DE"}
    assert doc["parties"]["supplier"]["name"] == "ACME TEILE AG"
    assert doc["parties"]["supplier"]["tax_id"] is None  # the VA belongs to the buyer's NAD
    assert doc["parties"]["ship_to"]["name"] == "M+S WAREHOUSE"
    assert doc["parties"]["bill_to"] is None and doc["parties"]["remit_to"] is None
    one, two = doc["lines"]
    assert one == {
        "line_number": "1", "quantity": "12.5", "uom": "KGM", "unit_price": "9.50", "amount": "118.75",
        "buyer_part": "B-200", "supplier_part": "A-100", "gtin": "4006381333931",
        "description": "STAHLSCHRAUBE M8X40 VERZINKT DIN 933 GEWINDE", "requested_delivery": "2024-04-05",
        "po_number": None,
    }
    # Zero-padded quantity; the price is per 100 (PRI 5284) → per piece.
    assert (two["quantity"], two["unit_price"], two["amount"]) == ("200", "2.5", "500.00")
    assert (two["buyer_part"], two["supplier_part"]) == (None, "C-300")
    assert two["requested_delivery"] is None


def test_orders_partner_overrides_part_qualifiers_and_code_tables():
    [ts] = sets_of("orders_d96a_decimal_comma.edi")
    mapping = MessageMapping(
        part_numbers=PartNumberQualifiers(buyer=["SA"], supplier=["IN"]),
        translations=Translations(uom={"KGM": "KG", "PCE": "EA"}, currency={"EUR": "EUR-BANK"}),
        references=["CT"],
        dates=DateQualifiers(requested_delivery=["010"]),
    )
    doc, _ = translate(ts, mapping)
    one, two = doc["lines"]
    assert (one["buyer_part"], one["supplier_part"], one["gtin"]) == ("A-100", "B-200", "4006381333931")
    assert (two["buyer_part"], two["supplier_part"]) == ("C-300", None)
    assert (one["uom"], two["uom"]) == ("KG", "EA")
    assert doc["currency"] == "EUR-BANK"
    assert doc["references"] == {"CT": "CONTRACT-9"}
    # DTM+2 is no longer a requested-delivery qualifier for this partner.
    assert doc["requested_delivery"] is None and one["requested_delivery"] is None


def test_part_number_lookups_combine_partner_lists_with_edifact_codes():
    std = lookups(STANDARD)
    assert std.part_code["IN"][0] == "buyer_part" and std.part_code["BP"][0] == "buyer_part"
    assert {std.part_code[c][0] for c in ("SA", "VP", "SN", "MF")} == {"supplier_part"}
    assert std.part_code["EN"][0] == "gtin" and std.part_code["SRV"][0] == "gtin"
    assert std.part_code["SA"][2] < std.part_code["MF"][2]  # manufacturer's number only as a fallback
    partner = lookups(MessageMapping(part_numbers=PartNumberQualifiers(supplier=["IN", "ZZ"])))
    assert partner.part_code["IN"][0] == "supplier_part"  # claimed away from the buyer's defaults
    assert partner.part_code["BP"][0] == "buyer_part"
    assert "SA" not in partner.part_code  # an explicit list replaces the standard one


def test_orders_missing_bgm_is_reported_at_its_position():
    [ts] = sets_of("orders_missing_bgm.edi")
    doc, findings = translate(ts)
    assert doc["version"] == "D96A"  # "D: 96A" in UNH S009
    assert doc["po_number"] is None and doc["purpose"] is None
    assert doc["po_date"] == "2024-03-22"
    [f] = findings
    assert (f.code, f.segment_tag, f.set_position, f.segment_index) == ("segment.mandatory_missing", "BGM", 2, 3)
    assert f.severity is Severity.WARNING
    assert doc["lines"][0]["buyer_part"] == "X-1"


def test_orders_without_document_date_and_uns_warn():
    ts = hand_set("UNH+1+ORDERS:D:96A:UN'BGM+220+P1+9'DTM+2:20240101:102'LIN+1++A:SA'QTY+21:1'UNT+6+1'")
    doc, findings = translate(ts)
    assert doc["po_date"] is None and doc["requested_delivery"] == "2024-01-01"
    assert not errors(findings)
    assert [(f.segment_tag, f.set_position) for f in findings] == [("DTM", 3), ("UNS", 6)]


def test_bgm_old_and_new_forms_and_purposes():
    old = hand_set("UNH+1+ORDERS:D:93A:UN'BGM+220+PO-1+1'DTM+137:20240101:102'UNS+S'UNT+5+1'")
    new = hand_set("UNH+1+ORDERS:D:01B:UN'BGM+220:::ORDER+PO-2:3:1+4+AB'DTM+137:20240101:102'UNS+S'UNT+5+1'")
    assert (translate(old)[0]["po_number"], translate(old)[0]["purpose"]) == ("PO-1", "cancel")
    assert (translate(new)[0]["po_number"], translate(new)[0]["purpose"]) == ("PO-2", "change")
    for code, name in (("9", "original"), ("5", "replace"), ("7", "duplicate"), ("31", "copy"),
                       ("43", "additional_transmission"), ("99", "99")):
        ts = hand_set(f"UNH+1+ORDERS:D:96A:UN'BGM+220+X+{code}'DTM+137:20240101:102'UNS+S'UNT+5+1'")
        doc, findings = translate(ts)
        assert doc["purpose"] == name
        # An unknown purpose is kept raw, with a warning naming BGM 1225.
        assert [(f.code, f.segment_tag, f.element_index, f.is_error) for f in findings] == (
            [("element.invalid_code", "BGM", 3, False)] if code == "99" else [])


def test_decimal_comma_from_the_interchange_delimiters():
    ts = hand_set("UNH+1+ORDERS:D:96A:UN'BGM+220+X+9'DTM+137:20240101:102'LIN+1++G:EN'QTY+21:1,250'"
                  "PRI+AAA:0,5'MOA+203:0,63'UNS+S'MOA+86:1234,5'UNT+10+1'", decimal=",")
    doc, findings = translate(ts)
    assert findings == []
    line = doc["lines"][0]
    assert (line["quantity"], line["unit_price"], line["amount"]) == ("1.250", "0.5", "0.63")
    assert doc["total_amount"] == "1234.5"


def test_too_many_header_dtm_is_a_warning_at_the_first_excess():
    dtms = "DTM+137:20240101:102'" * 36
    ts = hand_set(f"UNH+1+ORDERS:D:96A:UN'BGM+220+X+9'{dtms}UNS+S'UNT+40+1'", first=10)
    doc, findings = translate(ts)
    [f] = findings
    assert (f.code, f.severity, f.segment_tag) == ("segment.too_many", Severity.WARNING, "DTM")
    assert (f.set_position, f.segment_index) == (38, 47)  # the 36th DTM
    assert doc["po_date"] == "2024-01-01"


def test_line_delivery_dates_come_from_the_line_or_its_schedule():
    ts = hand_set(
        "UNH+1+ORDERS:D:96A:UN'BGM+220+X+9'DTM+137:20240101:102'"
        "LIN+1++A:SA'QTY+21:5'DTM+2:20240201:102'PRI+AAA:1'DTM+2:20240301:102'"
        "LIN+2++B:SA'QTY+21:5'LOC+7+DOCK'QTY+11:5'DTM+2:20240215:102'"
        "LIN+3++C:SA'QTY+21:5'DTM+64:2024W1:102'"
        "UNS+S'UNT+18+1'")
    doc, findings = translate(ts)
    one, two, three = doc["lines"]
    assert one["requested_delivery"] == "2024-02-01"  # the price group's DTM is not the line's
    assert (two["requested_delivery"], two["quantity"]) == ("2024-02-15", "5")  # schedule date; QTY+11 ignored
    assert three["requested_delivery"] is None
    [f] = findings
    assert (f.code, f.severity, f.set_position, f.element_index, f.component_index) == (
        "element.invalid_date", Severity.ERROR, 16, 1, 2)


def test_date_formats():
    ts = hand_set("UNH+1+ORDERS:D:96A:UN'BGM+220+X+9'DTM+137:240105:101'DTM+2:202406:616'DTM+10:2024:602'"
                  "UNS+S'UNT+7+1'")
    doc, findings = translate(ts)
    assert doc["po_date"] == "2024-01-05"
    assert doc["requested_delivery"] == "2024-02-05"  # ISO week 6 of 2024 starts on Monday 5 February
    # A period (CCYY) is no calendar date: reported as a warning, not used.
    [f] = findings
    assert (f.code, f.severity, f.set_position) == ("element.invalid_date", Severity.WARNING, 5)


def test_nad_unstructured_name_and_unknown_qualifier():
    ts = hand_set("UNH+1+ORDERS:D:96A:UN'BGM+220+X+9'DTM+137:20240101:102'"
                  "NAD+BY++BUYER LTD:1 HIGH STREET:LEEDS'NAD+QQQQ+1::9'NAD+ZZ+SUP-1::92'UNS+S'UNT+8+1'")
    doc, findings = translate(ts)
    buyer = doc["parties"]["buyer"]
    assert buyer["name"] == "BUYER LTD"
    assert buyer["address"]["lines"] == ["1 HIGH STREET", "LEEDS"]
    assert doc["parties"]["supplier"] is None
    assert [(f.code, f.severity, f.set_position, f.element_index, f.value) for f in findings] == [
        ("element.invalid_code", Severity.WARNING, 5, 1, "QQQQ"),
        ("element.invalid_code", Severity.WARNING, 6, 1, "ZZ"),
    ]
    # The partner's party-qualifier table names ZZ as its supplier code.
    doc, findings = translate(ts, MessageMapping(translations=Translations(party_qualifier={"ZZ": "SU"})))
    assert (doc["parties"]["supplier"]["id"], doc["parties"]["supplier"]["id_qualifier"]) == ("SUP-1", "92")
    assert [f.value for f in findings] == ["QQQQ"]


# -- INVOIC -------------------------------------------------------------------------------------


def test_invoice_with_new_bgm_remit_to_fallback_charges_tax_and_totals():
    [ts] = sets_of("invoic_d01b_remit_to.edi")
    doc, findings = translate(ts)
    assert findings == []
    assert doc["kind"] == "invoice" and doc["version"] == "D01B"
    assert doc["control"] == {"interchange": "INV0042", "group": "GRP7", "message": "MSG1", "envelope": "interchange",
                              "test": False, "relaxed": []}
    assert doc["invoice_number"] == "INV-2024-0042"  # C106 first component
    assert doc["purpose"] == "replace"
    assert doc["invoice_date"] == "2024-03-20"
    assert doc["po_number"] == "PO-4711"  # header RFF+ON, not the line's PO-4712
    assert doc["due_date"] == "2024-04-19"  # DTM+13 inside the PAT group
    assert doc["references"] == {"ON": "PO-4711", "DQ": "DN-889"}
    parties = doc["parties"]
    # No SU/SE: the remit-to party (RE) is the supplier; its RFF+VA is its tax id.
    assert parties["supplier"]["name"] == "ACME TEILE AG FINANZ"
    assert parties["supplier"]["tax_id"] == "DE987654321"
    assert parties["remit_to"] == parties["supplier"] and parties["remit_to"] is not parties["supplier"]
    assert parties["buyer"]["tax_id"] == "DE123456789"
    assert parties["bill_to"]["name"] == "M+S BUCHHALTUNG"  # IV invoicee
    assert doc["currency"] == "EUR"
    assert doc["total_amount"] == "754.16"  # MOA 77, not 79/125
    assert doc["tax_amount"] == "120.41"  # MOA 176
    # Header ALC groups; the allowance is negative; the summary ALC (a total) is not repeated.
    assert doc["charges"] == [
        {"code": "FC", "description": "FREIGHT", "amount": "25.00"},
        {"code": "DI", "description": "VOLUME DISCOUNT", "amount": "-10.00"},
    ]
    assert doc["terms"] == "net 30 days after invoice date, due 2024-04-19; 2% discount 10 days after invoice date"
    one, two = doc["lines"]
    # QTY 47 (invoiced) over 46; MOA 203 over the line TAX group's 124 and the ALC group's 8.
    assert (one["quantity"], one["uom"], one["amount"], one["unit_price"]) == ("12.5", "KGM", "118.75", "9.50")
    assert (one["supplier_part"], one["gtin"]) == ("A-100", "4006381333931")
    # QTY 12 (despatched) when no QTY 47; the gross price when no net price.
    assert (two["quantity"], two["uom"], two["unit_price"], two["amount"]) == ("200", "PCE", "2.60", "500.00")


def test_invoice_tax_sums_tax_groups_and_takes_summary_charges():
    ts = hand_set("UNH+1+INVOIC:D:96A:UN'BGM+380+I-1+9'DTM+3:20240101:102'NAD+SU+S1::9'NAD+BY+B1::9'"
                  "LIN+1++A:SA'QTY+47:1'MOA+203:100'UNS+S'MOA+39:134.50'TAX+7+VAT+++:::19+S'MOA+124:19.00'"
                  "TAX+7+VAT+++:::7+S'MOA+124:3.50'ALC+C+ABG'MOA+8:12'UNT+17+1'")
    doc, findings = translate(ts)
    assert findings == []
    assert doc["tax_amount"] == "22.50"
    assert doc["total_amount"] == "134.50"  # MOA 39 when there is no 77/86
    assert doc["charges"] == [{"code": "ABG", "description": None, "amount": "12"}]
    assert doc["invoice_date"] == "2024-01-01"  # DTM+3


def test_invoice_po_number_falls_back_to_the_line_reference():
    ts = hand_set("UNH+1+INVOIC:D:96A:UN'BGM+380+I-1+9'DTM+137:20240101:102'LIN+1++A:SA'QTY+47:1'"
                  "RFF+ON:PO-LINE'UNS+S'MOA+77:1'UNT+9+1'")
    doc, _ = translate(ts)
    assert doc["po_number"] == "PO-LINE"
    assert doc["references"] == {}  # line references are not message references


def test_invoice_bad_values_have_exact_positions():
    [ts] = sets_of("invoic_d93a_bad_values.edi")
    doc, findings = translate(ts)
    assert ts.first_segment_index == 2  # no UNA: UNB is segment 1
    got = [(f.code, f.severity, f.segment_tag, f.segment_index, f.set_position, f.element_index, f.component_index,
            f.value) for f in findings]
    E, W = Severity.ERROR, Severity.WARNING
    assert got == [
        ("element.invalid_date", E, "DTM", 4, 3, 1, 2, "20240230"),
        ("element.invalid_date", W, "DTM", 6, 5, 1, 2, "2024XX01"),  # a reference's date: not used
        ("element.invalid_code", W, "NAD", 7, 6, 1, None, "BYX"),
        ("element.invalid_number", E, "QTY", 10, 9, 1, 2, "1O"),
        ("element.invalid_number", E, "PRI", 11, 10, 1, 2, "9.5O"),
        ("element.invalid_number", E, "MOA", 14, 13, 1, 2, "3,000.00"),
        ("element.invalid_number", E, "MOA", 16, 15, 1, 2, "abc"),
    ]
    assert doc["invoice_date"] is None and doc["total_amount"] is None
    assert doc["lines"][0]["quantity"] is None and doc["lines"][1]["quantity"] == "3"
    assert doc["parties"]["buyer"] is None


def test_invoice_missing_segments_are_warnings():
    ts = hand_set("UNH+1+INVOIC:D:97B:UN'NAD+SE+S1::9'UNT+3+1'")
    doc, findings = translate(ts)
    assert not errors(findings)
    assert [(f.code, f.segment_tag, f.set_position) for f in findings] == [
        ("segment.mandatory_missing", "BGM", 2),
        ("segment.mandatory_missing", "DTM", 2),
        ("segment.mandatory_missing", "UNS", 3),
    ]
    assert doc["parties"]["supplier"]["id"] == "S1"  # SE (seller) is a supplier qualifier


def test_unused_invalid_quantity_is_a_warning():
    ts = hand_set("UNH+1+ORDERS:D:96A:UN'BGM+220+X+9'DTM+137:20240101:102'LIN+1++A:SA'QTY+21:2'"
                  "QTY+59:many'UNS+S'UNT+8+1'")
    doc, findings = translate(ts)
    [f] = findings
    assert (f.code, f.severity, f.set_position) == ("element.invalid_number", Severity.WARNING, 6)
    assert doc["lines"][0]["quantity"] == "2"


# -- the corpus (read-only; skipped when absent) -------------------------------------------------


def _corpus_messages():
    if not CORPUS.is_dir():
        return []
    out = []
    for folder in ("ORDERS", "INVOIC"):
        for path in sorted((CORPUS / folder).iterdir()):
            for ts in transaction_sets(path.read_bytes()):
                if ts.type in ("ORDERS", "INVOIC"):
                    out.append(pytest.param(ts, id=f"{folder}/{path.name}#{ts.control_number}"))
    return out


@pytest.mark.skipif(not CORPUS.is_dir(), reason="EDI corpus not found")
@pytest.mark.parametrize("ts", _corpus_messages())
def test_corpus_messages_map(ts):
    doc, findings = translate(ts)
    assert len(doc["lines"]) == sum(1 for s in ts.segments if s[0] == "LIN")
    bgm = next((s for s in ts.segments if s[0] == "BGM"), None)
    number = doc["po_number"] if ts.type == "ORDERS" else doc["invoice_number"]
    assert (number is not None) == bool(bgm and len(bgm) > 2 and bgm[2])
    assert doc["version"] and doc["version"][0] == "D"


@pytest.mark.skipif(not CORPUS.is_dir(), reason="EDI corpus not found")
def test_corpus_bad_invoice_is_refused_for_its_numbers():
    [ts] = transaction_sets((CORPUS / "INVOIC" / "staedi__invoic_d97b_bad.edi").read_bytes())
    _, findings = translate(ts)
    assert [(f.segment_tag, f.set_position, f.value) for f in errors(findings)] == [
        ("QTY", 10, "1020A"), ("PRI", 13, "$1.179")]


@pytest.mark.skipif(not CORPUS.is_dir(), reason="EDI corpus not found")
def test_corpus_decimal_comma_invoice():
    [ts] = transaction_sets((CORPUS / "INVOIC" / "staedi__invoic_d93a_una.edi").read_bytes())
    doc, findings = translate(ts)
    assert not errors(findings)
    assert [line["unit_price"] for line in doc["lines"]] == ["750", "19.9", "2.5"]
    assert (doc["total_amount"], doc["tax_amount"]) == ("901.78", "124.38")
    assert doc["parties"]["supplier"]["address"]["city"] == "München"
