"""Prometheus metrics, read from the store at scrape time (any number of gateway processes share it).

Each app has its own registry: no process-wide globals, and several apps (tests) never clash.
"""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlmodel import Session

from gateway.store.models import Document, Event, Interchange, RateWindow, SourceStatus, utcnow
from gateway.web.queries import as_utc


class _StoreCollector:
    def __init__(self, runtime):
        self.runtime = runtime

    def collect(self):
        now = utcnow()
        docs = GaugeMetricFamily("gateway_documents", "Documents in the store by state", labels=["state"])
        ichs = GaugeMetricFamily("gateway_interchanges", "Interchanges in the store by state", labels=["state"])
        events = GaugeMetricFamily("gateway_events_last_hour", "Audit events in the last hour by stage and outcome",
                                   labels=["stage", "outcome"])
        poll = GaugeMetricFamily("gateway_source_last_poll_timestamp_seconds", "When each source was last polled",
                                 labels=["source"])
        ok = GaugeMetricFamily("gateway_source_last_success_timestamp_seconds",
                               "When each source was last polled without error", labels=["source"])
        failing = GaugeMetricFamily("gateway_source_failing", "1 when the source's last poll failed", labels=["source"])
        taken = GaugeMetricFamily("gateway_source_files_taken", "Files taken from each source", labels=["source"])
        budget = GaugeMetricFamily("gateway_budget_used_last_minute",
                                   "Requests reserved from each shared budget in the last minute", labels=["budget"])
        up = GaugeMetricFamily("gateway_store_up", "1 when the store answered this scrape")
        try:
            with Session(self.runtime.engine) as s:
                for state, n in s.execute(select(Document.state, func.count()).group_by(Document.state)):
                    docs.add_metric([state], n)
                for state, n in s.execute(select(Interchange.state, func.count()).group_by(Interchange.state)):
                    ichs.add_metric([state], n)
                for stage, outcome, n in s.execute(
                        select(Event.stage, Event.outcome, func.count()).where(Event.at >= now - timedelta(hours=1))
                        .group_by(Event.stage, Event.outcome)):
                    events.add_metric([stage, outcome], n)
                for r in s.execute(select(SourceStatus)).scalars():
                    if r.last_poll_at:
                        poll.add_metric([r.source], as_utc(r.last_poll_at).timestamp())
                    if r.last_success_at:
                        ok.add_metric([r.source], as_utc(r.last_success_at).timestamp())
                    bad = bool(r.last_error and (r.last_success_at is None or (
                        r.last_error_at and as_utc(r.last_error_at) >= as_utc(r.last_success_at))))
                    failing.add_metric([r.source], 1 if bad else 0)
                    taken.add_metric([r.source], r.files_taken)
                for name, used in s.execute(
                        select(RateWindow.budget, func.sum(RateWindow.used))
                        .where(RateWindow.window_start >= now - timedelta(minutes=1), RateWindow.window_start <= now,
                               RateWindow.budget.not_like("%#hold"))
                        .group_by(RateWindow.budget)):
                    budget.add_metric([name], used or 0)
            up.add_metric([], 1)
        except Exception:  # noqa: BLE001 - a scrape reports the store down rather than failing
            up.add_metric([], 0)
        yield from (docs, ichs, events, poll, ok, failing, taken, budget, up)


class Metrics:
    def __init__(self, runtime):
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(runtime))
        self.requests = Counter("gateway_http_requests", "Panel and API requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("gateway_http_request_duration_seconds", "Panel and API response time",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
