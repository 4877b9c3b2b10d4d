"""The server-rendered pages (Jinja2). Every page needs a session; every form posts a CSRF token."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlmodel import Session

from gateway.pipeline.machine import RESTING, STATES
from gateway.web import onboarding, queries, views
from gateway.web.actions import Conflict, NotFound, choose_supplier, interchange_action, reprocess_one
from gateway.web.auth import (
    Principal,
    acting_operator,
    authenticate,
    csrf,
    csrf_token,
    identify,
    operator,
    principal,
    sign_in,
    sign_out,
)
from gateway.web.queries import BadRequest
from gateway.web.wording import plain_markup
from gateway.web.security import same_secret
from gateway.web.throttle import client_key, login_name

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")

Viewer = Annotated[Principal, Depends(principal)]
Actor = Annotated[Principal, Depends(acting_operator)]
STAGES = list(queries.STAGES)
RESTING_STATES = sorted(s.value for s in RESTING)


# --------------------------------------------------------------------------------------------- template helpers

def _dt(value: datetime | None, seconds: bool = True) -> str:
    if value is None:
        return "—"
    value = queries.as_utc(value)
    return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + " UTC"


def _iso(value: datetime) -> str:
    return queries.as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(value: datetime | None, seconds: bool = True) -> Markup | str:
    """A time people read in their own zone: UTC in the page, turned local by app.js, UTC on hover."""
    if value is None:
        return "—"
    text = _dt(value, seconds)
    return Markup('<time datetime="{}" data-local="{}" title="{}">{}</time>').format(
        _iso(value), "s" if seconds else "m", text, text)


def _ago(value: datetime | None) -> Markup | str:
    if value is None:
        return "never"
    return Markup('<time datetime="{}" title="{}">{}</time>').format(_iso(value), _dt(value), _ago_text(value))


def _ago_text(value: datetime) -> str:
    delta = (datetime.now(timezone.utc) - queries.as_utc(value)).total_seconds()
    future = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = f"{int(delta)} s"
    elif delta < 3600:
        text = f"{int(delta // 60)} min"
    elif delta < 86400:
        text = f"{int(delta // 3600)} h"
    else:
        text = f"{int(delta // 86400)} d"
    return f"in {text}" if future else f"{text} ago"


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


templates.env.filters.update(dt=_dt, when=_when, ago=_ago, ago_text=_ago_text, pretty=_pretty, pct=_pct)
templates.env.globals.update(STATES=STATES, STAGES=STAGES, KINDS=queries.KINDS, SORTS=list(queries.SORTS),
                             RESTING_STATES=RESTING_STATES, urlencode=urlencode, plain_error=plain_markup)


def flash(request: Request, kind: str, text: str) -> None:
    request.session["flash"] = [*request.session.get("flash", []), [kind, text]][-5:]


def render(request: Request, name: str, context: dict | None = None, status: int = 200, *,
           with_csrf: bool = True) -> Response:
    try:
        user = identify(request)
    except Exception:  # noqa: BLE001 - a bad Authorization header on an error page: show it signed out
        user = None
    ctx = dict(context or {})
    redactor = request.app.state.redactor
    ctx.setdefault("outages", _outages(request) if user else [])
    ctx.update(
        user=user,
        csrf=csrf_token(request) if with_csrf else None,
        # A page's own refresh in the background must not eat a message meant for the next page.
        flashes=request.session.pop("flash", []) if user and not request.headers.get("x-panel-refresh") else [],
        path=request.url.path,
        redact=redactor.text,
        redact_data=redactor.data,
    )
    return templates.TemplateResponse(request, name, ctx, status_code=status)


def _outages(request: Request) -> list[dict]:
    try:
        return views.outages(request)
    except Exception:  # noqa: BLE001 - the banner must never take a page down with it
        return []


def render_error(request: Request, status: int, message: str) -> Response:
    # No CSRF token on an error page: it may answer a request that was not the panel's own.
    return render(request, "error.html", {"status": status, "message": message}, status=status, with_csrf=False)


def _back(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# --------------------------------------------------------------------------------------------- sign-in

@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    if identify(request) is not None:
        return _back(_safe_next(next))
    return render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login")
def login(request: Request, username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
          csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:
    target = _safe_next(next)
    if not same_secret(csrf_token, request.session.get("csrf")):
        return render(request, "login.html", {"next": target, "error": "The sign-in form expired: try again."},
                      status=403)
    address = client_key(request.client.host if request.client else None)
    name = login_name(username)
    wait = request.app.state.throttle.reserve(name, address)
    if wait > 0:
        return render(request, "login.html", {
            "next": target, "error": f"Too many failed sign-ins. Try again in {int(wait // 60) + 1} min."}, status=429)
    user = authenticate(views.runtime(request).engine, name, password) if password else None
    if user is None:
        return render(request, "login.html", {"next": target, "error": "Wrong user name or password."}, status=401)
    request.app.state.throttle.succeeded(name, address)
    sign_in(request, user, address)
    return _back(target)


@router.post("/logout")
def logout(request: Request, user: Viewer, _: Annotated[None, Depends(csrf)]) -> Response:
    sign_out(request)
    return _back("/login")


# --------------------------------------------------------------------------------------------- overview

@router.get("/")
def overview_page(request: Request, user: Viewer) -> Response:
    data = views.overview(request)
    peak = max((h["count"] for h in data["per_hour"]), default=0)
    every = request.query_params.get("refresh", "")
    refresh = min(max(int(every), 2), 600) if every.isascii() and every.isdigit() and len(every) < 4 else 15
    return render(request, "overview.html", {"o": data, "peak": peak, "refresh": refresh})


@router.get("/sources")
def sources_page(request: Request, user: Viewer) -> Response:
    from gateway.alerts import recent_alerts

    rt = views.runtime(request)
    with Session(rt.engine) as s:
        rows = queries.sources(s, rt.settings)
        outbound = queries.destinations(s, rt.settings)
    alerts = rt.settings.alerts
    channels = [(c.name, "e-mail" if hasattr(c, "recipients") else f"webhook ({c.format})") for c in alerts.channels] \
        if alerts else []
    return render(request, "sources.html", {"sources": rows, "destinations": outbound, "alerts": alerts,
                                            "channels": channels, "broken": views.broken_files(request),
                                            "recent_alerts": recent_alerts(rt.engine, 10) if alerts else []})


@router.post("/alerts/test")
def alerts_test(request: Request, user: Actor) -> Response:
    """Send a test alert through every configured channel; say on the sources page what each did."""
    from gateway.alerts import send_test

    rt = views.runtime(request)
    if rt.settings.alerts is None:
        flash(request, "error", "Alerts are not configured: add an [alerts] section to the settings file.")
        return _back("/sources")
    for r in send_test(rt.settings.alerts, actor=user.username, engine=rt.engine):
        flash(request, "ok" if r.ok else "error", f"Test alert, {r.channel}: {r.detail}")
    return _back("/sources")


# --------------------------------------------------------------------------------------------- acknowledgments

@router.get("/acknowledgments")
def acknowledgments_page(request: Request, user: Viewer) -> Response:
    from gateway.web import acks

    q = request.query_params
    rt = views.runtime(request)
    form = {k: q.get(k, "") for k in acks.FILTER_KEYS}
    keep = {k: v for k, v in form.items() if v}
    page, error = None, None
    try:
        flt = acks.AckFilter.parse(q)
        with Session(rt.engine) as s:
            page = acks.list_acks(s, flt, partners=rt.partners(), settings=rt.settings, after=q.get("after") or None)
    except BadRequest as exc:
        error = str(exc)
    return render(request, "acknowledgments.html", {
        "page": page, "error": error, "form": form, "keep": keep, "filtered": bool(keep), "after": q.get("after"),
        "partners": sorted(p.id for p in rt.partners()), "STATUS_WORDS": acks.STATUS_WORDS, "ACK_KINDS": acks.ACK_KINDS,
    }, status=400 if error else 200)


@router.get("/acknowledgments/{interchange_id}")
def acknowledgment_download(request: Request, interchange_id: int, user: Viewer) -> Response:
    """The acknowledgment as built (the file the partner gets), to save."""
    from gateway.acks_outbound import ack_file_name
    from gateway.store.models import Interchange

    with Session(views.runtime(request).engine) as s:
        ich = s.get(Interchange, interchange_id)
        if ich is None or not ich.ack:
            raise NotFound(f"interchange {interchange_id}: no acknowledgment")
        return download(ich.ack, ack_file_name(ich.id, ich.ack_kind, ich.control_number), "text/plain; charset=utf-8")


# --------------------------------------------------------------------------------------------- documents

@router.get("/documents")
def documents_page(request: Request, user: Viewer) -> Response:
    q = request.query_params
    error = None
    page = None
    flt = queries.DocumentFilter()
    sort = q.get("sort") or "newest"
    try:
        flt = queries.DocumentFilter.parse(q)
        limit_text = q.get("limit") or ""
        if limit_text and not re.fullmatch("[0-9]{1,4}", limit_text):  # not isdigit(): "²" is a digit
            raise BadRequest("limit: must be a whole number")
        limit = int(limit_text) if limit_text else queries.DEFAULT_LIMIT
        with Session(views.runtime(request).engine) as s:
            page = queries.list_documents(s, flt, sort=sort, limit=limit, after=q.get("after") or None,
                                          before=q.get("before") or None)
    except BadRequest as exc:
        error = str(exc)
    raw = {k: q.get(k, "") for k in queries.FILTER_KEYS}
    keep = {k: v for k, v in raw.items() if v}
    if sort != "newest":
        keep["sort"] = sort
    if q.get("limit"):
        keep["limit"] = q.get("limit")
    partners = sorted(p.id for p in views.runtime(request).partners())
    return render(request, "documents.html", {
        "page": page, "error": error, "form": raw, "sort": sort, "keep": keep, "partners": partners,
        "filtered": not flt.is_empty(), "limit": q.get("limit") or "",
    }, status=400 if error else 200)


def _document_page(request: Request, doc_id: views.RowId, *, error: str | None = None, status: int = 200,
                   form: dict | None = None) -> Response:
    page = queries.DetailPage.parse(request.query_params)
    with Session(views.runtime(request).engine) as s:
        d = queries.document_detail(s, doc_id, page)
    if d is None:
        raise NotFound(f"document {doc_id}: no such document")
    d["ack_note"] = _ack_note(request, d["interchange_id"])
    return render(request, "document.html", {"d": d, "error": error, "form": form or {},
                                             "working": d["state"] not in RESTING_STATES}, status=status)


def _ack_note(request: Request, interchange_id: int) -> dict | None:
    """The interchange's acknowledgment: its verdict, and sent or why not (as on the acknowledgments page)."""
    from gateway.web.acks import STATUS_WORDS, delivery_note
    from gateway.store.models import Interchange

    rt = views.runtime(request)
    with Session(rt.engine) as s:
        ich = s.get(Interchange, interchange_id)
        if ich is None or not ich.ack:
            return None
        status = ich.ack_status
        if status is None:
            from gateway.alerts.rules import ack_verdict

            status = ack_verdict(ich.ack).status
        return {"status": status, "words": STATUS_WORDS.get(status, status),
                "delivery": delivery_note(ich, rt.partners(), rt.settings)}


