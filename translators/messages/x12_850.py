"""X12 850 (purchase order) → canonical purchase_order.

- BEG: purpose (BEG01), po_number (BEG03), po_date (BEG05; a DTM per ``mapping.dates.po_date``
  when BEG05 is empty).
- requested_delivery: header DTM per ``mapping.dates.requested_delivery``; per line, a DTM inside
  the PO1 loop, else an SCH date with such a qualifier.
- lines: PO1 quantity/uom/price, part numbers by qualifier from the pairs 06/07 .. 24/25 (and LIN),
  PID description, AMT line amount (null when the 850 does not give one).
- total_amount: AMT*TT, or the AMT in the CTT loop; null when the 850 states none.
"""

from __future__ import annotations

from typing import Any, Final

from translators.findings import Finding, Severity
from translators.mapping import MessageMapping
from translators.messages.x12_common import (CTT, HEADER, IGNORE, LINE, Checks, X12Mapper, base_codes, purpose_name, raw, tables,
                                               text, unknown_purpose)
from translators.model import TransactionSet

_TABLES: Final = tables({**base_codes(), "BEG": HEADER, "PO1": LINE, "CTT": CTT,
                         "CN1": IGNORE, "PO3": IGNORE, "ADV": IGNORE, "PRS": IGNORE, "CID": IGNORE, "FST": IGNORE, "LX": IGNORE})


class _PO(X12Mapper):
    def __init__(self, ts: TransactionSet, mapping: MessageMapping | None):
        super().__init__(ts, mapping, "purchase_order", "PO1", ("requested_delivery", "po_date"), _TABLES)
        self.saw_ctt = False

    def special(self, code: int, seg: list[str], i: int) -> None:
        if code == HEADER:
            self._beg(seg, i)
        elif code == CTT:
            self._ctt(seg, i)

    def line_item(self, seg: list[str], i: int, checks: Checks | None) -> None:
        self._po1(seg, i, checks)

    def _beg(self, seg: list[str], i: int) -> None:
        if self.header_seen >= 0:
            self.add("segment.too_many", "BEG appears more than once; the first one was used", i)
            return
        self.header_seen = i
        doc = self.doc
        doc["purpose"] = purpose_name(raw(seg, 1))
        if unknown_purpose(raw(seg, 1)):
            self.add("element.invalid_code", f"BEG01 purpose {raw(seg, 1)!r} is not a code the gateway names; kept as sent",
                     i, 1, severity=Severity.WARNING, value=raw(seg, 1))
        doc["po_number"] = text(seg, 3)
        doc["po_date"] = self.date(seg, i, 5)

    def _po1(self, seg: list[str], i: int, checks: Checks | None) -> None:
        line = self._item(seg, i, checks)
        if line["quantity"] is None and line["unit_price"] is not None and not raw(seg, 3) and raw(seg, 2) == "":
            self.add("element.conditional_missing",
                     "PO102 (quantity ordered) is missing on a line that has a unit price", i, 2,
                     severity=Severity.WARNING)

    def _ctt(self, seg: list[str], i: int) -> None:
        self.line = None
        self.summary = True
        if self.ctt is None:
            self.ctt = seg
            self.ctt_at = i
        self.saw_ctt = True

    def finish(self) -> None:
        self.finish_common()
        self.check_ctt()
        doc = self.doc
        dates = self.hdr_dates
        if doc["po_date"] is None and "po_date" in dates:
            doc["po_date"] = dates["po_date"][1]
        if "requested_delivery" in dates:
            doc["requested_delivery"] = dates["requested_delivery"][1]
        # AMT*TT is the order's total wherever it stands (also inside the last PO1 loop, before CTT).
        total = self.amounts.get("TT") or self.summary_amounts.get("TT") or self.line_tt or self.summary_amounts.get("1")
        doc["total_amount"] = total
        if self.header_seen < 0:
            self.missing_segment("BEG", "beginning segment for purchase order", 1)
        if self.line_seen < 0:
            self.missing_segment("PO1", "at least one baseline item", self.index_of("CTT", "AMT", "SE"))


def map_850(ts: TransactionSet, mapping: MessageMapping | None = None) -> tuple[dict[str, Any], list[Finding]]:
    """Map one X12 850 transaction set to a canonical purchase_order dict and its findings.

    Errors (``Severity.ERROR``) make the document fail; warnings travel with it. ``partner`` is
    left None for the caller to set; ``mapping=None`` is the standard mapping. Envelope findings (``ts.findings``) are not repeated here.
    """
    return _PO(ts, mapping).run()
