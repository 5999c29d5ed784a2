"""`bundle check-registry` and the names a registry URL's namespace gives models, against the
real docker-registry and the nginx recipe (tests/support/servers.py): every model tag under the
namespace is probed and nothing else (cosign signature tags are not models), the verdict on
credentials is the one Ollama would meet (anonymous pulls; Bearer only from a token service on
the registry's own host:port, server/auth.go), and a namespaced mirror gives back exactly the
bundle that was pushed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.common import MODEL, REPO, TEMPLATE, Keys, cli, make_model, run, weights
from tests.support.ollama_pull import PullError, pull
from tests.support.servers import OllamaRegistry, Registry, run_nginx
from tests.support.tls_registry import PASSWORD, USER, SecureRegistry
from tests.support.token_registry import PASSWORD as TOKEN_PASSWORD
from tests.support.token_registry import USER as TOKEN_USER
from tests.support.token_registry import Issuer


def _export(store: Path, out: Path, keys: Keys, *names: str) -> None:
    args = [*names] if names else ["--all"]
    r = run(["export", *args, "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.stderr


def _push(bundle: Path, url: str, keys: Keys, *extra: str) -> Any:
    r = run(["import", str(bundle), "--to-registry", url, "--trust", str(keys.pub), "--json",
             *extra])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _tags(base: str, repo: str) -> list[str]:
    with urllib.request.urlopen(f"{base}/v2/{repo}/tags/list", timeout=30) as resp:
        return list(json.loads(resp.read())["tags"])


def _sample_store(root: Path) -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-sample-store"), str(root),
                    "--size", "1MiB"], check=True, capture_output=True)
    return root


def test_check_after_a_signed_push_probes_every_model_tag_of_the_namespace(
        ollama_registry: OllamaRegistry, tmp_path: Path, keys: Keys,
        env: dict[str, str]) -> None:
    """After a signed push through the recipe every model pulls, so check-registry (no MODEL)
    exits 0: it probes each model tag under the URL's namespace, never a cosign signature tag
    (sha256-<hex>.sig sorts before v1), and nothing in other namespaces."""
    store = _sample_store(tmp_path / "store")
    gone = make_model(store, "registry.ollama.ai/library/gone/latest",
                      [(MODEL, weights(1000, seed=3))])
    bundle = tmp_path / "sample.tar.zst"
    _export(store, bundle, keys)
    _push(bundle, ollama_registry.url + "/aaa-other", keys)  # another namespace, listed first
    doc = _push(bundle, ollama_registry.url + "/chk", keys)
    assert doc["cosignSignatures"] == 5
    assert any(t.endswith(".sig") for t in _tags(ollama_registry.url, "chk/model"))
    # a model deleted after the push leaves its signature: a repository with only a .sig tag
    digest = "sha256:" + hashlib.sha256(gone).hexdigest()
    req = urllib.request.Request(f"{ollama_registry.url}/v2/chk/gone/manifests/{digest}",
                                 method="DELETE")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 202
    assert [t.endswith(".sig") for t in _tags(ollama_registry.url, "chk/gone")] == [True]
    host = ollama_registry.netloc
    want = sorted(f"{host}/chk/{m}" for m in ("tiny:latest", "tiny:chat", "repo:Q4_K_M",
                                                "model:v1"))

    r = run(["check-registry", ollama_registry.url + "/chk", "--json"])
    assert r.exit_code == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert sorted(c["model"] for c in out["checks"]) == want
    assert all(c["ok"] for c in out["checks"])
    assert out["modelTags"] == 4 and out["probed"] == 4 and out["limit"] >= 4
    text = run(["check-registry", ollama_registry.url + "/chk"])
    assert text.exit_code == 0 and "probed 4 of 4 model tags" in text.stdout
    # and each of them does pull, Ollama's way
    for name in want:
        repo, tag = name.split("/", 1)[1].split(":")
        ns, model = repo.split("/")
        pull(ollama_registry.url, ns, model, tag, tmp_path / "pulled", min_part_size=100_000)


def test_check_bounds_the_probes_and_says_so(
        ollama_registry: OllamaRegistry, tmp_path: Path, keys: Keys, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bundler import pullcheck
    store = tmp_path / "store"
    for tag in ("a", "b", "c"):
        make_model(store, f"registry.ollama.ai/library/bounded/{tag}",
                   [(MODEL, weights(1000, seed=5)), (TEMPLATE, tag.encode())])
    bundle = tmp_path / "b.tar.zst"
    _export(store, bundle, keys)
    _push(bundle, ollama_registry.url + "/bnd", keys)
    monkeypatch.setattr(pullcheck, "MAX_PROBES", 2)
    r = run(["check-registry", ollama_registry.url + "/bnd", "--json"])
    assert r.exit_code == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    # the listing stops once it has more than the limit: how many more is not known
    assert (out["modelTags"], out["probed"], out["limit"], len(out["checks"])) == (None, 2, 2, 2)
    text = run(["check-registry", ollama_registry.url + "/bnd"])
    assert "probed 2 of more than 2 model tags (at most 2)" in text.stdout
    monkeypatch.setattr(pullcheck, "MAX_PROBES", 3)
    text = run(["check-registry", ollama_registry.url + "/bnd"])
    assert "probed 3 of 3 model tags under" in text.stdout


def _names_store(root: Path, seed: int) -> list[str]:
    """Models in a user namespace (mixed case), the library and another host."""
    make_model(root, "registry.ollama.ai/alice/Foo/Q4", [(MODEL, weights(120_000, seed=seed))])
    make_model(root, "registry.ollama.ai/library/tiny/latest",
               [(MODEL, weights(90_000, seed=seed + 1)), (TEMPLATE, b"{{ .Prompt }}")])
    make_model(root, "hf.co/Org/Repo/Q4_K_M", [(MODEL, weights(60_000, seed=seed + 2))])
    return ["alice/Foo:Q4", "tiny:latest", "hf.co/Org/Repo:Q4_K_M"]


@pytest.mark.parametrize("namespace", ["", "/team"])
def test_push_then_export_from_the_mirror_is_the_same_bundle(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, namespace: str) -> None:
    """README: push, export back with --from-registry --mirror (the same URL, namespace
    included), get the identical file."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    store = tmp_path / "store"
    # other content for each variant: the namespaced one must not find the other's models
    # under their own names
    names = _names_store(store, seed=20 if namespace else 10)
    a, b = tmp_path / "a.tar.zst", tmp_path / "b.tar.zst"
    _export(store, a, keys, *names)
    url = registry.url + (namespace + "-rt" if namespace else "")
    doc = _push(a, url, keys)
    ns = namespace.strip("/") + "-rt" if namespace else None
    pushed = sorted(m["pushedAs"].split("/", 1)[1] for m in doc["models"])
    assert pushed == sorted([f"{ns or 'alice'}/foo:Q4", f"{ns or 'library'}/tiny:latest",
                             f"{ns or 'org'}/repo:Q4_K_M"])
    r = run(["export", "--from-registry", *names, "--mirror", url, "--key", str(keys.key),
             "-o", str(b)])
    assert r.exit_code == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()


