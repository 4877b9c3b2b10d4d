"""A real OpenSSH sshd on a loopback port, for tests of the SFTP source.

Load as a pytest plugin (``pytest_plugins = ["tests.sshd"]`` in the root conftest, or
``-p tests.sshd``) and ask for the session fixture ``sshd_server``.

The server runs as a non-daemon child (``sshd -D -e -f <config>``) with its own host key,
config, authorized_keys and pid file in a temporary directory; nothing of the system's
ssh setup is read or changed, except creating sshd's privilege-separation directory
(/run/sshd) when it is missing, as the distribution's service unit would.

Password login: when running as root and ``unshare``/bind mounts are permitted, sshd runs
in a private mount namespace in which /etc/shadow is replaced by a copy that gives the
login user a known password; the real file is untouched and the namespace dies with sshd.
Otherwise ``SshdServer.password`` is None and only key login works (password login is still
offered by the server, so a wrong password is refused the normal way).
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SSHD = os.environ.get("SSHD_BINARY", "/usr/sbin/sshd")
MISSING = "OpenSSH sshd not installed: apt-get install openssh-server"


@dataclass(frozen=True)
class SshdServer:
    host: str
    port: int
    username: str
    host_key: str  # "ssh-ed25519 AAAA..." — the server's public host key, for pinning
    wrong_host_key: str  # a valid key that is NOT the server's
    client_key_path: Path  # unencrypted OpenSSH private key authorised for `username`
    client_key_text: str  # another authorised key, encrypted with `client_key_passphrase`
    client_key_passphrase: str
    password: str | None  # `username`'s password inside sshd, if password login could be set up
    root: Path  # local directory for drop folders; remote paths equal local paths
    log_path: Path

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_key}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _ed25519(passphrase: str | None = None) -> tuple[str, str]:
    """(private key in OpenSSH format, public 'ssh-ed25519 AAAA...')."""
    key = ed25519.Ed25519PrivateKey.generate()
    enc = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, enc)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private.decode(), public.decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sshd_version() -> tuple[int, int]:
    out = subprocess.run([SSHD, "-V"], capture_output=True, text=True).stderr
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _password_hash(password: str) -> str | None:
    openssl = shutil.which("openssl")
    if not openssl:
        return None
    r = subprocess.run(
        [openssl, "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True
    )
    return r.stdout.strip() if r.returncode == 0 and r.stdout.startswith("$6$") else None


def _shadow_namespace(tmp: Path, user: str, password: str) -> list[str] | None:
    """Command prefix running sshd with a private /etc/shadow, or None if not possible here."""
    unshare = shutil.which("unshare")
    hashed = _password_hash(password)
    if os.geteuid() != 0 or not unshare or not hashed or not os.path.exists("/etc/shadow"):
        return None
    lines = Path("/etc/shadow").read_text().splitlines()
    out = []
    for line in lines:
        fields = line.split(":")
        if fields[0] == user:
            fields[1] = hashed
        out.append(":".join(fields))
    shadow = tmp / "shadow"
    shadow.write_text("\n".join(out) + "\n")
    shadow.chmod(0o600)
    prefix = [unshare, "--mount", "--propagation", "private", "--", "sh", "-c",
              f'mount --bind "{shadow}" /etc/shadow && exec "$@"', "sh"]
    # Probe once: containers without CAP_SYS_ADMIN refuse the mount.
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        return None
    return prefix


def _write_config(tmp: Path, port: int, root_login: str, version: tuple[int, int]) -> Path:
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {tmp / 'ssh_host_ed25519_key'}",
        f"PidFile {tmp / 'sshd.pid'}",
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
        "UsePAM no",
        "StrictModes no",
        f"PermitRootLogin {root_login}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication yes",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "Subsystem sftp internal-sftp",
        "UseDNS no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "MaxStartups 100",
        "MaxAuthTries 6",
        "LogLevel VERBOSE",
    ]
    if version >= (9, 8):
        # Tests fail logins on purpose; newer sshd would then penalise 127.0.0.1 and drop us.
        lines.append("PerSourcePenalties no")
    path = tmp / "sshd_config"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_sshd(tmp: Path) -> tuple[subprocess.Popen[bytes], SshdServer]:
    """Start sshd in `tmp`; the caller must terminate the returned process."""
    if not os.path.exists(SSHD):
        raise FileNotFoundError(MISSING)
    tmp.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    if os.geteuid() == 0:
        # sshd refuses to start as root without its privilege-separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    host_private, host_public = _ed25519()
    (tmp / "ssh_host_ed25519_key").write_text(host_private)
    (tmp / "ssh_host_ed25519_key").chmod(0o600)
    _, wrong_public = _ed25519()
    client_private, client_public = _ed25519()
    client_key_path = tmp / "client_ed25519"
    client_key_path.write_text(client_private)
    client_key_path.chmod(0o600)
    passphrase = secrets.token_urlsafe(12)
    enc_private, enc_public = _ed25519(passphrase)
    (tmp / "authorized_keys").write_text(f"{client_public}\n{enc_public}\n")
    root = tmp / "data"
    root.mkdir(exist_ok=True)

    password = secrets.token_urlsafe(16)
    prefix = _shadow_namespace(tmp, user, password)
    if prefix is None:
        password = None
    version = _sshd_version()
    log_path = tmp / "sshd.log"

    last_log = ""
    for _ in range(3):  # the free port can be taken between probing and sshd binding it
        port = _free_port()
        config = _write_config(tmp, port, "yes" if password else "prohibit-password", version)
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [*(prefix or []), SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            last_log = log_path.read_text(errors="replace")
            if "Server listening on" in last_log:
                return proc, SshdServer(
                    host="127.0.0.1", port=port, username=user, host_key=_strip(host_public),
                    wrong_host_key=_strip(wrong_public), client_key_path=client_key_path,
                    client_key_text=enc_private, client_key_passphrase=passphrase,
                    password=password, root=root, log_path=log_path,
                )
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        stop_sshd(proc)
        if "Address already in use" not in last_log:
            break
    raise RuntimeError(f"sshd did not start:\n{last_log}")


def stop_sshd(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _strip(public: str) -> str:
    return " ".join(public.split()[:2])


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    """A running OpenSSH sshd on 127.0.0.1 (session scope; one per xdist worker)."""
    if not os.path.exists(SSHD):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{MISSING} (required in CI)", pytrace=False)
        pytest.skip(MISSING)
    proc, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(proc)
