"""Sterling's optional OAuth2 client-credentials mode (SPECULATIVE per specs/sterling.md §2) beside Basic,
client against the simulator over real HTTP: the token is fetched once, reused, fetched again before it
expires and once after a 401, and a refused client is an auth error that names no secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.integrations.sterling.client import SterlingAuthError, SterlingClient
from gateway.integrations.sterling.settings import SterlingConfig
from gateway.integrations.sterling.simulator.app import run_sterling_sim

INBOX = "/ACME/Inbox"
SECRET = "cc-secret-never-logged"


@pytest.fixture
def sim():
    with run_sterling_sim(users={"edi_api": "basic-password"}, partners=["ACME"],
                          oauth_clients={"gateway-client": {"secret": SECRET, "user": "edi_api"}},
                          token_ttl_seconds=3600) as s:
        yield s


def _config(sim, **changes) -> SterlingConfig:
    values = dict(base_url=sim.base_url, auth="oauth2", oauth_client_id="gateway-client",
                  oauth_client_secret=SECRET, mailboxes=[INBOX], retry_attempts=2, retry_wait_initial=0.01,
                  retry_wait_max=0.05, timeout=5)
    values.update(changes)
    return SterlingConfig(**values)


def test_client_credentials_token_is_cached_and_renewed_on_expiry_and_on_401(sim):
    sim.deposit(INBOX, "po1.edi", b"ISA*first~")
    sim.deposit(INBOX, "po2.edi", b"ISA*second~")
    with SterlingClient(_config(sim)) as client:
        messages = list(client.list_pending())
        assert sorted(client.fetch(m) for m in messages) == [b"ISA*first~", b"ISA*second~"]
        assert sim.token_requests == 1  # one token for the whole poll
        sim.expire_tokens()  # revoked before its time: the API answers 401
        assert len(list(client.list_pending())) == 2
        assert sim.token_requests == 2  # fetched once more, the request retried with it
        auth = client._client.auth
        auth._expires_at = auth._clock() + 30  # within a minute of expiry: renewed before use
        list(client.list_pending())
        assert sim.token_requests == 3
    # Basic still works beside it.
    basic = _config(sim, auth="basic", username="edi_api", password="basic-password", oauth_client_id=None,
                    oauth_client_secret=None)
    with SterlingClient(basic) as client:
        assert len(list(client.list_pending())) == 2
    assert sim.token_requests == 3


def test_a_refused_client_is_an_auth_error_without_its_secret(sim):
    with SterlingClient(_config(sim, oauth_client_secret="not-the-secret")) as client:
        with pytest.raises(SterlingAuthError) as err:
            list(client.list_pending())
    assert "gateway-client" in str(err.value) and "invalid_client" in str(err.value)
    assert "not-the-secret" not in str(err.value) and SECRET not in str(err.value)
    # The same 401 the API gives an expired token is not looped on: one new token, one retry.
    with SterlingClient(_config(sim)) as client:
        sim.faults.update(auth_fail_count=5)
        with pytest.raises(SterlingAuthError):
            list(client.list_pending())
        assert sim.token_requests <= 3


def test_settings_name_what_each_mode_needs():
    with pytest.raises(ValidationError, match="oauth_client_id and oauth_client_secret"):
        SterlingConfig(base_url="https://b2bi.example.com:10075", auth="oauth2", mailboxes=[INBOX])
    with pytest.raises(ValidationError, match="username and password"):
        SterlingConfig(base_url="https://b2bi.example.com:10075", mailboxes=[INBOX])
    cfg = SterlingConfig(base_url="https://b2bi.example.com:10075", auth="oauth2", oauth_client_id="c",
                         oauth_client_secret="s", mailboxes=[INBOX])
    assert cfg.principal == "OAuth client c" and "s" not in repr(cfg.oauth_client_secret)
