"""Concurrency (formats/threat-model.md T23): two imports into one store at once take turns on the advisory
lock (outside manifests/ and blobs/); readers of a store being imported into never see a
model without its blobs; an import and a push from the same bundle at once both succeed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from tests.support.common import (
    MODEL,
    PARAMS,
    TEMPLATE,
    Keys,
    check_consistent,
    make_model,
    run,
    tree,
    weights,
)
from tests.support.servers import Registry, _assert_served

WAITING = "waiting for another import"


def _source(root: Path, size: int = 2_000_000) -> Path:
    """Three models, one weights blob shared by two of them."""
    shared = weights(size, seed=30)
    make_model(root, "registry.ollama.ai/library/c1/latest",
               [(MODEL, shared), (TEMPLATE, b"{{ .C1 }}")])
    make_model(root, "registry.ollama.ai/library/c1/chat",
               [(MODEL, shared), (TEMPLATE, b"{{ .System }} {{ .C1 }}"), (PARAMS, b"{}\n")])
    make_model(root, "registry.ollama.ai/team/c2/latest", [(MODEL, weights(size, seed=31))])
    return root


def _export(store: Path, out: Path, keys: Keys, *names: str) -> Path:
    which = list(names) or ["--all"]
    r = run(["export", *which, "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


def _import_argv(bundle: str, store: Path, keys: Keys, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bundler", "import", bundle, "--models", str(store),
            "--trust", str(keys.pub), *extra]


def _feed(proc: subprocess.Popen[bytes], data: bytes, pieces: int = 1,
          pause: float = 0.0, gate: tuple[int, threading.Event] | None = None,
          ) -> threading.Thread:
    """Write `data` to proc's stdin in a thread (in `pieces`, `pause` apart), then close it;
    with `gate` (n, event), the first n bytes at once, the rest once the event is set."""
    def write() -> None:
        assert proc.stdin is not None
        step = -(-len(data) // pieces)
        start = 0
        try:
            if gate is not None:
                start, event = gate
                proc.stdin.write(data[:start])
                proc.stdin.flush()
                event.wait(60)
            for i in range(start, len(data), step):
                proc.stdin.write(data[i:i + step])
                proc.stdin.flush()
                time.sleep(pause)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_two_imports_into_one_store_take_turns(tmp_path: Path, os_paths: bool, keys: Keys,
                                               env: dict[str, str]) -> None:
    """Both start at once, reading the bundle from stdin, and get its first half (the head
    and some blobs): the first to trust its head takes the lock (formats/ollama-store.md §4),
    the second says it waits for the first. Then both get the rest: both succeed, the second
    finds everything there, and the store is byte-identical to one import's."""
    src = _source(tmp_path / "src")
    bundle = _export(src, tmp_path / "b.tar.zst", keys)
    target = tmp_path / "target"
    logs = [tmp_path / f"err{i}.txt" for i in range(2)]
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    files: list[IO[bytes]] = []
    procs = []
    for err, out in zip(logs, outs, strict=True):
        files += [err.open("wb"), out.open("wb")]
        procs.append(subprocess.Popen(_import_argv("-", target, keys, "--json"),
                                      stdin=subprocess.PIPE, stdout=files[-1],
                                      stderr=files[-2], env={**os.environ, **env}))
    data = bundle.read_bytes()
    rest = threading.Event()
    feeders = [_feed(p, data, gate=(len(data) // 2, rest)) for p in procs]
    try:
        deadline = time.monotonic() + 30
        while not any(WAITING in p.read_text() for p in logs):
            assert time.monotonic() < deadline, [p.read_text() for p in logs]
            assert all(p.poll() is None for p in procs), [p.read_text() for p in logs]
            time.sleep(0.02)
        rest.set()
        codes = [p.wait(timeout=60) for p in procs]
        for t in feeders:
            t.join(10)
    finally:
        rest.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()
    errs = [p.read_text() for p in logs]
    assert codes == [0, 0], errs
    assert sum(WAITING in e for e in errs) == 1, errs
    docs = [json.loads(p.read_bytes()) for p in outs]
    first, second = sorted(docs, key=lambda d: d["blobsWritten"], reverse=True)
    assert {m["action"] for m in first["models"]} == {"new"}
    assert {m["action"] for m in second["models"]} == {"unchanged"}
    assert second["blobsWritten"] == 0
    check_consistent(target)
    assert not list(target.rglob(".bundle-*"))
    direct = tmp_path / "direct"
    assert run(["import", str(bundle), "--models", str(direct), "--trust",
                str(keys.pub)]).exit_code == 0
    assert tree(target) == tree(direct) == tree(src)


def test_two_imports_of_different_bundles_at_once(tmp_path: Path, keys: Keys,
                                                  env: dict[str, str]) -> None:
    """Two bundles sharing a weights blob, imported from files into one empty store at the
    same moment: both succeed and the store holds both, as if imported one after the
    other."""
    src = _source(tmp_path / "src", size=6_000_000)
    a = _export(src, tmp_path / "a.tar.zst", keys, "c1:latest")
    b = _export(src, tmp_path / "b.tar.zst", keys, "c1:chat", "team/c2")
    target = tmp_path / "target"
    procs = [subprocess.Popen(_import_argv(str(x), target, keys), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env={**os.environ, **env})
             for x in (a, b)]
    results = [p.communicate(timeout=60) for p in procs]
    errs = [e.decode() for _, e in results]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert all("Traceback" not in e for e in errs)
    check_consistent(target)
    assert not list(target.rglob(".bundle-*"))
    assert tree(target) == tree(src)


LISTER = r"""
import json, sys
from pathlib import Path
from click.testing import CliRunner
from bundler.cli import main

store, stop, log = sys.argv[1:4]
runner = CliRunner()
with open(log, "w") as out:
    while True:
        last = Path(stop).exists()
        for args in (["inventory", "--models", store, "-o", "-", "-q"],
                     ["export", "--all", "--models", store, "--unsigned", "-o", "/dev/null",
                      "-q"]):
            r = runner.invoke(main, args)
            exc = r.exception
            out.write(json.dumps({
                "cmd": args[0], "code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr,
                "exception": None if exc is None or isinstance(exc, SystemExit) else repr(exc),
            }) + "\n")
            out.flush()
        if last:
            break
"""


def test_a_store_listed_while_it_is_imported_into(tmp_path: Path, keys: Keys,
                                                   env: dict[str, str]) -> None:
    """Another process lists the store over and over (inventory, and export --all, which
    reads every blob of every model it sees) while an import, fed slowly from a pipe, writes
    into it: every listing succeeds, never shows a model whose blobs are missing, and the
    models only ever appear, all at the end."""
    src = _source(tmp_path / "src")
    bundle = _export(src, tmp_path / "b.tar.zst", keys)
    target = tmp_path / "target"
    make_model(target, "registry.ollama.ai/library/keep/latest",
               [(MODEL, weights(100_000, seed=32)), (TEMPLATE, b"keep")])
    expected = tree(src) | tree(target)
    stop, log = tmp_path / "stop", tmp_path / "listings.jsonl"
    import_log = tmp_path / "import.err"
    lister = subprocess.Popen([sys.executable, "-c", LISTER, str(target), str(stop), str(log)],
                              env={**os.environ, **env}, stderr=subprocess.PIPE)
    importer = None
    try:
        log.touch()
        deadline = time.monotonic() + 30
        while len(log.read_text().splitlines()) < 2:  # the lister is under way
            assert time.monotonic() < deadline and lister.poll() is None, "the lister died"
            time.sleep(0.02)
        with import_log.open("wb") as err:
            importer = subprocess.Popen(_import_argv("-", target, keys, "-q"),
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=err, env={**os.environ, **env})
        feeder = _feed(importer, bundle.read_bytes(), pieces=20, pause=0.1)
        importer.wait(timeout=60)
        feeder.join(10)
        stop.touch()
        _, lister_err = lister.communicate(timeout=60)
    finally:
        for p in (lister, importer):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert importer.returncode == 0, import_log.read_text()
    assert lister.returncode == 0, lister_err.decode()
    check_consistent(target)
    assert tree(target) == expected

    needs = _blobs_by_manifest(target)
    records: list[dict[str, Any]] = [json.loads(x) for x in log.read_text().splitlines()]
    inventories = [r for r in records if r["cmd"] == "inventory"]
    assert len(inventories) >= 5, len(inventories)  # several listings overlapped the import
    counts = []
    for r in records:
        assert r["exception"] is None and r["code"] == 0, r
        assert "Traceback" not in r["stderr"], r
        if r["cmd"] != "inventory":
            continue
        inv = json.loads(r["stdout"])
        present = {b["digest"] for b in inv["blobs"]}
        for m in inv["models"]:
            assert m["digest"] in needs, m  # a manifest exactly as the bundle carries it
            assert needs[m["digest"]] <= present, (m, "listed without all of its blobs")
        counts.append(len(inv["models"]))
    assert counts == sorted(counts), counts
    assert counts[0] == 1 and counts[-1] == 4, counts


def _blobs_by_manifest(store: Path) -> dict[str, set[str]]:
    out = {}
    for path in (store / "manifests").glob("*/*/*/*"):
        raw = path.read_bytes()
        doc = json.loads(raw)
        out["sha256:" + hashlib.sha256(raw).hexdigest()] = {
            d["digest"] for d in [doc["config"], *doc["layers"]]}
    return out


def test_import_and_push_from_one_bundle_at_once(registry: Registry, tmp_path: Path,
                                                 keys: Keys, env: dict[str, str]) -> None:
    src = _source(tmp_path / "src", size=4_000_000)
    bundle = _export(src, tmp_path / "b.tar.zst", keys)
    target = tmp_path / "target"
    push_argv = [sys.executable, "-m", "bundler", "import", str(bundle), "--to-registry",
                 f"{registry.url}/conc", "--trust", str(keys.pub), "-q"]
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, **env})
             for argv in (_import_argv(str(bundle), target, keys, "-q"), push_argv)]
    results = [p.communicate(timeout=60) for p in procs]
    errs = [e.decode() for _, e in results]
    assert [p.returncode for p in procs] == [0, 0], errs
    check_consistent(target)
    assert tree(target) == tree(src)
    for path, repo, tag in [("registry.ollama.ai/library/c1/latest", "conc/c1", "latest"),
                            ("registry.ollama.ai/library/c1/chat", "conc/c1", "chat"),
                            ("registry.ollama.ai/team/c2/latest", "conc/c2", "latest")]:
        _assert_served(registry.url, repo, tag, (src / "manifests" / path).read_bytes())
