"""Issue 14 on our own files (fixtures/edi/rigor): bare messages, strict trailers and their
relaxation, recovery from a corrupt set header, test interchanges."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from translators import build_acknowledgment, translate
from translators.canonical import validate_canonical
from translators.mapping import PartnerDirectory, PartnerMapping

RIGOR = Path(__file__).resolve().parent.parent / "fixtures" / "edi" / "rigor"
NOW = datetime(2026, 12, 8, 9, 30)


def read(name: str) -> bytes:
    return (RIGOR / name).read_bytes()


def partner(**extra) -> PartnerDirectory:
    return PartnerDirectory([PartnerMapping.model_validate({
        "id": "acme", "name": "Acme", "identifiers": {"x12": [{"id": "ACMEX", "qualifier": "ZZ"}],
                                                      "edifact": [{"id": "4012345000009"}]}, **extra})])


def ack_segments(result, n: int = 0) -> list[str]:
    ack = build_acknowledgment(result.interchanges[n].summary, now=NOW, interchange_control="900")
    assert ack is not None
    return [s.strip() for s in ack.text.replace("\n", "").split(ack.text[105] if ack.standard == "x12" else "'") if s]


# -- 1. bare messages ----------------------------------------------------------------------------


def test_a_bare_x12_set_translates_with_the_sender_the_source_names():
    result = translate(read("x12_850_bare_set.x12"), partner(), partner="acme")
    assert result.ok
    (d,) = result.documents
    doc = d.document
    validate_canonical(doc)
    assert (d.partner, doc["sender_id"], doc["receiver_id"]) == ("acme", "ACMEX", None)
    assert doc["control"] == {"interchange": None, "group": None, "message": "0001", "envelope": "none",
                              "test": False, "relaxed": []}
    assert doc["po_number"] == "BARE-850" and [ln["buyer_part"] for ln in doc["lines"]] == ["A-1", "A-2"]
    # Without a source hint it still translates, with no sender and the standard mapping.
    (d,) = translate(read("x12_850_bare_set.x12")).documents
    assert d.ok and d.partner is None and d.document["sender_id"] is None


def test_a_bare_group_takes_sender_and_receiver_from_gs():
    result = translate(read("x12_850_bare_group.x12"))
    (d,) = result.documents
    assert result.ok and d.document["control"]["envelope"] == "group" and d.document["control"]["group"] == "77"
    assert (d.document["sender_id"], d.document["receiver_id"]) == ("ACMEBUY", "WIDGETS")


def test_bare_edifact_messages_after_a_una():
    result = translate(read("edifact_orders_bare_una.edi"), partner(), partner="acme")
    assert result.ok
    assert [(d.document["po_number"], d.document["control"]["envelope"], d.document["sender_id"])
            for d in result.documents] == [("BARE-ORD-1", "none", "4012345000009"), ("BARE-ORD-2", "none", "4012345000009")]


def test_a_bare_message_with_segments_before_its_header_is_refused_naming_them():
    result = translate(read("edifact_invoic_bare_header_late.edi"), source="late.edi")
    assert not result.ok
    (err,) = result.errors()
    assert (err.code, err.segment_tag, err.set_position) == ("segment.unexpected", "DTM", 2)
    assert err.describe("late.edi").startswith("late.edi: segment DTM #2")
    no_header = b"ST*850*0001~PO1*1*1*EA*1**BP*X~SE*3*0001~"
    (err,) = translate(no_header).errors()
    assert (err.code, err.segment_tag) == ("segment.mandatory_missing", "ST") and "no BEG" in err.message


def test_no_non_empty_input_is_dropped_silently():
    for data in (b"UNH+1+ORDERS:D:96A:UN'BGM+220+X+9'UNT+3+1'", b"ST*850*1~SE*2*1~", b"GS*PO*A*B*1*1*1*X*004010~",
                 b"hello world", b"UNA:+.? 'UNH+1+ORDERS'", b"ISA*00*", b"UNA:+.? '", b"GS*PO*A*B*1*1*1*X*004010~GE*0*1~"):
        result = translate(data)
        assert result.documents or not result.ok, data


# -- 3. strict trailers --------------------------------------------------------------------------


def test_a_truncated_set_is_rejected_and_its_sibling_goes_on():
    result = translate(read("x12_850_truncated_set.x12"))
    first, second = result.documents
    assert first.status == "failed" and second.status == "translated"
    assert {f.code for f in first.errors} == {"transaction.count_mismatch", "segment.line_count_mismatch",
                                              "segment.hash_total_mismatch"}
    segs = ack_segments(result)
    assert "AK5*R*4*5" in segs and "AK5*A" in segs and "AK9*P*2*2*1" in segs
    assert "AK3*CTT*9**8" in segs and "AK3*SE*10**8" not in segs


def test_a_trailer_control_number_that_differs_rejects_the_interchange_with_ta1_r():
    result = translate(read("x12_850_iea_control_differs.x12"))
    assert [d.status for d in result.documents] == ["failed"] and result.interchanges[0].rejected
    assert result.documents[0].errors[-1].code == "interchange.control_number_mismatch"
    ack = build_acknowledgment(result.interchanges[0].summary, now=NOW, interchange_control="900")
    assert ack.kind == "TA1" and "*R*001" in ack.text


def test_a_partner_may_relax_named_checks_and_the_document_says_so():
    relaxed = partner(identifiers={"x12": [{"id": "TRUNCSENDER"}]},
                      validation={"relax": ["segment_count", "line_count", "hash_total", "interchange_control_number"]})
    result = translate(read("x12_850_truncated_set.x12"), relaxed)
    assert result.ok
    assert result.documents[0].document["control"]["relaxed"] == ["segment_count", "line_count", "hash_total"]
    assert all(not f.is_error for f in result.documents[0].findings)
    assert "AK5*E*4*5" in ack_segments(result)
    result = translate(read("x12_850_iea_control_differs.x12"), relaxed)
    assert result.ok and result.documents[0].document["control"]["relaxed"] == ["interchange_control_number"]
    only_counts = partner(identifiers={"x12": [{"id": "TRUNCSENDER"}]}, validation={"relax": ["segment_count"]})
    assert not translate(read("x12_850_truncated_set.x12"), only_counts).documents[0].ok  # CTT still strict


def test_edifact_unt_count_rejects_the_message_with_contrl_4():
    data = read("edifact_orders_test_interchange.edi").replace(b"UNT+5+1", b"UNT+9+1")
    result = translate(data)
    assert [d.status for d in result.documents] == ["failed"]
    ack = build_acknowledgment(result.interchanges[0].summary, now=NOW, interchange_control="900")
    assert "UCM+1+ORDERS:D:96A:UN+4+29" in ack.text


# -- 5. recovery ---------------------------------------------------------------------------------


def test_a_corrupt_set_header_sinks_only_its_own_set():
    result = translate(read("x12_850_corrupt_st.x12"))
    assert [(d.document or {}).get("po_number") for d in result.documents] == ["OK-1", None, "OK-3"]
    assert [d.status for d in result.documents] == ["translated", "failed", "translated"]
    (err,) = result.documents[1].errors
    assert err.code == "transaction.header_invalid" and err.segment_tag == "S"
    assert not result.interchanges[0].rejected


# -- 7. test interchanges ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x12_850_test_interchange.x12", "edifact_orders_test_interchange.edi"])
def test_test_interchanges_are_marked_translated_and_acknowledged(name):
    result = translate(read(name))
    (d,) = result.documents
    assert d.ok and d.document["control"]["test"] is True
    ack = build_acknowledgment(result.interchanges[0].summary, now=NOW, interchange_control="900")
    assert ack is not None and ack.interchange_status.value == "accepted"
    production = read(name).replace(b"*T*>", b"*P*>").replace(b"++++++1'", b"'")
    assert translate(production).documents[0].document["control"]["test"] is False


# -- 6. values -----------------------------------------------------------------------------------


def test_amounts_restated_in_another_currency_are_not_counted_twice():
    result = translate(read("edifact_invoic_restated_currency_two_orders.edi"))
    (d,) = result.documents
    doc = d.document
    assert d.ok and doc["currency"] == "EUR"
    assert doc["charges"] == [{"code": "FC", "description": "FREIGHT", "amount": "50.00"}]  # not 50 + 56.13
    assert (doc["total_amount"], doc["tax_amount"]) == ("100.00", "19.00")  # not 19 + 21.33


@pytest.mark.parametrize("name, orders", [("edifact_invoic_restated_currency_two_orders.edi", ["PO-100", "PO-200"]),
                                          ("x12_810_two_orders_buyer_codes.x12", ["PO-300", "PO-301"])])
def test_an_invoice_over_several_orders_has_no_header_po_number(name, orders):
    (d,) = translate(read(name)).documents
    validate_canonical(d.document)
    assert d.document["po_number"] is None
    assert [line["po_number"] for line in d.document["lines"]] == orders
    same = read(name).replace(orders[1].encode(), orders[0].encode())
    assert translate(same).documents[0].document["po_number"] == orders[0]  # one order: it is the invoice's


def test_buyer_catalog_and_purchaser_item_codes_are_buyer_parts():
    (d,) = translate(read("x12_810_two_orders_buyer_codes.x12")).documents
    assert [line["buyer_part"] for line in d.document["lines"]] == ["CAT-1", "ITEM-2"]


def test_amt_tt_before_ctt_is_the_total_and_an_unknown_purpose_is_kept_with_a_warning():
    (d,) = translate(read("x12_850_amt_tt_before_ctt.x12")).documents
    assert d.ok and d.document["total_amount"] == "25"
    assert d.document["purpose"] == "77"
    (w,) = d.findings
    assert (w.code, w.segment_tag, w.element_index, w.is_error, w.value) == ("element.invalid_code", "BEG", 1, False, "77")
    original = read("x12_850_amt_tt_before_ctt.x12").replace(b"BEG*77*", b"BEG*00*")
    (d,) = translate(original).documents
    assert d.document["purpose"] == "original" and d.findings == []
