"""Streaming envelope readers for X12 and EDIFACT.

``read(chunks)`` turns a byte stream into events, in file order:

- :class:`~translators.model.TransactionSet` — each ST..SE / UNH..UNT as soon as it is complete;
- :class:`~translators.model.InterchangeSummary` — at each IEA / UNZ (or end of file), with the
  envelope findings and the summaries of every set in it;
- :class:`~translators.findings.Finding` — file-level problems (not EDI, trailing junk).

Memory is bounded by the largest transaction set: segments are split from a moving buffer
and each set is handed on as soon as its trailer arrives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, cast

from translators import decoding, native
from translators.findings import Finding, Severity, finding
from translators.model import (
    Delimiters,
    GroupInfo,
    GroupSummary,
    InterchangeInfo,
    InterchangeSummary,
    SetSummary,
    TransactionSet,
)

CHUNK: Final = 1 << 20
SLICE: Final = 1 << 12  # text handed to the tokenizer at a time (see _Envelope.run)
# White space around segments. U+0085 is EBCDIC NL (0x15) as cp037 decodes it.
_WS: Final = " \t\r\n\x00\x1a\x0b\x0c\x85"

Event = TransactionSet | InterchangeSummary | Finding
# The readers' pieces of text between terminators; the C loops hand ordinary segments back
# already split (X12: into their elements; EDIFACT: elements and components).
Pieces = list[list[str] | str]


def read(chunks: Iterable[bytes], trace: list[Any] | None = None) -> Iterator[Event]:
    """Read a byte stream (an iterable of chunks) into envelope events.

    ``trace``, when given, receives every segment in file order (envelopes included).
    """
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if len(head.lstrip(b" \t\r\n\xef\xbb\xbf")) >= 4096:
            break
    if not head.strip(b" \t\r\n\x00\x1a"):
        yield finding("file.empty", "The file is empty")
        return
    standard, offset, codec = decoding.detect(head[:65536])
    if standard is None:
        yield finding("file.not_edi", "No ISA, UNA or UNB segment: the file is neither X12 nor EDIFACT")
        return
    rest = _chain([head], it)
    if offset and head[:offset].strip(b" \t\r\n\x00\x1a\xef\xbb\xbf"):
        yield finding(
            "file.trailing_data",
            "Data before the first interchange header was ignored",
            severity=Severity.WARNING,
            segment_index=0,
        )
    if standard == "x12":
        text = decoding.decode_chunks(rest, codec, offset)
        yield from _X12Reader(trace).run(text)
    else:
        declared = None
        if codec is None:
            ident = decoding.edifact_syntax_identifier(head[offset : offset + 4096].decode("latin-1"))
            declared = decoding.EDIFACT_CHARSETS.get(ident or "")
        text = decoding.decode_chunks(rest, codec, offset, declared)
        yield from _EdifactReader(trace).run(text)


def read_bytes(data: bytes) -> Iterator[Event]:
    """:func:`read` over an in-memory file."""
    return read(_chunks(data))


def read_interchanges(data: bytes) -> tuple[list[tuple[InterchangeSummary, list[TransactionSet]]], list[Finding]]:
    """Every interchange with its transaction sets, and the file-level findings."""
    out: list[tuple[InterchangeSummary, list[TransactionSet]]] = []
    pending: list[TransactionSet] = []
    file_findings: list[Finding] = []
    for ev in read_bytes(data):
        if isinstance(ev, TransactionSet):
            pending.append(ev)
        elif isinstance(ev, InterchangeSummary):
            out.append((ev, pending))
            pending = []
        else:
            file_findings.append(ev)
    return out, file_findings


def segments(data: bytes) -> list[list[Any]]:
    """Every segment of an in-memory file in order, envelopes included (for tests and tools)."""
    out: list[list[Any]] = []
    for _ in read(_chunks(data), trace=out):
        pass
    return out


def _chunks(data: bytes) -> Iterator[bytes]:
    return (data[i : i + CHUNK] for i in range(0, max(len(data), 1), CHUNK))


def transaction_sets(data: bytes) -> list[TransactionSet]:
    """Every transaction set / message in an in-memory file, in order."""
    return [ev for ev in read_bytes(data) if isinstance(ev, TransactionSet)]


def _chain(first: Iterable[bytes], rest: Iterable[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


# --------------------------------------------------------------------------------------------
# Envelope bookkeeping shared by both standards.


class _Envelope:
    """Tracks the open interchange, group and set; emits events as they close."""

    def __init__(self, standard: str, trailers: tuple[str, str, str], trace: list[Any] | None = None):
        self.standard = standard
        self.set_trailer, self.group_trailer, self.interchange_trailer = trailers
        self.trace = trace
        self.delims: Delimiters | None = None
        self.index = 0  # file position of the current segment (1-based)
        self.ich: InterchangeSummary | None = None
        self.grp: GroupSummary | None = None
        self.ts: TransactionSet | None = None
        self.ts_summary: SetSummary | None = None
        self.group_set_count = 0
        self.ich_item_count = 0
        self.events: list[Event] = []
        self.set_controls: set[str] = set()
        self._junk: str | None = None  # head of the junk read so far while waiting for more input

    def run(self, text_chunks: Iterator[str]) -> Iterator[Event]:
        carry = ""  # the unfinished segment the tokenizer handed back
        held: list[str] = []  # text waiting while the carry is long
        held_size = 0
        for chunk in text_chunks:
            if len(carry) > SLICE:
                # A long unfinished segment (or no terminator in sight): hand text on only once
                # there is as much again as the carry, so that re-reading it stays linear.
                held.append(chunk)
                held_size += len(chunk)
                if held_size < len(carry):
                    continue
                chunk = "".join(held)
                held = []
                held_size = 0
            # A slice at a time, each event handed on (and let go) as soon as its slice is read:
            # sets then die young, which keeps the cyclic garbage collector's work small.
            start = 0
            while start < len(chunk):
                size = max(SLICE, len(carry))
                carry = self._consume(carry + chunk[start : start + size], final=False)
                start += size
                if self.events:
                    yield from self._drain()
        if held:
            carry += "".join(held)
        self._consume(carry, final=True)
        if self.ich is not None:
            self._close_interchange(complete=False, at_eof=True)
        yield from self._drain()

    def _drain(self) -> Iterator[Event]:
        events = self.events
        self.events = []
        events.reverse()
        while events:
            yield events.pop()

    def _consume(self, buf: str, final: bool) -> str:  # pragma: no cover - each standard has its own
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------
    def _f(self, code: str, message: str, seg: list[Any] | None = None, element: int | None = None,
           severity: Severity = Severity.ERROR, position: int | None = None, value: str | None = None,
           check: str | None = None) -> Finding:
        return finding(
            code,
            message,
            severity=severity,
            segment_tag=_label(seg[0]) if seg else None,
            segment_index=self.index,
            set_position=position,
            element_index=element,
            value=value,
            interchange_control=self.ich.info.control_number if self.ich else None,
            group_control=self.grp.info.control_number if self.grp else None,
            message_control=self.ts.control_number if self.ts else None,
            extra={"check": check} if check else {},
        )

    def _w(self, code: str, message: str, seg: list[Any] | None = None, element: int | None = None,
           position: int | None = None, value: str | None = None) -> Finding:
        """Reported, but the data is all there (a repeated control number)."""
        return self._f(code, message, seg, element, Severity.WARNING, position, value)

    def _trailer(self, check: str, code: str, message: str, seg: list[Any], element: int, position: int | None = None,
                 value: str | None = None) -> Finding:
        """A trailer that disagrees with what was received: strict by default (the set, group or
        interchange is rejected); a partner's ``validation.relax`` may make it a warning."""
        return self._f(code, message, seg, element, Severity.ERROR, position, value, check)

    def _interchange_finding(self, f: Finding) -> None:
        if self.ich is not None:
            self.ich.findings.append(f)
        else:
            self.events.append(f)

    def _close_set(self, trailer_missing: bool) -> None:
        ts = self.ts
        if ts is None:
            return
        if trailer_missing and not ts.type:
            # Stray segments the sender never counted as a set (no header, no trailer).
            if self.grp is not None and ts.group is self.grp.info:
                self.group_set_count -= 1
            elif ts.group is None and self.ich is not None:
                self.ich_item_count -= 1
        if trailer_missing and ts.type:
            ts.findings.append(
                finding(
                    "transaction.trailer_missing",
                    f"{ts.type} {ts.control_number or ''} has no {self.set_trailer} trailer".replace("  ", " "),
                    segment_tag=_label(ts.segments[-1][0]),
                    segment_index=ts.first_segment_index + len(ts.segments) - 1,
                    set_position=len(ts.segments),
                    interchange_control=ts.interchange.control_number,
                    group_control=ts.group.control_number if ts.group else None,
                    message_control=ts.control_number,
                )
            )
        self.events.append(ts)
        self.ts = None
        self.ts_summary = None

    def _open_set(self, ts: TransactionSet, summary: SetSummary, control: str | None, head: list[Any]) -> None:
        """A set begins: ``summary`` (its acknowledgment's view, sharing its findings list) joins the
        group or interchange; ``control`` and ``head`` are its control number and header segment."""
        self.ts = ts
        self.ts_summary = summary
        grp = self.grp
        if grp is not None:
            grp.sets.append(summary)
            self.group_set_count += 1
        elif self.ich is not None:
            self.ich.sets.append(summary)
            self.ich_item_count += 1
        # The control numbers seen since the group (or, outside groups, the interchange) began:
        # the set is cleared whenever a group opens or closes and when an interchange opens.
        if control:
            if control in self.set_controls:
                summary.findings.append(
                    self._w(
                        "transaction.control_number_duplicate",
                        f"Control number {control} is used twice in the same group",
                        head,
                        2 if self.standard == "x12" else 1,
                        position=1,
                        value=control,
                    )
                )
            self.set_controls.add(control)

    def _close_group(self, trailer_missing: bool) -> None:
        if self.grp is None:
            return
        if trailer_missing:
            self.grp.findings.append(
                self._f("group.trailer_missing", f"Group {self.grp.info.control_number} has no {self.group_trailer} trailer")
            )
        self.grp = None
        self.set_controls.clear()

    def _open_bare(self, d: Delimiters) -> None:
        """A set, group or message with no interchange header: read it in an interchange of its
        own, marked bare (its sender and receiver come from the caller's source or partner)."""
        info = InterchangeInfo(standard=self.standard, delimiters=d, segment_index=self.index + 1, bare=True)
        self.ich = InterchangeSummary(info=info)
        self.ich_item_count = 0
        self.set_controls.clear()

    def _open_broken_set(self, seg: list[Any]) -> None:
        """A segment inside an interchange but outside any set: its set's header is corrupt. The
        segments up to the next trailer or header become a set of their own that is refused,
        so that the intact sets beside it go on."""
        assert self.ich is not None
        findings: list[Finding] = []
        ts = TransactionSet(self.standard, "", None, None, [seg], self.index, self.ich.info,
                            self.grp.info if self.grp else None, None, findings)
        self._open_set(ts, SetSummary("", None, findings, None, None, None), None, seg)
        header = "ST" if self.standard == "x12" else "UNH"
        findings.append(self._f(
            "transaction.header_invalid",
            f"Segment {_label(seg[0])} is not in a transaction set: its {header} is missing or corrupt; "
            f"the segments up to the next trailer or {header} are refused", seg, position=1))

    def _close_interchange(self, complete: bool, at_eof: bool = False) -> None:
        if self.ich is None:
            return
        open_set = self.ts is not None
        if self.ts is not None:
            self._close_set(trailer_missing=True)
        if self.grp is not None:
            self._close_group(trailer_missing=True)
        if self.ich.info.bare:
            complete = True  # no interchange header, so no trailer to expect
        self.ich.complete = complete
        if not complete:
            # An EDIFACT file whose every message is complete and which simply ends without
            # UNZ is common in the wild (UNZ only repeats a count and the reference): accept it
            # with a warning. X12 requires the IEA, and a missing UNZ before another UNB
            # means a message may be cut: those are errors.
            lenient = self.standard == "edifact" and at_eof and not open_set
            self.ich.findings.append(
                self._f(
                    "interchange.trailer_missing",
                    f"Interchange {self.ich.info.control_number} has no {self.interchange_trailer} trailer"
                    + ("" if lenient else ": the file may be truncated"),
                    severity=Severity.WARNING if lenient else Severity.ERROR,
                )
            )
        self.events.append(self.ich)
        self.ich = None

    def _junk_seen(self, text: str) -> None:
        """Text that is no EDI, seen while waiting for more input: keep its head for the finding."""
        if text:
            self._junk = ((self._junk or "") + text)[:64]

    def _junk_end(self, text: str) -> None:
        """The junk ends here (an envelope header follows, or the file ends): report it once,
        named by how it starts, whatever the chunks it came in."""
        head = (self._junk or "") + text[:64]
        self._junk = None
        self.index += 1
        self._outside([head.strip()[:20] or "?"])

    def _outside(self, seg: list[Any]) -> None:
        """A segment that belongs to no transaction set."""
        where = "after the interchange trailer" if self.ich is None else "outside any transaction set"
        tag = seg[0] if isinstance(seg[0], str) else ""
        if self.ich is not None and self.ts is None and tag not in _TRAILERS:
            return self._open_broken_set(seg)
        if self.ich is None:
            self.events.append(
                self._f("file.trailing_data", f"Segment {_label(seg[0])} {where} was ignored", seg, severity=Severity.WARNING)
            )
        else:
            self.ich.findings.append(self._f("interchange.content_invalid", f"Segment {_label(seg[0])} {where}", seg))


