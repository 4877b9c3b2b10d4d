"""Acknowledgment builders: exact segments, then proof they parse (pyx12, pydifact)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import warnings
from datetime import datetime

import pytest

import pyx12
import pyx12.params
import pyx12.x12file
import pyx12.x12n_document
from pydifact.parser import Parser
from pydifact.segmentcollection import Interchange

from translators.acks import (
    AckStatus,
    Party,
    build_997,
    build_999,
    build_acknowledgment,
    build_contrl,
    build_ta1,
)
from translators.findings import Severity, finding
from translators.model import (
    Delimiters,
    GroupInfo,
    GroupSummary,
    InterchangeInfo,
    InterchangeSummary,
    SetSummary,
    TransactionSet,
)

from tests.corpus import params as corpus_params

NOW = datetime(2026, 11, 22, 9, 30)
W = Severity.WARNING
X12 = Delimiters(element="*", component=":", segment="~")
EDI = Delimiters(element="+", component=":", segment="'", release="?")

# The acknowledgment's ISA: our id (the received ISA08, qualifier 01) first, the sender's second.
ISA_4010 = "ISA*00*          *00*          *01*RECEIVERID     *ZZ*SENDERID       *261122*0930*U*00401*000000042*0*P*:"
ISA_5010 = "ISA*00*          *00*          *01*RECEIVERID     *ZZ*SENDERID       *261122*0930*^*00501*000000042*0*P*:"
GS_4010 = "GS*FA*RECEIVERAPP*SENDERAPP*20261122*0930*7*X*004010"


# --------------------------------------------------------------------------------------------
# Hand-built summaries


def isa_header(version="00401", control="000000905", ack="0", rep="U"):
    return ["ISA", "00", " " * 10, "00", " " * 10, "ZZ", "SENDERID".ljust(15), "01", "RECEIVERID".ljust(15),
            "261120", "1200", rep, version, control, ack, "P", ":"]  # fmt: skip


def x12_summary(*groups, findings=(), version="00401", ack=False, delimiters=X12, test=False):
    rep = "^" if version >= "00402" else "U"
    info = InterchangeInfo(
        standard="x12", delimiters=delimiters, sender_id="SENDERID", sender_qualifier="ZZ",
        receiver_id="RECEIVERID", receiver_qualifier="01", control_number="000000905", version=version,
        date="2026-11-20", time="12:00", test=test, ack_requested=ack,
        header=isa_header(version, ack="1" if ack else "0", rep=rep),
    )  # fmt: skip
    return InterchangeSummary(info=info, groups=list(groups), findings=list(findings))


def po_group(*sets, control="17", version="004010", findings=(), trailer_count=None, functional_id="PO"):
    info = GroupInfo(
        functional_id=functional_id, sender_id="SENDERAPP", receiver_id="RECEIVERAPP", control_number=control,
        version=version, header=["GS", functional_id, "SENDERAPP", "RECEIVERAPP", "20261120", "1200", control, "X", version],
    )  # fmt: skip
    count = trailer_count if trailer_count is not None else str(len(sets))
    return GroupSummary(info=info, sets=list(sets), findings=list(findings), trailer_count=count)


def po(control="0001", *findings, ref=None, type="850"):
    return SetSummary(type=type, control_number=control, findings=list(findings), implementation_reference=ref)


def edi_summary(*sets, findings=(), version="3", delimiters=EDI, sender=("SENDER", "14"), groups=()):
    header = ["UNB", ["UNOC", version], list(sender), ["RECEIVER", "14"], ["261120", "1200"], "IC1"]
    info = InterchangeInfo(
        standard="edifact", delimiters=delimiters, sender_id=sender[0], sender_qualifier=sender[1],
        receiver_id="RECEIVER", receiver_qualifier="14", control_number="IC1", version=version,
        syntax_identifier="UNOC", header=header,
    )  # fmt: skip
    return InterchangeSummary(info=info, sets=list(sets), findings=list(findings), groups=list(groups))


def unh(summary: InterchangeSummary, ref: str, association: str | None = None) -> TransactionSet:
    ident = ["ORDERS", "D", "96A", "UN"] + ([association] if association else [])
    return TransactionSet(
        standard="edifact", type="ORDERS", control_number=ref, version="D96A",
        segments=[["UNH", ref, ident], ["BGM", "220", "PO1"], ["UNT", "3", ref]],
        first_segment_index=2, interchange=summary.info, group=None, association=association,
    )  # fmt: skip


def x12_segments(text: str, term: str = "~") -> list[str]:
    return [s.strip("\r\n") for s in text.split(term) if s.strip("\r\n")]


def edi_segments(text: str) -> list[str]:
    return [s.strip("\r\n") for s in re.split(r"(?<!\?)'", text) if s.strip("\r\n")]


# --------------------------------------------------------------------------------------------
# Well-formedness: pyx12 and pydifact


def x12_check(text: str) -> list:
    """Parse an X12 acknowledgment with pyx12; no structural error; trailers agree with content.

    pyx12 reads only 00401 and 00501 envelopes: an acknowledgment of an older (or odd) ISA12
    echoes that version, so for the parse alone it is swapped for 00401 (the ISA is fixed width).
    """
    assert text.startswith("ISA") and len(text) > 106
    if text[84:89] not in ("00401", "00501"):
        text = text[:84] + "00401" + text[89:]
    reader = pyx12.x12file.X12Reader(io.StringIO(text))
    segs = list(reader)
    errors = reader.pop_errors()
    reader.cleanup()
    errors += reader.pop_errors()
    assert errors == [], errors
    ids = [s.get_seg_id() for s in segs]
    assert ids[0] == "ISA" and ids[-1] == "IEA"
    assert segs[-1].get_value("IEA02") == segs[0].get_value("ISA13")
    assert int(segs[-1].get_value("IEA01")) == ids.count("GS")
    assert ids.count("GS") == ids.count("GE") and ids.count("ST") == ids.count("SE")
    gs = st = None
    sets_in_group = seg_in_set = 0
    for seg, tag in zip(segs, ids):
        if tag == "GS":
            gs, sets_in_group = seg, 0
        elif tag == "GE":
            assert seg.get_value("GE02") == gs.get_value("GS06")
            assert int(seg.get_value("GE01")) == sets_in_group
        elif tag == "ST":
            st, seg_in_set = seg, 0
            sets_in_group += 1
        if st is not None:
            seg_in_set += 1
        if tag == "SE":
            assert seg.get_value("SE02") == st.get_value("ST02")
            assert int(seg.get_value("SE01")) == seg_in_set
            st = None
    return segs


@pytest.fixture(scope="session")
def lifted_maps(tmp_path_factory):
    """pyx12's 997/999 maps with the HIPAA-only code lists (AK101, AK201, business-unit CTX) lifted,
    so acknowledgments of 850/810 groups validate against everything else in the maps."""
    src = os.path.join(os.path.dirname(pyx12.__file__), "map")
    dst = tmp_path_factory.mktemp("pyx12-maps")
    for name in os.listdir(src):
        if name.endswith((".xml", ".xsd")):
            shutil.copy(os.path.join(src, name), dst)

    def lift(m: re.Match) -> str:
        block = m.group(0)
        if m.group(1) in ("AK101", "AK201") or (m.group(1) == "CTX01-01" and "<code>CLM01</code>" in block):
            block = re.sub(r"<valid_codes>.*?</valid_codes>", "", block, flags=re.S)
        return block

    for name in ("997.4010.xml", "999.5010X231.A1.xml"):
        p = dst / name
        p.write_text(re.sub(r'<element xid="([\w-]+)">.*?</element>', lift, p.read_text(), flags=re.S))
    return str(dst)


def x12_validate(text: str, map_path: str | None = None) -> tuple[bool, list]:
    """Full pyx12 validation of a 997 (004010) or 999 (005010X231A1) against its map."""
    out = io.StringIO()
    ok = pyx12.x12n_document.x12n_document(pyx12.params.params(), io.StringIO(text), None, None, None, out, map_path=map_path)
    errors = []

    def walk(node):
        if isinstance(node, dict):
            errors.extend(node.get("errors") or [])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(out.getvalue()))
    return ok, errors


def contrl_check(text: str) -> list:
    """Parse a CONTRL with pydifact; one CONTRL message; UNT and UNZ agree with content."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interchange = Interchange.from_str(text)
        messages = list(interchange.get_messages())
        raw = list(Parser().parse(text))
    assert [m.type for m in messages] == ["CONTRL"]
    tags = [s.tag for s in raw if s.tag != "UNA"]
    assert tags[0] == "UNB" and tags[-1] == "UNZ" and tags[1] == "UNH" and tags[-2] == "UNT"
    body = [s for s in raw if s.tag != "UNA"]
    unb, unh_, unt, unz = body[0], body[1], body[-2], body[-1]
    assert int(unt.elements[0]) == len(body) - 2  # UNH..UNT inclusive
    assert unt.elements[1] == unh_.elements[0]
    assert unz.elements == ["1", unb.elements[4]]
    return body


