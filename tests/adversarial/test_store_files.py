"""Store files the importer and exporter open are opened without blocking or following a
link, refused unless they are regular files, and read within a bound; and a refused import
creates nothing (formats/ollama-store.md §4, §7; formats/threat-model.md T33)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.common import Keys, make_keys, run, tree
from tests.support.scene import assert_clean_error


@pytest.mark.parametrize("how", ["untrusted", "unsigned", "tampered-head"])
def test_a_refused_import_creates_no_store(tmp_path: Path, bundle_file: Path, keys: Keys,
                                           env: dict[str, str], how: str) -> None:
    """Nothing may be created before the signature is trusted: not the store directory, not
    its lock file."""
    target = tmp_path / "new" / "models"
    trust = make_keys(tmp_path / "other").pub if how == "untrusted" else keys.pub
    src = bundle_file
    if how == "unsigned":
        src = tmp_path / "u.tar.zst"
        store = tmp_path / "store"
        assert run(["export", "--all", "--models", str(store), "--unsigned", "-o",
                    str(src)]).exit_code == 0
    elif how == "tampered-head":
        data = bytearray(bundle_file.read_bytes())
        data[200] ^= 0x01  # inside the head's first frame (members 1-4)
        src = tmp_path / "t.tar.zst"
        src.write_bytes(bytes(data))
    r = run(["import", str(src), "--models", str(target), "--trust", str(trust)])
    assert r.exit_code == 3, r.output
    assert_clean_error(r.stderr)
    assert not target.exists() and not target.parent.exists()


# ---------------------------------------------------------------------------------------------
# Store files that are not regular files: each run is a real process, bounded in time (a hang
# is the failure) and in memory (so that reading /dev/zero whole fails instead of eating the
# machine)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1024**3, 1024**3))


def _bundle(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "bundler", *args], capture_output=True,
                              text=True, env={**os.environ, **env}, timeout=60,
                              preexec_fn=_limited, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bundle {args[0]} hung on a store file")


def _plant(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


def _manifest(store: Path) -> Path:
    return store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"


IMPORT_TARGETS = {
    "releases": lambda t: t / ".ollama-bundle.releases.json",
    "lock": lambda t: t / ".ollama-bundle.lock",
    "manifest": _manifest,
}


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("which", list(IMPORT_TARGETS))
def test_import_refuses_a_store_file_that_is_not_a_regular_file(
        tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str], which: str,
        kind: str) -> None:
    target = tmp_path / "target"
    assert run(["import", str(bundle_file), "--models", str(target), "--trust",
                str(keys.pub)]).exit_code == 0
    planted = IMPORT_TARGETS[which](target)
    _plant(planted, kind)
    before = tree(target)
    p = _bundle("import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub),
                env=env)
    assert p.returncode == 1, p.stderr
    assert str(planted) in p.stderr and "regular file" in p.stderr, p.stderr
    assert_clean_error(p.stderr)
    assert tree(target) == before


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("which", ["manifest", "blob"])
def test_export_and_inventory_refuse_a_store_file_that_is_not_a_regular_file(
        tmp_path: Path, store: Path, keys: Keys, env: dict[str, str], which: str,
        kind: str) -> None:
    if which == "manifest":
        planted = _manifest(store)
    else:
        layers = json.loads(_manifest(store).read_bytes())["layers"]
        planted = store / "blobs" / layers[0]["digest"].replace(":", "-")
    _plant(planted, kind)
    out = tmp_path / "out"
    for args in (["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                  str(out / "b.tar.zst")],
                 ["inventory", "--models", str(store), "-o", str(out / "inv.json")]):
        out.mkdir()
        p = _bundle(*args, env=env)
        if which == "blob" and args[0] == "inventory":  # inventory lists only blobs it can use
            assert p.returncode == 0, p.stderr
        else:
            assert p.returncode == 3, p.stderr
            assert str(planted) in p.stderr and "regular file" in p.stderr, p.stderr
            assert_clean_error(p.stderr)
            assert list(out.iterdir()) == []
        shutil.rmtree(out)


def test_release_records_larger_than_their_bound_are_refused(
        tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    target = tmp_path / "target"
    assert run(["import", str(bundle_file), "--models", str(target), "--trust",
                str(keys.pub)]).exit_code == 0
    records = target / ".ollama-bundle.releases.json"
    with records.open("r+b") as f:
        f.truncate(16 * 1024 * 1024 + 1)  # sparse: the bound and one byte
    before = tree(target)
    p = _bundle("import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub),
                env=env)
    assert p.returncode == 1, p.stderr
    assert str(records) in p.stderr and "larger than 16 MiB" in p.stderr, p.stderr
    assert_clean_error(p.stderr)
    assert tree(target) == before and records.stat().st_size == 16 * 1024 * 1024 + 1
