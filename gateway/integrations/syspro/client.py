"""Read SYSPRO: the OData 4 service (Basic auth, ``$metadata``, paging, ``$filter``) and the e.net
session (``Logon`` → UserId, COMFND queries, re-logon once when the session died, ``Logoff``).

Both yield pages of rows as dicts (column -> value). OData values are what the JSON carries
(decimals as exact strings with ``IEEE754Compatible=true``, dates ``YYYY-MM-DDT00:00:00Z``,
``TimeStamp`` base64); e.net values are the XML text, numbers stripped of SYSPRO's padding, keys
never trimmed (``␠00001`` is a different PO from ``00001``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import httpx
import orjson
from lxml import etree
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from gateway.integrations.syspro.settings import SysproEnet, SysproOData, SysproSettings

__all__ = ["EnetSession", "EntitySet", "ODataClient", "SysproAuthError", "SysproError", "SysproRequestError",
           "SysproSessionError", "SysproUnavailable", "Where", "odata_literal"]

_EDMX = "{http://docs.oasis-open.org/odata/ns/edm}"
_XML = etree.XMLParser(resolve_entities=False, no_network=True)
_NUMBER = re.compile(r"\s*-?\d+(\.\d+)?\s*\Z")


class SysproError(Exception):
    """SYSPRO refused or failed a read; the message says what to do."""

    transient = False


class SysproAuthError(SysproError):
    """Credentials refused (OData 401, e.net logon ERROR)."""


class SysproRequestError(SysproError):
    """The service refused the request itself (unknown table or column, bad filter, page too large)."""


class SysproUnavailable(SysproError):
    """5xx, timeouts or network errors that outlasted the retries: try again later."""

    transient = True


class SysproSessionError(SysproError):
    """e.net answered ``ERROR: ...`` to a call."""


class _Retryable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)


def _retrying(settings: SysproSettings) -> Retrying:
    r = settings.retry
    return Retrying(stop=stop_after_attempt(r.max_attempts),
                    wait=wait_exponential(multiplier=r.backoff_initial, max=r.backoff_max),
                    retry=retry_if_exception(lambda e: isinstance(e, _Retryable)), reraise=True)


def _send(http: httpx.Client, settings: SysproSettings, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request with the retry policy on 5xx, 429 and transport errors."""
    try:
        for attempt in _retrying(settings):
            with attempt:
                try:
                    resp = http.request(method, url, **kwargs)
                except httpx.TransportError as exc:
                    raise _Retryable(f"{type(exc).__name__}: {exc or 'no answer'}") from None
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise _Retryable(f"HTTP {resp.status_code}{': ' + _message(resp) if _message(resp) else ''}")
                return resp
    except _Retryable as exc:
        host = urlsplit(url).netloc
        raise SysproUnavailable(f"SYSPRO at {host} did not answer after {settings.retry.max_attempts} tries ({exc})") \
            from None
    raise AssertionError("unreachable")  # pragma: no cover


def _message(resp: httpx.Response) -> str:
    try:
        body = orjson.loads(resp.content)
        return str(body.get("error", {}).get("message") or "")[:300]
    except (orjson.JSONDecodeError, AttributeError):
        return ""


# ---------------------------------------------------------------------------------------------- OData


@dataclass(frozen=True)
class EntitySet:
    """An entity set as ``$metadata`` declares it."""

    name: str
    key: tuple[str, ...]
    properties: dict[str, str]  # name -> Edm type


