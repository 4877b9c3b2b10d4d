"""Plex -> Anaplan record flows against the Plex and Anaplan simulators: every Plex record
resource read and imported; resources with a modified-date filter read again only for what changed
(a window from the watermark minus the overlap), the others read whole and compared by hash."""

from __future__ import annotations

import pytest

from gateway.flows.files import parse_flow_text
from gateway.integrations.plex.simulator.records import touch
from gateway.sandbox.flows import PLEX_FLOWS, PLEX_IMPORT_ID, plex_flow_text, plex_settings, start_plex
from tests.flows_env import start_env

TOUCHED = {"purchase-orders": "purchase_orders", "suppliers": "suppliers", "parts": "parts",
           "containers": "containers", "journal-entries": "journal_entries"}


@pytest.fixture(scope="module")
def plex():
    sim = start_plex()
    yield sim
    sim.server.stop()


@pytest.fixture
def env(tmp_path, plex):
    from gateway.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    engine = make_engine(url)
    e = start_env(engine, tmp_path, warehouse_rows=10)
    yield e
    e.syspro_server.stop()
    e.anaplan_server.stop()
    engine.dispose()


def settings(env, plex):
    return env.settings().model_copy(update={"plex": type(env.settings()).model_fields["plex"].annotation.__args__[0]
                                             .model_validate({**plex_settings(plex), "requests_per_minute": 6000,
                                                              "burst": 500})})


def expected(plex, entity: str) -> int:
    pcn = plex.settings.tenants[0].pcn
    if entity == "purchase-orders":
        return sum(1 for p in plex.purchase_orders.values() if p["_tenant"] == pcn)
    if entity == "suppliers":
        return sum(1 for p in plex.suppliers.values() if p["_tenant"] == pcn)
    if entity == "cost-centres":
        return len({r["costCenterSegment"] for r in plex.records[pcn]["trial_balance"].values()})
    kind = {"supply-items": "supply_items", "chart-of-accounts": "accounts"}.get(entity, entity.replace("-", "_"))
    return len(plex.records[pcn][kind])


@pytest.mark.parametrize("entity", list(PLEX_FLOWS))
def test_every_plex_resource_flows_into_anaplan_and_only_changes_are_sent_again(env, plex, entity):
    s = settings(env, plex)
    first = env.runner(plex_flow_text(entity, poll_seconds=0.05), settings=s).run()
    n = expected(plex, entity)
    assert (first.state, first.seen, first.sent, first.failed) == ("done", n, n, 0), first.line()
    keys = {r.source_key for r in env.records(f"plex-{entity}")}
    assert len(keys) == n
    assert all((k,) in env.imported(PLEX_IMPORT_ID) for k in keys)
    if entity == "purchase-orders":
        import orjson
        record = orjson.loads(env.records("plex-purchase-orders")[0].raw)
        assert record["lineItems"] and "unitPrice" in record["lineItems"][0]  # the lines come with the order
    if entity in TOUCHED:
        changed = touch(plex, TOUCHED[entity], 2)
        second = env.runner(plex_flow_text(entity, poll_seconds=0.05), settings=s).run()
        mine = [c for c in changed if c.get("_tenant", plex.settings.tenants[0].pcn) == plex.settings.tenants[0].pcn]
        assert second.sent == len(mine)
        if PLEX_FLOWS[entity][2].startswith("{kind: modified"):
            assert second.seen < n  # a window, not the whole resource
        else:
            assert second.seen == n  # read whole, compared by content hash
    else:
        second = env.runner(plex_flow_text(entity, poll_seconds=0.05), settings=s).run()
        assert (second.seen, second.sent) == (n, 0)


def test_a_resource_without_a_modified_filter_is_refused_a_modified_window(env, plex):
    text = plex_flow_text("containers").replace("{kind: snapshot}", "{kind: modified, overlap: 5m}")
    report = env.runner(text, settings=settings(env, plex)).run()
    assert report.state == "failed" and "no modified-date filter" in (report.error or "")
    assert env.tasks(PLEX_IMPORT_ID) == 0


def test_plex_flow_file_validates():
    flow = parse_flow_text(plex_flow_text("journal-entries"), "plex-journal-entries.yaml")
    assert flow.source.changes.kind == "modified" and flow.source.changes.window == "7d"
