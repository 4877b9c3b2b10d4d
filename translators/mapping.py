"""Partner mapping files: the model, the standard mapping, and how a file overrides it.

A mapping file says who a partner is and how its documents deviate from the standard
mapping. Everything it leaves out falls back to :data:`STANDARD`. The model is pure data;
parsing YAML text into it (with errors that name the file and the key) lives in
:mod:`translators.partners`, reading files from disk in :mod:`gateway.partners`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from translators.canonical import PARTY_ROLES, Address, Charge, Control, Invoice, Line, Party, PurchaseOrder


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Value types

CODE_PATTERN = r"^[A-Z0-9]{1,3}$"
Code = Annotated[str, StringConstraints(strip_whitespace=True, pattern=CODE_PATTERN)]
"""A qualifier as it appears in the EDI (X12 DTM01, N101, REF01, PO1 qualifiers; EDIFACT 2005, 3035, 1153, 7143)."""

TableCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=35)]
"""One side of a code table."""

X12_VERSION = re.compile(r"\d{6}(X\d{3}(A\d)?)?")
EDIFACT_VERSION = re.compile(r"[DS]\d{2}[A-C]")


def _check_version(v: str) -> str:
    if X12_VERSION.fullmatch(v) or EDIFACT_VERSION.fullmatch(v):
        return v
    raise ValueError(
        f"{v!r} is not a version: use the X12 GS08 form (e.g. 004010, 005010) "
        "or the EDIFACT directory (e.g. D96A, D01B)"
    )


Version = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_check_version)]

# Canonical field paths a file may name in ``mapping.required`` and ``mapping.defaults``.
_NOT_FROM_PARTNER = {"kind", "standard", "partner"}
_STRUCTURED = {"control", "parties", "lines", "references", "charges"}
_TOP_FIELDS = {f: info for m in (PurchaseOrder, Invoice) for f, info in m.model_fields.items() if f not in _NOT_FROM_PARTNER}
DEFAULTABLE_FIELDS: tuple[str, ...] = tuple(f for f in _TOP_FIELDS if f not in _STRUCTURED)
"""Top-level canonical fields ``mapping.defaults`` may fill."""

REQUIRED_PATHS: tuple[str, ...] = tuple(
    [*_TOP_FIELDS]
    + [f"control.{f}" for f in Control.model_fields]
    + [f"lines.{f}" for f in Line.model_fields]
    + [f"charges.{f}" for f in Charge.model_fields]
    + [p for r in PARTY_ROLES for p in (
        f"parties.{r}",
        *(f"parties.{r}.{f}" for f in Party.model_fields),
        *(f"parties.{r}.address.{f}" for f in Address.model_fields),
    )]
)
"""Canonical field paths ``mapping.required`` may name (plus ``references.<qualifier>``)."""

_REFERENCE_PATH = re.compile(r"references\.[A-Z0-9]{1,3}")


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_required_path(v: str) -> str:
    if v in REQUIRED_PATHS or _REFERENCE_PATH.fullmatch(v):
        return v
    raise ValueError(
        f"{v!r} is not a canonical field path{_suggest(v, REQUIRED_PATHS)}; examples: po_number, "
        "lines.buyer_part, parties.supplier.name, references.IA"
    )


RequiredPath = Annotated[
    str,
    StringConstraints(strip_whitespace=True),
    AfterValidator(_check_required_path),
    WithJsonSchema({"type": "string", "anyOf": [{"enum": list(REQUIRED_PATHS)}, {"pattern": r"^references\.[A-Z0-9]{1,3}$"}]}),
]


def _check_default_field(v: str) -> str:
    if v in DEFAULTABLE_FIELDS:
        return v
    raise ValueError(
        f"{v!r} is not a top-level canonical field that can have a default{_suggest(v, DEFAULTABLE_FIELDS)}; "
        f"allowed: {', '.join(DEFAULTABLE_FIELDS)}"
    )


DefaultField = Annotated[
    str,
    StringConstraints(strip_whitespace=True),
    AfterValidator(_check_default_field),
    WithJsonSchema({"type": "string", "enum": list(DEFAULTABLE_FIELDS)}),
]

# ---------------------------------------------------------------------------------------------
# The model


class EdiIdentifier(_Model):
    """An interchange-level identity: ISA05/ISA06 (X12) or UNB S002/S003 (EDIFACT)."""

    id: str = Field(
        min_length=1, max_length=35,
        description="Sender id as it appears in ISA06 / UNB S002 0004, without the padding",
        examples=["ACMEFAST", "4012345000009"],
    )
    qualifier: str | None = Field(
        None, max_length=4, description="ISA05 / UNB S002 0007 qualifier (e.g. ZZ, 01, 14); null matches any"
    )
    group_id: str | None = Field(
        None, max_length=35,
        description="X12 GS02 application sender code (EDIFACT UNG 0040), if it narrows the match",
    )

    @field_validator("id", "qualifier", "group_id", mode="before")
    @classmethod
    def _strip(cls, v: str | None) -> str | None:
        return v.strip() if isinstance(v, str) else v


class X12Identifier(EdiIdentifier):
    """An X12 sender: ISA05 qualifier + ISA06 id, optionally narrowed by GS02."""

    id: str = Field(min_length=1, max_length=15, description="ISA06 interchange sender id, without the padding",
                    examples=["ACMEFAST"])
    qualifier: str | None = Field(
        None, pattern=r"^[A-Z0-9]{2}$",
        description="ISA05 qualifier: 2 characters (01 DUNS, 08 UCC EDI, 12 phone, 14 DUNS+4, ZZ mutually defined); "
        "null matches any",
        examples=["ZZ", "01", "12"],
    )
    group_id: str | None = Field(None, min_length=2, max_length=15,
                                 description="GS02 application sender code, if it narrows the match")


class EdifactIdentifier(EdiIdentifier):
    """An EDIFACT sender: UNB S002 0004 id + 0007 qualifier."""

    id: str = Field(min_length=1, max_length=35, description="UNB S002 0004 sender id",
                    examples=["4012345000009"])
    qualifier: str | None = Field(
        None, max_length=4,
        description="UNB S002 0007 code qualifier (14 GLN/EAN, 1 DUNS, ZZZ mutually defined); null matches any",
        examples=["14", "1", "ZZZ"],
    )
    group_id: str | None = Field(None, max_length=35, description="UNG 0040 group sender id, if it narrows the match")


def _as(cls: type[EdiIdentifier]) -> BeforeValidator:
    """Accept a plain EdiIdentifier where a standard-specific one is declared (re-checked)."""

    def convert(v: Any) -> Any:
        if isinstance(v, EdiIdentifier) and not isinstance(v, cls):
            return v.model_dump()
        return v

    return BeforeValidator(convert)


class Identifiers(_Model):
    """How interchanges from this partner are recognised. Without any, the partner is never matched."""

    x12: list[Annotated[X12Identifier, _as(X12Identifier)]] = Field(
        default_factory=list, description="X12 ISA senders (qualifier + id, optionally a GS02)")
    edifact: list[Annotated[EdifactIdentifier, _as(EdifactIdentifier)]] = Field(
        default_factory=list, description="EDIFACT UNB senders (id + qualifier)")


class PartNumberQualifiers(_Model):
    """Which qualifiers carry which part number (X12 PO1/IT1 pairs, EDIFACT LIN/PIA codes).

    Listing a key replaces the standard list for it; keys left out keep the standard list.
    """

    buyer: list[Code] = Field(default_factory=lambda: ["BP", "IN", "SK", "CB", "PI"],
                              description="Qualifiers of the buyer's (our) part number")
    supplier: list[Code] = Field(default_factory=lambda: ["VP", "SA", "VN", "VC", "MG", "SN"],
                                 description="Qualifiers of the supplier's part number")
    gtin: list[Code] = Field(default_factory=lambda: ["UP", "EN", "UK", "UA", "SRV"],
                             description="Qualifiers of a GTIN / UPC / EAN")


class DateQualifiers(_Model):
    """Date qualifiers (X12 DTM01 / EDIFACT DTM C507 2005) per canonical field, in order of preference."""

    po_date: list[Code] = Field(default_factory=lambda: ["137", "004"], description="Order date")
    requested_delivery: list[Code] = Field(
        default_factory=lambda: ["002", "010", "2", "106", "064", "069", "037", "038", "074", "017"],
        description="Requested delivery / ship date (document and line)",
    )
    invoice_date: list[Code] = Field(default_factory=lambda: ["003", "137", "3"], description="Invoice date")
    due_date: list[Code] = Field(default_factory=lambda: ["013", "814", "140", "13"], description="Payment due date")


class Translations(_Model):
    """Code tables: the partner's code on the left, ours on the right. Codes not listed pass through."""

    uom: dict[TableCode, TableCode] = Field(default_factory=dict, description="Unit of measure (X12 355, EDIFACT 6411)",
                                            examples=[{"CA": "CS", "PC": "EA"}])
    currency: dict[TableCode, TableCode] = Field(default_factory=dict, description="Currency codes")
    party_qualifier: dict[TableCode, TableCode] = Field(
        default_factory=dict, description="Party qualifiers (X12 N101 / EDIFACT NAD 3035), applied before the party lists"
    )