def odata_literal(value: Any, edm_type: str) -> str:
    """A value written as an OData 4 literal for ``edm_type`` (dates unquoted, binary base64)."""
    if edm_type == "Edm.Binary":
        return f"binary'{value}'"
    if edm_type in ("Edm.DateTimeOffset",):
        text = str(value)
        return text if "T" in text else f"{text[:10]}T00:00:00Z"
    if edm_type == "Edm.Date":
        return str(value)[:10]
    if edm_type in ("Edm.Decimal", "Edm.Int32", "Edm.Int64", "Edm.Double"):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class ODataClient:
    """The SYSPRO OData service of one company."""

    def __init__(self, settings: SysproSettings, *, http: httpx.Client | None = None) -> None:
        if settings.odata is None:
            raise ValueError("no [syspro.odata] settings")
        self.settings = settings
        self.odata: SysproOData = settings.odata
        self.root = self.odata.url.rstrip("/")
        accept = "application/json" + (";IEEE754Compatible=true" if self.odata.ieee754_compatible else "")
        self._http = http or httpx.Client(
            auth=(self.odata.operator, self.odata.password.get_secret_value()), timeout=settings.timeout_seconds,
            headers={"Accept": accept, "OData-Version": "4.0"}, verify=self.odata.verify_tls,
            trust_env=settings.trust_env)
        self._metadata: dict[str, EntitySet] | None = None
        self.requests = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ODataClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, url: str, params: dict[str, str] | None = None) -> httpx.Response:
        self.requests += 1
        resp = _send(self._http, self.settings, "GET", url, params=params)
        if resp.status_code == 401:
            raise SysproAuthError(
                f"SYSPRO OData refused operator {self.odata.operator!r} (HTTP 401): the operator is not enabled for "
                "OData, or its OData password is wrong. Enable it in Operator Maintenance (OData access, with its SQL "
                "credentials) and restart the SYSPRO OData service, which reads its operators only at start-up.")
        if resp.status_code == 404 and "json" not in resp.headers.get("content-type", ""):
            raise SysproRequestError(f"no SYSPRO OData service at {url.split('?')[0]} (HTTP 404): check [syspro.odata] "
                                     "url (service root and company) and that the site licenses OData "
                                     "(SYSPRO 8 2021 R2 or later); without it set read = 'enet'")
        if resp.status_code >= 400:
            raise SysproRequestError(f"SYSPRO OData refused {url.split('?')[0].rsplit('/', 1)[-1]} "
                                     f"(HTTP {resp.status_code}): {_message(resp) or resp.text[:200]}")
        return resp

    def metadata(self) -> dict[str, EntitySet]:
        """The entity sets, their keys and property types, read once from ``$metadata``."""
        if self._metadata is None:
            resp = self._get(f"{self.root}/$metadata")
            try:
                doc = etree.fromstring(resp.content, parser=_XML)
            except etree.XMLSyntaxError as exc:
                raise SysproRequestError(f"SYSPRO OData $metadata is not XML: {exc}") from None
            types: dict[str, EntitySet] = {}
            for et in doc.iter(f"{_EDMX}EntityType"):
                key = tuple(ref.get("Name") for ref in et.iter(f"{_EDMX}PropertyRef"))
                props = {p.get("Name"): p.get("Type") for p in et.iter(f"{_EDMX}Property")}
                types[et.get("Name")] = EntitySet(et.get("Name"), key, props)
            sets = {}
            for es in doc.iter(f"{_EDMX}EntitySet"):
                type_name = (es.get("EntityType") or "").rsplit(".", 1)[-1]
                if type_name in types:
                    sets[es.get("Name")] = EntitySet(es.get("Name"), types[type_name].key, types[type_name].properties)
            self._metadata = sets
        return self._metadata

    def entity(self, name: str) -> EntitySet:
        sets = self.metadata()
        if name not in sets:
            raise SysproRequestError(f"SYSPRO OData has no entity set {name!r}; it has {', '.join(sorted(sets))}")
        return sets[name]

    def pages(self, entity: str, *, select: Sequence[str] | None = None, filter: str | None = None,
              orderby: Sequence[str] | None = None, page_size: int | None = None,
              limit: int | None = None) -> Iterator[list[dict[str, Any]]]:
        """Rows of ``entity`` a page at a time: follows ``@odata.nextLink`` where the server gives one,
        otherwise ``$top``/``$skip`` (ordered by the full key, so offsets are stable) until a short page.

        ``limit`` stops after that many rows (a dry run's sample)."""
        size = page_size or self.odata.page_size
        params: dict[str, str] = {}
        if select:
            params["$select"] = ",".join(select)
        if filter:
            params["$filter"] = filter
        params["$orderby"] = ",".join(orderby) if orderby else ",".join(self.entity(entity).key)
        skip, seen, server_driven = 0, 0, False
        url: str | None = f"{self.root}/{entity}"
        next_params: dict[str, str] | None = params
        while url is not None:
            top = size if limit is None else min(size, limit - seen)
            if next_params is not None:
                next_params = {**next_params, "$top": str(top), "$skip": str(skip)}
            body = orjson.loads(self._get(url, next_params).content)
            rows = body.get("value")
            if not isinstance(rows, list):
                raise SysproRequestError(f"SYSPRO OData answered {entity} without a 'value' list")
            if rows:
                yield rows
            seen += len(rows)
            if limit is not None and seen >= limit:
                return
            link = body.get("@odata.nextLink")
            if link:
                url, next_params, server_driven = link, None, True
            elif server_driven or len(rows) < top or not rows:  # a server that pages says where it ends
                url = None
            else:
                skip += len(rows)
                next_params = params

    def check(self) -> list[str]:
        """What ``gateway flows check`` says about this service: reachable, operator accepted, sets."""
        sets = self.metadata()
        return [f"OData {self.root}: operator {self.odata.operator} accepted; {len(sets)} entity sets"]


