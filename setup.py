"""Build step: the translation core's hot modules compiled to C with mypyc, and the readers'
hot paths in hand-written C (translators/_x12.c, translators/_edifact.c).

The compiled modules are the same source as the pure-Python ones, so the package works either
way; compiled, translation runs several times faster (benchmarks/translate.py). Whatever goes
wrong here — no C compiler, no Python headers, mypyc refusing the code — the install carries on
as pure Python with a warning, never fails (a C path failing alone leaves the mypyc build and
the other C path in place). ``EDI_GATEWAY_PURE=1`` skips compiling on purpose.

Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The modules the translation of every segment runs through (their imports stay pure Python).
HOT_MODULES = [
    "translators/envelope.py",
    "translators/decoding.py",
    "translators/translate.py",
    "translators/codelists.py",
    "translators/messages/common.py",
    "translators/messages/x12_common.py",
    "translators/messages/x12_850.py",
    "translators/messages/x12_810.py",
    "translators/messages/edifact_common.py",
    "translators/messages/edifact_orders.py",
    "translators/messages/edifact_invoic.py",
]
# Hand-written C, used by the readers and mappers when it imports (see translators/native.py).
NATIVE = [
    Extension(f"translators._{name}", [f"translators/_{name}.c"], depends=["translators/_tokens.h"])
    for name in ("x12", "edifact")
]


def _warn(message: str) -> None:
    print(f"edi-gateway: {message}; installing the translation core as pure Python", file=sys.stderr)
    _remove_compiled()


def _remove_compiled(stems: list[str] | None = None) -> None:
    """Delete modules compiled by an earlier install (pip install -e builds them in place):
    left there, they would shadow the pure-Python source they no longer match."""
    here = os.path.dirname(os.path.abspath(__file__))
    if stems is None:
        stems = [m[: -len(".py")] for m in HOT_MODULES] + ["translators/_native__mypyc"]
        stems += [ext.name.replace(".", "/") for ext in NATIVE]
    for stem in stems:
        folder, name = os.path.split(os.path.join(here, stem))
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            if entry.startswith(name + ".") and entry.endswith((".so", ".pyd")):
                os.unlink(os.path.join(folder, entry))


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: no extension
            self._remove_partial_outputs()
            _warn(f"compiling failed ({exc.__class__.__name__}: {exc})")

    def build_extension(self, ext) -> None:  # noqa: ANN001 - setuptools' signature
        if ext not in NATIVE:
            return super().build_extension(ext)
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - each C path is optional on its own
            source = ext.sources[0]
            print(f"edi-gateway: the C path {source} did not compile ({exc.__class__.__name__}: {exc}); "
                  "the translation core runs without it", file=sys.stderr)
            _remove_compiled([ext.name.replace(".", "/")])
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)
            # A new list, not a removal: the build loop goes on over the old one, and the copy
            # into the source tree (pip install -e) no longer looks for this module.
            self.extensions = [e for e in self.extensions if e is not ext]

    def copy_file(self, infile, outfile, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - setuptools' signature
        # In place (pip install -e): unlink, never overwrite, a module a running process may
        # have mapped (writing into it would crash that process).
        if os.path.exists(outfile) and outfile.endswith(".so"):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)

    def _remove_partial_outputs(self) -> None:
        # A module compiled without the shared library beside it would not import: all or none.
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)
        self.extensions = []


def _extensions() -> list:
    if os.environ.get("EDI_GATEWAY_PURE"):
        _remove_compiled()
        return []
    try:
        from mypyc.build import mypycify

        # Third-party packages (pydantic ...) are read as Any, whether or not the build
        # environment has them, so the build type-checks the same everywhere.
        options = ["--no-site-packages", "--follow-imports=silent", "--ignore-missing-imports"]
        return mypycify(options + HOT_MODULES, opt_level="3", group_name="translators._native") + NATIVE
    except BaseException as exc:  # noqa: BLE001 - mypyc missing or refusing the code (it may sys.exit)
        _warn(f"mypyc is unavailable or rejected the code ({exc.__class__.__name__}: {exc})")
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
