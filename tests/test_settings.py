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
    path = Path(__file__).resolve().parent.parent / "gateway.example.toml"
    s = load_settings(path)
    assert s.source_names() == ["sterling:b2bi", "sftp:partners-sftp"]
    assert s.sftp[0].folders[1].after_intake == "delete"
    assert s.anaplan is not None and s.plex is not None
    assert s.secret_references() == {
        "sterling-password", "sftp-key-passphrase", "plex-api-key", "plex-soap-password", "anaplan-password",
        "slack-webhook-url", "smtp-password",
    }
    assert s.alerts.webhooks[0].format == "slack" and s.alerts.email.kinds == ("document_failed", "outage", "ack_rejected")
