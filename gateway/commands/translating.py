"""``gateway translate`` and ``gateway validate``: files streamed through the translators.

A file is read in 1 MB chunks; each document's JSON is made (orjson) as its set is read and
spooled until its interchange's verdict is known (a broken envelope fails the documents already
read), so memory is bounded by the largest set, not the file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from translators.acks import build_acknowledgment
from translators.envelope import CHUNK
from translators.findings import Finding
from translators.mapping import PartnerDirectory
from translators.model import GroupInfo
from translators.translate import DocumentResult, InterchangeResult, iter_translate, nothing_found

SPOOL_IN_MEMORY = 8 << 20  # documents of one interchange kept in memory up to this, then on disk


def chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while True:
        block = handle.read(CHUNK)
        if not block:
            return
        yield block


def translate_file(path: Path, directory: PartnerDirectory, out: IO[bytes], first: list[bool],
                   say: Callable[[str], None]) -> bool:
    """Write the file's canonical documents to ``out`` (JSON array items); say every error.
    ``first`` is [True] until the first item is written. True when the file translated whole."""
    ok = True
    documents = 0
    last: InterchangeResult | None = None
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    pending: list[tuple[GroupInfo | None, int, int, str]] = []  # group, spool start, end, status
    try:
        with path.open("rb") as handle:
            for ev in iter_translate(chunks(handle), directory):
                if isinstance(ev, DocumentResult):
                    documents += 1
                    for f in ev.errors:
                        ok = False
                        say(f.describe(str(path)))
                    start = spool.tell()
                    if ev.status == "translated":
                        spool.write(orjson.dumps(ev.document, option=orjson.OPT_INDENT_2))
                    pending.append((ev.transaction_set.group, start, spool.tell(), ev.status))
                elif isinstance(ev, InterchangeResult):
                    last = ev
                    said: set[int] = set()
                    for f in ev.findings:
                        if f.is_error:
                            ok = False
                            said.add(id(f))
                            say(f.describe(str(path)))
                    _flush(spool, pending, ev, out, first)
                else:
                    if ev.is_error:
                        ok = False
                        say(ev.describe(str(path)))
            _flush(spool, pending, None, out, first)
    finally:
        spool.close()
    if not documents and ok:
        say(nothing_found([last] if last else []).describe(str(path)))
        ok = False
    return ok


def _flush(spool, pending: list[tuple[GroupInfo | None, int, int, str]], verdict: InterchangeResult | None,
           out: IO[bytes], first: list[bool]) -> None:
    """Write the spooled documents whose envelope holds (all of them when ``verdict`` is None)."""
    spool.seek(0)
    for group, start, end, status in pending:
        if status != "translated" or (verdict is not None and verdict.rejection_in(group) is not None):
            continue
        spool.seek(start)
        out.write(b"\n" if first[0] else b",\n")
        first[0] = False
        out.write(spool.read(end - start))
    pending.clear()
    spool.seek(0)
    spool.truncate()


def validate_file(path: Path, directory: PartnerDirectory, now: datetime) -> dict[str, Any]:
    """Every finding and the acknowledgment per interchange, streamed (documents are let go)."""
    report: dict[str, Any] = {"file": str(path), "ok": True, "documents": [], "findings": [], "acknowledgments": []}
    findings: list[Finding] = []
    last: InterchangeResult | None = None
    pending: list[tuple[GroupInfo | None, dict[str, Any]]] = []
    n = 0
    with path.open("rb") as handle:
        for ev in iter_translate(chunks(handle), directory):
            if isinstance(ev, DocumentResult):
                entry = {"type": ev.type, "control": ev.control, "status": ev.status, "partner": ev.partner}
                report["documents"].append(entry)
                pending.append((ev.transaction_set.group, entry))
                findings += ev.findings
            elif isinstance(ev, InterchangeResult):
                last = ev
                n += 1
                findings += ev.findings
                for group, entry in pending:
                    if entry["status"] == "translated" and ev.rejection_in(group) is not None:
                        entry["status"] = "failed"
                pending.clear()
                ack = build_acknowledgment(ev.summary, now=now, interchange_control=f"{n:09d}", group_control=str(n))
                if ack is not None:
                    report["acknowledgments"].append({"kind": ack.kind, "text": ack.text})
            else:
                findings.append(ev)
    if not report["documents"] and not any(f.is_error for f in findings):
        findings.append(nothing_found([last] if last else []))
    findings.sort(key=lambda f: f.segment_index or 0)
    report["ok"] = not any(f.is_error for f in findings) and all(d["status"] != "failed" for d in report["documents"])
    report["findings"] = findings
    return report


