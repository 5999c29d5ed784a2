"""The real Ollama (scripts/build-ollama's default release, 0.34.4; `ollama run` with 0.24.0)
against registries on loopback:
its own push and pull, ours against theirs, and `check-registry` against what really happens.

- The seed's path: `ollama cp` to `http://127.0.0.1:PORT/mitja/...`, `ollama push --insecure`,
  `ollama rm`, `ollama pull --insecure`, against Debian's docker-registry with filesystem
  storage (the pull fails), through scripts/nginx-ollama-registry.conf in front of it, and on
  scripts/registry-for-ollama's S3 mode (moto on 127.0.0.2 as the storage host); on each,
  `bundle check-registry` gives the verdict the real pull gives; the last step,
  `ollama run --insecure`, with the run-capable release (RUN_VERSION) and a tiny real model.
- Our push, their pull: `import --to-registry`, then each printed `ollama pull` command, run as
  printed, into an empty store: the bundle's model IDs and identical blobs.
- Their push, our pull: what `ollama push` wrote, `export --from-registry` exports and `import`
  imports; Ollama re-serialises the manifest it pushes (server/images.go PushModel:
  json.Marshal, no trailing newline; its own files end in one, manifest/manifest.go
  WriteManifest), so the model ID seen after a push changes: measured here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.common import REPO, Keys, run
from tests.support.ollama import OllamaServer, ollama_serve
from tests.support.servers import (
    SCHEMA2,
    OllamaRegistry,
    Registry,
    S3Server,
    _get,
    _kill_leftovers,
    free_port,
    run_moto,
)

SCRIPT = REPO / "scripts" / "registry-for-ollama"
NO_LOCATION = "http: no Location header in response"  # server/download.go, resp.Location()


def _sample_store(root: Path) -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-sample-store"), str(root),
                    "--size", "1MiB"], check=True, capture_output=True)
    return root


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(store: Path, name_path: str) -> bytes:
    return (store / "manifests" / name_path).read_bytes()


def _blobs(store: Path, manifest: bytes) -> list[str]:
    doc = json.loads(manifest)
    return [d["digest"] for d in [doc["config"], *doc["layers"]]]


def _served_manifest(base: str, repo: str, tag: str) -> bytes:
    status, body, _ = _get(f"{base}/v2/{repo}/manifests/{tag}", SCHEMA2)
    assert status == 200, body
    return body


def _ids(server: OllamaServer) -> dict[str, str]:
    """/api/tags: name -> digest (the model ID, sha256 of the manifest file)."""
    return {m["name"]: m["digest"] for m in server.tags()}


def _check(url: str, model: str) -> tuple[bool, str]:
    r = run(["check-registry", url, model])
    assert r.exit_code in (0, 5), r.output
    return r.exit_code == 0, r.output


@dataclass(frozen=True)
class S3Recipe:
    url: str
    data: Path
    s3: S3Server

    @property
    def netloc(self) -> str:
        return self.url.removeprefix("http://")


@pytest.fixture(scope="module")
def s3_recipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Recipe]:
    """scripts/registry-for-ollama in S3 mode, moto on 127.0.0.2 as the storage host (as in
    tests/system/test_registry_s3.py)."""
    root = tmp_path_factory.mktemp("s3-recipe")
    data = root / "data"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                              check=False, stdin=subprocess.DEVNULL, env=env)

    with run_moto(root / "moto") as s3:
        port = free_port()
        started = script("start", "--port", str(port), "--upstream-port", str(free_port()),
                         "--listen", "127.0.0.1", "--data", str(data),
                         "--s3-bucket", s3.bucket, "--s3-endpoint", s3.url)
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            yield S3Recipe(f"http://127.0.0.1:{port}", data, s3)
        finally:
            script("stop", "--data", str(data))
            _kill_leftovers(data)


def _seed_push_rm_pull(server: OllamaServer, store: Path, netloc: str, repo: str
                       ) -> tuple[subprocess.CompletedProcess[str], str]:
    """The seed's steps for hf.co/org/repo:Q4_K_M (blobs no other sample model shares):
    cp to http://NETLOC/mitja/REPO:latest, push --insecure, rm both names, pull --insecure.
    Returns the pull and the model's ID."""
    source = "hf.co/org/repo:Q4_K_M"
    manifest = _manifest(store, "hf.co/org/repo/Q4_K_M")
    name = f"http://{netloc}/mitja/{repo}:latest"
    assert "copied" in server.cli("cp", source, name).stdout
    # the scheme is dropped from the name: the manifest goes under the host:port
    assert _manifest(store, f"{netloc}/mitja/{repo}/latest") == manifest
    pushed = server.cli("push", "--insecure", name, check=False)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert _served_manifest(f"http://{netloc}", f"mitja/{repo}", "latest") == manifest
    server.cli("rm", name)
    server.cli("rm", source)
    # rm took the blobs with the last name that used them: the pull must fetch them all
    assert not any((store / "blobs" / d.replace(":", "-")).exists()
                   for d in _blobs(store, manifest))
    return server.cli("pull", "--insecure", name, check=False), _sha(manifest)


