"""The e.net Business Objects REST host (specs/syspro.md A, E.1): logon, sessions, COMFND.

Paths are case-insensitive under ``/SYSPROWCFService/Rest/``; every answer is
``application/octet-stream`` from ``Microsoft-HTTPAPI/2.0``, Windows-1252, and business or
session errors are HTTP 200 with a body starting ``ERROR``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lxml import etree

from gateway.integrations.syspro.simulator.odata_filter import FilterError, parse_filter
from gateway.integrations.syspro.simulator.tables import rowversion_text

if TYPE_CHECKING:
    from gateway.integrations.syspro.simulator.app import SysproSim

BASE = "/sysprowcfservice/rest"
_ROOT_ATTRS = ("Language='05' Language2='EN' CssStyle='' DecFormat='1' DateFormat='01' Role='01' "
               "Version='8.0.000' OperatorPrimaryRole='   '")
_INVALID_SESSION = "ERROR: The supplied UserID is invalid."
_LICENSED = {"COMFND"}
_CONDITIONS = {"EQ": "eq", "NE": "ne", "GT": "gt", "GE": "ge", "LT": "lt", "LE": "le"}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _reply(text: str, status: int = 200) -> Response:
    return Response(text.encode("cp1252", "replace"), status_code=status, media_type="application/octet-stream",
                    headers={"Server": "Microsoft-HTTPAPI/2.0"})


def _xml(text: str) -> Response:
    return _reply('<?xml version="1.0" encoding="Windows-1252"?>\n' + text)


def _token(sim: SysproSim) -> str:
    if sim.settings.token_mode == "v7":
        return secrets.token_hex(17).upper() + "  "  # 34 hex and two spaces, as SYSPRO 7 sends it
    return secrets.token_hex(32).upper() + secrets.token_hex(4).upper()


def _session(sim: SysproSim, user_id: str | None) -> dict[str, Any] | None:
    if not user_id:
        return None
    session = sim.sessions.get(user_id.strip())
    if session is None:
        return None
    if time.monotonic() - session["last_used"] > sim.settings.idle_timeout_s:
        sim.sessions.pop(user_id.strip(), None)
        return None
    session["last_used"] = time.monotonic()
    return session


def _logon(sim: SysproSim, params: Any) -> Response:
    operator = params.get("Operator", "")
    known = sim.settings.enet_operators.get(operator)
    if known is None:
        return _reply(f"ERROR: Operator '{operator}' not found")
    if params.get("OperatorPassword", "") != known.password:
        return _reply("ERROR: Invalid operator password")
    company = params.get("CompanyId", "")
    if company not in known.companies:
        return _reply(f"ERROR: Company '{company}' not found")
    if params.get("CompanyPassword", "") != known.companies[company]:
        return _reply("ERROR: Invalid company password")
    if sim.settings.evict_on_logon:
        for token in [t for t, s in sim.sessions.items() if s["operator"] == operator]:
            del sim.sessions[token]
    if len(sim.sessions) >= sim.settings.licence_seats:
        return _reply("ERROR: No e.net licences available - the maximum number of concurrent users has been reached")
    token = _token(sim)
    sim.sessions[token.strip()] = {"operator": operator, "company": company, "last_used": time.monotonic()}
    return _reply(f'"{token}"' if sim.settings.token_json_quoted else token)


def _value(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "t":
        return str(value)[:10]
    if kind == "d":
        return f"{value:15.6f}" if isinstance(value, float) else str(value).rjust(15)
    if kind == "i":
        return str(value).rjust(10)
    if kind == "b":
        return rowversion_text(value)
    return escape(str(value))


def _where_to_filter(where: etree._Element | None, kinds: dict[str, str]) -> str | None:
    """COMFND's Where/Expression list as an OData filter the shared evaluator runs."""
    if where is None:
        return None
    parts: list[str] = []
    for expr in where.findall("Expression"):
        and_or = (expr.findtext("AndOr") or "").strip().lower()
        if parts:
            parts.append("or" if and_or == "or" else "and")
        parts.append((expr.findtext("OpenBracket") or "").strip())
        column = (expr.findtext("Column") or "").strip()
        condition = (expr.findtext("Condition") or "EQ").strip().upper()
        value = expr.findtext("Value") or ""
        if column not in kinds:
            raise FilterError(f"Column '{column}' not found")
        kind = kinds[column]
        if condition == "LIKE":
            needle = value.strip("%").replace("'", "''")
            parts.append(f"{'contains' if value.startswith('%') else 'startswith'}({column},'{needle}')")
        elif condition in _CONDITIONS:
            if kind == "t":
                literal = value.strip().replace("/", "-")[:10]
            elif kind in ("d", "i"):
                literal = value.strip() or "0"
            else:
                literal = "'" + value.replace("'", "''") + "'"
            parts.append(f"{column} {_CONDITIONS[condition]} {literal}")
        else:
            raise FilterError(f"Condition '{condition}' is not valid")
        parts.append((expr.findtext("CloseBracket") or "").strip())
    text = " ".join(p for p in parts if p)
    return text or None


