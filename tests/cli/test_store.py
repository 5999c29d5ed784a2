"""The store adapter as Ollama needs it: ownership, free space, staged names, stale files."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.digest import Digest
from bundler.store import Store, StoreLocation
from tests.support.common import Keys, run, tree

# Ollama's server/images.go PruneLayers (formats/ollama-store.md §4.1): prune keeps a file only if its name, with '-' replaced by ':',
# matches this; everything else in blobs/ is deleted once it is an hour old.
OLLAMA_BLOB_NAME = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")


def test_staged_names_are_ones_ollama_prunes(tmp_path: Path) -> None:
    store = Store(StoreLocation(tmp_path, "test"))
    store.prepare()
    digest = Digest.of(b"x")
    staged = store.stage(digest)
    try:
        assert staged.path.parent == store.blobs_dir
        assert not OLLAMA_BLOB_NAME.match(staged.path.name.replace("-", ":"))
        assert OLLAMA_BLOB_NAME.match(store.blob_path(digest).name.replace("-", ":"))
    finally:
        staged.discard()
    assert list(store.blobs_dir.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root; CI runs as root")
def test_root_import_gives_files_to_the_store_owner(world_dir: Path, bundle_file: Path,
                                                    keys: Keys, env: dict[str, str]) -> None:
    target = world_dir / "ollama-home"
    target.mkdir()
    os.chown(target, 4321, 4322)
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    assert len(list(target.rglob("*"))) > 10
    for p in target.rglob("*"):
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (4321, 4322), p
    assert os.geteuid() == 0 and os.getegid() == 0  # privileges were restored


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (CI runs as root); a missing mount is a failure, not a skip."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_too_little_space_is_refused_before_writing(small_fs: Path, bundle_file: Path,
                                                    keys: Keys, env: dict[str, str]) -> None:
    target = small_fs / "models"
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 1
    assert "not enough space" in r.stderr and "bytes to write" in r.stderr
    assert tree(target) == {}


def test_stale_staged_files_are_removed(tmp_path: Path, bundle_file: Path, keys: Keys,
                                        env: dict[str, str]) -> None:
    target = tmp_path / "t"
    (target / "blobs").mkdir(parents=True)
    (target / "manifests").mkdir()
    stale = target / "blobs" / f".bundle-{'0' * 64}-deadbeef.partial"
    stale.write_bytes(b"half a blob")
    foreign = target / "blobs" / "sha256-" / "keep"  # not ours: left alone
    foreign.parent.mkdir()
    foreign.write_bytes(b"x")
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    assert not stale.exists() and foreign.exists()
    assert "interrupted import" in r.stderr