def test_seed_path_on_the_bare_registry_and_through_the_recipe(
        ollama_bin: Path, registry: Registry, ollama_registry: OllamaRegistry, tmp_path: Path,
        env: dict[str, str]) -> None:
    store = _sample_store(tmp_path / "store")
    with ollama_serve(ollama_bin, store, home=tmp_path / "home") as server:
        # bare docker-registry, filesystem storage: the push works, the pull does not
        pull, model_id = _seed_push_rm_pull(server, store, registry.netloc, "seed")
        assert pull.returncode == 1 and f"Error: {NO_LOCATION}" in pull.stderr, pull.stderr
        assert f"{registry.netloc}/mitja/seed:latest" not in _ids(server)
        ok, said = _check(registry.url, "mitja/seed:latest")
        assert not ok and NO_LOCATION in said
        # the same storage behind the recipe's nginx: both say yes, and the pull gets the model
        ok, said = _check(ollama_registry.url, "mitja/seed:latest")
        front = f"{ollama_registry.netloc}/mitja/seed:latest"
        pulled = server.cli("pull", "--insecure", front, check=False)
        assert ok and pulled.returncode == 0, said + pulled.stderr[-2000:]
        assert _ids(server)[front] == model_id
    # the whole path through the recipe, from a fresh store
    store = _sample_store(tmp_path / "store2")
    with ollama_serve(ollama_bin, store, home=tmp_path / "home2") as server:
        pull, model_id = _seed_push_rm_pull(server, store, ollama_registry.netloc, "front")
        ok, said = _check(ollama_registry.url, "mitja/front:latest")
        assert ok and pull.returncode == 0, said + pull.stderr[-2000:]
        assert _ids(server)[f"{ollama_registry.netloc}/mitja/front:latest"] == model_id


def test_seed_path_ends_in_ollama_run(ollama_run_bin: Path, tiny_gguf: Path,
                                     ollama_registry: OllamaRegistry, registry: Registry,
                                     tmp_path: Path, env: dict[str, str]) -> None:
    """The last step of the seed's path, `ollama run --insecure NAME`, with the run-capable
    release and a tiny real model (scripts/make-tiny-gguf): on the bare registry it fails as
    the pull does; through the recipe it pulls the model and generates."""
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_gguf}\nPARAMETER num_predict 8\n")
    with ollama_serve(ollama_run_bin, tmp_path / "models", home=tmp_path / "home") as server:
        server.cli("create", "tiny", "-f", str(tmp_path / "Modelfile"))
        for netloc in (registry.netloc, ollama_registry.netloc):
            server.cli("cp", "tiny", f"http://{netloc}/mitja/runner:latest")
        # pushed once, into the storage both serve
        pushed = server.cli("push", "--insecure", f"http://{registry.netloc}/mitja/runner:latest",
                            check=False)
        assert pushed.returncode == 0, pushed.stderr[-2000:]
        for netloc in (registry.netloc, ollama_registry.netloc):
            server.cli("rm", f"http://{netloc}/mitja/runner:latest")
        server.cli("rm", "tiny")
        assert not list((tmp_path / "models" / "blobs").glob("sha256-*"))
        bare = server.cli("run", "--insecure", f"http://{registry.netloc}/mitja/runner:latest",
                          "hello", check=False)
        assert bare.returncode == 1 and NO_LOCATION in bare.stderr, bare.stderr[-2000:]
        ran = server.cli("run", "--insecure",
                         f"http://{ollama_registry.netloc}/mitja/runner:latest", "hello",
                         check=False)
        assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr[-2000:]