# --------------------------------------------------------------------------------------------
# 997


def test_accepted_997_exact():
    summary = x12_summary(po_group(po("0001")))
    text = build_997(summary, now=NOW, interchange_control="42", group_control="7")
    assert x12_segments(text) == [
        ISA_4010, GS_4010, "ST*997*0001", "AK1*PO*17", "AK2*850*0001", "AK5*A", "AK9*A*1*1*1",
        "SE*6*0001", "GE*1*7", "IEA*1*000000042",
    ]  # fmt: skip
    assert len(text.split("~")[0]) == 105  # fixed-width ISA (106 with its terminator)
    x12_check(text)


def test_accepted_with_errors_997_reports_segments_and_elements_at_their_positions(lifted_maps):
    findings = [
        finding("element.too_long", severity=W, segment_tag="PO1", set_position=6, element_index=7, loop_id="PO1", value="X" * 120),
        finding("element.invalid_code", severity=W, segment_tag="N1", set_position=4, element_index=1, value="Z*Z\x01"),
        finding("element.invalid_code", severity=W, segment_tag="MEA", set_position=8, element_index=4, component_index=1, value="ZZ"),
        finding("segment.unexpected", severity=W, segment_tag="REF", set_position=5),
    ]
    summary = x12_summary(po_group(po("0001", *findings)))
    text = build_997(summary, now=NOW, interchange_control="42", group_control="7")
    assert x12_segments(text)[2:-2] == [
        "ST*997*0001", "AK1*PO*17", "AK2*850*0001",
        "AK3*N1*4**8", "AK4*1**7*Z?Z?",  # delimiter and control character in the bad value replaced
        "AK3*REF*5**2",
        "AK3*PO1*6*PO1*8", "AK4*7**5*" + "X" * 99,  # copy of the bad value cut to 99
        "AK3*MEA*8**8", "AK4*4:1**7*ZZ",  # element 4, component 1
        "AK5*E*5", "AK9*E*1*1*1", "SE*13*0001",
    ]  # fmt: skip
    x12_check(text)
    ok, errors = x12_validate(text, lifted_maps)
    assert ok and errors == []
    ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7")
    assert ack.kind == "997" and ack.text == text
    assert ack.sets[0].status is AckStatus.ACCEPTED_WITH_ERRORS and ack.sets[0].codes == ("5",)
    assert ack.status is AckStatus.ACCEPTED_WITH_ERRORS


