"""A loopback proxy in front of the real registry that injects the faults the registry itself
cannot produce: 5xx and 429 answers, connections dropped before or after forwarding, stalls,
and (through `before` and `after` hooks) answers made up or rewritten, as a registry that
lies would give them."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Fault:
    """Applies to the `nth` request (1-based) whose method and path match."""

    method: str
    path_contains: str
    nth: int
    action: str  # "status:503", "status:429", "drop-before", "drop-after", "corrupt", "truncate",
    # "delay:SECONDS" (then forwarded as usual), "stall:SECONDS" (silence, then the connection
    # is dropped), "drop-mid" (half the request body goes to the registry, then both connections drop)
    seen: int = 0
    fired: bool = False


@dataclass
class FaultLog:
    requests: list[str] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)  # by method
    max_in_flight: dict[str, int] = field(default_factory=dict)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def with_header(self, name: str, value: str) -> Answer:
        kept = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        return Answer(self.status, [*kept, (name, value)], self.body)


Before = Callable[[str, str], "Answer | None"]  # (method, path) -> answer instead of upstream's
After = Callable[[str, str, Answer], Answer]  # (method, path, upstream's answer) -> answer sent


@contextmanager
def fault_proxy(upstream: str, faults: list[Fault], *, before: Before | None = None,
                after: After | None = None) -> Iterator[tuple[str, FaultLog]]:
    """Faults are tried first; a request none of them takes goes to `before` (an answer made
    up there is sent instead of forwarding), else upstream, whose answer `after` may rewrite.
    Made-up and rewritten answers are logged in `fired` too."""
    up = urlsplit(upstream)
    log = FaultLog()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _handle(self) -> None:
            with lock:
                n = log.in_flight[self.command] = log.in_flight.get(self.command, 0) + 1
                log.max_in_flight[self.command] = max(n, log.max_in_flight.get(self.command, 0))
            try:
                self._forward()
            finally:
                with lock:
                    log.in_flight[self.command] -= 1

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            with lock:
                log.requests.append(f"{self.command} {self.path.split('?')[0]}")
                if self.headers.get("Range"):
                    log.ranges.append(self.headers["Range"])
                fault = _match(faults, self.command, self.path)
                if fault is not None:
                    log.fired.append(f"{fault.action} {self.command} {self.path.split('?')[0]}")
            if fault is not None and fault.action == "drop-mid":
                # the registry gets the first half of the body, then both connections drop
                half = self.rfile.read(length // 2)
                upstream = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port,
                                                      timeout=60)
                upstream.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                for k, v in self.headers.items():
                    upstream.putheader(k, v)
                upstream.endheaders()
                upstream.send(half)
                time.sleep(0.3)  # let the registry store what it got
                upstream.close()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            body = self.rfile.read(length) if length else b""
            if fault is not None and fault.action.startswith("stall:"):
                time.sleep(float(fault.action.split(":")[1]))
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault is not None and fault.action.startswith("status:"):
                code = int(fault.action.split(":")[1])
                self.send_response(code)
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fault is not None and fault.action.startswith("delay:"):
                time.sleep(float(fault.action.split(":")[1]))
            if fault is not None and fault.action == "drop-before":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            answer = before(self.command, self.path) if before and fault is None else None
            if answer is not None:
                with lock:
                    log.fired.append(f"answered {self.command} {self.path}")
            else:
                conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port,
                                                  timeout=60)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                answer = Answer(resp.status, resp.getheaders(), resp.read())
                conn.close()
                if after is not None and fault is None:
                    changed = after(self.command, self.path, answer)
                    if changed != answer:
                        with lock:
                            log.fired.append(f"rewrote {self.command} {self.path}")
                    answer = changed
            data = answer.body
            if fault is not None and fault.action == "corrupt" and data:
                data = bytes([data[0] ^ 1]) + data[1:]
            if fault is not None and fault.action == "truncate":
                self.send_response(answer.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault is not None and fault.action == "drop-after":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.send_response(answer.status)
            for k, v in answer.headers:
                if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(k, v)
            head_length = answer.header("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", head_length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


def _match(faults: list[Fault], method: str, path: str) -> Fault | None:
    for fault in faults:
        if fault.fired or fault.method != method or fault.path_contains not in path:
            continue
        fault.seen += 1
        if fault.seen == fault.nth:
            fault.fired = True
            return fault
    return None

