"""Shared fixtures (the loopback-only guard, key pairs, an isolated environment, stores and
bundles) and the suite's shape: fixture modules in tests/support/ registered as plugins, and a
marker per folder (unit, cli, adversarial, system, ollama) so that `pytest -m "not system and not
ollama"` leaves out every test that starts a server, an unshared namespace, a crash harness or
the real Ollama."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bundler import oscompat
from tests.support.common import REPO, Keys, make_keys, run, small_store

pytest_plugins = [
    "tests.support.scene",
    "tests.support.servers",
    "tests.support.tls_registry",
    "tests.support.token_registry",
]

GROUPS = ("unit", "cli", "adversarial", "system", "ollama")
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its folder's name (pyproject.toml registers the markers)."""
    for item in items:
        try:
            group = item.path.resolve().relative_to(_TESTS).parts[0]
        except ValueError:
            continue
        if group in GROUPS:
            item.add_marker(getattr(pytest.mark, group))


def _loopback(host: str) -> bool:
    """localhost, ::1 or any of 127.0.0.0/8 (the S3 stand-in listens on 127.0.0.2: another
    host for Ollama's redirect rule, still loopback)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not _loopback(host) and not host.startswith("/"):
            raise AssertionError(f"test tried to reach {address!r}; use a loopback server")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An isolated environment: own config and trust directories, no OLLAMA_MODELS."""
    values = {"XDG_CONFIG_HOME": str(tmp_path / "config"),
              "BUNDLE_TRUST_DIR": str(tmp_path / "trusted")}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    for k in ("OLLAMA_MODELS", "BUNDLE_PASSPHRASE", "SOURCE_DATE_EPOCH"):
        monkeypatch.delenv(k, raising=False)
    return values


@pytest.fixture(params=[False, True], ids=["native", "portable"])
def os_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The test runs twice: with the OS-specific paths this machine has, then with
    OLLAMA_BUNDLE_PORTABLE=1 (every one off: the plain paths macOS and Windows take), in this
    process and in every process it starts. True when portable."""
    if request.param:
        monkeypatch.setenv(oscompat.PORTABLE_ENV, "1")
        assert oscompat.features() == oscompat.PLAIN
    else:
        monkeypatch.delenv(oscompat.PORTABLE_ENV, raising=False)
        assert oscompat.features() != oscompat.PLAIN
    return bool(request.param)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return small_store(tmp_path / "store")


@pytest.fixture
def bundle_file(tmp_path: Path, store: Path, keys: Keys, env: dict[str, str]) -> Path:
    out = tmp_path / "models.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


@pytest.fixture
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store made by scripts/make-sample-store (the demo's and the benchmark's data)."""
    root = tmp_path_factory.mktemp("sample") / "store"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-sample-store"), str(root),
                    "--size", "2MiB"], check=True, capture_output=True)
    yield root


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700), for tests that act as
    another user."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ollama-bundle-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
