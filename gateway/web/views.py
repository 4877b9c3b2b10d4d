"""What a page and its API twin both show, assembled once (cached where it reads whole tables)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request
from sqlmodel import Session

from gateway.web import queries
from gateway.web.onboarding import DRAFT_SUFFIX, current_draft, folder_file, validate

# A document or interchange id in a path: a whole number the store's 64-bit ids can hold (else 422).
RowId = Annotated[int, Path(ge=1, le=queries.MAX_ID, description="the id shown in the panel")]

OVERVIEW_TTL = 10.0  # seconds: the counts group a whole table; a page view must not pay that each time
ACTIVITY_TTL = 30.0
QUEUE_TTL = 5.0  # the landing page refreshes itself every 15 s
OUTAGE_TTL = 5.0  # the banner on every page


def runtime(request: Request):
    return request.app.state.runtime


def overview(request: Request) -> dict:
    rt = runtime(request)
    cache = request.app.state.cache

    def make():
        with Session(rt.engine) as s:
            return queries.overview(s)

    data = dict(cache.get("overview", OVERVIEW_TTL, make))
    data["queue"] = work_queue(request)
    with Session(rt.engine) as s:
        data["sources"] = [x for x in queries.sources(s, rt.settings) if x["configured"]]
        data["budgets"] = queries.budgets(s, rt.settings)
    data["outages"] = outages(request)
    return data


def work_queue(request: Request) -> dict:
    """What needs a person: counts and oldest ages (cached like the overview), the newest problems (fresh)."""
    from gateway.web import queue

    rt = runtime(request)

    def make():
        with Session(rt.engine) as s:
            return queue.counts(s)

    data = dict(request.app.state.cache.get("queue", QUEUE_TTL, make))
    with Session(rt.engine) as s:
        data["problems"] = queue.newest_problems(s)
    return data


def outages(request: Request) -> list[dict]:
    """Sources and destinations failing now: since when, the last error, what to do (every page's banner)."""
    from gateway.web.outage import failing_parts

    rt = runtime(request)

    def make():
        with Session(rt.engine) as s:
            return failing_parts(s, rt.settings, started_at=request.app.state.started_at)

    return request.app.state.cache.get("outages", OUTAGE_TTL, make)


def _identifiers(p) -> list[str]:
    out = [f"X12 {i.qualifier + ':' if i.qualifier else ''}{i.id}{' / GS ' + i.group_id if i.group_id else ''}"
           for i in p.identifiers.x12]
    out += [f"EDIFACT {i.id}{':' + i.qualifier if i.qualifier else ''}" for i in p.identifiers.edifact]
    return out


def partners(request: Request) -> list[dict]:
    """Every partner in force (folder and panel), every draft, with last activity and error rate."""
    rt = runtime(request)
    cache = request.app.state.cache
    directory = rt.partners()
    with Session(rt.engine) as s:
        files = queries.partner_files(s)
    rows: dict[str, dict] = {}
    for p in directory:
        live = files.get(p.id)
        rows[p.id] = {
            "id": p.id, "name": p.name, "active": p.active, "in_force": True,
            "origin": "panel" if live is not None and live.active else "folder",
            "identifiers": _identifiers(p), "documents": list(p.documents), "versions": list(p.versions),
            "environment": p.environment, "draft": None,
        }
    for key, f in files.items():
        pid = key[: -len(DRAFT_SUFFIX)] if key.endswith(DRAFT_SUFFIX) else key
        if pid not in rows:
            v = validate(f.text, f.filename)
            m = v.mapping
            rows[pid] = {
                "id": pid, "name": m.name if m else pid, "active": False, "in_force": False, "origin": "draft",
                "identifiers": _identifiers(m) if m else [], "documents": list(m.documents) if m else [],
                "versions": list(m.versions) if m else [], "environment": m.environment if m else None, "draft": None,
            }
        if not f.active:
            rows[pid]["draft"] = {"filename": f.filename, "updated_by": f.updated_by,
                                  "updated_at": queries.as_utc(f.updated_at)}
    for pid, row in rows.items():
        def make(pid=pid):
            with Session(rt.engine) as s:
                return queries.partner_activity(s, pid)

        row.update(cache.get(f"activity:{pid}", ACTIVITY_TTL, make))
    return sorted(rows.values(), key=lambda r: r["id"])


def partner(request: Request, partner_id: str) -> dict | None:
    """One partner: what is in force, the draft if any, and the text to edit."""
    from gateway.web.onboarding import PARTNER_ID

    if not PARTNER_ID.match(partner_id or ""):
        return None
    rt = runtime(request)
    in_force = rt.partners().get(partner_id)
    with Session(rt.engine) as s:
        live = s.get(queries.PartnerFile, partner_id)
        draft = current_draft(s, partner_id)
    folder = folder_file(rt.settings.partners_dir, partner_id)
    if in_force is None and draft is None and live is None and folder is None:
        return None
    if draft is not None:
        text, filename, source = draft.text, draft.filename, "draft"
    elif live is not None:
        text, filename, source = live.text, live.filename, "panel"
    elif folder is not None:
        filename, text = folder
        source = "folder"
    else:
        text, filename, source = "", f"{partner_id}.yaml", "none"
    v = validate(text, filename) if text else None
    return {
        "id": partner_id,
        "name": in_force.name if in_force else (v.mapping.name if v and v.mapping else partner_id),
        "in_force": in_force is not None,
        "origin": "panel" if live is not None and live.active else ("folder" if folder else "none"),
        "folder_file": folder[0] if folder else None,
        "live": None if live is None or not live.active else {
            "filename": live.filename, "activated_at": queries.as_utc(live.activated_at), "updated_by": live.updated_by},
        "draft": None if draft is None else {
            "filename": draft.filename, "updated_by": draft.updated_by, "updated_at": queries.as_utc(draft.updated_at)},
        "text": text,
        "filename": filename,
        "text_source": source,
        "problems": v.problem_dicts() if v else [],
    }


def broken_files(request: Request) -> list[dict]:
    """Mapping files in the partners folder that are not in force, with their problems and how many
    interchanges wait for them (no good file claims their senders)."""
    from sqlalchemy import func, select

    from gateway.pipeline.translation import HELD

    rt = runtime(request)
    problems = rt.partner_problems()
    if not problems:
        return []
    with Session(rt.engine) as s:
        waiting = s.execute(select(func.count()).select_from(queries.Interchange).where(
            queries.Interchange.state == "received", queries.Interchange.error.startswith(HELD))).scalar_one()
    files: dict[str, dict] = {}
    for p in problems:
        entry = files.setdefault(p.source, {"file": p.source, "problems": [], "waiting": waiting})
        entry["problems"].append({"path": p.path, "message": p.message, "line": p.line})
    return list(files.values())
