"""Store -> bundle -> store, with the real tar, zstd, openssl and skopeo."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.common import MODEL, TEMPLATE, Keys, make_model, run, small_store, tree, weights
from tests.support.ocilayout import check_layout


def export(store: Path, out: Path, keys: Keys, *extra: str) -> None:
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out),
             *extra])
    assert r.exit_code == 0, r.stderr


def test_round_trip_is_byte_identical(tmp_path: Path, os_paths: bool, store: Path,
                                      bundle_file: Path, keys: Keys, env: dict[str, str],
                                      ) -> None:
    target = tmp_path / "target"
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    assert tree(target) == tree(store)
    assert "store: " in r.stderr and str(target) in r.stderr
    for p in (target / "blobs").iterdir():
        assert p.stat().st_mode & 0o777 == 0o644
    for p in (target / "manifests").rglob("*"):
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644)
    # nothing staged is left behind
    assert not list(target.rglob(".bundle-*"))


def test_ids_match_source_manifests(store: Path, bundle_file: Path, keys: Keys,
                                    env: dict[str, str]) -> None:
    r = run(["ls", str(bundle_file), "--json", "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    ids = {m["fullName"]: m["digest"] for m in doc["models"]}
    expected = {
        "registry.ollama.ai/library/tiny:latest": "registry.ollama.ai/library/tiny/latest",
        "registry.ollama.ai/library/tiny:chat": "registry.ollama.ai/library/tiny/chat",
        "hf.co/org/repo:Q4_K_M": "hf.co/org/repo/Q4_K_M",
    }
    for name, path in expected.items():
        raw = (store / "manifests" / path).read_bytes()
        assert ids[name] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert doc["signatures"] == {"carried": [keys.keyid], "trusted": [keys.keyid],
                                 "cosign": [keys.keyid]}
    # one weights blob shared by two tags is stored once
    assert doc["blobs"] == len({*(p.name for p in (store / "blobs").iterdir())}) + 3


def test_export_is_reproducible(tmp_path: Path, store: Path, keys: Keys,
                                monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b = tmp_path / "a.tar.zst", tmp_path / "b.tar.zst"
    export(store, a, keys)
    export(store, b, keys)
    assert a.read_bytes() == b.read_bytes()
    root = json.loads(_extract(a, tmp_path / "x") .joinpath("ollama-bundle/root.json").read_text())
    assert root["created"] == "2023-11-14T22:13:20Z"


def _extract(bundle: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(bundle), "-C", str(dest)], check=True)
    return dest


def test_tar_extracts_a_valid_oci_layout(tmp_path: Path, store: Path, bundle_file: Path) -> None:
    root = _extract(bundle_file, tmp_path / "x")
    index = check_layout(root)
    names = sorted(d["annotations"]["org.opencontainers.image.ref.name"]
                   for d in index["manifests"])
    assert names == ["hf.co/org/repo:Q4_K_M", "registry.ollama.ai/library/tiny:chat",
                     "registry.ollama.ai/library/tiny:latest"]
    assert {d["mediaType"] for d in index["manifests"]} == {
        "application/vnd.docker.distribution.manifest.v2+json"}
    # zstd -dc | tar -x gives the same files
    other = tmp_path / "y"
    other.mkdir()
    zstd = subprocess.run(["zstd", "-dc", str(bundle_file)], capture_output=True, check=True)
    subprocess.run(["tar", "-xf", "-", "-C", str(other)], input=zstd.stdout, check=True)
    assert tree(root) == tree(other)


def test_openssl_verifies_the_signature(tmp_path: Path, bundle_file: Path, keys: Keys) -> None:
    root = _extract(bundle_file, tmp_path / "x")
    keyid = subprocess.run(
        f"openssl pkey -pubin -in {keys.pub} -outform DER | sha256sum | cut -c1-64",
        shell=True, capture_output=True, text=True, check=True).stdout.strip()
    assert keyid == keys.keyid
    sig = root / "ollama-bundle" / "signatures" / f"{keyid}.sig"
    der = tmp_path / "root.sig.der"
    der.write_bytes(base64.b64decode(sig.read_bytes()))
    ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(keys.pub), "-signature",
                         str(der), str(root / "ollama-bundle" / "root.json")],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    # and the root names index.json and every blob, checkable with sha256sum alone
    doc = json.loads((root / "ollama-bundle" / "root.json").read_bytes())
    assert doc["index"]["digest"] == "sha256:" + hashlib.sha256(
        (root / "index.json").read_bytes()).hexdigest()
    listing = "".join(f"{b['digest'][7:]}  blobs/sha256/{b['digest'][7:]}\n" for b in doc["blobs"])
    check = subprocess.run(["sha256sum", "-c", "--quiet"], input=listing, cwd=root, text=True,
                           capture_output=True, check=False)
    assert check.returncode == 0, check.stdout
    # a one-byte change to the root fails openssl
    tampered = tmp_path / "root.json"
    tampered.write_bytes((root / "ollama-bundle" / "root.json").read_bytes().replace(
        b'"created":"2', b'"created":"1'))
    bad = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(keys.pub), "-signature",
                          str(der), str(tampered)], capture_output=True, text=True, check=False)
    assert bad.returncode != 0


def test_skopeo_sees_the_layout_but_skips_schema2_entries(tmp_path: Path,
                                                          bundle_file: Path) -> None:
    """formats/bundle-v1.md §5.1: Debian's skopeo reads index.json but only OCI-typed entries."""
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed; scripts/test installs it")
    root = _extract(bundle_file, tmp_path / "x")
    r = subprocess.run(["skopeo", "inspect", "--raw",
                        f"oci:{root}:registry.ollama.ai/library/tiny:latest"],
                       capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "no descriptor found" in r.stderr


def test_import_from_stdin(tmp_path: Path, os_paths: bool, store: Path, bundle_file: Path,
                           keys: Keys, env: dict[str, str]) -> None:
    target = tmp_path / "t"
    r = run(["import", "-", "--models", str(target), "--trust", str(keys.pub)],
            input=bundle_file.read_bytes())
    assert r.exit_code == 0, r.stderr
    assert tree(target) == tree(store)


def test_only_dry_run_and_replace(tmp_path: Path, store: Path, bundle_file: Path, keys: Keys,
                                  env: dict[str, str]) -> None:
    target = tmp_path / "t"
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub),
             "--dry-run", "--json"])
    assert r.exit_code == 0, r.stderr
    assert not target.exists() or tree(target) == {}
    plan = json.loads(r.stdout)
    assert plan["dryRun"] and {m["action"] for m in plan["models"]} == {"new"}

    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub),
             "--only", "hf.co/org/repo:q4_k_m"])
    assert r.exit_code == 0, r.stderr
    assert [p.name for p in (target / "manifests").rglob("*") if p.is_file()] == ["Q4_K_M"]

    # a different tiny:latest already in the target is replaced, and the output says so
    make_model(target, "registry.ollama.ai/library/tiny/latest", [(MODEL, weights(1000, 9))])
    old = hashlib.sha256(
        (target / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()).hexdigest()
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub),
             "--json"])
    assert r.exit_code == 0, r.stderr
    actions = {m["fullName"]: m for m in json.loads(r.stdout)["models"]}
    latest = actions["registry.ollama.ai/library/tiny:latest"]
    assert latest["action"] == "replaced" and latest["previous"] == f"sha256:{old}"
    assert actions["hf.co/org/repo:Q4_K_M"]["action"] == "unchanged"
    assert (target / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes() == \
        (store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()


def test_import_keeps_existing_name_spelling(tmp_path: Path, bundle_file: Path, keys: Keys,
                                             env: dict[str, str]) -> None:
    target = tmp_path / "t"
    make_model(target, "registry.ollama.ai/Library/TINY/Latest", [(TEMPLATE, b"x")])
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    host = target / "manifests" / "registry.ollama.ai"
    assert sorted(p.name for p in host.iterdir()) == ["Library"]
    assert sorted(p.name for p in (host / "Library").iterdir()) == ["TINY"]
    assert sorted(p.name for p in (host / "Library" / "TINY").iterdir()) == ["Latest", "chat"]


def test_export_refuses_a_corrupt_store(tmp_path: Path, store: Path, keys: Keys,
                                        env: dict[str, str]) -> None:
    big = max((store / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    data[-1] ^= 1
    big.write_bytes(bytes(data))
    out = tmp_path / "out.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 3
    assert "corrupt store" in r.stderr and big.name[7:] in r.stderr and "tiny" in r.stderr
    assert list(tmp_path.glob("*out.tar.zst*")) == []  # nothing left behind, not even a temp

    big.unlink()
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 3 and "missing" in r.stderr


def test_missing_things_exit_4(tmp_path: Path, store: Path, keys: Keys,
                               env: dict[str, str]) -> None:
    r = run(["export", "nope:1", "--models", str(store), "--key", str(keys.key), "-o",
             str(tmp_path / "o")])
    assert r.exit_code == 4
    assert "hf.co/org/repo:Q4_K_M" in r.stderr and "tiny:latest" in r.stderr
    r = run(["export", "--all", "--models", str(tmp_path / "nowhere"), "--key", str(keys.key),
             "-o", str(tmp_path / "o")])
    assert r.exit_code == 4 and "model store not found" in r.stderr
    r = run(["verify", str(tmp_path / "missing.tar.zst")])
    assert r.exit_code == 4
    r = run(["export", "--all", "--models", str(store), "-o", str(tmp_path / "o")])
    assert r.exit_code == 4 and "keygen" in r.stderr  # no default key, not --unsigned
    r = run(["export", "tiny", "--models", str(store), "--key", str(tmp_path / "no.key"),
             "-o", str(tmp_path / "o")])
    assert r.exit_code == 4


def test_store_from_ollama_models_env(tmp_path: Path, store: Path, keys: Keys,
                                      env: dict[str, str]) -> None:
    out = tmp_path / "b.tar.zst"
    r = run(["export", "tiny", "--key", str(keys.key), "-o", str(out)],
            env={"OLLAMA_MODELS": f"  \"{store}\" "})
    assert r.exit_code == 0, r.stderr
    assert f"store: {store} (from $OLLAMA_MODELS)" in r.stderr


def test_keygen_default_key_and_passphrase(tmp_path: Path, store: Path,
                                           env: dict[str, str]) -> None:
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    r = run(["keygen", "--passphrase-file", str(pw), "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    key = Path(doc["privateKey"])
    assert key.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    assert run(["keygen", "--passphrase-file", str(pw)]).exit_code == 2  # no overwrite
    # export signs with the default key; the passphrase comes from the environment
    out = tmp_path / "b.tar.zst"
    r = run(["export", "tiny", "--models", str(store), "-o", str(out)],
            env={"BUNDLE_PASSPHRASE": "correct horse"})
    assert r.exit_code == 0, r.stderr
    r = run(["verify", str(out), "--trust", doc["publicKey"], "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["signatures"]["trusted"] == [doc["keyid"]]
    r = run(["export", "tiny", "--models", str(store), "-o", str(out)],
            env={"BUNDLE_PASSPHRASE": "wrong"})
    assert r.exit_code == 2 and "passphrase" in r.stderr
    key.chmod(0o644)
    r = run(["export", "tiny", "--models", str(store), "-o", str(out)],
            env={"BUNDLE_PASSPHRASE": "correct horse"})
    assert r.exit_code == 2 and "chmod 600" in r.stderr


def test_several_signers_and_trust_dir(tmp_path: Path, store: Path, env: dict[str, str]) -> None:
    from tests.support.common import make_keys

    a, b = make_keys(tmp_path / "k", "a"), make_keys(tmp_path / "k", "b")
    out = tmp_path / "b.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(a.key), "--key", str(b.key),
             "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    trust = Path(env["BUNDLE_TRUST_DIR"])
    trust.mkdir()
    shutil.copy(b.pub, trust / "b.pub")
    r = run(["verify", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    sigs = json.loads(r.stdout)["signatures"]
    assert sigs == {"carried": sorted([a.keyid, b.keyid]), "trusted": [b.keyid],
                    "cosign": [b.keyid]}


def test_unsigned_bundle_needs_allow_unsigned(tmp_path: Path, store: Path,
                                              env: dict[str, str]) -> None:
    out = tmp_path / "u.tar.zst"
    assert run(["export", "--all", "--unsigned", "--models", str(store), "-o",
                str(out)]).exit_code == 0
    r = run(["import", str(out), "--models", str(tmp_path / "t")])
    assert r.exit_code == 3 and "not signed" in r.stderr
    assert not (tmp_path / "t" / "manifests").exists()
    r = run(["import", str(out), "--models", str(tmp_path / "t"), "--allow-unsigned"])
    assert r.exit_code == 0 and "warning" in r.stderr
    assert tree(tmp_path / "t") == tree(store)


def test_export_to_stdout_and_usage_errors(tmp_path: Path, keys: Keys,
                                           env: dict[str, str]) -> None:
    store = small_store(tmp_path / "s")
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", "-"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes[:4] == b"\x28\xb5\x2f\xfd"  # zstd magic
    assert run(["export", "--models", str(store), "-o", "x"]).exit_code == 2
    assert run(["export", "tiny", "--all", "--models", str(store), "-o", "x"]).exit_code == 2
    assert run(["export", "bad/name/x/y", "--models", str(store), "--unsigned",
                "-o", "x"]).exit_code == 2
    assert run(["export", "--all", "--unsigned", "--level", "40", "--models", str(store),
                "-o", "x"]).exit_code == 2