@router.get("/documents/{doc_id}")
def document_page(request: Request, doc_id: views.RowId, user: Viewer) -> Response:
    return _document_page(request, doc_id)


@router.post("/documents/{doc_id}/reprocess")
def document_reprocess(request: Request, doc_id: views.RowId, user: Actor, reason: Annotated[str, Form()] = "",
                       from_stage: Annotated[str, Form()] = "") -> Response:
    try:
        reprocess_one(views.runtime(request).engine, doc_id, actor=user.username, reason=reason,
                      from_stage=from_stage or None)
    except BadRequest as exc:
        return _document_page(request, doc_id, error=str(exc), status=400, form={"reason": reason})
    except Conflict as exc:
        return _document_page(request, doc_id, error=str(exc), status=409, form={"reason": reason})
    request.app.state.cache.clear()
    flash(request, "ok", f"Document {doc_id} sent back for processing" + (f" from {from_stage}" if from_stage else "")
          + ".")
    return _back(f"/documents/{doc_id}")


@router.get("/interchanges/{interchange_id}")
def interchange_page(request: Request, interchange_id: int, user: Viewer) -> Response:
    """A file as received: segments, findings, what forcing it through would give, its difference to the
    file it repeats; operators force it or split it again from here, with a reason."""
    from gateway.web.held import interchange_view

    rt = views.runtime(request)
    with Session(rt.engine) as s:
        i = interchange_view(s, rt, interchange_id)
    if i is None:
        raise NotFound(f"interchange {interchange_id}: no such file")
    return render(request, "interchange.html", {"i": i})