class MessageMapping(_Model):
    """How this partner's documents deviate from the standard mapping. Keys left out keep the standard."""

    part_numbers: PartNumberQualifiers = Field(default_factory=PartNumberQualifiers,
                                               description="Which qualifiers carry which part number")
    supplier_party: list[Code] = Field(
        default_factory=lambda: ["SU", "SE", "VN", "II"],
        description="Party qualifiers (X12 N101 / EDIFACT NAD 3035) naming the supplier, in order of preference",
    )
    remit_to_party: list[Code] = Field(default_factory=lambda: ["RE", "PE", "RI"],
                                       description="Party qualifiers naming the remit-to party (supplier fallback)")
    buyer_party: list[Code] = Field(default_factory=lambda: ["BY", "BT", "OB", "BO"],
                                    description="Party qualifiers naming the buyer")
    ship_to_party: list[Code] = Field(default_factory=lambda: ["ST", "DP", "SN"],
                                      description="Party qualifiers naming the ship-to party")
    bill_to_party: list[Code] = Field(default_factory=lambda: ["BT", "IV", "BI"],
                                      description="Party qualifiers naming the bill-to party")
    dates: DateQualifiers = Field(default_factory=DateQualifiers, description="Which date qualifiers fill which date")
    translations: Translations = Field(default_factory=Translations,
                                       description="Code tables: their code to ours")
    references: list[Code] | None = Field(
        None, description="Reference qualifiers (X12 REF01 / EDIFACT RFF 1153) to keep; null keeps every reference",
        examples=[["IA", "VR", "DP"]],
    )
    defaults: dict[DefaultField, str] = Field(
        default_factory=dict,
        description="Values for top-level canonical fields the partner leaves empty (e.g. currency)",
        examples=[{"currency": "EUR"}],
    )
    required: list[RequiredPath] = Field(
        default_factory=list,
        description="Canonical field paths the partner must always send, e.g. po_number, lines.buyer_part, "
        "parties.supplier.name; a document without one gets a mapping.required_missing finding",
        examples=[["po_number", "lines.buyer_part"]],
    )

    @field_validator("defaults")
    @classmethod
    def _default_values(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if key == "currency" and not re.fullmatch(r"[A-Z]{3}", value):
                raise PydanticCustomError(
                    "default_value", "'{value}' is not an ISO 4217 currency code (3 upper-case letters, e.g. EUR)",
                    {"key": key, "value": value},
                )
            try:
                TypeAdapter(_TOP_FIELDS[key].annotation or str).validate_python(value)
            except ValidationError as e:
                pattern = (e.errors()[0].get("ctx") or {}).get("pattern", "")
                expected = ("a date written YYYY-MM-DD" if "{4}-" in pattern
                            else "a decimal number such as 12.50" if "\\d+" in pattern
                            else e.errors()[0]["msg"])
                raise PydanticCustomError(
                    "default_value", "'{value}' is not a valid {key}: expected {expected}",
                    {"key": key, "value": value, "expected": expected},
                ) from None
        return v


MatchBy = Literal["supplier_code", "edi_id", "tax_id", "name"]
_MATCHERS: tuple[MatchBy, ...] = ("supplier_code", "edi_id", "tax_id", "name")
DocumentKind = Literal["purchase_order", "invoice"]
_KINDS: tuple[DocumentKind, ...] = ("purchase_order", "invoice")


class PlexRouting(_Model):
    """How the partner is matched to a Plex supplier and where its documents go in Plex."""

    supplier_code: str | None = Field(None, min_length=1, description="The Plex supplier code this partner is, if known",
                                      examples=["ACME01"])
    match_by: list[Literal["supplier_code", "edi_id", "tax_id", "name"]] = Field(
        default_factory=lambda: list(_MATCHERS),
        min_length=1,
        description="Ways to find the Plex supplier, tried in order",
    )
    purchase_orders: Literal["purchase_order", "sales_order"] = Field(
        "purchase_order", description="Inbound 850/ORDERS become Plex purchase orders or (customer orders) sales orders"
    )
    invoices: Literal["ap_invoice"] = Field("ap_invoice", description="Inbound 810/INVOIC become Plex AP invoices")


class AckSettings(_Model):
    """Functional acknowledgments back to the partner."""

    send: bool = Field(False, description="Send acknowledgments at all")
    kind: Literal["auto", "997", "999", "CONTRL"] = Field(
        "auto", description="auto: 997 for X12, CONTRL for EDIFACT"
    )
    outbound_folder: str | None = Field(None, min_length=1, description="Where acknowledgments are written (SFTP path "
                                        "or Sterling mailbox); null uses the source's outbound default",
                                        examples=["/outbound/acme"])
    ta1: Literal["never", "on_error", "always", "requested"] = Field(
        "requested", description="X12 TA1 interchange acknowledgment: requested = when ISA14 is 1"
    )


DestinationName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$"),
]
"""A destination's name as the gateway's routing knows it (e.g. plex, anaplan); only the name."""