def test_seed_path_on_the_recipes_s3_mode(ollama_bin: Path, s3_recipe: S3Recipe, tmp_path: Path,
                                          env: dict[str, str]) -> None:
    store = _sample_store(tmp_path / "store")
    with ollama_serve(ollama_bin, store, home=tmp_path / "home") as server:
        pull, model_id = _seed_push_rm_pull(server, store, s3_recipe.netloc, "s3")
        ok, said = _check(s3_recipe.url, "mitja/s3:latest")
        assert ok and pull.returncode == 0, said + pull.stderr[-2000:]
        assert _ids(server)[f"{s3_recipe.netloc}/mitja/s3:latest"] == model_id
        # the bytes came from the storage host through the registry's 307, byte for byte
        for digest in _blobs(store, _manifest(store, f"{s3_recipe.netloc}/mitja/s3/latest")):
            blob = (store / "blobs" / digest.replace(":", "-")).read_bytes()
            assert "sha256:" + _sha(blob) == digest


def _bundle(store: Path, tmp: Path, keys: Keys) -> Path:
    out = tmp / "models.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


def _same_blobs(pulled: Path, source: Path, manifest: bytes) -> None:
    for digest in _blobs(pulled, manifest):
        name = digest.replace(":", "-")
        assert (pulled / "blobs" / name).read_bytes() == (source / "blobs" / name).read_bytes()


