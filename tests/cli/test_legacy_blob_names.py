"""Blobs stored under the pre-0.1.30 name blobs/sha256:<hex> (formats/ollama-store.md §3, §4):
import uses them, and says that a running Ollama sees them only after a restart."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.common import Keys, run, small_store


def test_import_relying_on_an_old_blob_name_says_restart(tmp_path: Path, bundle_file: Path,
                                                         keys: Keys, env: dict[str, str]) -> None:
    source = small_store(tmp_path / "source")
    target = tmp_path / "target"
    (target / "blobs").mkdir(parents=True)
    weights = max((source / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    old = target / "blobs" / weights.name.replace("sha256-", "sha256:")
    old.write_bytes(weights.read_bytes())
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub),
             "--json"])
    assert r.exit_code == 0, r.stderr
    assert old.exists() and not (target / "blobs" / weights.name).exists()  # used, not copied
    doc = json.loads(r.stdout)
    assert doc["oldBlobNames"] == ["sha256:" + weights.name.removeprefix("sha256-")]
    assert "restart Ollama" in r.stderr and "blobs/sha256:<hex>" in r.stderr


def test_no_restart_note_without_old_names(tmp_path: Path, bundle_file: Path, keys: Keys,
                                           env: dict[str, str]) -> None:
    r = run(["import", str(bundle_file), "--models", str(tmp_path / "t"), "--trust",
             str(keys.pub), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["oldBlobNames"] == []
    assert "warning:" not in r.stderr
