"""The real `ollama pull --insecure` from `bundle serve` (formats/serve-v1.md), and `ollama run`
of what it pulled: the newest pinned release pulls every model of a store the real Ollama
wrote, byte for byte; RUN_VERSION runs one."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.common import Keys
from tests.support.ollama import RUN_VERSION, ollama_binary, ollama_serve
from tests.support.serving import serving


def _blobs(store: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (store / "blobs").iterdir() if p.is_file()}


def test_ollama_pulls_every_model_and_runs_one(made_bundle: tuple[Path, Keys], made_store: Path,
                                               ollama_bin: Path, tmp_path: Path) -> None:
    bundle_path, keys = made_bundle
    pulled = tmp_path / "pulled"
    with serving(str(bundle_path), "--trust", str(keys.pub), tmp=tmp_path) as served:
        models = served.ready["models"]
        assert len(models) >= 5
        with ollama_serve(ollama_bin, pulled, home=tmp_path / "home") as ollama:
            for m in models:
                command = m["pull"].split()
                assert command[:3] == ["ollama", "pull", "--insecure"]
                ollama.cli(*command[1:])
            listed = {t["digest"].removeprefix("sha256:") for t in ollama.tags()}
        # every model, under the manifest digest (the model ID) the bundle carries
        assert listed == {m["digest"].removeprefix("sha256:") for m in models}
        tiny = next(m["pull"].split()[-1] for m in models
                    if m["repository"] == "library/tiny" and m["tag"] == "latest")
        # the blobs are the store's own, byte for byte
        source = _blobs(made_store)
        assert _blobs(pulled) and all(source[k] == v for k, v in _blobs(pulled).items())
        with ollama_serve(ollama_binary(RUN_VERSION), pulled, home=tmp_path / "run") as runner:
            answer = runner.cli("run", tiny, "hello there")
        assert answer.stdout.strip()
    assert '"GET /v2/library/tiny/manifests/latest HTTP/1.1" 200' in served.log()