def test_rejected_set_beside_an_accepted_one_gives_ak9_p(lifted_maps):
    bad = po(
        "0001",
        finding("element.mandatory_missing", segment_tag="PO1", set_position=7, element_index=2),
        finding("transaction.count_mismatch", segment_tag="SE", set_position=12, element_index=1, value="11"),
    )
    summary = x12_summary(po_group(bad, po("0002")))
    ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7")
    assert ack.kind == "997" and not ack.includes_ta1
    assert x12_segments(ack.text)[2:-2] == [
        "ST*997*0001", "AK1*PO*17",
        "AK2*850*0001", "AK3*PO1*7**8", "AK4*2**1", "AK5*R*4*5",
        "AK2*850*0002", "AK5*A",
        "AK9*P*2*2*1", "SE*10*0001",
    ]  # fmt: skip
    assert [(s.control_number, s.status) for s in ack.sets] == [
        ("0001", AckStatus.REJECTED), ("0002", AckStatus.ACCEPTED)]  # fmt: skip
    assert ack.groups[0].status is AckStatus.PARTIALLY_ACCEPTED
    assert ack.status is AckStatus.PARTIALLY_ACCEPTED
    assert ack.set_status("0001", "17") is AckStatus.REJECTED
    record = json.loads(json.dumps(ack.to_dict()))
    assert record["status"] == "partially_accepted" and record["sets"][0]["codes"] == ["4", "5"]
    assert (ack.interchange_control, ack.group_control, ack.message_controls) == ("000000042", "7", ("0001",))
    x12_check(ack.text)
    ok, errors = x12_validate(ack.text, lifted_maps)
    assert ok and errors == []


def test_all_sets_rejected_gives_ak9_r_without_group_codes():
    summary = x12_summary(po_group(po("0001", finding("transaction.trailer_missing", segment_tag="PO1", set_position=9))))
    text = build_997(summary, now=NOW, interchange_control="42", group_control="7")
    assert "AK5*R*2" in x12_segments(text) and "AK9*R*1*1*0" in x12_segments(text)