def _comfnd(sim: SysproSim, xml_in: str) -> Response:
    try:
        doc = etree.fromstring(xml_in.encode("utf-8"), parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        return _reply(f"ERROR: XmlIn is not valid XML: {exc}")
    table_name = (doc.findtext("TableName") or "").strip()
    table = sim.company.tables.get(table_name)
    if table is None:
        return _reply(f"ERROR: Table '{table_name}' not found")
    kinds = {c: k for c, k in table.columns}
    columns = [c.text.strip() for c in doc.findall("Columns/Column") if c.text and c.text.strip()] or list(kinds)
    for c in columns:
        if c not in kinds:
            return _reply(f"ERROR: Column '{c}' not found in table '{table_name}'")
    try:
        text = _where_to_filter(doc.find("Where"), kinds)
        predicate = parse_filter(text, set(kinds)).predicate if text else None
    except FilterError as exc:
        return _reply(f"ERROR: {exc}")
    try:
        limit = int((doc.findtext("ReturnRows") or "0").strip() or 0)
    except ValueError:
        return _reply("ERROR: ReturnRows must be a number")
    order = [c.text.strip() for c in doc.findall("OrderBy/Column") if c.text] or list(table.key)
    with sim.lock:
        rows = [r for r in table.scan() if predicate is None or predicate(r)]
    rows.sort(key=lambda r: tuple((r[c] is not None, r[c]) for c in order))
    if limit > 0:
        rows = rows[:limit]
    out = [f"<{table_name} {_ROOT_ATTRS}>", "<HeaderDetails><TableName>" + table_name + "</TableName></HeaderDetails>"]
    for row in rows:
        out.append("<Row>" + "".join(f"<{c}>{_value(kinds[c], row[c])}</{c}>" for c in columns) + "</Row>")
    out.append(f"<RowsReturned>{len(rows):8d}</RowsReturned>")
    out.append(f"</{table_name}>")
    return _xml("\n".join(out))


def enet_router(sim: SysproSim) -> APIRouter:
    router = APIRouter()

    @router.api_route("/{path:path}", methods=["GET", "POST"], include_in_schema=False)
    async def enet(path: str, request: Request) -> Response:
        lowered = "/" + path.lower().strip("/")
        if not lowered.startswith(BASE + "/"):
            return Response(b"Not Found", status_code=404)
        operation = lowered[len(BASE) + 1:]
        sim.count(f"enet {operation}")
        if len(str(request.url)) > sim.settings.max_url_bytes:
            return Response(b"<html><body>Request URL too long</body></html>", status_code=414,
                            media_type="text/html")
        blocked = await sim.gate(request, f"enet {operation}")
        if blocked is not None:
            return blocked
        params = dict(request.query_params)
        if operation == "logon":
            return _logon(sim, params)
        if operation == "getversion":
            return _reply(sim.settings.version)
        if operation == "logoff":
            if sim.sessions.pop((params.get("UserId") or "").strip(), None) is None:
                return _reply("ERROR: The supplied UserID is invalid.")
            return _reply("0")
        session = _session(sim, params.get("UserId"))
        if session is None:
            return _reply(_INVALID_SESSION)
        if operation == "getlogonprofile":
            return _xml(f"<LogonProfile><CompanyName>Simulated Company</CompanyName><OperatorCode>{session['operator']}"
                        f"</OperatorCode><SysproVersion>{sim.settings.version}</SysproVersion></LogonProfile>")
        if operation == "query/query":
            business_object = (params.get("BusinessObject") or "").upper()
            if business_object not in _LICENSED:
                return _reply(f"ERROR: e.net exception 100000 - business object '{business_object}' is not licensed")
            return await asyncio.to_thread(_comfnd, sim, params.get("XmlIn", ""))
        return _reply(f"ERROR: '{operation}' is not served by the simulator")

    return router
