"""Bad input gets one line and a documented exit code; outputs are never corrupted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.common import Keys, cli, run, tree


def test_export_to_stdout_keeps_the_summary_off_the_bundle(tmp_path: Path, store: Path,
                                                            keys: Keys, env: dict[str, str]) -> None:
    for extra in ([], ["--json"]):
        p = cli("export", "--all", "--models", str(store), "--key", str(keys.key), "-o", "-",
                *extra, env=env)
        assert p.returncode == 0, p.stderr
        out = tmp_path / "s.tar.zst"
        out.write_bytes(p.stdout)
        assert run(["verify", str(out), "--trust", str(keys.pub)]).exit_code == 0
        assert b"wrote -" in p.stderr or b'"output": "-"' in p.stderr


def test_duplicate_keys_sign_once(tmp_path: Path, store: Path, keys: Keys,
                                  env: dict[str, str]) -> None:
    out = tmp_path / "d.tar.zst"
    r = run(["export", "tiny", "--models", str(store), "--key", str(keys.key), "--key",
             str(keys.key), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["signers"] == [keys.keyid]
    assert run(["verify", str(out), "--trust", str(keys.pub)]).exit_code == 0


def test_output_paths(tmp_path: Path, store: Path, keys: Keys, env: dict[str, str]) -> None:
    base = ["export", "tiny", "--models", str(store), "--key", str(keys.key), "-o"]
    r = run([*base, str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.stderr
    r = run([*base, str(tmp_path / "missing" / "b.tar.zst")])
    assert r.exit_code == 4 and "does not exist" in r.stderr
    assert run([*base, ""]).exit_code == 2
    # a device is written into, not replaced
    assert run([*base, "/dev/null"]).exit_code == 0
    assert Path("/dev/null").is_char_device()
    # a symlink: replaced by the file, its target left alone (formats/README.md)
    target = tmp_path / "real.tar.zst"
    target.write_bytes(b"kept")
    link = tmp_path / "link.tar.zst"
    link.symlink_to(target)
    assert run([*base, str(link)]).exit_code == 0
    assert not link.is_symlink() and link.stat().st_size > 0 and target.read_bytes() == b"kept"
    # a FIFO is written into too
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = tmp_path / "received"
    with received.open("wb") as sink:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=sink)
        assert run([*base, str(fifo)]).exit_code == 0
        assert reader.wait(timeout=30) == 0
    assert received.read_bytes()[:4] == b"\x28\xb5\x2f\xfd" and fifo.is_fifo()


@pytest.mark.parametrize("value", ["abc", "99999999999999", "\u00b2", "-5", "1.5"])
def test_bad_source_date_epoch(tmp_path: Path, store: Path, keys: Keys, env: dict[str, str],
                               value: str) -> None:
    r = run(["export", "tiny", "--models", str(store), "--key", str(keys.key), "-o",
             str(tmp_path / "b.tar.zst")], env={"SOURCE_DATE_EPOCH": value})
    assert r.exit_code == 2 and "SOURCE_DATE_EPOCH" in r.stderr


def test_files_and_directories_in_the_wrong_places(tmp_path: Path, bundle_file: Path,
                                                   keys: Keys, env: dict[str, str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args in (["import", str(bundle_file), "--models", str(afile)],
                 ["export", "--all", "--models", str(afile), "--unsigned", "-o",
                  str(tmp_path / "o")],
                 ["keygen", "--out", str(afile / "sub" / "k"), "--no-passphrase"],
                 ["verify", str(tmp_path)],
                 ["ls", "/proc/self/mem"]):
        r = run([*args, "--trust", str(keys.pub)] if args[0] == "import" else args)
        assert r.exit_code in (1, 2, 3, 4), (args, r.exit_code)
        assert r.stderr.lower().count("error: ") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
    blobs_file = tmp_path / "s"
    blobs_file.mkdir()
    (blobs_file / "blobs").write_text("not a dir")
    r = run(["import", str(bundle_file), "--models", str(blobs_file), "--trust", str(keys.pub)])
    assert r.exit_code == 1 and r.stderr.count("error: ") == 1


def test_key_options(tmp_path: Path, store: Path, keys: Keys, env: dict[str, str]) -> None:
    r = run(["keygen", "--out", str(tmp_path / "k2"), "--no-passphrase", "--passphrase-file",
             str(tmp_path / "pw")])
    assert r.exit_code == 2
    r = run(["export", "tiny", "--models", str(store), "--key", str(keys.key),
             "--passphrase-file", str(tmp_path / "nope"), "-o", str(tmp_path / "b")])
    assert r.exit_code == 0  # an unencrypted key needs no passphrase file
    enc = run(["keygen", "--out", str(tmp_path / "enc"), "--json"],
              env={"BUNDLE_PASSPHRASE": "pw"})
    assert enc.exit_code == 0, enc.stderr
    r = run(["export", "tiny", "--models", str(store), "--key", str(tmp_path / "enc.key"),
             "--passphrase-file", str(tmp_path / "nope"), "-o", str(tmp_path / "b")])
    assert r.exit_code == 4 and "passphrase file not found" in r.stderr
    (tmp_path / "notpem.key").write_text("hello")
    (tmp_path / "notpem.key").chmod(0o600)
    r = run(["export", "tiny", "--models", str(store), "--key", str(tmp_path / "notpem.key"),
             "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "PKCS#8" in r.stderr
    # the public key given where the signing key goes: said so, not "wrong passphrase"
    keys.pub.chmod(0o644)
    r = run(["export", "tiny", "--models", str(store), "--key", str(keys.pub),
             "-o", str(tmp_path / "b")], env={"BUNDLE_PASSPHRASE": "pw"})
    assert r.exit_code == 2, r.output
    assert "public key" in r.stderr and "chmod" not in r.stderr, r.stderr
    assert "passphrase" not in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root; CI runs as root")
def test_root_import_cannot_be_steered_outside_the_store(world_dir: Path, bundle_file: Path,
                                                         keys: Keys, env: dict[str, str]) -> None:
    """A link planted by the store's owner must not make root write outside the store."""
    outside = world_dir / "outside"
    outside.mkdir(mode=0o755)
    target = world_dir / "st"
    (target / "manifests").mkdir(parents=True)
    for p in (target, target / "manifests"):
        os.chown(p, 4321, 4321)
    (target / "manifests" / "registry.ollama.ai").symlink_to(outside)
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 1 and "Permission denied" in r.stderr
    assert tree(outside) == {}
    assert os.geteuid() == 0  # privileges were restored
