"""Delivery stages: supplier matching, posting to Plex, forwarding to Anaplan.

:func:`build_stages` gives the worker the stages after translation, keyed by
:class:`gateway.pipeline.machine.StageName`. All four are batch stages (``batch = True``): the
worker hands each the documents it claimed and gets an outcome per document. The clients they
share (one Plex client, one Anaplan destination, the supplier master) live in a
:class:`Delivery` per call, so nothing here is process-global.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import structlog

from gateway.budget import StoreBudget, StoreRateBudgetBackend, StoreRequestBudget
from gateway.integrations.plex.matching import ChoiceError, MatchStage, choose_supplier
from gateway.integrations.plex.suppliers import SupplierMaster
from gateway.pipeline.machine import Outcome, StageName

log = structlog.get_logger("gateway.delivery")

__all__ = ["ChoiceError", "Delivery", "build_stages", "choose_supplier"]


def _passthrough(reason: str):
    def stage(docs: list, runtime: Any = None) -> dict[int, Outcome]:
        return {d.id: Outcome.ok({"skipped": reason}) for d in docs}

    stage.batch = True  # type: ignore[attr-defined]
    return stage


class Delivery:
    """The clients and stages of one process (or one test)."""

    def __init__(self, runtime: Any) -> None:
        from gateway.integrations.plex.destination import PostStage
        from gateway.integrations.plex.client import PlexClient

        settings = runtime.settings
        if settings.plex is None:
            raise ValueError("Plex is not configured")
        self.runtime = runtime
        engine = runtime.engine
        self.plex = PlexClient(settings.plex, budget_backend=StoreRateBudgetBackend(engine),
                               key_provider=self._key_provider(runtime))
        self.master = SupplierMaster(engine, self.plex, settings.plex.matching, owner=runtime.instance)
        self.master.on_refreshed = lambda: _check_partner_suppliers(runtime)
        self.match = MatchStage(engine, self.master, settings.plex.matching, runtime.partners)
        self.post = PostStage(self.plex, self.master, accounts=settings.plex.ap_invoice_accounts,
                              partners=runtime.partners, concurrency=settings.plex.concurrency,
                              time_budget=settings.workers.lease_seconds / 2)
        self.anaplan = None
        if settings.anaplan is not None:
            self.anaplan = self._anaplan(runtime)

    @staticmethod
    def _key_provider(runtime: Any):
        """After a 401 the client asks once for the key again: a rotated key stored in the vault is taken up."""
        name = runtime.settings.plex.api_key_secret
        if not name:
            return None

        def provider():
            from gateway.secrets import Vault, load_key

            return Vault(runtime.engine, load_key(runtime.settings.key_file)).get(name)
        return provider

    def _anaplan(self, runtime: Any):
        from gateway.integrations.anaplan.destination import AnaplanStages

        cfg = runtime.settings.anaplan
        tenant = hashlib.sha256(cfg.endpoints().api.encode()).hexdigest()[:12]
        budget = StoreRequestBudget(StoreBudget(runtime.engine, f"anaplan:{tenant}", cfg.requests_per_minute,
                                                block=1))
        on_refresh: Callable[[str], None] | None = None
        refresh_token: str | None = None
        if cfg.auth == "oauth" and cfg.refresh_token_secret:
            # Rotatable refresh tokens are single use: keep the newest in the vault for the next start.
            from gateway.secrets import Vault, load_key

            vault = Vault(runtime.engine, load_key(runtime.settings.key_file))
            name = cfg.refresh_token_secret
            try:
                refresh_token = vault.get(name)
            except Exception:  # noqa: BLE001 - not stored yet: start from the configured one
                refresh_token = None

            def keep(token: str) -> None:
                vault.set(name, token)
            on_refresh = keep
        destination = cfg.make_destination(budget=budget, on_refresh_token=on_refresh, refresh_token=refresh_token)
        return AnaplanStages(runtime.engine, cfg, destination, owner=runtime.instance)

    def stages(self) -> dict:
        stages: dict = {StageName.MATCH: self.match, StageName.POST: self.post}
        if self.anaplan is not None:
            stages[StageName.FORWARD] = self.anaplan.forward
            stages[StageName.CONFIRM] = self.anaplan.confirm
        else:
            stages[StageName.FORWARD] = _passthrough("Anaplan is not configured")
            stages[StageName.CONFIRM] = _passthrough("Anaplan is not configured")
        return stages

    def close(self) -> None:
        self.post.close()
        self.plex.close()
        if self.anaplan is not None:
            self.anaplan.destination.client.close()


def _check_partner_suppliers(runtime: Any) -> None:
    """Each partner's Plex supplier against the refreshed master: drift shown on the panel's drift page."""
    from gateway.flows.drift import scan_partners

    scan_partners(runtime.engine, runtime.partners())


def build_stages(runtime: Any) -> dict:
    """The stages after translation, keyed by :class:`gateway.pipeline.machine.StageName`.

    Empty until Plex is configured: translated documents then wait at ``translated``. Without
    Anaplan settings the Anaplan stages pass documents straight on to ``done``."""
    if runtime.settings.plex is None:
        return {}
    return Delivery(runtime).stages()
