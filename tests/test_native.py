"""The C fast paths (translators/_x12.c, translators/_edifact.c) against the pure-Python path,
input by input.

Every corpus file, every fixture under fixtures/edi and mutated versions of both are read
twice — with the C paths and with ``translators.native.x12`` and ``translators.native.edifact``
set to None — and everything the translation core hands on must be equal: the segments (``envelope.segments``), the events of
``envelope.read_bytes`` (transaction sets, interchange summaries, file findings), the
translation (canonical documents, statuses, findings with codes, positions and messages) and
the acknowledgments. Where a C path was built, the tests also make sure it is in use.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sysconfig
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests import corpus
from tests.test_properties import MUTATION, _mutate, _sample_bytes, mutations
from translators import native, translate
from translators.acks import build_acknowledgment
from translators.envelope import read_bytes, segments
from translators.findings import TranslationError
from translators.partners import check_directory_texts

REPO = Path(__file__).resolve().parent.parent
FIXTURES = sorted(p for p in (REPO / "fixtures" / "edi").rglob("*") if p.is_file())
PARTNERS, _ = check_directory_texts(
    [(p.read_text(encoding="utf-8"), str(p)) for p in sorted((REPO / "partners").glob("*.yaml"))]
)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
BUILT = native.x12
BUILT_EDIFACT = native.edifact
C_PATHS = {"x12": BUILT, "edifact": BUILT_EDIFACT}


def _plain(value):
    """Dataclasses as dicts (nested), so a difference shows where it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **{f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _everything(data: bytes):
    """All that the translation core makes of ``data``, as plain values."""
    try:
        result = translate(data, PARTNERS, source="differential")
    except TranslationError as exc:
        return ("TranslationError", str(exc))
    acks = []
    for n, i in enumerate(result.interchanges, 1):
        try:
            ack = build_acknowledgment(i.summary, now=NOW, interchange_control=f"{n:09d}", group_control=str(n))
        except (ValueError, TypeError) as exc:
            # An envelope no acknowledgment can answer (e.g. a 3-character qualifier); TypeError:
            # an EDIFACT segment outside a message whose tag splits into components (the finding's
            # segment tag is then a list, which the CONTRL builder cannot look up), on both paths.
            acks.append((type(exc).__name__, str(exc)))
            continue
        acks.append(None if ack is None else (ack.kind, ack.text))
    return {
        "segments": segments(data),
        "events": [_plain(ev) for ev in read_bytes(data)],
        "documents": [(d.status, d.kind, d.partner, d.document, _plain(d.findings), d.first_segment_index,
                       d.segment_count) for d in result.documents],
        "interchanges": [(_plain(i.summary), i.partner, i.rejected) for i in result.interchanges],
        "file_findings": _plain(result.file_findings),
        "errors": [f.describe("differential") for f in result.errors()],
        "acknowledgments": acks,
    }


def assert_paths_agree(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _everything(data)
    with monkeypatch.context() as m:
        m.setattr(native, "x12", None)
        m.setattr(native, "edifact", None)
        pure = _everything(data)
    assert fast == pure


needs_native = pytest.mark.skipif(BUILT is None and BUILT_EDIFACT is None, reason="no C path is built: nothing to compare")
needs_edifact = pytest.mark.skipif(BUILT_EDIFACT is None, reason="the EDIFACT C path is not built: nothing to compare")


@needs_native
@pytest.mark.parametrize("path", FIXTURES, ids=[str(p.relative_to(REPO / "fixtures" / "edi")) for p in FIXTURES])
def test_fixture_reads_the_same_both_ways(path, monkeypatch):
    assert_paths_agree(path.read_bytes(), monkeypatch)


@needs_native
@pytest.mark.parametrize("sample", corpus.params())
def test_corpus_file_reads_the_same_both_ways(sample, monkeypatch):
    assert_paths_agree(sample.path.read_bytes(), monkeypatch)


@needs_native
@pytest.mark.parametrize("sample", corpus.params())
@MUTATION
@given(ops=mutations)
def test_mutated_corpus_file_reads_the_same_both_ways(sample, ops, monkeypatch):
    data = _sample_bytes(str(sample.path))
    for op in ops:
        data = _mutate(data, op)
    note(f"mutated bytes: {data!r}")
    assert_paths_agree(data, monkeypatch)


@needs_native
@MUTATION
@given(path=st.sampled_from(FIXTURES), ops=mutations)
def test_mutated_fixture_reads_the_same_both_ways(path, ops, monkeypatch):
    data = _sample_bytes(str(path))
    for op in ops:
        data = _mutate(data, op)
    note(f"mutated bytes: {data!r}")
    assert_paths_agree(data, monkeypatch)


# Shapes the C loop hands back to Python, each beside ordinary segments.
_ISA = b"ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *261122*1200*U*00401*000000001*0*P*>~"
_SET = (b"GS*PO*SENDER*RECEIVER*20261122*1200*1*X*004010~ST*850*0001~BEG*00*SA*PO-1**20261101~"
        b"PO1*1*10*EA*2.50**BP*A-1*VP*V-1~PID*F****BOLT~CTT*1~AMT*TT*25~SE*7*0001~GE*1*1~IEA*1*000000001~")
EDGE_CASES = {
    "plain": _ISA + _SET,
    "crlf-after-terminators": (_ISA + _SET).replace(b"~", b"~\r\n"),
    "blank-pieces": (_ISA + _SET).replace(b"~PID", b"~ \n ~~PID"),
    "hard-wrapped-segment": (_ISA + _SET).replace(b"PO1*1*10*EA", b"PO1*1*1\r\n0*EA"),
    "long-tag": (_ISA + _SET).replace(b"~PID*", b"~PIDX*"),
    "ta1-in-set": (_ISA + _SET).replace(b"~CTT*", b"~TA1*1*261122*1200*A*000~CTT*"),
    "latin-1": (_ISA + _SET).replace(b"BOLT", b"BOLZEN \xc4\xd6 M\xfcller \xa0X"),
    "utf-8": (_ISA + _SET).replace(b"BOLT", "Łódź 東京".encode()),
    "no-final-terminator": (_ISA + _SET)[:-1],
    "second-interchange": _ISA + _SET + b"\n" + _ISA.replace(b"*>~", b"*:~") + _SET,
    "other-delimiters-next": _ISA + _SET + (_ISA + _SET).replace(b"*", b"|").replace(b"~", b"!"),
    "element-equals-terminator-junk": _ISA + _SET.replace(b"*", b"~", 3),
    "nul-and-ebcdic-blanks": (_ISA + _SET).replace(b"~PO1", b"~\x00\x0b\x0cPO1"),
    # A LIN competes with the part numbers of its line by qualifier rank (ranks the C path keeps).
    "lin-better-ranks": (_ISA + _SET).replace(
        b"BP*A-1*VP*V-1~", b"IN*B-2*SA*S-2~LIN**BP*A-1*VP*V-1*UP*012345678905*IN*B-3~"),
    "lin-worse-ranks": (_ISA + _SET).replace(b"VP*V-1~", b"VP*V-1~LIN**IN*B-2*SA*S-2*EN*4012345000009~"),
    "line-values-to-strip": (_ISA + _SET).replace(b"PO1*1*10*EA*2.50**BP*A-1", b"PO1* 1 *010*EA *.50**BP* A-1 "),
    "line-half-pair": (_ISA + _SET).replace(b"VP*V-1~", b"VP*~"),
    "line-shifted-pairs": (_ISA + _SET).replace(b"2.50**BP*A-1*VP*V-1", b"2.50*BP*A-1"),
    # The C line loop stops where a handler would report something, and hands the loop's state on.
    "line-loop-with-gaps": (_ISA + _SET).replace(b"PID*F****BOLT~", b"PID*F****BOLT~PO1*2**EA*1.50~PID*F****NUT~"
                                                  b"PO1*3*1* *1~PO1*4*1*EA*~PO1*5*2*EA*3~PID*F~PID*F****WASHER~"
                                                  b"PID*F*08***W~DTM*002*20261201~PO1*6*1*EA*1~SCH*1*EA***002*20261203~"
                                                  b"PO1*7*1*EA*1~LIN**IN*B-7~PID*F****LAST~"),
    "pid-before-any-line": (_ISA + _SET).replace(b"PO1*1*10", b"PID*F****EARLY~PO1*1*10"),
    "invoice-lines": (_ISA + _SET).replace(b"GS*PO", b"GS*IN").replace(b"ST*850", b"ST*810")
    .replace(b"BEG*00*SA*PO-1**20261101", b"BIG*20261101*INV-1**PO-1").replace(b"PO1*", b"IT1*")
    .replace(b"CTT*1~AMT*TT*25", b"TDS*2500~CTT*1").replace(b"PID*F****BOLT~", b"PID*F****BOLT~IT1*2*1**2~IT1*3*1*EA*2~"),
}


# The same for the EDIFACT loop: release characters, components, and what it hands back.
_UNA = b"UNA:+.? '"
_UNB = b"UNB+UNOC:3+4012345000009:14+5412345000013:14+261122:1200+REF1'"
_MSG = (b"UNH+1+ORDERS:D:96A:UN:EAN008'BGM+220+PO-1+9'DTM+137:20261101:102'"
        b"NAD+BY+4012345000009::9++EUROPA GMBH+HAUPTSTRASSE 5+BERLIN++10115+DE'NAD+SU+5412345000013::9'CUX+2:EUR:9'"
        b"LIN+1++4012345000016:EN'PIA+1+A-1:BP+V-1:SA'IMD+F++:::BOLT M8'QTY+21:10:PCE'PRI+AAA:2.50'"
        b"UNS+S'CNT+2:1'UNT+14+1'")
_UNZ = b"UNZ+1+REF1'"
_INTERCHANGE = _UNA + _UNB + _MSG + _UNZ
EDIFACT_EDGE_CASES = {
    "plain": _INTERCHANGE,
    "no-una": _UNB + _MSG + _UNZ,
    "lf-after-terminators": _INTERCHANGE.replace(b"'", b"'\n").replace(b"UNA:+.? '\n", b"UNA:+.? '\n"),
    "crlf-after-terminators": _INTERCHANGE.replace(b"'", b"'\r\n"),
    "released-separators": _INTERCHANGE.replace(b"BOLT M8", b"BOLT?+NUT?:M8 ?? 50?%"),
    "released-in-every-element": _INTERCHANGE.replace(b"PIA+1+A-1:BP+V-1:SA", b"PIA+1+A?+1?:2:BP+V??1:S?A")
    .replace(b"QTY+21:10", b"Q?TY+2?1:10"),
    "released-terminator": _INTERCHANGE.replace(b"BOLT M8", b"BOLT?'M8"),
    "release-before-line-break": _INTERCHANGE.replace(b"BOLT M8", b"BOLT?\nM8"),
    "release-at-the-end": _INTERCHANGE + b"FTX+AAI+++X?",
    "no-release-character": _INTERCHANGE.replace(b"UNA:+.? '", b"UNA:+.  '").replace(b"BOLT M8", b"BOLT? M8?"),
    "blank-pieces": _INTERCHANGE.replace(b"'PIA", b"' \n ''PIA"),
    "hard-wrapped-segment": _INTERCHANGE.replace(b"QTY+21:10", b"QTY+2\r\n1:10"),
    "tag-with-component": _INTERCHANGE.replace(b"'IMD+", b"'IM:D+"),
    "long-and-short-tags": _INTERCHANGE.replace(b"'IMD+", b"'IMDX+").replace(b"'PRI+", b"'PR+"),
    "released-tag": _INTERCHANGE.replace(b"'QTY+", b"'Q?TY+"),
    "lowercase-tags": _INTERCHANGE.replace(b"'QTY+", b"'qty+").replace(b"'UNS+", b"'uns+"),
    "empty-and-trailing-elements": _INTERCHANGE.replace(b"QTY+21:10:PCE", b"QTY+21:10:+").replace(b"'CNT", b"'FTX++++'CNT"),
    "many-elements": _INTERCHANGE.replace(b"'UNS", b"'FTX" + b"+X" * 200 + b"'UNS"),
    "nul-and-ebcdic-blanks": _INTERCHANGE.replace(b"'LIN", b"'\x00\x0b\x0cLIN"),
    "latin-1": _INTERCHANGE.replace(b"UNOC", b"UNOC").replace(b"BOLT M8", b"SCHRAUBE \xc4\xd6 M\xfcller \xa0X ?\xe9"),
    "utf-8": _INTERCHANGE.replace(b"UNOC", b"UNOW").replace(b"BOLT M8", "Łódź 東京 ?+ \ue000".encode()),
    "second-interchange-same-una": _INTERCHANGE + b"\n" + _INTERCHANGE.replace(b"REF1", b"REF2"),
    "second-interchange-other-una": _INTERCHANGE + _INTERCHANGE.replace(b"REF1", b"REF2").replace(b"+", b"*")
    .replace(b"UNA:*.? '", b"UNA:*.? '"),
    "una-mid-interchange": _UNA + _UNB + _MSG + _UNA + _UNB.replace(b"REF1", b"REF2") + _MSG + _UNZ,
    "non-default-separators": _INTERCHANGE.replace(b"+", b"|").replace(b":", b"^").replace(b"'", b"!")
    .replace(b"?", b"\\").replace(b"UNA^|.\\ !", b"UNA^|.\\ !"),
    "newline-terminator": _INTERCHANGE.replace(b"'", b"\n"),
    "space-separator": _INTERCHANGE.replace(b"UNA:+.? '", b"UNA: .? '").replace(b"+", b" "),
    "same-separators": _INTERCHANGE.replace(b"UNA:+.? '", b"UNA++.? '"),
    "segment-outside-a-message": _UNA + _UNB + b"FTX+AAI+++X'" + _MSG + _UNZ + b"QTY+1:1'",
    "no-trailing-terminator": _INTERCHANGE[:-1],
}


@needs_native
@pytest.mark.parametrize("data", list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_edge_case_reads_the_same_both_ways(data, monkeypatch):
    assert_paths_agree(data, monkeypatch)


@needs_native
@pytest.mark.parametrize("data", list(EDIFACT_EDGE_CASES.values()), ids=list(EDIFACT_EDGE_CASES))
def test_edifact_edge_case_reads_the_same_both_ways(data, monkeypatch):
    assert_paths_agree(data, monkeypatch)


def test_released_characters_are_data():
    (line,) = translate(EDIFACT_EDGE_CASES["released-in-every-element"]).documents[0].document["lines"]
    assert (line["buyer_part"], line["supplier_part"], line["quantity"]) == ("A+1:2", "V?1", "10")
    (line,) = translate(EDIFACT_EDGE_CASES["released-separators"]).documents[0].document["lines"]
    assert line["description"] == "BOLT+NUT:M8 ? 50%"


def test_lin_competes_with_the_line_by_rank():
    better = translate(EDGE_CASES["lin-better-ranks"]).documents[0].document["lines"][0]
    assert (better["buyer_part"], better["supplier_part"], better["gtin"]) == ("A-1", "V-1", "012345678905")
    worse = translate(EDGE_CASES["lin-worse-ranks"]).documents[0].document["lines"][0]
    assert (worse["buyer_part"], worse["supplier_part"], worse["gtin"]) == ("A-1", "V-1", "4012345000009")


# Element values the C primitives must read exactly as the Python code does, or hand back.
TOKENS = ["", " ", "0", "00", "7", "010", "12.50", "0.5", ".5", "00.5", "5.", "1.2.3", "-1", "+1", " 12 ", "1,5",
          "1e3", "NaN", "٣", "²", "１", "123456789012345678901234", "EA", "CA", "BP", "VP", "UP", "IN", "SA", "EN",
          " BP", "BP ", "XX", "A-1", " V-1 ", "É", "\x85X"]
tokens = st.sampled_from(TOKENS)


@st.composite
def x12_with_tricky_values(draw):
    kind = draw(st.sampled_from(["850", "810"]))
    encoding = draw(st.sampled_from(["latin-1", "utf-8"]))  # one byte per character, or not

    def segment(tag: str, elements: list[str]) -> bytes:
        return "*".join([tag, *elements]).encode(encoding, "replace")

    body = [b"BEG*00*SA*PO-1**20261101" if kind == "850" else b"BIG*20261101*INV-1**PO-1"]
    for _ in range(draw(st.integers(1, 4))):
        body.append(segment("PO1" if kind == "850" else "IT1", draw(st.lists(tokens, max_size=14))))
        for tag in draw(st.lists(st.sampled_from(["LIN", "AMT", "SAC", "CTT", "TDS", "TXI", "PID"]), max_size=3)):
            body.append(segment(tag, draw(st.lists(tokens, min_size=1, max_size=8))))
    st_ = f"ST*{kind}*0001".encode()
    se = f"SE*{len(body) + 2}*0001".encode()
    group = b"GS*PO*SENDER*RECEIVER*20261122*1200*1*X*004010~" + b"~".join([st_, *body, se]) + b"~GE*1*1~"
    return _ISA + group + b"IEA*1*000000001~"


EDIFACT_TOKENS = ["", " ", "0", "010", "12.50", "12,50", "0.5", ".5", "-1", "1e3", "²", "21", "AAA", "AAB", "PCE", "EN",
                  "BP", "SA", "IN", " BP ", "EUR", "20261101", "102", "2026110", "?+", "?:", "??", "?'", "a?b", "?",
                  "É", "Ł", "\x85X", "UNH", "UNS", "S", "D"]


@st.composite
def edifact_with_tricky_values(draw):
    kind = draw(st.sampled_from(["ORDERS", "INVOIC"]))
    encoding = draw(st.sampled_from(["latin-1", "utf-8"]))  # one byte per character, or not

    def element(parts: list[str]) -> str:
        return ":".join(parts)

    def segment(tag: str) -> bytes:
        elements = draw(st.lists(st.lists(st.sampled_from(EDIFACT_TOKENS), min_size=1, max_size=4), max_size=6))
        return "+".join([tag, *map(element, elements)]).encode(encoding, "replace")

    body = [b"BGM+220+DOC-1+9", b"DTM+137:20261101:102"]
    for _ in range(draw(st.integers(1, 4))):
        body.append(b"LIN+1++4012345000016:EN")
        for tag in draw(st.lists(st.sampled_from(["PIA", "IMD", "QTY", "PRI", "MOA", "DTM", "RFF", "TAX", "ALC", "FTX"]),
                                 max_size=5)):
            body.append(segment(tag))
    body += [b"UNS+S", segment("MOA")]
    unh = f"UNH+1+{kind}:D:96A:UN".encode()
    unt = f"UNT+{len(body) + 2}+1".encode()
    separator = draw(st.sampled_from([b"'", b"'\n", b"'\r\n"]))
    return _UNA + _UNB + separator.join([unh, *body, unt]) + separator + _UNZ


@needs_native
@pytest.mark.parametrize("files", [x12_with_tricky_values(), edifact_with_tricky_values()], ids=["x12", "edifact"])
@settings(MUTATION, max_examples=300)
@given(data=st.data())
def test_tricky_values_read_the_same_both_ways(files, data, monkeypatch):
    sample = data.draw(files)
    note(f"bytes: {sample!r}")
    assert_paths_agree(sample, monkeypatch)


@needs_native
@pytest.mark.parametrize("standard", ["x12", "edifact"])
def test_large_interchange_reads_the_same_both_ways(standard, monkeypatch):
    # Several 1 MB chunks and reader slices, so segments cross every boundary.
    from benchmarks.translate import edifact_orders, x12_850

    assert_paths_agree((x12_850 if standard == "x12" else edifact_orders)(2_500_000), monkeypatch)


# --------------------------------------------------------------------------------------------
# The fast path is in use wherever it was built.


@pytest.mark.parametrize("standard", list(C_PATHS))
def test_c_path_is_built_where_a_compiler_is(standard):
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if os.environ.get("EDI_GATEWAY_PURE") or not shutil.which(os.environ.get("CC", "cc")) or not include.exists():
        pytest.skip("no C compiler or Python headers (or EDI_GATEWAY_PURE): the pure-Python path is expected")
    assert C_PATHS[standard] is not None, f"pip install -e . did not build translators/_{standard}.c (see its build log)"


@pytest.mark.parametrize("standard", list(C_PATHS))
def test_c_path_is_not_older_than_its_source(standard):
    module = C_PATHS[standard]
    if module is None:
        pytest.skip("the C path is not built")
    built = REPO / "translators" / Path(module.__file__).name
    for source in (REPO / "translators" / f"_{standard}.c", REPO / "translators" / "_tokens.h"):
        assert source.stat().st_mtime <= built.stat().st_mtime + 1, "rebuild with `.venv/bin/pip install -e .`"


class Counting:
    """A built module, keeping each function's results (the C path is in use when they are not None)."""

    def __init__(self, module):
        self.module = module
        self.calls: dict[str, list] = {}

    def __getattr__(self, name):
        fn = getattr(self.module, name)

        def counted(*args):
            result = fn(*args)
            self.calls.setdefault(name, []).append(result)
            return result

        return counted


@pytest.mark.skipif(BUILT is None, reason="the X12 C path is not built")
def test_translation_goes_through_the_c_path(monkeypatch):
    counting = Counting(BUILT)
    monkeypatch.setattr(native, "x12", counting)
    data = EDGE_CASES["plain"].replace(b"PID*F****BOLT~", b"PID*F****BOLT~PO1*2*5*EA*1.50**BP*A-2~PID*F****NUT~PID*F*08***N~")
    data = data.replace(b"CTT*1~", b"CTT*2~").replace(b"SE*7*", b"SE*10*")
    assert translate(data).ok
    calls = {name: [r is not None for r in results] for name, results in counting.calls.items()}
    # The C path is a tokenizer only: the mappers' values and syntax notes are Python's (issue 15).
    assert set(calls) == {"split"} and all(calls["split"]), "the reader did not use the C tokenizer"
    assert [name for name in dir(BUILT) if not name.startswith("_")] == ["split"]


@needs_edifact
@pytest.mark.parametrize("case", ["plain", "crlf-after-terminators", "released-separators", "latin-1"])
def test_edifact_translation_goes_through_the_c_path(case, monkeypatch):
    counting = Counting(BUILT_EDIFACT)
    monkeypatch.setattr(native, "edifact", counting)
    assert translate(EDIFACT_EDGE_CASES[case]).ok
    results = counting.calls.get("split")
    assert results and all(r is not None for r in results), "the EDIFACT reader did not use the C path"
    # Every segment but the service ones (UNA UNB UNH UNT UNZ) came back split.
    split = [item for r in results for item in r if isinstance(item, list)]
    assert [seg[0] for seg in split] == [seg[0] for seg in segments(EDIFACT_EDGE_CASES[case])
                                         if seg[0] not in ("UNA", "UNB", "UNH", "UNT", "UNZ")]
