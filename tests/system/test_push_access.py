"""Reaching a registry the ways companies set them up, against real servers on loopback:
client certificates (mTLS), docker credential helpers (`credHelpers`, `credsStore`) and an
HTTPS proxy (Debian's tinyproxy, which tunnels with CONNECT)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.common import Keys, cli
from tests.support.servers import _tail, free_port, run_registry_with, stop_process
from tests.support.tls_registry import (
    PASSWORD,
    USER,
    SecureRegistry,
    accepts_connections,
    make_certs,
)


@dataclass(frozen=True)
class MtlsRegistry:
    url: str
    dir: Path  # ca.pem, client.pem/.key (signed by ca), stranger.pem/.key (another CA)


@pytest.fixture(scope="module", name="mtls_registry")
def mtls_registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsRegistry]:
    d = tmp_path_factory.mktemp("mtls-registry")
    make_certs(d, "client")
    # a client certificate from a CA the registry does not know
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "stranger.key", "-out",
                    "stranger.pem", "-subj", "/CN=stranger", "-days", "2"],
                   cwd=d, check=True, capture_output=True)
    extra = ("  tls:\n    certificate: {dir}/srv.pem\n    key: {dir}/srv.key\n"
             "    clientcas:\n      - {dir}/ca.pem\n")
    with run_registry_with(d, extra, accepts_connections) as port:
        yield MtlsRegistry(f"https://127.0.0.1:{port}", d)


def test_client_certificate(mtls_registry: MtlsRegistry, bundle_file: Path, keys: Keys,
                            env: dict[str, str], tmp_path: Path) -> None:
    d = mtls_registry.dir
    base = ["import", str(bundle_file), "--to-registry", mtls_registry.url + "/mtls",
            "--trust", str(keys.pub), "--ca-cert", str(d / "ca.pem"), "--json"]
    home = {**env, "DOCKER_CONFIG": str(tmp_path / "docker")}
    p = cli(*base, env=home)  # no certificate: the handshake is refused
    assert p.returncode == 5, p.stderr
    assert b"Traceback" not in p.stderr
    p = cli(*base, "--client-cert", str(d / "stranger.pem"), "--client-key",
            str(d / "stranger.key"), env=home)
    assert p.returncode == 5, p.stderr
    p = cli(*base, "--client-cert", str(d / "client.pem"), env=home)
    assert p.returncode == 2 and b"go together" in p.stderr
    p = cli(*base, "--client-cert", str(d / "client.pem"), "--client-key",
            str(d / "client.key"), env=home)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["blobsUploaded"] > 0
    # `ollama pull` presents no client certificate: the probe says so
    assert doc["check"]["ok"] is False
    assert "client certificate" in " ".join(doc["check"]["findings"])


HELPER = """#!/bin/sh
# a docker credential helper (the protocol of docker-credential-helpers): `get` reads the
# server on stdin and answers JSON; it logs what it was asked, never the secret
read server
echo "$0 $1 $server" >> "{log}"
if [ "$server" = "{host}" ]; then
  printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}' "$server"
else
  echo "credentials not found in native keychain"; exit 1
fi
"""


def _helper(bin_dir: Path, name: str, host: str, log: Path, secret: str = PASSWORD) -> None:
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(HELPER.format(log=log, host=host, user=USER, secret=secret))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("kind", ["credHelpers", "credsStore"])
def test_docker_credential_helpers(secure_registry: SecureRegistry, bundle_file: Path,
                                   keys: Keys, env: dict[str, str], tmp_path: Path,
                                   kind: str) -> None:
    host = secure_registry.url.removeprefix("https://")
    bin_dir, docker, log = tmp_path / "bin", tmp_path / "docker", tmp_path / "helper.log"
    bin_dir.mkdir()
    docker.mkdir()
    _helper(bin_dir, "good", host, log)
    _helper(bin_dir, "wrong", host, log, secret="not-the-password")  # noqa: S106
    home = {**env, "DOCKER_CONFIG": str(docker),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    base = ["import", str(bundle_file), "--to-registry", f"{secure_registry.url}/{kind.lower()}",
            "--trust", str(keys.pub), "--ca-cert", str(secure_registry.ca), "--json"]

    def config(helper: str) -> None:
        doc = {"credHelpers": {host: helper}} if kind == "credHelpers" else {"credsStore": helper}
        (docker / "config.json").write_text(json.dumps(doc))

    config("wrong")
    p = cli(*base, env=home)
    assert p.returncode == 5 and b"401" in p.stderr, p.stderr
    config("missing")
    p = cli(*base, env=home)
    assert p.returncode == 2 and b"docker-credential-missing" in p.stderr, p.stderr
    config("good")
    p = cli(*base, env=home)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["blobsUploaded"] > 0
    assert PASSWORD.encode() not in p.stdout + p.stderr
    assert f"docker-credential-good get {host}" in log.read_text()


@contextlib.contextmanager
def run_tinyproxy(d: Path) -> Iterator[tuple[str, Path]]:
    binary = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")
    if binary is None:
        pytest.fail("tinyproxy is not installed (scripts/setup installs it)", pytrace=False)
    port, log = free_port(), d / "tinyproxy.log"
    conf = d / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n"
                    f"LogFile \"{log}\"\nLogLevel Connect\nMaxClients 20\n")
    with (d / "tinyproxy.err").open("wb") as err:
        proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + 10
        while not accepts_connections(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"tinyproxy did not start:\n{_tail(d / 'tinyproxy.err', log)}",
                            pytrace=False)
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop_process(proc)


def test_https_proxy_and_no_proxy(secure_registry: SecureRegistry, bundle_file: Path,
                                  keys: Keys, env: dict[str, str], tmp_path: Path) -> None:
    host = secure_registry.url.removeprefix("https://")
    base = ["import", str(bundle_file), "--to-registry", f"{secure_registry.url}/proxied",
            "--trust", str(keys.pub), "--ca-cert", str(secure_registry.ca), "--json",
            "--username", USER, "--password-stdin"]
    with run_tinyproxy(tmp_path) as (proxy, log):
        # (an empty lower-case variable would cancel the upper-case one: set both)
        home = {**env, "DOCKER_CONFIG": str(tmp_path / "docker"), "HTTPS_PROXY": proxy,
                "https_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
        p = cli(*base, env=home, stdin=PASSWORD.encode() + b"\n")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["blobsUploaded"] > 0
        tunnelled = log.read_text()
        assert f"CONNECT {host}" in tunnelled, tunnelled
        # NO_PROXY names the registry: straight there, the proxy sees nothing new
        p = cli(*base, env={**home, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
                stdin=PASSWORD.encode() + b"\n")
        assert p.returncode == 0, p.stderr
        assert log.read_text() == tunnelled
    # the proxy is gone: with HTTPS_PROXY still set, the push fails and says what to check
    p = cli(*base, env=home, stdin=PASSWORD.encode() + b"\n")
    assert p.returncode == 5 and b"HTTPS_PROXY" in p.stderr, p.stderr
