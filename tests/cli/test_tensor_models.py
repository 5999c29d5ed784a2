"""Tensor (safetensors/MLX) models: imported anywhere, but ls and import say which they are
(formats/ollama-store.md §6.3)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.common import MODEL, Keys, go_json, make_model, run, weights

TENSOR = "application/vnd.ollama.image.tensor"
JSON_LAYER = "application/vnd.ollama.image.json"


def tensor_store(root: Path) -> Path:
    """One GGUF model and one tensor model (named layers, as x/create writes them)."""
    make_model(root, "registry.ollama.ai/library/gg/latest", [(MODEL, weights(2000))])
    config = go_json({"model_format": "safetensors", "model_family": "", "model_families": None,
                      "model_type": "", "file_type": "", "requires": "0.14.0",
                      "architecture": "amd64", "os": "linux"}) + b"\n"
    make_model(root, "registry.ollama.ai/x/flux/latest",
               [(TENSOR, weights(3000, 1)), (TENSOR, weights(3000, 2)),
                (JSON_LAYER, b'{"_class_name":"x"}')], config=config)
    return root


def test_ls_and_import_name_tensor_models(tmp_path: Path, keys: Keys,
                                          env: dict[str, str]) -> None:
    store = tensor_store(tmp_path / "store")
    out = tmp_path / "b.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    r = run(["ls", str(out), "--trust", str(keys.pub), "--json"])
    assert r.exit_code == 0, r.stderr
    kinds = {m["name"]: m["weights"] for m in json.loads(r.stdout)["models"]}
    assert kinds == {"gg:latest": "gguf", "x/flux:latest": "tensor"}
    r = run(["ls", str(out), "--trust", str(keys.pub)])
    row = next(line for line in r.stdout.splitlines() if "x/flux:latest" in line)
    assert "tensor model" in row
    assert "tensor model" not in next(line for line in r.stdout.splitlines() if "gg:latest" in line)

    target = tmp_path / "target"
    r = run(["import", str(out), "--models", str(target), "--trust", str(keys.pub), "--json"])
    assert r.exit_code == 0, r.stderr
    kinds = {m["name"]: m["weights"] for m in json.loads(r.stdout)["models"]}
    assert kinds == {"gg:latest": "gguf", "x/flux:latest": "tensor"}
    r = run(["import", str(out), "--models", str(tmp_path / "t2"), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "x/flux:latest" in line)
    assert "tensor model" in row and "MLX" in r.stdout
