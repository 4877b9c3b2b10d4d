"""The optional hand-written C behind the X12 reader and mappers (translators/_x12.c, built by
setup.py).

``x12`` is the compiled module, or None where it was not built (no C compiler,
``EDI_GATEWAY_PURE=1``): the reader and the mappers then run their pure-Python path, which gives
the same segments, events and documents. Each reader and mapper looks it up here when it
starts, so tests can set it to None to compare both paths.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("translators._x12")
    except ImportError:  # not built: the pure-Python path
        return None


x12: ModuleType | None = _load()
