"""What Plex's parts share in one process: one client (its request budget shared through the
store) and the supplier master, made once per runtime for matching and delivery alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.budget import StoreRateBudgetBackend
from gateway.integrations.plex.client import PlexClient
from gateway.integrations.plex.suppliers import SupplierMaster

__all__ = ["PlexContext", "key_provider", "plex_context"]


@dataclass
class PlexContext:
    client: PlexClient
    master: SupplierMaster
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.close()


def key_provider(runtime: Any):
    """After a 401 the client asks once for the key again: a rotated key stored in the vault is taken up."""
    name = runtime.settings.plex.api_key_secret
    if not name:
        return None

    def provider():
        from gateway.secrets import Vault, load_key

        return Vault(runtime.engine, load_key(runtime.settings.key_file)).get(name)
    return provider


def plex_context(runtime: Any) -> PlexContext | None:
    """The runtime's Plex client and supplier master (None when Plex is not configured)."""
    settings = runtime.settings.plex
    if settings is None:
        return None
    found = runtime.resources.get("plex")
    if found is None or found.closed:
        client = PlexClient(settings, budget_backend=StoreRateBudgetBackend(runtime.engine),
                            key_provider=key_provider(runtime))
        master = SupplierMaster(runtime.engine, client, settings.matching, owner=runtime.instance)
        master.on_refreshed = lambda: _check_partner_suppliers(runtime)
        found = runtime.resources["plex"] = PlexContext(client, master)
    return found


def _check_partner_suppliers(runtime: Any) -> None:
    """Each partner's Plex supplier against the refreshed master: drift shown on the panel's drift page."""
    from gateway.flows.drift import scan_partners

    scan_partners(runtime.engine, runtime.partners())
