"""Shared fixtures: stores built in code, key pairs, the CLI runner, the loopback-only guard."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bundler import oscompat, signing
from bundler.cli import main

REPO = Path(__file__).resolve().parent.parent
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
MODEL = "application/vnd.ollama.image.model"
TEMPLATE = "application/vnd.ollama.image.template"
PARAMS = "application/vnd.ollama.image.params"


def _loopback(host: str) -> bool:
    """localhost, ::1 or any of 127.0.0.0/8 (the S3 stand-in listens on 127.0.0.2: another
    host for Ollama's redirect rule, still loopback)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not _loopback(host) and not host.startswith("/"):
            raise AssertionError(f"test tried to reach {address!r}; use a loopback server")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def write_blob(store: Path, data: bytes) -> dict[str, Any]:
    hex_ = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{hex_}").write_bytes(data)
    return {"digest": f"sha256:{hex_}", "size": len(data)}


def go_json(obj: Any) -> bytes:
    """Compact JSON with Go's HTML escaping, as Ollama's registry and json.Marshal write it."""
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def make_model(store: Path, path: str, layers: Sequence[tuple[str, bytes]],
               config: bytes | None = None) -> bytes:
    """Write blobs and a manifest at manifests/<path>, formatted as Ollama writes them."""
    cfg = write_blob(store, config if config is not None else
                     go_json({"model_format": "gguf", "model_family": "llama"}) + b"\n")
    manifest = go_json({
        "schemaVersion": 2, "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG_V1, **cfg},
        "layers": [{"mediaType": mt, **write_blob(store, data)} for mt, data in layers],
    })
    target = store / "manifests" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(manifest)
    return manifest


def weights(n: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes behind a GGUF magic."""
    out, i = bytearray(b"GGUF\x03\x00\x00\x00"), 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def small_store(root: Path) -> Path:
    """Three models, one weights blob shared by two tags, names across hosts."""
    w = weights(300_000)
    make_model(root, "registry.ollama.ai/library/tiny/latest",
               [(MODEL, w), (TEMPLATE, b"{{ .Prompt }}"), (PARAMS, b'{"stop":["\\u003c|eot|\\u003e"]}\n')])
    make_model(root, "registry.ollama.ai/library/tiny/chat",
               [(MODEL, w), (TEMPLATE, b"{{ .System }} {{ .Prompt }}")])
    make_model(root, "hf.co/org/repo/Q4_K_M", [(MODEL, weights(200_000, seed=1))])
    return root


def tree(root: Path) -> dict[str, str]:
    """Every file under root (but our lock file) with its sha256: compare stores byte for byte."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in (".ollama-bundle.lock",
                                          ".ollama-bundle.releases.json"):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Keys:
    key: Path
    pub: Path
    keyid: str


def make_keys(directory: Path, name: str = "signer", passphrase: bytes | None = None) -> Keys:
    key = signing.generate()
    key_path, pub_path = signing.write_key_pair(directory / name, key, passphrase)
    return Keys(key_path, pub_path, key.public.keyid)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An isolated environment: own config and trust directories, no OLLAMA_MODELS."""
    values = {"XDG_CONFIG_HOME": str(tmp_path / "config"),
              "BUNDLE_TRUST_DIR": str(tmp_path / "trusted")}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    for k in ("OLLAMA_MODELS", "BUNDLE_PASSPHRASE", "SOURCE_DATE_EPOCH"):
        monkeypatch.delenv(k, raising=False)
    return values


@pytest.fixture(params=[False, True], ids=["native", "portable"])
def os_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The test runs twice: with the OS-specific paths this machine has, then with
    OLLAMA_BUNDLE_PORTABLE=1 (every one off: the plain paths macOS and Windows take), in this
    process and in every process it starts. True when portable."""
    if request.param:
        monkeypatch.setenv(oscompat.PORTABLE_ENV, "1")
        assert oscompat.features() == oscompat.PLAIN
    else:
        monkeypatch.delenv(oscompat.PORTABLE_ENV, raising=False)
        assert oscompat.features() != oscompat.PLAIN
    return bool(request.param)


def run(args: Sequence[str], env: Mapping[str, str] | None = None,
        input: bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=dict(env or {}), input=input,
                              catch_exceptions=False)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return small_store(tmp_path / "store")


@pytest.fixture
def bundle_file(tmp_path: Path, store: Path, keys: Keys, env: dict[str, str]) -> Path:
    out = tmp_path / "models.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


def cli(*args: str, env: Mapping[str, str] | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m bundler` as a real process."""
    return subprocess.run([sys.executable, "-m", "bundler", *args], input=stdin,
                          capture_output=True, env={**os.environ, **(env or {})}, check=False)


@pytest.fixture
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store made by scripts/make-sample-store (the demo's and the benchmark's data)."""
    root = tmp_path_factory.mktemp("sample") / "store"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-sample-store"), str(root),
                    "--size", "2MiB"], check=True, capture_output=True)
    yield root


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700), for tests that act as
    another user."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ollama-bundle-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
