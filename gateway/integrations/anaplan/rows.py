"""A batch's CSV: rows built from canonical documents by the import's columns, headers exactly the
import's ``headerNames``, cells that could be read as formulas neutralised, and which document each row came from."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field

from gateway.integrations.anaplan.errors import AnaplanConfigError
from gateway.integrations.anaplan.settings import (
    AnaplanImportConfig,
    Const,
    CsvFormat,
    _parse_path,
)

log = structlog.get_logger('gateway.integrations.anaplan')

DocumentId = Hashable


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?\Z")


def neutralise_cell(value: str) -> str:
    """Defuse spreadsheet formulas (OWASP CSV injection): a cell starting with ``= + - @`` tab or
    CR gets a leading ``'``. Plain signed numbers (``-12.50``) are left alone because they are data
    (credit quantities, negative amounts) and a quote would make Anaplan reject them as numbers.
    Embedded CR/LF become spaces so one CSV record is one line and dump ``_Line_`` numbers map back."""
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(value):
        value = "'" + value
    if "\r" in value or "\n" in value:
        value = value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return value


@dataclass
class RowMap:
    """Which document each CSV data row came from. ``rows[i]`` is the document id of data row
    ``i`` (0-based; file line ``first_data_row + i``). ``rejected`` holds documents that produced
    no row, with the reason. ``cells[i]`` are the row's cell values as written."""

    rows: list[DocumentId] = field(default_factory=list)
    cells: list[list[str]] = field(default_factory=list)
    rejected: dict[DocumentId, str] = field(default_factory=dict)
    first_data_row: int = 2

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> DocumentId:
        return self.rows[i]

    def document_for_line(self, line: int) -> DocumentId | None:
        i = line - self.first_data_row
        return self.rows[i] if 0 <= i < len(self.rows) else None


def _resolve(obj: Any, path: Sequence[str]) -> Any:
    for seg in path:
        if obj is None:
            return None
        if isinstance(obj, Mapping):
            obj = obj.get(seg)
        else:
            obj = getattr(obj, seg, None)
    return obj


def _format_value(value: Any, header: str, source: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (Decimal, float)):
        return format(Decimal(str(value)), "f")  # never exponent notation
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise AnaplanConfigError(f"column {header!r}: {source!r} is a {type(value).__name__}, not a value")


