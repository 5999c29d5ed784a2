"""scripts/make-sample-store builds an Ollama model store laid out byte for byte as Ollama does.

Reference: formats/ollama-store.md §2 (layout, names) and §4 (modes); Ollama's
manifest/manifest.go and types/model/config.go (manifest and config formats); tests/data (real,
hash-checked llama3.2 bytes).
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make-sample-store"
MIB = 1 << 20
TINY_SIZE = 3 * MIB

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL = "application/vnd.ollama.image.model"
PROJECTOR = "application/vnd.ollama.image.projector"
TEMPLATE = "application/vnd.ollama.image.template"
SYSTEM = "application/vnd.ollama.image.system"
PARAMS = "application/vnd.ollama.image.params"
LICENSE = "application/vnd.ollama.image.license"

# `ollama list` name -> manifest path under manifests/ (formats/ollama-store.md §2), in the
# order the script prints.
MANIFEST_PATHS = {
    "tiny:latest": "registry.ollama.ai/library/tiny/latest",
    "tiny:chat": "registry.ollama.ai/library/tiny/chat",
    "hf.co/org/repo:Q4_K_M": "hf.co/org/repo/Q4_K_M",
    "localhost:5000/team/model:v1": "localhost:5000/team/model/v1",
}
LAYER_TYPES = {
    "tiny:latest": [MODEL, TEMPLATE, PARAMS],
    "tiny:chat": [MODEL, TEMPLATE, SYSTEM, PARAMS],
    "hf.co/org/repo:Q4_K_M": [MODEL, TEMPLATE, LICENSE],
    "localhost:5000/team/model:v1": [MODEL, PROJECTOR, TEMPLATE, PARAMS],
}
MANIFEST_KEYS = ["schemaVersion", "mediaType", "config", "layers"]
DESCRIPTOR_KEYS = ["mediaType", "digest", "size"]
CONFIG_KEYS = [
    "model_format",
    "model_family",
    "model_families",
    "model_type",
    "file_type",
    "architecture",
    "os",
    "rootfs",
]
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
BLOB_NAME_RE = re.compile(r"sha256-[0-9a-f]{64}")

# The params blob of llama3.2:latest (96 bytes; tests/data/llama3.2-latest.manifest names it):
# the stop tokens as Ollama's json.Encoder writes them.
LLAMA3_PARAMS_DIGEST = "56bb8bd477a519ffa694fc449c2413c6f0e1d3b1c88fa7e3c9d88d3ae49d4dcb"


def go_json(value: Any) -> bytes:
    """Go's json.Marshal: compact, with `<`, `>` and `&` escaped as \\u003c, \\u003e, \\u0026."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def run_script(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


@dataclass(frozen=True)
class Built:
    root: Path
    stdout: str

    def manifest_raw(self, name: str) -> bytes:
        return (self.root / "manifests" / MANIFEST_PATHS[name]).read_bytes()

    def manifest(self, name: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.manifest_raw(name))
        return value

    def blob(self, digest: str) -> bytes:
        assert DIGEST_RE.fullmatch(digest), digest
        return (self.root / "blobs" / digest.replace(":", "-")).read_bytes()

    def layer(self, name: str, media_type: str) -> dict[str, Any]:
        layers: list[dict[str, Any]] = self.manifest(name)["layers"]
        (layer,) = [x for x in layers if x["mediaType"] == media_type]
        return layer