# --------------------------------------------------------------------------------------------
# X12


def _x12_date(v: str) -> str | None:
    v = v.strip()
    if len(v) == 6 and v.isdecimal():
        return f"{20 if int(v[:2]) < 50 else 19}{v[:2]}-{v[2:4]}-{v[4:6]}"
    if len(v) == 8 and v.isdecimal():
        return f"{v[:4]}-{v[4:6]}-{v[6:8]}"
    return None


def _text_from(buf: str, lines: str | None, pieces: Sequence[object], k: int, tail: str, term: str) -> str:
    """The text of ``buf`` from the start of ``pieces[k]``, exactly as it was (line breaks kept):
    the next interchange may be newline-terminated, or end its lines otherwise."""
    if lines is not None:  # newline mode: the pieces are the lines of ``lines``
        return "".join(lines.splitlines(True)[k:]) + tail
    # The pieces were split on the terminator (line breaks taken out or not, released
    # terminators rejoined or not, the count of terminators is the same): the text after the k-th.
    if not k:
        return buf
    parts = buf.split(term, k)
    return parts[k] if len(parts) > k else ""  # "": the last piece was the file's unterminated end


class _X12Reader(_Envelope):
    def __init__(self, trace: list[Any] | None = None):
        super().__init__("x12", ("SE", "GE", "IEA"), trace)
        self.newline_mode = False
        self.native = native.x12  # the C loop, or None: the pure-Python path
        self._interchange_finding_pending: Finding | None = None

    # -- tokenizing ------------------------------------------------------------------------
    def _consume(self, buf: str, final: bool) -> str:
        """Split complete segments off ``buf``; return the unfinished tail."""
        while True:
            if self.delims is None:
                buf = buf.lstrip(_WS)
                if not buf:
                    return ""
                bare = _bare_x12(buf, final)
                if bare is None:
                    return buf  # need more text
                if isinstance(bare, Delimiters):
                    self.delims = bare
                    self.newline_mode = bare.segment == "\n"
                    self._open_bare(bare)
                elif not buf.startswith("ISA"):
                    if len(buf) < 3 and not final:
                        return buf
                    nxt = buf.find("ISA")
                    if nxt < 0 and not final:
                        # Keep a tail in case an ISA starts across the chunk boundary, and the
                        # junk's head: the finding names the junk by how it starts.
                        self._junk_seen(buf[:-2])
                        return buf[-2:]
                    self._junk_end(buf if nxt < 0 else buf[:nxt])
                    if nxt < 0:
                        return ""
                    buf = buf[nxt:]
                if not isinstance(bare, Delimiters):
                    header = self._detect(buf, final)
                    if header is None:
                        return buf  # need more text
                    if not isinstance(header, tuple):
                        return ""  # unusable ISA: reported, rest of file dropped
                    isa, consumed = header
                    self._segment(isa)
                    buf = buf[consumed:]
            d = self.delims
            assert d is not None
            term = d.segment
            lines: str | None = None
            pieces: Pieces
            newline_mode = self.newline_mode
            if newline_mode:
                if final:
                    lines, tail = buf, ""
                else:
                    p = max(buf.rfind("\n"), buf.rfind("\r"))
                    lines, tail = buf[: p + 1], buf[p + 1 :]
                pieces = cast(Pieces, lines.splitlines())
            else:
                # Split on the terminator as the text stands: line breaks after terminators are
                # stripped per segment and those inside one (hard-wrapped files) taken out of
                # that segment, so every piece keeps its place in ``buf``. The C loop, where
                # built, hands ordinary segments back already split (see translators/_x12.c).
                split = self.native.split(buf, d.element, term) if self.native is not None else None
                pieces = split if split is not None else cast(Pieces, buf.split(term))
                last = pieces.pop()
                assert isinstance(last, str)  # the text after the last terminator stays text
                tail = last
                if final:
                    if tail.strip(_WS):
                        pieces.append(tail)
                    tail = ""
            el = d.element
            cr = "\r" in buf
            next_interchange: str | None = None
            envelope = _X12_TRIGGERS
            fast = self.trace is None
            ts = self.ts
            # Segments of the open set are appended straight to its list: the hot path.
            out: list[Any] | None = ts.segments if ts is not None and fast else None
            n = -1
            for piece in pieces:
                n += 1
                if isinstance(piece, list):
                    # An ordinary segment the C loop split: no envelope tag, a tag under 4 characters.
                    if out is not None:
                        out.append(piece)
                        continue
                    seg = piece
                else:
                    if not piece:
                        continue
                    if newline_mode:
                        piece = piece.strip(_WS)
                        if not piece:
                            continue
                        lead = 0
                    else:
                        piece, lead = _unwrapped(piece, cr)
                        if lead < 0:
                            continue
                    seg = piece.split(el)
                    if lead:
                        # Blanks after the terminator (most often its line break): only the tag
                        # holds them, which costs less than a stripped copy of the whole segment.
                        seg[0] = seg[0][lead:]
                tag = seg[0]
                if out is not None and len(tag) < 4 and tag not in envelope:
                    out.append(seg)
                    continue
                if ts is not None:
                    self.index = ts.first_segment_index + len(ts.segments) - 1
                if tag[:3] == "ISA" and not tag[3:4].isalnum():
                    # An interchange header (after an IEA, or with the IEA missing): read on with
                    # the delimiters in force only when it splits like one; otherwise detect its
                    # own delimiters from the text as it was.
                    if not self._same_delimiters_next(pieces, n, d):
                        if self.ich is not None:
                            # Reported at the ISA's position, as when it splits with the old delimiters.
                            self.index += 1
                            self._close_interchange(complete=False)
                            self.index -= 1
                        self.delims = None
                        next_interchange = _text_from(buf, lines, pieces, n, tail, term)
                        break
                    d = self.delims
                    assert d is not None
                elif tag == "IEA":
                    self._segment(seg)
                    if self._same_delimiters_next(pieces, n + 1, d):
                        d = self.delims
                        assert d is not None
                        ts = self.ts
                        out = ts.segments if ts is not None and fast else None
                        continue
                    # The next interchange may use other delimiters: detect them afresh.
                    self.delims = None
                    next_interchange = _text_from(buf, lines, pieces, n + 1, tail, term)
                    break
                self._segment(seg)
                ts = self.ts
                out = ts.segments if ts is not None and fast else None
            if ts is not None:
                self.index = ts.first_segment_index + len(ts.segments) - 1
            if next_interchange is None:
                return tail
            buf = next_interchange

    def _same_delimiters_next(self, pieces: Pieces, start: int, d: Delimiters) -> bool:
        """After an IEA: when the next ISA splits cleanly with the same element separator and
        terminator, take its component separator and go on over the pieces already split
        (re-joining and re-splitting the rest of the buffer per interchange is quadratic)."""
        if self.newline_mode:
            return False
        for piece in pieces[start : start + 4]:
            if isinstance(piece, list):
                return False  # an ordinary segment the C loop split: not an ISA
            cand = piece.lstrip(_WS)
            if not cand:
                continue
            if "\n" in cand or "\r" in cand:
                return False  # a wrapped ISA: read afresh from the text, as the first one was
            if not cand.startswith("ISA") or cand[3:4] != d.element:
                return False
            isa = cand.split(d.element)
            if len(isa) != 17 or len(isa[16]) != 1 or isa[16].isalnum() or isa[16] in _WS:
                return False
            version = isa[12].strip()
            r = isa[11]
            rep = r if version >= "00402" and len(r) == 1 and not r.isalnum() and r not in _WS else None
            self.delims = Delimiters(element=d.element, component=isa[16], segment=d.segment, repetition=rep)
            return True
        return False

    def _detect(self, buf: str, final: bool) -> tuple[list[str], int] | bool | None:
        """Delimiters from an ISA at the start of ``buf``: (ISA segment, chars consumed), None or False."""
        e = buf[3] if len(buf) > 3 else ""
        if not e:
            return None if not final else self._bad_isa(buf, "The ISA segment is cut short")
        if e.isalnum() or e in _WS:
            return self._bad_isa(buf, f"ISA element separator {e!r} is not a usable separator")
        i = 3
        for _ in range(15):
            i = buf.find(e, i + 1)
            if i < 0 or i > 400:
                if len(buf) < 400 and not final:
                    return None
                return self._bad_isa(buf, "The ISA segment does not have 16 elements")
        if len(buf) < i + 3 and not final:
            return None
        isa16 = buf[i + 1] if len(buf) > i + 1 else ""
        j = i + 2
        if isa16 in ("\r", "\n"):
            # A line break just before ISA16 ('...*P*\n>~'): a wrap when a usable separator follows.
            k = i + 1
            while k < len(buf) and buf[k] in "\r\n":
                k += 1
            if len(buf) < k + 2 and not final:
                return None
            nxt = buf[k] if k < len(buf) else ""
            if nxt and not nxt.isalnum() and nxt not in _WS:
                isa16, j = nxt, k + 1
        isa16_sent = isa16  # as sent: the ISA16 element keeps it even when it is the terminator
        term = buf[j] if len(buf) > j else ""
        newline = False
        end = j + 1
        if term in ("\r", "\n", " ", "\t", ""):
            k = j
            while k < len(buf) and buf[k] in " \t":
                k += 1
            saw_newline = k < len(buf) and buf[k] in "\r\n"
            while k < len(buf) and buf[k] in "\r\n":
                k += 1
            nxt = buf[k] if k < len(buf) else ""
            if term in ("\r", "\n") and nxt and not nxt.isalnum() and nxt not in _WS:
                term, end = nxt, k + 1  # ISA hard-wrapped just before its terminator
            elif saw_newline or term in ("\r", "\n") or not nxt:
                newline, end = True, k
                # ISA16 holding the terminator itself (a common exporter bug): lines end in it.
                line_end = buf.find("\n", k)
                line = buf[k:line_end].strip(" \t\r") if line_end > 0 else ""
                if isa16 and line.endswith(isa16) and line[:2].isalpha():
                    term, newline, isa16 = isa16, False, "\x1f"
                    self.index += 1
                    self._interchange_finding_pending = finding(
                        "interchange.separator_invalid",
                        "ISA16 holds the segment terminator; the component separator is unknown",
                        severity=Severity.WARNING,
                        segment_tag="ISA",
                        element_index=16,
                    )
                    self.index -= 1
            else:
                term = " "
        if not isa16 or isa16.isalnum():
            return self._bad_isa(buf, f"ISA16 component separator {isa16!r} is not a usable separator")
        header = (buf[: i + 1] + isa16_sent).replace("\r", "").replace("\n", "")
        isa = header.split(e)
        if len(isa) != 17:
            return self._bad_isa(buf, "The ISA segment does not have 16 elements")
        version = isa[12].strip()
        rep = isa[11] if version >= "00402" and len(isa[11]) == 1 and not isa[11].isalnum() and isa[11] not in _WS else None
        self.delims = Delimiters(element=e, component=isa16, segment=term, repetition=rep)
        self.newline_mode = newline
        return isa, end

    def _bad_isa(self, buf: str, message: str) -> bool:
        self.index += 1
        f = self._f("interchange.header_invalid", message, ["ISA"])
        self.events.append(
            InterchangeSummary(
                info=InterchangeInfo(standard="x12", delimiters=Delimiters("*", ":", "~"), segment_index=self.index, header=["ISA"]),
                findings=[f],
                complete=False,
            )
        )
        return False

    # -- envelope --------------------------------------------------------------------------
    def _segment(self, seg: list[str]) -> None:
        self.index += 1
        if self.trace is not None:
            self.trace.append(seg)
        tag = seg[0]
        ts = self.ts
        if ts is not None and tag != "SE" and tag not in _X12_ENVELOPE:
            ts.segments.append(seg)
            return
        if tag == "SE":
            if ts is None:
                return self._outside(seg)
            ts.segments.append(seg)
            count = seg[1].strip() if len(seg) > 1 else ""
            if not ts.type:
                return self._close_set(False)  # a set already refused for its header
            if count != str(len(ts.segments)) and count.lstrip("0") != str(len(ts.segments)):
                ts.findings.append(
                    self._trailer("segment_count", "transaction.count_mismatch",
                                  f"SE01 says {count or 'nothing'} segments, {len(ts.segments)} were received",
                            seg, 1, position=len(ts.segments), value=count)
                )
            ctl = seg[2].strip() if len(seg) > 2 else ""
            if not _same_control(ctl, ts.control_number):
                ts.findings.append(
                    self._trailer("set_control_number", "transaction.control_number_mismatch",
                                  f"SE02 {ctl!r} differs from ST02 {ts.control_number!r}",
                            seg, 2, position=len(ts.segments), value=ctl)
                )
            return self._close_set(False)
        if tag == "ST":
            if ts is not None:
                self._close_set(True)
            if self.ich is None:
                return self._outside(seg)
            if self.grp is None and not self.ich.info.bare:
                self.ich.findings.append(self._f("interchange.content_invalid", "ST outside a functional group (no GS)", seg))
            st01 = seg[1].strip() if len(seg) > 1 else ""
            st02 = seg[2].strip() if len(seg) > 2 else ""
            group = self.grp.info if self.grp is not None else None
            version: str | None = group.version if group is not None else None
            if not version:
                version = None
            st03 = seg[3].strip() if len(seg) > 3 else ""
            if st03 and (not version or not version[:6].isdecimal()):
                version = st03
            control = st02 or None
            set_version = version[:6] if version and version[:6].isdecimal() else version
            association = version[6:] or None if version else None
            findings: list[Finding] = []
            # Positional, in the field order of TransactionSet and SetSummary: keywords cost their
            # generated __init__ about twice as much, and this runs once per set.
            ts = TransactionSet("x12", st01, control, set_version, [seg], self.index, self.ich.info, group, association,
                                findings)
            self._open_set(ts, SetSummary(st01, control, findings, st03 or None, set_version, association), control, seg)
            if not st01:
                ts.findings.append(self._f("transaction.header_invalid", "ST01 (transaction set identifier) is empty", seg, 1, position=1))
            if not st02:
                ts.findings.append(self._f("transaction.header_invalid", "ST02 (control number) is empty", seg, 2, position=1))
            return
        if tag == "GS":
            if self.ich is None:
                return self._outside(seg)
            if self.grp is not None:
                self._close_group(True)
            def g(n: int) -> str:
                return seg[n].strip() if len(seg) > n else ""

            info = GroupInfo(
                functional_id=g(1) or None,
                sender_id=g(2) or None,
                receiver_id=g(3) or None,
                control_number=g(6) or None,
                version=g(8) or None,
                date=_x12_date(g(4)),
                segment_index=self.index,
                header=seg,
            )
            self.grp = GroupSummary(info=info)
            self.ich.groups.append(self.grp)
            self.ich_item_count += 1
            self.group_set_count = 0
            self.set_controls.clear()
            if not info.control_number or not info.control_number.isdecimal():
                self.grp.findings.append(self._f("group.header_invalid", f"GS06 control number {g(6)!r} is not numeric", seg, 6))
            return
        if tag == "GE":
            if self.grp is None:
                return self._outside(seg)
            if ts is not None:
                self._close_set(True)
            count = seg[1].strip() if len(seg) > 1 else ""
            if count.lstrip("0") != str(self.group_set_count).lstrip("0"):
                self.grp.findings.append(
                    self._trailer("group_count", "group.count_mismatch", f"GE01 says {count or 'nothing'} transaction sets, {self.group_set_count} were received", seg, 1, value=count)
                )
            ctl = seg[2].strip() if len(seg) > 2 else ""
            if not _same_control(ctl, self.grp.info.control_number):
                self.grp.findings.append(
                    self._trailer("group_control_number", "group.control_number_mismatch", f"GE02 {ctl!r} differs from GS06 {self.grp.info.control_number!r}", seg, 2, value=ctl)
                )
            self.grp.trailer_count = count
            return self._close_group(False)
        if tag == "ISA":
            if self.ich is not None:
                self._close_interchange(complete=False)
            return self._open_interchange(seg)
        if tag == "IEA":
            if self.ich is None:
                return self._outside(seg)
            if ts is not None:
                self._close_set(True)
            if self.grp is not None:
                self._close_group(True)
            count = seg[1].strip() if len(seg) > 1 else ""
            if count.lstrip("0") != str(len(self.ich.groups)).lstrip("0"):
                self.ich.findings.append(
                    self._trailer("interchange_count", "interchange.count_mismatch", f"IEA01 says {count or 'nothing'} groups, {len(self.ich.groups)} were received", seg, 1, value=count)
                )
            ctl = seg[2].strip() if len(seg) > 2 else ""
            if not _same_control(ctl, self.ich.info.control_number):
                self.ich.findings.append(
                    self._trailer("interchange_control_number", "interchange.control_number_mismatch", f"IEA02 {ctl!r} differs from ISA13 {self.ich.info.control_number!r}", seg, 2, value=ctl)
                )
            return self._close_interchange(complete=True)
        if tag == "TA1" and self.ich is not None and self.grp is None:
            return  # an interchange acknowledgment riding in the envelope: not a document
        self._outside(seg)

    def _open_interchange(self, isa: list[str]) -> None:
        def g(n: int) -> str:
            return isa[n].strip() if len(isa) > n else ""

        info = InterchangeInfo(
            standard="x12",
            delimiters=self.delims or _DEFAULT_X12,
            sender_qualifier=g(5) or None,
            sender_id=g(6) or None,
            receiver_qualifier=g(7) or None,
            receiver_id=g(8) or None,
            control_number=g(13) or None,
            version=g(12) or None,
            date=_x12_date(g(9)),
            time=f"{g(10)[:2]}:{g(10)[2:4]}" if len(g(10)) == 4 and g(10).isdecimal() else None,
            test=g(15).upper() == "T",
            ack_requested=g(14) == "1",
            segment_index=self.index,
            header=isa,
        )
        self.ich = InterchangeSummary(info=info)
        self.ich_item_count = 0
        self.set_controls.clear()
        pending = getattr(self, "_interchange_finding_pending", None)
        if pending is not None:
            self.ich.findings.append(pending)
            self._interchange_finding_pending = None
        if not info.control_number or not info.control_number.isdecimal():
            self.ich.findings.append(self._f("interchange.control_number_invalid", f"ISA13 {g(13)!r} is not a numeric control number", isa, 13, value=g(13)))
        if not info.sender_id:
            self.ich.findings.append(self._f("interchange.sender_invalid", "ISA06 (sender id) is empty", isa, 6))
        if not info.receiver_id:
            self.ich.findings.append(self._f("interchange.receiver_invalid", "ISA08 (receiver id) is empty", isa, 8))
        if g(9) and info.date is None:
            self.ich.findings.append(self._f("interchange.date_invalid", f"ISA09 {g(9)!r} is not a YYMMDD date", isa, 9, severity=Severity.WARNING, value=g(9)))
        if g(15).upper() not in ("P", "T", "I"):
            self.ich.findings.append(self._f("interchange.test_indicator_invalid", f"ISA15 {g(15)!r} is not P, T or I", isa, 15, severity=Severity.WARNING, value=g(15)))
        v = info.version or ""
        if not (v.isdecimal() and "00200" <= v <= "00899"):
            self.ich.findings.append(self._f("interchange.version_unsupported", f"ISA12 {v!r} is not an X12 control version the gateway reads", isa, 12, severity=Severity.WARNING, value=v))


