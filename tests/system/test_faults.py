"""Faults (formats/threat-model.md): a full disk during import and export, a read-only store, a store the
user may not write, and registries that lie about what they stored. Each ends in success with
exactly the right content or in one clean error line, with nothing half-written and the
previous state intact (formats/ollama-store.md §4).

A store owned by another user, imported into as root, is covered by
tests/cli/test_store.py::test_root_import_gives_files_to_the_store_owner."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bundler.store import Store
from tests.support.common import (
    MODEL,
    TEMPLATE,
    Keys,
    check_consistent,
    make_keys,
    make_model,
    run,
    tree,
    weights,
)
from tests.support.faultproxy import Answer, fault_proxy
from tests.support.scene import assert_clean_error
from tests.support.servers import SCHEMA2, Registry, _assert_served, _get

NOBODY = 65534
KEEP = "registry.ollama.ai/library/keep/latest"
NEW = "registry.ollama.ai/library/new/latest"


# ---------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount_tmpfs(size_bytes[, inodes]) -> a fresh, empty tmpfs (the tests run as root); all are
    unmounted afterwards. A mount that is refused fails the test: it is not a skip."""
    mounted: list[Path] = []

    def mount(size: int, inodes: int | None = None) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        limit = "" if inodes is None else f",nr_inodes={inodes}"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755{limit}",
                            "tmpfs", str(mnt)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs on {mnt} (these tests need root and mount(8)): "
                        f"{r.stderr.strip()}", pytrace=False)
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in reversed(mounted):
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _listing(root: Path) -> dict[str, tuple[int, str]]:
    """Every entry under root, hidden ones and the lock file included: name -> (mode, sha256
    of a file's bytes, or '' for a directory)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, digest)
    return out


def _export(store: Path, out: Path, keys: Keys) -> None:
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.stderr


def _new_model_bundle(tmp_path: Path, keys: Keys, size: int, seed: int = 12) -> tuple[Path, Path]:
    """A store holding one model, `new`, with `size` bytes of weights, and its bundle."""
    src = tmp_path / "src"
    make_model(src, NEW, [(MODEL, weights(size, seed=seed)), (TEMPLATE, b"{{ .Prompt }}")])
    bundle = tmp_path / "new.tar.zst"
    _export(src, bundle, keys)
    return src, bundle


def _keep_model(store: Path, size: int = 300_000) -> None:
    make_model(store, KEEP, [(MODEL, weights(size, seed=11)), (TEMPLATE, b"keep")])


def _import(bundle: Path, store: Path, keys: Keys, *extra: str) -> tuple[int, str, str]:
    r = run(["import", str(bundle), "--models", str(store), "--trust", str(keys.pub), *extra])
    return r.exit_code, r.stdout, r.stderr


# ---------------------------------------------------------------------------------------------
# A full disk


def test_import_that_does_not_fit_is_refused_before_writing(
        tmpfs: Callable[[int], Path], tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = tmpfs(3 * 1024 * 1024) / "models"
    _keep_model(store)
    check_consistent(store)
    _, bundle = _new_model_bundle(tmp_path, keys, 2_500_000)  # more than is free (+ margin)
    before = _listing(store)
    code, out, err = _import(bundle, store, keys)
    assert code == 1, err
    assert_clean_error(err, out)
    assert "not enough space" in err and "bytes to write" in err
    after = _listing(store)
    after.pop(".ollama-bundle.lock", None)  # the lock, outside blobs/ and manifests/
    assert after == before
    check_consistent(store)


def test_disk_filling_up_during_the_import_leaves_the_store_as_it_was(
        tmpfs: Callable[[int], Path], tmp_path: Path, keys: Keys, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The free-space check passed, then another program took the space: the write fails with
    ENOSPC half-way through a blob. One clean error; the staged file is removed, nothing is
    under a final name, and the space is given back."""
    fs = tmpfs(3 * 1024 * 1024)
    store = fs / "models"
    _keep_model(store)
    _, bundle = _new_model_bundle(tmp_path, keys, 4_000_000)  # larger than the whole disk
    before = _listing(store)
    free_before = os.statvfs(fs).f_bfree
    with monkeypatch.context() as m:
        m.setattr(Store, "free_bytes", lambda self: 1 << 40)  # the check is passed
        code, out, err = _import(bundle, store, keys)
    assert code == 1, err
    assert_clean_error(err, out)
    assert "no space left on device" in err and "hint: free space" in err
    after = _listing(store)
    after.pop(".ollama-bundle.lock", None)
    assert after == before
    assert not list(store.rglob(".bundle-*"))
    assert os.statvfs(fs).f_bfree == free_before
    check_consistent(store)
    # with the space there, the same import completes
    bigger = tmp_path / "bigger"
    _keep_model(bigger)
    code, _, err = _import(bundle, bigger, keys)
    assert code == 0, err
    check_consistent(bigger)


