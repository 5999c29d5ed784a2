"""What lies around a bundle on the medium is not signed: par2 recovery sets made by stock
`par2 create` from other files must not make `bundle repair` write anything but the bundle's
own files (formats/bundle-v1.md §10, formats/threat-model.md T31)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.support.common import Keys, run
from tests.support.scene import assert_clean_error


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under the roots (links as links, never followed) with its content's sha256
    or link target: anything created, replaced or changed shows."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath, name)
                if p.is_symlink():
                    out[str(p)] = "-> " + str(p.readlink())
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                else:
                    out[str(p)] = "dir"
    return out


def forge(workdir: Path, index: str, files: dict[str, bytes]) -> list[Path]:
    """A recovery set made by stock `par2 create` (full redundancy, so it can rebuild every
    file it names) over `files`, its index called `index`: the files it writes."""
    workdir.mkdir()
    for name, data in files.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_bytes(data)
    subprocess.run(["par2", "create", "-q", "-q", "-r100", "-n1", "-B", str(workdir),
                    str(workdir / index), *(str(workdir / n) for n in files)],
                   check=True, capture_output=True)
    return sorted(workdir.glob("*.par2"))


def test_repair_refuses_a_recovery_set_for_a_key_beside_the_bundle(
        tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    medium = tmp_path / "medium"
    medium.mkdir()
    bundle = medium / bundle_file.name
    shutil.move(bundle_file, bundle)
    shutil.copy(keys.key, medium / "release.key")  # the user's key, carried beside the bundle
    for f in forge(tmp_path / "forge", f"{bundle.name}.par2",
                   {"release.key": b"-----BEGIN ATTACKER KEY-----\n"}):
        shutil.copy(f, medium / f.name)
    before = snapshot(medium, keys.key.parent)
    r = run(["repair", str(bundle)])
    assert r.exit_code == 3, r.output
    assert "release.key" in r.stderr and "par2" in r.stderr, r.stderr
    assert_clean_error(r.stderr)
    assert snapshot(medium, keys.key.parent) == before


def test_repair_refuses_a_recovery_set_through_a_symlink_on_the_medium(
        tmp_path: Path, bundle_file: Path, env: dict[str, str]) -> None:
    medium, outside = tmp_path / "medium", tmp_path / "home-ssh"
    medium.mkdir()
    outside.mkdir()
    (outside / "known_hosts").write_bytes(b"host key\n")
    bundle = medium / bundle_file.name
    shutil.move(bundle_file, bundle)
    (medium / "sub").symlink_to(outside)  # planted on the medium, pointing outside it
    for f in forge(tmp_path / "forge", f"{bundle.name}.par2",
                   {"sub/authorized_keys": b"ssh-ed25519 AAAA attacker\n",
                    "sub/known_hosts": b"attacker host key\n"}):
        shutil.copy(f, medium / f.name)
    before = snapshot(medium, outside)
    r = run(["repair", str(bundle)])
    assert r.exit_code == 3, r.output
    assert "sub/" in r.stderr, r.stderr
    assert_clean_error(r.stderr)
    assert snapshot(medium, outside) == before  # nothing created, nothing replaced


def test_repair_writes_only_the_parts_the_signed_head_lists(
        tmp_path: Path, store: Path, keys: Keys, env: dict[str, str]) -> None:
    """A file named like a part that the head does not list is no part: even with a
    recovery set of its own (naming only itself), repair leaves it alone."""
    medium = tmp_path / "medium"
    medium.mkdir()
    out = medium / "m.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out),
             "--split", "64KiB", "--parity", "10"])
    assert r.exit_code == 0, r.output
    stray = medium / "m.tar.zst.050"
    stray.write_bytes(b"x" * 4096)
    subprocess.run(["par2", "create", "-q", "-q", "-r100", "-n1", f"{stray}.par2", str(stray)],
                   check=True, capture_output=True)
    stray.write_bytes(b"the user's own notes, not a part\n")
    before = snapshot(medium)
    r = run(["repair", str(medium / "m.tar.zst.001"), "--json"])
    assert r.exit_code == 0, r.output
    assert stray.name not in r.stdout
    assert snapshot(medium) == before
