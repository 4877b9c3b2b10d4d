"""Schemathesis over the panel's /api/openapi.json: valid and invalid requests, never a 5xx.

Bounded (``FUZZ_EXAMPLES`` per operation, 40 by default, no shrinking, derandomised so a failure is
the same failure on the next run): the whole run adds well under a minute. Every 5xx found is
listed with the request that caused it.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from tests.test_web_support import add_token, add_user, ingest, new_runtime, x12_850

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


def _panel(tmp_path):
    from gateway.store.db import upgrade
    from gateway.web import create_app

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    rt = new_runtime(url, tmp_path)
    rt.settings = rt.settings.model_copy(update={"web": rt.settings.web.model_copy(
        update={"allowed_hosts": ["testserver", "localhost"]})})
    add_user(rt.engine, "olga", "operator")
    ingest(rt, x12_850(77, ["PO-77", "PO-78"], broken=(2,)))
    return rt, create_app(rt), {"Authorization": f"Bearer {add_token(rt.engine, 'olga')}"}


def test_no_request_makes_the_panel_answer_5xx(tmp_path):
    rt, app, auth = _panel(tmp_path)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app, headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, "the schema lost its operations"
    server_errors: list[tuple] = []
    tried = 0

    for operation in operations:
        strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                             operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None, phases=[Phase.explicit, Phase.generate])
        def probe(case):
            nonlocal tried
            tried += 1
            response = case.call(headers=auth)
            if response.status_code >= 500:
                server_errors.append((case.method, case.formatted_path, case.query, case.body,
                                      response.status_code, response.text[:200]))
                return
            if response.status_code >= 400:
                assert "detail" in response.json(), (case.method, case.formatted_path, response.text[:300])
                assert response.headers.get("x-content-type-options") == ["nosniff"]
                assert "Traceback" not in response.text

        probe()
    rt.engine.dispose()
    print(f"schemathesis: {tried} requests over {len(operations)} operations, {len(server_errors)} answered 5xx")
    assert tried >= 5 * len(operations)
    assert server_errors == [], f"{len(server_errors)} of {tried} requests got a 5xx: {server_errors[:10]}"
