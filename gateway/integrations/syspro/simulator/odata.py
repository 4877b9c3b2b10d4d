"""The SYSPRO OData 4 service (specs/syspro.md B, E.2): service document, ``$metadata``, entity sets.

Basic auth on every request against the operators the service loaded at start-up; ``$filter``,
``$select``, ``$orderby``, ``$top``, ``$skip``, ``$count``; pages capped at ``page_size`` with an
``@odata.nextLink`` (``paging = "nextlink"``) or a hard cap that refuses a larger ``$top``
(``"hardcap"``). ``InvWarehouse`` answers a ``TimeStamp gt binary'...'`` filter and key-ordered
pages without generating the rows it skips.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.integrations.syspro.simulator.odata_filter import FilterError, parse_filter, parse_orderby
from gateway.integrations.syspro.simulator.tables import SCHEMAS, GeneratedWarehouse, Table, project

if TYPE_CHECKING:
    from gateway.integrations.syspro.simulator.app import SysproSim

_EDM = {"s": "Edm.String", "d": "Edm.Decimal", "t": "Edm.DateTimeOffset", "i": "Edm.Int32", "b": "Edm.Binary"}
_NAMESPACE = "SYSPRO.OData"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": {"code": "", "message": message}}), status_code=status,
                    media_type="application/json", headers=headers)


def _unauthorized() -> Response:
    return Response(b"", status_code=401, headers={"WWW-Authenticate": 'Basic realm="SYSPRO OData"'})


def metadata_xml() -> bytes:
    """CSDL 4.0 for every table (keys from B.4, types as the service would declare them)."""
    types, sets = [], []
    for name, (key, columns) in SCHEMAS.items():
        props = "".join(
            f'<Property Name="{c}" Type="{_EDM[k]}"'
            + (' Nullable="false"' if c in key else "")
            + (' Precision="18" Scale="6"' if k == "d" else "") + "/>"
            for c, k in columns)
        keys = "".join(f'<PropertyRef Name="{k}"/>' for k in key)
        types.append(f'<EntityType Name="{name}"><Key>{keys}</Key>{props}</EntityType>')
        sets.append(f'<EntitySet Name="{name}" EntityType="{_NAMESPACE}.{name}"/>')
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">'
        f'<edmx:DataServices><Schema Namespace="{_NAMESPACE}" xmlns="http://docs.oasis-open.org/odata/ns/edm">'
        + "".join(types)
        + f'<EntityContainer Name="SYSPROContainer">{"".join(sets)}</EntityContainer>'
        "</Schema></edmx:DataServices></edmx:Edmx>"
    ).encode("utf-8")


def _authorised(sim: SysproSim, request: Request) -> bool:
    if sim.faults.unauthorized > 0:
        sim.faults.unauthorized -= 1
        return False
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    expected = sim._odata_loaded.get(user)
    return expected is not None and expected == password


def _int_option(params: Any, name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise FilterError(f"Invalid value '{raw}' for {name}: a non-negative integer is expected.") from None
    if value < 0:
        raise FilterError(f"Invalid value '{raw}' for {name}: a non-negative integer is expected.")
    return value


def run_query(sim: SysproSim, entity: str, params: Any, url: str, ieee754: bool) -> dict[str, Any]:
    """The payload for one GET of an entity set (raises FilterError for a 400)."""
    table = sim.company.tables[entity]
    kinds = {c: k for c, k in table.columns}
    names = set(kinds)
    select = None
    if params.get("$select"):
        select = [s.strip() for s in params["$select"].split(",") if s.strip()]
        for s in select:
            if s not in names:
                raise FilterError(f"Could not find a property named '{s}' on type '{_NAMESPACE}.{entity}'.")
    flt = parse_filter(params["$filter"], names) if params.get("$filter") else None
    if flt and not sim.faults.filter_on_timestamp and any(c.column == "TimeStamp" for c in flt.comparisons):
        raise FilterError("The property 'TimeStamp', used in a query expression, is not defined in type "
                          f"'{_NAMESPACE}.{entity}' as filterable.")
    order = parse_orderby(params["$orderby"], names) if params.get("$orderby") else None
    top = _int_option(params, "$top")
    skip = _int_option(params, "$skip") or 0
    cap = sim.settings.page_size
    if sim.settings.paging == "hardcap" and top is not None and top > cap:
        raise FilterError(f"The limit of '{cap}' for Top query has been exceeded. The value from the incoming "
                          f"request is '{top}'.")
    want = cap if top is None else min(top, cap)
    key_order = [(k, False) for k in table.key]
    total: int | None = None

    with sim.lock:
        if isinstance(table, GeneratedWarehouse) and flt is None and order in (None, key_order):
            total = len(table)
            rows = table.slice(skip, skip + want)
        elif (isinstance(table, GeneratedWarehouse) and flt is not None and flt.only_comparison is not None
              and flt.only_comparison.column == "TimeStamp" and flt.only_comparison.op in ("gt", "ge")
              and isinstance(flt.only_comparison.value, int) and order in (None, [("TimeStamp", False)])):
            c = flt.only_comparison
            matched = table.changed_after(c.value - (1 if c.op == "ge" else 0))
            total = len(matched)
            rows = matched[skip:skip + want]
        else:
            matched = [r for r in table.scan() if flt is None or flt.predicate(r)]
            for column, desc in reversed(order or key_order):
                matched.sort(key=lambda r, c=column: (r[c] is not None, r[c]), reverse=desc)
            total = len(matched)
            rows = matched[skip:skip + want]
        payload_rows = project(rows, select, kinds, ieee754)

    body: dict[str, Any] = {"@odata.context": f"{url.split('?')[0].rsplit('/', 1)[0]}/$metadata#{entity}"}
    if params.get("$count", "").lower() == "true":
        body["@odata.count"] = total
    body["value"] = payload_rows
    remaining_top = None if top is None else top - len(rows)
    more = skip + len(rows) < total and (remaining_top is None or remaining_top > 0)
    if sim.settings.paging == "nextlink" and more and rows:
        nxt = {k: v for k, v in params.items() if k not in ("$skip", "$top")}
        nxt["$skip"] = str(skip + len(rows))
        if remaining_top is not None:
            nxt["$top"] = str(remaining_top)
        body["@odata.nextLink"] = f"{url.split('?')[0]}?{urlencode(nxt, safe='$,()/:')}"
    mutate = sim.faults.mutate_between_pages.get(entity)
    if mutate and isinstance(table, Table):
        _insert_before(sim, table, mutate)
    return body


def _insert_before(sim: SysproSim, table: Table, count: int) -> None:
    """Rows inserted at the front of the key order between two pages (offset paging then repeats rows)."""
    with sim.lock:
        column = next(c for c, k in table.columns if c in table.key and k == "s")
        for _ in range(count):
            row = {k: v for k, v in table.rows[0].items() if k != "TimeStamp"}
            row[column] = f"!{sim._rng.randrange(10**6):06d}"  # '!' sorts before digits and letters
            table.add(row)


def odata_router(sim: SysproSim) -> APIRouter:
    router = APIRouter()
    prefix = f"{sim.settings.odata_prefix}/{{company}}"

    async def guard(request: Request, company: str, route: str) -> Response | None:
        sim.count(route)
        if not sim.settings.odata_licensed:
            return Response(b"<html><body><h1>404 - File or directory not found.</h1></body></html>",
                            status_code=404, media_type="text/html")
        if not _authorised(sim, request):
            return _unauthorized()
        blocked = await sim.gate(request, route)
        if blocked is not None:
            return blocked
        if company != sim.settings.company_id:
            return _error(404, f"The company '{company}' is not configured for this OData service.")
        accept = request.headers.get("accept", "application/json")
        if "atom" in accept and "json" not in accept:
            return _error(406, "The requested format 'application/atom+xml' is not supported; use application/json.")
        return None

    @router.get(prefix + "/$metadata")
    async def metadata(company: str, request: Request) -> Response:
        denied = await guard(request, company, "odata $metadata")
        if denied is not None:
            return denied
        return Response(metadata_xml(), media_type="application/xml")

    @router.get(prefix)
    @router.get(prefix + "/")
    async def service_document(company: str, request: Request) -> Response:
        denied = await guard(request, company, "odata service")
        if denied is not None:
            return denied
        root = str(request.url).split("?")[0].rstrip("/")
        return Response(orjson.dumps({"@odata.context": f"{root}/$metadata", "value": [
            {"name": n, "kind": "EntitySet", "url": n} for n in SCHEMAS]}), media_type="application/json")

    @router.get(prefix + "/{entity}")
    async def entity_set(company: str, entity: str, request: Request) -> Response:
        denied = await guard(request, company, f"odata {entity}")
        if denied is not None:
            return denied
        if entity not in sim.company.tables:
            return _error(404, f"Resource not found for the segment '{entity}'.")
        ieee754 = "ieee754compatible=true" in request.headers.get("accept", "").replace(" ", "").lower()
        try:
            body = await asyncio.to_thread(run_query, sim, entity, dict(request.query_params), str(request.url),
                                           ieee754)
        except FilterError as exc:
            return _error(400, str(exc))
        media = "application/json;odata.metadata=minimal" + (";IEEE754Compatible=true" if ieee754 else "")
        return Response(orjson.dumps(body), media_type=media)

    return router
