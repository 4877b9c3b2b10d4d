"""The canonical documents: the contract between the translators and everything downstream.

The message mappers build plain dicts (fast, and exactly what ``gateway translate`` prints);
these pydantic models are the schema of those dicts. ``validate_canonical`` checks a dict
against them, with no extra keys allowed, so the contract cannot drift silently.
Decimals are JSON strings (``"12.50"``), dates ISO ``YYYY-MM-DD``, absent values ``null``.
"""

from __future__ import annotations

from typing import Any, Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

# The roles and the empty document (new_document) are part of this contract; they are defined
# with the message mappers, which make one document per set, so that they compile with them.
from translators.messages.common import PARTY_ROLES as PARTY_ROLES  # re-exported
from translators.messages.common import new_document as new_document  # re-exported

DecimalStr = Annotated[str, StringConstraints(pattern=r"^-?\d+(\.\d+)?$")]
IsoDate = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Address(_Strict):
    lines: list[str]
    city: str | None
    region: str | None
    postal_code: str | None
    country: str | None


class Party(_Strict):
    name: str | None
    id: str | None
    id_qualifier: str | None
    tax_id: str | None
    address: Address | None


class Parties(_Strict):
    buyer: Party | None
    supplier: Party | None
    ship_to: Party | None
    bill_to: Party | None
    remit_to: Party | None


class Control(_Strict):
    interchange: str | None
    group: str | None
    message: str | None
    # "interchange": ISA..IEA / UNB..UNZ around it; "group": a GS..GE without ISA; "none": a bare
    # ST..SE / UNH..UNT (a de-enveloped document; sender and receiver then come from the source).
    envelope: Literal["interchange", "group", "none"]
    test: bool  # ISA15 T / UNB 0035 1: a test interchange
    relaxed: list[str]  # the partner's validation.relax checks that failed and only warned here


class Line(_Strict):
    line_number: str | None
    quantity: DecimalStr | None
    uom: str | None
    unit_price: DecimalStr | None
    amount: DecimalStr | None
    buyer_part: str | None
    supplier_part: str | None
    gtin: str | None
    description: str | None
    requested_delivery: IsoDate | None
    po_number: str | None  # the order the line belongs to (an invoice line's RFF+ON / REF*PO)


class Charge(_Strict):
    code: str | None
    description: str | None
    amount: DecimalStr | None


class _Document(_Strict):
    standard: Literal["x12", "edifact"]
    version: str | None
    partner: str | None
    sender_id: str | None
    receiver_id: str | None
    control: Control
    purpose: str | None
    currency: str | None
    parties: Parties
    lines: list[Line]
    references: dict[str, str]
    total_amount: DecimalStr | None


class PurchaseOrder(_Document):
    kind: Literal["purchase_order"]
    po_number: str | None
    po_date: IsoDate | None
    requested_delivery: IsoDate | None


class Invoice(_Document):
    kind: Literal["invoice"]
    invoice_number: str | None
    invoice_date: IsoDate | None
    po_number: str | None
    due_date: IsoDate | None
    tax_amount: DecimalStr | None
    charges: list[Charge]
    terms: str | None


LINE_FIELDS = tuple(Line.model_fields)


def validate_canonical(doc: dict[str, Any]) -> PurchaseOrder | Invoice:
    """Validate a canonical dict against the contract; raises pydantic.ValidationError."""
    model = PurchaseOrder if doc.get("kind") == "purchase_order" else Invoice
    return model.model_validate(doc)


def empty_party() -> dict[str, Any]:
    return {"name": None, "id": None, "id_qualifier": None, "tax_id": None, "address": None}


def empty_line() -> dict[str, Any]:
    return dict.fromkeys(LINE_FIELDS)
