"""The streaming X12 / EDIFACT envelope readers (translators/envelope.py), quirk by quirk.

Inputs are the small fixtures in fixtures/edi/envelope/ and variants derived from them here by
transforming bytes. Expected segments are written out literally (or derived from literal lists
by the same transformation), never read back through the reader under test.
"""

from __future__ import annotations

import gc
import importlib
import os
import shutil
import sysconfig
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translators import decoding
from translators.envelope import read, read_bytes, read_interchanges, segments, transaction_sets
from translators.findings import Finding, Level, Severity
from translators.model import Delimiters, InterchangeSummary, TransactionSet
from translators.translate import translate

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "edi" / "envelope"
X12_BASE = (FIX / "x12_850_4010.x12").read_bytes()
X12_MULTI = (FIX / "x12_850_multi.x12").read_bytes()
EDI_BASE = (FIX / "edifact_orders_d96a.edi").read_bytes()
EDI_GROUPS = (FIX / "edifact_groups.edi").read_bytes()
EDI_UNOC = (FIX / "edifact_unoc_latin1.edi").read_bytes()
EDI_UNOE = (FIX / "edifact_unoe_cyrillic.edi").read_bytes()
EDI_UNOW = (FIX / "edifact_unow_utf8.edi").read_bytes()

W = Severity.WARNING
E = Severity.ERROR

# ---------------------------------------------------------------------------------------------
# The base documents as the reader must return them (written out by hand).

ISA_ELEMENTS = ["ISA", "00", " " * 10, "00", " " * 10, "ZZ", "SENDERID       ", "ZZ", "RECEIVERID     ",
                "240115", "1230", "U", "00401", "000000001", "0", "P", ">"]
X12_SEGS = [
    ISA_ELEMENTS,
    ["GS", "PO", "SENDERID", "RECEIVERID", "20240115", "1230", "1", "X", "004010"],
    ["ST", "850", "0001"],
    ["BEG", "00", "SA", "PO-1001", "", "20240115"],
    ["REF", "DP", "038", "", "ZZ>ABC"],
    ["N1", "ST", "ACME DOCK", "92", "0001"],
    ["PO1", "1", "10", "EA", "12.34", "", "BP", "WIDGET-1"],
    ["CTT", "1"],
    ["SE", "7", "0001"],
    ["GE", "1", "1"],
    ["IEA", "1", "000000001"],
]

EDI_SEGS = [
    ["UNB", ["UNOC", "3"], ["SENDER", "14"], ["RECEIVER", "14"], ["240115", "1230"], "REF001"],
    ["UNH", "1", ["ORDERS", "D", "96A", "UN"]],
    ["BGM", "220", "PO-1001", "9"],
    ["DTM", ["137", "20240115", "102"]],
    ["NAD", "BY", ["5412345000013", "", "9"], "", "M+S CORP"],
    ["LIN", "1", "", ["WIDGET-1", "IN"]],
    ["QTY", ["21", "10"]],
    ["UNS", "S"],
    ["CNT", ["2", "1"]],
    ["UNT", "9", "1"],
    ["UNZ", "1", "REF001"],
]


def x12_segs(comp=">", rep="U", version="00401", ctl="000000001", gs_version="004010", st03=None):
    """X12_SEGS for other ISA11 / ISA12 / ISA16 / control number / GS08 / ST03 values."""
    segs = [list(s) for s in X12_SEGS]
    isa = segs[0]
    isa[11], isa[12], isa[13], isa[16] = rep, version, ctl, comp
    segs[1][8] = gs_version
    if st03 is not None:
        segs[2].append(st03)
    segs[4][4] = "ZZ" + comp + "ABC"
    segs[-1][2] = ctl
    return segs


def render_x12(segs, el="*", term="~", after="\n") -> str:
    return "".join(el.join(s) + term + after for s in segs)


def x12(el="*", comp=">", term="~", after="\n", **kw) -> bytes:
    return render_x12(x12_segs(comp=comp, **kw), el, term, after).encode("latin-1")


def render_edifact(segs, una=":+.? '", after="\n") -> str:
    """EDIFACT text from segment lists, escaping the service characters (una=None: no UNA)."""
    comp, el, _dec, rel, rep, term = una if una else ":+.? '"
    specials = [c for c in (rel, el, comp, term, rep) if c != " "]

    def esc(v):
        return "".join(rel + c if c in specials else c for c in v)

    out = ["UNA" + una + after] if una else []
    for s in segs:
        parts = [s[0]] + [comp.join(map(esc, e)) if isinstance(e, list) else esc(e) for e in s[1:]]
        out.append(el.join(parts) + term + after)
    return "".join(out)


def edifact(segs=EDI_SEGS, una=":+.? '", after="\n", codec="latin-1") -> bytes:
    return render_edifact(segs, una, after).encode(codec)


def replace_seg(segs, tag, new, nth=0):
    """A copy of segs with the nth segment tagged ``tag`` replaced (new=None: removed)."""
    out, seen = [], 0
    for s in segs:
        if s[0] == tag:
            if seen == nth:
                seen += 1
                if new is not None:
                    out.append(new)
                continue
            seen += 1
        out.append(s)
    assert seen > nth, f"no {tag} #{nth}"
    return out


# ---------------------------------------------------------------------------------------------
# Observation helpers.


def fx(f: Finding) -> tuple:
    """Everything a finding says except its human message."""
    return (f.code, f.severity, f.segment_tag, f.segment_index, f.set_position, f.element_index, f.value,
            f.interchange_control, f.group_control, f.message_control)


def all_findings(data: bytes) -> list[tuple]:
    """(where, finding) for every finding of the file, file / interchange / group / set."""
    ichs, file_findings = read_interchanges(data)
    out = [("file", fx(f)) for f in file_findings]
    for ich, sets in ichs:
        out += [("interchange", fx(f)) for f in ich.findings]
        for g in ich.groups:
            out += [("group", fx(f)) for f in g.findings]
        for ts in sets:
            out += [("set", fx(f)) for f in ts.findings]
    return out


def events(chunks, trace=None) -> list:
    """A comparable rendering of every event ``read`` produces (segments and full findings)."""
    out = []
    for ev in read(chunks, trace=trace):
        if isinstance(ev, TransactionSet):
            out.append(("set", ev.type, ev.control_number, ev.version, ev.association, ev.first_segment_index,
                        ev.segments, list(ev.findings), ev.interchange.control_number,
                        ev.group.control_number if ev.group else None, ev.interchange.delimiters))
        elif isinstance(ev, InterchangeSummary):
            out.append(("interchange", ev.info, ev.complete, list(ev.findings), ev.sets,
                        [(g.info, g.sets, g.findings, g.trailer_count) for g in ev.groups]))
        else:
            out.append(("file", ev))
    return out


def split_every(data: bytes, n: int):
    return [data[i : i + n] for i in range(0, len(data), n)]


def split_at(data: bytes, *cuts: int):
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def only_interchange(data: bytes):
    ichs, file_findings = read_interchanges(data)
    assert file_findings == []
    assert len(ichs) == 1
    return ichs[0]


def assert_clean_x12(data: bytes, expected=None, delimiters=None):
    """The whole file reads as exactly ``expected`` segments, with no finding anywhere."""
    assert segments(data) == (expected or X12_SEGS)
    assert all_findings(data) == []
    (ich, sets) = only_interchange(data)
    assert ich.complete
    assert [(t.type, t.control_number, t.first_segment_index, len(t.segments)) for t in sets] == [("850", "0001", 3, 7)]
    if delimiters is not None:
        assert ich.info.delimiters == delimiters
        assert sets[0].delimiters == delimiters
    return ich, sets


STD_X12 = Delimiters(element="*", component=">", segment="~")
STD_EDI = Delimiters(element="+", component=":", segment="'", release="?")


def test_fixture_bytes_are_what_the_literal_lists_say():
    # The fixtures and the literal expectations describe the same documents.
    assert X12_BASE == x12()
    assert EDI_BASE == edifact(una=":+.? '")
    assert len(X12_BASE.split(b"\n")[0]) == 106


# ---------------------------------------------------------------------------------------------
# Detection, empty and non-EDI files.


@pytest.mark.parametrize(
    "data, expected",
    [
        (X12_BASE, ("x12", 0, None)),
        (EDI_BASE, ("edifact", 0, None)),
        (EDI_BASE.split(b"\n", 1)[1], ("edifact", 0, None)),  # UNB first, no UNA
        (b"\xef\xbb\xbf" + X12_BASE, ("x12", 3, None)),
        (b"\r\n\n  " + EDI_BASE, ("edifact", 5, None)),
        (X12_BASE.decode().encode("cp037"), ("x12", 0, "cp037")),
        (EDI_BASE.decode().encode("cp037"), ("edifact", 0, "cp037")),
        (b"From: partner\n" + X12_BASE, ("x12", 14, None)),
        (b"hello, world\n", (None, 0, None)),
    ],
    ids=["x12", "edifact-una", "edifact-unb", "bom", "blank-lines", "ebcdic-x12", "ebcdic-edifact", "junk-first", "not-edi"],
)
def test_detect_standard_from_bytes(data, expected):
    assert decoding.detect(data) == expected


