"""Split bundles for removable media (formats/bundle-v1.md §10): parts cut anywhere (inside a
tar header, inside a zstd frame), reassembled by our importer, by cat and stock tar, and from
stdin; a missing, short or corrupt part is named before anything is written."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bundler.errors import UsageError
from bundler.split import parse_size
from tests.support.common import MODEL, TEMPLATE, Keys, make_model, run, tree, weights
from tests.support.scene import assert_clean_error
from tests.support.zstd import decompress, frames

EPOCH = {"SOURCE_DATE_EPOCH": "1790000000"}


@pytest.fixture
def big_store(tmp_path: Path) -> Path:
    """Stored weights frames large enough to cut inside, and several small frames."""
    store = tmp_path / "store"
    make_model(store, "registry.ollama.ai/library/a/latest",
               [(MODEL, weights(700_000, seed=1)), (TEMPLATE, b"{{ .A }}")])
    make_model(store, "registry.ollama.ai/library/b/latest",
               [(MODEL, weights(500_000, seed=2)), (TEMPLATE, b"{{ .B }}")])
    return store


def _export(store: Path, out: Path, keys: Keys, *extra: str) -> Any:
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out),
             "--json", *extra], EPOCH)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _parts(out: Path) -> list[Path]:
    return sorted(out.parent.glob(out.name + ".[0-9][0-9][0-9]"))


def _cut_points(single: bytes) -> tuple[int, int]:
    """Part sizes that cut the stream after part 1 (the head frame and the two manifests'
    frames) inside the tar header of the second stored (weights) frame, and in the middle of
    its raw blocks."""
    spans = frames(single)
    blobs_start = spans[3][0]
    stored = [s for s, _ in spans if single[s + 4 : s + 6] == b"\xc0\x38"]
    offset = stored[1] - blobs_start
    assert offset > 64 * 1024
    return offset + 100, offset + 5000  # 14 + 3 header bytes < 100 < 14 + 3 + 512


def test_sizes_and_presets() -> None:
    assert parse_size("fat32") == 4 * 1024**3 - 1
    assert parse_size("dvd") == 4_700_000_000 and parse_size("bd25") == 25_000_000_000
    assert parse_size("4GiB") == 4 * 1024**3 and parse_size("4GB") == 4_000_000_000
    assert parse_size("700MB") == 700_000_000 and parse_size("65536") == 65536
    for bad in ("4G", "lots", "-1GB", "1KiB", "1.5XB"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_parts_cut_anywhere_reassemble_every_way(big_store: Path, tmp_path: Path,
                                                 keys: Keys, env: dict[str, str]) -> None:
    single = tmp_path / "single.tar.zst"
    _export(big_store, single, keys)
    direct = tmp_path / "direct"
    assert run(["import", str(single), "--models", str(direct), "--trust",
                str(keys.pub)]).exit_code == 0
    in_header, in_frame = _cut_points(single.read_bytes())
    for i, size in enumerate((in_header, in_frame, 10**9)):
        out = tmp_path / f"s{i}" / "r.tar.zst"
        out.parent.mkdir()
        doc = _export(big_store, out, keys, "--split", str(size), "--verify-after-write")
        parts = _parts(out)
        assert [p["name"] for p in doc["parts"]] == [p.name for p in parts]
        assert all(p.stat().st_size == size for p in parts[1:-2])
        assert parts[0].stat().st_size < 10_000  # part 1 is the head
        table = parts[-1].read_bytes()  # the last part: the seek table of the whole stream
        assert table[:4] == (0x184D2A5E).to_bytes(4, "little")
        sidecar = json.loads((out.parent / "r.tar.zst.parts.json").read_text())
        assert [(p["name"], p["size"], p["digest"]) for p in sidecar["parts"]] == [
            (p.name, p.stat().st_size, "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest())
            for p in parts]
        joined = b"".join(p.read_bytes() for p in parts)
        # the parts between the head and the seek table are the single file's blob frames
        plain = single.read_bytes()
        blob_frames = b"".join(p.read_bytes() for p in parts[1:-1])
        assert plain[: frames(plain)[-1][0]].endswith(blob_frames)
        # our importer, from the first part
        target = tmp_path / f"t{i}"
        r = run(["import", str(parts[0]), "--models", str(target), "--trust", str(keys.pub)])
        assert r.exit_code == 0, r.output
        assert tree(target) == tree(direct)
        # cat + stock tar give the same layout
        unpacked = tmp_path / f"u{i}"
        unpacked.mkdir()
        subprocess.run(["tar", "--zstd", "-x", "-C", str(unpacked)], input=joined, check=True)
        blobs = {p.name: p.read_bytes() for p in (unpacked / "blobs/sha256").iterdir()}
        assert all(hashlib.sha256(b).hexdigest() == n for n, b in blobs.items())
        assert decompress(joined).endswith(decompress(single.read_bytes())[-1024:])
        # cat | bundle import -
        piped = tmp_path / f"p{i}"
        r = run(["import", "-", "--models", str(piped), "--trust", str(keys.pub)], input=joined)
        assert r.exit_code == 0, r.output
        assert tree(piped) == tree(direct)


@pytest.fixture
def split(big_store: Path, tmp_path: Path, keys: Keys, env: dict[str, str]) -> Path:
    out = tmp_path / "m" / "r.tar.zst"
    out.parent.mkdir()
    _export(big_store, out, keys, "--split", "128KiB")
    return out


def _refused(split: Path, keys: Keys, target: Path, code: int, *names: str) -> None:
    for args in (["import", str(split) + ".001", "--models", str(target)],
                 ["verify", str(split) + ".001"], ["verify", str(split.parent), "--parts-only"]):
        r = run([*args, "--trust", str(keys.pub)])
        assert r.exit_code == code, (args, r.output)
        assert_clean_error(r.stderr)
        assert all(n in r.stderr for n in names), r.stderr
        assert not target.exists() or tree(target) == {}


def test_a_missing_part_is_named(split: Path, keys: Keys, tmp_path: Path) -> None:
    (split.parent / "r.tar.zst.004").unlink()
    r = run(["verify", str(split) + ".001", "--trust", str(keys.pub)])
    assert r.exit_code == 4 and "r.tar.zst.004" in r.stderr and "missing" in r.stderr
    target = tmp_path / "t"
    r = run(["import", str(split) + ".001", "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 4 and "r.tar.zst.004" in r.stderr
    assert not target.exists() or tree(target) == {}
    r = run(["verify", str(split) + ".001", "--parts-only", "--trust", str(keys.pub)])
    assert r.exit_code == 3 and "r.tar.zst.004 is missing" in r.stderr
    # the first part itself missing, and its directory too: named, exit 4, every way in
    gone = tmp_path / "no-such-dir" / "r.tar.zst.001"
    for args in (["verify", str(gone), "--parts-only"], ["verify", str(gone)], ["ls", str(gone)],
                 ["import", str(gone), "--models", str(target)]):
        r = run([*args, "--trust", str(keys.pub)])
        assert r.exit_code == 4, (args, r.output)
        assert str(gone) in r.stderr and "Traceback" not in r.output, r.stderr


def test_a_short_part_is_named(split: Path, keys: Keys, tmp_path: Path) -> None:
    part = split.parent / "r.tar.zst.003"
    part.write_bytes(part.read_bytes()[:-1])
    _refused(split, keys, tmp_path / "t", 3, "r.tar.zst.003")


def test_a_corrupt_part_is_named(split: Path, keys: Keys, tmp_path: Path) -> None:
    part = split.parent / "r.tar.zst.005"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 1
    part.write_bytes(data)
    _refused(split, keys, tmp_path / "t", 3, "r.tar.zst.005")


def test_parts_only_names_every_bad_part(split: Path, keys: Keys) -> None:
    (split.parent / "r.tar.zst.002").write_bytes(b"short")
    bad = split.parent / "r.tar.zst.003"
    bad.write_bytes(bytes(bad.stat().st_size))
    r = run(["verify", str(split) + ".001", "--parts-only", "--trust", str(keys.pub)])
    assert r.exit_code == 3
    assert "r.tar.zst.002 has 5 bytes" in r.stderr and "r.tar.zst.003 is corrupt" in r.stderr


def test_globs_directories_and_stale_parts(split: Path, big_store: Path, keys: Keys,
                                           env: dict[str, str]) -> None:
    parts = _parts(split)
    for args in ([str(split.parent)], [str(split) + ".*"], [str(p) for p in parts]):
        r = run(["ls", *args, "--trust", str(keys.pub), "--json"])
        assert r.exit_code == 0, (args, r.output)
    assert len(json.loads(r.stdout)["models"]) == 2
    # a release given by its first part, as diff and export --base read it: all its parts
    r = run(["diff", str(split) + ".001", str(split) + ".001"])
    assert r.exit_code == 0, r.output
    # a second export with bigger parts leaves no stale part behind
    _export(big_store, split, keys, "--split", "1MiB")
    assert len(_parts(split)) < len(parts)
    r = run(["verify", str(split) + ".001", "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.output


def test_split_needs_a_file_and_a_real_size(big_store: Path, tmp_path: Path, keys: Keys,
                                            env: dict[str, str]) -> None:
    for extra, text in ((["-o", "-", "--split", "fat32"], "need -o FILE"),
                        (["-o", str(tmp_path / "x"), "--split", "4G"], "not a size")):
        r = run(["export", "--all", "--models", str(big_store), "--key", str(keys.key),
                 *extra])
        assert r.exit_code == 2 and text in r.stderr, r.output
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(".x*"))


def test_parity_repairs_a_damaged_part(big_store: Path, tmp_path: Path, keys: Keys,
                                       env: dict[str, str]) -> None:
    out = tmp_path / "m" / "r.tar.zst"
    out.parent.mkdir()
    _export(big_store, out, keys, "--split", "256KiB", "--parity", "10")
    parts = _parts(out)
    assert all((out.parent / f"{p.name}.par2").is_file() for p in parts)
    damaged = parts[2]
    good = damaged.read_bytes()
    data = bytearray(good)
    data[1000:1400] = bytes(400)  # a scratch on the medium
    damaged.write_bytes(data)
    r = run(["verify", str(out.parent), "--parts-only", "--trust", str(keys.pub)])
    assert r.exit_code == 3 and damaged.name in r.stderr
    r = run(["repair", str(parts[0]), "--json"])
    assert r.exit_code == 0, r.output
    states = {f["name"]: f["state"] for f in json.loads(r.stdout)["files"]}
    assert states[damaged.name] == "repaired" and set(states.values()) <= {"intact", "repaired"}
    assert damaged.read_bytes() == good and not (out.parent / f"{damaged.name}.1").exists()
    r = run(["verify", str(parts[0]), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.output
    # a part that is gone beyond what 10 % can mend is named, with what to do
    damaged.write_bytes(bytes(len(good)))
    r = run(["repair", str(out.parent)])
    assert r.exit_code == 3 and damaged.name in r.stderr and "copy" in r.stderr
    assert_clean_error(r.stderr)


def test_parity_without_par2_says_how_to_install_it(big_store: Path, tmp_path: Path,
                                                    keys: Keys, env: dict[str, str]) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    r = run(["export", "--all", "--models", str(big_store), "--key", str(keys.key), "-o",
             str(tmp_path / "x.tar.zst"), "--parity", "5"], {"PATH": str(empty)})
    assert r.exit_code == 4 and "apt-get install par2" in r.stderr, r.output
    assert not list(tmp_path.glob("*x.tar.zst*"))  # refused before the export