def build(root: Path, *args: str) -> Built:
    return Built(root, run_script(root, *args).stdout)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("sample") / "models", "--size", "3MiB")


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> file bytes (None for directories)."""
    return {
        p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def tiny_weights_size(built: Built) -> int:
    size: int = built.layer("tiny:latest", MODEL)["size"]
    assert len(built.blob(built.layer("tiny:latest", MODEL)["digest"])) == size
    return size


# --- the helper itself -----------------------------------------------------------------------


def test_go_json_helper_reproduces_real_ollama_bytes() -> None:
    """Sanity-check the comparison helper against llama3.2:latest's real bytes (tests/data)."""
    params = {"stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    raw_params = go_json(params) + b"\n"
    assert len(raw_params) == 96
    assert hashlib.sha256(raw_params).hexdigest() == LLAMA3_PARAMS_DIGEST

    def desc(media_type: str, hexdigest: str, size: int) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": f"sha256:{hexdigest}", "size": size}

    config = "34bb5ab01051a11372a91f95f3fbbc51173eed8e7f13ec395b9ae9b8bd0e242b"
    model = "dde5aa3fc5ffc17176b5e8bdc82f587b24b2678c6c66101bf7da77af9f7ccdff"
    template = "966de95ca8a62200913e3f8bfbf84c8494536f1b94b49166851e76644e966396"
    license1 = "fcc5a6bec9daf9b561a68827b67ab6088e1dba9d1fa2a50d7bbcc8384e0a265d"
    license2 = "a70ff7e570d97baaf4e62ac6e6ad9975e04caa6d900d3742d37698494479e0cd"
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": desc(CONFIG_MEDIA_TYPE, config, 561),
        "layers": [
            desc(MODEL, model, 2019377376),
            desc(TEMPLATE, template, 1429),
            desc(LICENSE, license1, 7711),
            desc(LICENSE, license2, 6016),
            desc(PARAMS, LLAMA3_PARAMS_DIGEST, 96),
        ],
    }
    raw = go_json(manifest)
    assert len(raw) == 1005
    assert hashlib.sha256(raw).hexdigest() == (
        "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"
    )


# --- layout ----------------------------------------------------------------------------------


def test_tree_layout_and_modes(store: Built) -> None:
    paths = tree(store.root)
    dirs = {p for p, data in paths.items() if data is None}
    files = {p for p, data in paths.items() if data is not None}
    expected_dirs = {"blobs", "manifests"}
    for rel in MANIFEST_PATHS.values():
        parts = rel.split("/")
        expected_dirs |= {"/".join(["manifests", *parts[:i]]) for i in range(1, 4)}
    assert dirs == expected_dirs
    manifests = {p for p in files if p.startswith("manifests/")}
    assert manifests == {f"manifests/{rel}" for rel in MANIFEST_PATHS.values()}
    blobs = files - manifests
    assert blobs, "no blobs"
    for path in blobs:
        directory, name = path.split("/")
        assert directory == "blobs"
        assert BLOB_NAME_RE.fullmatch(name), f"stray file in blobs/: {name}"
    for path in dirs | {"."}:
        assert stat.S_IMODE((store.root / path).stat().st_mode) == 0o755, path
    for path in files:
        assert stat.S_IMODE((store.root / path).stat().st_mode) == 0o644, path


def test_every_blob_is_named_by_its_sha256(store: Built) -> None:
    for blob in (store.root / "blobs").iterdir():
        assert blob.name == "sha256-" + hashlib.sha256(blob.read_bytes()).hexdigest()


def test_manifest_descriptors_match_blobs(store: Built) -> None:
    referenced: set[str] = set()
    for name in MANIFEST_PATHS:
        manifest = store.manifest(name)
        assert manifest["schemaVersion"] == 2
        assert manifest["mediaType"] == MANIFEST_MEDIA_TYPE
        assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
        assert [layer["mediaType"] for layer in manifest["layers"]] == LAYER_TYPES[name]
        for descriptor in [manifest["config"], *manifest["layers"]]:
            assert DIGEST_RE.fullmatch(descriptor["digest"]), descriptor
            assert len(store.blob(descriptor["digest"])) == descriptor["size"]
            referenced.add(descriptor["digest"].replace(":", "-"))
    # No orphans: Ollama's start-up prune would delete them (formats/ollama-store.md §4.1).
    assert referenced == {p.name for p in (store.root / "blobs").iterdir()}


def test_tiny_tags_share_the_weights_blob(store: Built) -> None:
    latest, chat = store.manifest("tiny:latest"), store.manifest("tiny:chat")
    assert latest["layers"][0] == chat["layers"][0]
    assert store.layer("tiny:latest", TEMPLATE) != store.layer("tiny:chat", TEMPLATE)
    assert store.manifest_raw("tiny:latest") != store.manifest_raw("tiny:chat")
    assert tiny_weights_size(store) == TINY_SIZE
    others = {store.layer(n, MODEL)["digest"] for n in MANIFEST_PATHS if not n.startswith("tiny")}
    assert len(others) == 2
    assert latest["layers"][0]["digest"] not in others


# --- byte formats ----------------------------------------------------------------------------