def test_x12_and_edifact_read_as_their_standard():
    (ich, sets), = read_interchanges(X12_BASE)[0]
    assert (ich.info.standard, sets[0].standard) == ("x12", "x12")
    (ich, sets), = read_interchanges(EDI_BASE)[0]
    assert (ich.info.standard, sets[0].standard) == ("edifact", "edifact")


@pytest.mark.parametrize("data", [b"", b"   ", b"\r\n\r\n\t \n", b"\x00\x00\x1a"], ids=["zero", "spaces", "newlines", "nul-eof"])
def test_empty_file(data):
    evs = list(read_bytes(data))
    assert [fx(e) for e in evs] == [("file.empty", E, None, None, None, None, None, None, None, None)]
    assert evs[0].level is Level.FILE
    assert segments(data) == []
    result = translate(data, source="empty.edi")
    assert [f.code for f in result.file_findings] == ["file.empty"]
    assert not result.ok and result.documents == []


@pytest.mark.parametrize(
    "data",
    [b"hello, world\n", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"<?xml version='1.0'?><Order/>",
     "Order 4471 für Müller\n".encode("utf-8"), b"IS*00*  *ZZ*X~\n"],
    ids=["text", "pdf", "png", "xml", "utf8-text", "almost-isa"],
)
def test_not_edi(data):
    evs = list(read_bytes(data))
    assert [fx(e) for e in evs] == [("file.not_edi", E, None, None, None, None, None, None, None, None)]
    assert evs[0].level is Level.FILE
    result = translate(data)
    assert [f.code for f in result.file_findings] == ["file.not_edi"] and not result.ok


def test_junk_before_the_first_interchange_is_a_warning():
    data = b"Subject: orders\r\n\r\n" + X12_BASE
    evs = list(read_bytes(data))
    assert fx(evs[0]) == ("file.trailing_data", W, None, 0, None, None, None, None, None, None)
    assert [type(e).__name__ for e in evs] == ["Finding", "TransactionSet", "InterchangeSummary"]
    assert segments(data) == X12_SEGS


# ---------------------------------------------------------------------------------------------
# X12 delimiters from the ISA.


@pytest.mark.parametrize(
    "el, comp, term, after",
    [
        ("*", ">", "~", "\n"),
        ("*", ">", "~", ""),
        ("|", ">", "~", "\n"),
        ("\x7f", ">", "~", "\n"),
        ("~", ">", "\x15", ""),
        ("~", ":", "!", "\r\n"),
        ("*", ":", "~", "\n"),
        ("*", "^", "~", "\n"),
        ("*", "@", "~", "\n"),
        ("|", "^", "!", ""),
        ("*", ">", "!", "\n"),
        ("*", ">", "\x15", ""),
        ("*", ">", "\x15", "\n"),
        ("*", ">", "~", "\r"),
        ("*", ">", "~", "\r\n"),
        ("*", ">", "~", " "),
        ("*", ">", "~", "  \t"),
    ],
    ids=lambda v: repr(v).strip("'").replace("\\", "/"),
)
def test_x12_delimiters_read_off_the_isa(el, comp, term, after):
    data = x12(el=el, comp=comp, term=term, after=after)
    assert_clean_x12(data, x12_segs(comp=comp), Delimiters(element=el, component=comp, segment=term))


@pytest.mark.parametrize("nl", ["\n", "\r", "\r\n"], ids=["LF", "CR", "CRLF"])
@pytest.mark.parametrize("comp", [">", ":"])
def test_x12_newline_is_the_segment_terminator(nl, comp):
    data = x12(comp=comp, term="", after=nl)
    assert b"~" not in data
    ich, sets = assert_clean_x12(data, x12_segs(comp=comp))
    d = ich.info.delimiters
    assert (d.element, d.component, d.repetition) == ("*", comp, None)
    assert d.segment in ("\n", "\r", "\r\n") and d.segment == nl[0]


@pytest.mark.parametrize(
    "version, isa11, gs08, expected_rep",
    [("00401", "U", "004010", None), ("00401", "^", "004010", None), ("00300", "U", "003040", None),
     ("00402", "^", "004020", "^"), ("00403", "^", "004030", "^"), ("00501", "^", "005010", "^"), ("00501", "!", "005010", "!")],
)
def test_x12_repetition_separator_only_from_00402(version, isa11, gs08, expected_rep):
    data = x12(rep=isa11, version=version, gs_version=gs08)
    ich, sets = assert_clean_x12(data, x12_segs(rep=isa11, version=version, gs_version=gs08))
    assert ich.info.delimiters == Delimiters("*", ">", "~", repetition=expected_rep)
    assert ich.info.version == version


def test_x12_repetition_separated_values_stay_in_one_element():
    segs = x12_segs(rep="^", version="00501", gs_version="005010X220A1")
    segs[5] = ["N1", "ST", "ACME DOCK", "92", "0001^0002"]
    data = render_x12(segs).encode()
    assert segments(data) == segs
    (ich, sets), = read_interchanges(data)[0]
    assert ich.info.delimiters.repetition == "^"
    assert sets[0].segments[3][4].split(ich.info.delimiters.repetition) == ["0001", "0002"]


def _lines(data: bytes):
    return data.decode("latin-1").splitlines(keepends=True)


