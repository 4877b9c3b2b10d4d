"""Access to the shared public EDI corpus (../shared/corpus, or $EDI_CORPUS)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("EDI_CORPUS", REPO.parent / "shared" / "corpus"))


@dataclass(frozen=True)
class Sample:
    name: str
    folder: str
    expect: str  # ok | odd | reject | ack
    why: str

    @property
    def path(self) -> Path:
        return CORPUS / self.folder / self.name

    @property
    def standard(self) -> str:
        return self.folder.split("/")[0]

    def __str__(self) -> str:
        return f"{self.folder}/{self.name}"


def samples(*, expect: tuple[str, ...] | None = None, folder_prefix: str = "") -> list[Sample]:
    """The corpus samples listed in manifest.tsv (empty when the corpus is absent)."""
    manifest = CORPUS / "manifest.tsv"
    if not manifest.is_file():
        return []
    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.strip():
            continue
        name, folder, exp, *why = line.split("\t")
        if expect and exp not in expect:
            continue
        if folder.startswith(folder_prefix):
            out.append(Sample(name, folder, exp, why[0] if why else ""))
    return out


def params(**kw):
    """pytest parameters over the corpus; a single skipped case when it is absent."""
    found = samples(**kw)
    if not found:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"EDI corpus not found at {CORPUS}"))]
    return [pytest.param(s, id=f"{s.folder}/{s.name}") for s in found]