_X12_ENVELOPE: Final = frozenset({"ST", "GS", "GE", "ISA", "IEA"})
_DEFAULT_X12: Final = Delimiters("*", ":", "~")
_X12_TRIGGERS: Final = _X12_ENVELOPE | {"SE"}  # segments the envelope reader must see


# --------------------------------------------------------------------------------------------
# EDIFACT

_PLACEHOLDER_BASE: Final = 0xE000


class _EdifactReader(_Envelope):
    def __init__(self, trace: list[Any] | None = None):
        super().__init__("edifact", ("UNT", "UNE", "UNZ"), trace)
        self.una: Delimiters | None = None
        self._escape_re: re.Pattern[str] | None = None
        self._skip_una = False
        self._escape_map: dict[str, str] = {}
        self._restore: dict[int, str] = {}
        self.ung_count = 0
        self.native = native.edifact  # the C loop, or None: the pure-Python path

    def _set_delimiters(self, d: Delimiters) -> None:
        self.delims = d
        if d.release:
            specials = [c for c in (d.release, d.element, d.component, d.segment, d.repetition) if c and c != " "]
            self._escape_map = {c: chr(_PLACEHOLDER_BASE + n) for n, c in enumerate(dict.fromkeys(specials))}
            self._restore = {ord(p): c for c, p in self._escape_map.items()}
            # The release character escapes whatever follows it (syntax 4 allows it before any
            # character). Each escaped character gets a private-use placeholder so splitting
            # stays a C-speed str.split inside the segments that need it.
            self._escape_re = re.compile(re.escape(d.release) + "(.)", re.S)
        else:
            self._escape_re = None

    def _escape(self, m: re.Match[str]) -> str:
        c = m.group(1)
        p = self._escape_map.get(c)
        if p is None:
            p = self._escape_map[c] = chr(_PLACEHOLDER_BASE + len(self._escape_map))
            self._restore[ord(p)] = c
        return p

    def _consume(self, buf: str, final: bool) -> str:
        while True:
            if self.delims is None:
                buf = buf.lstrip(_WS)
                if not buf:
                    return ""
                if len(buf) < 9 and not final:
                    return buf
                if buf.startswith("UNA"):
                    una = _read_una(buf, final)
                    if una is None:
                        return buf  # need more text
                    chars, end = una
                    if len(chars) < 6:
                        self.index += 1
                        self._outside(["UNA"])
                        return ""
                    self.una = Delimiters(element=chars[1], component=chars[0], segment=chars[5],
                                          repetition=chars[4] if chars[4] != " " else None,
                                          release=chars[3] if chars[3] != " " else None, decimal=chars[2])
                    buf = buf[end:]
                    self.index += 1
                    continue
                if buf.startswith("UNH") and len(buf) > 3 and not buf[3].isalnum() and buf[3] not in _WS:
                    # A bare message: the UNA's service characters, else the defaults with the
                    # element separator the UNH shows.
                    bare_d = self.una or (_DEFAULT_EDIFACT if buf[3] == "+" else
                                          Delimiters(element=buf[3], component=":", segment="'", release="?"))
                    self.una = None
                    self._set_delimiters(bare_d)
                    self._open_bare(bare_d)
                elif not buf.startswith("UNB"):
                    nxt = min((p for p in (buf.find("UNB"), buf.find("UNA")) if p >= 0), default=-1)
                    if nxt < 0 and not final:
                        self._junk_seen(buf[:-3])
                        return buf[-3:]
                    self._junk_end(buf if nxt < 0 else buf[:nxt])
                    if nxt < 0:
                        return ""
                    buf = buf[nxt:]
                    continue
                else:
                    sniffed = self.una or self._sniff(buf)
                    if sniffed is None:
                        if not final:
                            return buf
                        sniffed = Delimiters(element="+", component=":", segment="'", release="?")
                    self.una = None
                    self._set_delimiters(sniffed)
            d = self.delims
            assert d is not None
            term = d.segment
            rel = d.release or ""
            newline_term = term in ("\r", "\n")
            work = buf
            if rel and rel in buf and not newline_term and ("\n" in buf or "\r" in buf) \
                    and ((rel + "\n") in buf or (rel + "\r") in buf):
                # A release character just before a line break releases what follows the break:
                # take the breaks out first (this keeps the count of terminators).
                work = buf.replace("\r", "").replace("\n", "")
            released = bool(rel) and rel in work and (rel + term) in work
            pieces: Pieces
            if released:
                pieces = cast(Pieces, _rejoin_released(work.split(term), rel, term))
            else:
                # Where built, the C loop hands ordinary segments back already split, release
                # characters resolved (see translators/_edifact.c); one item per piece either way.
                split = self.native.split(work, d.element, d.component, term, d.release) if self.native is not None else None
                pieces = split if split is not None else cast(Pieces, work.split(term))
            last = pieces.pop()
            assert isinstance(last, str)  # the text after the last terminator stays text
            if final:
                if last.strip(_WS):
                    pieces.append(last)
                tail = ""
            elif work is buf and not released:
                tail = last
            else:
                # Carried as it was, line breaks kept: it may begin another interchange.
                tail = _tail_of(buf, last.count(term) + 1, term)
            el, comp = d.element, d.component
            cr = "\r" in buf
            next_interchange: str | None = None
            envelope = _EDIFACT_ENVELOPE
            fast = self.trace is None
            ts = self.ts
            out: list[Any] | None = ts.segments if ts is not None and fast else None
            skip_una = False
            n = -1
            for piece in pieces:
                n += 1
                seg: list[Any]
                if isinstance(piece, list):
                    # An ordinary segment the C loop split: a plain three-letter tag, no service segment.
                    if out is not None:
                        out.append(piece)
                        continue
                    seg = piece
                    head = piece[0]
                else:
                    if not piece:
                        continue
                    piece, lead = _unwrapped(piece, cr)
                    if lead < 0:
                        continue
                    if skip_una and piece.startswith("UNA", lead):
                        # The next interchange's UNA repeats the service characters in force.
                        skip_una = False
                        self.index += 1
                        continue
                    if rel and rel in piece:
                        seg = self._split_released(piece, el, comp)
                    else:
                        seg = [e.split(comp) if comp in e else e for e in piece.split(el)]
                    tag = seg[0]
                    if lead:
                        # Blanks after the terminator: only the tag holds them (see the X12 reader).
                        if isinstance(tag, list):
                            tag[0] = tag[0][lead:]
                        else:
                            tag = seg[0] = tag[lead:]
                    # The first three characters, not seg[0] alone: a garbled tag may itself split
                    # into components.
                    head = tag if isinstance(tag, str) and len(tag) == 3 else piece[lead : lead + 3]
                    if out is not None and head not in envelope and head != "UNA":
                        out.append(seg)
                        continue
                if ts is not None:
                    self.index = ts.first_segment_index + len(ts.segments) - 1
                if seg[0] == "UNZ" or head == "UNA":
                    nxt = n  # the next interchange starts with this UNA, or after this UNZ
                    if seg[0] == "UNZ":
                        self._segment(seg)
                        nxt = n + 1
                        if self._same_delimiters_next(pieces, nxt, d):
                            skip_una = self._skip_una
                            ts = self.ts
                            out = ts.segments if ts is not None and fast else None
                            continue
                    else:
                        # A new service string advice while an interchange is open: its UNZ is missing.
                        self._close_interchange(complete=False)
                    self.delims = None
                    # The next interchange from the text as it was: its UNA may change the terminator.
                    k = nxt + sum(p.count(term) for p in pieces[:nxt]) if released else nxt
                    next_interchange = _text_from(buf, None, pieces, k, tail, term)
                    break
                self._segment(seg)
                ts = self.ts
                out = ts.segments if ts is not None and fast else None
            if ts is not None:
                self.index = ts.first_segment_index + len(ts.segments) - 1
            if next_interchange is not None:
                buf = next_interchange
                continue
            return tail

    def _split_released(self, piece: str, el: str, comp: str) -> list[Any]:
        """Split a segment that holds release characters: each released character becomes a
        private-use placeholder, the segment splits as usual, and the placeholders turn back."""
        rel = self.delims.release if self.delims is not None else None
        escape_re = self._escape_re
        if rel is None or escape_re is None:
            return [e.split(comp) if comp in e else e for e in piece.split(el)]
        if _PLACEHOLDERS.search(piece):
            return _scan_released(piece, el, comp, rel)  # real private-use text
        marked = escape_re.sub(self._escape, piece)
        restore = self._restore
        return [
            [c.translate(restore) for c in e.split(comp)] if comp in e else e.translate(restore)
            for e in marked.split(el)
        ]

    def _same_delimiters_next(self, pieces: Pieces, start: int, d: Delimiters) -> bool:
        """After a UNZ: whether the next interchange keeps the service characters in force, so the
        pieces already split can be read on (re-splitting the rest per interchange is quadratic)."""
        for piece in pieces[start : start + 4]:
            if isinstance(piece, list):
                self._skip_una = False
                return False  # an ordinary segment the C loop split: neither UNA nor UNB
            cand = piece.lstrip(_WS)
            if not cand:
                continue
            if cand.startswith("UNA"):
                # Split on the terminator, the UNA piece is "UNA" and five characters.
                if len(cand) != 8:
                    return False
                c = cand[3:8]  # component, element, decimal mark, release, repetition
                same = Delimiters(element=c[1], component=c[0], segment=d.segment, repetition=c[4] if c[4] != " " else None,
                                  release=c[3] if c[3] != " " else None, decimal=c[2])
                self._skip_una = same == d
                return self._skip_una
            self._skip_una = False
            return cand.startswith("UNB+") and d == _DEFAULT_EDIFACT and cand[4:8].isalpha() and cand[8:9] in (":", "+")
        return False

    def _sniff(self, buf: str) -> Delimiters | None:
        """Separators of an interchange without UNA: defaults, or read off the UNB itself."""
        text = buf[:2048].replace("\r", "").replace("\n", "")
        if len(text) < 9:
            return None
        el = text[3]
        default = el == "+" and text[4:8].isalpha() and text[8:9] in (":", "+")
        comp = ":" if default else text[8] if text[4:8].isalpha() and len(text) > 8 else ":"
        # The terminator is what ends the UNB: the character before the first UNH / UNG, even
        # when the element and component separators are the defaults.
        m = re.search(r"([^A-Za-z0-9 ])\s*UN[HG]" + re.escape(el), text)
        if not m:
            # No message header in sight: the defaults, once there is text enough to be sure
            # (waiting on would hold the whole file).
            return _DEFAULT_EDIFACT if len(text) >= 2000 else None
        return Delimiters(element=el, component=comp, segment=m.group(1), release="?")

    # -- envelope --------------------------------------------------------------------------
    def _segment(self, seg: list[Any]) -> None:
        self.index += 1
        if self.trace is not None:
            self.trace.append(seg)
        tag = seg[0] if isinstance(seg[0], str) else seg[0][0]
        ts = self.ts
        if ts is not None and tag not in _EDIFACT_ENVELOPE:
            ts.segments.append(seg)
            return
        def e(n: int, c: int = 1) -> str:
            return _comp(seg, n, c)

        if tag == "UNT":
            if ts is None:
                return self._outside(seg)
            ts.segments.append(seg)
            count = e(1)
            if not ts.type:
                return self._close_set(False)  # a message already refused for its header
            if count.lstrip("0") != str(len(ts.segments)):
                ts.findings.append(self._trailer("segment_count", "transaction.count_mismatch", f"UNT says {count or 'nothing'} segments, {len(ts.segments)} were received",
                                           seg, 1, position=len(ts.segments), value=count))
            if not _same_control(e(2), ts.control_number):
                ts.findings.append(self._trailer("set_control_number", "transaction.control_number_mismatch", f"UNT reference {e(2)!r} differs from UNH {ts.control_number!r}",
                                           seg, 2, position=len(ts.segments), value=e(2)))
            return self._close_set(False)
        if tag == "UNH":
            if ts is not None:
                self._close_set(True)
            if self.ich is None:
                return self._outside(seg)
            version = (e(2, 2) + e(2, 3)).replace(" ", "").replace(":", "").upper() or None
            kind = e(2, 1).strip().upper()
            control = e(1) or None
            association = e(2, 5) or None
            findings: list[Finding] = []
            # Positional, as for X12's ST.
            ts = TransactionSet("edifact", kind, control, version, [seg], self.index, self.ich.info,
                                self.grp.info if self.grp else None, association, findings)
            self._open_set(ts, SetSummary(kind, control, findings, None, version, association), control, seg)
            if not e(1):
                ts.findings.append(self._f("transaction.header_invalid", "UNH message reference (0062) is empty", seg, 1, position=1))
            if not e(2, 1):
                ts.findings.append(self._f("transaction.header_invalid", "UNH message type (0065) is empty", seg, 2, position=1))
            return
        if tag == "UNG":
            if self.ich is None:
                return self._outside(seg)
            if self.grp is not None:
                self._close_group(True)
            info = GroupInfo(
                functional_id=e(1) or None,
                sender_id=e(2) or None,
                receiver_id=e(3) or None,
                control_number=e(5) or None,
                version=(e(7, 1) + e(7, 2)).replace(" ", "") or None,
                segment_index=self.index,
                header=seg,
            )
            self.grp = GroupSummary(info=info)
            self.ich.groups.append(self.grp)
            self.ich_item_count += 1
            self.group_set_count = 0
            self.set_controls.clear()
            return
        if tag == "UNE":
            if self.grp is None:
                return self._outside(seg)
            if ts is not None:
                self._close_set(True)
            if e(1).lstrip("0") != str(self.group_set_count):
                self.grp.findings.append(self._trailer("group_count", "group.count_mismatch", f"UNE says {e(1) or 'nothing'} messages, {self.group_set_count} were received", seg, 1, value=e(1)))
            if not _same_control(e(2), self.grp.info.control_number):
                self.grp.findings.append(self._trailer("group_control_number", "group.control_number_mismatch", f"UNE reference {e(2)!r} differs from UNG {self.grp.info.control_number!r}", seg, 2, value=e(2)))
            self.grp.trailer_count = e(1)
            return self._close_group(False)
        if tag == "UNB":
            if self.ich is not None:
                self._close_interchange(complete=False)
            return self._open_interchange(seg)
        if tag == "UNZ":
            if self.ich is None:
                return self._outside(seg)
            if ts is not None:
                self._close_set(True)
            if self.grp is not None:
                self._close_group(True)
            if e(1).lstrip("0") != str(self.ich_item_count).lstrip("0") or not e(1):
                self.ich.findings.append(self._trailer("interchange_count", "interchange.count_mismatch", f"UNZ says {e(1) or 'nothing'}, {self.ich_item_count} messages or groups were received", seg, 1, value=e(1)))
            if not _same_control(e(2), self.ich.info.control_number):
                self.ich.findings.append(self._trailer("interchange_control_number", "interchange.control_number_mismatch", f"UNZ reference {e(2)!r} differs from UNB {self.ich.info.control_number!r}", seg, 2, value=e(2)))
            return self._close_interchange(complete=True)
        self._outside(seg)

    def _open_interchange(self, unb: list[Any]) -> None:
        def e(n: int, c: int = 1) -> str:
            return _comp(unb, n, c)

        d = e(4, 1)
        date = None
        if d.isdecimal() and len(d) in (6, 8):
            date = (f"{20 if int(d[:2]) < 50 else 19}{d[:2]}-{d[2:4]}-{d[4:6]}" if len(d) == 6 else f"{d[:4]}-{d[4:6]}-{d[6:8]}")
        t = e(4, 2)
        info = InterchangeInfo(
            standard="edifact",
            delimiters=self.delims or _DEFAULT_EDIFACT,
            sender_id=e(2, 1) or None,
            sender_qualifier=e(2, 2) or None,
            receiver_id=e(3, 1) or None,
            receiver_qualifier=e(3, 2) or None,
            control_number=e(5) or None,
            version=e(1, 2) or None,
            syntax_identifier=e(1, 1).upper() or None,
            date=date,
            time=f"{t[:2]}:{t[2:4]}" if len(t) >= 4 and t[:4].isdecimal() else None,
            test=e(11) == "1",
            ack_requested=e(9) == "1",
            segment_index=self.index,
            header=unb,
        )
        self.ich = InterchangeSummary(info=info)
        self.ich_item_count = 0
        self.set_controls.clear()
        if not info.syntax_identifier or not info.syntax_identifier.startswith(("UNO", "KEC")):
            self.ich.findings.append(self._f("interchange.header_invalid", f"UNB syntax identifier {e(1, 1)!r} is not a known character set", unb, 1, value=e(1, 1)))
        if not info.control_number:
            self.ich.findings.append(self._f("interchange.control_number_invalid", "UNB interchange control reference (0020) is empty", unb, 5))
        if not info.sender_id:
            self.ich.findings.append(self._f("interchange.sender_invalid", "UNB sender (S002 0004) is empty", unb, 2, Severity.WARNING))
        if not info.receiver_id:
            self.ich.findings.append(self._f("interchange.receiver_invalid", "UNB recipient (S003 0010) is empty", unb, 3, Severity.WARNING))


