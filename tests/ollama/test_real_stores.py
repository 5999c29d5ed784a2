"""Stores the real Ollama wrote, carried by a bundle into an empty store, read back by the real
Ollama: the same names, model IDs, sizes and details in /api/tags, the same `ollama show`
text, and `ollama run` answers from the copy as from the original, with no server restart
(README "A typical transfer", formats/ollama-store.md §1.2 and §4).

Binaries: the models are made by each pinned release (RUN_VERSION, v0.24.0, and DEFAULT_VERSION:
both `create FROM file.gguf` keep the file's bytes); listing and `show` are checked with both;
`run` only with RUN_VERSION, the last release whose Go build can infer.
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from bundler.reference import ModelName
from bundler.store import Store, StoreLocation
from tests.support.common import make_keys
from tests.support.ollama import (
    DEFAULT_VERSION,
    RUN_VERSION,
    MadeStore,
    OllamaServer,
    bundle,
    make_real_store,
    ollama_binary,
    ollama_serve,
)


def by_name(tags: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in tags}


def modified(entry: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(entry["modified_at"]).timestamp()


def modelfile(server: OllamaServer, name: str) -> tuple[list[str], list[str]]:
    """`ollama show --modelfile`, the store's own path (in its FROM lines) made neutral: (its
    lines but PARAMETER, in order; PARAMETER lines sorted, which Ollama writes in Go's map
    order)."""
    text = server.cli("show", "--modelfile", name).stdout.replace(str(server.models), "STORE")
    lines = text.splitlines()
    return ([x for x in lines if not x.startswith("PARAMETER ")],
            sorted(x for x in lines if x.startswith("PARAMETER ")))


@pytest.fixture(scope="module", params=[RUN_VERSION, DEFAULT_VERSION])
def creator(request: pytest.FixtureRequest, tiny_gguf: Path,
            tmp_path_factory: pytest.TempPathFactory) -> MadeStore:
    """make_real_store's store, written by each pinned release's `create` and `cp`."""
    return make_real_store(tmp_path_factory.mktemp("made"), tiny_gguf, request.param)


@pytest.fixture
def carried(creator: MadeStore, tmp_path: Path) -> tuple[Path, Path, float]:
    """The made store exported to a signed bundle and imported into an empty store: (original
    copy, imported store, the time the import started)."""
    original = tmp_path / "original"
    shutil.copytree(creator.models, original, symlinks=True)
    keys = make_keys(tmp_path / "keys")
    out = tmp_path / "models.tar.zst"
    bundle("export", "--all", "--models", str(original), "--key", str(keys.key), "-o", str(out))
    started = time.time()
    bundle("import", str(out), "--models", str(tmp_path / "imported"), "--trust", str(keys.pub),
           "--no-server-check")
    return original, tmp_path / "imported", started


def the_real_list(models: Path, version: str, home: Path) -> tuple[list[dict[str, Any]],
                                                                    dict[str, Any]]:
    with ollama_serve(ollama_binary(version), models, home=home) as server:
        tags = server.tags()
        shown = {m["name"]: modelfile(server, m["name"]) for m in tags}
    return tags, shown


# (creator, lister): the older release is not asked to read a store the newer one wrote, whose
# getExistingName can leave two spellings of one part that the older one's per-part lookup may
# miss (formats/ollama-store.md §2)
@pytest.mark.parametrize(("creator", "version"), [(RUN_VERSION, RUN_VERSION),
                                                  (RUN_VERSION, DEFAULT_VERSION),
                                                  (DEFAULT_VERSION, DEFAULT_VERSION)],
                         indirect=["creator"])
def test_an_imported_store_lists_and_shows_what_the_original_does(
        carried: tuple[Path, Path, float], creator: MadeStore, tmp_path: Path,
        version: str) -> None:
    original, imported, started = carried
    before, shown_before = the_real_list(original, version, tmp_path / "h1")
    after, shown_after = the_real_list(imported, version, tmp_path / "h2")
    names = set(creator.names)
    assert set(by_name(before)) == names, before
    assert set(by_name(after)) == names
    shown = "\n".join(shown_before["tiny:latest"][0]
                      + shown_before.get("tiny-lora:latest", ([], []))[0])
    lines = ["TEMPLATE ", "SYSTEM ", "LICENSE ", "MESSAGE user hello"]
    if "tiny-lora:latest" in names:
        lines.append("ADAPTER STORE/")
    for line in lines:
        assert line in shown, line  # what the made store holds, so what the copy must hold
    for name, entry in by_name(before).items():
        copy = by_name(after)[name]
        # The model ID is the sha256 of the manifest file, byte for byte the same in the copy
        # (formats/ollama-store.md §1.2 and §4 step 5), found where our names put it.
        path = Store(StoreLocation(imported, "--models")).manifest_path(ModelName.parse(name))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == copy["digest"], name
        for key in ("model", "digest", "size", "details"):
            assert copy[key] == entry[key], (name, key)
        # Written by the import, as a pull writes it: the listing's time is the import's.
        assert modified(copy) >= started - 1, name
        assert shown_after[name] == shown_before[name], name


@pytest.mark.parametrize("creator", [RUN_VERSION], indirect=True)
def test_run_answers_from_the_imported_copy_as_from_the_original(
        carried: tuple[Path, Path, float], creator: MadeStore, tmp_path: Path) -> None:
    """`ollama run` (RUN_VERSION) gives the same answer from the copy as from the original:
    temperature 0 and a fixed seed make the random weights' answer the same every time."""
    original, imported, _ = carried
    answers = {}
    for label, models in (("original", original), ("imported", imported)):
        with ollama_serve(ollama_binary(RUN_VERSION), models, home=tmp_path / label) as server:
            answers[label] = {name: server.cli("run", name, "hello there").stdout
                              for name in ("tiny:latest", "tiny-lora:latest",
                                           "hf.co/Org/Repo:Q4_K_M") if name in creator.names}
    assert answers["imported"] == answers["original"]
    assert all(text.strip() for text in answers["original"].values()), answers
