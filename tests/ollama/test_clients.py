"""The other real registry clients, built from the Go module proxy by scripts/build-go-tools,
against what `bundle import --to-registry` pushes into Debian's docker-registry:

- cosign verifies every model's signature with the signer's public key, as the README and
  formats/signature-v1.md §6 promise, and refuses it with a key we did not sign with;
- crane and oras read every manifest and blob byte for byte;
- `crane copy` and `oras copy` of a pushed model into a second registry keep its digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.common import REPO, Keys, make_keys, run
from tests.support.servers import SCHEMA2, Registry, _get, run_registry

TOOLS = REPO / "scripts" / "build-go-tools"


def _tool(name: str) -> Path:
    built = subprocess.run([str(TOOLS), name], capture_output=True, text=True, check=False,
                           stdin=subprocess.DEVNULL)
    assert built.returncode == 0, built.stderr[-3000:]
    return Path(built.stdout.splitlines()[-1])


@dataclass(frozen=True)
class Pushed:
    """A signed bundle of the sample store, pushed into `registry` under `ns`."""

    registry: Registry
    ns: str
    keys: Keys
    store: Path
    models: dict[str, str]  # repo:tag in the registry -> the source manifest's store path

    def ref(self, repo_tag: str) -> str:
        return f"{self.registry.netloc}/{self.ns}/{repo_tag}"

    def manifest(self, repo_tag: str) -> bytes:
        return (self.store / "manifests" / self.models[repo_tag]).read_bytes()


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    root = tmp_path_factory.mktemp("clients")
    store = root / "store"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-sample-store"), str(store),
                    "--size", "1MiB"],
                   check=True, capture_output=True)
    keys = make_keys(root, "release")
    bundle = root / "models.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
             str(bundle)])
    assert r.exit_code == 0, r.output
    r = run(["import", str(bundle), "--to-registry", f"{registry.url}/clients", "--trust",
             str(keys.pub), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cosignSignatures"] == 4
    yield Pushed(registry, "clients", keys, store, {
        "tiny:latest": "registry.ollama.ai/library/tiny/latest",
        "tiny:chat": "registry.ollama.ai/library/tiny/chat",
        "repo:Q4_K_M": "hf.co/org/repo/Q4_K_M",
        "model:v1": "localhost:5000/team/model/v1",
    })


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blobs(manifest: bytes) -> list[str]:
    doc = json.loads(manifest)
    return [d["digest"] for d in [doc["config"], *doc["layers"]]]


def _exec(argv: list[str | Path], home: Path, check: bool = True
          ) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COSIGN_"))}
    env.update(HOME=str(home), DOCKER_CONFIG=str(home / ".docker"), SIGSTORE_NO_CACHE="true",
               TUF_ROOT=str(home / ".sigstore"))
    done = subprocess.run([str(a) for a in argv], capture_output=True, env=env, check=False,
                          stdin=subprocess.DEVNULL, timeout=300)
    if check:
        assert done.returncode == 0, f"{argv}: {done.stderr.decode(errors='replace')[-3000:]}"
    return done


def test_cosign_verifies_every_pushed_model(pushed: Pushed, tmp_path: Path) -> None:
    cosign = _tool("cosign")
    stranger = make_keys(tmp_path, "stranger")
    for repo_tag in pushed.models:
        repo = pushed.ref(repo_tag).rsplit(":", 1)[0]
        by_digest = f"{repo}@{_digest(pushed.manifest(repo_tag))}"
        for ref in (by_digest, pushed.ref(repo_tag)):
            ok = _exec([cosign, "verify", "--key", pushed.keys.pub,
                        "--insecure-ignore-tlog=true", "--allow-http-registry", ref], tmp_path)
            claims = json.loads(ok.stdout)
            assert [c["critical"]["image"]["docker-manifest-digest"] for c in claims] == [
                _digest(pushed.manifest(repo_tag))]
        refused = _exec([cosign, "verify", "--key", stranger.pub,
                         "--insecure-ignore-tlog=true", "--allow-http-registry", by_digest],
                        tmp_path, check=False)
        assert refused.returncode != 0
        assert b"no matching signatures" in refused.stderr, refused.stderr


def test_crane_and_oras_read_what_we_push_byte_for_byte(pushed: Pushed, tmp_path: Path) -> None:
    crane, oras = _tool("crane"), _tool("oras")
    for repo_tag in pushed.models:
        ref = pushed.ref(repo_tag)
        repo = ref.rsplit(":", 1)[0]
        manifest = pushed.manifest(repo_tag)
        assert _exec([crane, "manifest", "--insecure", ref], tmp_path).stdout == manifest
        assert _exec([crane, "digest", "--insecure", ref], tmp_path).stdout.decode().strip() \
            == _digest(manifest)
        assert _exec([oras, "manifest", "fetch", "--plain-http", ref], tmp_path).stdout \
            == manifest
        for digest in _blobs(manifest):
            blob = (pushed.store / "blobs" / digest.replace(":", "-")).read_bytes()
            assert _exec([crane, "blob", "--insecure", f"{repo}@{digest}"], tmp_path).stdout \
                == blob
            out = tmp_path / "blob"
            _exec([oras, "blob", "fetch", "--plain-http", "--output", out, f"{repo}@{digest}"],
                  tmp_path)
            assert out.read_bytes() == blob


def test_crane_and_oras_copy_keep_the_digests(pushed: Pushed, tmp_path: Path) -> None:
    crane, oras = _tool("crane"), _tool("oras")
    with run_registry(tmp_path / "second") as second:
        for repo_tag in pushed.models:
            manifest = pushed.manifest(repo_tag)
            copies: list[tuple[str, list[str | Path]]] = [
                ("crane", [crane, "copy", "--insecure", pushed.ref(repo_tag),
                           f"{second.netloc}/crane/{repo_tag}"]),
                ("oras", [oras, "copy", "--from-plain-http", "--to-plain-http",
                          pushed.ref(repo_tag), f"{second.netloc}/oras/{repo_tag}"])]
            for tool, argv in copies:
                _exec(argv, tmp_path)
                repo, tag = repo_tag.split(":")
                status, body, headers = _get(f"{second.url}/v2/{tool}/{repo}/manifests/{tag}",
                                             SCHEMA2)
                assert status == 200 and body == manifest, (tool, repo_tag)
                assert headers["Docker-Content-Digest"] == _digest(manifest)
                for digest in _blobs(manifest):
                    status, blob, _ = _get(f"{second.url}/v2/{tool}/{repo}/blobs/{digest}")
                    assert status == 200 and _digest(blob) == digest, (tool, digest)
