"""The HTTP server of `bundle serve` on the standard library (http.server): bounded request
heads, connection limits, keep-alive, TLS, and bodies sent with sendfile where the bytes lie
raw in a file (formats/serve-v1.md §3, §5, §6). What to answer is the caller's `Handler`."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from bundler import oscompat
from bundler.config import MAX_CONNECTIONS, MAX_PER_CLIENT
from bundler.digest import CHUNK_SIZE
from bundler.distribution import (
    API_VERSION,
    MAX_HEADER_LINES,
    MAX_REQUEST_LINE,
    Answer,
    FileSpan,
    HttpError,
    access_line,
)
from bundler.errors import BundlerError, UsageError

MAX_REQUESTS_PER_CONNECTION = 1000
HEAD_TIMEOUT = 30.0  # reading a request head, and an idle keep-alive connection
SEND_TIMEOUT = 120.0  # a client that reads nothing for this long is cut off


class Handler(Protocol):
    """The answer to a request: method, request target, headers (names in lower case)."""

    def __call__(self, method: str, target: str, headers: Mapping[str, str]) -> Answer: ...


class Cut(Exception):  # noqa: N818 - not an error of ours: the answer stops here on purpose
    """Raised by an answer's stream: close the connection without sending the rest."""




@dataclass(frozen=True, slots=True)
class Limits:
    connections: int = MAX_CONNECTIONS
    per_client: int = MAX_PER_CLIENT


