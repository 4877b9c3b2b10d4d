"""The X12 850 and 810 message mappers: canonical dicts and positioned findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from translators.canonical import validate_canonical
from translators.envelope import transaction_sets
from translators.findings import RULES, Severity
from translators.mapping import MessageMapping, PartNumberQualifiers, Translations
from translators.messages.x12_810 import map_810
from translators.messages.x12_850 import map_850
from translators.model import Delimiters, GroupInfo, InterchangeInfo, TransactionSet

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "edi" / "x12"
CORPUS = ROOT.parent / "shared" / "corpus" / "x12"
STANDARD = MessageMapping()


# -- helpers ------------------------------------------------------------------------------------


def hand_sets(text: str) -> list[TransactionSet]:
    """Transaction sets built by hand (split on '~' and '*'), independent of the envelope reader."""
    segs = [s.strip().split("*") for s in text.split("~") if s.strip()]
    ich = grp = None
    out, cur, first = [], None, 0
    for n, seg in enumerate(segs, start=1):
        tag = seg[0]
        if tag == "ISA":
            ich = InterchangeInfo(standard="x12", delimiters=Delimiters("*", seg[16], "~"), sender_id=seg[6].strip(),
                                  receiver_id=seg[8].strip(), control_number=seg[13], version=seg[12],
                                  segment_index=n, header=seg)
        elif tag == "GS":
            grp = GroupInfo(functional_id=seg[1], sender_id=seg[2], receiver_id=seg[3], control_number=seg[6],
                            version=seg[8], segment_index=n, header=seg)
        elif tag == "ST":
            cur, first = [seg], n
        elif cur is not None:
            cur.append(seg)
            if tag == "SE":
                out.append(TransactionSet(standard="x12", type=cur[0][1], control_number=cur[0][2],
                                          version=grp.version[:6], segments=cur, first_segment_index=first,
                                          interchange=ich, group=grp))
                cur = None
    return out


def sets_of(name: str) -> list[TransactionSet]:
    return transaction_sets((FIXTURES / name).read_bytes())


def translate(ts: TransactionSet, mapping: MessageMapping = STANDARD):
    mapper = {"850": map_850, "810": map_810}[ts.type]
    doc, findings = mapper(ts, mapping)
    validate_canonical(doc)  # every dict the mappers produce honours the contract
    for f in findings:
        assert f.code in RULES
    return doc, findings


def one(name: str, mapping: MessageMapping = STANDARD):
    (ts,) = sets_of(name)
    return translate(ts, mapping)


def inline(body: list[str], gs08: str = "004010", kind: str = "PO") -> TransactionSet:
    """A one-set interchange around the given ST..(SE) segments."""
    ctl = body[0].split("*")[2]
    if not body[-1].startswith("SE*"):
        body = [*body, f"SE*{len(body) + 1}*{ctl}"]
    isa = (f"ISA*00*{'':10}*00*{'':10}*ZZ*{'SENDER':15}*ZZ*{'RECEIVER':15}*240101*1200*U*00401*000000001*0*P*>")
    text = "~\n".join([isa, f"GS*{kind}*SENDER*RECEIVER*20240101*1200*1*X*{gs08}", *body, "GE*1*1",
                       "IEA*1*000000001"]) + "~\n"
    (ts,) = transaction_sets(text.encode())
    return ts


def where(findings) -> list[tuple]:
    return [(f.code, f.severity, f.segment_tag, f.segment_index, f.set_position, f.element_index) for f in findings]


# -- 850 ----------------------------------------------------------------------------------------


def test_850_header_envelope_and_totals():
    doc, findings = one("850_4010_lines.x12")
    assert findings == []
    assert doc["kind"] == "purchase_order" and doc["standard"] == "x12"
    assert doc["version"] == "004010"  # GS08 004010VICS without the industry suffix
    assert doc["partner"] is None
    assert (doc["sender_id"], doc["receiver_id"]) == ("ACMEBUY", "WIDGETWORKS")
    assert doc["control"] == {"interchange": "000000101", "group": "101", "message": "0001", "envelope": "interchange",
                              "test": False, "relaxed": []}
    assert doc["purpose"] == "original"
    assert doc["po_number"] == "PO-1001"
    assert doc["po_date"] == "2024-03-15"
    assert doc["requested_delivery"] == "2024-04-10"
    assert doc["currency"] == "USD"
    assert doc["references"] == {"DP": "038", "IA": "V-5521"}  # REF*TJ inside N1*SE is the party's
    assert doc["total_amount"] == "307.00"  # AMT*TT in the CTT loop


def test_850_parties_addresses_and_tax_id():
    doc, _ = one("850_4010_lines.x12")
    p = doc["parties"]
    assert p["buyer"] == {
        "name": "ACME MANUFACTURING", "id": "ACME01", "id_qualifier": "92", "tax_id": None,
        "address": {"lines": ["100 MAIN STREET", "BUILDING 4"], "city": "DAYTON", "region": "OH",
                    "postal_code": "45402", "country": "US"},
    }
    assert p["supplier"]["name"] == "WIDGET WORKS INC"  # N1*SE
    assert p["supplier"]["tax_id"] == "31-1234567"  # REF*TJ in its N1 loop
    assert p["ship_to"]["address"] == {"lines": [], "city": "DAYTON", "region": "OH", "postal_code": "45404",
                                       "country": None}
    assert p["bill_to"] is None and p["remit_to"] is None


def test_850_lines_qualifier_driven_parts_and_per_line_dates():
    doc, _ = one("850_4010_lines.x12")
    lines = doc["lines"]
    assert [ln["line_number"] for ln in lines] == ["1", "2", "3"]
    # PO1*1: VP first, BP second, UP third — the qualifier decides, not the position.
    assert (lines[0]["buyer_part"], lines[0]["supplier_part"], lines[0]["gtin"]) == ("AC-100", "WW-778", "012345678905")
    # PO1*2: CB (buyer's catalog number) is a standard buyer qualifier; VN is a supplier one.
    assert (lines[1]["buyer_part"], lines[1]["supplier_part"]) == ("CUST-200", "VEND-200")
    # Zero-padded quantities, prices as sent.
    assert [ln["quantity"] for ln in lines] == ["16", "5", "120"]
    assert [ln["unit_price"] for ln in lines] == ["12.50", "3.4", "0.75"]
    assert [ln["uom"] for ln in lines] == ["CA", "EA", "CA"]
    # The product description (PID02 08) wins over the colour PID that follows it.
    assert [ln["description"] for ln in lines] == ["HEX BOLT M8 X 40", "FLAT WASHER M8", None]
    # Line amount only where the 850 states it (AMT in the line loop); never computed.
    assert [ln["amount"] for ln in lines] == [None, "17.00", None]
    # Per-line delivery: DTM in the PO1 loop, or the first SCH date; none on line 1.
    assert [ln["requested_delivery"] for ln in lines] == [None, "2024-04-20", "2024-05-01"]


def test_850_partner_mapping_changes_qualifiers_codes_and_references():
    mapping = MessageMapping(
        part_numbers=PartNumberQualifiers(buyer=["CB", "BP"], supplier=["VN"], gtin=[]),
        translations=Translations(uom={"CA": "CS"}, currency={"USD": "USN"}),
        references=["IA"],
    )
    doc, findings = one("850_4010_lines.x12", mapping)
    assert findings == []
    lines = doc["lines"]
    assert [ln["buyer_part"] for ln in lines] == ["AC-100", "CUST-200", "AC-300"]
    assert [ln["supplier_part"] for ln in lines] == [None, "VEND-200", None]  # VP is no longer a supplier code
    assert [ln["gtin"] for ln in lines] == [None, None, None]
    assert [ln["uom"] for ln in lines] == ["CS", "EA", "CS"]
    assert doc["currency"] == "USN"  # translated, then checked: an ISO 4217 code
    assert doc["references"] == {"IA": "V-5521"}


def test_850_partner_supplier_qualifier():
    doc, _ = one("850_4010_lines.x12", MessageMapping(supplier_party=["ST"]))
    assert doc["parties"]["supplier"]["name"] == "ACME DOCK 7"


def test_850_3040_yymmdd_dates_and_zero_padding():
    doc, findings = one("850_3040_yymmdd.x12")
    assert findings == []  # NTE belongs to a 3040 850
    assert doc["version"] == "003040"
    assert doc["purpose"] == "replace"  # BEG01 05
    assert doc["po_date"] == "1999-12-31"  # BEG05 991231
    assert doc["requested_delivery"] == "2000-01-15"  # DTM*002*000115
    (line,) = doc["lines"]
    assert line["quantity"] == "10" and line["unit_price"] == "2.50"  # 000010, 000002.50
    assert line["requested_delivery"] == "2000-02-01"  # DTM05 20 is the century before 4010
    assert line["line_number"] == "001"
    assert doc["total_amount"] is None  # no AMT: no invented total
    assert doc["parties"]["supplier"]["name"] == "PARTS SUPPLY LTD"  # N1*VN
    assert doc["parties"]["buyer"]["name"] == "OLD CUSTOMER CO"  # BT when there is no BY


def test_850_errors_with_exact_positions():
    doc, findings = one("850_4010_errors.x12")
    # ISA=1, GS=2, ST=3: the set starts at file segment 3.
    assert where(findings) == [
        ("element.invalid_date", Severity.ERROR, "DTM", 5, 3, 2),
        ("element.invalid_number", Severity.ERROR, "PO1", 6, 4, 2),
        ("element.conditional_missing", Severity.WARNING, "PO1", 6, 4, 7),
        ("segment.unrecognized", Severity.WARNING, "ZZZ", 7, 5, None),
        ("element.invalid_number", Severity.ERROR, "PO1", 8, 6, 4),
        ("segment.mandatory_missing", Severity.WARNING, "BEG", 4, 2, None),
    ]
    bad_date = findings[0]
    assert "20240231" in bad_date.message and bad_date.value == "20240231"
    assert bad_date.message_control == "0666" and bad_date.group_control == "666"
    assert bad_date.interchange_control == "000000666"
    assert "1O" in findings[1].message
    # The document still maps what it can.
    assert doc["po_number"] is None
    assert doc["requested_delivery"] is None
    assert [ln["quantity"] for ln in doc["lines"]] == [None, "4"]
    assert [ln["unit_price"] for ln in doc["lines"]] == ["2.00", None]
    assert doc["lines"][1]["buyer_part"] == "OK-2"


def test_850_missing_beg_elements_and_no_po1():
    ts = inline(["ST*850*0001", "BEG*00**PO-9", "CTT*0"])
    doc, findings = translate(ts)
    assert where(findings) == [
        ("element.mandatory_missing", Severity.ERROR, "BEG", 4, 2, 2),
        ("element.mandatory_missing", Severity.ERROR, "BEG", 4, 2, 5),
        ("segment.mandatory_missing", Severity.WARNING, "PO1", 5, 3, None),
    ]
    assert doc["po_number"] == "PO-9" and doc["lines"] == []


def test_850_pairs_shifted_one_element_early_are_read_and_flagged():
    ts = inline(["ST*850*0001", "BEG*00*NE*PO-1**20260101", "PO1*1*10*EA*25.00*BP*SKU-A"])
    doc, findings = translate(ts)
    assert doc["lines"][0]["buyer_part"] == "SKU-A"
    assert [(f.code, f.severity, f.element_index) for f in findings] == [
        ("element.invalid_code", Severity.WARNING, 5)
    ]


def test_850_syntax_notes_and_dtm_period_format():
    ts = inline([
        "ST*850*0001",
        "BEG*00*NE*PO-1**20260101",
        "DTM*002****D8*20260301",
        "PO1*1*10**5*PE*UP",  # price basis fine; UP without a value
        "PO4*6*6*EA*PLT94*X**LR",  # PO405 without PO406, PO407 without PO406: one finding
        "SCH*10*EA***002*20260315",
        "CTT*1",
        "AMT*TT*50",
    ])
    doc, findings = translate(ts)
    assert doc["requested_delivery"] == "2026-03-01"
    assert doc["lines"][0]["requested_delivery"] == "2026-03-15"
    assert doc["total_amount"] == "50"
    assert [(f.segment_tag, f.element_index, f.severity) for f in findings] == [
        ("PO1", 7, Severity.WARNING),
        ("PO4", 6, Severity.WARNING),
    ]
    assert all(f.code == "element.conditional_missing" for f in findings)


def test_850_hand_built_sets_match_the_envelope_reader():
    text = (FIXTURES / "850_4010_lines.x12").read_text()
    (by_hand,) = hand_sets(text)
    (read,) = sets_of("850_4010_lines.x12")
    assert by_hand.first_segment_index == read.first_segment_index == 3
    assert translate(by_hand) == translate(read)


# -- 810 ----------------------------------------------------------------------------------------


def test_810_remit_to_fallback_amounts_terms_and_tax():
    doc, findings = one("810_4010_remit.x12")
    assert findings == []
    assert doc["kind"] == "invoice"
    assert (doc["invoice_number"], doc["invoice_date"], doc["po_number"]) == ("INV-77", "2024-03-20", "PO-1001")
    assert doc["purpose"] == "original"  # BIG08 00
    assert doc["currency"] == "EUR"
    p = doc["parties"]
    assert p["supplier"] == p["remit_to"]  # no SE/SU/VN: the remit-to party is the supplier
    assert p["supplier"]["name"] == "WIDGET WORKS LOCKBOX"
    assert p["supplier"]["tax_id"] == "31-1234567"  # REF*EI in the N1*RE loop
    assert p["supplier"]["address"]["lines"] == ["PO BOX 4410"]
    assert p["buyer"]["name"] == "ACME MANUFACTURING"  # BT stands in for the buyer
    assert doc["total_amount"] == "230.75"  # TDS*23075 is N2
    assert doc["tax_amount"] == "13.00"  # summary TXI 12.34 + 0.66; the line TXI is not added again
    assert doc["charges"] == [
        {"code": "D240", "description": "FREIGHT", "amount": "15.00"},
        {"code": "C310", "description": "PROMPT PAY DISCOUNT", "amount": "-2.50"},
    ]
    assert doc["terms"] == "2% 10 days, net 30"
    assert doc["due_date"] is None  # net days only: no date is computed
    assert [ln["quantity"] for ln in doc["lines"]] == ["16", "5"]
    assert doc["lines"][0]["supplier_part"] == "WW-778" and doc["lines"][0]["buyer_part"] == "AC-100"
    assert doc["references"] == {"VN": "V-5521", "BM": "BOL-9"}


def test_810_errors_with_exact_positions():
    doc, findings = one("810_4010_errors.x12")
    assert where(findings) == [
        ("element.mandatory_missing", Severity.ERROR, "BIG", 4, 2, 2),
        ("element.conditional_missing", Severity.ERROR, "IT1", 7, 5, 2),
        ("element.conditional_missing", Severity.ERROR, "IT1", 7, 5, 4),
        ("element.invalid_number", Severity.ERROR, "SAC", 8, 6, 5),
        ("segment.mandatory_missing", Severity.WARNING, "TDS", 9, 7, None),
    ]
    assert "12.50" in findings[3].message
    assert doc["invoice_number"] is None and doc["total_amount"] is None
    assert doc["parties"]["supplier"]["name"] == "WIDGET WORKS INC"  # N1*SU


def test_810_missing_big():
    ts = inline(["ST*810*0001", "IT1*1*1*EA*1", "TDS*100"], kind="IN")
    doc, findings = translate(ts)
    assert where(findings) == [("segment.mandatory_missing", Severity.WARNING, "BIG", 4, 2, None)]
    assert doc["total_amount"] == "1.00"


def test_810_due_date_terms_text_and_line_level_charges():
    ts = inline([
        "ST*810*0001",
        "BIG*240105*INV-1**PO-7***CR*05",
        "N1*VN*SUPPLIER CO*24*12-3456789",
        "N1*RE*REMIT CO",
        "ITD*05*3****240204*30",
        "ITD*08*3*1.5*240115",
        "IT1*1*1080*EA*3.61**IN*001719653*UP*022108955228",
        "TXI*ST*1.25",
        "SAC*A*I410***2350",
        "SAC*N*B840***999",
        "TDS*387530",
        "CTT*1",
    ], gs08="003050", kind="IN")
    doc, findings = translate(ts)
    assert findings == []
    assert doc["invoice_date"] == "2024-01-05"  # YYMMDD in 3050
    assert doc["purpose"] == "replace"
    assert doc["due_date"] == "2024-02-04"  # ITD06
    assert doc["terms"] == "net 30; 1.5% by 2024-01-15"
    assert doc["parties"]["supplier"]["name"] == "SUPPLIER CO"  # VN before the RE fallback
    assert doc["parties"]["supplier"]["tax_id"] == "12-3456789"  # N103 24 is an EIN
    assert doc["parties"]["remit_to"]["name"] == "REMIT CO"
    # No summary SAC: the line-level allowance is the invoice's charge; SAC01 N is not a charge.
    assert doc["charges"] == [{"code": "I410", "description": None, "amount": "-23.50"}]
    assert doc["tax_amount"] == "1.25"  # only line-level TXI: their sum
    assert doc["total_amount"] == "3875.30"


def test_810_due_date_from_dtm_beats_itd_and_po_from_ref():
    ts = inline([
        "ST*810*0001",
        "BIG*20240105*INV-2",
        "REF*PO*PO-FROM-REF",
        "ITD*01*3****20240301",
        "DTM*814*20240210",
        "TDS*0",
    ], kind="IN")
    doc, findings = translate(ts)
    assert findings == []
    assert doc["due_date"] == "2024-02-10"
    assert doc["terms"] == "net due 2024-03-01"
    assert doc["po_number"] == "PO-FROM-REF"
    assert doc["total_amount"] == "0.00" and doc["tax_amount"] is None and doc["purpose"] is None


# -- the public corpus (read-only) --------------------------------------------------------------


def _corpus_files():
    if not CORPUS.is_dir():
        return []
    return sorted(p for kind in ("850", "810") for p in (CORPUS / kind).iterdir() if p.is_file())


@pytest.mark.skipif(not CORPUS.is_dir(), reason="public corpus not available")
def test_corpus_850_810_map_and_keep_their_numbers():
    mapped = 0
    for path in _corpus_files():
        for ts in transaction_sets(path.read_bytes()):
            if ts.type not in ("850", "810"):
                continue
            doc, findings = translate(ts)
            mapped += 1
            segs = ts.segments
            head = next((s for s in segs if s[0] == ("BEG" if ts.type == "850" else "BIG")), None)
            item = "PO1" if ts.type == "850" else "IT1"
            assert len(doc["lines"]) == sum(1 for s in segs if s[0] == item), path.name
            if head is not None:
                if ts.type == "850":
                    assert doc["po_number"] == head[3].strip(), path.name
                    assert doc["po_date"] is not None, path.name
                else:
                    assert doc["invoice_number"] == head[2].strip(), path.name
                    assert doc["invoice_date"] is not None, path.name
            assert doc["control"]["message"] == ts.control_number
    assert mapped >= 80
