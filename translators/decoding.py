"""From raw bytes to text: standard detection, BOMs, EBCDIC and EDIFACT character sets.

Real files lie about their character set (UTF-8 inside UNOA interchanges, ISO-8859-1
inside UNOC, mojibake). The rule: a file that is valid UTF-8 is read as UTF-8, because a
real ISO-8859 text almost never is; otherwise the declared set is used.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from typing import Final

_BOMS = (codecs.BOM_UTF8,)
_EBCDIC_ISA = "ISA".encode("cp037")
_EBCDIC_UNB = "UNB".encode("cp037")
_EBCDIC_UNA = "UNA".encode("cp037")

# EDIFACT syntax identifiers (UNB S001 0001) to Python codecs.
EDIFACT_CHARSETS = {
    "UNOA": "ascii",
    "UNOB": "ascii",
    "UNOC": "iso8859_1",
    "UNOD": "iso8859_2",
    "UNOE": "iso8859_5",
    "UNOF": "iso8859_7",
    "UNOG": "iso8859_3",
    "UNOH": "iso8859_4",
    "UNOI": "iso8859_6",
    "UNOJ": "iso8859_8",
    "UNOK": "iso8859_9",
    "UNOL": "iso8859_15",
    "UNOW": "utf_8",
    "UNOX": "iso2022_jp",
    "UNOY": "utf_8",
}

_START = re.compile(rb"ISA|UNA|UNB")


def detect(head: bytes) -> tuple[str | None, int, str | None]:
    """(standard, offset of the first envelope segment, codec) for the opening bytes.

    standard is ``"x12"``, ``"edifact"`` or None; codec is ``"cp037"`` for EBCDIC X12,
    otherwise None (decided by :class:`AdaptiveDecoder`).
    """
    i = 0
    for bom in _BOMS:
        if head.startswith(bom):
            i = len(bom)
    while i < len(head) and head[i] in b" \t\r\n\x00\x1a":
        i += 1
    rest = head[i:]
    if rest.startswith(_EBCDIC_ISA):
        return "x12", i, "cp037"
    if rest.startswith((_EBCDIC_UNB, _EBCDIC_UNA)):
        return "edifact", i, "cp037"
    if rest.startswith(b"ISA"):
        return "x12", i, None
    if rest.startswith((b"UNA", b"UNB")):
        return "edifact", i, None
    # A bare transaction set or group (ST / GS, no ISA) or a bare message (UNH, no UNB).
    if rest[:2] in (b"ST", b"GS") and len(rest) > 2 and not rest[2:3].isalnum() and rest[2:3] not in b" \t\r\n":
        return "x12", i, None
    if rest[:3] == b"UNH" and len(rest) > 3 and not rest[3:4].isalnum() and rest[3:4] not in b" \t\r\n":
        return "edifact", i, None
    # Junk before the envelope (a comment line, a mail header): find the first envelope.
    m = _START.search(head, i)
    if m:
        return ("x12" if m.group() == b"ISA" else "edifact"), m.start(), None
    return None, i, None


def edifact_syntax_identifier(head_text: str) -> str | None:
    """UNB S001 0001 (e.g. ``UNOC``) from the opening text, or None."""
    text = head_text.replace("\r", "").replace("\n", "")
    j = text.find("UNB")
    if j < 0 or len(text) < j + 8:
        return None
    ident = text[j + 4 : j + 8]
    return ident.upper() if ident.isalpha() else None


# The unit of the UTF-8 decision: fixed 64 KiB blocks of the byte stream, so that how the stream was
# chunked cannot change the text (a Latin-1 pair that looks like UTF-8 decodes the same way
# whether or not the byte that gives the file away came in the same chunk).
BLOCK: Final = 1 << 16


class AdaptiveDecoder:
    """Incremental decoder: UTF-8 while the bytes are valid UTF-8, else the declared codec.

    Decide per :data:`BLOCK` of the stream (see :func:`decode_chunks`): a block with a byte
    sequence that is not UTF-8 is read whole with the declared codec, and so is everything after
    it (a file that is not UTF-8 in one place is not UTF-8 anywhere).
    """

    def __init__(self, declared: str | None):
        self.declared = declared or "iso8859_1"
        if codecs.lookup(self.declared).name == "ascii":
            # An ASCII declaration with 8-bit bytes: Latin-1 at least keeps every byte.
            self.declared = "iso8859_1"
        self._decoder = codecs.getincrementaldecoder("utf_8")("strict")
        self.codec = "utf_8"
        self.switched = False

    def decode(self, data: bytes, final: bool = False) -> str:
        if self.codec == "utf_8":
            try:
                return self._decoder.decode(data, final)
            except UnicodeDecodeError:
                pending, _ = self._decoder.getstate()
                self.codec = self.declared
                self.switched = True
                self._decoder = codecs.getincrementaldecoder(self.declared)("replace")
                data = pending + data
        return self._decoder.decode(data, final)


def decode_chunks(chunks: Iterable[bytes], codec: str | None, skip: int, declared: str | None = None) -> Iterator[str]:
    """Decode a byte stream to text chunks, dropping the first ``skip`` bytes (BOM, junk).

    ``codec`` forces a codec (EBCDIC); otherwise UTF-8 is read while the bytes allow it and
    the ``declared`` codec (Latin-1 when none) takes over where they do not.
    """
    if codec:
        decoder = codecs.getincrementaldecoder(codec)("replace")
        first = True
        for chunk in chunks:
            if first:
                chunk = chunk[skip:]
                first = False
            if chunk:
                text = decoder.decode(chunk)
                if text:
                    yield text
        tail = decoder.decode(b"", True)
        if tail:
            yield tail
        return
    adaptive = AdaptiveDecoder(declared)
    for block, final in _blocks(chunks, skip):
        text = adaptive.decode(block, final)
        if text:
            yield text


def _blocks(chunks: Iterable[bytes], skip: int) -> Iterator[tuple[bytes, bool]]:
    """The stream after ``skip`` bytes in fixed :data:`BLOCK`-sized blocks (the last one shorter),
    each with whether it is the last."""
    pending = bytearray()
    first = True
    for chunk in chunks:
        if first:
            if skip:
                chunk = chunk[skip:]
            first = False
        if not pending and len(chunk) == BLOCK:
            yield chunk, False  # already a block: no copy
            continue
        # The blocks a chunk holds are cut from it directly (one copy each, through a view);
        # only the bytes around them wait in ``pending``.
        view = memoryview(chunk)
        start = 0
        if pending:
            start = min(BLOCK - len(pending), len(view))
            pending += view[:start]
            if len(pending) == BLOCK:
                yield bytes(pending), False
                pending.clear()
        while len(view) - start >= BLOCK:
            yield view[start : start + BLOCK].tobytes(), False
            start += BLOCK
        pending += view[start:]
        view.release()  # the chunk is the caller's again (a bytearray it reuses can be resized)
    yield bytes(pending), True