@pytest.mark.parametrize(
    "findings, ak9",
    [
        ([finding("group.count_mismatch", value="3")], "AK9*R*3*2*2*5"),
        ([finding("group.count_mismatch", value="3"), finding("group.control_number_mismatch", value="18")],
         "AK9*R*3*2*2*5*4"),
        # relaxed by the partner's validation.relax: reported, not rejected
        ([finding("group.count_mismatch", severity=W, value="3")], "AK9*E*3*2*2*5"),
    ],
)  # fmt: skip
def test_group_count_mismatch_rejects_the_group_with_ak905(findings, ak9):
    summary = x12_summary(po_group(po("0001"), po("0002"), trailer_count="3", findings=findings))
    ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7")
    segs = x12_segments(ack.text)
    assert segs[-4:-2] == [ak9, "SE*8*0001"]  # AK902 is GE01 as received (3), AK903 what came (2)
    assert segs.count("AK5*A") == 2  # the sets themselves were fine
    rejected = ak9.startswith("AK9*R")
    assert ack.groups[0].codes == tuple(ak9.split("*")[5:])
    assert ack.groups[0].status is (AckStatus.REJECTED if rejected else AckStatus.ACCEPTED_WITH_ERRORS)
    # a rejected group goes back whole
    assert {s.status for s in ack.sets} == {AckStatus.REJECTED if rejected else AckStatus.ACCEPTED}
    x12_check(ack.text)


def test_findings_hung_higher_up_reach_their_set_and_unknown_codes_do_not_crash():
    from translators.findings import Finding

    stray = finding("segment.unexpected", segment_tag="REF", set_position=3, group_control="17", message_control="0002")
    odd = Finding(code="partner.custom_rule", message="not in the catalogue")
    summary = x12_summary(po_group(po("0001", odd), po("0002")), findings=[stray])
    segs = x12_segments(build_997(summary, now=NOW, interchange_control="42", group_control="7"))
    assert segs[4:10] == ["AK2*850*0001", "AK5*R", "AK2*850*0002", "AK3*REF*3**2", "AK5*R*5", "AK9*R*2*2*0"]


def test_997_for_older_versions_uses_their_date_and_position_forms():
    f = finding("element.invalid_code", segment_tag="MEA", set_position=3, element_index=4, component_index=1, value="ZZ")
    summary = x12_summary(po_group(po("0001", f), version="003040"), version="00304")
    segs = x12_segments(build_997(summary, now=NOW, interchange_control="42", group_control="7"))
    assert segs[0].split("*")[11:13] == ["U", "00304"]
    assert segs[1] == "GS*FA*RECEIVERAPP*SENDERAPP*261122*0930*7*X*003040"  # GS04 YYMMDD before 004010
    assert "AK4*4**7*ZZ" in segs  # no C030 composite before 004010


def test_fa_groups_are_not_acknowledged():
    summary = x12_summary(po_group(po("0001", type="997"), functional_id="FA"), ack=True)
    assert build_997(summary, now=NOW, interchange_control="42", group_control="7") is None
    ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7")
    assert ack.kind == "TA1"  # ISA14 = 1 still wants its TA1
    assert x12_segments(ack.text)[1] == "TA1*000000905*261120*1200*A*000"


# --------------------------------------------------------------------------------------------
# 999


def test_999_with_ik3_ik4_ctx_and_implementation_references(lifted_maps):
    findings = [
        finding("element.invalid_code", segment_tag="PO1", set_position=6, element_index=3, loop_id="PO1", value="ZZ",
                extra={"business_unit": ("BEG03", "PO-778"), "trigger": {"segment_tag": "BEG", "set_position": 2, "element_index": 1}}),
        finding("segment.mandatory_missing", segment_tag="DTM", set_position=4),
        finding("element.too_long", segment_tag="PID", set_position=7, element_index=5, component_index=2, value="LONG",
                extra={"repetition_index": 1}),
    ]  # fmt: skip
    summary = x12_summary(po_group(po("0001", *findings, ref="005010VICS"), version="005010"), version="00501")
    ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7")
    assert ack.kind == "999"
    assert x12_segments(ack.text) == [
        ISA_5010,
        "GS*FA*RECEIVERAPP*SENDERAPP*20261122*0930*7*X*005010X231A1",
        "ST*999*0001*005010X231A1",
        "AK1*PO*17*005010",  # AK103: the received GS08
        "AK2*850*0001*005010VICS",  # AK203: the received ST03
        "IK3*DTM*4**3",
        "IK3*PO1*6*PO1*8",
        "CTX*BEG03:PO-778",  # business unit
        "IK4*3**7*ZZ",
        "CTX*SITUATIONAL TRIGGER*BEG*2**1",  # element context
        "IK3*PID*7**8",
        "IK4*5:2:1**5*LONG",  # element 5, component 2, repetition 1
        "IK5*R*5",
        "AK9*R*1*1*0",
        "SE*13*0001",
        "GE*1*7",
        "IEA*1*000000042",
    ]
    x12_check(ack.text)
    ok, errors = x12_validate(ack.text, lifted_maps)
    assert ok and errors == []


