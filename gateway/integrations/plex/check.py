"""``gateway check`` for Plex: sign in, one cheap read on each endpoint the gateway uses, the grant of
each SOAP data source it writes through; and, on a test tenant only, ``--probe-duplicates``.

The reads look up numbers that cannot exist (``GATEWAY-CHECK``): they prove the App is subscribed to
the API product and may read it, without moving any data. A write cannot be tried without writing,
so for the data sources the gateway writes through the check asks Plex for their request template
(``GetDataSourceRequestTemplate``): that answers whether the web-service account is granted the data
source and which inputs it takes, which must include every input configured under
``[plex.purchase_orders]``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.integrations.base import Check
from gateway.integrations.plex.client import (
    DataSourceBinding,
    PlexAuthError,
    PlexClient,
    PlexConfig,
    PlexDataSourceError,
    PlexError,
    PlexPermissionError,
    PlexTransientError,
    PurchaseOrderDraft,
    PurchaseOrderLine,
)

__all__ = ["PlexUses", "check_plex", "not_checked", "probe_duplicates"]

PROBE = "GATEWAY-CHECK"  # a number no real record carries
NIL_UUID = "00000000-0000-0000-0000-000000000000"
NOT_CHECKED = "not checked: "
# Hosts of production tenants: --probe-duplicates writes records and refuses to run against them.
PRODUCTION_HOSTS = frozenset({"api.plexonline.com", "connect.plex.com", "cloud.plex.com"})


def not_checked(name: str, why: str) -> Check:
    """A line that says what could not be looked at (neither green nor red: shown as 'skip')."""
    return Check(name, True, NOT_CHECKED + why)


@dataclass(frozen=True)
class PlexUses:
    """What the gateway sends to Plex with this configuration (so only those endpoints are checked)."""

    invoices: bool = True  # AP invoices over REST
    purchase_orders: bool = True  # buyer-side POs through the tenant's SOAP data sources
    sales_orders: bool = False  # customer POs as sales orders (partners with plex.purchase_orders: sales_order)
    supplier_code: str | None = None  # a supplier a partner file names, to read it back

    @classmethod
    def from_partners(cls, partners: Iterable, *, invoices: bool = True, purchase_orders: bool = True) -> PlexUses:
        """From the partner mapping files: which partners' POs are sales orders, a supplier code to read."""
        routes = [(p.plex.purchase_orders, p.plex.supplier_code) for p in partners]
        code = next((c for _, c in routes if c), None)
        sales = purchase_orders and any(r == "sales_order" for r, _ in routes)
        # Unknown senders and partners without a sales-order route send buyer-side POs.
        buyer = purchase_orders and (not routes or any(r == "purchase_order" for r, _ in routes))
        return cls(invoices=invoices, purchase_orders=buyer, sales_orders=sales, supplier_code=code)


def _said(exc: PlexError) -> str:
    if isinstance(exc, PlexAuthError):
        return f"credentials refused: {exc}"
    if isinstance(exc, PlexPermissionError):
        return f"permission refused: {exc} (the App or web-service account lacks the role for it)"
    if isinstance(exc, PlexTransientError):
        return f"Plex did not answer cleanly: {exc}"
    return str(exc)


