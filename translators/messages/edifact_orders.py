"""EDIFACT ORDERS (purchase order message, D93A–D01B and EANCOM subsets) → canonical purchase order.

The segment walk is shared with INVOIC (:mod:`translators.messages.edifact_common`); this module
picks the purchase-order fields:

- ``po_number``: BGM 1004 (simple element in older directories, C106 first component in newer);
- ``po_date``: message-level DTM with the mapping's ``dates.po_date`` qualifiers (137, 4);
- ``requested_delivery``: message-level DTM with ``dates.requested_delivery`` (2, 10, 64, ...);
  each line's own from the DTM in its LIN group (or, failing that, its delivery schedule);
- ``total_amount``: summary MOA 86, then 128, 77, 39, 79, 9.

Findings: BGM missing, no document date DTM, UNS missing (warnings: the acknowledgment
reports them and the document goes on; a partner that must send a field lists it in its
mapping's ``required``). Shared ones: a non-numeric QTY/PRI/MOA or an invalid date is an error
when the mapping uses the value and a warning when it does not; too many DTM, a second UNS or
BGM, an unknown NAD qualifier are warnings.
"""

from __future__ import annotations

from typing import Any

from translators.canonical import new_document
from translators.findings import Finding, Severity
from translators.mapping import STANDARD, MessageMapping
from translators.messages.edifact_common import (
    ORDER_TOTALS,
    check_bgm,
    document_number,
    fill_common,
    first_total,
    scan,
    stamped,
)
from translators.model import TransactionSet


def map_orders(ts: TransactionSet, mapping: MessageMapping = STANDARD) -> tuple[dict[str, Any], list[Finding]]:
    """Map one ORDERS message to a canonical purchase order and its findings."""
    s = scan(ts, mapping, "purchase_order")
    doc = new_document("purchase_order", "edifact")
    fill_common(doc, s)
    check_bgm(s)
    doc["po_number"] = document_number(s, "order")
    doc["po_date"] = s.header_date("po_date")
    doc["requested_delivery"] = s.header_date("requested_delivery")
    doc["total_amount"] = first_total(s, ORDER_TOTALS)
    after_bgm = (s.bgm_pos + 2) if s.bgm_pos is not None else 2
    if doc["po_date"] is None and not s.date_was_sent("po_date"):
        codes = "/".join(s.lk.dates["po_date"])
        s.missing("DTM", after_bgm, f"No DTM {codes} (order document date) at message level", Severity.WARNING)
    if s.uns_pos is None:
        s.missing("UNS", len(ts.segments), "UNS (section control) is missing", Severity.WARNING)
    return doc, stamped(s)
