"""The real Ollama for tests: binaries built by scripts/build-ollama and `ollama serve` on loopback.

    from tests.support.ollama import RUN_VERSION, ollama_binary, ollama_serve

    binary = ollama_binary()                   # the newest pinned release (scripts/build-ollama)
    runner = ollama_binary(RUN_VERSION)        # v0.24.0: `ollama run` works (inference built in)
    with ollama_serve(binary, tmp_path / "models", home=tmp_path / "home") as server:
        server.cli("create", "tiny", "-f", str(modelfile))   # the same binary as the client
        server.tags()                          # GET /api/tags: [{"name": ..., "digest": ...}]
        server.url, server.host, server.env, server.log

Each server gets its own HOME (Ollama writes its key pair there on start, cmd/cmd.go
initializeKeypair), OLLAMA_MODELS, OLLAMA_HOST on a free loopback port, OLLAMA_NO_CLOUD=1 (no
fetch of ollama.com's recommendations, server/model_recommendations.go), OLLAMA_KEEP_ALIVE=0 and,
unless `prune=True`, OLLAMA_NOPRUNE=1 (no start-up prune, server/routes.go). It is ready when GET
/api/version answers; leaving the block stops it (SIGTERM, then SIGKILL to its process group, the
runner included), whatever the test did. tests/ollama/conftest.py has fixtures around these.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import HOST, free_port, stop_process

REPO = Path(__file__).resolve().parent.parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build-ollama"
RUN_VERSION = "v0.24.0"
"""The last release whose `go install` build carries the inference engine: `ollama run` works."""
PRE_GRACE_VERSION = "v0.20.7"
"""A release before v0.21: its start-up prune removes unreferenced blobs with no grace period."""
START_TIMEOUT = 60.0


def _default_version() -> str:
    """The version scripts/build-ollama builds when given none (its `version=` line)."""
    found = re.search(r"^version=(v[0-9.]+)", BUILD_SCRIPT.read_text(), re.MULTILINE)
    assert found, f"no version= line in {BUILD_SCRIPT}"
    return found.group(1)


DEFAULT_VERSION = _default_version()
"""The newest release the Go module proxy serves, pinned in scripts/build-ollama."""

_built: dict[str, Path] = {}


def ollama_binary(version: str | None = None) -> Path:
    """The path of Ollama `version` (default: the newest pinned release), built by
    scripts/build-ollama on first use (a cold build takes minutes; scripts/test builds before
    pytest starts) and remembered for the session. A failed build fails the test with its log."""
    version = version or DEFAULT_VERSION
    if version not in _built:
        r = subprocess.run([str(BUILD_SCRIPT), "--version", version], capture_output=True,
                           text=True, check=False)
        lines = r.stdout.strip().splitlines()
        if r.returncode != 0 or not lines or not Path(lines[-1]).is_file():
            pytest.fail(f"scripts/build-ollama --version {version} failed ({r.returncode}):\n"
                        f"{r.stderr[-6000:]}", pytrace=False)
        _built[version] = Path(lines[-1])
    return _built[version]


@dataclass(frozen=True)
class OllamaServer:
    """A running `ollama serve`."""

    binary: Path
    host: str
    """127.0.0.1:PORT, what OLLAMA_HOST says."""
    url: str
    """http://127.0.0.1:PORT"""
    models: Path
    home: Path
    env: dict[str, str]
    """The environment the server runs with; a client process (the CLI) needs the same."""
    log: Path
    """The server's stderr (and stdout), appended to across restarts."""
    process: subprocess.Popen[bytes]

    def cli(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Run the server's own binary as a client (`ollama create ...`) against this server;
        with `check`, a non-zero exit fails the test with its output and the server's log."""
        r = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                           env=self.env, input=input, timeout=timeout, check=False)
        if check and r.returncode != 0:
            pytest.fail(f"ollama {' '.join(args)} exited with {r.returncode}\n"
                        f"stdout: {r.stdout}\nstderr: {r.stderr}\n{self.log_tail()}",
                        pytrace=False)
        return r

    def api(self, path: str, body: Mapping[str, Any] | None = None,
            timeout: float = 600.0) -> Any:
        """GET (no body) or POST (JSON body) /api/...; the decoded JSON answer. A streaming
        answer (one JSON object per line) comes back as a list of them."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return lines[0] if len(lines) == 1 else lines

    def tags(self) -> list[dict[str, Any]]:
        """GET /api/tags: the models the server lists, each {"name", "model", "digest", "size",
        "modified_at", "details"}."""
        models: list[dict[str, Any]] = self.api("/api/tags")["models"]
        return models

    def version(self) -> str:
        """GET /api/version."""
        return str(self.api("/api/version")["version"])

    def log_tail(self, limit: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"--- {self.log} ---\n{text[-limit:]}"


def server_env(models: Path | str, home: Path, port: int, *, prune: bool = False,
               env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `ollama serve` and its clients: this process's without any OLLAMA_*
    variable, then the harness's, then `env` (an empty value unsets a variable: OLLAMA_MODELS=""
    leaves Ollama its default, $HOME/.ollama/models)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    out.update({"HOME": str(home), "OLLAMA_MODELS": str(models),
                "OLLAMA_HOST": f"{HOST}:{port}", "OLLAMA_NO_CLOUD": "1",
                "OLLAMA_KEEP_ALIVE": "0"})
    if not prune:
        out["OLLAMA_NOPRUNE"] = "1"
    out.update(env or {})
    return {k: v for k, v in out.items() if v != ""}


@contextlib.contextmanager
def ollama_serve(binary: Path, models: Path, *, home: Path, prune: bool = False,
                 env: dict[str, str] | None = None) -> Iterator[OllamaServer]:
    """Start `binary serve` on a free loopback port with store `models` and HOME `home` (both
    made if missing; reuse them to restart on the same store), wait until it answers, yield it,
    stop it."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = server_env(models, home, port, prune=prune, env=env)
    log = home / "ollama-serve.log"
    argv = [str(binary), "serve"]
    # setpriv (util-linux) has the kernel kill the server if pytest itself dies.
    setpriv = shutil.which("setpriv")
    if setpriv:
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    server = OllamaServer(binary=binary, host=f"{HOST}:{port}", url=f"http://{HOST}:{port}",
                          models=models, home=home, env=full_env, log=log, process=proc)
    try:
        _wait_ready(server)
        yield server
    finally:
        stop_process(proc)


