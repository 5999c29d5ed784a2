"""The real registry over TLS with a private CA and htpasswd Basic auth, as a fixture
(`secure_registry`) and the certificate helpers behind it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from tests.support.servers import run_registry_with

USER, PASSWORD = "pusher", "correct-horse-battery"


@dataclass(frozen=True)
class SecureRegistry:
    url: str
    ca: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}",
             "-days", "2", cwd=d)


def make_certs(d: Path, *names: str) -> None:
    """ca.pem and other-ca.pem; srv.pem for 127.0.0.1, and a certificate NAME.pem (key
    NAME.key) signed by ca for each further name, for client authentication."""
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    for name, ext in [("srv", "subjectAltName=IP:127.0.0.1\n"),
                      *((n, "extendedKeyUsage=clientAuth\n") for n in names)]:
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / "ext.cnf").write_text(ext + "basicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "ext.cnf",
                 cwd=d)


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def run_secure_registry(d: Path) -> Iterator[SecureRegistry]:
    make_certs(d)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    (d / "htpasswd").write_text(f"{USER}:{hashed}\n")
    extra = ("  tls:\n    certificate: {dir}/srv.pem\n    key: {dir}/srv.key\n"
             "auth:\n  htpasswd:\n    realm: tests\n    path: {dir}/htpasswd\n")
    with run_registry_with(d, extra, accepts_connections) as port:
        yield SecureRegistry(f"https://127.0.0.1:{port}", d / "ca.pem", d / "other-ca.pem")


@pytest.fixture(scope="module", name="secure_registry")
def secure_registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRegistry]:
    with run_secure_registry(tmp_path_factory.mktemp("tls-registry")) as server:
        yield server
