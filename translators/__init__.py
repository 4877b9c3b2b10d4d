"""The translation core: EDI bytes in, canonical documents and findings out.

Pure: no I/O, no database, no clock. The public surface is small:

- :func:`translate` / :func:`iter_translate` — a file (or a byte stream) to canonical documents;
- :func:`build_acknowledgment` — the 997 / 999 / TA1 / CONTRL for an interchange;
- :class:`Finding` and :class:`TranslationError` — what went wrong, and where.
"""

from translators.acks import Acknowledgment, build_acknowledgment
from translators.findings import Finding, Severity, TranslationError
from translators.translate import DocumentResult, InterchangeResult, Translation, iter_translate, translate

__all__ = [
    "Acknowledgment",
    "DocumentResult",
    "Finding",
    "InterchangeResult",
    "Severity",
    "Translation",
    "TranslationError",
    "build_acknowledgment",
    "iter_translate",
    "translate",
]
