"""EDIFACT INVOIC (invoice message, D93A–D01B and EANCOM subsets) → canonical invoice.

The segment walk is shared with ORDERS (:mod:`translators.messages.edifact_common`); this module
picks the invoice fields:

- ``invoice_number``: BGM 1004; ``invoice_date``: message-level DTM with ``dates.invoice_date``
  (3, 137); ``due_date``: message-level DTM or the PAT group's DTM with ``dates.due_date`` (13, 140);
- ``po_number``: RFF+ON of the message-level reference group, else one under a NAD, else the
  first line's;
- ``total_amount``: summary MOA 77 (invoice amount), then 86, 39, 9, 128;
- ``tax_amount``: summary MOA 176, then 150, then a summary MOA 124 outside a TAX group, then
  the sum of the summary TAX groups' MOA 124;
- ``charges``: the header ALC groups (allowances negative), or the summary ALC groups when no
  header ALC carries an amount (the summary repeats the header's as totals); code from C214
  7161, else C552; description C214 7160; amount MOA 8, then 23/204, then 131;
- ``terms``: the PAT groups in words (``net 30 days after invoice date``; a C110 text wins).

Findings: BGM, DTM, UNS or the summary MOA missing (warnings: the acknowledgment
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
    INVOICE_TOTALS,
    check_bgm,
    document_number,
    fill_common,
    first_total,
    scan,
    stamped,
)
from translators.messages.common import common_order
from translators.model import TransactionSet


def map_invoic(ts: TransactionSet, mapping: MessageMapping = STANDARD) -> tuple[dict[str, Any], list[Finding]]:
    """Map one INVOIC message to a canonical invoice and its findings."""
    s = scan(ts, mapping, "invoice")
    doc = new_document("invoice", "edifact")
    fill_common(doc, s)
    check_bgm(s)
    doc["invoice_number"] = document_number(s, "invoice")
    doc["invoice_date"] = s.header_date("invoice_date")
    doc["po_number"] = s.po_ref or s.po_ref_party or common_order(s.lines)
    doc["due_date"] = s.header_date("due_date") or s.pat_due
    t = s.tax_moa
    doc["tax_amount"] = t.get("176") or t.get("150") or t.get("124") or s.tax_group_sum
    charges = s.charges_header
    if not any(c["amount"] for c in charges) and any(c["amount"] for c in s.charges_summary):
        charges = s.charges_summary
    doc["charges"] = [{"code": c["code"], "description": c["description"], "amount": c["amount"]} for c in charges]
    doc["terms"] = s.terms_text()
    doc["total_amount"] = first_total(s, INVOICE_TOTALS)
    after_bgm = (s.bgm_pos + 2) if s.bgm_pos is not None else 2
    if s.hdtm_count == 0:
        s.missing("DTM", after_bgm, "DTM (invoice date) is missing at message level", Severity.WARNING)
    elif doc["invoice_date"] is None and not s.date_was_sent("invoice_date"):
        codes = "/".join(s.lk.dates["invoice_date"])
        s.missing("DTM", after_bgm, f"No DTM {codes} (invoice date) at message level", Severity.WARNING)
    if s.uns_pos is None:
        s.missing("UNS", len(ts.segments), "UNS (section control) is missing", Severity.WARNING)
    elif s.summary_moa == 0:
        s.missing("MOA", s.uns_pos + 2, "No MOA (monetary amount) in the summary section", Severity.WARNING)
    return doc, stamped(s)