def test_manifests_are_go_json_marshal_bytes(store: Built) -> None:
    for name in MANIFEST_PATHS:
        raw = store.manifest_raw(name)
        assert not raw.endswith(b"\n")
        manifest = store.manifest(name)
        assert list(manifest) == MANIFEST_KEYS
        for descriptor in [manifest["config"], *manifest["layers"]]:
            assert list(descriptor) == DESCRIPTOR_KEYS
        assert raw == go_json(manifest)


def test_configs_are_go_json_encoder_bytes(store: Built) -> None:
    for name in MANIFEST_PATHS:
        manifest = store.manifest(name)
        raw = store.blob(manifest["config"]["digest"])
        assert raw.endswith(b"}\n")
        config = json.loads(raw)
        assert list(config) == CONFIG_KEYS
        assert raw == go_json(config) + b"\n"
        assert config["model_format"] == "gguf"
        assert (config["architecture"], config["os"]) == ("amd64", "linux")
        assert config["rootfs"] == {
            "type": "layers",
            "diff_ids": [layer["digest"] for layer in manifest["layers"]],
        }
    vision = store.manifest("localhost:5000/team/model:v1")
    assert json.loads(store.blob(vision["config"]["digest"]))["model_families"] == ["llama", "clip"]


def test_params_blobs_escape_like_go(store: Built) -> None:
    assert store.layer("tiny:latest", PARAMS)["digest"] == f"sha256:{LLAMA3_PARAMS_DIGEST}"
    for name in ("tiny:latest", "localhost:5000/team/model:v1"):
        raw = store.blob(store.layer(name, PARAMS)["digest"])
        assert b"\\u003c" in raw
        assert b"<" not in raw
        assert b">" not in raw
        value = json.loads(raw)
        assert list(value) == sorted(value)  # a Go map: json.Encoder sorts its keys
        assert raw == go_json(value) + b"\n"


def test_text_layers_are_plain_utf8(store: Built) -> None:
    template = store.blob(store.layer("tiny:latest", TEMPLATE)["digest"]).decode()
    assert "<|start_header_id|>" in template
    system = store.blob(store.layer("tiny:chat", SYSTEM)["digest"]).decode()
    assert "&" in system
    assert "\\u0026" not in system
    license_text = store.blob(store.layer("hf.co/org/repo:Q4_K_M", LICENSE)["digest"]).decode()
    assert "License" in license_text


def parse_gguf(data: bytes) -> tuple[dict[str, Any], list[tuple[str, list[int], int, int]], int]:
    """Minimal GGUF v3 reader: (metadata, [(name, dims, type, offset)], tensor data start)."""
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal pos
        (length,) = take("<Q")
        text = data[pos : pos + length].decode()
        pos += length
        return text

    assert data[:4] == b"GGUF"
    pos = 4
    version, n_tensors, n_kv = take("<IQQ")
    assert version == 3
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (value_type,) = take("<I")
        if value_type == 4:  # uint32
            (metadata[key],) = take("<I")
        elif value_type == 7:  # bool
            (metadata[key],) = take("<?")
        elif value_type == 8:  # string
            metadata[key] = string()
        else:
            raise AssertionError(f"unexpected GGUF value type {value_type} for {key}")
    tensors = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = take("<I")
        dims = list(take(f"<{n_dims}Q"))
        ggml_type, offset = take("<IQ")
        tensors.append((name, dims, ggml_type, offset))
    alignment = metadata.get("general.alignment", 32)
    return metadata, tensors, pos + (-pos % alignment)


@pytest.mark.parametrize(
    ("name", "media_type", "arch"),
    [
        ("tiny:latest", MODEL, "llama"),
        ("hf.co/org/repo:Q4_K_M", MODEL, "llama"),
        ("localhost:5000/team/model:v1", MODEL, "llama"),
        ("localhost:5000/team/model:v1", PROJECTOR, "clip"),
    ],
)
def test_weights_are_gguf_with_q4_0_data(
    store: Built, name: str, media_type: str, arch: str
) -> None:
    data = store.blob(store.layer(name, media_type)["digest"])
    metadata, tensors, data_start = parse_gguf(data)
    assert metadata["general.architecture"] == arch
    assert metadata["general.file_type"] == 2  # MOSTLY_Q4_0
    ((_, dims, ggml_type, offset),) = tensors
    assert ggml_type == 2  # GGML_TYPE_Q4_0
    assert offset == 0
    assert dims[0] == 32
    n_blocks = dims[1]
    # Whole blocks fill the file; at most one block is cut short at the end.
    assert data_start + 18 * n_blocks <= len(data) < data_start + 18 * (n_blocks + 1)
    assert any(data[data_start : data_start + 18 * 64])