def test_997_and_999_validate_against_pyx12_maps_unmodified():
    """With a group pyx12's (HIPAA) maps know, the acknowledgments validate with no help at all."""
    f = [finding("element.invalid_code", segment_tag="BHT", set_position=2, element_index=2, value="ZZ",
                 extra={"business_unit": ("CLM01", "123")}),
         finding("segment.unexpected", segment_tag="XYZ", set_position=3, severity=W)]  # fmt: skip
    for kind, version, isa12 in (("997", "004010X098A1", "00401"), ("999", "005010X222A1", "00501")):
        group = po_group(po("0001", *f, type="837", ref=version if kind == "999" else None), version=version, functional_id="HC")
        summary = x12_summary(group, version=isa12)
        ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7", line_break="\n")
        assert ack.kind == kind
        ok, errors = x12_validate(ack.text)
        assert ok and errors == [], (kind, errors)
        x12_check(ack.text)


def test_pyx12_validation_can_fail(lifted_maps):
    """The validator used above is not a rubber stamp."""
    text = build_997(x12_summary(po_group(po("0001"))), now=NOW, interchange_control="42", group_control="7")
    ok, errors = x12_validate(text.replace("AK5*A", "AK5*Q"), lifted_maps)
    assert not ok and errors
    with pytest.raises(AssertionError):
        x12_check(text.replace("SE*6*0001", "SE*7*0001"))


# --------------------------------------------------------------------------------------------
# TA1


def test_ta1_for_a_control_number_mismatch():
    mismatch = finding("interchange.control_number_mismatch", segment_tag="IEA", element_index=2, value="000000906")
    summary = x12_summary(po_group(po("0001")), findings=[mismatch])
    text = build_ta1(summary, now=NOW, interchange_control="42")
    assert x12_segments(text) == [ISA_4010, "TA1*000000905*261120*1200*R*001", "IEA*0*000000042"]
    x12_check(text)
    ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7")
    assert ack.kind == "TA1" and ack.text == text and ack.includes_ta1
    assert ack.status is AckStatus.REJECTED and ack.interchange_status is AckStatus.REJECTED
    assert [s.status for s in ack.sets] == [AckStatus.REJECTED]
    assert ack.acknowledged_interchange == "000000905" and ack.group_control is None


def test_ta1_requested_rides_in_the_997_envelope():
    summary = x12_summary(po_group(po("0001")), ack=True)
    ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7")
    segs = x12_segments(ack.text)
    assert ack.kind == "997" and ack.includes_ta1
    assert segs[:3] == [ISA_4010, "TA1*000000905*261120*1200*A*000", GS_4010]
    assert segs[-1] == "IEA*1*000000042"
    x12_check(ack.text)


def test_interchange_warnings_give_ta1_e_beside_the_997():
    warning = finding("interchange.control_number_mismatch", severity=W, segment_tag="IEA", element_index=2)
    ack = build_acknowledgment(x12_summary(po_group(po("0001")), findings=[warning]), now=NOW, interchange_control="42",
                               group_control="7")  # fmt: skip
    assert ack.kind == "997" and x12_segments(ack.text)[1] == "TA1*000000905*261120*1200*E*001"
    assert ack.interchange_status is AckStatus.ACCEPTED_WITH_ERRORS and ack.sets[0].status is AckStatus.ACCEPTED


# --------------------------------------------------------------------------------------------
# Addressing, delimiters, dispatch


def test_reversed_parties_received_delimiters_and_overrides():
    d = Delimiters(element="|", component=">", segment="!")
    summary = x12_summary(po_group(po("0001")), delimiters=d)
    text = build_997(summary, now=NOW, interchange_control="42", group_control="7", line_break="\r\n")
    segs = x12_segments(text, "!")
    assert segs[0] == ISA_4010.replace("*", "|").replace("P|:", "P|>")
    assert segs[1] == GS_4010.replace("*", "|")
    assert text.endswith("IEA|1|000000042!\r\n") and "~" not in text
    x12_check(text)
    text = build_997(summary, now=NOW, interchange_control="42", group_control="7",
                     sender=Party("GATEWAY", "ZZ"), receiver=Party("PARTNER", "12"))  # fmt: skip
    isa = x12_segments(text, "!")[0].split("|")
    assert isa[5:9] == ["ZZ", "GATEWAY".ljust(15), "12", "PARTNER".ljust(15)]
    assert x12_segments(text, "!")[1].split("|")[2:4] == ["GATEWAY", "PARTNER"]


