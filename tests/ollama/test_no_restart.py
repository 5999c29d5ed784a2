"""An import into the store a running `ollama serve` uses needs no restart: the server lists,
shows and runs the models at once (README "A typical transfer": `ollama list  # no restart
needed`; formats/ollama-store.md §1.2: the list is read afresh from the manifests on every
request), and the import's own check of /api/tags says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.common import Keys
from tests.support.ollama import (
    DEFAULT_VERSION,
    RUN_VERSION,
    bundle,
    ollama_binary,
    ollama_serve,
)


@pytest.mark.parametrize("version", [RUN_VERSION, DEFAULT_VERSION])
def test_a_running_server_lists_shows_and_runs_what_was_imported(
        made_bundle: tuple[Path, Keys], made_names: tuple[str, ...], tmp_path: Path,
        version: str) -> None:
    """RUN_VERSION also runs the models; DEFAULT_VERSION (which cannot infer) lists and shows."""
    path, keys = made_bundle
    models = tmp_path / "models"
    with ollama_serve(ollama_binary(version), models, home=tmp_path / "home") as server:
        assert server.tags() == []
        pid = server.process.pid
        r = bundle("import", str(path), "--models", str(models), "--trust", str(keys.pub),
                   "--json", env=server.env)
        check = json.loads(r.stdout)["server"]
        assert check["url"] == server.url and check["problem"] is None
        assert sorted(check["listed"]) == list(made_names)
        assert check["missing"] == [] and check["otherManifest"] == []
        tags = {m["name"]: m["digest"] for m in server.tags()}
        assert sorted(tags) == list(made_names)
        for name in made_names:
            shown = server.api("/api/show", {"model": name})
            assert "tiny" in shown["system"] or name == "tiny:short", name
            assert shown["details"]["family"] == "llama", name
        assert "Test licence" in server.cli("show", "--license", "tiny").stdout
        if version == RUN_VERSION:
            answer = server.api("/api/generate", {"model": "tiny-lora", "prompt": "hello",
                                                  "stream": False})
            assert answer["done"] and answer["eval_count"] > 0, answer
        assert server.process.pid == pid and server.process.poll() is None  # never restarted