def test_stdout_lists_models_like_ollama_list(store: Built) -> None:
    lines = store.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines] == list(MANIFEST_PATHS)
    for line in lines:
        name, model_id, total = line.split("  ")
        assert model_id == hashlib.sha256(store.manifest_raw(name)).hexdigest()[:12]
        manifest = store.manifest(name)
        sizes = [manifest["config"]["size"], *(layer["size"] for layer in manifest["layers"])]
        assert int(total) == sum(sizes)


# --- determinism and options -----------------------------------------------------------------


def test_same_arguments_give_a_byte_identical_store(store: Built, tmp_path: Path) -> None:
    again = build(tmp_path / "again", "--size", "3MiB")
    assert tree(again.root) == tree(store.root)
    assert again.stdout == store.stdout


def test_jobs_do_not_change_bytes_and_seed_does(tmp_path: Path) -> None:
    # 10 MiB spans several independently seeded 4.5 MiB segments.
    one = build(tmp_path / "one", "--size", "10MiB", "--jobs", "1")
    two = build(tmp_path / "two", "--size", "10MiB", "--jobs", "2")
    assert one.stdout == two.stdout  # the IDs hash every digest, so every blob is equal
    other = build(tmp_path / "other", "--size", "10MiB", "--seed", "1")
    assert other.stdout != one.stdout
    assert other.layer("tiny:latest", MODEL) != one.layer("tiny:latest", MODEL)


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1000", 1000), ("1.5KB", 1500), ("2KiB", 2048), ("0.5MiB", 524288), ("1MB", 10**6)],
)
def test_size_is_exact(tmp_path: Path, size: str, expected: int) -> None:
    built = build(tmp_path / "models", "--size", size)
    assert tiny_weights_size(built) == expected


@pytest.mark.parametrize("size", ["12XB", "0.1KiB", "-5", "100"])
def test_bad_size_is_a_usage_error(tmp_path: Path, size: str) -> None:
    result = run_script(tmp_path / "models", "--size", size, check=False)
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "models" / "blobs").exists()


def test_non_empty_dir_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    result = run_script(root, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not empty" in result.stderr or "non-empty" in result.stderr
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt"]


def test_existing_empty_dir_is_used(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    built = build(root, "--size", "1000")
    assert len(built.stdout.splitlines()) == 4


# --- compressibility -------------------------------------------------------------------------


def zstd1_saving(data: bytes) -> float:
    return 1 - len(zstandard.ZstdCompressor(level=1).compress(data)) / len(data)


def test_quantized_weights_compress_like_q4_0_and_random_ones_do_not(tmp_path: Path) -> None:
    quantized = build(tmp_path / "quantized", "--size", "4MiB")
    random = build(tmp_path / "random", "--size", "4MiB", "--data", "random")
    q_saving = zstd1_saving(quantized.blob(quantized.layer("tiny:latest", MODEL)["digest"]))
    r_saving = zstd1_saving(random.blob(random.layer("tiny:latest", MODEL)["digest"]))
    assert 0.02 < q_saving < 0.08, q_saving
    assert r_saving < 0.005, r_saving


def test_random_stores_are_reproducible_and_what_ollama_would_list(tmp_path: Path) -> None:
    """--random SEED writes the generated store for SEED (tests/support/storegen.py), the same every
    time; its listing is what `ollama list` would show of it."""
    from tests.support.storegen import RandomChooser, draw_store, expected_view, ollama_view

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                if p.is_file()}

    a = run_script(tmp_path / "a", "--random", "7")
    b = run_script(tmp_path / "b", "--random", "7")
    c = run_script(tmp_path / "c", "--random", "8")
    assert a.stdout == b.stdout and tree(tmp_path / "a") == tree(tmp_path / "b")
    assert tree(tmp_path / "a") != tree(tmp_path / "c") and c.stdout != a.stdout
    spec = draw_store(RandomChooser(7))
    assert ollama_view(tmp_path / "a") == expected_view(spec)
    assert sorted(line.split("  ")[0] for line in a.stdout.splitlines()) == sorted(
        n.shortest() for n in spec.names)
    bad = run_script(tmp_path / "d", "--random", "7", "--size", "1MiB", check=False)
    assert bad.returncode == 2 and "--random takes no" in bad.stderr