def _read(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except PlexError as exc:
        return Check(name, False, _said(exc))


def check_plex(client: PlexClient, config: PlexConfig, uses: PlexUses) -> list[Check]:
    """Sign in and read each endpoint ``uses`` names; ask for each written data source's template."""
    checks: list[Check] = []
    rest = config.api_key is not None or config.oauth is not None
    if rest:
        checks += _rest_checks(client, config, uses)
    elif uses.invoices or uses.sales_orders:
        checks.append(Check("Connect sign-in", False, "no api_key or [plex.oauth]: AP invoices and sales orders "
                                                       "go over Connect REST and cannot be sent"))
    if uses.purchase_orders:
        checks += _soap_checks(client, config, rest)
    return checks


def _rest_checks(client: PlexClient, config: PlexConfig, uses: PlexUses) -> list[Check]:
    how = (f"OAuth client {config.oauth.client_id}" if config.oauth is not None else "API key")
    host = urlsplit(config.connect_url).netloc

    def sign_in() -> str:
        tenants = client.list_tenants()
        codes = ", ".join(str(t.get("code")) for t in tenants[:5]) or "none listed"
        if config.tenant_id and not any(t.get("id") == config.tenant_id for t in tenants):
            raise PlexPermissionError(f"tenant {config.tenant_id} is not among the App's tenants ({codes})",
                                      operation="tenants.list")
        return f"{how} at {host}; tenants: {codes}"

    first = _read("Connect sign-in", sign_in)
    checks = [first]
    if not first.ok and "credentials refused" in first.detail:
        return checks + [not_checked("Connect reads", "the sign-in failed")]
    supplier_ids: list[str] = []

    def suppliers() -> str:
        code = uses.supplier_code or PROBE
        found = client.read_suppliers(code=code)
        supplier_ids.extend(s.id for s in found)
        return f"read; supplier {code} " + ("found" if found else "not found (a look-up only)")

    checks.append(_read("supplier master (mdm/v1/suppliers)", suppliers))
    if config.matching.fetch_tax_ids:
        if supplier_ids:
            checks.append(_read("supplier tax ids (mdm/v1/suppliers/{id}/financials)",
                                lambda: "read" if client.get_supplier_financials(supplier_ids[0]) is not None
                                else "read (this supplier has none)"))
        else:
            checks.append(not_checked("supplier tax ids (mdm/v1/suppliers/{id}/financials)",
                                      "no supplier at hand to read (name one in a partner file's plex.supplier_code)"))
    if uses.invoices:
        checks.append(_read("AP invoices (accounting/v1/ap-invoices)",
                            lambda: _none_found(client.find_ap_invoice(PROBE, supplier_code=PROBE))))
        checks += _gl_accounts(client, config)
    if uses.sales_orders:
        checks.append(_read("customers (mdm/v1/customers)", lambda: _none_found(client.list_customers(code=PROBE))))
        checks.append(_read("sales orders (sales/v1/orders)",
                            lambda: _none_found(client.find_sales_order(NIL_UUID, PROBE))))
    if uses.purchase_orders:
        checks.append(_read("purchase orders (purchasing/v1/purchase-orders)",
                            lambda: _none_found(client.list_purchase_orders(PROBE))))
    return checks


def _none_found(found: object) -> str:
    return "read" + (" (the look-up found a record: unexpected for a check number)" if found else "")


def _gl_accounts(client: PlexClient, config: PlexConfig) -> list[Check]:
    accounts = config.ap_invoice_accounts
    if accounts is None:
        return [Check("GL accounts for AP invoices", False, "[plex.ap_invoice_accounts] is not set")]
    wanted = {"expense_account": accounts.expense_account, "tax_account": accounts.tax_account}
    if accounts.charge_account:
        wanted["charge_account"] = accounts.charge_account
    checks = []
    for key, number in wanted.items():
        def look(number: str = number) -> str:
            row = client.find_gl_account(number)
            if row is None:
                raise PlexDataSourceError(f"GL account {number} is not in Plex's chart of accounts",
                                          operation="gl_account.find")
            if row.get("active") is False:
                raise PlexDataSourceError(f"GL account {number} ({row.get('name', '?')}) is inactive",
                                          operation="gl_account.find")
            return f"{number} {row.get('name') or ''}".strip()
        checks.append(_read(f"plex.ap_invoice_accounts.{key} (mdm/v1/chart-of-accounts)", look))
    return checks


def _soap_checks(client: PlexClient, config: PlexConfig, rest: bool) -> list[Check]:
    cfg = config.purchase_orders
    if config.soap is None:
        return [Check("SOAP data sources", False, "no [plex.soap] account: buyer-side purchase orders are created "
                                                  "through the tenant's data sources and cannot be sent")]
    host = urlsplit(config.soap.url).netloc
    lookup = _read(f"SOAP sign-in and PO look-up (data source {cfg.lookup.key})",
                   lambda: f"{config.soap.username} at {host}; "
                           + _none_found(client.find_purchase_order(PROBE)))
    checks = [lookup]
    if not lookup.ok and "credentials refused" in lookup.detail:
        return checks + [not_checked("SOAP data sources", "the SOAP sign-in failed")]
    writes = [("PO create", cfg.create)] + ([("PO line add", cfg.add_line)] if cfg.add_line else [])
    for role, binding in writes:
        checks.append(_template_check(client, role, binding, cfg.result_error, cfg.result_message))
    return checks


def _template_check(client: PlexClient, role: str, binding: DataSourceBinding, result_error: str | None,
                    result_message: str | None) -> Check:
    name = f"{role} (data source {binding.key})"
    try:
        template = client.data_source_template(binding.key)
    except NotImplementedError as exc:
        return not_checked(name, str(exc))
    except PlexError as exc:
        return Check(name, False, _said(exc))
    known = {n.lstrip("@") for n in template.inputs}
    missing = [f"{field} -> @{param.lstrip('@')}" for field, param in binding.inputs.items()
               if param.lstrip("@") not in known]
    if missing:
        return Check(name, False, f"'{template.name or binding.key}' has no input " + ", ".join(missing)
                     + f" (its inputs: {', '.join(sorted(known)) or 'none'}); fix [plex.purchase_orders] inputs")
    required = sorted(n for n, r in template.inputs.items() if r and n.lstrip("@") not in
                      {p.lstrip("@") for p in binding.inputs.values()})
    if required:
        return Check(name, False, f"'{template.name or binding.key}' requires {', '.join(required)}, which the "
                                  "gateway does not send: map them under [plex.purchase_orders]")
    return Check(name, True, f"granted; '{template.name or binding.key}' takes every configured input")


# --------------------------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class _Attempt:
    key: int | None
    error: str | None


def probe_duplicates(client: PlexClient, config: PlexConfig, supplier_code: str) -> list[Check]:
    """Create a probe PO twice (and a line twice) through the configured data sources and read what Plex did.

    Writes records: refused against a production host. Says per data source whether a repeated create
    fails, updates, or makes a second record, and whether the look-up before create is configured.
    """
    soap = config.soap
    if soap is None:
        return [Check("duplicate probe", False, "no [plex.soap] account: nothing is written through data sources")]
    host = (urlsplit(soap.url).hostname or "").lower()
    if host in PRODUCTION_HOSTS:
        return [Check("duplicate probe", False, f"refused: {host} is a production host and the probe creates "
                                                "records; point [plex.soap] url at the test tenant "
                                                "(testapi.plexonline.com)")]
    cfg = config.purchase_orders
    number = f"GWPROBE-{uuid.uuid4().hex[:10].upper()}"
    draft = PurchaseOrderDraft(po_number=number, supplier_code=supplier_code, po_date=_today(),
                               note="gateway check --probe-duplicates", lines=[])
    name = f"PO create (data source {cfg.create.key})"
    if client.find_purchase_order(number, supplier_code) is not None:
        return [Check(name, False, f"probe number {number} already exists; run the probe again")]
    first = _create(client, draft)
    if first.error is not None:
        return [Check(name, False, f"the first create of probe PO {number} failed: {first.error} "
                                   f"(is supplier {supplier_code} in the test tenant?)")]
    second = _create(client, draft)
    found = _po_keys(client, cfg.lookup, number)
    verdict = _verdict(first, second, found)
    checks = [_probe_check(name, verdict, number, cfg.lookup.key, len(found))]
    if cfg.add_line is not None and first.key is not None:
        checks.append(_probe_line(client, cfg, first.key, number))
    return checks


def _today():
    from datetime import UTC, datetime

    return datetime.now(UTC).date()


def _create(client: PlexClient, draft: PurchaseOrderDraft) -> _Attempt:
    try:
        return _Attempt(client.create_purchase_order_header(draft), None)
    except PlexDataSourceError as exc:
        return _Attempt(None, str(exc))


def _po_keys(client: PlexClient, lookup: DataSourceBinding, number: str) -> set[str]:
    result = client.execute_data_source(lookup.key, {lookup.inputs["po_number"]: number},
                                        operation="purchase_order.probe", result_error=None)
    col = lookup.columns
    return {str(r.get(col["po_key"])) for r in result.rows if r.get(col["po_number"]) == number}


def _verdict(first: _Attempt, second: _Attempt, keys: set[str]) -> str:
    if second.error is not None:
        return "fail"
    if len(keys) > 1 or (second.key is not None and second.key != first.key):
        return "duplicate"
    return "update"


_SAYS = {
    "fail": ("a repeated create is refused",
             "the look-up before create is not strictly needed, and the gateway keeps it: without it a create "
             "whose answer was lost would fail the document instead of finding the PO"),
    "update": ("a repeated create updates the same PO",
               "the look-up before create is needed: without it a re-sent 850 would overwrite the PO"),
    "duplicate": ("a repeated create makes a second PO",
                  "the look-up before create is needed: without it a retried or re-sent 850 doubles the PO"),
}


def _probe_check(name: str, verdict: str, number: str, lookup_key: int, rows: int) -> Check:
    what, why = _SAYS[verdict]
    guard = (f"configured (look-up data source {lookup_key} found the probe PO)" if rows
             else f"NOT working: look-up data source {lookup_key} did not find probe PO {number}")
    return Check(name, rows > 0, f"{what}; {why}; the guard is {guard}. Probe PO {number} is left in the test "
                                 "tenant: delete it there")


def _probe_line(client: PlexClient, cfg, po_key: int, number: str) -> Check:
    name = f"PO line add (data source {cfg.add_line.key})"
    line = PurchaseOrderLine(line_number=1, description="gateway check probe", quantity=1, unit_price=0)
    outcomes = []
    for _ in range(2):
        try:
            client.add_purchase_order_line(po_key, line)
            outcomes.append(None)
        except PlexDataSourceError as exc:
            outcomes.append(str(exc))
    if outcomes[0] is not None:
        return Check(name, False, f"adding line 1 to probe PO {number} failed: {outcomes[0]}")
    record = client.find_purchase_order(number)
    rows = client.execute_data_source(cfg.lookup.key, {cfg.lookup.inputs["po_number"]: number},
                                      operation="purchase_order.probe", result_error=None).rows
    col = cfg.lookup.columns.get("line_number")
    ones = sum(1 for r in rows if col and (r.get(col) or "").strip() == "1")
    verdict = "fail" if outcomes[1] is not None else "duplicate" if ones > 1 else "update"
    what = {"fail": "a repeated line add is refused", "update": "a repeated line add updates the line",
            "duplicate": "a repeated line add makes a second line"}[verdict]
    known = record is not None and 1 in record.line_numbers
    guard = ("configured (the look-up returns the PO's lines)" if known
             else "NOT working: the look-up does not return line numbers (map columns.line_number)")
    need = "not strictly needed" if verdict == "fail" else "needed"
    return Check(name, known, f"{what}; the line check before adding is {need} and {guard}")
