"""A record flow as its file says it: where the records come from, how each becomes an Anaplan
row, where the rows go, when, and in which mode.

    name: syspro-stock
    enabled: false
    source: {system: syspro, entity: InvWarehouse, changes: {kind: rowversion, column: TimeStamp}}
    target: {kind: import, workspace_id: ..., model_id: ..., import_id: "112000000010", file_id: "113000000010"}
    mode: insert
    schedule: {every_minutes: 15}
    fields:
      Stock Code: StockCode
      Warehouse: {column: Warehouse, translate: {FG: Finished goods, RM: Raw material}}
      Item: {template: "{StockCode}-{Warehouse}"}
      Source: {const: SYSPRO}

Pure: no I/O. :mod:`gateway.flows.files` reads and validates the files.
"""

from __future__ import annotations

import re
import string
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.integrations.anaplan.client import neutralise_cell as neutralise

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def seconds(text: str | float | int) -> float:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"3d"`` or a number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration: write a number and s, m, h or d (e.g. 15m, 2d)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Changes(_Strict):
    """How a run finds what changed since the last confirmed one.

    ``rowversion``: SQL Server's ``TimeStamp`` counter (SYSPRO tables carry one), filtered ``gt`` the
    watermark: only changed rows are read. ``date``: a business date column (``InvoiceDate``,
    ``JournalDate``) read from the watermark minus ``overlap`` (rows can be back-dated or posted
    late). ``modified``: Plex's ``modifiedDateBegin/End`` window, with ``overlap`` for clock skew.
    ``snapshot``: the whole set is read each run and compared by content hash (tables with no
    change marker; keep them small).
    """

    kind: Literal["rowversion", "date", "modified", "snapshot"] = "snapshot"
    column: str | None = Field(None, min_length=1, description="TimeStamp for rowversion; the date column for date")
    overlap: str | float = Field("0s", description="how far before the watermark a window starts (e.g. 2d, 5m)")
    window: str | float | None = Field(None, description="modified: longest window per request (Plex has no paging)")

    @field_validator("overlap", "window")
    @classmethod
    def _duration(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            seconds(value)
        return value

    @model_validator(mode="after")
    def _column(self) -> Changes:
        if self.kind in ("rowversion", "date") and not self.column:
            raise ValueError(f"changes of kind {self.kind!r} need 'column' (e.g. TimeStamp or InvoiceDate)")
        return self


class Source(_Strict):
    system: Literal["syspro", "plex"]
    connection: str | None = Field(None, description="which [[syspro]] site (its name); default: the only one")
    entity: str = Field(min_length=1, description="SYSPRO table (ApSupplier, InvWarehouse, ...) or Plex resource")
    select: list[str] = Field(default_factory=list, description="columns to read; empty: all")
    filter: str | None = Field(None, description="OData $filter (SYSPRO) added to the change window")
    key: list[str] = Field(default_factory=list, description="source key columns; empty: the table's own key")
    changes: Changes = Field(default_factory=Changes)
    page_size: int | None = Field(None, ge=1, le=1_000_000, description="rows per request (SYSPRO)")


class ColumnSpec(_Strict):
    """One Anaplan column: a source column, a template over columns, or a constant; then code
    translations and a default for what is empty."""

    column: str | None = None
    template: str | None = Field(None, description="computed key, e.g. '{StockCode}-{Warehouse}'")
    const: str | None = None
    translate: dict[str, str] = Field(default_factory=dict)
    default: str | None = None
    date: bool = Field(False, description="keep only YYYY-MM-DD of a date-time")
    strip: bool = Field(True, description="remove SYSPRO's padding spaces")
    required: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ColumnSpec:
        given = [k for k in ("column", "template", "const") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of column, template or const")
        if self.template is not None:
            try:
                names = [n for _, n, _, _ in string.Formatter().parse(self.template) if n is not None]
            except ValueError as exc:
                raise ValueError(f"template {self.template!r}: {exc}") from None
            if not names or any(not n.isidentifier() for n in names):
                raise ValueError(f"template {self.template!r} must name columns in braces, e.g. '{{StockCode}}'")
        return self

    def columns(self) -> list[str]:
        if self.column:
            return [self.column]
        if self.template:
            return [n for _, n, _, _ in string.Formatter().parse(self.template) if n]
        return []


class Target(_Strict):
    """Where the rows go in Anaplan.

    ``import``: the rows become the import's data-source file (CSV in chunks, header exactly the
    import's ``headerNames``), then the import runs. ``process``: the same upload, then a process
    runs its imports in order. ``list_items``: the transactional list API adds or updates items
    (up to 100,000 a call; needs a workspace administrator)."""

    kind: Literal["import", "process", "list_items"]
    workspace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    model_id: str = Field(pattern=r"^[0-9A-F]{32}$")
    import_id: str | None = Field(None, pattern=r"^112\d{9}$")
    process_id: str | None = Field(None, pattern=r"^118\d{9}$")
    file_id: str | None = Field(None, pattern=r"^113\d{9}$")
    list_id: str | None = Field(None, pattern=r"^101\d{9}$")
    chunk_mb: float = Field(8.0, gt=0, le=50, description="upload chunk size (Anaplan: 1-50 MB)")
    gzip: bool = True
    poll_seconds: float = Field(5.0, gt=0, description="between looks at a running import (Anaplan: 5 s or more)")
    timeout_minutes: float = Field(60.0, gt=0, description="an import still running after this is cancelled")

    @model_validator(mode="after")
    def _ids(self) -> Target:
        need = {"import": ("import_id", "file_id"), "process": ("process_id", "file_id"),
                "list_items": ("list_id",)}[self.kind]
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"a {self.kind} target needs {', '.join(missing)}")
        return self


class Schedule(_Strict):
    every_minutes: float | None = Field(None, gt=0)


class WriteBack(_Strict):
    """Reference data back to the ERP: changes an operator approved in the panel (never by itself)."""

    allowed: bool = False
    create: bool = Field(True, description="an item in Anaplan but not in the ERP may be created there")
    update: bool = Field(True, description="a renamed item may be renamed in the ERP")


class Flow(_Strict):
    """A record flow file."""

    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    description: str = ""
    enabled: bool = False
    source: Source
    target: Target
    mode: Literal["insert", "all"] = "insert"
    schedule: Schedule = Field(default_factory=Schedule)
    fields: dict[str, str | ColumnSpec] = Field(min_length=1, description="Anaplan column -> source")
    reference: Literal["suppliers", "cost_centres"] | None = Field(
        None, description="a reference list: read back from Anaplan and compared with the ERP master (drift)")
    write_back: WriteBack = Field(default_factory=WriteBack)

    def field_specs(self) -> dict[str, ColumnSpec]:
        return {name: (ColumnSpec(column=spec) if isinstance(spec, str) else spec) for name, spec in self.fields.items()}

    def columns_read(self) -> list[str]:
        """The source columns the fields need (plus the key and the change column)."""
        cols: list[str] = list(self.source.key)
        for spec in self.field_specs().values():
            cols += spec.columns()
        if self.source.changes.column:
            cols.append(self.source.changes.column)
        return list(dict.fromkeys(cols))


# ----------------------------------------------------------------------------------------- mapping

class MappingError(ValueError):
    """A record that cannot become a row (a required value missing)."""


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


_RISKY_FIRST = frozenset("=+-@\t\r")


def _safe(value: str) -> str:
    """:func:`neutralise` with a fast path for the common cell (no formula start, no line break)."""
    if (value and value[0] in _RISKY_FIRST) or "\n" in value or "\r" in value:
        return neutralise(value)
    return value


def compile_field(header: str, spec: ColumnSpec) -> Callable[[dict[str, Any]], str]:
    """One column's function: record -> cell text (built once per run, called per record)."""
    if spec.const is not None:
        const = _safe(spec.const)
        return lambda _r: const
    strip, date, translate, default, required = spec.strip, spec.date, spec.translate, spec.default, spec.required
    if spec.template is not None:
        names = spec.columns()
        # the same template with the names as positions: one format() per record, no dict to build
        index = {n: i for i, n in enumerate(dict.fromkeys(names))}
        positional = "".join(literal.replace("{", "{{").replace("}", "}}")
                             + ("" if field is None else "{" + str(index[field]) + (f"!{conv}" if conv else "")
                                + (f":{spec_}" if spec_ else "") + "}")
                             for literal, field, spec_, conv in string.Formatter().parse(spec.template or ""))
        unique = list(index)

        def get(r: dict[str, Any]) -> str:
            return positional.format(*[_text(r.get(n)).strip() if strip else _text(r.get(n)) for n in unique])
    else:
        column = spec.column
        if not (date or translate or required) and default is None:  # the common case: a plain column
            if strip:
                return lambda r: _safe(_text(r.get(column)).strip())
            return lambda r: _safe(_text(r.get(column)))

        def get(r: dict[str, Any]) -> str:
            return _text(r.get(column))

    def cell(r: dict[str, Any]) -> str:
        value = get(r)
        if strip:
            value = value.strip()
        if date:
            value = value[:10]
        if translate:
            value = translate.get(value, value)
        if not value and default is not None:
            value = default
        if not value and required:
            raise MappingError(f"{header}: no value")
        return _safe(value)
    return cell


def compile_row(flow: Flow, headers: list[str]) -> Callable[[dict[str, Any]], list[str]]:
    """record -> the row in ``headers`` order (the import's headerNames); unknown headers refused."""
    specs = flow.field_specs()
    missing = [h for h in headers if h not in specs]
    if missing:
        raise MappingError(f"flow {flow.name}: the Anaplan import expects column(s) {', '.join(map(repr, missing))} "
                           "that the flow's fields do not fill")
    cells = [compile_field(h, specs[h]) for h in headers]
    return lambda r: [c(r) for c in cells]
