"""Real registry servers on loopback for tests: docker-registry, and nginx in front of it.

tests/conftest.py registers this module with `pytest_plugins`: every test can ask for the
fixtures `registry` and `ollama_registry` by name, importing only the types:

    from tests.support.servers import OllamaRegistry, Registry

    def test_x(registry: Registry, ollama_registry: OllamaRegistry) -> None:
        registry.url           # http://127.0.0.1:PORT, the bare docker-registry
        ollama_registry.url    # http://127.0.0.1:PORT, nginx with scripts/nginx-ollama-registry.conf

Both are session-scoped; `ollama_registry` fronts the same registry (same storage) as
`registry`, so a model pushed to one can be pulled from the other. Use your own repository names
per test. A server that does not come up fails the test with its log; every process is stopped
when the session ends, whatever the tests did. The context managers `run_registry` and
`run_nginx` do the same outside fixtures; `run_moto` starts moto's S3 server (the S3 stand-in)
on another loopback address, 127.0.0.2, with a bucket made.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
NGINX_TEMPLATE = REPO / "scripts" / "nginx-ollama-registry.conf"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def find_binary(name: str) -> str:
    """`name` on PATH or in /usr/sbin (not on a normal user's PATH); fail the test if absent."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/setup as root "
                    "(apt-get install docker-registry nginx-light)")
    return found


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    # setpriv (util-linux) has the kernel kill the server if pytest itself dies (kill -9, a CI
    # timeout), so no registry outlives its session.
    setpriv = shutil.which("setpriv")
    if setpriv:
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL to its process group (nginx workers included) if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # start_new_session made the server a group leader: this reaches stray children too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


def http_status(url_host: str, port: int, path: str = "/v2/", timeout: float = 1.0) -> int | None:
    """Status of GET http://host:port/path, or None if nothing answers."""
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def _tail(*logs: Path, limit: int = 6000) -> str:
    parts = []
    for log in logs:
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        parts.append(f"--- {log} ---\n{text[-limit:]}")
    return "\n".join(parts)


def wait_ready(proc: subprocess.Popen[bytes], port: int, what: str, *logs: Path,
               timeout: float = START_TIMEOUT, want: int | None = 200) -> None:
    """Poll GET /v2/ until it answers `want` (None: anything); on exit or timeout stop the
    process and fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        status = http_status(HOST, port)
        if status is not None and want in (None, status):
            return
        time.sleep(0.05)
    code = proc.poll()
    stop_process(proc)
    state = f"exited with {code}" if code is not None else f"not ready after {timeout:.0f} s"
    pytest.fail(f"{what} on {HOST}:{port} {state}\n{_tail(*logs)}", pytrace=False)


@dataclass(frozen=True)
class Registry:
    """A running docker-registry (filesystem storage, no auth, delete enabled)."""

    url: str
    host: str
    port: int
    storage: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Nginx:
    """nginx with scripts/nginx-ollama-registry.conf in front of `upstream` (host:port)."""

    url: str
    host: str
    port: int
    upstream: str
    prefix: Path
    config: Path
    access_log: Path
    error_log: Path
    process: subprocess.Popen[bytes]

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def access_lines(self) -> list[str]:
        """The access log, one request a line (nginx's "combined" format)."""
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []


@dataclass(frozen=True)
class OllamaRegistry(Nginx):
    """The recipe: nginx in front of a running docker-registry."""

    registry: Registry


def registry_config(storage: Path, addr: str) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: true\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        "http:\n"
        f"  addr: {addr}\n"
        "  secret: ollama-bundle-tests-not-secret\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
    )


def render_nginx_conf(listen: str, upstream: str, prefix: Path) -> str:
    """Fill scripts/nginx-ollama-registry.conf as scripts/registry-for-ollama does."""
    text = NGINX_TEMPLATE.read_text()
    for key, value in (("@LISTEN@", listen), ("@UPSTREAM@", upstream), ("@PREFIX@", str(prefix))):
        text = text.replace(key, value)
    left = re.findall(r"@[A-Z_]+@", text)
    assert not left, f"placeholders left in the nginx template: {left}"
    return text


@contextlib.contextmanager
def run_registry(directory: Path, port: int | None = None) -> Iterator[Registry]:
    binary = find_binary("docker-registry")
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    storage, config, log = directory / "storage", directory / "registry.yml", directory / "registry.log"
    config.write_text(registry_config(storage, f"{HOST}:{port}"))
    proc = _spawn([binary, "serve", str(config)], log)
    try:
        wait_ready(proc, port, "docker-registry", log)
        yield Registry(f"http://{HOST}:{port}", HOST, port, storage, config, log, proc)
    finally:
        stop_process(proc)