# ---------------------------------------------------------------------------------------------
# Too few inodes


def _four_models_bundle(tmp_path: Path, keys: Keys) -> Path:
    src = tmp_path / "four"
    for i in range(4):
        make_model(src, f"registry.ollama.ai/library/m{i}/latest",
                   [(MODEL, weights(20_000, seed=40 + i)), (TEMPLATE, f"t{i}".encode())])
    bundle = tmp_path / "four.tar.zst"
    _export(src, bundle, keys)
    return bundle


def _inode_limited_store(tmpfs: Callable[..., Path], bundle: Path, keys: Keys,
                         spare: int) -> Path:
    """A tmpfs holding the keep model, remounted so that it has room for the bundle's blob
    files and `spare` more inodes (the manifests need more: a directory and a file each)."""
    fs = tmpfs(64 * 1024 * 1024)
    store = fs / "models"
    _keep_model(store)
    (store / ".ollama-bundle.lock").touch()  # what the import's lock takes, taken now
    doc = json.loads(run(["ls", str(bundle), "--json"]).stdout)
    blobs = doc["blobs"] - len(doc["models"])  # configs and layers: a staged file each
    st = os.statvfs(fs)
    subprocess.run(["mount", "-o", f"remount,nr_inodes={st.f_files - st.f_ffree + blobs + spare}",
                    str(fs)], check=True)
    return store


