"""Alerts: webhooks and e-mail when a person is needed.

A document failed; a supplier choice has waited longer than ``attention_after_minutes``; a source
or destination has failed longer than ``outage_after_minutes`` (and when it works again); an
acknowledgment rejects what a partner sent. Configured under ``[alerts]`` (see
:mod:`gateway.alerts.settings`); found by a scanner over the store (:mod:`gateway.alerts.scanner`)
that ``gateway run`` and ``gateway poll`` host, one process at a time.

For the panel and the CLI:

- :func:`send_test` — send a test alert through every channel now (``gateway alerts test``);
- :func:`recent_alerts` — what was noticed and sent lately;
- :func:`run_alerts` — the loop, until a stop event is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from gateway.alerts.settings import AlertKind, AlertSettings, EmailChannel, WebhookChannel

__all__ = ["AlertKind", "AlertSettings", "ChannelResult", "EmailChannel", "WebhookChannel", "recent_alerts",
           "run_alerts", "scanner_for", "send_test"]


@dataclass(frozen=True)
class ChannelResult:
    """What one channel did with a test alert."""

    channel: str
    ok: bool
    detail: str  # 'sent', or why not (never a credential)


def send_test(settings: AlertSettings, *, actor: str, engine: Engine | None = None,
              send: Callable[..., str] | None = None) -> list[ChannelResult]:
    """Send a test alert through every configured channel now; kept in the store when ``engine`` is given.

    Not rate-limited and sent even when ``enabled = false`` (to try the channels before switching on).
    """
    from gateway.alerts.channels import Message
    from gateway.alerts.scanner import deliver, record_test
    from gateway.store.models import utcnow

    now = utcnow()
    lines = ("If you read this, alerts from the EDI gateway reach you here.", f"Sent by {actor} at "
             f"{now:%Y-%m-%d %H:%M:%S} UTC.")
    msg = Message(AlertKind.TEST, "Test alert from the EDI gateway", lines,
                  f"{settings.panel_url}/sources" if settings.panel_url else None, "test", "info", now)
    results = deliver(settings, msg, send) if send else deliver(settings, msg)
    if engine is not None:
        record_test(engine, results, actor, now)
    return [ChannelResult(name, not value.startswith("error:"), value.removeprefix("error: "))
            for name, value in results.items()]


def recent_alerts(engine: Engine, limit: int = 50) -> list:
    """The newest alerts noticed (outages being watched included), newest first."""
    from gateway.store.db import reading
    from gateway.store.models import AlertRecord

    with reading(engine) as s:
        return list(s.scalars(select(AlertRecord).order_by(AlertRecord.id.desc()).limit(limit)))


def scanner_for(runtime, *, owner: str | None = None):
    """The scanner for a runtime's settings, or None when alerts are not configured or switched off."""
    from gateway.alerts.scanner import Scanner

    cfg = runtime.settings.alerts
    if cfg is None or not cfg.enabled:
        return None
    return Scanner(runtime.engine, cfg, runtime.settings.source_names(), owner=owner or f"{runtime.instance}/alerts")


def run_alerts(runtime, stop: threading.Event) -> None:
    """Scan and send until ``stop`` is set (nothing to do when alerts are not configured)."""
    scanner = scanner_for(runtime)
    if scanner is not None:
        scanner.run(stop)