def test_unusable_received_delimiters_are_replaced():
    # a space terminator (ISA02 is blank: it cannot end segments) and an ISA16 the reader could not know
    summary = x12_summary(po_group(po("0001")), delimiters=Delimiters(element="*", component="\x1f", segment=" "))
    summary.info.header[16] = ""
    text = build_997(summary, now=NOW, interchange_control="42", group_control="7", line_break="\n")
    assert text.startswith(ISA_4010 + "~\n" + GS_4010 + "~\n")
    x12_check(text)


def test_dispatch_by_version_and_standard():
    kinds = {}
    for group_version, isa12 in (("003040", "00304"), ("004010", "00401"), ("004010VICS", "00401"), ("005010", "00501")):
        summary = x12_summary(po_group(po("0001"), version=group_version), version=isa12)
        kinds[group_version] = build_acknowledgment(summary, now=NOW, interchange_control="1").kind
    assert kinds == {"003040": "997", "004010": "997", "004010VICS": "997", "005010": "999"}
    s5010 = x12_summary(po_group(po("0001"), version="005010"), version="00501")
    forced = build_acknowledgment(s5010, now=NOW, interchange_control="1", kind="997")
    assert forced.kind == "997" and "AK1*PO*17*005010" in x12_segments(forced.text)
    assert forced.group_control == "1"  # defaults to the interchange control number
    e = edi_summary(SetSummary("ORDERS", "M1", []))
    assert build_acknowledgment(e, now=NOW, interchange_control="1").kind == "CONTRL"
    with pytest.raises(ValueError):
        build_acknowledgment(e, now=NOW, interchange_control="1", kind="997")
    with pytest.raises(ValueError):
        build_997(s5010, now=NOW, interchange_control="12345678901", group_control="1")


def test_unreadable_interchange_gets_no_acknowledgment():
    broken = InterchangeSummary(
        info=InterchangeInfo(standard="x12", delimiters=X12, header=["ISA"]),
        findings=[finding("interchange.header_invalid", "The ISA segment is cut short", segment_tag="ISA")],
        complete=False,
    )
    assert build_acknowledgment(broken, now=NOW, interchange_control="1") is None
    assert build_ta1(broken, now=NOW, interchange_control="1") is None
    assert build_997(broken, now=NOW, interchange_control="1", group_control="1") is None
    assert build_acknowledgment(None, now=NOW, interchange_control="1") is None
    edi = InterchangeSummary(info=InterchangeInfo(standard="edifact", delimiters=EDI, header=[]))
    assert build_contrl(edi, now=NOW, interchange_control="1") is None


# --------------------------------------------------------------------------------------------
# CONTRL


def test_contrl_accepted():
    summary = edi_summary(SetSummary("ORDERS", "M1", []))
    ack = build_acknowledgment(summary, now=NOW, interchange_control="ACK1", transaction_sets=[unh(summary, "M1")])
    assert ack.text == (
        "UNB+UNOC:3+RECEIVER:14+SENDER:14+261122:0930+ACK1'"
        "UNH+1+CONTRL:D:3:UN'"
        "UCI+IC1+SENDER:14+RECEIVER:14+7'"
        "UCM+M1+ORDERS:D:96A:UN+7'"
        "UNT+4+1'"
        "UNZ+1+ACK1'"
    )
    assert ack.kind == "CONTRL" and ack.status is AckStatus.ACCEPTED and ack.message_controls == ("1",)
    body = contrl_check(ack.text)
    assert body[2].tag == "UCI" and body[2].elements[3] == "7"


