"""Remote (cloud) models and marker tags as Ollama writes and reads them (formats/
ollama-store.md §6): a store holding one must still export, list and import, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.common import CONFIG_V1, MANIFEST_V2, Keys, run, small_store, tree, write_blob


def go_encode(obj: object) -> bytes:
    """Go's json.Encoder.Encode: compact, HTML-escaped, one trailing newline."""
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .encode() + b"\n"


def make_remote(store: Path, path: str, remote_model: str) -> bytes:
    """What Ollama's CreateHandler writes for `FROM <model>:cloud` (server/create.go): a config
    with remote_host/remote_model (types/model/config.go field order) and, since no layer was
    added, a nil slice that manifest.WriteManifest encodes as "layers":null."""
    config = go_encode({
        "model_format": "", "model_family": "", "model_families": None, "model_type": "",
        "file_type": "", "remote_host": "https://ollama.com:443", "remote_model": remote_model,
        "architecture": "amd64", "os": "linux",
    })
    manifest = go_encode({"schemaVersion": 2, "mediaType": MANIFEST_V2,
                          "config": {"mediaType": CONFIG_V1, **write_blob(store, config)},
                          "layers": None})
    assert b'"layers":null' in manifest
    target = store / "manifests" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(manifest)
    return manifest


def test_all_leaves_out_remote_models_and_says_so(tmp_path: Path, keys: Keys,
                                                  env: dict[str, str]) -> None:
    store = small_store(tmp_path / "store")
    make_remote(store, "registry.ollama.ai/library/gpt-oss/120b-cloud", "gpt-oss:120b")
    out = tmp_path / "b.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out),
             "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(m["name"] for m in doc["models"]) == ["hf.co/org/repo:Q4_K_M", "tiny:chat",
                                                         "tiny:latest"]
    assert doc["remoteLeftOut"] == ["gpt-oss:120b-cloud"]
    assert "gpt-oss:120b-cloud" in r.stderr and "remote" in r.stderr


def test_inventory_of_a_store_with_a_remote_model(tmp_path: Path, env: dict[str, str]) -> None:
    store = small_store(tmp_path / "store")
    raw = make_remote(store, "registry.ollama.ai/library/gpt-oss/120b-cloud", "gpt-oss:120b")
    r = run(["inventory", "--models", str(store), "-o", str(tmp_path / "inv.json")])
    assert r.exit_code == 0, r.stderr
    inv = json.loads((tmp_path / "inv.json").read_bytes())
    assert len(inv["models"]) == 4
    assert any(m["size"] == len(raw) for m in inv["models"])


def test_named_remote_model_exports_with_a_warning_and_round_trips(
        tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = tmp_path / "store"
    raw = make_remote(store, "registry.ollama.ai/library/gpt-oss/120b-cloud", "gpt-oss:120b")
    out = tmp_path / "b.tar.zst"
    r = run(["export", "gpt-oss:120b-cloud", "--models", str(store), "--key", str(keys.key),
             "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "warning:" in r.stderr and "remote" in r.stderr and "ollama.com" in r.stderr
    r = run(["ls", str(out), "--trust", str(keys.pub), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["models"][0]["layers"] == []
    target = tmp_path / "target"
    r = run(["import", str(out), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    assert tree(target) == tree(store)
    assert (target / "manifests/registry.ollama.ai/library/gpt-oss/120b-cloud").read_bytes() \
        == raw


def test_marker_tags_are_warned_about(tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    """internal/modelref: ':cloud' and ':<tag>-cloud' send `ollama run` to the cloud; ':local'
    is read as 'this model, tag latest'. A local model stored under such a tag exports, but
    the user is told."""
    from tests.support.common import MODEL, make_model, weights
    store = tmp_path / "store"
    make_model(store, "registry.ollama.ai/library/m/8b-cloud", [(MODEL, weights(1000))])
    make_model(store, "registry.ollama.ai/library/m/local", [(MODEL, weights(1000, 1))])
    make_model(store, "registry.ollama.ai/library/m/latest", [(MODEL, weights(1000, 2))])
    out = tmp_path / "b.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out),
             "--json"])
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["models"]) == 3
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert any("m:8b-cloud" in w and "cloud" in w for w in warnings)
    assert any("m:local" in w and "m:latest" in w for w in warnings)


def test_null_layers_parse_as_none_but_a_missing_key_does_not() -> None:
    import pytest

    from bundler.errors import IntegrityError
    from bundler.oci import Manifest
    config = {"mediaType": CONFIG_V1, "digest": "sha256:" + "a" * 64, "size": 2}
    raw = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2, "config": config,
                      "layers": None}).encode()
    parsed = Manifest.parse(raw, "m")
    assert parsed.layers == () and parsed.raw == raw and parsed.total_size == 2
    missing = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2, "config": config})
    with pytest.raises(IntegrityError, match="'layers' is missing"):
        Manifest.parse(missing.encode(), "m")
