"""A made-up registry on loopback for what the real one cannot do: answers of any size (bodies
sent many times over without being held, or without a Content-Length, ended only by the
connection), upload Locations on other hosts, pages that never end. Every request is logged
with its headers; every answer's body bytes that reached the socket are counted.

    with hostile_registry(route) as reg:     # route(Seen) -> Reply
        reg.url                               # http://127.0.0.1:PORT
        reg.seen                              # [Seen(method, path, headers, sent), ...]

`ModelFiles` serves one model (its manifest and blobs) the way Distribution does, for routes
that change only one answer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.common import CONFIG_V1, MANIFEST_V2, MODEL, go_json, weights


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    repeat: int = 1  # the body is sent this many times over
    length: int | None = None  # the Content-Length sent; None: the body's; -1: none (the
    # connection ends the body)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    sent: int = 0  # body bytes of the answer that went into the socket


@dataclass
class HostileRegistry:
    url: str
    host: str
    port: int
    seen: list[Seen]

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def sent(self, path_contains: str) -> int:
        """Body bytes sent in answers to requests whose path holds `path_contains`."""
        return sum(s.sent for s in self.seen if path_contains in s.path)


Route = Callable[[Seen], "Reply | None"]


@contextlib.contextmanager
def hostile_registry(route: Route, host: str = "127.0.0.1",
                     tls: ssl.SSLContext | None = None) -> Iterator[HostileRegistry]:
    """Serve `route` (None from it: 404) on host:<free port> until the block ends; over
    HTTPS with `tls` (a server context)."""
    seen: list[Seen] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()  # headers and body go in separate writes: no Nagle delay
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Seen(self.command, self.path,
                           {k.lower(): v for k, v in self.headers.items()},
                           self.rfile.read(length) if length else b"")
            with lock:
                seen.append(request)
            reply = route(request) or Reply(404, {"Content-Type": "application/json"},
                                            b'{"errors":[{"code":"NOT_FOUND"}]}')
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            total = len(reply.body) * reply.repeat
            length_sent = total if reply.length is None else reply.length
            if length_sent >= 0:
                self.send_header("Content-Length", str(length_sent))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            try:
                for _ in range(reply.repeat):
                    self.wfile.write(reply.body)
                    request.sent += len(reply.body)
                self.wfile.flush()
            except OSError:  # the client hung up: what it did not read stays unsent
                self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        scheme = "https" if tls is not None else "http"
        yield HostileRegistry(f"{scheme}://{host}:{port}", host, port, seen)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class ModelFiles:
    """One GGUF model as a registry serves it: library/<name>:latest, its manifest and blobs."""

    name: str
    manifest: bytes
    blobs: dict[str, bytes]  # digest -> content
    weights_digest: str

    @classmethod
    def make(cls, name: str = "hostile", size: int = 200_000) -> ModelFiles:
        config = go_json({"model_format": "gguf", "model_family": "llama"}) + b"\n"
        layer = weights(size, seed=21)
        blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b for b in (config, layer)}
        cfg_digest, layer_digest = list(blobs)
        manifest = go_json({
            "schemaVersion": 2, "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "digest": cfg_digest, "size": len(config)},
            "layers": [{"mediaType": MODEL, "digest": layer_digest, "size": len(layer)}]})
        return cls(name, manifest, blobs, layer_digest)

    @property
    def repository(self) -> str:
        return f"library/{self.name}"

    def answer(self, request: Seen) -> Reply | None:
        """What Distribution would answer for this model (None for anything else)."""
        path = request.path.split("?")[0]
        if path == "/v2/":
            return Reply(200, {"Content-Type": "application/json"}, b"{}")
        if path == f"/v2/{self.repository}/manifests/latest":
            return Reply(200, {"Content-Type": MANIFEST_V2,
                               "Docker-Content-Digest": "sha256:" + hashlib.sha256(
                                   self.manifest).hexdigest()}, self.manifest)
        prefix = f"/v2/{self.repository}/blobs/"
        if path.startswith(prefix) and path[len(prefix):] in self.blobs:
            return Reply(200, {"Content-Type": "application/octet-stream"},
                         self.blobs[path[len(prefix):]])
        return None


def json_body(obj: object) -> bytes:
    return json.dumps(obj).encode()
