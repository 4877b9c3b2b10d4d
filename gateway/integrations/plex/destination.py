"""Plex as a destination: a matched document becomes a Plex record, exactly once.

Invoices (810/INVOIC) become AP invoices over REST; purchase orders (850/ORDERS) go to the
tenant's PO data sources over SOAP, or — for a partner whose file says
``plex.purchase_orders: sales_order`` — become customer orders (``sales/v1/orders``). The client
looks the record up before every create and again after a timeout or 5xx, so a retry never
creates a second one (see :mod:`gateway.integrations.plex.client`). The stage runs a claimed batch of
documents a few at a time (``plex.concurrency``); the request budget is shared by every process.

Outcomes, per delivery: done (with Plex's answer and every call in the audit detail, the record as
the delivery's ``reference``); 5xx and timeouts retried later; 429 a wait (no attempt used,
``after`` = Retry-After); 403 a permission error; 401 after one re-authentication, a 400 or a
data-source error fail the delivery with Plex's message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog
from pydantic import ValidationError

from gateway.integrations.base import Check, DeliveryItem, Outcome
from gateway.integrations.plex.context import PlexContext, plex_context
from gateway.integrations.plex.matching import CUSTOMER, role_of
from gateway.integrations.plex.suppliers import SupplierMaster
from gateway.integrations.plex.client import (
    APInvoiceAccounts, APInvoiceDraft, APInvoiceLine, PlexAuthError, PlexCall, PlexClient, PlexConfigError,
    PlexError, PlexPermissionError, PlexThrottledError, PlexTransientError, PlexValidationError, PostingOutcome,
    PurchaseOrderDraft, PurchaseOrderLine, SalesOrderDraft, SalesOrderLine,
)
from translators.mapping import PartnerDirectory

log = structlog.get_logger("gateway.delivery.plex")


class MappingProblem(ValueError):
    """The canonical document lacks what Plex needs."""


def _date(value: Any) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise MappingProblem(f"{value!r} is not a date") from None


def _dec(value: Any, what: str) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise MappingProblem(f"{what} {value!r} is not a number") from None
    if not d.is_finite():
        raise MappingProblem(f"{what} {value!r} is not a number")
    return d


def edi_note(doc: DeliveryItem, canonical: Mapping[str, Any]) -> str:
    """Where the record came from, for reconciliation in Plex."""
    control = canonical.get("control") or {}
    return (f"EDI {doc.standard} {doc.message_type or ''} interchange {control.get('interchange')} "
            f"group {control.get('group')} message {control.get('message')}; gateway document {doc.document_id}")


def invoice_draft(doc: DeliveryItem, canonical: Mapping[str, Any], accounts: APInvoiceAccounts) -> APInvoiceDraft:
    number = canonical.get("invoice_number")
    if not number:
        raise MappingProblem("the invoice has no invoice number")
    invoice_date = _date(canonical.get("invoice_date"))
    if invoice_date is None:
        raise MappingProblem("the invoice has no invoice date")
    lines: list[APInvoiceLine] = []
    for n, line in enumerate(canonical.get("lines") or [], 1):
        qty = _dec(line.get("quantity"), f"line {n} quantity") or Decimal(1)
        price = _dec(line.get("unit_price"), f"line {n} unit price")
        amount = _dec(line.get("amount"), f"line {n} amount")
        if price is None:
            if amount is None:
                raise MappingProblem(f"line {n} has neither a unit price nor an amount")
            qty, price = Decimal(1), amount
        text = line.get("description") or line.get("supplier_part") or line.get("buyer_part") or f"line {n}"
        lines.append(APInvoiceLine(account_number=accounts.expense_account, description=text[:200],
                                   quantity=qty, unit_price=price))
    for charge in canonical.get("charges") or []:
        amount = _dec(charge.get("amount"), "charge amount")
        if amount:
            text = charge.get("description") or f"charge {charge.get('code') or ''}".strip()
            lines.append(APInvoiceLine(account_number=accounts.charge_account or accounts.expense_account,
                                       description=text[:200], unit_price=amount))
    tax = _dec(canonical.get("tax_amount"), "tax amount")
    if tax:
        lines.append(APInvoiceLine(account_number=accounts.tax_account, description="Tax", unit_price=tax,
                                   is_tax_line=True))
    if not lines:
        total = _dec(canonical.get("total_amount"), "total amount")
        if total is None:
            raise MappingProblem("the invoice has no lines and no total")
        lines.append(APInvoiceLine(account_number=accounts.expense_account, description="Invoice total",
                                   unit_price=total))
    return APInvoiceDraft(invoice_number=number, supplier_code=doc.supplier_code or "", invoice_date=invoice_date,
                          due_date=_date(canonical.get("due_date")), currency_code=canonical.get("currency"),
                          terms=(canonical.get("terms") or None), po_number=canonical.get("po_number"),
                          note=edi_note(doc, canonical), lines=lines)


def _line_numbers(lines: Sequence[Mapping[str, Any]]) -> list[int]:
    numbers = []
    for n, line in enumerate(lines, 1):
        raw = str(line.get("line_number") or "").strip()
        numbers.append(int(raw) if raw.isdigit() and int(raw) > 0 else n)
    return numbers if len(set(numbers)) == len(numbers) else list(range(1, len(lines) + 1))


def purchase_order_draft(doc: DeliveryItem, canonical: Mapping[str, Any], *, today: date) -> PurchaseOrderDraft:
    number = canonical.get("po_number")
    if not number:
        raise MappingProblem("the purchase order has no PO number")
    lines = canonical.get("lines") or []
    header_due = _date(canonical.get("requested_delivery"))
    drafts = []
    for n, (line, number_) in enumerate(zip(lines, _line_numbers(lines), strict=True), 1):
        qty = _dec(line.get("quantity"), f"line {n} quantity")
        if qty is None:
            raise MappingProblem(f"line {n} has no quantity")
        drafts.append(PurchaseOrderLine(
            line_number=number_, quantity=qty, part_number=line.get("buyer_part"),
            supplier_part_number=line.get("supplier_part"), description=(line.get("description") or None),
            unit=line.get("uom"), unit_price=_dec(line.get("unit_price"), f"line {n} unit price"),
            due_date=_date(line.get("requested_delivery")) or header_due))
    return PurchaseOrderDraft(po_number=number, supplier_code=doc.supplier_code or "",
                              po_date=_date(canonical.get("po_date")) or today, due_date=header_due,
                              currency_code=canonical.get("currency"), note=edi_note(doc, canonical), lines=drafts)


def sales_order_draft(doc: DeliveryItem, canonical: Mapping[str, Any], customer_id: str) -> SalesOrderDraft:
    number = canonical.get("po_number")
    if not number:
        raise MappingProblem("the purchase order has no PO number")
    lines = []
    for n, line in enumerate(canonical.get("lines") or [], 1):
        qty = _dec(line.get("quantity"), f"line {n} quantity")
        if qty is None:
            raise MappingProblem(f"line {n} has no quantity")
        lines.append(SalesOrderLine(
            quantity=qty, part_number=line.get("supplier_part") or line.get("buyer_part"),
            customer_part_number=line.get("buyer_part"), description=(line.get("description") or None),
            unit=line.get("uom"), unit_price=_dec(line.get("unit_price"), f"line {n} unit price"),
            due_date=_date(line.get("requested_delivery"))))
    return SalesOrderDraft(customer_id=customer_id, po_number=number, order_date=_date(canonical.get("po_date")),
                           due_date=_date(canonical.get("requested_delivery")), note=edi_note(doc, canonical),
                           lines=lines)


_CALL_FIELDS = tuple(f.name for f in fields(PlexCall))


def _calls(trail: Sequence[PlexCall]) -> list[dict[str, Any]]:
    # Flat fields: asdict's deep copy costs more than the rest of recording a call.
    return [{k: v for k in _CALL_FIELDS if (v := getattr(c, k)) is not None} for c in trail]


@dataclass(slots=True)
class _Posting:
    """What one document becomes in Plex, before it is sent."""

    kind: str  # "ap_invoice" | "sales_order" | "purchase_order"
    draft: Any

    @property
    def key(self) -> Any:
        d = self.draft
        if self.kind == "ap_invoice":
            return (d.invoice_number, d.supplier_code)
        if self.kind == "sales_order":
            return (d.customer_id, d.po_number)
        return d.po_number


class PostStage:
    """Posting: looks the claimed deliveries' records up in Plex many at a time, then posts those
    Plex does not hold a few at a time. Outcomes by delivery id."""

    def __init__(self, client: PlexClient, master: SupplierMaster, *, accounts: APInvoiceAccounts | None,
                 partners: Callable[[], PartnerDirectory], concurrency: int = 8,
                 time_budget: float | None = None) -> None:
        self.client, self.master, self.accounts, self.partners = client, master, accounts, partners
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="plex-post")
        # At 200 requests a minute a large claim cannot all be posted before the worker's lease
        # runs out: documents not started within this many seconds wait for the next claim.
        self.time_budget = time_budget

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __call__(self, docs: Sequence[DeliveryItem]) -> dict[int, Outcome]:
        directory = self.partners()
        deadline = None if self.time_budget is None else time.monotonic() + self.time_budget
        out: dict[int, Outcome] = {}
        postings: dict[int, _Posting] = {}
        for d in docs:
            try:
                prepared = self._prepare(d, directory)
            except Exception as exc:  # noqa: BLE001 - only the faults _refusal knows become outcomes
                prepared = _refusal(exc)
            if isinstance(prepared, Outcome):
                out[d.delivery_id] = prepared
            else:
                postings[d.delivery_id] = prepared
        absent, lookups = self._absent(list(postings.values()))
        futures = {d.delivery_id: self._pool.submit(
            self.post_one, d, directory, deadline, postings[d.delivery_id],
            postings[d.delivery_id].key in absent.get(postings[d.delivery_id].kind, ()),
            lookups.get(postings[d.delivery_id].kind, [])) for d in docs if d.delivery_id in postings}
        wait(futures.values())  # one wake-up when all are posted, not one per document in turn
        out.update({doc_id: f.result() for doc_id, f in futures.items()})
        return out

    def _absent(self, postings: list[_Posting]) -> tuple[dict[str, set], dict[str, list]]:
        """Per kind, the records Plex certainly does not hold (one look-up per many documents), and the
        calls that showed it. A look-up that cannot be made or trusted leaves each document to its own."""
        absent: dict[str, set] = {}
        calls: dict[str, list] = {}
        finders = {"ap_invoice": self.client.absent_ap_invoices, "sales_order": self.client.absent_sales_orders,
                   "purchase_order": self.client.absent_purchase_orders}
        for kind, find in finders.items():
            drafts = [p.draft for p in postings if p.kind == kind]
            if len(drafts) < 2:
                continue
            with self.client.recording() as trail:
                try:
                    found = find(drafts)
                except PlexError as exc:
                    log.warning("plex.batch_lookup_failed", kind=kind, error=str(exc))
                    found = None
            if found is not None:
                absent[kind], calls[kind] = found, list(trail)
        return absent, calls

    def post_one(self, doc: DeliveryItem, directory: PartnerDirectory, deadline: float | None = None,
                 posting: _Posting | None = None, absent: bool = False, lookups: Sequence[Any] = ()) -> Outcome:
        """Post one document (``posting``: its draft, already made; ``absent``: a look-up of many found
        no such record, whose ``lookups`` calls go into this document's trail)."""
        if deadline is not None and time.monotonic() > deadline:
            return Outcome.wait(0.05, reason="not started: the Plex budget of this claim was spent",
                                code="plex.claim_budget")
        started = time.perf_counter()
        with self.client.recording() as trail:
            try:
                if posting is None:
                    prepared = self._prepare(doc, directory)
                    if isinstance(prepared, Outcome):
                        return prepared
                    posting = prepared
                outcome = self._send(posting, absent)
            except Exception as exc:  # noqa: BLE001 - only the faults _refusal knows become outcomes
                outcome = _refusal(exc)
        detail = dict(outcome.detail)
        detail["calls"] = _calls([*lookups, *trail]) if absent else _calls(trail)
        detail["plex_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return Outcome(outcome.kind, detail, outcome.error, outcome.code, outcome.changes, outcome.after,
                       outcome.reference)

    def _prepare(self, doc: DeliveryItem, directory: PartnerDirectory) -> _Posting | Outcome:
        if not doc.canonical:
            raise MappingProblem("the document has no canonical form")
        if not doc.supplier_code:
            raise MappingProblem("no Plex supplier was matched")
        canonical = doc.canonical
        partner = directory.get(doc.partner) if doc.partner else None
        if doc.kind == "invoice":
            if self.accounts is None:
                return Outcome.fail("[plex.ap_invoice_accounts] is not set: no GL accounts to book the invoice to",
                                    code="plex.config")
            return _Posting("ap_invoice", invoice_draft(doc, canonical, self.accounts))
        if doc.kind == "purchase_order" and role_of(doc.kind, partner) == CUSTOMER:
            customer_id = self.master.customer_id(doc.supplier_code)
            if customer_id is None:
                return Outcome.fail(f"Plex has no customer {doc.supplier_code}", code="plex.customer_missing")
            return _Posting("sales_order", sales_order_draft(doc, canonical, customer_id))
        if doc.kind == "purchase_order":
            today = datetime.now(timezone.utc).date()
            return _Posting("purchase_order", purchase_order_draft(doc, canonical, today=today))
        return Outcome.skip(f"{doc.kind or 'this document'} is not posted to Plex")

    def _send(self, posting: _Posting, absent: bool) -> Outcome:
        if posting.kind == "ap_invoice":
            return _posted(self.client.post_invoice(posting.draft, absent=absent))
        if posting.kind == "sales_order":
            return _posted(self.client.post_sales_order(posting.draft, absent=absent))
        return _posted(self.client.post_purchase_order(posting.draft, absent=absent))


def _refusal(exc: Exception) -> Outcome:
    """The outcome of a document Plex did not take (or that cannot be sent); other faults propagate."""
    if isinstance(exc, (MappingProblem, ValidationError)):
        return Outcome.fail(f"cannot be sent to Plex: {_plain(exc)}", code="plex.mapping")
    if isinstance(exc, PlexPermissionError):
        return Outcome.fail(f"Plex refused permission (HTTP {exc.status or 'n/a'}): {exc}", code="plex.permission")
    if isinstance(exc, PlexAuthError):
        return Outcome.fail(f"Plex rejected the gateway's credentials: {exc}", code="plex.auth")
    if isinstance(exc, PlexConfigError):
        return Outcome.fail(f"Plex is not configured for this: {exc}", code="plex.config")
    if isinstance(exc, PlexThrottledError):
        return Outcome.wait(exc.retry_after, reason=f"Plex is throttling: {exc}", code="plex.throttled")
    if isinstance(exc, PlexTransientError):
        return Outcome.retry(f"Plex did not answer cleanly: {exc}", code="plex.transient")
    if isinstance(exc, PlexValidationError):
        errors = "; ".join(e.get("message", "") for e in exc.errors if e.get("message"))
        return Outcome.fail(f"Plex rejected it: {exc}" + (f" ({errors})" if errors else ""),
                            code=f"plex.rejected{'.duplicate' if exc.is_duplicate else ''}")
    if isinstance(exc, PlexError):
        return Outcome.fail(f"Plex: {exc}", code="plex.error")
    raise exc


def _posted(posting: PostingOutcome) -> Outcome:
    key = posting.record_id if posting.record_id is not None else posting.record_key
    detail = {"plex": {"record": posting.kind, "disposition": posting.disposition, "recovered": posting.recovered,
                       "response": posting.response}}
    if posting.lines_added:
        detail["plex"]["lines_added"] = posting.lines_added
    return Outcome.ok(detail, reference=f"{posting.kind}:{key}")


def _plain(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return str(exc)


class PlexDestination:
    """``plex`` in the registry: deliveries become Plex records (see :class:`PostStage`)."""

    name = "plex"

    def __init__(self, context: PlexContext, post: PostStage) -> None:
        self.context, self.post = context, post

    @classmethod
    def configure(cls, runtime: Any) -> PlexDestination | None:
        context = plex_context(runtime)
        if context is None:
            return None
        settings = runtime.settings.plex
        post = PostStage(context.client, context.master, accounts=settings.ap_invoice_accounts,
                         partners=runtime.partners, concurrency=settings.concurrency,
                         time_budget=runtime.settings.workers.lease_seconds / 2)
        return cls(context, post)

    def deliver(self, items: Sequence[DeliveryItem]) -> dict[int, Outcome]:
        return self.post(items)

    def check(self) -> list[Check]:
        try:
            tenants = self.context.client.list_tenants()
        except PlexError as exc:
            return [Check("Plex Connect", False, str(exc))]
        return [Check("Plex Connect", True, f"{len(tenants)} tenant(s) visible")]

    def close(self) -> None:
        self.post.close()
        self.context.close()


__all__ = ["PlexDestination", "PostStage", "invoice_draft", "purchase_order_draft", "sales_order_draft",
           "MappingProblem"]