def test_contrl_with_ucm_ucs_ucd_errors():
    m1 = [
        finding("segment.unexpected", segment_tag="FTX", set_position=5),
        finding("element.invalid_code", segment_tag="NAD", set_position=7, element_index=3, component_index=2, value="X"),
        finding("element.mandatory_missing", segment_tag="NAD", set_position=7, element_index=1),
    ]
    m3 = [finding("transaction.count_mismatch", segment_tag="UNT", set_position=9, element_index=1, value="8")]
    summary = edi_summary(SetSummary("ORDERS", "M1", m1), SetSummary("ORDERS", "M2", []), SetSummary("ORDERS", "M3", m3))
    sets = [unh(summary, "M1"), unh(summary, "M2", "EAN008"), unh(summary, "M3")]
    text = build_contrl(summary, now=NOW, interchange_control="ACK1", transaction_sets=sets)
    assert edi_segments(text)[2:-1] == [
        "UCI+IC1+SENDER:14+RECEIVER:14+7",
        "UCM+M1+ORDERS:D:96A:UN+4",
        "UCS+5+15",  # segment position in the message (UNH = 1), error code
        "UCS+7",
        "UCD+12+4:2",  # 0098 counts the tag as 1: element 3 is position 4; component 2
        "UCD+13+2",
        "UCM+M2+ORDERS:D:96A:UN:EAN008+7",
        "UCM+M3+ORDERS:D:96A:UN+4+29+UNT+2",  # the error, its service segment and element position
        "UNT+10+1",
    ]
    body = contrl_check(text)
    assert [s.elements[0] for s in body if s.tag == "UCM"] == ["M1", "M2", "M3"]
    ack = build_acknowledgment(summary, now=NOW, interchange_control="ACK1", transaction_sets=sets)
    assert [s.status for s in ack.sets] == [AckStatus.REJECTED, AckStatus.ACCEPTED, AckStatus.REJECTED]
    assert ack.sets[2].codes == ("29",)


def test_contrl_rejected_interchange_syntax_4():
    bad = finding("interchange.control_number_mismatch", segment_tag="UNZ", element_index=2, value="IC2")
    summary = edi_summary(SetSummary("ORDERS", "M1", []), findings=[bad], version="4")
    text = build_contrl(summary, now=NOW, interchange_control="ACK1")
    assert edi_segments(text) == [
        "UNB+UNOC:4+RECEIVER:14+SENDER:14+20261122:0930+ACK1",  # CCYYMMDD in syntax 4
        "UNH+1+CONTRL:4:1:UN",
        "UCI+IC1+SENDER:14+RECEIVER:14+4+28+UNZ+3",  # rejected: nothing below is listed
        "UNT+3+1",
        "UNZ+1+ACK1",
    ]
    contrl_check(text)


def test_contrl_receipt_only_groups_and_service_characters():
    d = Delimiters(element="+", component=":", segment="'", release="?", decimal=",")
    group_info = GroupInfo(functional_id="ORDERS", sender_id="APP1", receiver_id="APP2", control_number="G1",
                           header=["UNG", "ORDERS", ["APP1", "ZZ"], ["APP2", "ZZ"], ["261120", "1200"], "G1", "UN", ["D", "96A"]])  # fmt: skip
    group = GroupSummary(info=group_info, sets=[SetSummary("ORDERS", "M1", [])],
                         findings=[finding("group.count_mismatch", value="2")])  # fmt: skip
    summary = edi_summary(delimiters=d, sender=("ACME+CO", "ZZ"), groups=[group])
    text = build_contrl(summary, now=NOW, interchange_control="ACK1", line_break="\n")
    lines = text.splitlines()
    assert lines[0] == "UNA:+,? '"  # non-default decimal mark: the service string advice goes first
    assert lines[1] == "UNB+UNOC:3+RECEIVER:14+ACME?+CO:ZZ+261122:0930+ACK1'"
    assert lines[3] == "UCI+IC1+ACME?+CO:ZZ+RECEIVER:14+7'"
    assert lines[4] == "UCF+G1+APP1:ZZ+APP2:ZZ+4+29'"  # group rejected; its messages go with it
    body = contrl_check(text)
    assert body[0].elements[2] == ["ACME+CO", "ZZ"]  # pydifact reads the escaped id back
    receipt = build_contrl(edi_summary(SetSummary("ORDERS", "M1", [])), now=NOW, interchange_control="ACK2", receipt_only=True)
    assert edi_segments(receipt)[2] == "UCI+IC1+SENDER:14+RECEIVER:14+8"
    contrl_check(receipt)


# --------------------------------------------------------------------------------------------
# Through the envelope reader


def _read(data: bytes):
    from translators.envelope import read_interchanges

    interchanges, _file_findings = read_interchanges(data)
    return interchanges


