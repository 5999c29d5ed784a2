"""The Bearer token flow against the real registry configured for token auth, with a small
token issuer of our own (Debian packages none) that signs ES256 JWTs the registry trusts."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.common import Keys, cli
from tests.support.token_registry import PASSWORD, SERVICE, USER, Issuer


def test_bearer_token_flow(token_registry: tuple[str, Issuer], bundle_file: Path, keys: Keys,
                           env: dict[str, str], tmp_path: Path) -> None:
    url, issuer = token_registry
    home = {**env, "DOCKER_CONFIG": str(tmp_path / "docker")}
    base = ["import", str(bundle_file), "--to-registry", url + "/tok", "--trust", str(keys.pub)]
    # an anonymous token grants pull only: the push is refused, naming what to do
    p = cli(*base, env=home)
    assert p.returncode == 5 and b"401" in p.stderr and b"--username" in p.stderr, p.stderr
    # with credentials the token server grants push
    p = cli(*base, "--username", USER, "--password-stdin", "--json", env=home,
            stdin=PASSWORD.encode() + b"\n")
    assert p.returncode == 0, p.stderr
    assert PASSWORD.encode() not in p.stdout + p.stderr
    assert json.loads(p.stdout)["blobsUploaded"] > 0
    scopes = {q["scope"][0] for q in issuer.requests if "scope" in q}
    assert "repository:tok/tiny:pull,push" in scopes
    assert {q.get("service", [""])[0] for q in issuer.requests} == {SERVICE}