def test_too_few_inodes_is_refused_before_writing(
        tmpfs: Callable[..., Path], tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    """Bytes are plenty, inodes are not: the import is refused before it writes anything
    (not after three of four manifests)."""
    bundle = _four_models_bundle(tmp_path, keys)
    store = _inode_limited_store(tmpfs, bundle, keys, spare=3)
    before = _listing(store)
    code, out, err = _import(bundle, store, keys)
    assert code == 1, err
    assert_clean_error(err, out)
    assert "not enough inodes" in err, err
    assert _listing(store) == before
    check_consistent(store)


def test_inodes_running_out_among_the_manifests_write_none_of_them(
        tmpfs: Callable[..., Path], tmp_path: Path, keys: Keys, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The inode check passed, then the inodes ran out (another program took them, or a file
    system that counts them its own way) after the first manifest: no model is half imported:
    either all four manifests are there or none (formats/ollama-store.md §4), the blobs are,
    and with inodes to spare the same import completes."""
    bundle = _four_models_bundle(tmp_path, keys)
    store = _inode_limited_store(tmpfs, bundle, keys, spare=3)
    before = tree(store)
    with monkeypatch.context() as m:
        m.setattr(Store, "free_inodes", lambda self: None, raising=False)  # check passed
        code, out, err = _import(bundle, store, keys)
    assert code == 1, err
    assert_clean_error(err, out)
    assert "no space left on device" in err, err
    check_consistent(store)
    new = [p for p in (store / "manifests").rglob("*") if p.is_file()
           and str(p.relative_to(store)) not in before]
    assert new == [], new
    assert not list(store.rglob(".bundle-*"))
    code, _, err = _import(bundle, tmp_path / "roomy", keys)
    assert code == 0, err


@pytest.mark.parametrize("split", [False, True], ids=["one-file", "split"])
def test_export_to_a_full_disk_leaves_no_file(
        tmpfs: Callable[[int], Path], tmp_path: Path, keys: Keys, env: dict[str, str],
        split: bool) -> None:
    """The bundle does not fit: one clean error, no output file and no temporary file left,
    and an older bundle of the same name is kept as it was."""
    store = tmp_path / "store"
    make_model(store, NEW, [(MODEL, weights(4_000_000, seed=13)), (TEMPLATE, b"t")])
    fs = tmpfs(3 * 1024 * 1024)
    out = fs / "out.tar.zst"
    out.write_bytes(b"an older bundle")
    (fs / "keep.txt").write_bytes(b"other files stay")
    before = _listing(fs)
    free_before = os.statvfs(fs).f_bfree
    args = ["--split", "1MB"] if split else []
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out),
             *args])
    assert r.exit_code == 1, r.stderr
    assert_clean_error(r.stderr, r.stdout)
    assert "no space left on device" in r.stderr.lower()
    assert _listing(fs) == before
    assert os.statvfs(fs).f_bfree == free_before


# ---------------------------------------------------------------------------------------------
# A read-only store


@pytest.mark.parametrize("imported_before", [False, True], ids=["no-lock-file", "lock-file"])
def test_read_only_store(tmpfs: Callable[[int], Path], tmp_path: Path, keys: Keys,
                         env: dict[str, str], imported_before: bool) -> None:
    fs = tmpfs(8 * 1024 * 1024)
    store = fs / "models"
    _keep_model(store)
    if imported_before:  # a store imported into before has our lock file
        keep_bundle = tmp_path / "keep.tar.zst"
        _export(store, keep_bundle, keys)
        code, _, err = _import(keep_bundle, store, keys)
        assert code == 0, err
        assert (store / ".ollama-bundle.lock").is_file()
    _, bundle = _new_model_bundle(tmp_path, keys, 200_000)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    before = _listing(store)
    code, out, err = _import(bundle, store, keys)
    assert code == 1, err
    assert_clean_error(err, out)
    assert "Read-only file system" in err
    assert "mounted read-only" in err and "owner" not in err, err
    assert _listing(store) == before
    # a dry run writes nothing, so it works on a read-only store
    code, out, err = _import(bundle, store, keys, "--dry-run")
    assert code == 0, err
    assert "new" in out and _listing(store) == before


# ---------------------------------------------------------------------------------------------
# Permission denied: the CLI run as nobody (root bypasses permission checks)


def _as_nobody(args: list[str], world: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(world / "home"), "XDG_CONFIG_HOME": str(world / "config"),
           "BUNDLE_TRUST_DIR": str(world / "trusted"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         sys.executable, "-m", "bundler", *args],
        cwd=world, env=env, capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody; CI runs as root")
@pytest.mark.parametrize("owned_by_nobody", [
    "nothing",           # the whole store is root's: not even the lock file can be made
    "root",              # the lock can be made, blobs/ cannot be written
    "root,blobs",        # blobs can be staged and committed, manifests/ cannot be written
])
def test_permission_denied(world_dir: Path, env: dict[str, str], owned_by_nobody: str) -> None:
    keys = make_keys(world_dir / "keys")
    (world_dir / "keys").chmod(0o755)
    keys.pub.chmod(0o644)
    src = world_dir / "src"
    make_model(src, NEW, [(MODEL, weights(200_000, seed=14)), (TEMPLATE, b"{{ .Prompt }}")])
    bundle = world_dir / "new.tar.zst"
    _export(src, bundle, keys)
    bundle.chmod(0o644)
    store = world_dir / "store"
    _keep_model(store, 100_000)
    for p in [store, *store.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    for part in owned_by_nobody.split(","):
        if part == "root":
            os.chown(store, NOBODY, NOBODY)
        elif part == "blobs":
            os.chown(store / "blobs", NOBODY, NOBODY)
    before = tree(store)
    r = _as_nobody(["import", str(bundle), "--models", str(store), "--trust", str(keys.pub)],
                   world_dir)
    assert r.returncode == 1, r.stderr
    assert_clean_error(r.stderr, r.stdout)
    assert "Permission denied" in r.stderr and "hint: run as the store's owner" in r.stderr
    check_consistent(store)
    after = tree(store)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed
    added = sorted(set(after) - set(before))
    if owned_by_nobody == "root,blobs":  # §4 step 4 done, step 5 refused: complete blobs only
        assert added and all(a.startswith("blobs/sha256-") for a in added), added
    else:
        assert added == []
    assert not list(store.rglob(".bundle-*"))
    if owned_by_nobody == "nothing":
        assert not (store / ".ollama-bundle.lock").exists()


# ---------------------------------------------------------------------------------------------
# Registries that lie: the fault proxy in front of the real registry answers in its place or
# rewrites its answers.


@dataclass
class Pushable:
    bundle: Path
    manifest: bytes
    weights_digest: str
    weights_size: int


@pytest.fixture
def pushable(tmp_path: Path, keys: Keys, env: dict[str, str]) -> Pushable:
    store = tmp_path / "push-src"
    w = weights(400_000, seed=15)
    manifest = make_model(store, "registry.ollama.ai/library/lie/latest",
                          [(MODEL, w), (TEMPLATE, b"{{ .Lie }}")])
    bundle = tmp_path / "lie.tar.zst"
    _export(store, bundle, keys)
    return Pushable(bundle, manifest, "sha256:" + hashlib.sha256(w).hexdigest(), len(w))


def _push_through(url: str, bundle: Path, keys: Keys) -> tuple[int, str, str]:
    r = run(["import", str(bundle), "--to-registry", url, "--trust", str(keys.pub)])
    # the push logs the registry it talks to; everything else must be the one error
    stderr = "\n".join(x for x in r.stderr.splitlines() if not x.startswith("registry: "))
    return r.exit_code, r.stdout, stderr


OTHER_DIGEST = "sha256:" + hashlib.sha256(b"something else").hexdigest()


@pytest.mark.parametrize("which", ["by-digest", "tag"])
def test_registry_answers_another_manifest_digest(
        registry: Registry, pushable: Pushable, keys: Keys, which: str) -> None:
    """Docker-Content-Digest in the answer to a manifest PUT is not the digest of what was
    sent: exit 3, naming both. A signed bundle's manifest goes up by digest first (then its
    signatures, then the tag): a lie there stops the push before any tag. A lie about the tag
    comes after the registry stored the exact bytes (only the header was rewritten), so that
    tag serves the complete, right model."""
    ns = f"digest-{which}"
    repo = f"{ns}/lie"
    state = {"lied": False}

    def after(method: str, path: str, answer: Answer) -> Answer:
        target = (path.endswith("/manifests/latest") if which == "tag"
                  else "/lie/manifests/sha256" in path)
        if method == "PUT" and target and not state["lied"] and answer.status == 201:
            state["lied"] = True
            return answer.with_header("Docker-Content-Digest", OTHER_DIGEST)
        return answer

    with fault_proxy(registry.url, [], after=after) as (url, log):
        code, out, err = _push_through(f"{url}/{ns}", pushable.bundle, keys)
    assert log.fired, log.requests
    assert code == 3, err
    assert_clean_error(err, out)
    manifest_digest = "sha256:" + hashlib.sha256(pushable.manifest).hexdigest()
    assert OTHER_DIGEST in err and manifest_digest in err
    status = _get(f"{registry.url}/v2/{repo}/manifests/latest", SCHEMA2)[0]
    if which == "tag":
        _assert_served(registry.url, repo, "latest", pushable.manifest)
    else:
        assert status == 404, "a tag was written after the registry's answer was refused"
    # the registry itself is fine: pushing again, directly, completes
    code, out, err = _push_through(f"{registry.url}/{ns}", pushable.bundle, keys)
    assert code == 0, err
    _assert_served(registry.url, repo, "latest", pushable.manifest)


@pytest.mark.parametrize("lie", ["head-says-present", "put-acknowledged-not-stored",
                                 "blob-stored-under-another-digest"])
def test_registry_that_lies_about_a_blob(registry: Registry, pushable: Pushable, keys: Keys,
                                         lie: str) -> None:
    """The registry claims to have the weights when it does not (a HEAD answering 200, or a
    final upload PUT acknowledged with 201 that never reached it), or says it stored them
    under another digest: a clean network error (exit 5) and no tag; the registry refuses a
    manifest whose blob it lacks (MANIFEST_BLOB_UNKNOWN)."""
    ns = f"blob-{lie}"
    repo = f"{ns}/lie"
    blob_path = f"/v2/{repo}/blobs/{pushable.weights_digest}"
    hex_ = pushable.weights_digest[7:]

    def before(method: str, path: str) -> Answer | None:
        if lie == "head-says-present" and method == "HEAD" and path == blob_path:
            return Answer(200, [("Content-Length", str(pushable.weights_size)),
                                ("Docker-Content-Digest", pushable.weights_digest),
                                ("Content-Type", "application/octet-stream")])
        if (lie == "put-acknowledged-not-stored" and method == "PUT"
                and "/blobs/uploads/" in path and hex_ in path):
            return Answer(201, [("Location", blob_path),
                                ("Docker-Content-Digest", pushable.weights_digest)])
        return None

    def after(method: str, path: str, answer: Answer) -> Answer:
        if (lie == "blob-stored-under-another-digest" and method == "PUT"
                and "/blobs/uploads/" in path and hex_ in path and answer.status == 201):
            return answer.with_header("Docker-Content-Digest", OTHER_DIGEST)
        return answer

    with fault_proxy(registry.url, [], before=before, after=after) as (url, log):
        code, out, err = _push_through(f"{url}/{ns}", pushable.bundle, keys)
    assert log.fired, log.requests
    assert code == 5, err
    assert_clean_error(err, out)
    if lie == "blob-stored-under-another-digest":
        assert "another digest" in err and OTHER_DIGEST in err
    else:
        assert "MANIFEST_BLOB_UNKNOWN" in err
    assert _get(f"{registry.url}/v2/{repo}/manifests/latest", SCHEMA2)[0] == 404
    manifest_digest = "sha256:" + hashlib.sha256(pushable.manifest).hexdigest()
    assert _get(f"{registry.url}/v2/{repo}/manifests/{manifest_digest}", SCHEMA2)[0] == 404
    # pushed again to the honest registry: it completes, with exactly the right content
    code, out, err = _push_through(f"{registry.url}/{ns}", pushable.bundle, keys)
    assert code == 0, err
    _assert_served(registry.url, repo, "latest", pushable.manifest)
