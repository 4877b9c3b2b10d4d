"""The JSON API under ``/api``: the panel's data and actions for scripts (OpenAPI at ``/api/openapi.json``).

Authenticate with ``Authorization: Bearer TOKEN`` (``gateway tokens create``); a browser session
works too, with its CSRF token in an ``X-CSRF-Token`` header on POSTs. Errors are
``{"detail": "what is wrong"}`` with a 4xx status, and nothing is changed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from gateway.web import onboarding, queries, views
from gateway.web.actions import NotFound, choose_supplier, interchange_action, reprocess_one
from gateway.web.auth import Principal, acting_operator, principal

router = APIRouter(prefix="/api", tags=["api"])
metrics_router = APIRouter()

ReadUser = Annotated[Principal, Depends(principal)]
Operator = Annotated[Principal, Depends(acting_operator)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReprocessIn(_In):
    reason: str = Field(description="Why; kept in the audit trail", max_length=500)
    from_stage: str | None = Field(None, description="translate, match, or a destination (plex, anaplan); "
                                                     "default: the stage it failed at")


class BulkReprocessIn(_In):
    reason: str = Field(max_length=500)
    from_stage: str | None = None
    partner: str | None = Field(None, description="partner id, or '-' for senders no mapping file names")
    kind: str | None = None
    state: str | None = None
    stage: str | None = None
    since: str | None = Field(None, description="YYYY-MM-DD or ISO date-time (UTC)")
    until: str | None = Field(None, description="YYYY-MM-DD (inclusive) or ISO date-time (exclusive)")
    number: str | None = None
    control: str | None = None


class SupplierIn(_In):
    supplier_code: str = Field(description="The Plex supplier code chosen for this document", max_length=100)


class MappingIn(_In):
    text: str = Field(description="The mapping file (YAML)")
    filename: str | None = Field(None, description="Shown in problems; default '<id>.yaml'")


class SampleIn(_In):
    sample: str | None = Field(None, description="The sample EDI file as text")
    sample_base64: str | None = Field(None, description="...or its bytes, base64-encoded")
    sample_name: str | None = None


def _filter(request: Request) -> queries.DocumentFilter:
    return queries.DocumentFilter.parse(request.query_params)


def _redacted(request: Request, data: Any) -> Any:
    return request.app.state.redactor.data(data)


@router.get("/me", summary="Who this request authenticates as")
def me(user: ReadUser) -> dict:
    return {"username": user.username, "role": user.role, "via": user.via}


@router.get("/overview", summary="Counts by state and partner, documents per hour, failures, sources, budgets")
def overview(request: Request, user: ReadUser) -> Any:
    return _redacted(request, views.overview(request))


@router.get("/documents", summary="Documents, newest first, paged by cursor")
def documents(
    request: Request,
    user: ReadUser,
    partner: str | None = Query(None, description="partner id; '-' for unknown senders"),
    kind: str | None = Query(None, description="purchase_order or invoice"),
    state: str | None = None,
    stage: str | None = None,
    since: str | None = Query(None, description="YYYY-MM-DD or ISO date-time (UTC)"),
    until: str | None = Query(None, description="YYYY-MM-DD (inclusive) or ISO date-time"),
    number: str | None = Query(None, description="PO or invoice number; 'ABC*' searches by prefix"),
    control: str | None = Query(None, description="interchange or message control number"),
    sort: str = Query("newest", description="newest, oldest or updated"),
    limit: int = Query(queries.DEFAULT_LIMIT, description=f"1-{queries.MAX_LIMIT}"),
    after: str | None = Query(None, description="the 'next' cursor of the previous page"),
    before: str | None = Query(None, description="the 'prev' cursor of the following page"),
) -> Any:
    flt = _filter(request)
    with Session(views.runtime(request).engine) as s:
        page = queries.list_documents(s, flt, sort=sort, limit=limit, after=after, before=before)
    return _redacted(request, {"items": page.items, "next": page.next, "prev": page.prev, "sort": page.sort,
                               "limit": page.limit, "filter": flt.as_dict()})


@router.get("/documents/{doc_id}", summary="A document: segments, canonical form, findings, timeline, responses")
def document(
    request: Request,
    doc_id: views.RowId,
    user: ReadUser,
    segments_from: int | None = Query(None, ge=1, le=10**9, description=f"first raw segment shown "
                                      f"({queries.SEGMENT_PAGE} a page; default: the page of the first error)"),
    lines_from: int = Query(1, ge=1, le=10**9, description=f"first canonical line shown ({queries.LINE_PAGE} a page)"),
) -> Any:
    page = queries.DetailPage(segments_from=segments_from, lines_from=lines_from)
    with Session(views.runtime(request).engine) as s:
        detail = queries.document_detail(s, doc_id, page)
    if detail is None:
        raise NotFound(f"document {doc_id}: no such document")
    return _redacted(request, detail)


@router.get("/documents/{doc_id}/status", summary="A document's state and stage (cheap, for polling)")
def document_status(request: Request, doc_id: views.RowId, user: ReadUser) -> Any:
    with Session(views.runtime(request).engine) as s:
        doc = s.get(queries.Document, doc_id)
        if doc is None:
            raise NotFound(f"document {doc_id}: no such document")
        return {"id": doc.id, "state": doc.state, "stage": doc.stage, "error": _redacted(request, doc.error),
                "updated_at": queries.as_utc(doc.updated_at)}


@router.post("/documents/{doc_id}/reprocess", summary="Send a document back through the pipeline")
def reprocess(request: Request, doc_id: views.RowId, body: ReprocessIn, user: Operator) -> Any:
    reprocess_one(views.runtime(request).engine, doc_id, actor=user.username, reason=body.reason,
                  from_stage=body.from_stage)
    request.app.state.cache.clear()
    return document_status(request, doc_id, user)


class InterchangeActionIn(_In):
    reason: str = Field(description="Why; kept in the audit trail", max_length=500)


@router.post("/interchanges/{interchange_id}/force", summary="Push a duplicate interchange through after all")
def force_interchange(request: Request, interchange_id: views.RowId, body: InterchangeActionIn, user: Operator) -> Any:
    interchange_action(views.runtime(request).engine, interchange_id, "force", actor=user.username, reason=body.reason)
    request.app.state.cache.clear()
    return _interchange_status(request, interchange_id)


@router.post("/interchanges/{interchange_id}/retry", summary="Split a failed interchange (no documents) again")
def retry_interchange(request: Request, interchange_id: views.RowId, body: InterchangeActionIn, user: Operator) -> Any:
    interchange_action(views.runtime(request).engine, interchange_id, "retry", actor=user.username, reason=body.reason)
    request.app.state.cache.clear()
    return _interchange_status(request, interchange_id)


def _interchange_status(request: Request, interchange_id: int) -> dict:
    from gateway.store.models import Interchange

    with Session(views.runtime(request).engine) as s:
        ich = s.get(Interchange, interchange_id)
        return {"id": ich.id, "state": ich.state, "forced": ich.forced, "error": ich.error}


@router.post("/documents/{doc_id}/supplier", summary="Choose the Plex supplier of a needs-attention document")
def supplier(request: Request, doc_id: views.RowId, body: SupplierIn, user: Operator) -> Any:
    choose_supplier(views.runtime(request).engine, doc_id, body.supplier_code, actor=user.username)
    request.app.state.cache.clear()
    return document_status(request, doc_id, user)


@router.post("/reprocess", status_code=202, summary="Reprocess every document a filter selects (background job)")
def bulk_reprocess(request: Request, body: BulkReprocessIn, user: Operator) -> Any:
    flt = queries.DocumentFilter.parse(body.model_dump(exclude={"reason", "from_stage"}))
    job = request.app.state.jobs.start(flt, actor=user.username, reason=body.reason, from_stage=body.from_stage)
    return job.as_dict()


@router.get("/jobs/{job_id}", summary="A bulk reprocess job's progress")
def job(request: Request, job_id: str, user: ReadUser) -> Any:
    j = request.app.state.jobs.get(job_id)
    if j is None:
        raise NotFound(f"job {job_id}: no such job in this panel process")
    return _redacted(request, j.as_dict())


@router.get("/acknowledgments", summary="Acknowledgments built, newest first: verdict, sent or why not")
def acknowledgments(
    request: Request,
    user: ReadUser,
    partner: str | None = Query(None, description="partner id; '-' for unknown senders"),
    status: str | None = Query(None, description="accepted, accepted_with_errors, partially_accepted or rejected"),
    sent: str | None = Query(None, description="sent or not_sent"),
    kind: str | None = Query(None, description="997, 999, TA1 or CONTRL"),
    since: str | None = Query(None, description="YYYY-MM-DD or ISO date-time (UTC): received from"),
    until: str | None = Query(None, description="YYYY-MM-DD (inclusive) or ISO date-time"),
    limit: int = Query(queries.DEFAULT_LIMIT, description=f"1-{queries.MAX_LIMIT}"),
    after: str | None = Query(None, description="the 'next' cursor of the previous page"),
) -> Any:
    from gateway.web import acks

    rt = views.runtime(request)
    flt = acks.AckFilter.parse(request.query_params)
    with Session(rt.engine) as s:
        page = acks.list_acks(s, flt, partners=rt.partners(), settings=rt.settings, limit=limit, after=after)
    return _redacted(request, page)


@router.get("/sources", summary="Every source: last poll, last success, last error")
def sources(request: Request, user: ReadUser) -> Any:
    rt = views.runtime(request)
    with Session(rt.engine) as s:
        return _redacted(request, queries.sources(s, rt.settings))


@router.get("/readiness", summary="Which sources and destinations are failing, since when, and why")
def readiness(request: Request, user: ReadUser) -> Any:
    rt = views.runtime(request)
    with Session(rt.engine) as s:
        report = queries.readiness(s, rt.settings)
        report["destinations"] = queries.destinations(s, rt.settings)
    return _redacted(request, report)


@router.get("/partners", summary="Partners in force and drafts, with last activity and error rate")
def partners(request: Request, user: ReadUser) -> Any:
    return views.partners(request)


@router.get("/partners-broken", summary="Mapping files not in force: their problems and the interchanges waiting")
def partners_broken(request: Request, user: ReadUser) -> Any:
    return views.broken_files(request)


@router.get("/partners/{partner_id}", summary="A partner's mapping file: in force, draft, problems")
def partner(request: Request, partner_id: str, user: ReadUser) -> Any:
    data = views.partner(request, partner_id)
    if data is None:
        raise NotFound(f"partner {partner_id}: no such partner or draft")
    return data


@router.post("/partners/validate", summary="Validate a mapping file (nothing is stored)")
def validate(request: Request, body: MappingIn, user: ReadUser) -> Any:
    filename = onboarding.check_filename(body.filename)
    v = onboarding.validate(body.text, filename)
    return {"ok": v.ok, "partner": v.mapping.id if v.mapping else None, "problems": v.problem_dicts()}


@router.post("/partners", summary="Save a mapping file as a draft (refused with its problems if invalid)")
def save_partner(request: Request, body: MappingIn, user: Operator) -> Any:
    pid, v = onboarding.save_draft(views.runtime(request).engine, body.text, body.filename or "", actor=user.username)
    if not v.ok:
        return JSONResponse({"detail": "the mapping file has problems; nothing was saved",
                             "problems": v.problem_dicts()}, status_code=422)
    return {"ok": True, "partner": pid, "draft": True}


@router.post("/partners/{partner_id}/dry-run", summary="Translate a sample EDI file with the partner's draft")
def dry_run(request: Request, partner_id: str, body: SampleIn, user: Operator) -> Any:
    if (body.sample is None) == (body.sample_base64 is None):
        raise queries.BadRequest("sample: give the sample as 'sample' (text) or 'sample_base64', one of them")
    if body.sample is not None:
        data = body.sample.encode("utf-8")
    else:
        try:
            data = base64.b64decode(body.sample_base64, validate=True)
        except (binascii.Error, ValueError):
            raise queries.BadRequest("sample_base64: not valid base64") from None
    try:
        result = onboarding.dry_run(views.runtime(request), partner_id, data, body.sample_name or "sample.edi",
                                    actor=user.username)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    return result


@router.post("/partners/{partner_id}/activate", summary="Put the partner's draft in force (after a dry run)")
def activate(request: Request, partner_id: str, user: Operator) -> Any:
    try:
        row = onboarding.activate(views.runtime(request), partner_id, actor=user.username)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    except PermissionError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=409)
    request.app.state.cache.clear()
    return {"ok": True, "partner": row.partner_id, "filename": row.filename,
            "activated_at": queries.as_utc(row.activated_at)}


@router.post("/partners/{partner_id}/discard", summary="Throw a partner's draft away")
def discard(request: Request, partner_id: str, user: Operator) -> Any:
    try:
        onboarding.discard_draft(views.runtime(request).engine, partner_id, actor=user.username)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    return {"ok": True}


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, user: ReadUser) -> Any:
    app = request.app
    if app.openapi_schema is None:
        app.openapi_schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                         routes=app.routes)
    return app.openapi_schema


SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EDI gateway API</title>
<link rel="stylesheet" href="/api/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/api/docs/assets/swagger-ui-bundle.js"></script>
<script src="/static/api-docs.js"></script></body></html>
"""


@router.get("/docs", include_in_schema=False)
def docs(request: Request, user: ReadUser) -> Any:
    """Swagger UI, served from the swagger-ui-bundle package (``web.api_docs = false`` turns it off)."""
    if not views.runtime(request).settings.web.api_docs:
        raise NotFound("/api/docs: the API page is turned off (web.api_docs); the schema is at /api/openapi.json")
    return HTMLResponse(SWAGGER_PAGE)


@metrics_router.get("/metrics", include_in_schema=False)
def metrics(request: Request, user: ReadUser) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)