def _canonical(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """Documents are ``{"id": …, **canonical}`` or ``{"id": …, "document": canonical}``."""
    inner = document.get("document")
    return inner if isinstance(inner, Mapping) else document


def _check_headers(config: AnaplanImportConfig, header_names: Sequence[str]) -> None:
    mapped, expected = list(config.columns), list(header_names)
    if len(set(expected)) != len(expected):
        raise AnaplanConfigError(f"import {config.import_id} has duplicate header names: {expected}")
    missing = [h for h in expected if h not in config.columns]
    unknown = [h for h in mapped if h not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append("not mapped: " + ", ".join(repr(h) for h in missing))
        if unknown:
            parts.append("not in the import's headerNames: " + ", ".join(repr(h) for h in unknown))
        raise AnaplanConfigError(f"column mapping does not match import {config.import_id} "
                                 f"({'; '.join(parts)}); expected headers {expected}")


def _build_rows(documents: Sequence[Mapping[str, Any]], config: AnaplanImportConfig,
                header_names: Sequence[str], fmt: CsvFormat) -> RowMap:
    _check_headers(config, header_names)
    plan: list[tuple[str, Const | tuple[tuple[str, ...], tuple[str, ...] | None], str]] = []
    array_prefix: tuple[str, ...] | None = None
    for header in header_names:
        source = config.columns[header]
        if isinstance(source, Const):
            plan.append((header, source, "const"))
        else:
            rel, prefix = _parse_path(source)
            array_prefix = array_prefix or prefix
            plan.append((header, (rel, prefix), source))
    row_map = RowMap(first_data_row=fmt.first_data_row)
    seen: set[DocumentId] = set()
    for document in documents:
        if "id" not in document:
            raise ValueError("every document needs an 'id'")
        doc_id = document["id"]
        if doc_id in seen:
            raise ValueError(f"document id {doc_id!r} appears twice in the batch")
        seen.add(doc_id)
        canonical = _canonical(document)
        if array_prefix is not None:
            elements = _resolve(canonical, array_prefix)
            if not isinstance(elements, Sequence) or isinstance(elements, str) or not elements:
                row_map.rejected[doc_id] = f"document has no {'.'.join(array_prefix)} to import"
                continue
        else:
            elements = [None]
        doc_rows = []
        for element in elements:
            cells = []
            for header, source, text in plan:
                if isinstance(source, Const):
                    raw: Any = source.const
                else:
                    rel, prefix = source
                    raw = _resolve(element, rel) if prefix is not None else _resolve(canonical, rel)
                cells.append(neutralise_cell(_format_value(raw, header, text)))
            doc_rows.append(cells)
        problem = _row_problem(doc_rows, fmt)
        if problem:
            row_map.rejected[doc_id] = problem
            continue
        for cells in doc_rows:
            row_map.rows.append(doc_id)
            row_map.cells.append(cells)
    return row_map


def _row_problem(rows: list[list[str]], fmt: CsvFormat) -> str | None:
    """A document whose text cannot be written faithfully is rejected, not silently mangled."""
    for cells in rows:
        for cell in cells:
            try:
                cell.encode(fmt.encoding)
            except UnicodeEncodeError:
                return f"value {cell!r} cannot be encoded as {fmt.encoding}"
            if not fmt.delimiter and fmt.separator and fmt.separator in cell:
                return f"value {cell!r} contains the separator and the file has no text delimiter"
    return None


def _writer(buf: io.StringIO, fmt: CsvFormat) -> Any:
    if fmt.delimiter:
        return csv.writer(buf, delimiter=fmt.separator or ",", quotechar=fmt.delimiter,
                          quoting=csv.QUOTE_ALL, doublequote=True, lineterminator="\r\n")
    return csv.writer(buf, delimiter=fmt.separator or ",", quoting=csv.QUOTE_NONE,
                      quotechar=None, escapechar=None, lineterminator="\r\n")


def _serialise(header_names: Sequence[str], row_map: RowMap, fmt: CsvFormat) -> bytes:
    buf = io.StringIO()
    writer = _writer(buf, fmt)
    line = 1
    if fmt.header_row >= 1:
        buf.write("\r\n" * (fmt.header_row - 1))
        writer.writerow(list(header_names))
        line = fmt.header_row + 1
    buf.write("\r\n" * max(0, fmt.first_data_row - line))
    writer.writerows(row_map.cells)
    return buf.getvalue().encode(fmt.encoding)


def build_csv(documents: Sequence[Mapping[str, Any]], config: AnaplanImportConfig,
              header_names: Sequence[str], fmt: CsvFormat | None = None) -> tuple[bytes, RowMap]:
    """One CSV for the batch: columns exactly ``header_names`` in order, one row per document line
    (or per document when no line field is mapped), cells neutralised. Raises
    :class:`AnaplanConfigError` when the mapping does not cover exactly ``header_names``."""
    fmt = fmt or CsvFormat()
    row_map = _build_rows(documents, config, header_names, fmt)
    return _serialise(header_names, row_map, fmt), row_map



class AnaplanBatch(BaseModel):
    """What the pipeline hands over: documents (``{"id": …, **canonical}``) bound for one import."""

    batch_id: str
    config: AnaplanImportConfig
    documents: list[dict[str, Any]]


class DocumentResult(BaseModel):
    document_id: Any
    ok: bool
    reason: str | None = None
    rows: list[int] = Field(default_factory=list)  # 1-based CSV data rows of this document


class ImportCounts(BaseModel):
    total: int = 0
    successful: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    ignored: int = 0
    details: list[dict[str, Any]] = Field(default_factory=list)  # raw result details


class ImportOutcome(BaseModel):
    """``status``: ``succeeded`` (all documents in), ``partial`` (some rows rejected), ``failed``
    (nothing usable; needs a person), ``retry`` (transient; run the batch again later)."""

    batch_id: str
    status: Literal["succeeded", "partial", "failed", "retry"]
    documents: list[DocumentResult]
    task_id: str | None = None
    counts: ImportCounts | None = None
    reason: str | None = None
    retryable: bool = False
    requests_used: int = 0
    failure_dump: bytes | None = Field(default=None, repr=False)

    def result_for(self, document_id: Any) -> DocumentResult:
        for result in self.documents:
            if result.document_id == document_id:
                return result
        raise KeyError(document_id)
