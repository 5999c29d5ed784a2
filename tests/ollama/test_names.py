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

from bundler.reference import InvalidNameError, ModelName
from bundler.store import Store, StoreLocation
from tests.support.ollama import (
    DEFAULT_VERSION,
    RUN_VERSION,
    OllamaServer,
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


def test_case_variants_resolve_to_the_existing_spelling(server: OllamaServer) -> None:
    """`ollama cp` to a case variant of an existing name writes under the spelling
    ModelName.canonical gives (getExistingName of DEFAULT_VERSION; RUN_VERSION, older, spells
    some parts otherwise: formats/ollama-store.md §2); lookups ignore case in both."""
    store = Store(StoreLocation(server.models, "--models"))
    newest = server.version() == DEFAULT_VERSION.removeprefix("v")
    for variant in ("TINY:LATEST", "Team/TINY:Other", "LOCALHOST:5000/team/tiny:v2",
                    "hf.co/ORG/repo:q4_k_m", "HF.CO/org/REPO:New", "hf.co/org/repo:Q4_K_M"):
        existing = store.names()
        before = manifests(server.models)
        server.cli("cp", "tiny", variant)
        written = manifests(server.models) - before
        ours = ModelName.parse(variant).canonical(existing)
        if ours in existing:  # the same model under its existing spelling: rewritten in place
            assert written == set(), variant
        elif newest:
            assert written == {ours.manifest_parts()}, variant
        else:
            assert len(written) == 1 and ModelName(*next(iter(written))).folded() == ours.folded()
        assert store.manifest_path(ours).is_file() or not newest, variant
    for variant in ("TINY", "tiny:LATEST", "HF.CO/Org/Repo:Q4_K_M", "TEAM/tiny:OTHER",
                    "localhost:5000/TEAM/TINY:V2"):
        shown = server.api("/api/show", {"model": variant})
        assert shown["details"]["family"] == "llama", variant


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