X12_850 = (
    "ISA*00*          *00*          *ZZ*SENDERID       *01*RECEIVERID     *261120*1200*U*00401*000000905*1*P*:~\n"
    "GS*PO*SENDERAPP*RECEIVERAPP*20261120*1200*17*X*004010~\n"
    "ST*850*0001~\nBEG*00*SA*PO-1**20261120~\nPO1*1*10*EA*9.5**BP*A-1~\nSE*4*0001~\n"
    "ST*850*0002~\nBEG*00*SA*PO-2**20261120~\nSE*3*0002~\n"
    "GE*3*17~\n"
    "IEA*1*000000906~\n"
)


def test_through_the_envelope_reader_x12():
    (summary, sets), = _read(X12_850.encode())
    ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7", transaction_sets=sets)
    # IEA02 differs from ISA13: the interchange is rejected, so a TA1 R 001 alone answers it
    assert ack.kind == "TA1" and x12_segments(ack.text)[1] == "TA1*000000905*261120*1200*R*001"
    x12_check(ack.text)
    # The same with the trailer's control number right: GE01 says 3 sets, 2 came: the group is rejected
    (summary, sets), = _read(X12_850.replace("IEA*1*000000906", "IEA*1*000000905").encode())
    ack = build_acknowledgment(summary, now=NOW, interchange_control="42", group_control="7", transaction_sets=sets)
    segs = x12_segments(ack.text)
    assert segs[0] == ISA_4010 and segs[1] == "TA1*000000905*261120*1200*A*000"  # ISA14 = 1 asked for it
    assert segs[3:-2] == ["ST*997*0001", "AK1*PO*17", "AK2*850*0001", "AK5*A", "AK2*850*0002", "AK5*A",
                          "AK9*R*3*2*2*5", "SE*8*0001"]  # fmt: skip
    x12_check(ack.text)


def test_through_the_envelope_reader_edifact():
    data = (
        "UNA:+.? '\n"
        "UNB+UNOC:3+SENDER:14+RECEIVER:14+261120:1200+IC1'\n"
        "UNH+M1+ORDERS:D:96A:UN:EAN008'\nBGM+220+PO-1+9'\nUNT+3+M1'\n"
        "UNH+M2+ORDERS:D:96A:UN:EAN008'\nBGM+220+PO-2+9'\nUNT+9+M2'\n"
        "UNZ+2+IC1'\n"
    ).encode()
    (summary, sets), = _read(data)
    ack = build_acknowledgment(summary, now=NOW, interchange_control="ACK1", transaction_sets=sets)
    segs = edi_segments(ack.text)
    assert segs[3] == "UCM+M1+ORDERS:D:96A:UN:EAN008+7"
    # UNT count wrong: the message is rejected (4) with the code
    assert segs[4] == "UCM+M2+ORDERS:D:96A:UN:EAN008+4+29+UNT+2"
    contrl_check(ack.text)


@pytest.mark.parametrize("sample", corpus_params(folder_prefix="x12/8"))
def test_every_x12_corpus_sample_gets_a_well_formed_acknowledgment(sample):
    built = 0
    for n, (summary, sets) in enumerate(_read(sample.path.read_bytes()), 1):
        ack = build_acknowledgment(summary, now=NOW, interchange_control=str(n), transaction_sets=sets, line_break="\n")
        if ack is None:
            continue
        built += 1
        segs = x12_check(ack.text)
        assert ack.kind in ("997", "999", "TA1")
        if ack.kind != "TA1":
            assert sum(1 for s in segs if s.get_seg_id() in ("AK2",)) == len(summary.all_sets())
    if sample.expect == "ok":
        assert built


@pytest.mark.parametrize("sample", corpus_params(folder_prefix="edifact/ORDERS") + corpus_params(folder_prefix="edifact/INVOIC"))
def test_every_edifact_corpus_sample_gets_a_well_formed_contrl(sample):
    built = 0
    for n, (summary, sets) in enumerate(_read(sample.path.read_bytes()), 1):
        ack = build_acknowledgment(summary, now=NOW, interchange_control=f"A{n}", transaction_sets=sets, line_break="\n")
        if ack is None:
            continue
        built += 1
        body = contrl_check(ack.text)
        if ack.interchange_status is not AckStatus.REJECTED:
            ucm = [s for s in body if s.tag == "UCM"]
            listed = {s.elements[0] for s in ucm}
            unlisted = [s for s in summary.all_sets() if s.control_number not in listed]
            # a message goes unlisted only inside a rejected group
            assert all(g.findings for g in summary.groups) or not unlisted
            for s in ucm:  # the message identifier is the received one, complete
                assert isinstance(s.elements[1], list) and len(s.elements[1]) >= 4 and all(s.elements[1][:4])
    if sample.expect == "ok":
        assert built
