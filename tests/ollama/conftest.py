"""Fixtures for the tests against the real Ollama (tests/support/ollama.py has the machinery).

    ollama_bin      the newest pinned release (scripts/build-ollama's default), session-wide
    ollama_run_bin  RUN_VERSION (v0.24.0): `ollama run` and `create FROM file.gguf` work
    tiny_gguf       a tiny random-weight llama GGUF (scripts/make-tiny-gguf), session-wide
    made_store      a store the real `ollama create` and `cp` wrote (make_real_store), session-wide
    made_names      the names the real /api/tags lists for made_store, sorted
    made_bundle     made_store exported and signed: (bundle, Keys), session-wide
    ollama          a running `ollama serve` of ollama_bin on a fresh store, stopped after the test
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.common import Keys, make_keys
from tests.support.ollama import (
    RUN_VERSION,
    MadeStore,
    OllamaServer,
    bundle,
    make_real_store,
    ollama_binary,
    ollama_serve,
)

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="session")
def ollama_bin() -> Path:
    return ollama_binary()


@pytest.fixture(scope="session")
def ollama_run_bin() -> Path:
    return ollama_binary(RUN_VERSION)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-tiny-gguf"), str(out)],
                   check=True, capture_output=True)
    return out


@pytest.fixture
def ollama(ollama_bin: Path, tmp_path: Path) -> Iterator[OllamaServer]:
    with ollama_serve(ollama_bin, tmp_path / "models", home=tmp_path / "home") as server:
        yield server


@pytest.fixture(scope="session")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> MadeStore:
    return make_real_store(tmp_path_factory.mktemp("made"), tiny_gguf)


@pytest.fixture(scope="session")
def made_store(made: MadeStore) -> Path:
    """make_real_store's store: treat it as read-only (copy it to change it)."""
    return made.models


@pytest.fixture(scope="session")
def made_names(made: MadeStore) -> tuple[str, ...]:
    """The names the real /api/tags gives made_store's models, sorted."""
    return made.names


@pytest.fixture(scope="session")
def made_bundle(tmp_path_factory: pytest.TempPathFactory, made_store: Path) -> tuple[Path, Keys]:
    """made_store exported by `bundle export --all`, signed: (the bundle, its key pair)."""
    root = tmp_path_factory.mktemp("made-bundle")
    keys = make_keys(root / "keys")
    out = root / "models.tar.zst"
    bundle("export", "--all", "--models", str(made_store), "--key", str(keys.key), "-o", str(out))
    return out, keys
