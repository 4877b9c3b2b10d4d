"""The panel's record-flow pages: every flow with its last run, a flow's runs and records, a
record's trail; dry run, switch on/off, run now and replay for operators (CSRF-checked)."""

from __future__ import annotations

import threading
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from gateway.web import views
from gateway.web.auth import Principal, acting_operator, principal

router = APIRouter(include_in_schema=False)
Viewer = Annotated[Principal, Depends(principal)]
Actor = Annotated[Principal, Depends(acting_operator)]
RECORD_PAGE = 50


def _pages():
    from gateway.web import pages  # the templates and the layout are the panel's own

    return pages


def _flows(request: Request) -> tuple[dict[str, Any], str | None]:
    from gateway.flows.files import FlowFileError, load_flow_directory

    try:
        return load_flow_directory(views.runtime(request).settings.flows_dir), None
    except FlowFileError as exc:
        return {}, str(exc)


def _flow(request: Request, name: str):
    flows, _ = _flows(request)
    if name not in flows:
        from gateway.web.actions import NotFound

        raise NotFound(f"no flow {name!r}")
    return flows[name]


@router.get("/flows")
def flows_page(request: Request, user: Viewer) -> Response:
    from gateway.flows.status import flow_statuses

    flows, problem = _flows(request)
    rows = flow_statuses(views.runtime(request).engine, flows)
    return _pages().render(request, "flows.html", {"flows": rows, "problem": problem})


def _flow_page(request: Request, name: str, *, dry: Any = None, error: str | None = None, status: int = 200
               ) -> Response:
    from gateway.flows.status import flow_statuses
    from gateway.flows.tables import FlowRecord, FlowRun

    ff = _flow(request, name)
    engine = views.runtime(request).engine
    q = request.query_params
    key = (q.get("key") or "").strip()[:200]
    failed_only = q.get("failed") == "1"
    runs_t, rec_t = FlowRun.__table__, FlowRecord.__table__
    with engine.connect() as conn:
        runs = conn.execute(select(runs_t).where(runs_t.c.flow == name).order_by(runs_t.c.id.desc()).limit(20)).all()
        where = [rec_t.c.flow == name]
        if key:
            escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(rec_t.c.source_key.like(escaped + "%", escape="\\"))
        if failed_only:
            where.append(rec_t.c.error.is_not(None))
        records = conn.execute(select(rec_t.c.id, rec_t.c.source_key, rec_t.c.run_id, rec_t.c.error,
                                      rec_t.c.changed_at, rec_t.c.content_hash)
                               .where(*where).order_by(rec_t.c.source_key).limit(RECORD_PAGE)).all()
    status_row = flow_statuses(engine, {name: ff})[0]
    results = {r.id: orjson.loads(r.result) if r.result else None for r in runs}
    return _pages().render(request, "flow.html", {
        "f": status_row, "flow": ff.flow, "runs": runs, "results": results, "records": records, "key": key,
        "failed_only": failed_only, "dry": dry, "error": error, "page_size": RECORD_PAGE}, status=status)


@router.get("/flows/{name}")
def flow_page(request: Request, name: str, user: Viewer) -> Response:
    return _flow_page(request, name)


@router.get("/flows/{name}/records/{record_id}")
def record_page(request: Request, name: str, record_id: int, user: Viewer) -> Response:
    from gateway.flows.tables import FlowRecord, RecordEvent
    from gateway.web.actions import NotFound

    rec_t, ev_t = FlowRecord.__table__, RecordEvent.__table__
    with views.runtime(request).engine.connect() as conn:
        record = conn.execute(select(rec_t).where(rec_t.c.id == record_id, rec_t.c.flow == name)).first()
        if record is None:
            raise NotFound(f"flow {name} has no record {record_id}")
        events = conn.execute(select(ev_t).where(ev_t.c.record_id == record_id).order_by(ev_t.c.id)).all()
    return _pages().render(request, "record.html", {
        "name": name, "r": record, "raw": orjson.loads(record.raw), "events": events})


def _runner(request: Request, name: str):
    from gateway.flows import open_flow

    rt = views.runtime(request)
    return open_flow(rt.settings, rt.engine, _flow(request, name), owner=f"{rt.instance}:panel",
                     lease_seconds=rt.settings.flows_lease_seconds)


