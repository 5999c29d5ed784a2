"""Re-runs after an interruption redo no finished work (formats/ollama-store.md §4): blobs an
interrupted import staged completely are hashed and kept, not read from the bundle or written
again; staged and renamed blobs get fresh mtimes for Ollama's prune. Bytes read and written
are counted by the kernel (/proc/self/io rchar and wchar)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bundler.digest import Digest
from bundler.errors import BundlerError
from bundler.progress import plural
from bundler.store import Store, StoreLocation
from tests.support.common import (
    MANIFEST_V2,
    MODEL,
    TEMPLATE,
    Keys,
    io_counters,
    make_model,
    run,
    tree,
    weights,
)
from tests.support.faultproxy import fault_proxy
from tests.support.servers import Registry

MB = 1_000_000
SLACK = 256 * 1024  # the head and the frames around the blobs read (see tests/cli/test_seek.py)


def counted(args: list[str], input: bytes | None = None) -> tuple[Any, int, int]:
    """The command's JSON result, and the bytes it read and wrote (rchar, wchar)."""
    before = io_counters()
    r = run([*args, "--json"], input=input)
    after = io_counters()
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), after["rchar"] - before["rchar"], after["wchar"] - before["wchar"]


@pytest.fixture
def three(tmp_path: Path, keys: Keys, env: dict[str, str]) -> tuple[Path, Path]:
    """A bundle of three models with 12 MB of weights each, and the store an uninterrupted
    import of it makes."""
    store = tmp_path / "src"
    for i, name in enumerate(("a", "b", "c")):
        make_model(store, f"registry.ollama.ai/library/{name}/latest",
                   [(MODEL, weights(12 * MB, seed=70 + i)), (TEMPLATE, name.encode())])
    bundle = tmp_path / "three.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
             str(bundle)])
    assert r.exit_code == 0, r.output
    direct = tmp_path / "direct"
    r = run(["import", str(bundle), "--models", str(direct), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.output
    return bundle, direct


def _weights(store: Path) -> list[Path]:
    return sorted((p for p in (store / "blobs").glob("sha256-*") if p.stat().st_size > MB),
                  key=lambda p: p.name)


def _weights_of(store: Path, name: str) -> Path:
    doc = json.loads((store / f"manifests/registry.ollama.ai/library/{name}/latest")
                     .read_bytes())
    digest: str = doc["layers"][0]["digest"]
    return store / "blobs" / digest.replace(":", "-")


def _staged(target: Path, blob: Path, data: bytes | None = None) -> Path:
    """What an import killed after writing `blob` completely, before renaming it, leaves."""
    (target / "blobs").mkdir(parents=True, exist_ok=True)
    path = target / "blobs" / f".bundle-{blob.name[7:]}.partial"
    path.write_bytes(blob.read_bytes() if data is None else data)
    return path


@pytest.mark.parametrize("source", ["file", "pipe"])
def test_completely_staged_blobs_are_kept_not_read_or_written_again(
        three: tuple[Path, Path], tmp_path: Path, keys: Keys, source: str) -> None:
    bundle, direct = three
    target = tmp_path / "target"
    a, b, c = _weights(direct)
    staged = [_staged(target, a), _staged(target, b)]
    kept = sum(p.stat().st_size for p in staged)
    args = ["import", "-" if source == "pipe" else str(bundle), "--models", str(target),
            "--trust", str(keys.pub)]
    data = bundle.read_bytes() if source == "pipe" else None
    doc, read, written = counted(args, input=data)
    assert tree(target) == tree(direct)
    assert not list((target / "blobs").glob(".bundle-*"))
    # only the third weights blob (and the small ones) written; the staged ones were not
    assert written < c.stat().st_size + MB, (written, c.stat().st_size)
    if source == "file":
        assert doc["readOnlyWhatWasNeeded"] is True
        # the staged files are read once, to hash them; of the bundle only the rest
        assert read - kept < c.stat().st_size + SLACK, (read, kept)


def test_ctrl_c_mid_blob_then_the_rerun_reads_and_writes_only_what_is_missing(
        tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    """A real SIGINT while the second of two weights blobs is being written: both staged files
    stay (the first complete, the second cut off); the re-run reads from the bundle only the
    rest of the second, writes only that, and says what it kept in --json (the text: system/
    test_crash.py::test_ctrl_c_keeps_staged_blobs_for_the_rerun)."""
    store = tmp_path / "src"
    sizes = {"a": 24 * MB, "b": 64 * MB}
    for i, (name, size) in enumerate(sizes.items()):
        make_model(store, f"registry.ollama.ai/library/{name}/latest",
                   [(MODEL, weights(size, seed=90 + i)), (TEMPLATE, name.encode())])
    bundle = tmp_path / "two.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    direct = tmp_path / "direct"
    assert run(["import", str(bundle), "--models", str(direct), "--trust", str(keys.pub)]
               ).exit_code == 0
    a, b = _weights_of(direct, "a"), _weights_of(direct, "b")
    target = tmp_path / "target"
    cmd = [sys.executable, "-m", "bundler", "import", str(bundle), "--models", str(target),
           "--trust", str(keys.pub), "-q"]
    staged_b = target / "blobs" / f".bundle-{b.name[7:]}.partial"
    staged_a = target / "blobs" / f".bundle-{a.name[7:]}.partial"
    err = ""
    for _ in range(20):  # until the interrupt lands while b is being written
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if staged_b.exists() and staged_b.stat().st_size > 8 * MB:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate()[1].decode()
        if (proc.returncode == 1 and staged_b.exists()
                and 0 < staged_b.stat().st_size < sizes["b"]):
            break
        shutil.rmtree(target, ignore_errors=True)
    else:
        pytest.fail(f"no interrupt landed while the blob was being written: {err}")
    assert "interrupted" in err and "Traceback" not in err, err
    assert staged_a.stat().st_size == sizes["a"]
    staged = list((target / "blobs").glob(".bundle-*.partial"))  # with configs, templates
    kept = sum(p.stat().st_size for p in staged)
    assert not list((target / "manifests").rglob("latest"))
    doc, read, written = counted(["import", str(bundle), "--models", str(target), "--trust",
                                  str(keys.pub)])
    assert tree(target) == tree(direct)
    assert not list((target / "blobs").glob(".bundle-*"))
    assert doc["readOnlyWhatWasNeeded"] is True
    assert doc["kept"] == {"blobs": len(staged), "bytes": kept}, doc
    missing = sum(p.stat().st_size for p in (direct / "blobs").iterdir()) - kept
    assert doc["bytesWritten"] < missing + MB, (doc["bytesWritten"], missing)
    assert written < missing + MB, (written, missing)
    assert read - kept < missing + SLACK, (read, kept, missing)  # staged files hashed once
    r = run(["import", str(bundle), "--models", str(tmp_path / "again"), "--trust",
             str(keys.pub)])
    assert "kept" not in r.output, r.output  # nothing was staged there


def test_the_progress_total_of_a_resumed_import_leaves_kept_bytes_out(
        three: tuple[Path, Path], tmp_path: Path, keys: Keys) -> None:
    """Two of three weights blobs staged whole, a third cut off: the progress total is what
    is still read, the bytes reported read add up to it, and bytesWritten is what is still
    written, not the whole models."""
    from bundler import signing, store_import

    bundle, direct = three
    target = tmp_path / "target"
    a, b, c = _weights(direct)
    _staged(target, a)
    _staged(target, b)
    half = c.stat().st_size // 2
    _staged(target, c, c.read_bytes()[:half])
    totals: list[int] = []
    seen: list[int] = []
    with bundle.open("rb", buffering=0) as f:
        result = store_import.import_bundle(
            f, Store(StoreLocation(target, "--models")), [signing.read_public(keys.pub)],
            allow_unsigned=False, on_total=totals.append, on_bytes=seen.append)
    assert tree(target) == tree(direct)
    rest = c.stat().st_size - half
    small = sum(p.stat().st_size for p in (direct / "blobs").iterdir()) - sum(
        p.stat().st_size for p in (a, b, c))
    assert totals == [rest + small], (totals, rest, small)
    assert sum(seen) == totals[0]
    assert result.bytes_written == rest + small
    assert (result.blobs_kept, result.bytes_kept) == (3, a.stat().st_size + b.stat().st_size
                                                      + half)


def test_a_staged_blob_of_full_size_with_wrong_content_is_written_again(
        three: tuple[Path, Path], tmp_path: Path, keys: Keys) -> None:
    bundle, direct = three
    target = tmp_path / "target"
    a, b, _ = _weights(direct)
    _staged(target, a)
    bad = bytearray(b.read_bytes())
    bad[5 * MB] ^= 1
    _staged(target, b, bytes(bad))
    _, _, written = counted(["import", str(bundle), "--models", str(target), "--trust",
                             str(keys.pub)])
    assert tree(target) == tree(direct)
    assert b.stat().st_size < written < 2 * b.stat().st_size + MB  # b and c, not a


def test_a_pipe_rewrites_a_partial_blob_only_from_where_it_differs(
        three: tuple[Path, Path], tmp_path: Path, keys: Keys) -> None:
    bundle, direct = three
    target = tmp_path / "target"
    a, b, c = _weights(direct)
    _staged(target, a, a.read_bytes()[: 7 * MB])  # cut off by a kill
    bad = bytearray(b.read_bytes())
    bad[9 * MB] ^= 1  # differs at 9 MB: rewritten from the chunk holding that byte
    _staged(target, b, bytes(bad))
    _, _, written = counted(["import", "-", "--models", str(target), "--trust",
                             str(keys.pub)], input=bundle.read_bytes())
    assert tree(target) == tree(direct)
    rest = (a.stat().st_size - 7 * MB) + (b.stat().st_size - 9 * MB) + c.stat().st_size
    assert written < rest + 3 * MB, (written, rest)


def test_staged_and_renamed_blobs_get_fresh_mtimes(
        three: tuple[Path, Path], tmp_path: Path, keys: Keys) -> None:
    """Ollama's prune (>= 0.21) spares files younger than an hour: blobs an earlier import
    staged long ago are made fresh when renamed, and blobs already present too."""
    bundle, direct = three
    target = tmp_path / "target"
    a, b, _ = _weights(direct)
    old = time.time() - 3 * 3600
    for path in (_staged(target, a), _staged(target, b)):
        os.utime(path, (old, old))
    start = time.time()
    counted(["import", str(bundle), "--models", str(target), "--trust", str(keys.pub)])
    blobs = list((target / "blobs").glob("sha256-*"))
    assert len(blobs) == len(list((direct / "blobs").glob("sha256-*")))
    for blob in blobs:
        assert blob.stat().st_mtime >= start - 1, blob.name
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name[7:]


def test_commit_makes_an_old_staged_blob_fresh_and_names_one_that_vanished(
        tmp_path: Path) -> None:
    store = Store(StoreLocation(tmp_path / "s", "--models"))
    store.prepare()
    old = time.time() - 3 * 3600
    staged = []
    for data in (b"kept", b"pruned"):
        blob = store.stage(Digest.of(data))
        blob.write(data)
        blob.finish()
        os.utime(blob.path, (old, old))
        staged.append(blob)
    start = time.time()
    store.commit_blob(staged[0])
    assert store.blob_path(Digest.of(b"kept")).stat().st_mtime >= start - 1
    staged[1].path.unlink()  # as an Ollama server starting meanwhile prunes it
    with pytest.raises(BundlerError, match="vanished before it was renamed") as e:
        store.commit_blob(staged[1])
    assert e.value.hint == "run the import again"


def _has(base: str, repo: str, blob: Path) -> bool:
    req = urllib.request.Request(f"{base}/v2/{repo}/blobs/sha256:{blob.name[7:]}",
                                 method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError:
        return False


def test_a_push_rerun_after_kill_9_reads_only_what_the_registry_lacks(
        registry: Registry, three: tuple[Path, Path], tmp_path: Path, keys: Keys,
        env: dict[str, str]) -> None:
    bundle, direct = three
    weights_of = {name: _weights_of(direct, name) for name in ("a", "b", "c")}
    cmd = [sys.executable, "-m", "bundler", "import", str(bundle), "--to-registry",
           registry.url + "/resume", "--trust", str(keys.pub), "-q", "--jobs", "1"]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (proc.poll() is None and time.monotonic() < deadline
           and not _has(registry.url, "resume/a", weights_of["a"])):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    missing = sum(b.stat().st_size for n, b in weights_of.items()
                  if not _has(registry.url, f"resume/{n}", b))
    doc, read, _ = counted(["import", str(bundle), "--to-registry", registry.url + "/resume",
                            "--trust", str(keys.pub)])
    assert doc["bytesUploaded"] <= missing + MB
    assert read < missing + SLACK, (read, missing)
    for name in weights_of:
        raw = (direct / f"manifests/registry.ollama.ai/library/{name}/latest").read_bytes()
        with urllib.request.urlopen(urllib.request.Request(
                f"{registry.url}/v2/resume/{name}/manifests/latest",
                headers={"Accept": MANIFEST_V2}), timeout=30) as r:
            assert r.read() == raw


def test_a_cached_download_complete_but_not_renamed_is_not_fetched_again(
        registry: Registry, three: tuple[Path, Path], tmp_path: Path, keys: Keys) -> None:
    """export --from-registry --cache, killed after the last byte of a blob was written to
    the cache but before its rename: the re-run uses it, asking the registry for nothing."""
    bundle, direct = three
    r = run(["import", str(bundle), "--to-registry", registry.url, "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.output
    cache = tmp_path / "cache"
    out = tmp_path / "again.tar.zst"
    args = ["export", "--from-registry", "a", "b", "--mirror", registry.url, "--unsigned",
            "-o", str(out), "--cache", str(cache)]
    assert run(args).exit_code == 0
    a = _weights_of(direct, "a")
    done = cache / a.name
    assert done.is_file()
    done.rename(cache / f"{a.name}.partial")
    with fault_proxy(registry.url, []) as (url, log):
        r = run([*args[:5], url, *args[6:]])
        assert r.exit_code == 0, r.output
        assert not [x for x in log.requests if "/blobs/" in x]
    assert done.is_file() and not list(cache.glob("*.partial"))
    r = run(["verify", str(out), "--allow-unsigned"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("signed", [True, False])
def test_ls_reads_only_the_head(three: tuple[Path, Path], tmp_path: Path, keys: Keys,
                                signed: bool) -> None:
    """The seek table says where the head ends; `ls` reads nothing after it (the stream's
    read-ahead used to read about 10 MB more)."""
    bundle, direct = three
    if not signed:
        bundle = tmp_path / "unsigned.tar.zst"
        r = run(["export", "--all", "--models", str(direct), "--unsigned", "-o", str(bundle)])
        assert r.exit_code == 0, r.output
    doc, read, _ = counted(["ls", str(bundle), "--trust", str(keys.pub)])
    assert [m["name"] for m in doc["models"]] == ["a:latest", "b:latest", "c:latest"]
    assert read < 200_000, read  # the head is a few KB; the blobs after it 36 MB


def _kill_when(cmd: list[str], env: dict[str, str], ready: Any) -> None:
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("split", [False, True])
def test_an_export_removes_what_a_killed_export_to_the_same_name_left(
        three: tuple[Path, Path], tmp_path: Path, keys: Keys, env: dict[str, str],
        split: bool) -> None:
    _, direct = three
    out = tmp_path / "out" / "b.tar.zst"
    out.parent.mkdir()
    extra = ["--split", "10MB"] if split else []
    export = [sys.executable, "-m", "bundler", "export", "--all", "--models", str(direct),
              "--key", str(keys.key), "-o", str(out), "-q", *extra]

    def partial_written() -> bool:
        return any(p.stat().st_size > 2 * MB for p in out.parent.glob(".*.partial"))

    _kill_when(export, env, partial_written)
    left = list(out.parent.glob(".*.partial"))
    assert left and not out.exists()
    other = out.parent / ".other.tar.zst.0123abcd.partial"  # another output's: not ours
    other.write_bytes(b"x")
    live = out.parent / ".b.tar.zst.89abcdef.partial"  # an export to this name still running
    with live.open("wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run(export[3:-1] if not split else [*export[3:-3], *extra])
        assert r.exit_code == 0, r.output
        assert sorted(out.parent.glob(".*.partial")) == sorted([other, live])
    r = run(["verify", str(out) + (".001" if split else ""), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.output


def test_counts_in_messages_agree_with_their_nouns(tmp_path: Path, keys: Keys,
                                                   env: dict[str, str]) -> None:
    assert [plural(n, "blob") for n in (0, 1, 2)] == ["0 blobs", "1 blob", "2 blobs"]
    assert plural(1, "repository", "repositories") == "1 repository"
    assert plural(3, "repository", "repositories") == "3 repositories"
    store = tmp_path / "one"
    make_model(store, "registry.ollama.ai/library/solo/latest", [])  # a config, no layers
    out = tmp_path / "one.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
             str(out)])
    assert r.exit_code == 0, r.output
    assert "1 model, 2 blobs," in r.stdout
    texts = [r.stdout]
    for args in (["ls", str(out)], ["verify", str(out)],
                 ["import", str(out), "--models", str(tmp_path / "t")],
                 ["import", str(out), "--models", str(tmp_path / "t")]):
        r = run([*args, "--trust", str(keys.pub)])
        assert r.exit_code == 0, r.output
        texts.append(r.output)
    text = "\n".join(texts)
    assert "wrote 1 blob (" in text and "wrote 0 blobs" in text
    assert "trust: 1 key (" in text
    assert not re.search(r"\b1 (blobs|models|keys|files|parts|bytes)\b|\(s\)", text), text


def test_ls_of_a_bundle_carrying_the_tool_reads_only_the_head(
        three: tuple[Path, Path], tmp_path: Path, keys: Keys) -> None:
    """With a carried tool the head is several frames (formats/bundle-v1.md §7); `ls` still
    stops where the head ends: the tool is read, no blob after it."""
    from tests.support.common import fake_pex

    _, direct = three
    pex = fake_pex(tmp_path / "tool.pex", size=2_000_000)
    bundle = tmp_path / "tool.tar.zst"
    r = run(["export", "--all", "--models", str(direct), "--key", str(keys.key),
             "--with-tool", str(pex), "-o", str(bundle)])
    assert r.exit_code == 0, r.output
    doc, read, _ = counted(["ls", str(bundle), "--trust", str(keys.pub)])
    assert doc["toolFile"]["size"] == pex.stat().st_size
    assert [m["name"] for m in doc["models"]] == ["a:latest", "b:latest", "c:latest"]
    assert read < pex.stat().st_size + 200_000, read  # the blobs after the head: 36 MB
