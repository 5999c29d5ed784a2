"""Which store, against the real server (DEFAULT_VERSION): with no --models, `bundle import` writes
where the real `ollama serve` of the same environment reads (OLLAMA_MODELS trimmed of spaces and
quotes as Ollama's envconfig.Var trims it; else $HOME/.ollama/models), and the import's check of
the running server's /api/tags says what that server really lists (README "Which store";
formats/ollama-store.md §1 and §1.2)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.common import Keys
from tests.support.ollama import DEFAULT_VERSION, bundle, ollama_binary, ollama_serve


@pytest.mark.parametrize("spelling", ["  {}  ", "\t{}\n", " \"{}\" ", "'{}'"],
                         ids=["spaces", "tab-newline", "double-quotes", "single-quotes"])
def test_ollama_models_is_trimmed_as_ollama_trims_it(
        made_bundle: tuple[Path, Keys], made_names: tuple[str, ...], tmp_path: Path,
        spelling: str) -> None:
    path, keys = made_bundle
    models = tmp_path / "store"
    value = spelling.format(models)
    with ollama_serve(ollama_binary(DEFAULT_VERSION), models, home=tmp_path / "home",
                      env={"OLLAMA_MODELS": value}) as server:
        assert server.env["OLLAMA_MODELS"] == value
        assert server.tags() == []
        assert (models / "manifests").is_dir() and (models / "blobs").is_dir()  # Ollama made them
        r = bundle("import", str(path), "--trust", str(keys.pub), "--json", env=server.env)
        out = json.loads(r.stdout)
        assert sorted(out["server"]["listed"]) == list(made_names), out["server"]
        assert sorted(m["name"] for m in server.tags()) == list(made_names)
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == ["store"]


def test_the_default_store_is_under_home(
        made_bundle: tuple[Path, Keys], made_names: tuple[str, ...], tmp_path: Path) -> None:
    path, keys = made_bundle
    home = tmp_path / "home"
    default = home / ".ollama" / "models"
    with ollama_serve(ollama_binary(DEFAULT_VERSION), default, home=home,
                      env={"OLLAMA_MODELS": ""}) as server:
        assert "OLLAMA_MODELS" not in server.env
        assert server.tags() == []
        assert (default / "manifests").is_dir()  # where the real server put its store
        r = bundle("import", str(path), "--trust", str(keys.pub), "--json", env=server.env)
        assert f"store: {default}" in r.stderr
        assert sorted(json.loads(r.stdout)["server"]["listed"]) == list(made_names)
        assert sorted(m["name"] for m in server.tags()) == list(made_names)


def test_the_check_tells_a_server_reading_another_store(
        made_bundle: tuple[Path, Keys], made_names: tuple[str, ...], made_store: Path,
        tmp_path: Path) -> None:
    """The server reads store B, a copy of the bundle's models in which `tiny:latest` was then
    re-created (another manifest); the import goes to store A. The check reports the models B
    lists with the same manifest as listed, tiny:latest as listed with another manifest, and
    one only A has as missing; the import still succeeds, with a warning and a hint."""
    path, keys = made_bundle
    other = tmp_path / "B"
    shutil.copytree(made_store, other, symlinks=True)
    gone = other / "manifests" / "registry.ollama.ai" / "team" / "tiny" / "chat"
    gone.unlink()
    (tmp_path / "Modelfile").write_text("FROM tiny:short\nPARAMETER num_predict 9\n")
    with ollama_serve(ollama_binary(DEFAULT_VERSION), other, home=tmp_path / "home") as server:
        server.cli("create", "tiny", "-f", str(tmp_path / "Modelfile"))
        r = bundle("import", str(path), "--models", str(tmp_path / "A"), "--trust",
                   str(keys.pub), "--json", env=server.env)
        check = json.loads(r.stdout)["server"]
    assert check["otherManifest"] == ["tiny:latest"]
    assert check["missing"] == ["team/tiny:chat"]
    assert sorted(check["listed"]) == sorted(set(made_names) - {"tiny:latest", "team/tiny:chat"})
    assert "warning: the Ollama server at" in r.stderr
    assert "hint: import again with --models" in r.stderr


@pytest.mark.parametrize("form", ["{host}", "http://{host}", "localhost:{port}", "  {host}  ",
                                  "'http://{host}'", "http://{host}/"])
def test_ollama_host_is_read_as_the_real_client_reads_it(
        made_bundle: tuple[Path, Keys], made_names: tuple[str, ...], tmp_path: Path,
        form: str) -> None:
    """The import asks the server OLLAMA_HOST names, read as Ollama's envconfig.Host reads it
    (formats/ollama-store.md §1.2): every spelling with which the real `ollama list` reaches the
    server, the import's check reaches it too."""
    path, keys = made_bundle
    models = tmp_path / "models"
    with ollama_serve(ollama_binary(DEFAULT_VERSION), models, home=tmp_path / "home") as server:
        value = form.format(host=server.host, port=server.host.rsplit(":", 1)[1])
        env = {**server.env, "OLLAMA_HOST": value}
        real = subprocess.run([str(server.binary), "list"], env=env, capture_output=True,
                              text=True, check=False)
        assert real.returncode == 0, real.stderr  # the real client reaches it so
        r = bundle("import", str(path), "--models", str(models), "--trust", str(keys.pub),
                   "--json", env=env)
        check = json.loads(r.stdout)["server"]
        assert check["problem"] is None, check
        assert sorted(check["listed"]) == list(made_names)