# ---------------------------------------------------------------------------------------------- e.net


@dataclass(frozen=True)
class Where:
    """One COMFND condition: ``Column Condition Value`` (EQ NE GT GE LT LE LIKE)."""

    column: str
    condition: str
    value: str


def _unwrap_token(body: str) -> str:
    """The UserId from a Logon answer: raw, JSON-quoted or ``<string>``-wrapped (A.3), trimmed."""
    text = body.strip()
    if text.startswith('"'):
        try:
            text = json.loads(text)
        except ValueError:
            text = text.strip('"')
    elif text.startswith("<"):
        try:
            text = etree.fromstring(text.encode("utf-8"), parser=_XML).text or ""
        except etree.XMLSyntaxError:
            pass
    return text.strip()


def comfnd_xml(table: str, columns: Sequence[str], where: Sequence[Where | str] = (), order_by: Sequence[str] = (),
               return_rows: int = 0) -> str:
    """A COMFND query document (A.5). ``where`` items are conditions or the brackets '(' / ')' and
    the joiners 'and' / 'or' (default and)."""
    root = etree.Element("Query")
    etree.SubElement(root, "TableName").text = table
    etree.SubElement(root, "ReturnRows").text = str(return_rows)
    cols = etree.SubElement(root, "Columns")
    for c in columns:
        etree.SubElement(cols, "Column").text = c
    if where:
        w = etree.SubElement(root, "Where")
        pending_open, joiner, expr = "", "And", None
        for item in where:
            if item in ("(", ")"):
                if item == "(":
                    pending_open += "("
                elif expr is not None:
                    close = expr.find("CloseBracket")
                    close.text = (close.text or "") + ")"
                continue
            if item in ("and", "or"):
                joiner = "Or" if item == "or" else "And"
                continue
            assert isinstance(item, Where)
            expr = etree.SubElement(w, "Expression")
            if len(w) > 1:
                etree.SubElement(expr, "AndOr").text = joiner
            etree.SubElement(expr, "OpenBracket").text = pending_open
            etree.SubElement(expr, "Column").text = item.column
            etree.SubElement(expr, "Condition").text = item.condition
            etree.SubElement(expr, "Value").text = item.value
            etree.SubElement(expr, "CloseBracket").text = ""
            pending_open, joiner = "", "And"
    if order_by:
        ob = etree.SubElement(root, "OrderBy")
        for c in order_by:
            etree.SubElement(ob, "Column").text = c
    return etree.tostring(root, encoding="unicode")


