"""Outputs never follow a symbolic link planted at their name: `export -o`, `inventory -o`,
split parts and their sidecar are written beside the name and renamed onto it, replacing the
link itself; `keygen` refuses a PREFIX.key or PREFIX.pub link, dangling or not
(formats/README.md "Output files", formats/threat-model.md T32)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.streams import written_in_place
from tests.adversarial.test_side_files import snapshot
from tests.support.common import Keys, run
from tests.support.scene import assert_clean_error


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory the user never names, holding a file an attacker wants overwritten."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim").write_bytes(b"the user's file\n")
    return d


@pytest.mark.parametrize("to", ["victim", "new-file"], ids=["existing", "dangling"])
def test_export_replaces_a_planted_link_not_its_target(
        tmp_path: Path, store: Path, keys: Keys, env: dict[str, str], outside: Path,
        to: str) -> None:
    out = tmp_path / "medium" / "models.tar.zst"
    out.parent.mkdir()
    out.symlink_to(outside / to)
    before = snapshot(outside)
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert snapshot(outside) == before  # nothing replaced or created where the link pointed
    assert not out.is_symlink() and out.is_file()
    r = run(["verify", str(out), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.output


def test_split_parts_and_sidecar_replace_planted_links(
        tmp_path: Path, store: Path, keys: Keys, env: dict[str, str], outside: Path) -> None:
    out = tmp_path / "medium" / "models.tar.zst"
    out.parent.mkdir()
    planted = [out.with_name(f"{out.name}.parts.json"), out.with_name(f"{out.name}.002"),
               out.with_name(f"{out.name}.001")]
    for i, link in enumerate(planted):
        link.symlink_to(outside / ("victim" if i == 0 else f"new-{i}"))
    before = snapshot(outside)
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out),
             "--split", "64KiB"])
    assert r.exit_code == 0, r.output
    assert snapshot(outside) == before
    assert all(p.is_file() and not p.is_symlink() for p in planted)
    r = run(["verify", str(planted[-1]), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.output


def test_inventory_replaces_a_planted_link_not_its_target(
        tmp_path: Path, store: Path, env: dict[str, str], outside: Path) -> None:
    out = tmp_path / "inventory.json"
    out.symlink_to(outside / "victim")
    before = snapshot(outside)
    r = run(["inventory", "--models", str(store), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert snapshot(outside) == before
    assert not out.is_symlink() and b'"models"' in out.read_bytes()


@pytest.mark.parametrize("which", ["pub", "key"])
def test_keygen_refuses_a_dangling_link_at_either_name(
        tmp_path: Path, env: dict[str, str], outside: Path, which: str) -> None:
    prefix = tmp_path / "keys" / "release"
    prefix.parent.mkdir()
    link = Path(f"{prefix}.{which}")
    link.symlink_to(outside / f"planted.{which}")
    before = snapshot(outside)
    r = run(["keygen", "--out", str(prefix), "--no-passphrase"])
    assert r.exit_code == 2, r.output
    assert link.name in r.stderr and "already exists" in r.stderr, r.stderr
    assert_clean_error(r.stderr)
    assert snapshot(outside) == before
    assert link.is_symlink()  # left as it was
    assert [p.name for p in prefix.parent.iterdir()] == [link.name]  # and nothing else written


def test_dev_stdout_is_written_in_place(tmp_path: Path, store: Path, keys: Keys,
                                        env: dict[str, str]) -> None:
    """/dev/stdout is a link too (to /proc/self/fd/1), but the system's own: followed, never
    replaced, whatever standard output is (a pipe here; a regular file is only asked of
    `written_in_place`, since a wrong answer would replace this machine's /dev/stdout)."""
    p = subprocess.run([sys.executable, "-m", "bundler", "export", "--all", "--models",
                        str(store), "--key", str(keys.key), "-o", "/dev/stdout", "--quiet"],
                       capture_output=True, env={**os.environ, **env}, check=False)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "b.tar.zst"
    out.write_bytes(p.stdout)
    r = run(["verify", str(out), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.output
    assert Path("/dev/stdout").is_symlink()
    for name in ("/dev/stdout", "/dev/fd/1", "/dev/null"):
        assert written_in_place(Path(name)), name
    link = tmp_path / "stdout"
    link.symlink_to("/dev/stdout")  # a link elsewhere to the same: replaced, like any link
    assert not written_in_place(link)
