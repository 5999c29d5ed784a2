"""tests/support/ollama_pull.py keeps Ollama's rules (Ollama's server/download.go and x/transfer; formats/ollama-store.md §8): which redirects and
statuses the direct-URL step accepts, where ranges go, what ends in a digest mismatch. Checked
against a scripted stdlib HTTP server on loopback ("localhost" is another hostname than
"127.0.0.1" for Ollama's same-hostname rule)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.common import MANIFEST_V2, go_json, weights
from tests.support.ollama_pull import PullError, plan_parts, pull

BLOB = weights(100_000, seed=7)
CONFIG = go_json({"model_format": "gguf"}) + b"\n"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MANIFEST = go_json({"schemaVersion": 2, "mediaType": MANIFEST_V2,
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": digest_of(CONFIG), "size": len(CONFIG)},
                    "layers": [{"mediaType": "application/vnd.ollama.image.model",
                                "digest": digest_of(BLOB), "size": len(BLOB)}]})
TENSOR = weights(50_000, seed=8)
TENSOR_CONFIG = go_json({"model_format": "safetensors"}) + b"\n"
TENSOR_MANIFEST = go_json({
    "schemaVersion": 2, "mediaType": MANIFEST_V2,
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
               "digest": digest_of(TENSOR_CONFIG), "size": len(TENSOR_CONFIG)},
    "layers": [{"mediaType": "application/vnd.ollama.image.tensor",
                "digest": digest_of(TENSOR), "size": len(TENSOR)}]})
BLOBS = {digest_of(BLOB): BLOB, digest_of(CONFIG): CONFIG, digest_of(TENSOR): TENSOR,
         digest_of(TENSOR_CONFIG): TENSOR_CONFIG}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


Handler = Callable[["_Handler", str], None]


@dataclass
class Fake:
    """What the server answers to a blob GET without Range on /v2/... (the resolution step);
    everything else behaves like a registry serving ranges."""

    port: int = 0
    resolve: Handler | None = None
    ignore_range: bool = False
    storage: bool = False  # /direct/<digest> answers 302 to /storage/direct/<digest>
    seen: list[Seen] = field(default_factory=list)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            # the client may hang up after the headers, as the direct-URL step does
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    def handle_any(self, method: str) -> None:
        fake = self.server.fake
        fake.seen.append(Seen(method, self.path, dict(self.headers.items())))
        if self.path in ("/v2/ns/m/manifests/t", "/v2/ns/tm/manifests/t"):
            body = MANIFEST if "/m/" in self.path else TENSOR_MANIFEST
            return self.reply(200, body, {"Content-Type": MANIFEST_V2}, method == "HEAD")
        if fake.storage and self.path.startswith("/direct/"):  # the storage moved: one more hop
            return self.reply(302, headers={"Location": "/storage" + self.path})
        m = re.fullmatch(r"/(?:v2/ns/t?m/blobs|direct|storage/direct)/(sha256:[0-9a-f]{64})",
                         self.path)
        if m is None or m.group(1) not in BLOBS:
            if fake.resolve and method == "GET" and self.path.startswith("/hop"):
                return fake.resolve(self, method)
            return self.reply(404)
        data = BLOBS[m.group(1)]
        rng = self.headers.get("Range")
        if method == "GET" and rng is None and self.path.startswith("/v2/") and fake.resolve:
            return fake.resolve(self, method)
        span = re.fullmatch(r"bytes=(\d+)-(\d+)", rng or "")
        if span and not fake.ignore_range:
            a, b = int(span.group(1)), int(span.group(2))
            return self.reply(206, data[a:b + 1],
                              {"Content-Range": f"bytes {a}-{b}/{len(data)}"})
        return self.reply(200, data, {"Accept-Ranges": "bytes"}, method == "HEAD")

    def do_GET(self) -> None:
        self.handle_any("GET")

    def do_HEAD(self) -> None:
        self.handle_any("HEAD")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    fake: Fake


@pytest.fixture
def fake() -> Iterator[Fake]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = Fake(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def redirect(status: int, location: str | Callable[[str], str]) -> Handler:
    def answer(h: _Handler, method: str) -> None:
        target = location(h.path) if callable(location) else location
        h.reply(status, headers={"Location": target})
    return answer


def do_pull(fake: Fake, store: Path) -> Any:
    return pull(fake.url(), "ns", "m", "t", store, min_part_size=10_000, timeout=10)


def test_307_to_another_hostname_is_the_direct_url(fake: Fake, tmp_path: Path) -> None:
    fake.resolve = redirect(307, lambda p: f"http://localhost:{fake.port}/direct/"
                            + p.rsplit("/", 1)[1])
    result = do_pull(fake, tmp_path)
    assert (tmp_path / "blobs" / f"sha256-{digest_of(BLOB)[7:]}").read_bytes() == BLOB
    assert (tmp_path / "manifests" / f"127.0.0.1:{fake.port}" / "ns" / "m" / "t").read_bytes() \
        == MANIFEST
    ranged = [s for s in fake.seen if "Range" in s.headers]
    assert len(ranged) == 10 + 1  # 100_000 bytes in 10 parts, the config in one
    assert all(s.path.startswith("/direct/") and s.headers["Host"].startswith("localhost:")
               for s in ranged)
    # no Authorization and no Ollama User-Agent towards the direct URL
    assert not any("Authorization" in s.headers or "ollama" in s.headers.get("User-Agent", "")
                   for s in ranged)
    assert result.downloaded == [digest_of(BLOB), digest_of(CONFIG)]


def test_manifest_request_accepts_schema2_only(fake: Fake, tmp_path: Path) -> None:
    fake.resolve = redirect(307, lambda p: f"http://localhost:{fake.port}/direct/"
                            + p.rsplit("/", 1)[1])
    do_pull(fake, tmp_path)
    first = fake.seen[0]
    assert (first.method, first.path) == ("GET", "/v2/ns/m/manifests/t")
    assert first.headers["Accept"] == MANIFEST_V2
    assert [s.method for s in fake.seen[1:3]] == ["HEAD", "GET"]  # size, then direct URL


def test_same_host_redirects_are_followed_and_relative_location_resolved(
        fake: Fake, tmp_path: Path) -> None:
    # blob -> 302 /hop1 (same hostname: followed) -> 200 with a relative Location
    def answer(h: _Handler, method: str) -> None:
        if h.path.startswith("/v2/"):
            return h.reply(302, headers={"Location": "/hop1" + h.path})
        digest = h.path.rsplit("/", 1)[1]
        return h.reply(200, b"ignored", {"Location": "../../../../../direct/" + digest})
    fake.resolve = answer
    result = do_pull(fake, tmp_path)
    assert result.downloaded == [digest_of(BLOB), digest_of(CONFIG)]
    assert {e.url.rsplit("/", 2)[1] for e in result.ranged()} == {"direct"}


def test_same_hostname_on_another_port_counts_as_same_host(fake: Fake, tmp_path: Path) -> None:
    # a redirect to 127.0.0.1:<other port> is followed (port ignored) and fails there
    fake.resolve = redirect(307, "http://127.0.0.1:9/elsewhere")
    with pytest.raises(PullError, match=r"127\.0\.0\.1:9/elsewhere"):
        do_pull(fake, tmp_path)


@pytest.mark.parametrize("status", [301, 302, 303, 308])
def test_other_redirects_to_another_host_are_rejected(fake: Fake, tmp_path: Path,
                                                      status: int) -> None:
    fake.resolve = redirect(status, f"http://localhost:{fake.port}/direct/x")
    with pytest.raises(PullError, match=f"unexpected status code {status}$"):
        do_pull(fake, tmp_path)


def test_200_without_location_fails(fake: Fake, tmp_path: Path) -> None:
    fake.resolve = lambda h, m: h.reply(200, BLOB)
    with pytest.raises(PullError, match=r"http: no Location header in response$"):
        do_pull(fake, tmp_path)
    assert not list((tmp_path / "blobs").iterdir())


def test_at_most_ten_redirects(fake: Fake, tmp_path: Path) -> None:
    fake.resolve = redirect(307, lambda p: f"/hop{p}")
    with pytest.raises(PullError, match=r"maximum redirects exceeded \(10\) for directURL"):
        do_pull(fake, tmp_path)
    assert sum(s.method == "GET" and "/blobs/" in s.path for s in fake.seen) == 11


def test_a_server_ignoring_range_ends_in_a_digest_mismatch(fake: Fake, tmp_path: Path) -> None:
    fake.resolve = lambda h, m: h.reply(200, b"", {"Location": h.path})
    fake.ignore_range = True  # every part gets the blob from byte 0
    with pytest.raises(PullError, match="digest mismatch, file must be downloaded again"):
        do_pull(fake, tmp_path)
    assert not list((tmp_path / "blobs").iterdir())  # neither the blob nor its -partial
    assert not (tmp_path / "manifests").exists()


def test_existing_blobs_are_trusted_without_a_request(fake: Fake, tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    for digest in BLOBS:
        (tmp_path / "blobs" / digest.replace(":", "-")).write_bytes(b"not even the right bytes")
    result = do_pull(fake, tmp_path)
    assert result.skipped == [digest_of(BLOB), digest_of(CONFIG)]
    assert [s.path for s in fake.seen] == ["/v2/ns/m/manifests/t"]


def test_missing_manifest_is_a_pull_error(fake: Fake, tmp_path: Path) -> None:
    with pytest.raises(PullError, match="status 404"):
        pull(fake.url(), "ns", "other", "t", tmp_path, timeout=10)


def test_nothing_listening_is_a_pull_error(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="Connection refused"):
        pull("http://127.0.0.1:9", "ns", "m", "t", tmp_path, timeout=10)


@pytest.mark.parametrize(("total", "min_size", "count"),
                         [(0, 1, 0), (1, 1, 1), (96, 1, 16), (100, 1, 15), (99, 1, 15), (1_600_000, 1, 16),
                          (300_000, 40_000, 8), (5 * 10**9, 100 * 10**6, 16),
                          (50 * 10**9, 100 * 10**6, 50)])
def test_parts(total: int, min_size: int, count: int) -> None:
    parts = plan_parts(total, 16, min_size)
    assert len(parts) == count
    assert sum(size for _, size in parts) == total
    assert all(off == sum(s for _, s in parts[:i]) for i, (off, _) in enumerate(parts))


def test_range_parts_follow_redirects_as_gos_default_client_does(fake: Fake,
                                                                 tmp_path: Path) -> None:
    # server/download.go downloadChunk uses http.DefaultClient: a part that meets a redirect
    # follows it, and the Range header goes along
    fake.resolve = redirect(307, lambda p: f"http://localhost:{fake.port}/direct/"
                            + p.rsplit("/", 1)[1])
    fake.storage = True
    result = do_pull(fake, tmp_path)
    assert (tmp_path / "blobs" / f"sha256-{digest_of(BLOB)[7:]}").read_bytes() == BLOB
    stored = [s for s in fake.seen if s.path.startswith("/storage/")]
    assert len(stored) == 10 + 1 and all("Range" in s.headers for s in stored)
    assert {e.status for e in result.ranged() if "/storage/" not in e.url} == {302}


def pull_tensor(fake: Fake, store: Path) -> Any:
    return pull(fake.url(), "ns", "tm", "t", store, timeout=10)


def test_tensor_model_takes_the_transfer_path_a_plain_200_will_do(fake: Fake,
                                                                  tmp_path: Path) -> None:
    """x/transfer: a 200 without Location keeps the blob URL (the GGUF path would fail), one
    GET each, no HEAD and no Range; blobs of the right size are skipped, others fetched."""
    fake.resolve = lambda h, m: h.reply(200, BLOBS[h.path.rsplit("/", 1)[1]])
    result = pull_tensor(fake, tmp_path)
    assert result.path == "tensor"
    assert result.downloaded == [digest_of(TENSOR), digest_of(TENSOR_CONFIG)]
    assert (tmp_path / "blobs" / f"sha256-{digest_of(TENSOR)[7:]}").read_bytes() == TENSOR
    blob_requests = [s for s in fake.seen if "/blobs/" in s.path]
    assert {s.method for s in blob_requests} == {"GET"}
    assert not any("Range" in s.headers for s in blob_requests)
    assert len(blob_requests) == 4  # resolve (body drained), then the download, per blob
    assert (tmp_path / "manifests" / f"127.0.0.1:{fake.port}" / "ns" / "tm" / "t"
            ).read_bytes() == TENSOR_MANIFEST
    # a blob of the wrong size is fetched again; one of the right size is trusted
    (tmp_path / "blobs" / f"sha256-{digest_of(TENSOR)[7:]}").write_bytes(b"short")
    again = pull_tensor(fake, tmp_path)
    assert again.downloaded == [digest_of(TENSOR)]
    assert again.skipped == [digest_of(TENSOR_CONFIG)]


def test_tensor_path_redirects(fake: Fake, tmp_path: Path) -> None:
    # a 307 to another host:port (localhost is another host) is the download URL
    fake.resolve = redirect(307, lambda p: f"http://localhost:{fake.port}/direct/"
                            + p.rsplit("/", 1)[1])
    result = pull_tensor(fake, tmp_path)
    assert len(result.downloaded) == 2
    assert any(s.path.startswith("/direct/") and s.headers["Host"].startswith("localhost:")
               for s in fake.seen)
    # a 303 is not among the redirects x/transfer accepts
    fake.resolve = redirect(303, f"http://localhost:{fake.port}/direct/x")
    with pytest.raises(PullError, match=r"status 303$"):
        pull_tensor(fake, tmp_path / "other")
    # where the download URL redirects again, x/transfer's client does not follow
    fake.resolve = redirect(307, lambda p: f"http://localhost:{fake.port}/direct/"
                            + p.rsplit("/", 1)[1])
    fake.storage = True
    with pytest.raises(PullError, match=r"status 302$"):
        pull_tensor(fake, tmp_path / "third")
    assert not list((tmp_path / "third" / "blobs").iterdir())