def _unique_names(v: list[str] | None) -> list[str] | None:
    if v is not None:
        for n, name in enumerate(v):
            if name in v[:n]:
                raise ValueError(f"{name!r} is listed twice")
    return v


class DeliverySettings(_Model):
    """Where this partner's documents are delivered: names only; the gateway's routing does the rest."""

    destinations: Annotated[list[DestinationName] | None, AfterValidator(_unique_names)] = Field(
        None, description="Destinations this partner's documents go to, in order, replacing the gateway's "
        "routing for their kind; null keeps the routing",
        examples=[["plex", "anaplan"]],
    )
    test: Annotated[list[DestinationName], AfterValidator(_unique_names)] = Field(
        default_factory=list, description="Destinations that test interchanges (ISA15 T / UNB 0035 1) go to; "
        "empty: test documents are translated and acknowledged but delivered nowhere",
        examples=[["anaplan"]],
    )


# The envelope and trailer checks a mapping file may relax to warnings (``validation.relax``):
# name -> what it checks. Strict by default: a failed check rejects the set, group or interchange.
RELAXABLE_CHECKS: dict[str, str] = {
    "segment_count": "SE01 / UNT 0074 segment count",
    "set_control_number": "SE02 / UNT 0062 equal to ST02 / UNH 0062",
    "line_count": "X12 CTT01 / EDIFACT CNT 2 line count",
    "hash_total": "X12 CTT02 hash total of the quantities",
    "group_count": "GE01 / UNE 0060 count of sets",
    "group_control_number": "GE02 / UNE 0048 equal to GS06 / UNG 0048",
    "interchange_count": "IEA01 / UNZ 0036 count of groups or messages",
    "interchange_control_number": "IEA02 / UNZ 0020 equal to ISA13 / UNB 0020",
}