@contextlib.contextmanager
def run_nginx(prefix: Path, upstream: str, port: int | None = None,
              want: int | None = 200,
              edit: Callable[[str], str] | None = None) -> Iterator[Nginx]:
    """nginx from the template on 127.0.0.1:port, proxying to upstream (host:port); ready
    when GET /v2/ through it answers `want` (None: any answer from nginx). `edit` changes the
    rendered configuration (e.g. adds auth) before nginx starts."""
    binary = find_binary("nginx")
    port = port or free_port()
    for sub in ("run", "log", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    text = render_nginx_conf(f"{HOST}:{port}", upstream, prefix)
    config.write_text(edit(text) if edit else text)
    error_log, access_log = prefix / "log" / "nginx-error.log", prefix / "log" / "nginx-access.log"
    stdout_log = prefix / "log" / "nginx-stdout.log"
    proc = _spawn([binary, "-p", str(prefix), "-e", str(error_log), "-c", str(config)], stdout_log)
    try:
        wait_ready(proc, port, "nginx", error_log, stdout_log, want=want)
        yield Nginx(f"http://{HOST}:{port}", HOST, port, upstream, prefix, config, access_log,
                    error_log, proc)
    finally:
        stop_process(proc)


@pytest.fixture(scope="session", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A bare docker-registry on 127.0.0.1 (what Ollama cannot pull GGUF models from)."""
    with run_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="session", name="ollama_registry")
def ollama_registry_fixture(registry: Registry,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllamaRegistry]:
    """nginx with the recipe's config in front of the `registry` fixture's server."""
    with run_nginx(tmp_path_factory.mktemp("nginx"), registry.netloc) as front:
        yield OllamaRegistry(**vars(front), registry=registry)


@contextlib.contextmanager
def run_registry_with(directory: Path, extra_config: str,
                      ready: Callable[[int], bool]) -> Iterator[int]:
    """docker-registry with extra YAML under its `http:` block's siblings (TLS, auth ...):
    `extra_config` is formatted with {port} and {dir}; yields the port once `ready(port)`."""
    port = free_port()
    config = directory / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'storage'}\n"
        f"http:\n  addr: {HOST}:{port}\n  secret: tests-only\n"
        + extra_config.format(port=port, dir=directory))
    log = directory / "registry.log"
    proc = _spawn([find_binary("docker-registry"), "serve", str(config)], log)
    try:
        deadline = time.monotonic() + 20
        while not ready(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"docker-registry did not start:\n{_tail(log)}", pytrace=False)
            time.sleep(0.1)
        yield port
    finally:
        stop_process(proc)


S3_HOST = "127.0.0.2"  # another loopback address: another hostname than the registry's


@dataclass(frozen=True)
class S3Server:
    """moto's server mode (PyPI moto[server]), the S3-compatible stand-in, with one bucket."""

    url: str
    host: str
    port: int
    bucket: str
    log: Path
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def run_moto(directory: Path, bucket: str = "models", host: str = S3_HOST) -> Iterator[S3Server]:
    """moto_server on host:PORT with `bucket` made (a plain PUT /bucket); stopped on exit."""
    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(binary).exists():
        pytest.fail("moto_server is not installed: run scripts/setup (dev extras: moto[server])")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "moto.log"
    proc = _spawn([binary, "-H", host, "-p", str(port)], log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            try:
                conn.request("PUT", f"/{bucket}")
                status = conn.getresponse().status
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    stop_process(proc)
                    pytest.fail(f"moto_server on {host}:{port} did not start\n{_tail(log)}",
                                pytrace=False)
                time.sleep(0.1)
            finally:
                conn.close()
        assert status == 200, f"moto_server would not make bucket {bucket}: HTTP {status}"
        yield S3Server(f"http://{host}:{port}", host, port, bucket, log, proc)
    finally:
        stop_process(proc)


# ---------------------------------------------------------------------------------------------
# What a registry serves

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"


def _get(url: str, accept: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _assert_served(base: str, repo: str, tag: str, manifest: bytes) -> None:
    """The registry serves the manifest byte for byte and every blob hashes right."""
    status, body, headers = _get(f"{base}/v2/{repo}/manifests/{tag}", SCHEMA2)
    assert status == 200 and body == manifest
    assert headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(manifest).hexdigest()
    doc = json.loads(body)
    for d in [doc["config"], *doc["layers"]]:
        status, blob, _ = _get(f"{base}/v2/{repo}/blobs/{d['digest']}")
        assert status == 200 and "sha256:" + hashlib.sha256(blob).hexdigest() == d["digest"]


# ---------------------------------------------------------------------------------------------
# The recipe (scripts/registry-for-ollama)


def _request(method: str, url: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    parts = urlsplit(url)
    assert parts.hostname
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30.0)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                     headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def _kill_leftovers(data: Path) -> None:
    """If the test failed half-way, kill what the script started (by the pids it recorded)."""
    for name in ("nginx.pid", "registry.pid"):
        try:
            pid = int((data / "run" / name).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if str(data).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the script started each in its own session
