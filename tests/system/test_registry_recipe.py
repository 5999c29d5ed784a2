"""The registry recipe: Ollama-style pulls fail against a bare docker-registry and work through
nginx with scripts/nginx-ollama-registry.conf, both from the fixtures and from
scripts/registry-for-ollama."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

from tests.support.common import MANIFEST_V2, MODEL, PARAMS, REPO, TEMPLATE, make_model, weights
from tests.support.ollama_pull import PullError, PullResult, pull
from tests.support.servers import (
    OllamaRegistry,
    Registry,
    _kill_leftovers,
    _request,
    free_port,
    run_nginx,
    run_registry,
)

SCRIPT = REPO / "scripts" / "registry-for-ollama"
TIMEOUT = 30.0
WEIGHTS_SIZE = 300_000
PART = 40_000  # -> the weights blob comes down in 8 ranged parts


# --- seeding a registry by plain HTTP, as a replay would ------------------------------------


def push_blob(base_url: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, body = _request("POST", f"{base_url}/v2/{repo}/blobs/uploads/")
    assert status == 202, body
    location = urljoin(f"{base_url}/v2/{repo}/blobs/uploads/", headers["Location"])
    assert urlsplit(location).netloc == urlsplit(base_url).netloc, location
    sep = "&" if "?" in location else "?"
    status, headers, body = _request("PUT", f"{location}{sep}digest={digest}", data,
                                     {"Content-Type": "application/octet-stream"})
    assert status == 201, body
    assert headers["Docker-Content-Digest"] == digest
    return digest


def push_model(base_url: str, repo: str, tag: str, store: Path, manifest: bytes) -> None:
    """Upload config and layers (POST, then PUT with the body), then the manifest's bytes."""
    doc = json.loads(manifest)
    for desc in [doc["config"], *doc["layers"]]:
        data = (store / "blobs" / desc["digest"].replace(":", "-")).read_bytes()
        assert push_blob(base_url, repo, data) == desc["digest"]
    status, headers, body = _request("PUT", f"{base_url}/v2/{repo}/manifests/{tag}", manifest,
                                     {"Content-Type": MANIFEST_V2})
    assert status == 201, body
    assert headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(manifest).hexdigest()


@dataclass
class Source:
    store: Path
    manifest: bytes
    weights_digest: str

    @property
    def digests(self) -> list[str]:
        doc = json.loads(self.manifest)
        return [d["digest"] for d in [*doc["layers"], doc["config"]]]


def make_source(root: Path, seed: int = 0) -> Source:
    data = weights(WEIGHTS_SIZE, seed=seed)
    manifest = make_model(root, "registry.ollama.ai/library/tiny/latest",
                          [(MODEL, data), (TEMPLATE, b"{{ .System }} <|user|> {{ .Prompt }}"),
                           (PARAMS, b'{"stop":["\\u003c|eot|\\u003e"]}\n')])
    return Source(root, manifest, "sha256:" + hashlib.sha256(data).hexdigest())


def assert_pulled_identically(source: Source, dest: Path, host: str, repo: str,
                              tag: str) -> None:
    assert (dest / "manifests" / host / repo / tag).read_bytes() == source.manifest
    got = {p.name: p.read_bytes() for p in (dest / "blobs").iterdir()}
    want = {p.name: p.read_bytes() for p in (source.store / "blobs").iterdir()}
    assert got.keys() == want.keys()  # nothing else either: no -partial files left
    assert got == want


