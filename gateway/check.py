"""``gateway check``: with the configured credentials, ask every outside system whether the gateway
can do its work there — before documents flow.

Each source (Sterling, SFTP, local folders, and any other registered kind) and each destination
(Plex, Anaplan, and whatever else is registered) answers with its own list of
:class:`~gateway.integrations.base.Check` lines. :func:`check_systems` collects them per system; the
CLI prints them as a green/red table, and the panel's sources page can show the same
:class:`SystemReport` values. A check never raises: a check that itself breaks is a red line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.integrations.base import Check

log = structlog.get_logger("gateway.check")

NOT_CHECKED = "not checked: "

__all__ = ["CheckLine", "SystemReport", "check_systems", "status_of"]


def status_of(check: Check) -> str:
    """'ok', 'fail' or 'skip' (something that could not be looked at, neither green nor red)."""
    if not check.ok:
        return "fail"
    return "skip" if check.detail.startswith(NOT_CHECKED) else "ok"


@dataclass(frozen=True)
class CheckLine:
    name: str
    status: str  # ok | fail | skip
    detail: str


@dataclass(frozen=True)
class SystemReport:
    """One outside system and what was checked there."""

    system: str  # "sterling:b2bi", "sftp:partners", "plex", "anaplan", "plex: duplicate probe"
    role: str  # source | destination | probe
    lines: tuple[CheckLine, ...]

    @property
    def ok(self) -> bool:
        return all(line.status != "fail" for line in self.lines)

    def as_dict(self) -> dict[str, Any]:
        return {"system": self.system, "role": self.role, "ok": self.ok,
                "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.lines]}


def _report(system: str, role: str, run: Callable[[], Sequence[Check]]) -> SystemReport:
    try:
        checks = list(run())
    except Exception as exc:  # noqa: BLE001 - a broken check is a red line, never a traceback
        log.warning("check.crashed", system=system, error=type(exc).__name__)
        checks = [Check("check", False, f"the check could not run: {type(exc).__name__}: {exc}")]
    if not checks:
        checks = [Check("check", True, NOT_CHECKED + "this system has nothing to check")]
    return SystemReport(system, role, tuple(CheckLine(c.name, status_of(c), c.detail) for c in checks))


def check_systems(runtime, *, probe_duplicates: bool = False, supplier: str | None = None,
                  only: set[str] | None = None) -> list[SystemReport]:
    """Check every configured source and destination (``only``: just these systems, by name or kind).

    ``probe_duplicates`` (test tenants only) also creates probe records through each Plex SOAP data
    source the gateway writes through, to see what a repeated create does.
    """
    from gateway.settings import configured_sources

    reports: list[SystemReport] = []

    def wanted(name: str) -> bool:
        return only is None or name in only or name.split(":", 1)[0] in only

    for source in configured_sources(runtime.settings):
        name = f"{source.kind}:{source.name}"
        if wanted(name):
            reports.append(_report(name, "source", source.check))
    for name, run in _record_sources(runtime):
        if wanted(name):
            reports.append(_report(name, "source", run))
    for name, run in _destinations(runtime):
        if wanted(name):
            reports.append(_report(name, "destination", run))
    if probe_duplicates and wanted("plex"):
        reports.append(_report("plex: duplicate probe", "probe", lambda: _probe(runtime, supplier)))
    return reports


# ------------------------------------------------------------------------------------ destinations


def _destinations(runtime) -> list[tuple[str, Callable[[], Sequence[Check]]]]:
    settings = runtime.settings
    out: list[tuple[str, Callable[[], Sequence[Check]]]] = []
    if settings.plex is not None:
        out.append(("plex", lambda: _with_plex(runtime, _plex_checks)))
    if settings.anaplan is not None:
        out.append(("anaplan", lambda: _anaplan_checks(runtime)))
    return out


def _record_sources(runtime) -> list[tuple[str, Callable[[], Sequence[Check]]]]:
    """The systems record flows read that have their own settings ([[syspro]] sites; Plex is [plex])."""
    return [(f"syspro:{site.name}", lambda site=site: _syspro_checks(site)) for site in runtime.settings.syspro]


def _syspro_checks(site) -> list[Check]:
    from gateway.integrations import record_source_class

    source = record_source_class("syspro")(site)
    name = f"{site.read} sign-in"
    try:
        return [Check(name, True, line) for line in source.check()]
    except Exception as exc:  # noqa: BLE001 - the SYSPRO client's errors are written for operators
        return [Check(name, False, str(exc) or type(exc).__name__)]
    finally:
        source.close()


def _with_plex(runtime, fn):
    from gateway.budget import StoreRateBudgetBackend
    from gateway.integrations.plex.client import PlexClient
    from gateway.integrations.plex.context import key_provider

    # The running gateway's request budget (shared through the store) and its key re-reading after a 401.
    client = PlexClient(runtime.settings.plex, budget_backend=StoreRateBudgetBackend(runtime.engine),
                        key_provider=key_provider(runtime))
    try:
        return fn(runtime, client)
    finally:
        client.close()


def _plex_checks(runtime, client) -> list[Check]:
    from gateway.integrations.plex.check import PlexUses, check_plex

    uses = PlexUses.from_partners(runtime.partners())
    return check_plex(client, runtime.settings.plex, uses)


def _probe(runtime, supplier: str | None) -> list[Check]:
    from gateway.integrations.plex.check import probe_duplicates

    code = supplier or _a_supplier(runtime)
    if code is None:
        return [Check("duplicate probe", False, "no supplier to create the probe PO for: give --supplier CODE "
                                                "(a supplier of the test tenant)")]
    return _with_plex(runtime, lambda rt, client: probe_duplicates(client, rt.settings.plex, code))


def _a_supplier(runtime) -> str | None:
    """A supplier for the probe PO: a partner file's plex.supplier_code, else one from the cached master."""
    from sqlmodel import select

    from gateway.store.db import reading
    from gateway.store.models import Supplier

    for partner in runtime.partners():
        if partner.plex.supplier_code:
            return partner.plex.supplier_code
    with reading(runtime.engine) as s:
        return s.exec(select(Supplier.code).where(Supplier.status == "Active").order_by(Supplier.code).limit(1)).first()


def _anaplan_checks(runtime) -> list[Check]:
    from gateway.integrations.anaplan.check import check_anaplan

    cfg = runtime.settings.anaplan
    refresh_token, keep = None, None
    if cfg.auth == "oauth" and cfg.refresh_token_secret:
        # Rotatable refresh tokens are single use: start from the newest kept and keep the next one,
        # or the running gateway would be left holding a spent token.
        from gateway.secrets import SecretError, Vault, load_key

        vault = Vault(runtime.engine, load_key(runtime.settings.key_file))
        name = cfg.refresh_token_secret
        try:
            refresh_token = vault.get(name)
        except SecretError:
            refresh_token = None

        def keep(token: str) -> None:
            vault.set(name, token)
    import hashlib

    from gateway.budget import StoreBudget, StoreRequestBudget
    from gateway.integrations.anaplan.client import make_imports

    tenant = hashlib.sha256(cfg.endpoints().api.encode()).hexdigest()[:12]  # the budget the workers share
    budget = StoreRequestBudget(StoreBudget(runtime.engine, f"anaplan:{tenant}", cfg.requests_per_minute, block=1))
    destination = make_imports(cfg, budget=budget, on_refresh_token=keep, refresh_token=refresh_token)
    try:
        return check_anaplan(destination.client, cfg)
    finally:
        destination.client.close()
