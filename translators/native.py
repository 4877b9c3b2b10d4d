"""The optional hand-written C tokenizers behind the readers, built by setup.py:
translators/_x12.c and translators/_edifact.c (each splits ordinary segments into elements in
one pass; no business rule lives in C).

``x12`` and ``edifact`` are the compiled modules, or None where they were not built (no C
compiler, ``EDI_GATEWAY_PURE=1``): the readers then run their pure-Python path, which gives the
same segments and events. Each reader looks them up here when it starts, so tests can set them
to None to compare both paths.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:  # not built: the pure-Python path
        return None


x12: ModuleType | None = _load("translators._x12")
edifact: ModuleType | None = _load("translators._edifact")
