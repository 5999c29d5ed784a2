"""Ollama's start-up prune against our import, with the real servers (formats/ollama-store.md §4.1,
README `bundle import`): the server is restarted with the prune on while an import is paused at a
controlled point (tests/support/paused_import.py), and again after it.

- PRE_GRACE_VERSION (v0.20.7) prunes what is unnamed at once: the paused import stops (exit 1,
  "vanished"), nothing committed before is lost, and a re-run completes it.
- RUN_VERSION (v0.24.0) and DEFAULT_VERSION spare files younger than an hour: the import
  completes; files made older than that meanwhile (an import that takes hours) are pruned, and
  it stops as with the older server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.common import REPO, Keys
from tests.support.ollama import (
    DEFAULT_VERSION,
    PRE_GRACE_VERSION,
    RUN_VERSION,
    bundle,
    ollama_binary,
    ollama_serve,
)

GRACE = {PRE_GRACE_VERSION: False, RUN_VERSION: True, DEFAULT_VERSION: True}
VANISHED = {"staged": "vanished before it was renamed", "renamed": "vanished during the import"}


def listed(models: Path, version: str, home: Path) -> dict[str, str]:
    """Start the server with the prune on (it prunes before it answers, server/routes.go
    Serve), list, stop: name -> model ID."""
    with ollama_serve(ollama_binary(version), models, home=home, prune=True) as server:
        return {m["name"]: m["digest"] for m in server.tags()}


def blob_names(models: Path) -> set[str]:
    return {p.name for p in (models / "blobs").iterdir()}


def paused(point: str, bundle_path: Path, keys: Keys, models: Path,
           flags: Path) -> subprocess.Popen[str]:
    flags.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.paused_import", str(flags), point, "import",
         str(bundle_path), "--models", str(models), "--trust", str(keys.pub), "--json",
         "--no-server-check"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (flags / "paused").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the import did not pause at {point}: {proc.returncode}\n{out}\n{err}")
        time.sleep(0.01)
    return proc


def resume(proc: subprocess.Popen[str], flags: Path) -> tuple[int, str, str]:
    (flags / "go").touch()
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.fixture
def first(made_bundle: tuple[Path, Keys], tmp_path: Path) -> Path:
    """A store into which an earlier import committed `tiny:latest` (and so its weights)."""
    path, keys = made_bundle
    models = tmp_path / "models"
    bundle("import", str(path), "--models", str(models), "--trust", str(keys.pub), "--only",
           "tiny", "--no-server-check")
    return models


@pytest.mark.parametrize("point", ["staged", "renamed"])
@pytest.mark.parametrize("version", [PRE_GRACE_VERSION, RUN_VERSION, DEFAULT_VERSION])
def test_a_restart_during_an_import_loses_nothing_committed(
        made_bundle: tuple[Path, Keys], made_names: tuple[str, ...], first: Path,
        tmp_path: Path, version: str, point: str) -> None:
    path, keys = made_bundle
    before = listed(first, version, tmp_path / "h0")
    assert list(before) == ["tiny:latest"]
    kept = blob_names(first)
    proc = paused(point, path, keys, first, tmp_path / "flags")
    during = listed(first, version, tmp_path / "h1")  # the restart, prune on
    code, _, err = resume(proc, tmp_path / "flags")
    assert during == before  # committed models: still listed, same IDs
    assert kept <= blob_names(first)  # ... and not one of their blobs lost
    if GRACE[version]:
        assert code == 0, err
    else:
        assert code == 1 and VANISHED[point] in err and "run the import again" in err, err
        assert listed(first, version, tmp_path / "h2").items() >= before.items()
        r = bundle("import", str(path), "--models", str(first), "--trust", str(keys.pub),
                   "--json", "--no-server-check")
        assert json.loads(r.stdout)["blobsWritten"] > 0  # the work the prune undid, redone
    after = listed(first, version, tmp_path / "h3")  # a restart after the import
    assert sorted(after) == list(made_names)
    assert listed(first, version, tmp_path / "h4") == after
    assert not [n for n in blob_names(first) if not n.startswith("sha256-")]


@pytest.mark.parametrize("point", ["staged", "renamed"])
@pytest.mark.parametrize("version", [RUN_VERSION, DEFAULT_VERSION])
def test_the_grace_period_is_an_hour_of_mtime(
        made_bundle: tuple[Path, Keys], first: Path, tmp_path: Path, version: str,
        point: str) -> None:
    """What the importer's fresh mtimes are for: a file it wrote but has not named yet, made
    older than an hour while the import waits, is pruned by a server of any version."""
    path, keys = made_bundle
    kept = blob_names(first)
    proc = paused(point, path, keys, first, tmp_path / "flags")
    old = time.time() - 2 * 3600
    aged = blob_names(first) - kept
    assert aged  # a staged file, or renamed blobs no manifest names yet
    for name in aged:
        os.utime(first / "blobs" / name, (old, old))
    during = listed(first, version, tmp_path / "h1")
    assert not (blob_names(first) & aged)  # all pruned
    code, _, err = resume(proc, tmp_path / "flags")
    assert code == 1 and VANISHED[point] in err, err
    assert during == {"tiny:latest": during["tiny:latest"]} and kept <= blob_names(first)


@pytest.mark.parametrize("point", ["staged", "renamed"])
def test_a_killed_import_leaves_a_store_the_real_server_reads(
        made_bundle: tuple[Path, Keys], made_names: tuple[str, ...], first: Path,
        tmp_path: Path, point: str) -> None:
    """kill -9 at either point (README: "Ctrl-C or kill -9 at any moment leaves the store
    consistent"): the real server (DEFAULT_VERSION) lists what it listed before, and a
    re-run of the import completes."""
    path, keys = made_bundle
    before = listed(first, DEFAULT_VERSION, tmp_path / "h0")
    proc = paused(point, path, keys, first, tmp_path / "flags")
    proc.kill()
    proc.communicate()
    assert listed(first, DEFAULT_VERSION, tmp_path / "h1") == before
    bundle("import", str(path), "--models", str(first), "--trust", str(keys.pub),
           "--no-server-check")
    assert sorted(listed(first, DEFAULT_VERSION, tmp_path / "h2")) == list(made_names)
