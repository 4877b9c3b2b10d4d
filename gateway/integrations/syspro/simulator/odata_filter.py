"""OData 4 ``$filter`` and ``$orderby`` as the SYSPRO simulator understands them (specs/syspro.md E.2.3).

``eq ne gt ge lt le``, ``and or not``, parentheses, ``startswith``/``contains``, ``null``,
``true``/``false``, quoted text, numbers, unquoted v4 date and datetime literals and
``binary'...'`` (base64: a rowversion). The v3 form ``datetime'...'`` is refused, as a v4 server
refuses it. A parsed filter is a predicate over a row (internal values: dates as ISO text at
midnight Z, rowversions as ints).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from gateway.integrations.syspro.simulator.tables import rowversion_value


class FilterError(ValueError):
    """A ``$filter`` or ``$orderby`` the service cannot run (HTTP 400 with the message)."""


_TOKEN = re.compile(r"""
    \s*(?:
      (?P<binary>binary'(?P<b64>[A-Za-z0-9+/=_-]*)')
    | (?P<v3>(?:datetime|datetimeoffset|guid)'[^']*')
    | (?P<string>'(?:[^']|'')*')
    | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<number>-?\d+(?:\.\d+)?(?:[mMdD])?)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""", re.VERBOSE)

_COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}


@dataclass(frozen=True)
class Tok:
    kind: str
    text: str
    value: Any = None


def _tokens(text: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"Syntax error at position {pos} in '{text}'.")
        pos = m.end()
        kind = m.lastgroup if m.lastgroup != "b64" else "binary"
        if m.group("binary"):
            try:
                out.append(Tok("literal", m.group("binary"), rowversion_value(m.group("b64"))))
            except ValueError:
                raise FilterError(f"Unrecognized 'Edm.Binary' literal '{m.group('binary')}'.") from None
        elif kind == "v3":
            raise FilterError(f"Unrecognized literal '{m.group('v3')}': this service speaks OData 4, where dates "
                              "are written without quotes (2024-05-01 or 2024-05-01T00:00:00Z).")
        elif kind == "string":
            out.append(Tok("literal", m.group("string"), m.group("string")[1:-1].replace("''", "'")))
        elif kind == "datetime":
            value = m.group("datetime")
            if value.endswith("+00:00"):
                value = value[:-6] + "Z"
            if len(value) == 17:  # no seconds
                value = value[:-1] + ":00Z"
            out.append(Tok("literal", m.group("datetime"), value))
        elif kind == "date":
            out.append(Tok("literal", m.group("date"), m.group("date") + "T00:00:00Z"))
        elif kind == "number":
            t = m.group("number").rstrip("mMdD")
            out.append(Tok("literal", t, float(t) if "." in t else int(t)))
        elif kind == "punct":
            out.append(Tok("punct", m.group("punct")))
        else:
            word = m.group("word")
            low = word.lower()
            if low in ("null", "true", "false"):
                out.append(Tok("literal", word, {"null": None, "true": True, "false": False}[low]))
            elif low in _COMPARE or low in ("and", "or", "not"):
                out.append(Tok("op", low))
            else:
                out.append(Tok("name", word))
    return out


Predicate = Callable[[dict[str, Any]], bool]
Value = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Comparison:
    """A simple ``Column op literal``: the shape a fast path can use (e.g. TimeStamp gt binary'...')."""

    column: str
    op: str
    value: Any


class _Parser:
    def __init__(self, tokens: list[Tok], columns: set[str]) -> None:
        self.toks, self.i, self.columns = tokens, 0, columns
        self.comparisons: list[Comparison] = []

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Tok:
        tok = self.peek()
        if tok is None:
            raise FilterError("The $filter ends too early.")
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise FilterError(f"Expected '{text}' but found '{tok.text}'.")

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.peek() is not None:
            raise FilterError(f"Unexpected '{self.peek().text}' in $filter.")
        return pred

    def or_expr(self) -> Predicate:
        left = self.and_expr()
        while (t := self.peek()) and t.kind == "op" and t.text == "or":
            self.take()
            right = self.and_expr()
            left = (lambda a, b: lambda r: a(r) or b(r))(left, right)
        return left

    def and_expr(self) -> Predicate:
        left = self.unary()
        while (t := self.peek()) and t.kind == "op" and t.text == "and":
            self.take()
            right = self.unary()
            left = (lambda a, b: lambda r: a(r) and b(r))(left, right)
        return left

    def unary(self) -> Predicate:
        t = self.peek()
        if t and t.kind == "op" and t.text == "not":
            self.take()
            inner = self.unary()
            return lambda r: not inner(r)
        if t and t.kind == "punct" and t.text == "(":
            self.take()
            inner = self.or_expr()
            self.expect(")")
            return inner
        return self.comparison()

    def operand(self) -> tuple[Value, str | None, Any]:
        tok = self.take()
        if tok.kind == "literal":
            return (lambda _r, v=tok.value: v), None, tok.value
        if tok.kind == "name":
            if tok.text.lower() in ("startswith", "contains", "endswith"):
                raise FilterError(f"'{tok.text}' returns a boolean; use it on its own, not in a comparison.")
            if tok.text not in self.columns:
                raise FilterError(f"Could not find a property named '{tok.text}' on this entity type.")
            return (lambda r, n=tok.text: r.get(n)), tok.text, None
        raise FilterError(f"Unexpected '{tok.text}' in $filter.")

    def comparison(self) -> Predicate:
        t = self.peek()
        if t and t.kind == "name" and t.text.lower() in ("startswith", "contains", "endswith"):
            fn = self.take().text.lower()
            self.expect("(")
            column, name, _ = self.operand()
            self.expect(",")
            needle, _, _ = self.operand()
            self.expect(")")
            test = {"startswith": str.startswith, "endswith": str.endswith, "contains": str.__contains__}[fn]
            return lambda r: isinstance(column(r), str) and test(column(r), str(needle(r)))
        left, name, _ = self.operand()
        op = self.take()
        if op.kind != "op" or op.text not in _COMPARE:
            raise FilterError(f"Expected a comparison (eq, ne, gt, ge, lt, le) but found '{op.text}'.")
        right, _, literal = self.operand()
        if name is not None:
            self.comparisons.append(Comparison(name, op.text, literal))
        return _compare(op.text, left, right)


def _compare(op: str, left: Value, right: Value) -> Predicate:
    def test(row: dict[str, Any]) -> bool:
        a, b = left(row), right(row)
        if op == "eq":
            return a == b
        if op == "ne":
            return a != b
        if a is None or b is None:
            return False
        try:
            if op == "gt":
                return a > b
            if op == "ge":
                return a >= b
            if op == "lt":
                return a < b
            return a <= b
        except TypeError:
            raise FilterError(f"Cannot compare {a!r} with {b!r}.") from None
    return test


@dataclass(frozen=True)
class Filter:
    predicate: Predicate
    comparisons: tuple[Comparison, ...]
    only_comparison: Comparison | None  # the whole filter is this one comparison


def parse_filter(text: str, columns: set[str]) -> Filter:
    tokens = _tokens(text)
    if not tokens:
        raise FilterError("The $filter is empty.")
    parser = _Parser(tokens, columns)
    predicate = parser.parse()
    only = parser.comparisons[0] if len(tokens) == 3 and len(parser.comparisons) == 1 else None
    return Filter(predicate, tuple(parser.comparisons), only)


def parse_orderby(text: str, columns: set[str]) -> list[tuple[str, bool]]:
    """``A,B desc`` -> [(A, False), (B, True)] (True: descending)."""
    out = []
    for part in text.split(","):
        bits = part.split()
        if not bits or len(bits) > 2 or (len(bits) == 2 and bits[1].lower() not in ("asc", "desc")):
            raise FilterError(f"Invalid $orderby clause '{part.strip()}'.")
        if bits[0] not in columns:
            raise FilterError(f"Could not find a property named '{bits[0]}' on this entity type.")
        out.append((bits[0], len(bits) == 2 and bits[1].lower() == "desc"))
    return out
