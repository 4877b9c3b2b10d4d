"""Settings from TOML and the environment; secrets resolved from the encrypted vault, never in clear."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlmodel import Session

from gateway.secrets import SecretError, Vault, load_key
from gateway.settings import SettingsError, load_settings
from gateway.store import Secret

EXAMPLE = Path(__file__).resolve().parent.parent / "gateway.example.toml"
TOML = """
data_dir = "{data}"
partners_dir = "partners"

[workers]
count = 3

[[sterling]]
name = "main"
base_url = "https://b2bi.example.com:10075"
username = "edi_gateway"
password = "secret:sterling-password"
mailboxes = ["/ACME/Inbox"]

[[local]]
name = "drop"
path = "{data}/drop"
archive_path = "{data}/archive"
"""


def _write(tmp_path: Path, text: str = TOML) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text.format(data=tmp_path))
    return path


def test_toml_then_environment(tmp_path, monkeypatch):
    path = _write(tmp_path)
    monkeypatch.setenv("GATEWAY_WORKERS__COUNT", "5")
    s = load_settings(path)
    assert s.workers.count == 5  # the environment wins over the file
    assert s.sterling[0].interval_seconds == 60 and s.local[0].interval_seconds == 5
    assert s.source_names() == ["sterling:main", "local:drop"]
    assert s.secret_references() == {"sterling-password"}
    assert s.store_url.startswith("sqlite:///") and s.store_url.endswith("gateway.db")


def test_errors_name_the_file_and_the_key(tmp_path):
    path = _write(tmp_path, TOML.replace("count = 3", "count = -1"))
    with pytest.raises(SettingsError) as exc:
        load_settings(path)
    assert str(path) in str(exc.value) and "workers.count" in str(exc.value)
    with pytest.raises(SettingsError, match="no such configuration file"):
        load_settings(tmp_path / "missing.toml")


def test_secret_references_resolved_and_stored_encrypted(tmp_path, engine, caplog):
    key = load_key(tmp_path / "secret.key")
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    vault = Vault(engine, key)
    vault.set("sterling-password", "hunter2-very-secret")
    with Session(engine) as s:
        row = s.get(Secret, "sterling-password")
    assert "hunter2" not in row.ciphertext
    s = load_settings(_write(tmp_path))
    with caplog.at_level(logging.DEBUG):
        resolved = s.resolve_secrets(vault.get)
    assert resolved.sterling[0].password.get_secret_value() == "hunter2-very-secret"
    assert "hunter2" not in repr(resolved) and "hunter2" not in caplog.text
    with pytest.raises(SecretError, match="cannot be decrypted"):
        Vault(engine, Fernet.generate_key()).get("sterling-password")
    with pytest.raises(SecretError, match="is not set"):
        vault.get("nope")
    assert vault.names() == ["sterling-password"] and vault.delete("sterling-password")


def test_the_example_settings_file_loads_and_names_its_secrets():
    s = load_settings(EXAMPLE)
    assert s.source_names() == ["sterling:b2bi", "sftp:partners-sftp", "local:drop"]
    assert s.sftp[0].folders[1].after_intake == "delete"
    assert s.anaplan is not None and s.plex is not None
    assert s.secret_references() == {
        "sterling-password", "sftp-key-passphrase", "plex-api-key", "plex-soap-password", "anaplan-password",
        "slack-webhook-url", "smtp-password", "syspro-odata-password",
    }
    # A real tenant: the three Anaplan roles on their own hosts (auth is not the API host).
    assert s.anaplan.url is None
    assert s.anaplan.endpoints().auth == "https://auth.anaplan.com" != s.anaplan.endpoints().api
    accounts = s.plex.ap_invoice_accounts
    assert (accounts.expense_account, accounts.tax_account) == ("5000-100-00", "2300-000-00")
    assert s.alerts.webhooks[0].format == "slack" and s.alerts.email.kinds == ("document_failed", "outage", "ack_rejected")


def _models_in(annotation) -> list:
    """The pydantic models an annotation names (``X | None``, ``list[X]``, ``dict[K, X]``)."""
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]


def _shown(model, node, seen: dict) -> None:
    """Record, per settings model, which of its keys ``node`` (the parsed example) shows."""
    from typing import get_args, get_origin

    for n in node if isinstance(node, list) else [node]:
        seen.setdefault(model, set()).update(n)
        for name, field in model.model_fields.items():
            if name not in n:
                continue
            for sub in _models_in(field.annotation):
                if sub.__name__ == "Const":
                    continue
                mapping = get_origin(field.annotation) is dict or any(get_origin(a) is dict
                                                                     for a in get_args(field.annotation))
                for child in (n[name].values() if mapping else [n[name]]):
                    _shown(sub, child, seen)


def test_the_example_names_every_key_the_code_reads():
    """Every section the code reads is in the example, and every key of each, set or shown commented out
    with its default or an alternative ("# key = ...")."""
    import re
    import tomllib

    from gateway.settings import Settings

    text = EXAMPLE.read_text()
    uncommented = "\n".join(line[2:] if re.match(r"# (\[|[a-z0-9_]+ = )", line) else line for line in text.splitlines())
    # The alternative auth modes are shown one after the other; the first one stands.
    uncommented = uncommented.replace('\nauth = "certificate"', "").replace('\nauth = "oauth"', "")
    seen: dict = {}
    _shown(Settings, tomllib.loads(uncommented), seen)
    missing = sorted(f"{m.__name__}.{k}" for m, keys in seen.items() for k in m.model_fields if k not in keys)
    assert missing == [], f"keys the settings read that gateway.example.toml does not show: {missing}"
    unshown = sorted(m.__name__ for m in _all_models(Settings) if m not in seen)
    assert unshown == [], f"sections gateway.example.toml does not show: {unshown}"


def _all_models(model, out=None) -> set:
    out = set() if out is None else out
    out.add(model)

    for field in model.model_fields.values():
        for sub in _models_in(field.annotation):
            if sub not in out and sub.__name__ != "Const":
                _all_models(sub, out)
    return out


def test_without_plex_gl_accounts_the_gateway_refuses_to_start(tmp_path):
    text = EXAMPLE.read_text()
    start = text.index("[plex.ap_invoice_accounts]")
    end = text.index("\n\n", start)
    path = tmp_path / "gateway.toml"
    path.write_text(text[:start] + text[end:])
    with pytest.raises(SettingsError) as exc:
        load_settings(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: plex.ap_invoice_accounts is missing: add [plex.ap_invoice_accounts] with "
                              "expense_account and tax_account")
    assert "5000-100-00" not in message  # nothing invented
    path.write_text(text.replace('expense_account = "5000-100-00"', ""))
    with pytest.raises(SettingsError, match=r"plex\.ap_invoice_accounts\.expense_account: Field required"):
        load_settings(path)