def test_our_push_their_pull(ollama_bin: Path, ollama_registry: OllamaRegistry, tmp_path: Path,
                             keys: Keys, env: dict[str, str]) -> None:
    """import --to-registry into the recipe; every printed `ollama pull` command, run as
    printed, pulls the bundle's model (IDs and blobs identical), a mixed-case name included."""
    store = _sample_store(tmp_path / "store")
    mixed = store / "manifests/registry.ollama.ai/Alice/Foo/Q4_K_M"
    mixed.parent.mkdir(parents=True)
    shutil.copyfile(store / "manifests/hf.co/org/repo/Q4_K_M", mixed)
    bundle = _bundle(store, tmp_path, keys)
    push = run(["import", str(bundle), "--to-registry", f"{ollama_registry.url}/t5",
                "--trust", str(keys.pub)])
    assert push.exit_code == 0, push.output
    commands = [line.strip() for line in push.stdout.splitlines()
                if line.strip().startswith("ollama pull ")]
    sources = {  # the pushed name each command must name -> the source manifest
        f"{ollama_registry.netloc}/t5/tiny:latest": "registry.ollama.ai/library/tiny/latest",
        f"{ollama_registry.netloc}/t5/tiny:chat": "registry.ollama.ai/library/tiny/chat",
        f"{ollama_registry.netloc}/t5/repo:Q4_K_M": "hf.co/org/repo/Q4_K_M",
        f"{ollama_registry.netloc}/t5/model:v1": "localhost:5000/team/model/v1",
        f"{ollama_registry.netloc}/t5/foo:Q4_K_M": "registry.ollama.ai/Alice/Foo/Q4_K_M",
    }
    assert sorted(shlex.split(c)[-1] for c in commands) == sorted(sources), push.stdout
    pulled = tmp_path / "pulled"
    with ollama_serve(ollama_bin, pulled, home=tmp_path / "home") as server:
        for command in commands:
            argv = shlex.split(command)
            assert argv[:3] == ["ollama", "pull", "--insecure"]
            done = server.cli(*argv[1:], check=False)
            assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        # the README's optional rename to the usual name keeps the ID
        server.cli("cp", f"{ollama_registry.netloc}/t5/tiny:latest", "tiny:latest")
        ids = _ids(server)
    assert ids["tiny:latest"] == _sha(_manifest(store, "registry.ollama.ai/library/tiny/latest"))
    for name, path in sources.items():
        manifest = _manifest(store, path)
        assert ids[name] == _sha(manifest), name
        host, rest = name.split("/", 1)
        repo, tag = rest.rsplit(":", 1)
        assert _manifest(pulled, f"{host}/{repo}/{tag}") == manifest
        _same_blobs(pulled, store, manifest)
    # A colleague's store that already holds the model spelt `Foo`. Ollama first looks for the
    # whole name case-insensitively, then takes the spelling of the stored name with the
    # longest case-insensitive host -> namespace -> model prefix (server/routes.go
    # getExistingName): a copy under another host or namespace changes nothing, ...
    imported = tmp_path / "imported"
    r = run(["import", str(bundle), "--models", str(imported), "--trust", str(keys.pub),
             "--no-server-check"])
    assert r.exit_code == 0, r.output
    (foo,) = [c for c in commands if c.endswith("/foo:Q4_K_M")]
    # the push's note names the stored name that makes the printed command fail
    note = push.stdout.split(f"note for {shlex.split(foo)[-1]}: ")[1].splitlines()[0]
    assert f"{ollama_registry.netloc}/t5/Foo" in note and "any namespace" not in note, note
    with ollama_serve(ollama_bin, imported, home=tmp_path / "home2") as server:
        assert "Alice/Foo:Q4_K_M" in _ids(server)
        done = server.cli(*shlex.split(foo)[1:], check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        # ... but one under the registry's host and namespace makes it ask for `t5/Foo`
        server.cli("rm", shlex.split(foo)[-1])
        server.cli("cp", "Alice/Foo:Q4_K_M", f"{ollama_registry.netloc}/t5/Foo:old")
        refused = server.cli(*shlex.split(foo)[1:], check=False)
    assert refused.returncode == 1, refused.stderr
    assert "pull model manifest: file does not exist" in refused.stderr


def test_their_push_our_pull(ollama_bin: Path, ollama_registry: OllamaRegistry, tmp_path: Path,
                             keys: Keys, env: dict[str, str]) -> None:
    """A model Ollama made itself, pushed by Ollama, exported by us from the registry and
    imported: Ollama lists it. The ID after the push differs from the pusher's, and is the
    same for `ollama pull` and for our export and import."""
    store = _sample_store(tmp_path / "store")
    name = f"{ollama_registry.netloc}/their/made:latest"
    (tmp_path / "Modelfile").write_text("FROM hf.co/org/repo:Q4_K_M\nSYSTEM You are terse.\n")
    with ollama_serve(ollama_bin, store, home=tmp_path / "home") as server:
        server.cli("create", "made", "-f", str(tmp_path / "Modelfile"))
        server.cli("cp", "made", name)
        pushed = server.cli("push", "--insecure", name, check=False)
        assert pushed.returncode == 0, pushed.stderr[-2000:]
        pusher_id = _ids(server)[name]
    written = _manifest(store, "registry.ollama.ai/library/made/latest")
    served = _served_manifest(ollama_registry.url, "their/made", "latest")
    # what Ollama writes ends in a newline (json.Encoder); what it pushes does not
    # (json.Marshal of the same struct): the only difference
    assert pusher_id == _sha(written) and written.endswith(b"}\n")
    assert served + b"\n" == written
    registry_id = _sha(served)
    assert registry_id != pusher_id

    bundle = tmp_path / "their.tar.zst"
    r = run(["export", "--from-registry", name, "--plain-http", "--key", str(keys.key),
             "-o", str(bundle)])
    assert r.exit_code == 0, r.output
    ours = tmp_path / "ours"
    r = run(["import", str(bundle), "--models", str(ours), "--trust", str(keys.pub),
             "--no-server-check"])
    assert r.exit_code == 0, r.output
    theirs = tmp_path / "theirs"
    with ollama_serve(ollama_bin, ours, home=tmp_path / "home-ours") as server:
        assert _ids(server) == {name: registry_id}
        shown = server.cli("show", "--modelfile", name).stdout
        assert "SYSTEM You are terse." in shown
    with ollama_serve(ollama_bin, theirs, home=tmp_path / "home-theirs") as server:
        pulled = server.cli("pull", "--insecure", name, check=False)
        assert pulled.returncode == 0, pulled.stderr[-2000:]
        assert _ids(server) == {name: registry_id}
    assert _manifest(ours, f"{ollama_registry.netloc}/their/made/latest") == served
    assert _manifest(theirs, f"{ollama_registry.netloc}/their/made/latest") == served
    _same_blobs(ours, theirs, served)