@pytest.mark.parametrize(
    "name, transform",
    [
        ("indent-spaces", lambda b: b"".join(b"    " + ln.encode("latin-1") for ln in _lines(b))),
        ("indent-tabs", lambda b: b"".join(b"\t" + ln.encode("latin-1") for ln in _lines(b))),
        ("indent-after-ISA-only", lambda b: b.replace(b"~\n", b"~\n  ")),
        ("leading-blank-lines", lambda b: b"\n\n\r\n   \n" + b),
        ("trailing-blank-lines", lambda b: b + b"\n\n\r\n  \n\n"),
        ("bom", lambda b: b"\xef\xbb\xbf" + b),
        ("bom-and-crlf", lambda b: b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n")),
        ("no-terminator-at-eof", lambda b: b.rstrip(b"\n").rstrip(b"~")),
        ("no-terminator-at-eof-crlf", lambda b: b.replace(b"\n", b"\r\n").rstrip(b"\r\n").rstrip(b"~") + b"\r\n"),
        ("ctrl-z-at-eof", lambda b: b + b"\x1a"),
        ("blank-lines-between-segments", lambda b: b.replace(b"~\n", b"~\n\n")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_x12_layout_quirks(name, transform):
    assert_clean_x12(transform(X12_BASE), X12_SEGS, STD_X12)


def test_x12_newline_terminated_file_with_indentation_and_blank_lines():
    data = b"\n\n" + b"".join(b"  " + ln + b"\r\n\r\n" for ln in x12(term="", after="\n").splitlines()) + b"\n\n"
    assert_clean_x12(data, X12_SEGS)


def test_x12_nbsp_padded_isa_latin1():
    # ISA06 / ISA08 padded with NO-BREAK SPACE (0xA0) instead of spaces: 106 characters,
    # but the padding is not ASCII; the file is not UTF-8, so Latin-1 applies.
    segs = [list(s) for s in X12_SEGS]
    segs[0][6] = "SENDERID" + "\xa0" * 7
    segs[0][8] = "RECEIVERID" + "\xa0" * 5
    data = render_x12(segs).encode("latin-1")
    assert segments(data) == segs
    (ich, _), = read_interchanges(data)[0]
    assert (ich.info.sender_id, ich.info.receiver_id) == ("SENDERID", "RECEIVERID")
    assert all_findings(data) == []


def test_x12_nbsp_padded_isa_utf8_is_not_106_bytes():
    segs = [list(s) for s in X12_SEGS]
    segs[0][2] = "\u00a0" * 10
    segs[0][6] = "SENDERID" + "\u00a0" * 7
    data = render_x12(segs).encode("utf-8")
    assert len(data.split(b"\n")[0]) == 106 + 17  # each NBSP is two bytes
    assert segments(data) == segs
    (ich, _), = read_interchanges(data)[0]
    assert (ich.info.sender_id, ich.info.control_number) == ("SENDERID", "000000001")
    assert all_findings(data) == []


def test_x12_unpadded_isa():
    segs = [list(s) for s in X12_SEGS]
    segs[0] = ["ISA", "00", "", "00", "", "ZZ", "SENDERID", "ZZ", "RECEIVERID", "240115", "1230", "U", "00401", "1", "0", "P", ">"]
    segs[-1] = ["IEA", "1", "1"]
    data = render_x12(segs).encode()
    assert len(data.split(b"\n")[0]) < 106
    assert segments(data) == segs
    (ich, sets), = read_interchanges(data)[0]
    assert (ich.info.sender_id, ich.info.receiver_id, ich.info.control_number) == ("SENDERID", "RECEIVERID", "1")
    assert ich.info.delimiters == STD_X12
    assert all_findings(data) == []


ISA_WRAP_POSITIONS = list(range(4, 106))  # a line break before any character of the ISA after 'ISA*'


@pytest.mark.parametrize("pos", ISA_WRAP_POSITIONS)
def test_x12_isa_wrapped_across_lines(pos):
    text = X12_BASE.decode()
    data = (text[:pos] + "\n" + text[pos:]).encode()
    assert_clean_x12(data, X12_SEGS, STD_X12)


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("width", [80, 64, 132])
def test_x12_hard_wrapped_file(width, nl):
    flat = x12(after="")
    data = nl.join(flat[i : i + width] for i in range(0, len(flat), width)) + nl
    assert data.count(nl) >= len(flat) // width
    assert_clean_x12(data, X12_SEGS, STD_X12)


def test_x12_hard_wrapped_file_with_two_interchanges():
    flat = x12(after="") + x12(after="", ctl="000000002")
    data = b"\n".join(flat[i : i + 80] for i in range(0, len(flat), 80))
    assert segments(data) == X12_SEGS + x12_segs(ctl="000000002")
    assert all_findings(data) == []


@pytest.mark.parametrize("after", ["\n", "", "\r\n", "\x85"], ids=["LF", "none", "CRLF", "NL-0x15"])
def test_x12_ebcdic_cp037(after):
    data = x12(after=after).decode("latin-1").encode("cp037")
    assert b"ISA" not in data and data.startswith("ISA".encode("cp037"))
    assert_clean_x12(data, X12_SEGS, STD_X12)


def test_x12_ebcdic_newline_terminated():
    # EBCDIC NL (0x15) is the segment terminator itself.
    data = x12(term="", after="\x85").decode("latin-1").encode("cp037")
    assert b"\x15" in data
    assert segments(data) == X12_SEGS
    assert all_findings(data) == []


# ---------------------------------------------------------------------------------------------
# Several interchanges, groups and sets; versions.


def test_x12_two_interchanges_same_delimiters():
    data = X12_BASE + x12(ctl="000000002")
    assert segments(data) == X12_SEGS + x12_segs(ctl="000000002")
    ichs, ff = read_interchanges(data)
    assert ff == []
    assert [(i.info.control_number, i.info.segment_index, i.complete, [t.first_segment_index for t in s]) for i, s in ichs] == [
        ("000000001", 1, True, [3]), ("000000002", 12, True, [14])]
    assert all_findings(data) == []


@pytest.mark.parametrize(
    "el, comp, term, after, rep, version",
    [
        ("|", ":", "!", "", "U", "00401"),
        ("*", ":", "~", "\r\n", "^", "00501"),
        ("~", "^", "\x15", "", "U", "00401"),
        ("\x7f", "@", "~", "\n", "!", "00403"),
        ("*", ">", "", "\n", "U", "00401"),
        ("*", ">", "~", " ", "U", "00401"),
        ("*", "@", "~", "\n", "U", "00401"),  # only the component separator differs
    ],
    ids=["pipe-bang", "5010-crlf", "tilde-element", "del", "newline", "tilde-space", "component-only"],
)
@pytest.mark.parametrize("first_after", ["\n", ""], ids=["first-LF", "first-flat"])
def test_x12_two_interchanges_different_delimiters(el, comp, term, after, rep, version, first_after):
    second = x12_segs(comp=comp, rep=rep, version=version, ctl="000000002", gs_version=version + "0")
    data = x12(after=first_after) + render_x12(second, el, term, after).encode("latin-1")
    assert segments(data) == X12_SEGS + second
    ichs, ff = read_interchanges(data)
    assert ff == []
    assert [i.info.delimiters for i, _ in ichs] == [
        STD_X12, Delimiters(el, comp, term or "\n", rep if version >= "00402" else None)]
    assert [s.first_segment_index for _, sets in ichs for s in sets] == [3, 14]
    assert [s.segments for _, sets in ichs for s in sets] == [X12_SEGS[2:9], second[2:9]]
    assert all_findings(data) == []


def test_x12_back_to_standard_delimiters_in_a_third_interchange():
    a = x12_segs(ctl="000000001")
    b = x12_segs(comp=":", ctl="000000002")
    c = x12_segs(ctl="000000003")
    data = (render_x12(a) + render_x12(b, "|", "!", "\r\n") + render_x12(c, "*", "~", "")).encode()
    assert segments(data) == a + b + c
    assert [i.info.delimiters for i, _ in read_interchanges(data)[0]] == [STD_X12, Delimiters("|", ":", "!"), STD_X12]
    assert all_findings(data) == []


def test_x12_several_groups_and_sets():
    ichs, ff = read_interchanges(X12_MULTI)
    assert ff == []
    (ich, sets), = ichs
    assert ich.complete and ich.findings == [] and ich.info.test and ich.info.ack_requested
    assert [(g.info.control_number, g.info.segment_index, [s.control_number for s in g.sets], g.trailer_count, g.findings)
            for g in ich.groups] == [("101", 2, ["1001", "1002"], "2", []), ("102", 13, ["2001"], "1", [])]
    assert [(t.control_number, t.first_segment_index, [s[0] for s in t.segments], t.group.control_number) for t in sets] == [
        ("1001", 3, ["ST", "BEG", "PO1", "SE"], "101"),
        ("1002", 7, ["ST", "BEG", "PO1", "PO1", "SE"], "101"),
        ("2001", 14, ["ST", "BEG", "SE"], "102"),
    ]
    assert len(segments(X12_MULTI)) == 18
    assert all_findings(X12_MULTI) == []


@pytest.mark.parametrize(
    "isa12, gs08, st03, version, association",
    [
        ("00200", "002000", None, "002000", None),
        ("00300", "003040", None, "003040", None),
        ("00401", "004010", None, "004010", None),
        ("00401", "004010VICS", None, "004010", "VICS"),
        ("00403", "004030", None, "004030", None),
        ("00501", "005010", None, "005010", None),
        ("00501", "005010X222A1", "005010X222A1", "005010", "X222A1"),
        ("00501", "", "005010X220A1", "005010", "X220A1"),  # GS08 empty: ST03
        ("00501", "X", "005010X220A1", "005010", "X220A1"),  # GS08 not a version: ST03
    ],
)
def test_x12_versions_gs08_and_st03_fallback(isa12, gs08, st03, version, association):
    rep = "^" if isa12 >= "00402" else "U"
    segs = x12_segs(rep=rep, version=isa12, gs_version=gs08, st03=st03)
    data = render_x12(segs).encode()
    assert segments(data) == segs
    (ich, sets), = read_interchanges(data)[0]
    assert ich.info.version == isa12
    assert ich.groups[0].info.version == (gs08 or None)
    ts = sets[0]
    assert (ts.version, ts.association) == (version, association)
    summary = ich.groups[0].sets[0]
    assert (summary.version, summary.implementation_reference) == (version, st03)
    assert all_findings(data) == []


# ---------------------------------------------------------------------------------------------
# X12 envelope checks. Positions in the base file: ISA 1, GS 2, ST 3 .. SE 9, GE 10, IEA 11.


def _x12_with(tag, new, segs=None, nth=0):
    return render_x12(replace_seg(segs or X12_SEGS, tag, new, nth)).encode()


@pytest.mark.parametrize(
    "tag, new, where, expected",
    [
        ("IEA", ["IEA", "1", "000000002"], "interchange",
         ("interchange.control_number_mismatch", E, "IEA", 11, None, 2, "000000002", "000000001", None, None)),
        ("IEA", ["IEA", "2", "000000001"], "interchange",
         ("interchange.count_mismatch", E, "IEA", 11, None, 1, "2", "000000001", None, None)),
        ("GE", ["GE", "1", "2"], "group",
         ("group.control_number_mismatch", E, "GE", 10, None, 2, "2", "000000001", "1", None)),
        ("GE", ["GE", "3", "1"], "group",
         ("group.count_mismatch", E, "GE", 10, None, 1, "3", "000000001", "1", None)),
        ("SE", ["SE", "7", "0002"], "set",
         ("transaction.control_number_mismatch", E, "SE", 9, 7, 2, "0002", "000000001", "1", "0001")),
        ("SE", ["SE", "6", "0001"], "set",
         ("transaction.count_mismatch", E, "SE", 9, 7, 1, "6", "000000001", "1", "0001")),
    ],
    ids=["ISA13-IEA02", "IEA01", "GS06-GE02", "GE01", "ST02-SE02", "SE01"],
)
def test_x12_trailer_mismatches_reject_by_default(tag, new, where, expected):
    data = _x12_with(tag, new)
    assert all_findings(data) == [(where, expected)]
    (ich, sets), = read_interchanges(data)[0]
    assert ich.complete and len(sets) == 1 and len(sets[0].segments) == 7
    result = translate(data)
    assert not result.ok and [d.status for d in result.documents] == ["failed"]
    assert result.documents[0].errors[-1].code == expected[0]  # the document names the envelope's error
    assert result.interchanges[0].rejected is (where == "interchange")


def test_x12_leading_zeros_in_counts_are_not_mismatches():
    segs = replace_seg(replace_seg(replace_seg(X12_SEGS, "SE", ["SE", "0007", "0001"]), "GE", ["GE", "001", "1"]),
                       "IEA", ["IEA", "00001", "000000001"])
    assert all_findings(render_x12(segs).encode()) == []


def test_x12_missing_se():
    data = _x12_with("SE", None)
    assert all_findings(data) == [
        ("set", ("transaction.trailer_missing", E, "CTT", 8, 6, None, None, "000000001", "1", "0001"))]
    (ich, sets), = read_interchanges(data)[0]
    assert [s[0] for s in sets[0].segments] == ["ST", "BEG", "REF", "N1", "PO1", "CTT"]
    assert ich.complete
    assert translate(data).documents[0].status == "failed"


def test_x12_missing_se_before_next_st():
    segs = X12_SEGS[:8] + X12_SEGS[2:9] + [["GE", "2", "1"], X12_SEGS[-1]]
    segs[8] = ["ST", "850", "0002"]
    segs[-3] = ["SE", "7", "0002"]
    data = render_x12(segs).encode()
    assert all_findings(data) == [
        ("set", ("transaction.trailer_missing", E, "CTT", 8, 6, None, None, "000000001", "1", "0001"))]
    assert [(t.control_number, len(t.segments), t.first_segment_index) for t in transaction_sets(data)] == [
        ("0001", 6, 3), ("0002", 7, 9)]


def test_x12_missing_ge():
    data = _x12_with("GE", None)
    assert all_findings(data) == [
        ("group", ("group.trailer_missing", E, None, 10, None, None, None, "000000001", "1", None))]
    assert translate(data).interchanges[0].findings[0].code == "group.trailer_missing"


def test_x12_missing_iea():
    data = _x12_with("IEA", None)
    assert all_findings(data) == [
        ("interchange", ("interchange.trailer_missing", E, None, 10, None, None, None, "000000001", None, None))]
    (ich, sets), = read_interchanges(data)[0]
    assert not ich.complete and len(sets) == 1
    assert translate(data).interchanges[0].rejected


def test_x12_missing_iea_before_next_isa():
    data = _x12_with("IEA", None) + x12(ctl="000000002")
    # Reported at the ISA that shows the IEA is missing (position 11).
    assert all_findings(data) == [
        ("interchange", ("interchange.trailer_missing", E, None, 11, None, None, None, "000000001", None, None))]
    ichs, _ = read_interchanges(data)
    assert [(i.info.control_number, i.complete, i.info.segment_index) for i, _ in ichs] == [
        ("000000001", False, 1), ("000000002", True, 11)]


def test_x12_missing_iea_before_an_isa_with_other_delimiters():
    second = x12_segs(comp=":", ctl="000000002")
    data = render_x12(X12_SEGS[:-1], after="").encode() + render_x12(second, "|", "!", "").encode()
    assert segments(data) == X12_SEGS[:-1] + second
    assert all_findings(data) == [
        ("interchange", ("interchange.trailer_missing", E, None, 11, None, None, None, "000000001", None, None))]
    assert [i.info.delimiters for i, _ in read_interchanges(data)[0]] == [STD_X12, Delimiters("|", ":", "!")]


def test_x12_set_cut_short_by_an_isa_with_other_delimiters():
    # SE, GE and IEA all missing: the new ISA is still read with its own delimiters.
    second = x12_segs(comp=":", ctl="000000002")
    data = render_x12(X12_SEGS[:6]).encode() + render_x12(second, "|", "!", "\n").encode()
    assert segments(data) == X12_SEGS[:6] + second
    assert all_findings(data) == [
        ("interchange", ("interchange.trailer_missing", E, None, 7, None, None, None, "000000001", None, None)),
        ("group", ("group.trailer_missing", E, None, 7, None, None, None, "000000001", "1", None)),
        ("set", ("transaction.trailer_missing", E, "N1", 6, 4, None, None, "000000001", "1", "0001")),
    ]
    assert [i.info.delimiters for i, _ in read_interchanges(data)[0]] == [STD_X12, Delimiters("|", ":", "!")]


def test_x12_truncated_mid_set():
    data = render_x12(X12_SEGS[:6]).encode()
    assert all_findings(data) == [
        ("interchange", ("interchange.trailer_missing", E, None, 6, None, None, None, "000000001", None, None)),
        ("group", ("group.trailer_missing", E, None, 6, None, None, None, "000000001", "1", None)),
        ("set", ("transaction.trailer_missing", E, "N1", 6, 4, None, None, "000000001", "1", "0001")),
    ]


def test_x12_duplicate_st02_in_a_group():
    segs = X12_SEGS[:9] + X12_SEGS[2:9] + [["GE", "2", "1"], X12_SEGS[-1]]
    data = render_x12(segs).encode()
    assert all_findings(data) == [
        ("set", ("transaction.control_number_duplicate", W, "ST", 10, 1, 2, "0001", "000000001", "1", "0001"))]
    assert [t.control_number for t in transaction_sets(data)] == ["0001", "0001"]


def test_x12_same_st02_in_different_groups_is_fine():
    segs = X12_SEGS[:10] + [["GS", *X12_SEGS[1][1:6], "2", "X", "004010"], *X12_SEGS[2:9], ["GE", "1", "2"],
                            ["IEA", "2", "000000001"]]
    data = render_x12(segs).encode()
    assert segments(data) == segs
    assert all_findings(data) == []


@pytest.mark.parametrize(
    "position, seg, index",
    [(2, ["REF", "ZZ", "X"], 3), (9, ["REF", "ZZ", "X"], 10)],
    ids=["between-GS-and-ST", "between-SE-and-GE"],
)
def test_x12_segment_outside_a_set(position, seg, index):
    segs = X12_SEGS[:position] + [seg] + X12_SEGS[position:]
    data = render_x12(segs).encode()
    # A stray segment is a set of its own, refused (its header is missing); the real set goes on.
    assert all_findings(data) == [
        ("set", ("transaction.header_invalid", E, "REF", index, 1, None, None, "000000001", "1", None))]
    assert segments(data) == segs
    sets = transaction_sets(data)
    assert [[s[0] for s in t.segments] for t in sets if t.type] == [["ST", "BEG", "REF", "N1", "PO1", "CTT", "SE"]]
    result = translate(data)
    assert [(d.type, d.status) for d in result.documents] == sorted(
        [("", "failed"), ("850", "translated")], key=lambda x: x[0] != ("" if position < 3 else "850"))


def test_x12_st_outside_a_group():
    segs = [X12_SEGS[0], *X12_SEGS[2:9], ["IEA", "0", "000000001"]]
    data = render_x12(segs).encode()
    assert all_findings(data) == [
        ("interchange", ("interchange.content_invalid", E, "ST", 2, None, None, None, "000000001", None, None))]
    assert transaction_sets(data)[0].group is None


@pytest.mark.parametrize(
    "junk, tag",
    [(b"GARBAGE AFTER THE END\n", "GARBAGE"), (b"XX", "XX"), (b"REF*ZZ*X~\n", "REF")],
    ids=["text", "short", "segment"],
)
def test_x12_junk_after_iea(junk, tag):
    data = X12_BASE + junk
    evs = list(read_bytes(data))
    assert [type(e).__name__ for e in evs] == ["TransactionSet", "InterchangeSummary", "Finding"]
    (where, f), = all_findings(data)
    assert (where, f[:2], f[3:]) == ("file", ("file.trailing_data", W), (12, None, None, None, None, None, None))
    assert f[2] == tag  # named by how it starts: never the raw text
    assert translate(data).ok  # a warning only


def test_x12_ctrl_z_and_blanks_after_iea_are_not_junk():
    assert all_findings(X12_BASE + b"\r\n\x1a\x00  \n") == []


def test_streaming_junk_between_interchanges_is_named_the_same_whatever_the_chunks():
    data = X12_BASE * 40 + b"GARBAGE\n" + X12_BASE
    whole = [e for e in events([data]) if e[0] == "file"]
    assert [e[1].segment_tag for e in whole] == ["GARBAGE"]
    assert [e for e in events(split_every(data, 7)) if e[0] == "file"] == whole


# ---------------------------------------------------------------------------------------------
# EDIFACT. Positions in the base file: UNA 1, UNB 2, UNH 3 .. UNT 11, UNZ 12.


def assert_clean_edifact(data: bytes, expected=EDI_SEGS, delimiters=None, unh_index=3):
    assert segments(data) == expected
    assert all_findings(data) == []
    (ich, sets) = only_interchange(data)
    assert ich.complete
    assert [(t.type, t.control_number, t.version, t.first_segment_index) for t in sets] == [("ORDERS", "1", "D96A", unh_index)]
    assert sets[0].segments == expected[1:-1]
    if delimiters is not None:
        assert ich.info.delimiters == delimiters
    return ich, sets


@pytest.mark.parametrize(
    "una, delimiters",
    [
        (":+.? '", STD_EDI),
        ("=*.? ~", Delimiters(element="*", component="=", segment="~", release="?")),
        (":|.? '", Delimiters(element="|", component=":", segment="'", release="?")),
        ("^|,\\*!", Delimiters(element="|", component="^", segment="!", release="\\", repetition="*", decimal=",")),
        (":+.?*'", Delimiters(element="+", component=":", segment="'", release="?", repetition="*")),
        (":+.  '", Delimiters(element="+", component=":", segment="'")),  # no release character
    ],
    ids=["default", "eq-star-tilde", "pipe", "all-different", "syntax4-repetition", "no-release"],
)
@pytest.mark.parametrize("after", ["\n", "", "\r\n"], ids=["LF", "flat", "CRLF"])
def test_edifact_una(una, delimiters, after):
    segs = EDI_SEGS
    if delimiters.release is None:
        segs = replace_seg(EDI_SEGS, "NAD", ["NAD", "BY", ["5412345000013", "", "9"], "", "M AND S CORP"])
    data = edifact(segs, una=una, after=after)
    assert data.startswith(b"UNA" + una.encode())
    assert_clean_edifact(data, segs, delimiters)


@pytest.mark.parametrize("after", ["\n", ""], ids=["LF", "flat"])
def test_edifact_without_una_uses_defaults(after):
    data = edifact(una=None, after=after)
    assert data.startswith(b"UNB+UNOC")
    assert_clean_edifact(data, EDI_SEGS, STD_EDI, unh_index=2)


@pytest.mark.parametrize(
    "el, comp, term",
    [("*", "=", "~"), ("|", "^", "!"),
     ("+", ":", "~"),
     ("\x1d", "\x1f", "\x1c")],
    ids=["star-eq-tilde", "pipe-caret-bang", "default-but-tilde", "unoa-level-b-controls"],
)
def test_edifact_separators_read_off_the_unb_without_una(el, comp, term):
    una = f"{comp}{el}.? {term}"
    text = render_edifact(EDI_SEGS, una, "\n")
    data = text.split("\n", 1)[1].encode()  # drop the UNA
    assert data.startswith(f"UNB{el}UNOC{comp}3".encode())
    assert_clean_edifact(data, EDI_SEGS, Delimiters(element=el, component=comp, segment=term, release="?"), unh_index=2)


def test_edifact_release_character_before_every_service_character():
    nad = ["NAD", "BY", ["A:B", "C'D"], "", "E+F?G*H", "?", "'", "+:"]
    segs = replace_seg(EDI_SEGS, "NAD", nad)
    data = edifact(segs, una=":+.?*'")
    assert b"A?:B:C?'D++E?+F??G?*H+??+?'+?+?:" in data
    assert_clean_edifact(data, segs, Delimiters("+", ":", "'", repetition="*", release="?"))


def test_edifact_release_character_literal_bytes():
    # Written by hand: release before element, component, terminator, itself, and a plain letter.
    body = b"FTX+AAI+++PRICE?: 10?+2 ?'NET?' IS ?? OK+?A'"
    data = EDI_BASE.replace(b"UNS+S'", body + b"\nUNS+S'").replace(b"UNT+9+1'", b"UNT+10+1'")
    ts, = transaction_sets(data)
    assert ts.segments[6] == ["FTX", "AAI", "", "", "PRICE: 10+2 'NET' IS ? OK", "A"]
    assert all_findings(data) == []


def test_edifact_release_at_end_of_element_and_before_terminator():
    data = EDI_BASE.replace(b"BGM+220+PO-1001+9'", b"BGM+220+PO??+9??'")
    assert transaction_sets(data)[0].segments[1] == ["BGM", "220", "PO?", "9?"]
    assert all_findings(data) == []


def test_edifact_decimal_comma_in_una():
    segs = replace_seg(EDI_SEGS, "QTY", ["QTY", ["21", "10,5"]])
    data = edifact(segs, una=":+,? '")
    ich, sets = assert_clean_edifact(data, segs)
    assert ich.info.delimiters.decimal == ","
    assert read_interchanges(EDI_BASE)[0][0][0].info.delimiters.decimal == "."


def test_edifact_groups_with_counts():
    ichs, ff = read_interchanges(EDI_GROUPS)
    assert ff == []
    (ich, sets), = ichs
    assert ich.complete and ich.findings == [] and ich.sets == []
    assert [(g.info.control_number, g.info.functional_id, g.info.version, g.info.segment_index,
             [s.control_number for s in g.sets], g.trailer_count, g.findings) for g in ich.groups] == [
        ("G1", "ORDERS", "D96A", 3, ["1", "2"], "2", []),
        ("G2", "ORDERS", "D96A", 11, ["3"], "1", []),
    ]
    assert [(t.control_number, t.first_segment_index, t.group.control_number) for t in sets] == [
        ("1", 4, "G1"), ("2", 7, "G1"), ("3", 12, "G2")]
    assert all_findings(EDI_GROUPS) == []
    assert len(segments(EDI_GROUPS)) == 15  # UNA is counted in positions, not returned


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (b"UNE+2+G1'", b"UNE+3+G1'", ("group", ("group.count_mismatch", E, "UNE", 10, None, 1, "3", "REF002", "G1", None))),
        (b"UNE+1+G2'", b"UNE+1+G9'", ("group", ("group.control_number_mismatch", E, "UNE", 15, None, 2, "G9", "REF002", "G2", None))),
        (b"UNZ+2+REF002'", b"UNZ+3+REF002'", ("interchange", ("interchange.count_mismatch", E, "UNZ", 16, None, 1, "3", "REF002", None, None))),
        (b"UNT+3+2'", b"UNT+4+2'", ("set", ("transaction.count_mismatch", E, "UNT", 9, 3, 1, "4", "REF002", "G1", "2"))),
    ],
    ids=["UNE-count", "UNE-reference", "UNZ-counts-groups", "UNT-in-group"],
)
def test_edifact_group_trailer_mismatches(old, new, expected):
    data = EDI_GROUPS.replace(old, new)
    assert data != EDI_GROUPS
    assert all_findings(data) == [expected]


def test_edifact_missing_une():
    data = EDI_GROUPS.replace(b"UNE+1+G2'\n", b"")
    assert all_findings(data) == [("group", ("group.trailer_missing", E, None, 15, None, None, None, "REF002", "G2", None))]


@pytest.mark.parametrize(
    "new, where, expected",
    [
        (["UNT", "8", "1"], "set", ("transaction.count_mismatch", E, "UNT", 11, 9, 1, "8", "REF001", None, "1")),
        (["UNT", "9", "2"], "set", ("transaction.control_number_mismatch", E, "UNT", 11, 9, 2, "2", "REF001", None, "1")),
        (["UNZ", "2", "REF001"], "interchange", ("interchange.count_mismatch", E, "UNZ", 12, None, 1, "2", "REF001", None, None)),
        (["UNZ", "1", "REF009"], "interchange", ("interchange.control_number_mismatch", E, "UNZ", 12, None, 2, "REF009", "REF001", None, None)),
        (["UNZ", "", "REF001"], "interchange", ("interchange.count_mismatch", E, "UNZ", 12, None, 1, "", "REF001", None, None)),
    ],
    ids=["UNT-count", "UNT-reference", "UNZ-count", "UNZ-reference", "UNZ-count-empty"],
)
def test_edifact_trailer_mismatches_reject_by_default(new, where, expected):
    data = edifact(replace_seg(EDI_SEGS, new[0], new))
    assert all_findings(data) == [(where, expected)]
    result = translate(data)
    assert [d.status for d in result.documents] == ["failed"]
    assert result.interchanges[0].rejected is (where == "interchange")


def test_edifact_missing_unt_is_an_error():
    data = edifact(replace_seg(EDI_SEGS, "UNT", None))
    assert all_findings(data) == [("set", ("transaction.trailer_missing", E, "CNT", 10, 8, None, None, "REF001", None, "1"))]
    ts, = transaction_sets(data)
    assert ts.segments[-1] == ["CNT", ["2", "1"]]


def test_edifact_missing_unt_before_next_unh():
    second = [["UNH", "2", ["ORDERS", "D", "96A", "UN"]], ["BGM", "220", "PO-2", "9"], ["UNT", "3", "2"]]
    segs = EDI_SEGS[:-2] + second + [["UNZ", "2", "REF001"]]
    data = edifact(segs)
    assert all_findings(data) == [("set", ("transaction.trailer_missing", E, "CNT", 10, 8, None, None, "REF001", None, "1"))]
    assert [(t.control_number, t.first_segment_index, len(t.segments)) for t in transaction_sets(data)] == [("1", 3, 8), ("2", 11, 3)]


def test_edifact_missing_unz_at_eof_with_complete_messages_is_a_warning():
    data = edifact(EDI_SEGS[:-1])
    assert all_findings(data) == [
        ("interchange", ("interchange.trailer_missing", W, None, 11, None, None, None, "REF001", None, None))]
    (ich, sets), = read_interchanges(data)[0]
    assert not ich.complete and len(sets) == 1
    result = translate(data)
    assert not result.interchanges[0].rejected


def test_edifact_missing_unz_at_eof_inside_a_message_is_an_error():
    data = edifact(EDI_SEGS[:6])
    assert all_findings(data) == [
        ("interchange", ("interchange.trailer_missing", E, None, 7, None, None, None, "REF001", None, None)),
        ("set", ("transaction.trailer_missing", E, "LIN", 7, 5, None, None, "REF001", None, "1")),
    ]


def test_edifact_missing_unz_before_another_unb_is_an_error():
    second = [list(s) for s in EDI_SEGS]
    second[0] = second[0][:5] + ["REF002"]
    second[-1] = ["UNZ", "1", "REF002"]
    data = edifact(EDI_SEGS[:-1] + second)
    # Reported at the UNB (position 12) that shows the UNZ is missing.
    assert all_findings(data) == [
        ("interchange", ("interchange.trailer_missing", E, None, 12, None, None, None, "REF001", None, None))]
    ichs, _ = read_interchanges(data)
    assert [(i.info.control_number, i.complete) for i, _ in ichs] == [("REF001", False), ("REF002", True)]
    assert translate(data).interchanges[0].rejected


def test_edifact_missing_unz_before_another_una_is_an_error():
    second = [list(s) for s in EDI_SEGS]
    second[0] = second[0][:5] + ["REF002"]
    second[-1] = ["UNZ", "1", "REF002"]
    data = edifact(EDI_SEGS[:-1]) + edifact(second, una="=*.? ~")
    ichs, _ = read_interchanges(data)
    assert [(i.info.control_number, i.complete, i.info.segment_index, [f.code for f in i.findings]) for i, _ in ichs] == [
        ("REF001", False, 2, ["interchange.trailer_missing"]), ("REF002", True, 13, [])]
    assert ichs[0][0].findings[0].is_error
    assert segments(data) == EDI_SEGS[:-1] + second


def test_edifact_missing_unz_before_a_changing_una_no_spurious_finding():
    second = [list(s) for s in EDI_SEGS]
    second[0] = second[0][:5] + ["REF002"]
    second[-1] = ["UNZ", "1", "REF002"]
    data = edifact(EDI_SEGS[:-1]) + edifact(second, una="=*.? ~")
    # Reported at the last segment of the interchange (11); the UNA is position 12.
    assert all_findings(data) == [
        ("interchange", ("interchange.trailer_missing", E, None, 11, None, None, None, "REF001", None, None))]


def _edifact_second(ref="REF002", msg="2"):
    segs = [list(s) for s in EDI_SEGS]
    segs[0] = segs[0][:5] + [ref]
    segs[1] = ["UNH", msg, segs[1][2]]
    segs[-2] = ["UNT", "9", msg]
    segs[-1] = ["UNZ", "1", ref]
    return segs


def test_edifact_several_unb_same_separators():
    second = _edifact_second()
    data = edifact(EDI_SEGS) + edifact(second)  # the second repeats the UNA
    assert segments(data) == EDI_SEGS + second
    ichs, ff = read_interchanges(data)
    assert ff == []
    assert [(i.info.control_number, i.info.segment_index, [t.first_segment_index for t in s]) for i, s in ichs] == [
        ("REF001", 2, [3]), ("REF002", 14, [15])]
    assert all_findings(data) == []
    data = edifact(EDI_SEGS, una=None) + edifact(second, una=None, after="")
    assert segments(data) == EDI_SEGS + second
    assert [i.info.segment_index for i, _ in read_interchanges(data)[0]] == [1, 12]


@pytest.mark.parametrize(
    "una2, d2",
    [
        ("=*.? ~", Delimiters(element="*", component="=", segment="~", release="?")),
        (":|,/ !", Delimiters(element="|", component=":", segment="!", release="/", decimal=",")),
        (":+.?*'", Delimiters(element="+", component=":", segment="'", release="?", repetition="*")),
    ],
    ids=["star-tilde", "pipe-bang", "repetition-only"],
)
@pytest.mark.parametrize("after", ["\n", ""], ids=["LF", "flat"])
def test_edifact_second_una_mid_file_changes_separators(una2, d2, after):
    second = _edifact_second()
    data = edifact(EDI_SEGS, after=after) + edifact(second, una=una2, after=after)
    assert segments(data) == EDI_SEGS + second
    ichs, ff = read_interchanges(data)
    assert ff == []
    assert [i.info.delimiters for i, _ in ichs] == [STD_EDI, d2]
    assert [t.segments for _, s in ichs for t in s] == [EDI_SEGS[1:-1], second[1:-1]]
    assert all_findings(data) == []


def test_edifact_back_to_default_separators_without_una():
    second = _edifact_second()
    third = _edifact_second("REF003", "3")
    data = edifact(EDI_SEGS, una="=*.? ~") + edifact(second, una=None) + edifact(third, una=":|.? '")
    assert segments(data) == EDI_SEGS + second + third
    assert [i.info.delimiters.element for i, _ in read_interchanges(data)[0]] == ["*", "+", "|"]
    assert all_findings(data) == []


def test_edifact_several_unh_per_unb():
    msgs = []
    for n in range(1, 4):
        msgs += [["UNH", str(n), ["ORDERS", "D", "96A", "UN", "EAN008"]], ["BGM", "220", f"PO-{n}", "9"], ["UNT", "3", str(n)]]
    segs = [EDI_SEGS[0], *msgs, ["UNZ", "3", "REF001"]]
    data = edifact(segs)
    assert segments(data) == segs
    (ich, sets), = read_interchanges(data)[0]
    assert [(t.control_number, t.first_segment_index, t.association) for t in sets] == [
        ("1", 3, "EAN008"), ("2", 6, "EAN008"), ("3", 9, "EAN008")]
    assert [s.control_number for s in ich.sets] == ["1", "2", "3"]
    assert all_findings(data) == []


def test_edifact_duplicate_message_reference():
    msgs = [["UNH", "1", ["ORDERS", "D", "96A", "UN"]], ["BGM", "220", "PO-1", "9"], ["UNT", "3", "1"]] * 2
    data = edifact([EDI_SEGS[0], *msgs, ["UNZ", "2", "REF001"]])
    assert all_findings(data) == [("set", ("transaction.control_number_duplicate", W, "UNH", 6, 1, 1, "1", "REF001", None, "1"))]


def test_edifact_segment_outside_a_message():
    segs = EDI_SEGS[:1] + [["FTX", "AAI"]] + EDI_SEGS[1:]
    data = edifact(segs)
    assert all_findings(data) == [("set", ("transaction.header_invalid", E, "FTX", 3, 1, None, None, "REF001", None, None))]
    assert [(d.type, d.status) for d in translate(data).documents] == [("", "failed"), ("ORDERS", "translated")]


def test_edifact_junk_after_unz():
    data = EDI_BASE + b"THE END\n"
    (where, f), = all_findings(data)
    assert (where, f[:2], f[3:]) == ("file", ("file.trailing_data", W), (13, None, None, None, None, None, None))
    assert len(transaction_sets(data)) == 1
    assert translate(data).ok


def _nad_name(data: bytes) -> str:
    ts, = transaction_sets(data)
    assert ts.segments[2][:2] == ["NAD", "BY"]
    return ts.segments[2][4]


@pytest.mark.parametrize(
    "data, ident, name",
    [
        (EDI_UNOC, "UNOC", "Müller GmbH"),
        (EDI_UNOE, "UNOE", "Иванов ООО"),
        (EDI_UNOW, "UNOW", "Müller 東京 Иванов"),
        (EDI_UNOW.replace(b"UNOW", b"UNOY"), "UNOY", "Müller 東京 Иванов"),
        (EDI_UNOW.replace(b"UNOW", b"UNOA"), "UNOA", "Müller 東京 Иванов"),  # UTF-8 bytes under UNOA: UTF-8
        (EDI_UNOC.replace(b"UNOC", b"UNOA"), "UNOA", "Müller GmbH"),  # 8-bit bytes under UNOA: Latin-1 keeps them
        (EDI_UNOC.replace(b"UNOC", b"UNOB").replace("Müller".encode("latin-1"), b"mueller"), "UNOB", "mueller GmbH"),
        (EDI_UNOC.replace("Müller".encode("latin-1"), "Müller".encode("utf-8")), "UNOC", "Müller GmbH"),  # UTF-8 inside UNOC
    ],
    ids=["UNOC-latin1", "UNOE-cyrillic", "UNOW-utf8", "UNOY-utf8", "UNOA-utf8", "UNOA-8bit", "UNOB", "UNOC-utf8"],
)
def test_edifact_syntax_identifier_charsets(data, ident, name):
    assert _nad_name(data) == name
    (ich, _), = read_interchanges(data)[0]
    assert ich.info.syntax_identifier == ident and ich.info.version == "3"
    assert all_findings(data) == []


def test_edifact_cyrillic_fixture_is_not_utf8():
    with pytest.raises(UnicodeDecodeError):
        EDI_UNOE.decode("utf-8")
    with pytest.raises(UnicodeDecodeError):
        EDI_UNOC.decode("utf-8")


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_edifact_hard_wrapped_file(width, nl):
    flat = edifact(after="")
    data = nl.join(flat[i : i + width] for i in range(0, len(flat), width)) + nl
    assert_clean_edifact(data, EDI_SEGS, STD_EDI)


@pytest.mark.parametrize("after", ["\r", " \r", "   ", "\t\n", " \r\n ", "\n\n"], ids=["CR", "blank-CR", "blanks", "tab-LF", "blank-CRLF-blank", "blank-lines"])
def test_edifact_line_ends_and_trailing_blanks(after):
    data = edifact(after=after)
    assert_clean_edifact(data, EDI_SEGS, STD_EDI)


@pytest.mark.parametrize("pos", range(0, 60, 3))
def test_edifact_second_una_and_unb_wrapped_anywhere(pos):
    second = _edifact_second()
    head = edifact(EDI_SEGS, after="")
    tail = edifact(second, una="=*.? ~", after="")
    data = head + tail[:pos] + b"\r\n" + tail[pos:]
    assert segments(data) == EDI_SEGS + second
    assert all_findings(data) == []


def test_edifact_una_wrapped_at_the_start_of_the_file():
    for pos in range(3, 9):
        data = EDI_BASE[:pos] + b"\n" + EDI_BASE[pos:]
        assert segments(data) == EDI_SEGS, pos
        assert all_findings(data) == [], pos


def test_edifact_newline_terminated_with_una():
    # The UNA's last character is the line break itself: a segment tag follows it.
    data = render_edifact(EDI_SEGS, ":+.? \n", "").encode()
    assert_clean_edifact(data, EDI_SEGS, Delimiters("+", ":", "\n", release="?"))


def test_edifact_bom_and_leading_blank_lines():
    assert_clean_edifact(b"\xef\xbb\xbf\r\n\r\n" + EDI_BASE, EDI_SEGS, STD_EDI)


def test_edifact_ebcdic():
    assert_clean_edifact(EDI_BASE.decode().encode("cp037"), EDI_SEGS, STD_EDI)


# ---------------------------------------------------------------------------------------------
# Streaming: any chunking gives exactly the same events and segments as one chunk.


def _second_x12():
    return render_x12(x12_segs(comp=":", rep="^", version="00501", ctl="000000002", gs_version="005010"), "|", "!", "\r\n")


# read() gathers the first 4 KiB into one piece before it detects the standard, so chunk
# boundaries only reach the tokenizer past that point: every file below repeats its content
# (always whole interchanges) until it is well beyond it.
HEAD = 4096
MIN_SIZE = 3 * HEAD


def _big(data: bytes, prefix: bytes = b"") -> bytes:
    return prefix + data * (MIN_SIZE // len(data) + 1)


STREAM_FILES = {
    "x12": _big(X12_BASE),
    "x12-crlf": _big(X12_BASE.replace(b"\n", b"\r\n")),
    "x12-flat": _big(x12(after="")),
    "x12-newline-terminated": _big(x12(term="", after="\n")),
    "x12-indented": _big(X12_BASE.replace(b"~\n", b"~ \n\t")),
    "x12-multi": _big(X12_MULTI),
    "x12-mixed-delimiters": _big(X12_BASE + _second_x12().encode()),
    "x12-errors": _big(render_x12(replace_seg(replace_seg(X12_SEGS, "SE", ["SE", "9", "0002"]), "GE", None)).encode()),
    "x12-no-iea": _big(X12_BASE) + render_x12(X12_SEGS[:-1]).encode(),
    "x12-nbsp-utf8": _big(X12_BASE.replace(b"SENDERID       ", "SENDERID\u00a0\u00a0\u00a0\u00a0\u00a0\u00a0\u00a0".encode())),
    "x12-ebcdic": _big(X12_BASE.decode().encode("cp037")),
    "x12-bom-blank-lines": _big(X12_BASE, b"\xef\xbb\xbf\n\n"),
    "edifact": _big(EDI_BASE),
    "edifact-release": _big(edifact(replace_seg(EDI_SEGS, "NAD", ["NAD", "BY", ["A:B", "C'D"], "", "E+F?G*H", "?'", "'"]),
                                    una=":+.?*'", after="\r\n")),
    "edifact-no-una": _big(edifact(una=None, after="")),
    "edifact-groups": _big(EDI_GROUPS),
    "edifact-two-una": _big(EDI_BASE + edifact(_edifact_second(), una="=*.? ~")),
    "edifact-unoc": _big(EDI_UNOC),
    "edifact-unoe": _big(EDI_UNOE),
    "edifact-utf8": _big(EDI_UNOW),
    "edifact-errors": _big(edifact(replace_seg(replace_seg(EDI_SEGS, "UNT", ["UNT", "3", "7"]), "UNZ", ["UNZ", "4", "X"]))),
    "edifact-no-unz": _big(EDI_BASE) + edifact(EDI_SEGS[:-1], una=None),
    "edifact-wrapped": _big(b"\r\n".join(edifact(after="")[i : i + 80] for i in range(0, 600, 80)) + b"\r\n"),
    "edifact-cr-trailing-blanks": _big(edifact(after=" \r")),
}


def test_stream_files_are_past_the_head_and_clean_where_meant_to_be():
    assert all(len(d) > MIN_SIZE for d in STREAM_FILES.values())
    for name, data in STREAM_FILES.items():
        n_sets = len(transaction_sets(data))
        assert n_sets >= MIN_SIZE // 1000, name
        if "error" not in name and not name.startswith(("x12-no-iea", "edifact-no-unz")):
            assert all_findings(data) == [], name


@pytest.mark.parametrize("size", [1, 7, 100, 4096])
@pytest.mark.parametrize("name", list(STREAM_FILES))
def test_streaming_chunk_sizes(name, size):
    data = STREAM_FILES[name]
    whole_trace, trace = [], []
    whole = events([data], whole_trace)
    assert events(split_every(data, size), trace) == whole
    assert trace == whole_trace


def _cut_points(data: bytes, needle: bytes, offset: int) -> list[int]:
    """Every position ``offset`` bytes into an occurrence of ``needle``, past the head."""
    out, i = [], data.find(needle)
    while i >= 0:
        if i + offset > HEAD + 512:
            out.append(i + offset)
        i = data.find(needle, i + 1)
    assert out, needle
    return out


@pytest.mark.parametrize(
    "name, needle, offset",
    [
        ("edifact-release", b"?'", 1),  # between the release character and the terminator
        ("edifact-release", b"?:", 1),
        ("edifact-release", b"??", 1),
        ("edifact-release", b"'\r\n", 2),  # inside CRLF
        ("edifact-wrapped", b"\r\n", 1),
        ("x12-crlf", b"~\r\n", 2),
        ("x12-newline-terminated", b"\n", 0),
        ("edifact-utf8", "東".encode(), 1),  # inside a UTF-8 multibyte character
        ("edifact-utf8", "東".encode(), 2),
        ("edifact-utf8", "ü".encode(), 1),
        ("x12-nbsp-utf8", "\u00a0".encode(), 1),
        ("edifact-two-una", b"UNA=", 2),  # inside a UNA
        ("edifact-two-una", b"UNA:", 6),
        ("edifact-two-una", b"UNZ+1+REF001'", 13),
        ("edifact-no-una", b"UNB+", 2),
    ],
)
def test_streaming_cut_at_awkward_places(name, needle, offset):
    data = STREAM_FILES[name]
    whole = events([data])
    cuts = _cut_points(data, needle, offset)
    for cut in cuts[:25]:
        assert events(split_at(data, cut)) == whole, cut
    # Every awkward place cut at once, as well.
    assert events(split_at(data, *cuts)) == whole


@pytest.mark.parametrize("name", ["x12", "x12-mixed-delimiters", "x12-newline-terminated", "x12-ebcdic", "x12-crlf"])
def test_streaming_cut_anywhere_inside_the_isa(name):
    data = STREAM_FILES[name]
    whole = events([data])
    isa = "ISA".encode("cp037") if "ebcdic" in name else b"ISA"
    starts = _cut_points(data, isa, 0)
    if "mixed" in name:
        starts = starts[:2]  # one ISA of each style
    for start in starts[:2]:
        for cut in range(start, start + 108):
            assert events(split_at(data, cut)) == whole, cut


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(STREAM_FILES)), cuts=st.lists(st.floats(min_value=0.3, max_value=1.0), max_size=15))
def test_streaming_random_cuts(name, cuts):
    data = STREAM_FILES[name]
    assert events(split_at(data, *(int(c * (len(data) - 1)) for c in cuts))) == events([data])


@pytest.mark.parametrize("nl", ["\r\n", "\r"], ids=["CRLF", "CR"])
def test_streaming_newline_terminated_interchanges_keep_one_terminator(nl):
    data = x12(term="", after=nl) * 3
    whole = events([data])
    assert [e[0] for e in whole] == ["set", "interchange"] * 3
    assert len({e[1].delimiters for e in whole if e[0] == "interchange"}) == 1
    data = _big(x12(term="", after=nl))
    assert events(split_every(data, 100)) == events([data])


def test_streaming_latin1_file_with_a_utf8_looking_pair_decodes_the_same_whatever_the_chunks():
    filler = "".join(f"UNH+{n}+ORDERS:D:96A:UN'\nBGM+220+PO-{n}+9'\nUNT+2+{n}'\n" for n in range(1, 200))
    text = ("UNA:+.? '\nUNB+UNOC:3+SENDER:14+RECEIVER:14+240115:1230+REF001'\n" + filler
            + "UNH+300+ORDERS:D:96A:UN'\nFTX+AAI+++25 Â°C'\nUNT+3+300'\n"
            + "UNH+301+ORDERS:D:96A:UN'\nFTX+AAI+++" + "x" * 300 + "'\nNAD+BY+++Müller'\nUNT+4+301'\nUNZ+201+REF001'\n")
    data = text.encode("latin-1")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    whole = events([data])
    assert whole[-3][6][1] == ["FTX", "AAI", "", "", "25 Â°C"]
    assert events(split_every(data, 100)) == whole


def test_streaming_utf8_decision_is_per_block_of_the_stream():
    # Past the first 64 KiB block a Latin-1 byte turns the rest to Latin-1; the UTF-8 before it
    # stays UTF-8, and no chunking changes either.
    filler = "".join(f"UNH+{n}+ORDERS:D:96A:UN'\nFTX+AAI+++Grüße {n}'\nUNT+2+{n}'\n" for n in range(1, 2000))
    head = ("UNA:+.? '\nUNB+UNOC:3+SENDER:14+RECEIVER:14+240115:1230+REF001'\n" + filler).encode()
    assert len(head) > decoding.BLOCK + 100
    data = head + "UNH+9999+ORDERS:D:96A:UN'\nNAD+BY+++Müller'\nUNT+2+9999'\nUNZ+2000+REF001'\n".encode("latin-1")
    whole = events([data])
    assert whole[0][6][1] == ["FTX", "AAI", "", "", "Grüße 1"]
    assert whole[-2][6][1] == ["NAD", "BY", "", "", "Müller"]
    assert events(split_every(data, 4099)) == whole


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(size=st.integers(0, 5 * decoding.BLOCK), skip=st.integers(0, 10),
       cuts=st.lists(st.sampled_from([1, 7, decoding.BLOCK - 3, decoding.BLOCK, decoding.BLOCK + 5, 1 << 20, 100_000]),
                     min_size=1, max_size=12))
def test_decoder_blocks_are_the_streams_fixed_blocks_whatever_the_chunks(size, skip, cuts):
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    chunks, at = [], 0
    for n in cuts * (size // sum(cuts) + 1):
        chunks.append(data[at : at + n])
        at += n
        if at >= size:
            break
    rest = b"".join([chunks[0][skip:], *chunks[1:]])  # the skip is taken off the first chunk
    expected = [(rest[i : i + decoding.BLOCK], False) for i in range(0, len(rest) - len(rest) % decoding.BLOCK, decoding.BLOCK)]
    expected.append((rest[len(rest) - len(rest) % decoding.BLOCK :], True))
    assert [(bytes(b), final) for b, final in decoding._blocks(chunks, skip)] == expected


# ---------------------------------------------------------------------------------------------
# Memory is bounded by the largest transaction set, not by the file.


def _x12_stream(n_sets: int, per_interchange: int = 100, chunk: int = 65536):
    """n_sets small 850s in interchanges of per_interchange sets, yielded in chunks, never whole."""
    buf = bytearray()
    n = 0
    ich = 0
    while n < n_sets:
        ich += 1
        ctl = f"{ich:09d}"
        count = min(per_interchange, n_sets - n)
        buf += render_x12([x12_segs(ctl=ctl)[0], ["GS", "PO", "SENDERID", "RECEIVERID", "20240115", "1230", str(ich), "X", "004010"]],
                          after="\n").encode()
        for k in range(count):
            n += 1
            c = f"{n:09d}"
            buf += (f"ST*850*{c}~\nBEG*00*SA*PO-{n}**20240115~\nPO1*1*10*EA*12.34**BP*WIDGET-{n}~\nCTT*1~\nSE*5*{c}~\n").encode()
            if len(buf) >= chunk:
                yield bytes(buf)
                buf.clear()
        buf += f"GE*{count}*{ich}~\nIEA*1*{ctl}~\n".encode()
    yield bytes(buf)


def _peak_reading(n_sets: int, per_interchange: int) -> tuple[int, int]:
    gc.collect()
    tracemalloc.start()
    try:
        sets = 0
        for ev in read(_x12_stream(n_sets, per_interchange)):
            if isinstance(ev, TransactionSet):
                sets += 1
                assert ev.findings == [] and len(ev.segments) == 5
            elif isinstance(ev, InterchangeSummary):
                assert ev.complete and ev.findings == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return sets, peak


def test_memory_bounded_by_the_largest_set():
    # 20,000 850s in interchanges of 100 sets, never held as one bytes object: the peak must
    # not move between 5,000 and 20,000 sets.
    small_sets, small_peak = _peak_reading(5_000, 100)
    big_sets, big_peak = _peak_reading(20_000, 100)
    assert (small_sets, big_sets) == (5_000, 20_000)
    assert big_peak < 3 * 1024 * 1024, big_peak
    assert big_peak < small_peak * 1.10 + 64 * 1024, (small_peak, big_peak)


def test_memory_inside_one_interchange_grows_only_by_the_set_summaries():
    # Every set of an open interchange keeps a SetSummary (for the 997 / CONTRL) and its control
    # number (duplicate check), a few hundred bytes; the sets' segments must not be kept.
    # (So the module docstring's "bounded by the largest transaction set" holds per interchange.)
    small_sets, small_peak = _peak_reading(2_000, 10**9)
    big_sets, big_peak = _peak_reading(8_000, 10**9)
    assert (small_sets, big_sets) == (2_000, 8_000)
    per_set = (big_peak - small_peak) / 6_000
    assert per_set < 1024, per_set  # a whole 5-segment set held on would cost several KiB


def test_x12_stream_generator_is_well_formed():
    # The generator behind the memory test yields a valid file in several chunks.
    chunks = list(_x12_stream(250, 100, chunk=4096))
    assert len(chunks) > 3
    data = b"".join(chunks)
    ichs, ff = read_interchanges(data)
    assert ff == [] and [len(s) for _, s in ichs] == [100, 100, 50]
    assert all_findings(data) == []


# ---------------------------------------------------------------------------------------------
# The compiled build (setup.py compiles these modules with mypyc; the same source runs pure).

HOT_MODULES = ["translators.envelope", "translators.decoding", "translators.messages.common",
               "translators.messages.x12_common", "translators.messages.x12_850", "translators.messages.x12_810",
               "translators.messages.edifact_common", "translators.messages.edifact_orders",
               "translators.messages.edifact_invoic"]


def _origin(name: str) -> Path:
    """Where a module was loaded from: its source, or the compiled module beside it (a compiled
    module's own __file__ names the right file but not always the right folder)."""
    module = importlib.import_module(name)
    source = Path(__file__).resolve().parents[1].joinpath(*name.split(".")).with_suffix(".py")
    if module.__file__.endswith(".py"):
        return source
    return source.with_name(Path(module.__file__).name)


def test_compiled_modules_are_not_older_than_their_source():
    # pip install -e compiles in place; a module edited since would be shadowed by its old build.
    for name in HOT_MODULES:
        path = _origin(name)
        if path.suffix != ".py":
            source = path.with_name(name.rpartition(".")[2] + ".py")
            assert source.stat().st_mtime <= path.stat().st_mtime + 1, (
                f"{path.name} is older than {source.name}: rebuild with `.venv/bin/pip install -e .`")


def test_translation_core_is_compiled_where_a_compiler_is():
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if os.environ.get("EDI_GATEWAY_PURE") or not shutil.which(os.environ.get("CC", "cc")) or not include.exists():
        pytest.skip("no C compiler or Python headers (or EDI_GATEWAY_PURE): the pure-Python build is expected")
    compiled = [n for n in HOT_MODULES if _origin(n).suffix != ".py"]
    assert compiled == HOT_MODULES, "pip install -e . did not compile the translation core (see its build log)"