# --- credentials: what Ollama meets (server/auth.go) ------------------------------------------

WRITER, WRITER_PASSWORD = "writer", "pushes-only-7"


def _writes_need_auth(htpasswd: Path) -> Callable[[str], str]:
    """The recipe with Basic auth for everything but GET and HEAD (nginx limit_except)."""
    def edit(conf: str) -> str:
        rule = ("proxy_pass http://docker_registry;\n"
                f"            limit_except GET HEAD {{ auth_basic \"push\"; "
                f"auth_basic_user_file {htpasswd}; }}")
        assert conf.count("proxy_pass http://docker_registry;") == 2
        return conf.replace("proxy_pass http://docker_registry;", rule)
    return edit


def test_pushing_with_credentials_where_only_writes_need_them_pulls_anonymously(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str],
        world_dir: Path) -> None:
    """The push authenticates (Basic, for writes); pulls need nothing, so the check after the
    push and check-registry say pulls work, and an Ollama-style pull does work."""
    htpasswd = world_dir / "htpasswd"  # nginx's workers run as nobody
    htpasswd.write_text(f"{WRITER}:{{PLAIN}}{WRITER_PASSWORD}\n")
    htpasswd.chmod(0o644)
    store = tmp_path / "store"
    make_model(store, "registry.ollama.ai/library/guarded/latest",
               [(MODEL, weights(150_000, seed=31)), (TEMPLATE, b"{{ .Prompt }}")])
    bundle = tmp_path / "b.tar.zst"
    _export(store, bundle, keys)
    with run_nginx(tmp_path / "nginx", registry.netloc, edit=_writes_need_auth(htpasswd)) as ngx:
        home = {**env, "DOCKER_CONFIG": str(tmp_path / "docker")}
        base = ["import", str(bundle), "--to-registry", ngx.url + "/wo", "--trust",
                str(keys.pub), "--json"]
        p = cli(*base, env=home)
        assert p.returncode == 5 and b"401" in p.stderr  # writes do need credentials
        p = cli(*base, "--username", WRITER, "--password-stdin", env=home,
                stdin=WRITER_PASSWORD.encode() + b"\n")
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        assert doc["check"]["ok"] is True, doc["check"]
        assert "anonymous pull" in doc["check"]["findings"][0]
        p = cli("check-registry", ngx.url + "/wo", "--username", WRITER, "--password-stdin",
                env=home, stdin=WRITER_PASSWORD.encode() + b"\n")
        assert p.returncode == 0, p.stdout + p.stderr
        assert b"will work" in p.stdout
        pull(ngx.url, "wo", "guarded", "latest", tmp_path / "pulled", min_part_size=50_000)


