"""kill -9 and Ctrl-C during an import leave the store consistent; a re-run completes it."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.support.common import (
    MODEL,
    TEMPLATE,
    Keys,
    check_consistent,
    make_model,
    rchar,
    run,
    tree,
)
from tests.support.servers import SCHEMA2, Registry, _get

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

KILL_POINTS = 20  # per harness: store import, registry push, export (60 per CI run)


def _big_store(root: Path) -> Path:
    rng = random.Random(7)
    for i in range(3):
        make_model(root, f"registry.ollama.ai/library/m{i}/latest",
                   [(MODEL, rng.randbytes(24_000_000)), (TEMPLATE, f"t{i}".encode())])
    return root


def _import_cmd(bundle: Path, target: Path, keys: Keys) -> list[str]:
    return [sys.executable, "-m", "bundler", "import", str(bundle), "--models", str(target),
            "--trust", str(keys.pub), "-q"]


def test_kill_9_at_random_points_then_resume(tmp_path: Path, os_paths: bool, keys: Keys,
                                             env: dict[str, str]) -> None:
    store = _big_store(tmp_path / "src")
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    target = tmp_path / "target"
    start = time.monotonic()
    subprocess.run(_import_cmd(bundle, tmp_path / "probe", keys), check=True,
                   env={**os.environ, **env})
    duration = time.monotonic() - start

    rng = random.Random(1)
    killed = 0
    for _ in range(3 * KILL_POINTS):  # a run may finish before its kill on a loaded machine
        if killed == KILL_POINTS:
            break
        proc = subprocess.Popen(_import_cmd(bundle, target, keys), env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.9 * duration))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        check_consistent(target)
    assert killed >= KILL_POINTS // 2  # most runs were really interrupted

    r = run(["import", str(bundle), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    check_consistent(target)
    assert tree(target) == tree(store)
    assert not list(target.rglob(".bundle-*"))  # the re-run cleaned up what the kills left


def test_ctrl_c_keeps_staged_blobs_for_the_rerun(tmp_path: Path, keys: Keys,
                                                 env: dict[str, str]) -> None:
    """Ctrl-C leaves what a kill -9 leaves: the store as it was but for staged blobs, which
    the re-run (from a pipe too) keeps instead of writing them again."""
    store = _big_store(tmp_path / "src")
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    target = tmp_path / "target"
    make_model(target, "registry.ollama.ai/library/keep/latest", [(TEMPLATE, b"keep")])
    before = tree(target)
    # stdin is a pipe we feed slowly, so the import is surely mid-blob when interrupted
    proc = subprocess.Popen(
        [sys.executable, "-m", "bundler", "import", "-", "--models", str(target), "--trust",
         str(keys.pub)], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL, env={**os.environ, **env})
    assert proc.stdin is not None and proc.stderr is not None
    data = bundle.read_bytes()
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(
            p.stat().st_size for p in (target / "blobs").glob(".bundle-*")) < 2 * 2**20:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read().decode()
    proc.stdin.close()
    proc.stderr.close()
    assert proc.wait() == 1, err
    assert "interrupted" in err and "Traceback" not in err
    staged = {k: v for k, v in tree(target).items() if k.startswith("blobs/.bundle-")}
    assert staged, err
    assert {k: v for k, v in tree(target).items() if k not in staged} == before
    check_consistent(target)
    r = run(["import", "-", "--models", str(target), "--trust", str(keys.pub)], input=data)
    assert r.exit_code == 0, r.output
    # from a pipe the staged bytes are kept up to the last whole chunk that matches
    found = re.search(r"kept (\d+) staged blobs? \(([^)]+)\) from an interrupted import",
                      r.output)
    assert found and 0 < int(found[1]) <= len(staged), r.output
    direct = tmp_path / "direct"
    assert run(["import", str(bundle), "--models", str(direct), "--trust", str(keys.pub)]
               ).exit_code == 0
    assert tree(target) == {**before, **tree(direct)}
    assert not list(target.rglob(".bundle-*"))


SLACK = 256 * 1024  # the head and the frames around the blobs read (see tests/test_seek.py)


def test_kill_9_during_an_import_from_split_parts_then_resume_reads_only_what_is_missing(
        tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = _big_store(tmp_path / "src")
    out = tmp_path / "parts" / "b.tar.zst"
    out.parent.mkdir()
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(out), "--split", "10MB"]).exit_code == 0
    first = Path(str(out) + ".001")
    direct = tmp_path / "direct"
    start = time.monotonic()
    subprocess.run(_import_cmd(first, direct, keys), check=True, env={**os.environ, **env})
    duration = time.monotonic() - start
    target = tmp_path / "target"
    for delay in (0.45, 0.75, 0.6):  # until one kill leaves some models done, some not
        proc = subprocess.Popen(_import_cmd(first, target, keys), env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check_consistent(target)
        have = {p.name for p in (target / "blobs").glob("sha256-*")} if target.exists() else set()
        if 0 < len(have) < len({p.name for p in (direct / "blobs").glob("sha256-*")}):
            break
    missing = sum(p.stat().st_size for p in (direct / "blobs").glob("sha256-*")
                  if not (target / "blobs" / p.name).exists())
    before = rchar()
    r = run(["import", str(first), "--models", str(target), "--trust", str(keys.pub), "--json"])
    read = rchar() - before
    assert r.exit_code == 0, r.output
    assert tree(target) == tree(direct)  # byte-identical to an uninterrupted import
    if json.loads(r.stdout)["readOnlyWhatWasNeeded"]:
        assert read < missing + SLACK, (read, missing)
    else:  # the kill came before any blob was committed: everything is read once
        assert missing == sum(p.stat().st_size for p in (direct / "blobs").glob("sha256-*"))


def test_a_blob_cut_off_by_kill_9_is_continued_not_restarted(
        tmp_path: Path, os_paths: bool, keys: Keys, env: dict[str, str]) -> None:
    """The re-run keeps what the killed import wrote of a 64 MB blob, reads from the bundle
    only the rest (its bytes read, less the partial file it hashes, counted by the kernel),
    and ends byte-identical to an uninterrupted import."""
    store = tmp_path / "src"
    size = 64_000_000
    make_model(store, "registry.ollama.ai/library/big/latest",
               [(MODEL, random.Random(3).randbytes(size))])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    direct = tmp_path / "direct"
    subprocess.run(_import_cmd(bundle, direct, keys), check=True, env={**os.environ, **env})
    target = tmp_path / "target"  # empty: without the partial blob, all would be read
    partial: list[Path] = []
    for _ in range(20):  # until a kill lands while the big blob is being written
        proc = subprocess.Popen([*_import_cmd(bundle, target, keys)],
                                env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            partial = list((target / "blobs").glob(".bundle-*.partial"))
            if partial and partial[0].stat().st_size > 8_000_000:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = [p for p in (target / "blobs").glob(".bundle-*.partial")
                   if 0 < p.stat().st_size < size]
        if partial:
            break
    assert partial, "no kill landed while the blob was being written"
    kept = partial[0].stat().st_size
    check_consistent(target)
    before = rchar()
    r = run(["import", str(bundle), "--models", str(target), "--trust", str(keys.pub),
             "--json"])
    read = rchar() - before - kept  # the partial file is read once, to hash it
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["readOnlyWhatWasNeeded"] is True
    assert read < size - kept + SLACK, (read, size, kept)
    for name, digest in tree(direct).items():
        assert tree(target)[name] == digest
    assert not list((target / "blobs").glob(".bundle-*"))


def _registry_consistent(base: str, namespace: str) -> int:
    """No tag in `namespace` whose blobs are missing: every model manifest and every cosign
    signature manifest names only blobs the registry has, with their sizes. Returns the
    number of tags."""
    status, body, _ = _get(f"{base}/v2/_catalog?n=1000")
    assert status == 200
    tags = 0
    for repo in json.loads(body)["repositories"]:
        if not repo.startswith(namespace + "/"):
            continue
        status, body, _ = _get(f"{base}/v2/{repo}/tags/list")
        for tag in (json.loads(body).get("tags") or []) if status == 200 else []:
            accept = OCI_MANIFEST if tag.endswith(".sig") else SCHEMA2
            status, raw, _ = _get(f"{base}/v2/{repo}/manifests/{tag}", accept)
            assert status == 200, (repo, tag)
            doc = json.loads(raw)
            for d in [doc["config"], *doc["layers"]]:
                req = urllib.request.Request(f"{base}/v2/{repo}/blobs/{d['digest']}",
                                             method="HEAD")
                with urllib.request.urlopen(req, timeout=30) as r:
                    assert r.status == 200 and int(r.headers["Content-Length"]) == d["size"]
            tags += 1
    return tags


def _kill_at_random_points(cmd: list[str], env: dict[str, str], duration: float,
                           check: Callable[[], object], seed: int) -> int:
    """Run `cmd` and SIGKILL it after a random part of `duration`, KILL_POINTS times (a run
    that finishes first does not count); `check` the invariants after each."""
    rng = random.Random(seed)
    killed = 0
    for _ in range(3 * KILL_POINTS):
        if killed == KILL_POINTS:
            break
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.9 * duration))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        check()
    return killed


def test_kill_9_during_a_push_never_leaves_a_tag_without_its_blobs(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = _big_store(tmp_path / "src")
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    push = [sys.executable, "-m", "bundler", "import", str(bundle), "--to-registry",
            registry.url + "/crash", "--trust", str(keys.pub), "-q"]
    start = time.monotonic()
    subprocess.run([*push[:6], registry.url + "/probe", *push[7:]], check=True,
                   env={**os.environ, **env})
    duration = time.monotonic() - start
    killed = _kill_at_random_points(push, env, duration,
                                    lambda: _registry_consistent(registry.url, "crash"), 2)
    assert killed >= KILL_POINTS // 2
    r = run(["import", str(bundle), "--to-registry", registry.url + "/crash", "--trust",
             str(keys.pub)])
    assert r.exit_code == 0, r.output
    assert _registry_consistent(registry.url, "crash") == 6  # 3 models, 3 signatures
    for i in range(3):
        raw = (store / f"manifests/registry.ollama.ai/library/m{i}/latest").read_bytes()
        assert _get(f"{registry.url}/v2/crash/m{i}/manifests/latest", SCHEMA2)[1] == raw


def test_kill_9_during_an_export_never_leaves_a_file_that_looks_complete(
        tmp_path: Path, os_paths: bool, keys: Keys, env: dict[str, str]) -> None:
    store = _big_store(tmp_path / "src")
    out = tmp_path / "out" / "b.tar.zst"
    out.parent.mkdir()
    export = [sys.executable, "-m", "bundler", "export", "--all", "--models", str(store),
              "--key", str(keys.key), "-o", str(out), "-q"]
    start = time.monotonic()
    subprocess.run(export, check=True, env={**os.environ, **env})
    duration = time.monotonic() - start
    out.unlink()

    def nothing_that_looks_complete() -> None:
        if out.exists():  # killed after the rename: then it is whole
            r = run(["verify", str(out), "--trust", str(keys.pub)])
            assert r.exit_code == 0, r.output
            out.unlink()
        for leftover in out.parent.iterdir():  # only hidden temporary names
            assert leftover.name.startswith(".b.tar.zst.") and leftover.name.endswith(
                ".partial"), leftover

    killed = _kill_at_random_points(export, env, duration, nothing_that_looks_complete, 3)
    assert killed >= KILL_POINTS // 2
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
             str(out)])
    assert r.exit_code == 0, r.output
    r = run(["verify", str(out), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.output
