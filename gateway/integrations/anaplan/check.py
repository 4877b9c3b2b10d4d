"""``gateway check`` for Anaplan: sign in, then for each configured import that its workspace,
model, import and data-source file exist as configured and that the import's ``headerNames`` are
exactly the configured columns. Reads only: nothing is uploaded or imported.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from gateway.integrations.anaplan.client import (
    AnaplanClient,
    AnaplanConfigError,
    AnaplanError,
    AnaplanHTTPError,
    AnaplanImportConfig,
    AnaplanSettings,
    RequestCounter,
    _safe_json,
)
from gateway.integrations.anaplan.rows import _check_headers
from gateway.integrations.base import Check

__all__ = ["check_anaplan"]

_UNUSABLE_STATES = {"ARCHIVED": "archived: imports are refused", "LOCKED": "locked: imports are refused",
                    "OFFLINE": "offline: imports are refused"}


def _said(exc: AnaplanError) -> str:
    if isinstance(exc, AnaplanHTTPError) and exc.status == 404:
        return "not found (wrong id, or the user has no access to it)"
    if isinstance(exc, AnaplanHTTPError) and exc.status == 403:
        return f"refused (HTTP 403): the user lacks the role for it ({exc})"
    return str(exc)


def check_anaplan(client: AnaplanClient, settings: AnaplanSettings) -> list[Check]:
    """Sign in, then look at every configured import (``[anaplan.imports.<kind>]``)."""
    usage = RequestCounter()
    host = urlsplit(client.endpoints.auth).netloc or client.endpoints.auth
    try:
        me = _safe_json(client.request(usage, "GET", "/users/me")).get("user") or {}
    except AnaplanError as exc:
        return [Check("sign-in", False, f"{settings.auth} sign-in at {host} failed: {exc}")]
    checks = [Check("sign-in", True, f"{settings.auth} sign-in at {host} as {me.get('email') or 'the user'}")]
    if not settings.imports:
        checks.append(Check("imports", False, "no [anaplan.imports.purchase_order] or .invoice configured: "
                                              "nothing would be sent to Anaplan"))
    models: dict[tuple[str, str], dict] = {}
    for kind, cfg in sorted(settings.imports.items()):
        checks += _check_import(client, usage, kind, cfg, models)
    return checks


def _check_import(client: AnaplanClient, usage: RequestCounter, kind: str, cfg: AnaplanImportConfig,
                  models: dict[tuple[str, str], dict]) -> list[Check]:
    label = kind.replace("_", " ")
    base = f"/workspaces/{cfg.workspace_id}/models/{cfg.model_id}"

    def listing(path: str, key: str) -> list[dict]:
        rows = _safe_json(client.request(usage, "GET", path, params={"limit": 5000})).get(key) or []
        return [r for r in rows if isinstance(r, dict)]

    # Workspace and model: one listing per workspace, shared by the imports in the same model.
    where = (cfg.workspace_id, cfg.model_id)
    if where not in models:
        try:
            found = {m.get("id"): m for m in listing(f"/workspaces/{cfg.workspace_id}/models", "models")}
        except AnaplanError as exc:
            return [Check(f"{label}: workspace {cfg.workspace_id}", False, _said(exc))]
        model = found.get(cfg.model_id)
        if model is None:
            return [Check(f"{label}: model {cfg.model_id}", False,
                          f"not in workspace {cfg.workspace_id} (ids are case-sensitive; the workspace has "
                          f"{len(found)} model(s) this user can see)")]
        models[where] = model
    model = models[where]
    state = str(model.get("activeState") or "")
    checks = [Check(f"{label}: model {cfg.model_id}", state not in _UNUSABLE_STATES,
                    f"'{model.get('name', '?')}' in workspace {cfg.workspace_id}, "
                    + _UNUSABLE_STATES.get(state, state.lower() or "state unknown"))]

    def step(name: str, fn: Callable[[], Check]) -> bool:
        try:
            checks.append(fn())
        except AnaplanError as exc:
            checks.append(Check(name, False, _said(exc)))
        return checks[-1].ok

    imports: dict[str, dict] = {}

    def the_import() -> Check:
        imports.update({i.get("id"): i for i in listing(f"{base}/imports", "imports")})
        row = imports.get(cfg.import_id)
        if row is None:
            return Check(f"{label}: import {cfg.import_id}", False, "no such import in the model")
        return Check(f"{label}: import {cfg.import_id}", True, f"'{row.get('name', '?')}'")

    if not step(f"{label}: import {cfg.import_id}", the_import):
        return checks

    def the_file() -> Check:
        files = {f.get("id"): f for f in listing(f"{base}/files", "files")}
        reads = imports[cfg.import_id].get("importDataSourceId")
        name = f"{label}: file {cfg.file_id}"
        if cfg.file_id not in files:
            return Check(name, False, "no such file in the model" + (f" (the import reads file {reads})" if reads else ""))
        if reads and reads != cfg.file_id:
            return Check(name, False, f"the import reads file {reads}, not {cfg.file_id}: uploads would not reach it")
        return Check(name, True, f"'{files[cfg.file_id].get('name', '?')}', the import's data source")

    step(f"{label}: file {cfg.file_id}", the_file)

    def the_columns() -> Check:
        name = f"{label}: columns"
        meta = client.import_metadata(cfg, usage)
        try:
            _check_headers(cfg, meta.header_names)
        except AnaplanConfigError as exc:
            return Check(name, False, str(exc))
        return Check(name, True, f"the {len(meta.header_names)} configured columns are the import's headerNames")

    step(f"{label}: columns", the_columns)
    return checks
