"""Element rules by version and code list, for the elements the canonical document uses.

Sources:

- X12 numeric elements (R, Nn): type and maximum length from the X12 data element dictionary,
  as published in pyx12's ``map/dataele.xml`` (tests/test_codelists.py checks this table
  against it). The length counts digits only: sign and decimal point are not counted.
- X12 DT (373 and the other dates): CCYYMMDD (8 digits) from version 004010 on, YYMMDD before.
- EDIFACT numeric data elements: 6060 quantity, 5118 price and 5004 monetary amount are n..15,
  n..15 and n..18 in the UNTDID directories up to D00B, and an..35, n..15 and n..35 from D01A
  on (UNTDID data element directories).
- Currency codes: ISO 4217, the current ones from the maintained ``pycountry`` package, the
  historic ones (List Three: NLG, DEM ...) from ``translators/data/iso4217_historic.txt`` (X12
  CUR02 / 100, EDIFACT CUX 6345). A code on neither list is a warning: reported in the
  acknowledgment (AK4 7 / UCD 12), the document kept.
- Units of measure: X12 355 is ID 2/2 (a unit of another length is an error) and EDIFACT 6411 an..3
  (UN/ECE Recommendation 20; a code of another shape is a warning: later directories allow
  longer ones). Membership in the full code lists is not checked yet: no maintained package
  ships them.

A partner's mapping-file translations (``mapping.translations``) apply before these checks, so a
partner's private code becomes a standard one first.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Final

import pycountry

# (segment, element) -> (X12 data element number, maximum digits) for the numbers the mappers read.
X12_NUMBERS: Final[dict[tuple[str, int], tuple[str, int]]] = {
    ("PO1", 2): ("330", 15),  # quantity ordered, R
    ("PO1", 4): ("212", 17),  # unit price, R
    ("IT1", 2): ("358", 15),  # quantity invoiced, R (1/10 in 004010, 1/15 from 005010: the larger)
    ("IT1", 4): ("212", 17),  # unit price, R
    ("AMT", 2): ("782", 18),  # monetary amount, R
    ("TDS", 1): ("610", 15),  # amount, N2
    ("TDS", 2): ("610", 15),
    ("TDS", 3): ("610", 15),
    ("TDS", 4): ("610", 15),
    ("SAC", 5): ("610", 15),  # amount, N2
    ("TXI", 2): ("782", 18),  # monetary amount, R
    ("CTT", 1): ("354", 6),  # number of line items, N0
    ("CTT", 2): ("347", 10),  # hash total, R
    ("SCH", 1): ("380", 15),  # quantity, R
}

X12_DT_8_FROM: Final = "004010"


def digits(value: str) -> int:
    """How many digits a numeric value holds (sign, decimal mark and blanks not counted)."""
    v = value.strip()
    return len(v) - (v[:1] in "+-") - v.count(".") - v.count(",")


def x12_number_limit(tag: str, n: int) -> int | None:
    hit = X12_NUMBERS.get((tag, n))
    return hit[1] if hit is not None else None


def edifact_number_limit(tag: str, directory: str | None) -> int | None:
    """The maximum digits of QTY 6060, PRI 5118 or MOA 5004 in ``directory`` (e.g. D96A)."""
    new = _from_d01(directory)
    if tag == "QTY":
        return 35 if new else 15
    if tag == "PRI":
        return 15
    if tag == "MOA":
        return 35 if new else 18
    return None


def _from_d01(directory: str | None) -> bool:
    if not directory or len(directory) < 3 or not directory[1:3].isdecimal():
        return True  # unknown: the larger limits
    year = int(directory[1:3])
    return year < 90  # D01A..D2xx; D93A..D99B are the nineties


@lru_cache(maxsize=1)
def _historic_currencies() -> frozenset[str]:
    text = resources.files("translators").joinpath("data/iso4217_historic.txt").read_text("ascii")
    return frozenset(w for line in text.splitlines() if not line.startswith("#") for w in line.split())


@lru_cache(maxsize=512)
def is_currency(code: str) -> bool:
    """An ISO 4217 alphabetic currency code, current (pycountry) or historic."""
    if len(code) != 3 or not code.isascii() or not code.isupper():
        return False
    return pycountry.currencies.get(alpha_3=code) is not None or code in _historic_currencies()


@lru_cache(maxsize=4096)
def is_unit(code: str, standard: str) -> bool:
    """A unit of measure code shaped as X12 355 (2 characters) or EDIFACT 6411 (1 to 3)."""
    if not code.isascii() or not code.isalnum() or code.upper() != code:
        return False
    return len(code) == 2 if standard == "x12" else 1 <= len(code) <= 3