def _bare_x12(buf: str, final: bool) -> Delimiters | bool | None:
    """The delimiters of a bare ST / GS (no ISA) at the start of ``buf``; False when ``buf`` does
    not start so, None when more text is needed. The terminator is the first character after
    the tag that is neither a letter, a digit, the element separator nor a blank (a line break
    makes a newline-terminated file); the component separator is ':' unless only '>' is seen."""
    if buf[:2] not in ("ST", "GS") or len(buf) < 3:
        return False if len(buf) >= 3 or final else None
    el = buf[2]
    if el.isalnum() or el in _WS:
        return False
    head = buf[:4096]
    for k in range(3, len(head)):
        c = head[k]
        if c == el or c.isalnum() or c in " \t":
            continue
        term = "\n" if c in "\r\n" else c
        comp = ">" if ">" in head and ":" not in head and term != ">" else ":"
        if comp in (el, term):
            comp = next(x for x in ":>^|" if x not in (el, term))
        return Delimiters(element=el, component=comp, segment=term)
    if not final and len(head) < 4096:
        return None
    return Delimiters(element=el, component=":", segment="\n")


def _same_control(trailer: str, header: str | None) -> bool:
    """Whether a trailer's control number is the header's: the same text, or the same number
    when both are digits (leading zeros are padding)."""
    header = header or ""
    if trailer == header:
        return True
    return trailer.isdecimal() and header.isdecimal() and len(trailer) <= 20 and len(header) <= 20 \
        and int(trailer) == int(header)


