"""Release trains (formats/bundle-v1.md §4.3, formats/inventory-v1.md): delta bundles against
earlier bundles and inventories, chains of them into a store and into the real registry,
refusal before anything is written when a left-out blob is missing, and `bundle diff`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bundler.verify import list_bundle
from tests.support.common import MODEL, TEMPLATE, Keys, make_model, run, tree, weights
from tests.support.scene import Scene, assert_clean_error
from tests.support.servers import SCHEMA2, Registry, _assert_served, _get


def _ok(args: list[str]) -> Any:
    r = run([*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _export(store: Path, out: Path, keys: Keys, *bases: Path, names: tuple[str, ...] = ()
            ) -> Any:
    args = ["export", *(names or ("--all",)), "--models", str(store), "--key", str(keys.key),
            "-o", str(out)]
    for b in bases:
        args += ["--base", str(b)]
    return _ok(args)


def _import(bundle: Path, target: Path, keys: Keys) -> Any:
    return _ok(["import", str(bundle), "--models", str(target), "--trust", str(keys.pub)])


@pytest.fixture
def train(tmp_path: Path, store: Path, keys: Keys, env: dict[str, str]) -> dict[str, Path]:
    """Month 1: tiny:latest. Month 2: everything, against month 1. Month 3: a new model that
    shares the weights, against month 2 (a delta of a delta)."""
    b1, b2, b3 = (tmp_path / f"m{i}.tar.zst" for i in (1, 2, 3))
    _export(store, b1, keys, names=("tiny:latest",))
    _export(store, b2, keys, b1)
    w = (store / "blobs").glob("sha256-*")
    shared = max(w, key=lambda p: p.stat().st_size).read_bytes()
    make_model(store, "registry.ollama.ai/library/tiny/v3",
               [(MODEL, shared), (TEMPLATE, b"{{ .Month3 }}")])
    _export(store, b3, keys, b2)
    return {"m1": b1, "m2": b2, "m3": b3, "store": store}


def test_delta_chain_into_a_store_is_byte_identical(train: dict[str, Path], tmp_path: Path,
                                                    keys: Keys) -> None:
    m2 = _ok(["ls", str(train["m2"])])
    assert [b["name"] for b in m2["bases"]] == ["m1.tar.zst"]
    assert m2["leftOut"]["blobs"] == 4  # tiny:latest's config, weights, template, params
    m3 = _ok(["ls", str(train["m3"])])
    # the weights came with month 1 (month 2 left them out too); the rest with month 2
    assert [b["name"] for b in m3["bases"]] == ["m2.tar.zst", "m1.tar.zst"]
    assert m3["bytes"] < 10_000  # only the new template and manifests
    target = tmp_path / "target"
    for name in ("m1", "m2", "m3"):
        _import(train[name], target, keys)
    full = tmp_path / "full.tar.zst"
    _export(train["store"], full, keys)
    direct = tmp_path / "direct"
    _import(full, direct, keys)
    assert tree(target) == tree(direct) and tree(target)


def test_missing_base_blob_is_refused_before_anything_is_written(
        train: dict[str, Path], tmp_path: Path, keys: Keys) -> None:
    target = tmp_path / "target"
    _import(train["m1"], target, keys)
    before = tree(target)
    for bundle, release, user in ((train["m3"], "m2.tar.zst", "tiny:chat"),
                                  (train["m3"], "m1.tar.zst", "tiny:v3")):
        if release == "m1.tar.zst":  # now the month-1 blobs are gone too
            shutil.rmtree(target)
            target.mkdir()
            before = tree(target)
        for extra in ([], ["--dry-run"]):
            r = run(["import", str(bundle), "--models", str(target), "--trust",
                     str(keys.pub), *extra])
            assert r.exit_code == 4, r.output
            assert_clean_error(r.stderr)
            assert "leaves out" in r.stderr and release in r.stderr and user in r.stderr
            assert tree(target) == before
    # with month 1 in, month 2 for a model that needs nothing else works
    _import(train["m1"], target, keys)
    r = run(["import", str(train["m2"]), "--models", str(target), "--trust", str(keys.pub),
             "--only", "hf.co/org/repo:Q4_K_M"])
    assert r.exit_code == 0, r.output


def test_delta_chain_into_the_registry(train: dict[str, Path], registry: Registry,
                                       keys: Keys, store: Path) -> None:
    url = registry.url + "/train"
    # a fresh namespace has nothing: month 3 alone is refused before a single blob is pushed,
    # not even mounted from where the registry has month 1 under the models' own names
    _ok(["import", str(train["m1"]), "--to-registry", registry.url, "--trust", str(keys.pub)])
    r = run(["import", str(train["m3"]), "--to-registry", registry.url + "/empty", "--trust",
             str(keys.pub)])
    assert r.exit_code == 4 and "leaves out" in r.stderr and "m2.tar.zst" in r.stderr, r.output
    _, body, _ = _get(registry.url + "/v2/_catalog")
    assert not [n for n in json.loads(body)["repositories"] if n.startswith("empty/")]
    pushed = [_ok(["import", str(train[m]), "--to-registry", url, "--trust", str(keys.pub)])
              for m in ("m1", "m2", "m3")]
    assert pushed[2]["blobsUploaded"] == 1 and pushed[2]["blobsPresent"] >= 2
    for path, repo, tag in [("registry.ollama.ai/library/tiny/latest", "train/tiny", "latest"),
                            ("registry.ollama.ai/library/tiny/chat", "train/tiny", "chat"),
                            ("registry.ollama.ai/library/tiny/v3", "train/tiny", "v3"),
                            ("hf.co/org/repo/Q4_K_M", "train/repo", "Q4_K_M")]:
        _assert_served(registry.url, repo, tag, (store / "manifests" / path).read_bytes())
    # an inventory of the registry leaves out everything the registry has
    inv = train["m1"].parent / "registry.inventory.json"
    _ok(["inventory", "--registry", url, "-o", str(inv)])
    doc = json.loads(inv.read_text())
    assert len(doc["models"]) == 4 and doc["source"] == f"registry {url}"
    again = train["m1"].parent / "again.tar.zst"
    out = _export(store, again, keys, inv)
    assert out["blobs"] == 4 and out["leftOut"]["blobs"] > 0  # manifests only
    assert _get(f"{registry.url}/v2/train/tiny/manifests/v3", SCHEMA2)[0] == 200


def test_inventory_of_a_store_and_diff(tmp_path: Path, store: Path, keys: Keys,
                                       env: dict[str, str]) -> None:
    far = tmp_path / "far"  # the air-gapped side has month 1
    b1 = tmp_path / "m1.tar.zst"
    _export(store, b1, keys, names=("tiny:latest",))
    _import(b1, far, keys)
    inv = tmp_path / "far.inventory.json"
    _ok(["inventory", "--models", str(far), "-o", str(inv)])
    raw = inv.read_text()
    doc = json.loads(raw)
    assert raw.endswith("}\n") and "\n  " in raw  # human-readable
    assert [m["name"] for m in doc["models"]] == ["registry.ollama.ai/library/tiny:latest"]
    assert len(doc["blobs"]) == 4
    make_model(store, "registry.ollama.ai/library/tiny/latest",  # tiny:latest changes
               [(MODEL, weights(300_000, seed=9))])
    b2 = tmp_path / "m2.tar.zst"
    out = _export(store, b2, keys, inv)
    assert out["bases"][0]["mediaType"] == "application/vnd.ollama-bundle.inventory.v1+json"
    _import(b2, far, keys)
    d = _ok(["diff", str(inv), str(b2)])
    assert d["added"] == ["hf.co/org/repo:Q4_K_M", "registry.ollama.ai/library/tiny:chat"]
    assert d["changed"] == ["registry.ollama.ai/library/tiny:latest"] and d["removed"] == []
    assert d["newBytes"] == _layer_bytes(b2)  # what the delta carries besides manifests
    back = _ok(["diff", str(b2), str(inv)])
    assert back["removed"] == d["added"] and back["added"] == []


def _layer_bytes(bundle: Path) -> int:
    with bundle.open("rb") as f:
        head = list_bundle(f, [])
    return sum(b.size for b in head.layer_blobs)


def test_delta_root_is_checked(scene: Scene, tmp_path: Path) -> None:
    """A re-signed root whose left-out list is inconsistent with the manifests is refused."""
    def edited(edit: Any) -> Path:
        b = scene.bundle()
        root = b.root
        edit(root)
        b.set_root_obj(root, sign_with=scene.private_key)
        return scene.write_tar(b.tar())

    base = {"mediaType": "application/vnd.ollama-bundle.inventory.v1+json",
            "digest": "sha256:" + "0" * 64, "created": "2026-11-01T00:00:00Z", "name": "x"}

    def both(root: dict[str, Any]) -> None:  # carried and left out at once
        root["bases"], root["external"] = [base], [{**root["blobs"][-1], "base": 0}]

    def dangling(root: dict[str, Any]) -> None:  # base index out of range
        root["bases"], root["external"] = [base], [{"digest": "sha256:" + "1" * 64,
                                                    "size": 1, "base": 1}]

    def unused(root: dict[str, Any]) -> None:  # left out, but no manifest needs it
        root["bases"], root["external"] = [base], [{"digest": "sha256:" + "1" * 64,
                                                    "size": 1, "base": 0}]

    assert "both carried and left out" in scene.refused(edited(both))
    assert "not in 'bases'" in scene.refused(edited(dangling))
    assert "not referenced" in scene.refused(edited(unused))


def test_a_delta_against_an_inventory_names_no_inventory_to_import(
        train: dict[str, Path], tmp_path: Path, keys: Keys) -> None:
    """An inventory cannot be imported: a delta made against one, refused where the blobs it
    left out are missing, says that the inventory listed them and what to do instead; a
    chain of bundles is named oldest first, as they must be imported."""
    far = tmp_path / "far"
    _import(train["m1"], far, keys)
    inv = tmp_path / "far.inventory.json"
    _ok(["inventory", "--models", str(far), "-o", str(inv)])
    delta = tmp_path / "d.tar.zst"
    _export(train["store"], delta, keys, inv)
    r = run(["import", str(delta), "--models", str(tmp_path / "empty"), "--trust",
             str(keys.pub)])
    assert r.exit_code == 4, r.output
    assert_clean_error(r.stderr)
    assert "import far.inventory.json" not in r.stderr
    assert "far.inventory.json" in r.stderr and "full bundle" in r.stderr, r.stderr
    r = run(["import", str(train["m3"]), "--models", str(tmp_path / "empty2"), "--trust",
             str(keys.pub)])
    assert r.exit_code == 4 and "import m1.tar.zst, then m2.tar.zst" in r.stderr, r.stderr