def test_basic_auth_for_pulls_is_named_with_a_hint_that_helps(
        secure_registry: SecureRegistry, bundle_file: Path, keys: Keys, env: dict[str, str],
        tmp_path: Path) -> None:
    home = {**env, "DOCKER_CONFIG": str(tmp_path / "docker")}
    auth = ["--ca-cert", str(secure_registry.ca), "--username", USER, "--password-stdin"]
    p = cli("import", str(bundle_file), "--to-registry", secure_registry.url + "/basic",
            "--trust", str(keys.pub), *auth, env=home, stdin=PASSWORD.encode() + b"\n")
    assert p.returncode == 0, p.stderr
    p = cli("check-registry", secure_registry.url + "/basic", *auth, env=home,
            stdin=PASSWORD.encode() + b"\n")
    assert p.returncode == 5, p.stdout + p.stderr
    assert b"asks for Basic credentials" in p.stdout and b"never Basic" in p.stdout
    hint = p.stderr.split(b"hint:")[1]
    assert b"registry-for-ollama" not in hint  # the recipe adds Location headers, not this
    assert b"limit_except GET HEAD" in hint


def test_a_token_service_on_another_port_is_one_ollama_will_not_ask(
        token_registry: tuple[str, Issuer],
        bundle_file: Path, keys: Keys, env: dict[str, str], tmp_path: Path) -> None:
    url, _ = token_registry
    host = url.removeprefix("http://")
    home = {**env, "DOCKER_CONFIG": str(tmp_path / "docker")}
    p = cli("import", str(bundle_file), "--to-registry", url + "/tok2", "--trust",
            str(keys.pub), "--username", TOKEN_USER, "--password-stdin", env=home,
            stdin=TOKEN_PASSWORD.encode() + b"\n")
    assert p.returncode == 0, p.stderr
    p = cli("check-registry", url, "tok2/tiny:latest", env=home)
    assert p.returncode == 5, p.stdout + p.stderr
    assert f"does not match original host '{host}'".encode() in p.stdout, p.stdout
    assert b"limit_except GET HEAD" in p.stderr


# --- tensor models: x/transfer (x/transfer/download.go) ----------------------------------------

TENSOR = "application/vnd.ollama.image.tensor"


