"""``gateway users`` and ``gateway tokens``: accounts for the panel, API tokens shown once and stored hashed."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from gateway.cli import app
from gateway.store import ApiToken, User, make_engine
from gateway.web.security import token_hash, verify_password
from tests.db import store_url  # noqa: F401 - fixture
from tests.test_web_support import client_for, new_runtime


@pytest.fixture
def cli(store_url, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GATEWAY_DATABASE_URL", store_url)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(app, list(args), input=input)

    engine = make_engine(store_url)
    run.engine = engine
    run.url = store_url
    yield run
    engine.dispose()


def test_users_add_list_disable_and_password(cli):
    r = cli("users", "add", "olga", "--role", "operator", "--password-stdin", input="a long password\n")
    assert r.exit_code == 0, r.output
    assert "user olga added (operator)" in r.output
    with Session(cli.engine) as s:
        u = s.exec(select(User).where(User.username == "olga")).one()
    assert u.role == "operator" and u.password_hash.startswith("$argon2id$")
    assert "a long password" not in u.password_hash and verify_password(u.password_hash, "a long password")

    # Prompted twice, without echo; the two must agree.
    r = cli("users", "add", "victor", input="viewer pass 1\nviewer pass 1\n")
    assert r.exit_code == 0, r.output
    assert "viewer pass 1" not in r.output
    r = cli("users", "add", "walter", input="first one!!\nsecond one!\nfirst one!!\nfirst one!!\n")
    assert r.exit_code == 0 and "do not match" in r.output.lower()

    for args, stdin, code, says in [
        (("users", "add", "olga", "--password-stdin"), "whatever123\n", 1, "already exists"),
        (("users", "add", "zoe", "--role", "admin", "--password-stdin"), "whatever123\n", 2, "--role 'admin'"),
        (("users", "add", "bad name", "--password-stdin"), "whatever123\n", 2, "user name"),
        (("users", "add", "zoe", "--password-stdin"), "short\n", 2, "at least 8"),
        (("users", "disable", "nobody"), None, 1, "no user named nobody"),
    ]:
        r = cli(*args, input=stdin)
        assert r.exit_code == code and says in r.output, (args, r.output)
    with Session(cli.engine) as s:
        assert sorted(s.exec(select(User.username))) == ["olga", "victor", "walter"]

    r = cli("users", "list")
    lines = r.output.splitlines()
    assert [ln.split("\t")[:3] for ln in lines] == [["olga", "operator", "active"], ["victor", "viewer", "active"],
                                                    ["walter", "viewer", "active"]]
    assert "$argon2" not in r.output
    assert cli("users", "disable", "victor").exit_code == 0
    assert "victor\tviewer\tdisabled" in cli("users", "list").output
    r = cli("users", "password", "olga", "--password-stdin", input="the new password\n")
    assert r.exit_code == 0
    with Session(cli.engine) as s:
        u = s.exec(select(User).where(User.username == "olga")).one()
    assert verify_password(u.password_hash, "the new password") and not verify_password(u.password_hash,
                                                                                       "a long password")


def test_tokens_create_prints_the_token_once_and_it_opens_the_api(cli, tmp_path):
    cli("users", "add", "olga", "--role", "operator", "--password-stdin", input="a long password\n")
    r = cli("tokens", "create", "olga", "--name", "prometheus")
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    assert token.startswith("gwt_") and len(token) > 40
    with Session(cli.engine) as s:
        row = s.exec(select(ApiToken)).one()
    assert row.token_hash == token_hash(token) and token not in row.token_hash and row.name == "prometheus"

    rt = new_runtime(cli.url, tmp_path)
    c = client_for(rt)
    r = c.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert r.json() == {"username": "olga", "role": "operator", "via": "token"}
    listed = cli("tokens", "list").output
    assert "prometheus" in listed and token not in listed

    assert cli("tokens", "create", "nobody", "--name", "x").exit_code == 1
    assert cli("tokens", "create", "olga", "--name", " ").exit_code == 2
    assert cli("users", "disable", "olga").exit_code == 0
    assert c.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert cli("tokens", "create", "olga", "--name", "again").exit_code == 1  # disabled
    assert cli("tokens", "revoke", str(row.id)).exit_code == 0
    assert cli("tokens", "revoke", str(row.id)).exit_code == 1
    rt.engine.dispose()
