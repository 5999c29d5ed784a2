"""Random access through the seek table (formats/bundle-v1.md §7.1): `import --only` and a
re-run after an interrupted import read only the blobs they write (bytes read counted by the
kernel, /proc/self/io), from a file and from split parts; stock zstd and tar still read it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.common import MODEL, TEMPLATE, Keys, make_model, rchar, run, tree, weights

MB = 1_000_000
# What a targeted read may read besides the blobs it writes: the head (root, signatures,
# index.json, manifests: a few KiB), the seek table, and the frames around those blobs.
# Less than one of the reader's 1 MiB buffers (bundler.digest.CHUNK_SIZE): reading ahead
# into a blob it does not write fails these tests.
SLACK = 256 * 1024


def _counted(args: list[str]) -> tuple[Any, int]:
    before = rchar()
    r = run([*args, "--json"])
    read = rchar() - before
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), read


@pytest.fixture
def three(tmp_path: Path, keys: Keys, env: dict[str, str]) -> tuple[Path, Path]:
    """Three models of 12 MB each in one bundle, and the same split in 5 MB parts."""
    store = tmp_path / "store"
    for i, name in enumerate(("a", "b", "c")):
        make_model(store, f"registry.ollama.ai/library/{name}/latest",
                   [(MODEL, weights(12 * MB, seed=60 + i)), (TEMPLATE, name.encode())])
    single, split = tmp_path / "one.tar.zst", tmp_path / "parts" / "p.tar.zst"
    split.parent.mkdir()
    for out, extra in ((single, []), (split, ["--split", "5MB"])):
        r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                 str(out), *extra])
        assert r.exit_code == 0, r.output
    return single, split


@pytest.mark.parametrize("form", ["file", "parts"])
def test_only_one_model_reads_only_its_bytes(three: tuple[Path, Path], tmp_path: Path,
                                             keys: Keys, form: str) -> None:
    single, split = three
    src = str(single) if form == "file" else str(split) + ".001"
    size = sum(p.stat().st_size for p in (split.parent.glob("p.tar.zst.*")
                                          if form == "parts" else [single]))
    target = tmp_path / f"t-{form}"
    doc, read = _counted(["import", src, "--models", str(target), "--trust", str(keys.pub),
                          "--only", "b"])
    assert doc["readOnlyWhatWasNeeded"] is True
    assert [m["name"] for m in doc["models"]] == ["b:latest"]
    # 12 MB of weights, plus the head: nothing of the other models, not even read ahead
    assert read < 12 * MB + SLACK < size * 0.65, (read, size)
    whole = tmp_path / f"w-{form}"
    _, read_all = _counted(["import", src, "--models", str(whole), "--trust", str(keys.pub)])
    assert read_all >= size * 0.95  # the control: everything, read once
    assert tree(target).items() <= tree(whole).items()


def test_a_rerun_reads_only_what_is_missing(three: tuple[Path, Path], tmp_path: Path,
                                           keys: Keys) -> None:
    """An import that stopped after two models (as if killed: here by --only) continues from
    the parts without reading the blobs already committed."""
    _, split = three
    target = tmp_path / "t"
    _counted(["import", str(split) + ".001", "--models", str(target), "--trust",
              str(keys.pub), "--only", "a", "--only", "c"])
    doc, read = _counted(["import", str(split) + ".001", "--models", str(target), "--trust",
                          str(keys.pub)])
    assert doc["readOnlyWhatWasNeeded"] is True and doc["blobsWritten"] == 2
    assert read < 12 * MB + SLACK, read


def test_small_models_after_a_large_one_read_only_theirs(tmp_path: Path, keys: Keys,
                                                        env: dict[str, str]) -> None:
    """The head is followed by 8 MB of weights that neither `--only` of small models nor a
    re-run that lacks only those reads, not even ahead; the re-run that lacks the weights
    reads them once."""
    store = tmp_path / "store"
    make_model(store, "registry.ollama.ai/library/big/latest", [(MODEL, weights(8 * MB))])
    for i in range(10):
        make_model(store, f"registry.ollama.ai/library/s{i}/latest",
                   [(MODEL, weights(1000, seed=90 + i)), (TEMPLATE, f"s{i}".encode())])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    trust = ["--trust", str(keys.pub)]
    doc, read = _counted(["import", str(bundle), "--models", str(tmp_path / "one"), *trust,
                          "--only", "s3"])
    assert doc["readOnlyWhatWasNeeded"] is True and doc["blobsWritten"] == 3
    assert read < SLACK, read
    target = tmp_path / "six"
    six = [a for i in range(6) for a in ("--only", f"s{i}")]
    doc, read = _counted(["import", str(bundle), "--models", str(target), *trust, *six])
    assert doc["blobsWritten"] == 6 * 2 + 1  # the config is shared
    assert read < SLACK, read
    doc, read = _counted(["import", str(bundle), "--models", str(target), *trust, "--only",
                          "s7", "--only", "s8"])
    assert doc["readOnlyWhatWasNeeded"] is True and doc["blobsWritten"] == 4
    assert read < SLACK, read
    doc, read = _counted(["import", str(bundle), "--models", str(target), *trust])
    assert doc["readOnlyWhatWasNeeded"] is True and doc["blobsWritten"] == 1 + 2 * 2
    assert 8 * MB < read < 8 * MB + SLACK, read


def test_stock_tools_still_read_it(three: tuple[Path, Path], tmp_path: Path) -> None:
    single, _ = three
    subprocess.run(["zstd", "-t", "-q", str(single)], check=True)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(single), "-C", str(out)], check=True)
    assert len(list((out / "blobs" / "sha256").iterdir())) == 3 + 3 + 3 + 1  # + config
