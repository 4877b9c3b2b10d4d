"""X12 810 (invoice) → canonical invoice.

- BIG: invoice_date (BIG01; a DTM per ``mapping.dates.invoice_date`` when empty), invoice_number
  (BIG02), po_number (BIG04, else a header REF*PO), purpose (BIG08).
- total_amount: TDS01, implied 2 decimals (N2).
- due_date: a DTM per ``mapping.dates.due_date``, else the ITD06 net due date; never computed
  from net days.
- terms: ITD12 when given, else a short text from ITD03/04/05/06/07 ("2% 10 days, net 30");
  several ITD segments are joined with "; ".
- tax_amount: the sum of TXI02 in the summary, else of the line-level TXI02.
- charges: SAC in the summary (code SAC02, description SAC15, amount SAC05 as N2, negative for
  allowances); when the summary has none, the line-level SACs.
"""

from __future__ import annotations

from typing import Any, Final

from translators.findings import Finding, Severity
from translators.mapping import MessageMapping
from translators.messages.common import common_order
from translators.messages.x12_common import (CTT, HEADER, IGNORE, LINE, Checks, TDS, X12Mapper, base_codes, purpose_name, raw,
                                               tables, text, unknown_purpose)
from translators.model import TransactionSet

_TABLES: Final = tables({**base_codes(), "BIG": HEADER, "IT1": LINE, "TDS": TDS, "CTT": CTT,
                         "CRC": IGNORE, "BAL": IGNORE, "L7": IGNORE, "V1": IGNORE, "R4": IGNORE, "FA1": IGNORE, "FA2": IGNORE,
                         "ITA": IGNORE, "L5": IGNORE, "L1": IGNORE, "IT2": IGNORE})


class _Invoice(X12Mapper):
    def __init__(self, ts: TransactionSet, mapping: MessageMapping | None):
        super().__init__(ts, mapping, "invoice", "IT1", ("invoice_date", "due_date"), _TABLES)
        self.tds_seen = -1

    def special(self, code: int, seg: list[str], i: int) -> None:
        if code == HEADER:
            self._big(seg, i)
        elif code == TDS:
            self._tds(seg, i)
        elif code == CTT:
            self._ctt(seg, i)

    def line_item(self, seg: list[str], i: int, checks: Checks | None) -> None:
        self._it1(seg, i, checks)

    def _big(self, seg: list[str], i: int) -> None:
        if self.header_seen >= 0:
            self.add("segment.too_many", "BIG appears more than once; the first one was used", i)
            return
        self.header_seen = i
        doc = self.doc
        doc["invoice_date"] = self.date(seg, i, 1)
        doc["invoice_number"] = text(seg, 2)
        self.date(seg, i, 3)  # the PO date: checked, not part of the canonical invoice
        doc["po_number"] = text(seg, 4)
        doc["purpose"] = purpose_name(raw(seg, 8))
        if unknown_purpose(raw(seg, 8)):
            self.add("element.invalid_code", f"BIG08 purpose {raw(seg, 8)!r} is not a code the gateway names; kept as sent",
                     i, 8, severity=Severity.WARNING, value=raw(seg, 8))

    def _it1(self, seg: list[str], i: int, checks: Checks | None) -> None:
        self._item(seg, i, checks)
        for n, what in ((2, "quantity invoiced"), (4, "unit price")):
            if not raw(seg, n):
                self.add("element.conditional_missing", f"IT1{n:02d} ({what}) is missing: an invoice line needs it",
                         i, n)
        if not raw(seg, 3) and (raw(seg, 2) or raw(seg, 4)):
            self.add("element.conditional_missing",
                     "IT103 (unit of measure) is missing: IT102, IT103 and IT104 go together", i, 3,
                     severity=Severity.WARNING)

    def _tds(self, seg: list[str], i: int) -> None:
        if self.tds_seen >= 0:
            self.add("segment.too_many", "TDS appears more than once; the first one was used", i)
            return
        self.tds_seen = i
        self.line = None
        self.summary = True
        self.doc["total_amount"] = self.num(seg, i, 1, implied=2)
        for n in (2, 3, 4):
            self.num(seg, i, n, implied=2)

    def _ctt(self, seg: list[str], i: int) -> None:
        self.line = None
        self.summary = True
        if self.ctt is None:
            self.ctt = seg
            self.ctt_at = i

    def finish(self) -> None:
        self.finish_common()
        self.check_ctt()
        doc = self.doc
        dates = self.hdr_dates
        if doc["invoice_date"] is None and "invoice_date" in dates:
            doc["invoice_date"] = dates["invoice_date"][1]
        if "due_date" in dates:
            doc["due_date"] = dates["due_date"][1]
        else:
            doc["due_date"] = self.itd_due
        if doc["po_number"] is None:
            doc["po_number"] = doc["references"].get("PO") or common_order(self.lines_out)
        tax = self.tax_summary if self.tax_summary is not None else self.tax_lines
        doc["tax_amount"] = format(tax, "f") if tax is not None else None
        doc["charges"] = self.doc_charges or self.line_charges
        doc["terms"] = "; ".join(self.terms) or None
        if self.header_seen < 0:
            self.missing_segment("BIG", "beginning segment for invoice", 1)
        if self.tds_seen < 0:
            self.missing_segment("TDS", "total monetary value summary", self.index_of("CAD", "ISS", "CTT", "SE"))


def map_810(ts: TransactionSet, mapping: MessageMapping | None = None) -> tuple[dict[str, Any], list[Finding]]:
    """Map one X12 810 transaction set to a canonical invoice dict and its findings.

    Errors (``Severity.ERROR``) make the document fail; warnings travel with it. ``partner`` is
    left None for the caller to set; ``mapping=None`` is the standard mapping. Envelope findings (``ts.findings``) are not repeated here.
    """
    return _Invoice(ts, mapping).run()