def _wait_ready(server: OllamaServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            server.version()
            return
        time.sleep(0.05)
    code = server.process.poll()
    state = f"exited with {code}" if code is not None else f"not ready after {START_TIMEOUT:.0f} s"
    pytest.fail(f"ollama serve on {server.host} {state}\n{server.log_tail()}", pytrace=False)


# ---------------------------------------------------------------------------------------------
# A store the real Ollama writes, and our CLI as a real process

MODELFILE = '''FROM ./tiny.gguf
TEMPLATE """{{ if .System }}<s>{{ .System }}</s>{{ end }}{{ .Prompt }}"""
SYSTEM """You are tiny, and you know nothing."""
PARAMETER temperature 0
PARAMETER seed 7
PARAMETER num_predict 6
PARAMETER num_ctx 256
PARAMETER stop "</s>"
LICENSE """Test licence: random weights, no use."""
MESSAGE user hello
MESSAGE assistant hi
'''
COPIES = ("team/tiny:chat", "localhost:5000/Team/Tiny:V1", "hf.co/Org/Repo:Q4_K_M",
          "Registry.Example.com:8443/NS/Mixed-Case.Model:Tag_1")
"""Names `ollama cp` gives `tiny`, in this order: a namespace, hosts with ports, mixed case, the
README's hf.co form with a quantization tag. Ollama stores the second as
localhost:5000/team/tiny:V1: its getExistingName spells each part as an existing name does."""


@dataclass(frozen=True)
class MadeStore:
    models: Path
    names: tuple[str, ...]
    """What the real /api/tags calls them (DisplayShortest), sorted."""


def make_real_store(root: Path, tiny_gguf: Path, version: str = RUN_VERSION) -> MadeStore:
    """A store (root/models) written by the real `ollama create` and `ollama cp` of `version`
    (the create of both pinned releases keeps a GGUF's bytes): `tiny` from the tiny GGUF with
    TEMPLATE, SYSTEM, PARAMETER, LICENSE and MESSAGE; `tiny-lora`, FROM tiny with a LoRA
    ADAPTER (scripts/make-tiny-gguf --adapter), where the release takes one (v0.24.0 does;
    v0.34.4 answers "LoRA adapters are no longer supported"); `tiny:short`, FROM tiny with
    another parameter (it shares tiny's blobs); and COPIES of tiny."""
    work = root / "work"
    work.mkdir(parents=True)
    shutil.copy(tiny_gguf, work / "tiny.gguf")
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-tiny-gguf"),
                    str(work / "adapter.gguf"), "--adapter"], check=True, capture_output=True)
    (work / "Modelfile").write_text(MODELFILE)
    (work / "Modelfile.lora").write_text("FROM tiny\nADAPTER ./adapter.gguf\n"
                                         'SYSTEM """You are tiny, with an adapter."""\n')
    (work / "Modelfile.short").write_text("FROM tiny\nPARAMETER num_predict 3\n")
    with ollama_serve(ollama_binary(version), root / "models", home=root / "home") as s:
        s.cli("create", "tiny", "-f", str(work / "Modelfile"))
        lora = s.cli("create", "tiny-lora", "-f", str(work / "Modelfile.lora"), check=False)
        if lora.returncode != 0:
            assert "LoRA adapters are no longer supported" in lora.stderr, lora.stderr
        s.cli("create", "tiny:short", "-f", str(work / "Modelfile.short"))
        for name in COPIES:
            s.cli("cp", "tiny", name)
        names = tuple(sorted(m["name"] for m in s.tags()))
    return MadeStore(root / "models", names)


def bundle(*args: str, env: Mapping[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Our CLI as a real process (python -m bundler), in `env` (default: this process's); with
    `check`, a non-zero exit fails the test with its output."""
    r = subprocess.run([sys.executable, "-m", "bundler", *args], capture_output=True, text=True,
                       env=dict(env) if env is not None else None, check=False, cwd=REPO)
    if check and r.returncode != 0:
        pytest.fail(f"bundle {' '.join(args)} exited with {r.returncode}\n{r.stdout}\n{r.stderr}",
                    pytrace=False)
    return r
