"""The real `ollama pull --insecure` from `bundle serve` (formats/serve-v1.md), and `ollama run`
of what it pulled: the newest pinned release pulls every model of a store the real Ollama
wrote, byte for byte; RUN_VERSION runs one."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.common import Keys, make_keys
from tests.support.ollama import RUN_VERSION, bundle, ollama_binary, ollama_serve
from tests.support.readme import blocks, substitute
from tests.support.servers import free_port
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


def test_the_readme_recipe_as_printed(made_store: Path, ollama_bin: Path, tmp_path: Path) -> None:
    """README "Serve a bundle": its commands, with this test's paths, port and model name:
    a split bundle served from its first part, pulled and copied by the real Ollama."""
    (block,) = blocks("Serve a bundle")
    serve_line = block.split("\n# ")[0]  # the command, its continuation lines included
    client_lines = [line for line in block.splitlines() if line.startswith("ollama ")]
    port = free_port()
    keys = make_keys(tmp_path / "keys")
    shelf = tmp_path / "usb"
    shelf.mkdir()
    bundle("export", "--all", "--models", str(made_store), "--key", str(keys.key), "-o",
           str(shelf / "models-2026-11.tar.zst"), "--split", "64KiB")
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o700)
    shutil.copy(keys.pub, trusted / "release.pub")
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "bundle").write_text(f'#!/bin/sh\nexec {sys.executable} -m bundler "$@"\n')
    (shims / "ollama").write_text(f'#!/bin/sh\nexec {ollama_bin} "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    names = {"/media/usb/": f"{shelf}/", "0.0.0.0:5000": f"127.0.0.1:{port}",
             "/var/log/bundle-serve.log": str(tmp_path / "access.log")}
    log = tmp_path / "serve.log"
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}",
           "BUNDLE_TRUST_DIR": str(trusted)}
    with log.open("wb") as err:
        server = subprocess.Popen(["sh", "-c", "exec " + substitute(serve_line, names)],
                                  stdout=subprocess.PIPE, stderr=err, env=env)
    try:
        assert server.stdout is not None
        first = server.stdout.readline().decode()
        assert f"at http://127.0.0.1:{port}/" in first, log.read_text()
        printed = server.stdout.readline().decode().strip()
        assert printed.startswith(f"ollama pull --insecure 127.0.0.1:{port}/")
        with ollama_serve(ollama_bin, tmp_path / "pulled", home=tmp_path / "home") as ollama:
            script = substitute("\n".join(client_lines), {
                "server.example:5000/library/llama3.2:latest": f"127.0.0.1:{port}/library/tiny:latest",
                "llama3.2:latest": "copy:latest"})
            r = subprocess.run(["sh", "-ec", script], env={**ollama.env, "PATH": env["PATH"]},
                               capture_output=True, text=True, check=False)
            assert r.returncode == 0, r.stderr
            names_listed = {t["name"] for t in ollama.tags()}
        assert {f"127.0.0.1:{port}/library/tiny:latest", "copy:latest"} <= names_listed
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert server.returncode == 0
    assert (tmp_path / "access.log").read_text().count(" 206 ") >= 1
