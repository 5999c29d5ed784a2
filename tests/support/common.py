"""Helpers every test module shares: stores built in code (formatted as Ollama writes them),
key pairs, and the CLI run in this process (`run`) or as a real process (`cli`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from bundler import __version__, signing
from bundler.cli import main

REPO = Path(__file__).resolve().parent.parent.parent
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
MODEL = "application/vnd.ollama.image.model"
TEMPLATE = "application/vnd.ollama.image.template"
PARAMS = "application/vnd.ollama.image.params"



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


def run(args: Sequence[str], env: Mapping[str, str] | None = None,
        input: bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=dict(env or {}), input=input,
                              catch_exceptions=False)


def cli(*args: str, env: Mapping[str, str] | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m bundler` as a real process."""
    return subprocess.run([sys.executable, "-m", "bundler", *args], input=stdin,
                          capture_output=True, env={**os.environ, **(env or {})}, check=False)


# ---------------------------------------------------------------------------------------------
# What a store must look like after any crash


def check_consistent(store: Path) -> None:
    """No manifest without its blobs; no partial blob under a final name."""
    blobs = store / "blobs"
    for path in (blobs.iterdir() if blobs.exists() else []):
        if path.name.startswith("sha256-"):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name[7:], path
        else:
            assert path.name.startswith(".bundle-") and path.name.endswith(".partial"), path
    manifests = store / "manifests"
    for path in (manifests.glob("*/*/*/*") if manifests.exists() else []):
        doc = json.loads(path.read_bytes())
        for d in [doc["config"], *doc["layers"]]:
            blob = blobs / f"sha256-{d['digest'][7:]}"
            assert blob.is_file() and blob.stat().st_size == d["size"], (path, d)
    # temp manifests live at depth 1 only, never where Ollama's glob looks
    for path in (manifests.rglob(".bundle-*") if manifests.exists() else []):
        assert path.parent == manifests


# ---------------------------------------------------------------------------------------------
# A carried tool


def fake_pex(path: Path, version: str = __version__, size: int = 300_000) -> Path:
    """A zip with the PEX-INFO that scripts/build-pex writes (the part export reads) and
    incompressible filler, so the member spans several raw blocks. Never executed."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("PEX-INFO", json.dumps({"requirements": [f"ollama-bundle=={version}",
                                                            "zstandard==0.25.0"]}))
        z.writestr("filler.bin", weights(size, seed=7), compress_type=zipfile.ZIP_STORED)
    return path


def io_counters() -> dict[str, int]:
    """This process's I/O counters as the kernel keeps them (/proc/self/io): rchar and wchar
    count every byte read and written, from the page cache or not."""
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        out[key] = int(value)
    return out


def rchar() -> int:
    """Bytes this process has read so far (io_counters)."""
    return io_counters()["rchar"]