def _label(tag: object) -> str:
    """A segment tag fit to print: the letters and digits it starts with, at most 10 (a garbled
    tag or junk text is named by how it starts, never as raw text or a list)."""
    while isinstance(tag, list):
        tag = tag[0] if tag else ""
    text = str(tag).lstrip(_WS)
    n = 0
    while n < len(text) and n < 10 and text[n].isascii() and text[n].isalnum():
        n += 1
    return text[:n] or "?"


def _leading_blanks(piece: str) -> int:
    """How many white-space characters ``piece`` starts with."""
    n = 0
    while n < len(piece) and piece[n] in _WS:
        n += 1
    return n


def _unwrapped(piece: str, cr: bool) -> tuple[str, int]:
    """A piece of text between terminators, ready to split, and how many blanks it starts with
    (-1: nothing but blanks). Line breaks inside it (a hard-wrapped segment, or a newline-
    terminated file's CR of a CRLF) are taken out; ``cr``: the text holds a CR at all."""
    lead = _leading_blanks(piece)
    if lead == len(piece):
        return piece, -1
    if piece.find("\n", lead) >= 0 or (cr and piece.find("\r", lead) >= 0):
        piece = piece.replace("\r", "").replace("\n", "").lstrip(_WS)
        return piece, 0 if piece else -1
    return piece, lead