@router.get("/interchanges/{interchange_id}/raw")
def interchange_raw(request: Request, interchange_id: int, user: Viewer) -> Response:
    """The file exactly as received (the bytes are immutable)."""
    from gateway.store.models import Interchange, RawPayload

    with Session(views.runtime(request).engine) as s:
        ich, raw = s.get(Interchange, interchange_id), s.get(RawPayload, interchange_id)
        if ich is None or raw is None:
            raise NotFound(f"interchange {interchange_id}: no such file")
        return download(raw.data, ich.remote_name or f"interchange-{interchange_id}.edi", "application/octet-stream")


def download(data: bytes | str, filename: str, media_type: str) -> Response:
    """A file to save: the name made safe for the header, never rendered by the browser."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename.rsplit("/", 1)[-1])[:120] or "download"
    body = data.encode("utf-8") if isinstance(data, str) else data
    return Response(body, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{safe}"'})


@router.post("/interchanges/{interchange_id}/{action}")
def interchange_post(request: Request, interchange_id: views.RowId, action: str, user: Actor,
                     reason: Annotated[str, Form()] = "") -> Response:
    """Force a duplicate file through, or split a failed one again (errors render as 4xx pages)."""
    interchange_action(views.runtime(request).engine, interchange_id, action, actor=user.username, reason=reason)
    request.app.state.cache.clear()
    done = "forced through" if action == "force" else "sent back to be split again"
    flash(request, "ok", f"File {interchange_id} {done}.")
    return _back(f"/interchanges/{interchange_id}")


@router.post("/documents/{doc_id}/supplier")
def document_supplier(request: Request, doc_id: views.RowId, user: Actor,
                      supplier_code: Annotated[str, Form()] = "") -> Response:
    try:
        choose_supplier(views.runtime(request).engine, doc_id, supplier_code, actor=user.username)
    except BadRequest as exc:
        return _document_page(request, doc_id, error=str(exc), status=400)
    except Conflict as exc:
        return _document_page(request, doc_id, error=str(exc), status=409)
    request.app.state.cache.clear()
    flash(request, "ok", f"Supplier {supplier_code} chosen for document {doc_id}.")
    return _back(f"/documents/{doc_id}")


# --------------------------------------------------------------------------------------------- bulk

@router.get("/bulk")
def bulk_page(request: Request, user: Annotated[Principal, Depends(operator)]) -> Response:
    error = None
    count = capped = None
    flt = queries.DocumentFilter()
    try:
        flt = queries.DocumentFilter.parse(request.query_params)
        if flt.is_empty():
            error = "Choose at least one filter on the documents page first; reprocessing every document is not offered."
        else:
            with Session(views.runtime(request).engine) as s:
                count, capped = queries.count_capped(s, flt)
    except BadRequest as exc:
        error = str(exc)
    return render(request, "bulk.html", {"flt": flt, "params": flt.params(), "count": count, "capped": capped,
                                         "error": error, "reason": ""}, status=400 if error else 200)


@router.post("/bulk")
async def bulk_start(request: Request, user: Actor) -> Response:
    form = await request.form()
    values = {k: form.get(k) for k in queries.FILTER_KEYS}
    reason = str(form.get("reason") or "")
    from_stage = str(form.get("from_stage") or "") or None
    try:
        flt = queries.DocumentFilter.parse(values)
        job = request.app.state.jobs.start(flt, actor=user.username, reason=reason, from_stage=from_stage)
    except BadRequest as exc:
        try:
            flt = queries.DocumentFilter.parse(values)
        except BadRequest:
            flt = queries.DocumentFilter()
        return render(request, "bulk.html", {"flt": flt, "params": flt.params(), "count": None, "capped": None,
                                             "error": str(exc), "reason": reason}, status=400)
    request.app.state.cache.clear()
    return _back(f"/jobs/{job.id}")


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, user: Viewer) -> Response:
    job = request.app.state.jobs.get(job_id)
    if job is None:
        raise NotFound(f"job {job_id}: no such job in this panel process")
    data = job.as_dict()
    return render(request, "job.html", {"job": data, "selection": {k: v for k, v in data["selection"].items() if v}})


# --------------------------------------------------------------------------------------------- partners

@router.get("/partners")
def partners_page(request: Request, user: Viewer) -> Response:
    return render(request, "partners.html", {"partners": views.partners(request), "broken": views.broken_files(request)})


def _editor(request: Request, *, partner: dict | None, text: str, filename: str, problems=None, status: int = 200,
            dry: dict | None = None, error: str | None = None) -> Response:
    lines, loose = onboarding.annotated_lines(text, problems or [])
    return render(request, "partner.html", {
        "p": partner, "text": text, "filename": filename, "problems": problems or [], "lines": lines, "loose": loose,
        "dry": dry, "error": error,
    }, status=status)


@router.get("/partners/new")
def partner_new(request: Request, user: Annotated[Principal, Depends(operator)]) -> Response:
    return _editor(request, partner=None, text="", filename="")


@router.get("/partners/{partner_id}")
def partner_page(request: Request, partner_id: str, user: Viewer) -> Response:
    p = views.partner(request, partner_id)
    if p is None:
        raise NotFound(f"partner {partner_id}: no such partner or draft")
    v = onboarding.validate(p["text"], p["filename"]) if p["text"] else None
    return _editor(request, partner=p, text=p["text"], filename=p["filename"], problems=v.problems if v else [])


@router.post("/partners")
def partner_save(request: Request, user: Actor, text: Annotated[str, Form()] = "",
                 filename: Annotated[str, Form()] = "", file: Annotated[UploadFile | None, File()] = None) -> Response:
    try:
        if file is not None and file.filename:
            text = onboarding.decode_upload(file.filename, file.file.read(onboarding.MAX_MAPPING_BYTES + 1),
                                            onboarding.MAX_MAPPING_BYTES)
            filename = file.filename
        filename = onboarding.check_filename(filename) if filename.strip() else ""
    except BadRequest as exc:
        return _editor(request, partner=None, text=text, filename=filename, status=400, error=str(exc))
    pid, v = onboarding.save_draft(views.runtime(request).engine, text, filename, actor=user.username)
    if not v.ok:
        return _editor(request, partner=None, text=text, filename=filename, problems=v.problems, status=422,
                       error=f"{len(v.problems)} problem(s) in the mapping file; nothing was saved.")
    request.app.state.cache.clear()
    flash(request, "ok", f"Draft of {pid} saved. Try it on a sample file, then activate it.")
    return _back(f"/partners/{pid}")


@router.post("/partners/{partner_id}/dry-run")
def partner_dry_run(request: Request, partner_id: str, user: Actor, sample_text: Annotated[str, Form()] = "",
                    sample: Annotated[UploadFile | None, File()] = None) -> Response:
    p = views.partner(request, partner_id)
    if p is None:
        raise NotFound(f"partner {partner_id}: no such partner or draft")
    name = "sample.edi"
    if sample is not None and sample.filename:
        data = sample.file.read(onboarding.MAX_SAMPLE_BYTES + 1)
        name = sample.filename
    else:
        data = sample_text.encode("utf-8")
    try:
        dry = onboarding.dry_run(views.runtime(request), partner_id, data, name, actor=user.username)
    except BadRequest as exc:
        return _editor(request, partner=p, text=p["text"], filename=p["filename"], status=400, error=str(exc))
    except LookupError as exc:
        return _editor(request, partner=p, text=p["text"], filename=p["filename"], status=409, error=str(exc))
    return _editor(request, partner=p, text=p["text"], filename=p["filename"], dry=dry)


@router.post("/partners/{partner_id}/activate")
def partner_activate(request: Request, partner_id: str, user: Actor) -> Response:
    p = views.partner(request, partner_id)
    if p is None:
        raise NotFound(f"partner {partner_id}: no such partner or draft")
    try:
        onboarding.activate(views.runtime(request), partner_id, actor=user.username)
    except LookupError as exc:
        return _editor(request, partner=p, text=p["text"], filename=p["filename"], status=409, error=str(exc))
    except PermissionError as exc:
        return _editor(request, partner=p, text=p["text"], filename=p["filename"], status=409, error=str(exc))
    except BadRequest as exc:
        return _editor(request, partner=p, text=p["text"], filename=p["filename"], status=400, error=str(exc))
    request.app.state.cache.clear()
    flash(request, "ok", f"{partner_id} is live: new documents from this partner use the activated mapping file.")
    return _back(f"/partners/{partner_id}")


@router.post("/partners/{partner_id}/discard")
def partner_discard(request: Request, partner_id: str, user: Actor) -> Response:
    try:
        onboarding.discard_draft(views.runtime(request).engine, partner_id, actor=user.username)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    request.app.state.cache.clear()
    flash(request, "ok", f"Draft of {partner_id} discarded.")
    return _back("/partners")