@router.post("/flows/{name}/dry-run")
def flow_dry_run(request: Request, name: str, user: Actor) -> Response:
    runner = _runner(request, name)
    try:
        result = runner.dry_run(20)
    except Exception as exc:  # noqa: BLE001 - the source or Anaplan said no: shown on the page
        return _flow_page(request, name, error=f"dry run failed: {exc}", status=502)
    finally:
        runner.source.close()
    return _flow_page(request, name, dry=result)


@router.post("/flows/{name}/switch")
def flow_switch(request: Request, name: str, user: Actor, on: Annotated[str, Form()] = "") -> Response:
    from gateway.flows.runner import set_enabled

    try:
        set_enabled(views.runtime(request).engine, _flow(request, name), on == "1", user.username)
    except ValueError as exc:
        return _flow_page(request, name, error=str(exc), status=409)
    _pages().flash(request, "ok", f"Flow {name} switched {'on' if on == '1' else 'off'}.")
    return RedirectResponse(f"/flows/{name}", status_code=303)


def _in_background(request: Request, name: str, what: str, work) -> Response:
    runner = _runner(request, name)

    def go() -> None:
        try:
            work(runner)
        except Exception:  # noqa: BLE001 - the run's own row says what happened
            pass
        finally:
            runner.source.close()

    threading.Thread(target=go, name=f"panel-flow-{name}", daemon=True).start()
    _pages().flash(request, "ok", f"Flow {name}: {what} started; the runs below show how it goes.")
    return RedirectResponse(f"/flows/{name}", status_code=303)


@router.post("/flows/{name}/run")
def flow_run_now(request: Request, name: str, user: Actor) -> Response:
    return _in_background(request, name, "a run", lambda r: r.run(actor=user.username))


@router.post("/flows/{name}/runs/{run_id}/replay")
def flow_replay(request: Request, name: str, run_id: int, user: Actor) -> Response:
    return _in_background(request, name, f"a replay of run {run_id}",
                          lambda r: r.replay(run_id, actor=user.username))


# --------------------------------------------------------------------------------------------- drift

@router.get("/drift")
def drift_page(request: Request, user: Viewer) -> Response:
    return _drift_page(request)


def _drift_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    from gateway.flows.drift import decided_drift, open_drift

    engine = views.runtime(request).engine
    rows = [(r, _loads(r.theirs), _loads(r.erp), _loads(r.proposal)) for r in open_drift(engine)]
    decided = [(r, _loads(r.proposal)) for r in decided_drift(engine)]
    return _pages().render(request, "drift.html", {"rows": rows, "decided": decided, "error": error},
                           status=status)


def _loads(text: str | None) -> Any:
    return orjson.loads(text) if text else None


@router.post("/drift/check")
def drift_check(request: Request, user: Actor) -> Response:
    from gateway.flows.drift import scan_all

    rt = views.runtime(request)
    try:
        reports = scan_all(rt.settings, rt.engine, rt.partners())
    except Exception as exc:  # noqa: BLE001 - Anaplan or the store said no: shown on the page
        return _drift_page(request, error=f"check failed: {exc}", status=502)
    found = sum(len(r.findings) for r in reports)
    _pages().flash(request, "ok", f"Checked {len(reports)} lists and partners: {found} difference(s).")
    return RedirectResponse("/drift", status_code=303)


@router.post("/drift/{drift_id}/{verdict}")
def drift_decide(request: Request, drift_id: int, verdict: str, user: Actor,
                 reason: Annotated[str, Form()] = "") -> Response:
    from gateway.flows.drift import DriftDecisionError, decide, plex_writer
    from gateway.web.actions import NotFound

    if verdict not in ("approve", "reject"):
        raise NotFound(f"no such decision {verdict!r}")
    rt = views.runtime(request)
    write = plex_writer(rt.settings.plex) if rt.settings.plex is not None else None
    try:
        state = decide(rt.engine, drift_id, approve=verdict == "approve", actor=user.username, reason=reason,
                       write=write)
    except DriftDecisionError as exc:
        return _drift_page(request, error=str(exc), status=409)
    _pages().flash(request, "ok" if state != "failed" else "error", f"Difference #{drift_id}: {state}.")
    return RedirectResponse("/drift", status_code=303)