def _read_una(buf: str, final: bool) -> tuple[str, int] | None:
    """The six service characters of the UNA at the start of ``buf`` and where the UNA ends;
    None when more text is needed. A line break inside the UNA is a wrap and is skipped,
    except as its last character when a segment tag follows (a newline-terminated file)."""
    chars = ""
    k = 3
    while len(chars) < 6 and k < len(buf):
        c = buf[k]
        if c in "\r\n":
            j = k
            while j < len(buf) and buf[j] in "\r\n":
                j += 1
            if j >= len(buf) and not final:
                return None
            if len(chars) == 5 and (j >= len(buf) or buf[j].isalnum()):
                return chars + c, k + 1
            k = j
            continue
        chars += c
        k += 1
    if len(chars) < 6 and not final:
        return None
    return chars, k


def _tail_of(buf: str, n: int, term: str) -> str:
    """The text of ``buf`` after its n-th last terminator."""
    p = len(buf)
    for _ in range(n):
        p = buf.rfind(term, 0, p)
        if p < 0:
            return buf
    return buf[p + 1 :]


_PLACEHOLDERS: Final = re.compile("[\ue000-\uf8ff]")


def _scan_released(piece: str, el: str, comp: str, rel: str) -> list[Any]:
    """Character by character split, for the rare segment whose data holds private-use characters."""
    seg: list[Any] = []
    element: list[str] = []
    buf: list[str] = []
    released = False
    for ch in piece:
        if released:
            buf.append(ch)
            released = False
        elif ch == rel:
            released = True
        elif ch == comp:
            element.append("".join(buf))
            buf = []
        elif ch == el:
            element.append("".join(buf))
            seg.append(element if len(element) > 1 else element[0])
            element, buf = [], []
        else:
            buf.append(ch)
    element.append("".join(buf))
    seg.append(element if len(element) > 1 else element[0])
    return seg