def assert_ranges_honoured(result: PullResult, source: Source, access_lines: list[str],
                           repo: str) -> None:
    parts = result.ranged(source.weights_digest)
    assert result.parts[source.weights_digest] == len(parts) == -(-WEIGHTS_SIZE // PART) > 1
    assert {e.status for e in parts} == {206}
    ranges = sorted(int(e.range.split("=")[1].split("-")[0]) for e in parts if e.range)
    assert ranges == list(range(0, WEIGHTS_SIZE, PART))
    # and on the server's side, nginx's access log shows the registry's 206s, PART bytes each
    blob_path = f"/v2/{repo}/blobs/{source.weights_digest} "
    served = [line for line in access_lines if blob_path in line
              and '" 206 ' in line]
    assert len(served) == len(parts)
    sizes = sorted(int(line.split('" 206 ')[1].split()[0]) for line in served)
    assert sum(sizes) == WEIGHTS_SIZE and max(sizes) == PART


def wait_for_log(front_lines: Any, needle: str, timeout: float = 5.0) -> list[str]:
    """nginx writes an access-log line when a request ends: give the last ones a moment."""
    deadline = time.monotonic() + timeout
    while True:
        lines: list[str] = front_lines()
        if sum(needle in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# --- (a) and (b): the fixtures --------------------------------------------------------------

def test_bare_registry_fails_for_want_of_location(registry: Registry, tmp_path: Path) -> None:
    source = make_source(tmp_path / "source", seed=1)
    push_model(registry.url, "team/bare", "latest", source.store, source.manifest)
    dest = tmp_path / "dest"
    with pytest.raises(PullError, match="http: no Location header in response"):
        pull(registry.url, "team", "bare", "latest", dest, min_part_size=PART, timeout=TIMEOUT)
    # the manifest was fetched fine, and nothing half-done is left behind
    assert not (dest / "manifests").exists()
    assert list((dest / "blobs").iterdir()) == []
    # what the registry sent: a plain 200 with the blob, no Location
    status, headers, _ = _request("GET", f"{registry.url}/v2/team/bare/blobs/"
                                  f"{source.weights_digest}")
    assert status == 200 and headers["Location"] is None
    assert headers["Accept-Ranges"] == "bytes"


def test_pull_through_nginx_is_byte_identical_and_ranged(
        ollama_registry: OllamaRegistry, tmp_path: Path) -> None:
    source = make_source(tmp_path / "source", seed=2)
    # seed the bare registry; pull through the front end (same storage)
    push_model(ollama_registry.registry.url, "team/fronted", "q4", source.store, source.manifest)
    dest = tmp_path / "dest"
    result = pull(ollama_registry.url, "team", "fronted", "q4", dest, min_part_size=PART,
                  timeout=TIMEOUT)
    assert_pulled_identically(source, dest, ollama_registry.netloc, "team/fronted", "q4")
    assert result.downloaded == source.digests and result.skipped == []
    # the direct-URL step saw a 200 carrying the request's own path as Location
    resolve = [e for e in result.exchanges if e.method == "GET" and e.range is None
               and e.url.endswith(source.weights_digest)]
    assert [(e.status, e.location) for e in resolve] == [
        (200, f"/v2/team/fronted/blobs/{source.weights_digest}")]
    lines = wait_for_log(ollama_registry.access_lines, f"{source.digests[-1]} ")
    assert_ranges_honoured(result, source, lines, "team/fronted")

    # pulling again: every blob is a cache hit, only the manifest is asked for
    again = pull(ollama_registry.url, "team", "fronted", "q4", dest, timeout=TIMEOUT)
    assert again.skipped == source.digests and again.downloaded == []
    assert [e.method for e in again.exchanges] == ["GET"]


def test_nginx_adds_location_only_where_it_should(ollama_registry: OllamaRegistry,
                                                  tmp_path: Path) -> None:
    source = make_source(tmp_path / "source", seed=3)
    push_model(ollama_registry.url, "team/headers", "latest", source.store, source.manifest)
    blob = f"{ollama_registry.url}/v2/team/headers/blobs/{source.weights_digest}"
    status, headers, _ = _request("HEAD", blob)
    assert status == 200 and headers["Content-Length"] == str(WEIGHTS_SIZE)
    assert headers.get_all("Location") == [urlsplit(blob).path]
    assert headers["Docker-Content-Digest"] == source.weights_digest
    assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    status, headers, body = _request("GET", blob, headers={"Range": "bytes=5-14"})
    assert (status, headers["Content-Range"]) == (206, f"bytes 5-14/{WEIGHTS_SIZE}")
    assert body == weights(WEIGHTS_SIZE, seed=3)[5:15]
    # an unknown blob: the registry's 404 as it was, no Location
    status, headers, body = _request("GET", f"{ollama_registry.url}/v2/team/headers/blobs/"
                                     f"sha256:{'0' * 64}")
    assert status == 404 and headers["Location"] is None and b"BLOB_UNKNOWN" in body
    # manifests and the API root pass unchanged
    status, headers, body = _request("GET", f"{ollama_registry.url}/v2/team/headers/manifests/"
                                     "latest", headers={"Accept": MANIFEST_V2})
    assert (status, body, headers["Location"]) == (200, source.manifest, None)
    assert headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()


class _Redirector(http.server.BaseHTTPRequestHandler):
    """A fake storage-redirecting registry: every blob GET is a 307 to another host."""

    def do_GET(self) -> None:
        self.send_response(307)
        self.send_header("Location", f"http://localhost:9/direct{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirecting_upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_nginx_keeps_a_storage_redirect_as_it_is(redirecting_upstream: str,
                                                 tmp_path: Path) -> None:
    """With S3-style storage the registry answers 307 + Location itself: no second one."""
    with run_nginx(tmp_path / "nginx", redirecting_upstream, want=None) as front:
        path = f"/v2/team/m/blobs/sha256:{'a' * 64}"
        status, headers, _ = _request("GET", front.url + path)
    assert status == 307
    assert headers.get_all("Location") == [f"http://localhost:9/direct{path}"]


# --- (c): the one-command recipe ------------------------------------------------------------

def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          check=False, stdin=subprocess.DEVNULL)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and str(SCRIPT) not in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_script_runs_the_recipe_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port, upstream = free_port(), free_port()
    args = ["--port", str(port), "--upstream-port", str(upstream), "--listen", "127.0.0.1",
            "--data", str(data)]
    try:
        started = time.monotonic()
        r = _script("start", *args)
        assert r.returncode == 0, r.stdout + r.stderr
        assert time.monotonic() - started < 30
        assert f"ollama pull --insecure 127.0.0.1:{port}/namespace/model:tag" in r.stdout
        assert "no authentication" in r.stdout
        again = _script("start", *args)  # idempotent
        assert again.returncode == 0 and "already running" in again.stdout, again.stderr
        status = _script("status", "--data", str(data))
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"answering: http://127.0.0.1:{port}/v2/" in status.stdout

        config = (data / "conf" / "registry.yml").read_text()
        assert f"addr: 127.0.0.1:{upstream}" in config and "enabled: true" in config
        assert re.search(rf"rootdirectory: {re.escape(str(data))}/storage\b", config)

        source = make_source(tmp_path / "source", seed=4)
        base = f"http://127.0.0.1:{port}"
        push_model(base, "team/scripted", "latest", source.store, source.manifest)  # via nginx
        with pytest.raises(PullError, match="no Location header"):  # the registry behind it
            pull(f"http://127.0.0.1:{upstream}", "team", "scripted", "latest",
                 tmp_path / "bare", min_part_size=PART, timeout=TIMEOUT)
        dest = tmp_path / "dest"
        result = pull(base, "team", "scripted", "latest", dest, min_part_size=PART,
                      timeout=TIMEOUT)
        assert_pulled_identically(source, dest, f"127.0.0.1:{port}", "team/scripted", "latest")
        access = data / "log" / "nginx-access.log"
        lines = wait_for_log(lambda: access.read_text().splitlines(), f"{source.digests[-1]} ")
        assert_ranges_honoured(result, source, lines, "team/scripted")
        assert (data / "storage" / "docker" / "registry" / "v2" / "repositories" / "team"
                / "scripted").is_dir()
        assert _processes_mentioning(str(data))
    finally:
        stop = _script("stop", "--data", str(data))
        _kill_leftovers(data)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stopped nginx" in stop.stdout and "stopped docker-registry" in stop.stdout
    assert _processes_mentioning(str(data)) == []
    assert not (data / "run" / "nginx.pid").exists() and not (data / "run" / "registry.pid").exists()
    status = _script("status", "--data", str(data))
    assert status.returncode == 3 and "stopped" in status.stdout
    second = _script("stop", "--data", str(data))
    assert second.returncode == 0, second.stderr


def test_script_listens_on_this_machine_only_unless_told(tmp_path: Path) -> None:
    """Without --listen, nginx binds 127.0.0.1 (plain HTTP without authentication must not be
    offered to the network by default); --listen 0.0.0.0 is how colleagues reach it."""
    data = tmp_path / "data"
    port = free_port()
    try:
        r = _script("start", "--port", str(port), "--upstream-port", str(free_port()),
                    "--data", str(data))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"listening on 127.0.0.1:{port}," in r.stdout
        assert f"listen 127.0.0.1:{port};" in (data / "conf" / "nginx.conf").read_text()
        assert f"ollama pull --insecure 127.0.0.1:{port}/namespace/model:tag" in r.stdout
        assert "--listen 0.0.0.0" in r.stdout  # how to offer it to colleagues
    finally:
        _script("stop", "--data", str(data))
        _kill_leftovers(data)
    assert _processes_mentioning(str(data)) == []


def test_script_refuses_a_busy_port_and_leaves_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _script("start", "--port", str(port), "--upstream-port", str(free_port()),
                    "--listen", "127.0.0.1", "--data", str(data))
    assert r.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in r.stderr
    assert _processes_mentioning(str(data)) == []
    bad = _script("start", "--port", "5000", "--upstream-port", "5000", "--data", str(data))
    assert bad.returncode == 1 and "must differ" in bad.stderr


def test_a_server_that_cannot_start_fails_the_test_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(pytest.fail.Exception, match="address already in use"), \
                run_registry(tmp_path / "reg", port=port):
            pass
    with pytest.raises(pytest.fail.Exception, match="invalid port in upstream"), \
            run_nginx(tmp_path / "nginx", "127.0.0.1:99999"):
        pass
    assert _processes_mentioning(str(tmp_path)) == []