RelaxableCheck = Literal[
    "segment_count", "set_control_number", "line_count", "hash_total", "group_count", "group_control_number",
    "interchange_count", "interchange_control_number",
]


class ValidationSettings(_Model):
    """How strictly this partner's envelopes and trailers are checked."""

    relax: Annotated[list[RelaxableCheck], AfterValidator(_unique_names)] = Field(
        default_factory=list,
        description="Checks that only warn for this partner instead of rejecting: "
        + "; ".join(f"{k}: {v}" for k, v in RELAXABLE_CHECKS.items()),
        examples=[["hash_total", "interchange_control_number"]],
    )


class PartnerMapping(_Model):
    """One trading partner's mapping file."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64,
                    description="Stable partner id (lower case letters, digits, - and _); by convention the file name",
                    examples=["acme-fasteners"])
    name: str = Field(min_length=1, description="The partner's name, as people know it", examples=["Acme Fasteners Inc."])
    active: bool = Field(True, description="Inactive partners are never matched (switch live by setting true)")
    environment: Literal["production", "test", "both"] = Field(
        "production", description="Which interchanges it applies to (X12 ISA15 / EDIFACT UNB 0035 test indicator)"
    )
    identifiers: Identifiers = Field(default_factory=Identifiers,
                                     description="Interchange sender identities that select this file")
    documents: list[Literal["purchase_order", "invoice"]] = Field(
        default_factory=lambda: list(_KINDS), min_length=1,
        description="Document kinds it sends (purchase_order = 850/ORDERS, invoice = 810/INVOIC)",
    )
    versions: list[Version] = Field(default_factory=list,
                                    description="Versions it sends (e.g. 004010, D96A); empty accepts any",
                                    examples=[["004010"], ["D96A", "D01B"]])
    mapping: MessageMapping = Field(default_factory=lambda: MessageMapping.model_validate({}),
                                    description="How its documents deviate from the standard mapping")
    plex: PlexRouting = Field(default_factory=lambda: PlexRouting.model_validate({}),
                              description="Plex supplier matching and routing")
    acknowledgments: AckSettings = Field(default_factory=lambda: AckSettings.model_validate({}),
                                         description="Acknowledgments sent back")
    validation: ValidationSettings = Field(default_factory=ValidationSettings,
                                           description="Envelope and trailer checks relaxed to warnings")
    delivery: DeliverySettings = Field(default_factory=lambda: DeliverySettings.model_validate({}),
                                       description="Destinations (names) its documents and its test documents go to")


STANDARD = MessageMapping.model_validate({})
"""The standard mapping, used for unknown senders and for everything a file leaves out."""


class PartnerDirectory:
    """The loaded partner files, looked up by interchange sender identity."""

    def __init__(self, partners: list[PartnerMapping] | None = None):
        self._partners: dict[str, PartnerMapping] = {}
        self._by_id: dict[tuple[str, str], list[tuple[EdiIdentifier, PartnerMapping]]] = {}
        for p in partners or []:
            self.add(p)

    def add(self, partner: PartnerMapping) -> None:
        self._partners[partner.id] = partner
        for standard, idents in (("x12", partner.identifiers.x12), ("edifact", partner.identifiers.edifact)):
            for ident in idents:
                self._by_id.setdefault((standard, ident.id.upper()), []).append((ident, partner))

    def __iter__(self) -> Iterator[PartnerMapping]:
        return iter(self._partners.values())

    def __len__(self) -> int:
        return len(self._partners)

    def get(self, partner_id: str) -> PartnerMapping | None:
        return self._partners.get(partner_id)

    def match(
        self, standard: str, sender_id: str | None, qualifier: str | None = None, group_sender: str | None = None
    ) -> PartnerMapping | None:
        """The active partner whose identifier matches this sender, or None."""
        if not sender_id:
            return None
        candidates = self._by_id.get((standard, sender_id.strip().upper()), [])
        best = None
        for ident, partner in candidates:
            if not partner.active:
                continue
            if ident.qualifier and qualifier and ident.qualifier.strip() != qualifier.strip():
                continue
            if ident.group_id:
                if group_sender and ident.group_id.upper() == group_sender.strip().upper():
                    return partner
                continue
            best = best or partner
        return best
