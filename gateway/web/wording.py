"""Errors in plain words first: the message, then where (one numbering: the line in the file and the
position in the set), then the code — the way the stored one-line errors are shown on every page.

The store keeps a translation error as :meth:`translators.findings.Finding.describe` wrote it
(``file: segment PO1 #6 (position 4 in the set), element 02: code: message``), which is what logs
and the CLI print; the panel reorders it for people and never changes what is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from markupsafe import Markup, escape

_WHERE = re.compile(
    r"(?:^|: )(?P<where>segment (?P<tag>[A-Z][A-Z0-9]{1,2})?\s?(?:#(?P<line>\d+))?"
    r"(?: \(position (?P<pos>\d+) in the set\))?(?:, element (?P<el>\d+(?:-\d+)?))?|file)"
    r": (?P<code>[a-z][a-z0-9_]*\.[a-z0-9_.]+): (?P<msg>.+)$", re.S)
_MORE = re.compile(r" \(and (\d+) more\)$")


@dataclass(frozen=True)
class PlainError:
    message: str
    where: str | None = None
    code: str | None = None
    lead: str | None = None  # words before the position that are not a file name
    more: int = 0


def where_text(tag: str | None, line: int | str | None, position: int | str | None,
               element: str | None = None) -> str:
    """``PO1 at line 6 of the file, position 4 in the set, element 02``: how every page numbers a segment."""
    parts = []
    head = tag or "segment"
    if line:
        head += f" at line {line} of the file"
    parts.append(head)
    if position:
        parts.append(f"position {position} in the set")
    if element:
        parts.append(f"element {element}")
    return ", ".join(parts)


def plain(error: str | None, code: str | None = None) -> PlainError | None:
    """The stored error taken apart: message, where, code (or the text as it is when it is not a finding)."""
    if not error:
        return None
    more = 0
    m_more = _MORE.search(error)
    text = error[: m_more.start()] if m_more else error
    if m_more:
        more = int(m_more.group(1))
    m = _WHERE.search(text)
    if not m:
        return PlainError(message=error, code=code)
    before = text[: m.start()]
    lead = None
    if before and (" " in before.strip() and not re.search(r"\.[A-Za-z0-9]{1,5}$", before.strip())):
        lead = before.strip()
    elif ": " in before:  # "the interchange envelope is broken: file.x12"
        lead = before.rsplit(": ", 1)[0].strip() or None
    where = None
    if m.group("where") != "file":
        where = where_text(m.group("tag"), m.group("line"), m.group("pos"), m.group("el"))
    msg = m.group("msg").strip()
    return PlainError(message=msg[:1].upper() + msg[1:], where=where, code=m.group("code") or code, lead=lead,
                      more=more)


def plain_markup(error: str | None, code: str | None = None, redact=None) -> Markup:
    """HTML for a stored error: plain words, then where, then the code (escaped; redacted if asked)."""
    p = plain(error, code)
    if p is None:
        return Markup("")
    r = redact or (lambda x: x)
    out = Markup("")
    if p.lead:
        out += escape(r(p.lead)) + Markup(": ")
    message = r(p.message)
    out += Markup('<span class="msg">{}</span>').format(message[:1].upper() + message[1:])
    if p.where:
        out += Markup(' <span class="where">— {}</span>').format(p.where)
    if p.more:
        out += Markup(' <span class="muted">(and {} more)</span>').format(p.more)
    if p.code:
        out += Markup(' <span class="code">{}</span>').format(p.code)
    return out