def _released(text: str, rel: str) -> bool:
    """Whether ``text`` ends in an odd run of release characters (so what follows is data)."""
    n = len(text) - len(text.rstrip(rel))
    return n % 2 == 1


def _rejoin_released(pieces: list[str], rel: str, term: str) -> list[str]:
    """Put back together the pieces that a released (escaped) terminator split apart."""
    out: list[str] = []
    carry = None
    for p in pieces:
        if carry is not None:
            p = carry + term + p
            carry = None
        if p.endswith(rel) and _released(p, rel):
            carry = p
        else:
            out.append(p)
    if carry is not None:
        out.append(carry)
    return out


def _comp(seg: list[Any], n: int, c: int = 1) -> str:
    if n >= len(seg):
        return ""
    v = seg[n]
    if isinstance(v, list):
        return v[c - 1].strip() if c <= len(v) else ""
    return v.strip() if c == 1 else ""


_EDIFACT_ENVELOPE: Final = frozenset({"UNT", "UNH", "UNG", "UNE", "UNB", "UNZ"})
# Trailers (and headers of what encloses a set): out of place, they are reported, never a set.
_TRAILERS: Final = frozenset({"SE", "GE", "IEA", "ISA", "GS", "ST", "UNT", "UNE", "UNZ", "UNB", "UNG", "UNH", "UNA", "TA1"})
_DEFAULT_EDIFACT: Final = Delimiters(element="+", component=":", segment="'", release="?")