def test_tensor_models_are_judged_by_the_transfer_path(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    """A bare registry (no Location) serves tensor models, which x/transfer fetches with a
    plain 200, but not GGUF models; check-registry tells them apart by the layers."""
    store = tmp_path / "store"
    make_model(store, "registry.ollama.ai/library/mlx/latest",
               [(TENSOR, weights(40_000, seed=41)), (TENSOR, weights(30_000, seed=42))],
               config=b'{"model_format":"safetensors"}\n')
    make_model(store, "registry.ollama.ai/library/gguf/latest", [(MODEL, weights(40_000, seed=43))])
    bundle = tmp_path / "b.tar.zst"
    _export(store, bundle, keys)
    _push(bundle, registry.url + "/tns", keys)
    r = run(["check-registry", registry.url, "tns/mlx:latest", "tns/gguf:latest", "--json"])
    assert r.exit_code == 5, r.stdout + r.stderr
    report, _ = json.JSONDecoder().raw_decode(r.stdout)  # then the error document
    checks = {c["model"].split("/")[-1]: c for c in report["checks"]}
    assert (checks["mlx:latest"]["ok"], checks["mlx:latest"]["path"]) == (True, "tensor")
    assert (checks["gguf:latest"]["ok"], checks["gguf:latest"]["path"]) == (False, "gguf")
    assert "no Location header" in " ".join(checks["gguf:latest"]["findings"])
    # and the Ollama-style pull agrees on both
    result = pull(registry.url, "tns", "mlx", "latest", tmp_path / "pulled")
    assert result.path == "tensor" and len(result.downloaded) == 3
    with pytest.raises(PullError, match="no Location header"):
        pull(registry.url, "tns", "gguf", "latest", tmp_path / "pulled")


# --- case: Ollama asks for the store's spelling (server/routes.go getExistingName) ------------

def test_a_mixed_case_name_is_pulled_lowercase_and_the_other_spelling_is_explained(
        ollama_registry: OllamaRegistry, tmp_path: Path, keys: Keys,
        env: dict[str, str]) -> None:
    store = tmp_path / "store"
    make_model(store, "registry.ollama.ai/alice/Foo/Q4", [(MODEL, weights(50_000, seed=51))])
    bundle = tmp_path / "b.tar.zst"
    _export(store, bundle, keys)
    host = ollama_registry.netloc
    r = run(["import", str(bundle), "--to-registry", ollama_registry.url, "--trust",
             str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    assert f"ollama pull --insecure {host}/alice/foo:Q4" in r.stdout
    # what a colleague who already has alice/Foo:Q4 in the store meets: Ollama asks for
    # alice/Foo, which Distribution answers with 404
    note = r.stdout.split(f"note for {host}/alice/foo:Q4: ")[1]
    assert "'pull model manifest: file does not exist' (HTTP 404)" in note
    assert "alice/Foo:Q4" in note and "ollama rm" in note
    with pytest.raises(PullError, match="status 404"):
        pull(ollama_registry.url, "alice", "Foo", "Q4", tmp_path / "pulled")
    pull(ollama_registry.url, "alice", "foo", "Q4", tmp_path / "pulled", min_part_size=20_000)
    # check-registry probes the spelling given, as Ollama would send it
    r = run(["check-registry", ollama_registry.url, "alice/Foo:Q4"])
    assert r.exit_code == 5
    assert "fails with 'pull model manifest: file does not exist'" in r.stdout
    assert "alice/foo:Q4 is there" in r.stdout
    assert f"pull it as {host}/alice/foo:Q4" in r.stderr
    r = run(["check-registry", ollama_registry.url, "alice/foo:Q4"])
    assert r.exit_code == 0, r.stdout + r.stderr


def test_the_check_after_a_push_probes_every_pushed_model_and_says_so(
        ollama_registry: OllamaRegistry, registry: Registry, bundle_file: Path, keys: Keys,
        env: dict[str, str]) -> None:
    """The push probes each model it pushed (not only the first), up to check-registry's
    limit, and says how many of how many: through the recipe all pull; on the bare registry
    none does, and the verdict is the first failure."""
    doc = _push(bundle_file, ollama_registry.url + "/every", keys)
    pushed = sorted(m["pushedAs"] for m in doc["models"])
    assert len(pushed) == 3
    assert sorted(c["model"] for c in doc["checks"]) == pushed and doc["probed"] == 3
    assert all(c["ok"] for c in doc["checks"]) and doc["check"]["ok"] is True
    r = run(["import", str(bundle_file), "--to-registry", ollama_registry.url + "/every",
             "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("`ollama pull` will work from here") == 3, r.stdout
    assert "probed 3 of 3 pushed models" in r.stdout, r.stdout
    bare = _push(bundle_file, registry.url + "/every", keys)
    assert [c["ok"] for c in bare["checks"]] == [False] * 3 and bare["check"]["ok"] is False


def test_the_verdict_of_check_registry_is_a_whole_sentence(
        registry: Registry, bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    """The bare registry fails the check for GGUF models (no Location on blob GETs): the one
    error line says for how many of the models probed, and where the reasons are."""
    _push(bundle_file, registry.url + "/verdict", keys)
    r = run(["check-registry", registry.url + "/verdict"])
    assert r.exit_code == 5
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    want = ("error: `ollama pull` will not work from this registry for 3 of the 3 models "
            "probed; the findings above say why")
    assert errors == [want], r.stderr
    r = run(["check-registry", registry.url + "/verdict", "tiny:chat"])
    assert r.exit_code == 5
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    want = (f"error: `ollama pull` will not work from this registry for the model probed "
            f"({registry.netloc}/verdict/tiny:chat); the findings above say why")
    assert errors == [want], r.stderr
