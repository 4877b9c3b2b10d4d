"""The ledger destination: each delivery appended to ``[destinations.ledger] path`` as one JSON line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from gateway.integrations.base import Check, DeliveryItem, Outcome


class LedgerDestination:
    name: ClassVar[str] = "ledger"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def configure(cls, runtime: Any) -> LedgerDestination | None:
        settings = runtime.settings.destinations.get(cls.name)
        return None if settings is None else cls(Path(settings["path"]))

    def deliver(self, items: Sequence[DeliveryItem]) -> dict[int, Outcome]:
        out = {}
        with self.path.open("a", encoding="utf-8") as fh:
            for item in items:
                number = item.canonical.get("invoice_number") or item.canonical.get("po_number")
                if not number:
                    out[item.delivery_id] = Outcome.fail("nothing to write: no business number", code="ledger.empty")
                    continue
                fh.write(json.dumps({"document": item.document_id, "kind": item.kind, "number": number,
                                     "partner": item.partner}) + "\n")
                out[item.delivery_id] = Outcome.ok({"ledger": str(self.path)}, reference=f"{item.kind}:{number}")
        return out

    def check(self) -> list[Check]:
        return [Check(f"ledger {self.path}", self.path.parent.is_dir())]

    def close(self) -> None:
        pass