class EnetSession:
    """One e.net session: log on once, run queries (serialised), log off; re-logon once when SYSPRO
    says the UserID is invalid (idle timeout, or a person logged on with the same operator)."""

    def __init__(self, settings: SysproSettings, *, http: httpx.Client | None = None) -> None:
        if settings.enet is None:
            raise ValueError("no [syspro.enet] settings")
        self.settings = settings
        self.enet: SysproEnet = settings.enet
        self.base = self.enet.url.rstrip("/")
        self._http = http or httpx.Client(timeout=settings.timeout_seconds, trust_env=settings.trust_env)
        self.user_id: str | None = None
        self.requests = 0
        self.logons = 0

    def __enter__(self) -> EnetSession:
        self.logon()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.logoff()
        finally:
            self._http.close()

    def _call(self, operation: str, params: dict[str, str]) -> str:
        self.requests += 1
        resp = _send(self._http, self.settings, "GET", f"{self.base}/{operation}", params=params)
        if resp.status_code >= 400:
            raise SysproRequestError(f"SYSPRO e.net {operation}: HTTP {resp.status_code}")
        return resp.content.decode("cp1252", "replace")  # bodies are Windows-1252 (A.4)

    def logon(self) -> str:
        body = self._call("Logon", {
            "Operator": self.enet.operator, "OperatorPassword": self.enet.password.get_secret_value(),
            "CompanyId": self.enet.company_id, "CompanyPassword": self.enet.company_password.get_secret_value()})
        self.logons += 1
        if body.lstrip().upper().startswith("ERROR"):
            raise SysproAuthError(f"SYSPRO e.net logon of operator {self.enet.operator!r} to company "
                                  f"{self.enet.company_id!r} refused: {body.strip()[:200]}")
        token = _unwrap_token(body)
        if not token:
            raise SysproAuthError("SYSPRO e.net logon answered an empty UserId")
        self.user_id = token
        return token

    def logoff(self) -> None:
        if self.user_id is None:
            return
        token, self.user_id = self.user_id, None
        try:
            self._call("Logoff", {"UserId": token})
        except SysproError:
            pass  # the session ends at its idle timeout anyway

    def query(self, business_object: str, xml_in: str) -> str:
        """A Query-class call; logs on again once if the session is gone."""
        for attempt in (1, 2):
            if self.user_id is None:
                self.logon()
            body = self._call("Query/Query", {"UserId": self.user_id or "", "BusinessObject": business_object,
                                               "XmlIn": xml_in})
            if body.lstrip().upper().startswith("ERROR"):
                if "userid is invalid" in body.lower() and attempt == 1:
                    self.user_id = None
                    continue
                if "100000" in body:
                    raise SysproSessionError(f"SYSPRO e.net: {business_object} is not licensed for this operator "
                                             f"({body.strip()[:200]})")
                raise SysproSessionError(f"SYSPRO e.net {business_object}: {body.strip()[:300]}")
            return body
        raise AssertionError("unreachable")  # pragma: no cover

    def comfnd(self, table: str, columns: Sequence[str], where: Sequence[Where | str] = (),
               order_by: Sequence[str] = (), return_rows: int = 0, key: Sequence[str] = ()) -> list[dict[str, str]]:
        """Rows of ``table`` through COMFND. Numbers lose SYSPRO's padding; ``key`` columns are never trimmed."""
        body = self.query("COMFND", comfnd_xml(table, columns, where, order_by, return_rows))
        try:
            doc = etree.fromstring(body.encode("cp1252", "replace"), parser=_XML)
        except etree.XMLSyntaxError as exc:
            raise SysproSessionError(f"SYSPRO e.net COMFND {table}: the answer is not XML ({exc})") from None
        keep = set(key)
        rows = []
        for row in doc.iter("Row"):
            item = {}
            for child in row:
                text = child.text or ""
                item[child.tag] = text.strip() if child.tag not in keep and _NUMBER.match(text) else text
            rows.append(item)
        return rows

    def pages(self, table: str, columns: Sequence[str], key: Sequence[str], where: Sequence[Where] = (),
              page_size: int | None = None, limit: int | None = None) -> Iterator[list[dict[str, str]]]:
        """Rows of ``table`` a page at a time. COMFND has no offset, so each page asks for rows after
        the last key seen (A.5): ``(k1 > a) or (k1 = a and k2 > b) ...``."""
        size = page_size or self.enet.page_size
        cols = list(dict.fromkeys([*key, *columns]))
        last: dict[str, str] | None = None
        seen = 0
        while True:
            conditions: list[Where | str] = []
            if where:
                conditions += ["(", *_joined(where, "and"), ")"]
            if last is not None:
                if conditions:
                    conditions.append("and")
                conditions.append("(")
                for i in range(len(key)):
                    if i:
                        conditions.append("or")
                    conditions.append("(")
                    conditions += _joined([*(Where(k, "EQ", last[k]) for k in key[:i]),
                                           Where(key[i], "GT", last[key[i]])], "and")
                    conditions.append(")")
                conditions.append(")")
            want = size if limit is None else min(size, limit - seen)
            rows = self.comfnd(table, cols, conditions, order_by=key, return_rows=want, key=key)
            if rows:
                yield rows
            seen += len(rows)
            if len(rows) < want or (limit is not None and seen >= limit):
                return
            last = rows[-1]

    def check(self) -> list[str]:
        self.query("COMFND", comfnd_xml("ApSupplier", ["Supplier"], return_rows=1))
        return [f"e.net {self.base}: operator {self.enet.operator} logged on to company {self.enet.company_id}; "
                "COMFND answers"]


def _joined(items: Sequence[Where], joiner: str) -> list[Where | str]:
    out: list[Where | str] = []
    for i, item in enumerate(items):
        if i:
            out.append(joiner)
        out.append(item)
    return out
