"""Issue 14 point 4: elements checked by version and code list, on fixtures/edi/rigor files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pyx12

from translators import build_acknowledgment, translate
from translators.codelists import X12_NUMBERS, edifact_number_limit, is_currency, is_unit
from translators.mapping import PartnerDirectory, PartnerMapping

RIGOR = Path(__file__).resolve().parent.parent / "fixtures" / "edi" / "rigor"
NOW = datetime(2026, 12, 8, 9, 30)


def test_x12_elements_by_version_and_code_list_reach_ak4():
    result = translate((RIGOR / "x12_850_bad_elements.x12").read_bytes())
    (d,) = result.documents
    found = {(f.segment_tag, f.set_position, f.element_index): (f.code, f.is_error) for f in d.findings}
    assert found == {
        ("BEG", 2, 5): ("element.invalid_date", True),  # 200306 in 004010: DT is 8 digits
        ("CUR", 3, 2): ("element.invalid_code", False),  # XYZ: not ISO 4217, reported and kept
        ("PO1", 4, 2): ("element.invalid_number", True),  # 1E100000000: never expanded
        ("PO1", 5, 3): ("element.too_long", True),  # PO103 INVALID: 355 is ID 2/2
        ("PO1", 6, 2): ("element.too_long", True),  # 16 digits: PO102 is R 1/15
    }
    assert d.document is not None and d.status == "failed"
    text = build_acknowledgment(result.interchanges[0].summary, now=NOW, interchange_control="1").text
    segs = text.replace("\n", "").split("~")
    assert "AK4*5**8*200306" in segs and "AK4*2**6*1E100000000" in segs and "AK4*3**5*INVALID" in segs
    assert "AK4*2**7*XYZ" in segs and "AK5*R*5" in segs


def test_edifact_numeric_lengths_by_directory_and_unit_shapes_reach_ucd():
    result = translate((RIGOR / "edifact_orders_bad_elements.edi").read_bytes())
    (d,) = result.documents
    assert [(f.segment_tag, f.element_index, f.component_index, f.code, f.is_error) for f in d.findings] == [
        ("QTY", 1, 2, "element.too_long", True), ("QTY", 1, 3, "element.invalid_code", False)]
    text = build_acknowledgment(result.interchanges[0].summary, now=NOW, interchange_control="1").text
    assert "UCS+6'UCD+39+2:2'" in text and "UCM+1+ORDERS:D:96A:UN+4" in text
    assert (edifact_number_limit("QTY", "D96A"), edifact_number_limit("QTY", "D01B")) == (15, 35)


def test_partner_translations_apply_before_the_checks():
    partners = PartnerDirectory([
        PartnerMapping.model_validate({"id": "x", "name": "X", "identifiers": {"x12": [{"id": "CODESENDER"}]},
                                       "mapping": {"translations": {"uom": {"INVALID": "EA"}, "currency": {"XYZ": "USD"}}}}),
        PartnerMapping.model_validate({"id": "e", "name": "E", "identifiers": {"edifact": [{"id": "CODESENDER"}]},
                                       "mapping": {"translations": {"uom": {"PIECES": "PCE"}}}}),
    ])
    (d,) = translate((RIGOR / "x12_850_bad_elements.x12").read_bytes(), partners).documents
    assert {(f.segment_tag, f.element_index) for f in d.findings} == {("BEG", 5), ("PO1", 2)}
    assert d.document["currency"] == "USD" and d.document["lines"][1]["uom"] == "EA"
    (d,) = translate((RIGOR / "edifact_orders_bad_elements.edi").read_bytes(), partners).documents
    assert [f.code for f in d.findings] == ["element.too_long"] and d.document["lines"][1]["uom"] == "PCE"


def test_code_lists():
    assert is_currency("EUR") and is_currency("NLG") and not is_currency("XYZ") and not is_currency("eur")
    assert is_unit("EA", "x12") and not is_unit("PCE", "x12") and not is_unit("ea", "x12")
    assert is_unit("PCE", "edifact") and is_unit("C62", "edifact") and not is_unit("PIECES", "edifact")


def test_x12_number_lengths_agree_with_pyx12s_data_element_dictionary():
    dictionary = ET.parse(Path(pyx12.__file__).parent / "map" / "dataele.xml").getroot()
    elements = {e.get("ele_num"): e for e in dictionary.iter("data_ele")}
    checked = 0
    for (tag, n), (number, limit) in X12_NUMBERS.items():
        e = elements.get(number)
        if e is None:
            continue  # pyx12's dictionary holds the elements of the HIPAA sets (no 330 quantity ordered)
        checked += 1
        assert e.get("data_type") in ("R", "N0", "N2"), (tag, n, number)
        assert int(e.get("max_len")) == limit, (tag, n, number, e.get("max_len"))
    assert checked >= len(X12_NUMBERS) - 1
