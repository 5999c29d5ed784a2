"""Pushing to the real registry over TLS with a private CA and htpasswd Basic auth."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.common import Keys, cli
from tests.support.tls_registry import PASSWORD, USER, SecureRegistry


def test_tls_and_basic_auth(secure_registry: SecureRegistry, bundle_file: Path, keys: Keys,
                            env: dict[str, str], tmp_path: Path) -> None:
    base = ["import", str(bundle_file), "--to-registry", secure_registry.url + "/secure",
            "--trust", str(keys.pub)]
    home = {**env, "DOCKER_CONFIG": str(tmp_path / "docker")}
    # the system CAs do not know our CA; another CA does not either
    p = cli(*base, env=home)
    assert p.returncode == 5 and b"--ca-cert" in p.stderr, p.stderr
    p = cli(*base, "--ca-cert", str(secure_registry.other_ca), env=home)
    assert p.returncode == 5
    # the right CA, but no credentials
    p = cli(*base, "--ca-cert", str(secure_registry.ca), env=home)
    assert p.returncode == 5 and b"401" in p.stderr and b"--username" in p.stderr, p.stderr
    # a wrong password
    p = cli(*base, "--ca-cert", str(secure_registry.ca), "--username", USER, "--password-stdin",
            env=home, stdin=b"wrong\n")
    assert p.returncode == 5
    # right: and the password appears nowhere in what we print
    p = cli(*base, "--ca-cert", str(secure_registry.ca), "--username", USER, "--password-stdin",
            "--json", env=home, stdin=PASSWORD.encode() + b"\n")
    assert p.returncode == 0, p.stderr
    assert PASSWORD.encode() not in p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["blobsUploaded"] > 0
    assert doc["check"]["ok"] is False  # Ollama sends no Basic auth: colleagues could not pull
    assert "credentials" in " ".join(doc["check"]["findings"])
    # credentials from docker's config.json; TLS check skipped with a warning
    docker = tmp_path / "docker"
    docker.mkdir()
    import base64

    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps(
        {"auths": {secure_registry.url.removeprefix("https://"): {"auth": auth}}}))
    p = cli(*base, "--insecure-skip-tls-verify", "--json", env=home)
    assert p.returncode == 0, p.stderr
    assert b"warning: --insecure-skip-tls-verify" in p.stderr
    assert json.loads(p.stdout)["blobsUploaded"] == 0  # all there already
    assert PASSWORD.encode() not in p.stdout + p.stderr