@dataclass(frozen=True, slots=True)
class Stats:
    connections: int
    answering: int
    sent: int


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def version_string(self) -> str:
        return "ollama-bundle-serve"

    def setup(self) -> None:
        self._writable: selectors.BaseSelector | None = None  # made on the first full buffer
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(HEAD_TIMEOUT)
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError):
                self.close_connection = True
                raise ConnectionAbortedError from None
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._writable is not None:
                self._writable.close()

    def handle(self) -> None:
        self.close_connection = True
        with contextlib.suppress(ConnectionError, TimeoutError, ssl.SSLError):
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                self.handle_one_request()
                if self.close_connection or self.server.draining:
                    break

    def handle_one_request(self) -> None:
        """BaseHTTPRequestHandler's, with our bounds: at most HEAD_TIMEOUT idle before a
        request; then the request line at most 8 KiB, at most 64 header lines of at most
        8 KiB, all read within HEAD_TIMEOUT however slowly the bytes come."""
        self.close_connection = True
        self.requestline, self.command = "", ""
        self.connection.settimeout(HEAD_TIMEOUT)
        if not self._peek():
            return
        deadline = time.monotonic() + HEAD_TIMEOUT
        self.raw_requestline = self._readline(deadline)
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = self.raw_requestline[:200].decode("latin-1").rstrip("\r\n")
            self.request_version = "HTTP/1.1"
            self._send(Answer.error(HttpError(414, "UNSUPPORTED", "request line too long")))
            return
        self.server.busy(self, True)
        try:
            head = bytearray()
            for _ in range(MAX_HEADER_LINES + 1):
                line = self._readline(deadline)
                head += line
                if line in (b"\r\n", b"\n", b""):
                    break
                if len(line) > MAX_REQUEST_LINE:
                    break
            else:
                line = b"x"
            self.connection.settimeout(SEND_TIMEOUT)
            rfile, self.rfile = self.rfile, io.BytesIO(bytes(head))
            try:
                ok = self.parse_request()
            finally:
                self.rfile = rfile
            if not ok:
                return
            if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):  # (0.9 and 1.2 pass it)
                self.send_error(505)
                return
            if line not in (b"\r\n", b"\n"):
                self._send(Answer.error(HttpError(400, "UNSUPPORTED",
                                                  "request head too long or cut short")))
                self.close_connection = True
                return
            self._answer()
        finally:
            self.server.busy(self, False)

    def _peek(self) -> bytes:
        """What is buffered, after one read of the socket at most if nothing is (b"": closed).
        (rfile is StreamRequestHandler's makefile("rb"): a BufferedReader.)"""
        return cast("io.BufferedReader", self.rfile).peek(1)

    def _readline(self, deadline: float) -> bytes:
        """A line of at most MAX_REQUEST_LINE + 1 bytes (more: too long), or what came before
        the end of the stream; TimeoutError once `deadline` passes, whatever trickles in."""
        line = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request head takes too long")
            self.connection.settimeout(left)
            buffered = self._peek()
            if not buffered:
                return bytes(line)
            room = MAX_REQUEST_LINE + 1 - len(line)
            end = buffered.find(b"\n", 0, room)
            line += self.rfile.read(end + 1 if end >= 0 else min(len(buffered), room))
            if end >= 0 or len(line) > MAX_REQUEST_LINE:
                return bytes(line)

    def _answer(self) -> None:
        has_body = (self.headers.get("Transfer-Encoding") is not None
                    or self.headers.get("Content-Length", "0").strip() not in ("", "0"))
        self.user: str | None = None
        try:
            if has_body and self.command in ("GET", "HEAD"):
                raise HttpError(400, "UNSUPPORTED", "a body on GET or HEAD")
            self.user = self.server.authorize(self.headers.get("Authorization"))
            answer = self.server.handler(self.command, self.path,
                                         {k.lower(): v for k, v in self.headers.items()})
        except HttpError as e:
            answer = Answer.error(e)
        except Exception as e:  # noqa: BLE001 - a bug of ours: answer it, log it, serve on
            self.server.log(f"error: {self.requestline[:200]!r}: {type(e).__name__}: {e}")
            answer = Answer.error(HttpError(500, "UNKNOWN", "internal error"))
            self.close_connection = True
        if has_body:  # never read: answer, then close
            self.close_connection = True
        self._send(answer)

    def _send(self, answer: Answer) -> None:
        sent: int | None = None
        try:
            self.send_response(answer.status)
            self.send_header(*API_VERSION)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(answer.length))
            if self.server.draining or self.close_connection:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            if answer.stream is None:
                self.wfile.write(answer.body)
                sent = len(answer.body)
                self.server.count(sent)
                return
            sent = 0
            sendfile = (oscompat.features().sendfile
                        if not isinstance(self.connection, ssl.SSLSocket) else None)
            try:
                for piece in answer.stream:
                    n = self._write(piece, sendfile)
                    sent += n
                    self.server.count(n)
            except Cut:
                self.close_connection = True
                return
            except BundlerError as e:
                self.close_connection = True
                self.server.log(f"error: {self.path}: {e.message}")
                return
            if sent != answer.length:
                self.close_connection = True
        finally:
            close = getattr(answer.stream, "close", None)  # (also one never started)
            if close is not None:
                close()
            self.server.access(access_line(
                self.client_address[0], getattr(self, "user", None), time.time(),
                self.requestline, answer.status, sent))

    def _write(self, piece: memoryview | FileSpan,
               sendfile: Callable[[int, int, int, int], int] | None) -> int:
        if not isinstance(piece, FileSpan):
            self.wfile.write(piece)
            return len(piece)
        if sendfile is not None:
            self.wfile.flush()
            return self._sendfile(sendfile, piece)
        done = 0
        while done < piece.length:
            data = oscompat.pread(piece.fd, min(CHUNK_SIZE, piece.length - done),
                                  piece.offset + done)
            if not data:
                raise Cut
            self.wfile.write(data)
            done += len(data)
        return done

    def _sendfile(self, sendfile: Callable[[int, int, int, int], int], piece: FileSpan) -> int:
        """os.sendfile of the whole span into the socket, which has a timeout (non-blocking
        underneath): wait until it can take more, at most SEND_TIMEOUT each time. A body is
        one span per raw block (formats/bundle-v1.md §7), thousands per GiB: the connection
        keeps one selector for the waits, made when the socket's buffer is first full."""
        sock = self.connection
        done = 0
        while done < piece.length:
            try:
                n = sendfile(sock.fileno(), piece.fd, piece.offset + done, piece.length - done)
            except BlockingIOError:
                if self._writable is None:
                    self._writable = selectors.DefaultSelector()
                    self._writable.register(sock, selectors.EVENT_WRITE)
                if not self._writable.select(SEND_TIMEOUT):
                    raise TimeoutError("the client reads nothing") from None
                continue
            if n == 0:
                raise Cut
            done += n
        return done

    def handle_expect_100(self) -> bool:
        return True  # no "100 Continue": a request body is never wanted (formats/serve-v1.md §5)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the access line is written by _send, with the body bytes really sent

    def log_error(self, format: str, *args: Any) -> None:
        pass

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line), as Distribution errors."""
        self.close_connection = True
        self.request_version = "HTTP/1.1"  # (http.server leaves HTTP/0.9 here: no headers)
        self._send(Answer.error(HttpError(code, "UNSUPPORTED",
                                          http.server.BaseHTTPRequestHandler.responses.get(
                                              code, ("malformed request",))[0])))




class Server(http.server.ThreadingHTTPServer):
    """One thread per connection, at most `limits.connections` of them, at most
    `limits.per_client` from one address; over that a connection gets 503 and is closed."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: Handler, *, limits: Limits,
                 access: Callable[[str], None], log: Callable[[str], object],
                 tls: ssl.SSLContext | None = None,
                 authorize: Callable[[str | None], str | None] = lambda _: None) -> None:
        self.handler, self.limits, self.access, self.log = handler, limits, access, log
        self.authorize = authorize
        self.draining = False
        self.sent = 0  # body bytes sent, in all
        self._lock = threading.Lock()
        self._clients: dict[str, int] = {}
        self._open = 0
        self._busy: set[_RequestHandler] = set()
        self._idle = threading.Condition(self._lock)
        self._connections: dict[Any, str] = {}  # open connection -> client address
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__(address, _RequestHandler)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{address[1]}: {e.strerror}",
                             hint="choose another --listen address or port") from None
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside an answer (a TLS handshake, a reset): one line."""
        self.log(f"warning: connection from {client_address[0]} failed")

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        with self._lock:
            over = (self._open >= self.limits.connections
                    or self._clients.get(host, 0) >= self.limits.per_client)
            if not over:
                self._open += 1
                self._clients[host] = self._clients.get(host, 0) + 1
                self._connections[request] = host
        if over:
            self._refuse(request, host)
            return
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket, host: str) -> None:
        answer = Answer.error(HttpError(503, "TOOMANYREQUESTS", "too many connections",
                                        [("Retry-After", "1")]))
        head = (f"HTTP/1.1 503 Service Unavailable\r\n{API_VERSION[0]}: {API_VERSION[1]}\r\n"
                "Content-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
                f"Content-Length: {answer.length}\r\n\r\n").encode()
        sent = None  # with TLS: closed before the handshake, nothing sent
        with contextlib.suppress(OSError):
            request.settimeout(1.0)
            if not isinstance(request, ssl.SSLSocket):
                request.sendall(head + answer.body)
                sent = answer.length
        self.shutdown_request(request)
        self.access(access_line(host, None, time.time(), "-", 503, sent))

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            host = self._connections.pop(request, None)
            if host is not None:
                self._open -= 1
                self._clients[host] -= 1
                if not self._clients[host]:
                    del self._clients[host]
                self._idle.notify_all()
        super().shutdown_request(request)

    def count(self, sent: int) -> None:
        with self._lock:
            self.sent += sent

    def stats(self) -> Stats:
        """What a live status line shows: connections open, answers in progress, bytes sent."""
        with self._lock:
            return Stats(self._open, len(self._busy), self.sent)

    def busy(self, handler: _RequestHandler, on: bool) -> None:
        with self._lock:
            (self._busy.add if on else self._busy.discard)(handler)
            self._idle.notify_all()

    def drain(self, timeout: float) -> int:
        """Stop taking requests; wake idle keep-alive connections; wait up to `timeout` for the
        answers in progress. Returns how many were still running at the end."""
        self.draining = True
        deadline = time.monotonic() + timeout
        with self._lock:
            idle = [s for s in self._connections
                    if not any(h.connection is s for h in self._busy)]
        for s in idle:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RD)
        with self._lock:
            while self._busy and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            return len(self._busy)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load --tls-cert {cert} / --tls-key {key}: {e}",
                         hint="give a PEM certificate (chain) and its PEM private key") from None
    return ctx
