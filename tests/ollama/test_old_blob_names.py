"""A blob the store has only under the pre-0.1.30 name blobs/sha256:<hex> is used by an import, not
copied; a running Ollama does not see it until a restart renames it (server/fixblobs.go), so the
import says to restart, and the real server (DEFAULT_VERSION) behaves so: the model is missing
from its list until then (README `bundle import`; formats/ollama-store.md §4 "Old blob
names")."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.common import Keys
from tests.support.ollama import DEFAULT_VERSION, bundle, ollama_binary, ollama_serve


def test_a_model_on_an_old_blob_name_is_listed_after_a_restart(
        made_bundle: tuple[Path, Keys], made_store: Path, tmp_path: Path) -> None:
    path, keys = made_bundle
    manifest = made_store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    config = json.loads(manifest.read_bytes())["config"]["digest"]
    models = tmp_path / "models"
    old = models / "blobs" / config  # sha256:<hex>
    binary = ollama_binary(DEFAULT_VERSION)
    with ollama_serve(binary, models, home=tmp_path / "home") as server:
        assert server.tags() == []
        # written while the server runs (its start renames old names, server/fixblobs.go)
        old.write_bytes((made_store / "blobs" / config.replace(":", "-")).read_bytes())
        # the import finds the old name and says to restart
        r = bundle("import", str(path), "--only", "tiny", "--trust", str(keys.pub), "--json",
                   env=server.env)
        out = json.loads(r.stdout)
        assert out["oldBlobNames"] == [config]
        assert "restart Ollama" in r.stderr
        assert out["server"]["missing"] == ["tiny:latest"]
        assert [m["name"] for m in server.tags()] == []  # the real server: not listed
        assert old.exists()
    with ollama_serve(binary, models, home=tmp_path / "home") as server:
        assert [m["name"] for m in server.tags()] == ["tiny:latest"]  # after a restart
        assert not old.exists() and (models / "blobs" / config.replace(":", "-")).is_file()
