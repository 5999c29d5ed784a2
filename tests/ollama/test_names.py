"""Names, against the real Ollama (both pinned binaries; no inference): every name form the README
shows is accepted by `ollama cp` exactly as bundler.reference parses it, written at the manifest
path we compute, listed as we display it, matched case-insensitively as we match it
(getExistingName), with `:latest` the default; names Ollama refuses we refuse too
(formats/ollama-store.md §2; README `bundle export`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.reference import InvalidNameError, ModelName, pick
from bundler.store import Store, StoreLocation
from tests.support.common import make_keys
from tests.support.ollama import (
    DEFAULT_VERSION,
    RUN_VERSION,
    OllamaServer,
    bundle,
    ollama_binary,
    ollama_serve,
)

# The README's forms (`bundle export`, the registry section, Platforms), and the scheme form
# `ollama cp` takes for a registry push.
FORMS = ("llama3.2", "qwen2.5:7b", "tiny:chat", "myorg/model:v1", "hf.co/org/repo:Q4_K_M",
         "localhost:5000/team/model:v1", "alice/Foo:Q4", "http://localhost:5000/mitja/tiny:latest",
         "https://Registry.Example.com:8443/NS/Mixed-Case.Model:Tag_1", "_x/_y:_z",
         "a" * 80 + ":" + "t" * 80)
# Names both must refuse: empty parts, bad first characters, characters outside a part's
# alphabet, too long, too many parts.
INVALID = ("tiny:", ":tag", "ns/", "/tiny", "-tiny", "tiny:-x", "ti ny", "tiny:a/b",
           "a/b/c/d", "ns.x/model", "tiny@sha256", "é/model", "m" * 81, "tiny:" + "t" * 81,
           "host/-ns/model")


def manifests(store: Path) -> set[tuple[str, ...]]:
    root = store / "manifests"
    return {p.relative_to(root).parts for p in root.rglob("*") if p.is_file()}


@pytest.fixture(params=[DEFAULT_VERSION, RUN_VERSION])
def server(request: pytest.FixtureRequest, made_store: Path,
           tmp_path: Path) -> Iterator[OllamaServer]:
    """A server whose store holds only `tiny:latest` (no two spellings of one part, between
    which Ollama's getExistingName would choose by Go's map order)."""
    models = tmp_path / "models"
    shutil.copytree(made_store, models, symlinks=True)
    keep = models / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    for path in (models / "manifests").rglob("*"):
        if path.is_file() and path != keep:
            path.unlink()
    with ollama_serve(ollama_binary(request.param), models, home=tmp_path / "home") as s:
        yield s


def test_every_readme_name_form_lands_where_we_put_it(server: OllamaServer) -> None:
    store = Store(StoreLocation(server.models, "--models"))
    for form in FORMS:
        before = manifests(server.models)
        existing = store.names()
        server.cli("cp", "tiny", form)
        written = manifests(server.models) - before
        ours = ModelName.parse(form).canonical(existing)
        assert written == {ours.manifest_parts()}, form
        assert store.manifest_path(ours).is_file()
        listed = {m["name"] for m in server.tags()}
        assert ours.display_shortest() in listed, (form, listed)


def test_case_variants_find_the_stored_spelling(server: OllamaServer) -> None:
    """Every lookup ignores case, ours (pick) and Ollama's; `ollama cp` to a name equal to a
    stored one ignoring case rewrites that one in place, under the spelling ModelName.canonical
    gives (getExistingName, every release)."""
    store = Store(StoreLocation(server.models, "--models"))
    for name in ("hf.co/Org/Repo:Q4_K_M", "localhost:5000/Team/Other:V2"):
        server.cli("cp", "tiny", name)
    for variant in ("TINY", "tiny:LATEST", "HF.CO/org/REPO:q4_k_m", "LOCALHOST:5000/team/OTHER:v2"):
        shown = server.api("/api/show", {"model": variant})
        assert shown["details"]["family"] == "llama", variant
        (ours,) = pick([variant], store.names(), "the store")
        assert ours.folded() == ModelName.parse(variant).folded(), variant
        before = manifests(server.models)
        server.cli("cp", "tiny", variant)
        assert manifests(server.models) == before, variant  # rewritten in place
        assert ModelName.parse(variant).canonical(store.names()) == ours, variant


def test_latest_is_the_default_tag(server: OllamaServer) -> None:
    server.cli("cp", "tiny", "plain")
    server.cli("cp", "tiny", "someone/plain")
    assert ModelName.parse("plain").tag == "latest"
    assert ("registry.ollama.ai", "library", "plain", "latest") in manifests(server.models)
    assert ("registry.ollama.ai", "someone", "plain", "latest") in manifests(server.models)
    listed = {m["name"] for m in server.tags()}
    assert {"plain:latest", "someone/plain:latest"} <= listed


def test_names_ollama_refuses_we_refuse(server: OllamaServer) -> None:
    before = manifests(server.models)
    for name in INVALID:
        r = server.cli("cp", "tiny", name, check=False)
        assert r.returncode != 0, (name, r.stdout)
        with pytest.raises(InvalidNameError):
            ModelName.parse(name)
    assert manifests(server.models) == before


@pytest.mark.parametrize("writer", [DEFAULT_VERSION, RUN_VERSION])
def test_a_name_an_import_spells_is_found_by_every_release(
        made_store: Path, tmp_path: Path, writer: str) -> None:
    """A bundle's `Team/TINY:Other` imported into a store that holds `tiny:latest` is written as
    Team/tiny:Other, each part as the store spells it (the rule of Ollama up to 0.34.3;
    0.34.4's `cp` would keep TINY, a spelling 0.34.3's per-part lookup can miss): both pinned
    releases list it under that spelling and find it by any case."""
    source, target = tmp_path / "source", tmp_path / "target"
    for root in (source, target):
        shutil.copytree(made_store, root, symlinks=True)
        keep = root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
        for path in (root / "manifests").rglob("*"):
            if path.is_file() and path != keep:
                path.unlink()
    names = ("Team/TINY:Other", "TINY:Chat", "Other.Host:99/ns/TINY:x")
    with ollama_serve(ollama_binary(writer), source, home=tmp_path / "h0") as server:
        for name in names:
            server.cli("cp", "tiny", name)
    keys = make_keys(tmp_path / "keys")
    out = tmp_path / "b.tar.zst"
    bundle("export", *names, "--models", str(source), "--key", str(keys.key), "-o", str(out))
    bundle("import", str(out), "--models", str(target), "--trust", str(keys.pub),
           "--no-server-check")
    spelt = {"tiny:latest", "Team/tiny:Other", "tiny:Chat", "Other.Host:99/ns/tiny:x"}
    for version in (DEFAULT_VERSION, RUN_VERSION):
        with ollama_serve(ollama_binary(version), target, home=tmp_path / version) as server:
            listed = {m["name"] for m in server.tags()}
            assert listed == spelt, version
            for name in (*names, *listed, *(n.upper() for n in names)):
                shown = server.api("/api/show", {"model": name})
                assert shown["details"]["family"] == "llama", (version, name)
