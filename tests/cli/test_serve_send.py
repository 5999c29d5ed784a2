"""How `bundle serve`'s HTTP server sends bytes that lie raw in a file (formats/serve-v1.md §3,
§5): a body of many spans (one per raw zstd block of a stored frame, at most 128 KiB each) comes
out whole, and the sending costs the same few objects per connection however many spans the
body has (not an epoll set per span)."""

from __future__ import annotations

import http.client
import os
import selectors
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bundler import httpserve, oscompat
from bundler.distribution import Answer, FileSpan, Piece

SPAN = 128 * 1024
GAP = 3  # a raw block's header lies between two blocks' bytes


def test_many_file_spans_are_sent_whole_with_one_selector_at_most(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if oscompat.features().sendfile is None:
        pytest.skip("no sendfile on this platform")
    spans = 64
    data = os.urandom(spans * (SPAN + GAP))
    path = tmp_path / "blocks"
    path.write_bytes(data)
    want = b"".join(data[i * (SPAN + GAP) + GAP:(i + 1) * (SPAN + GAP)] for i in range(spans))
    made: list[selectors.BaseSelector] = []

    class Counting(selectors.DefaultSelector):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(selectors, "DefaultSelector", Counting)
    with path.open("rb") as f:
        def body() -> Iterator[Piece]:
            for i in range(spans):
                yield FileSpan(f.fileno(), i * (SPAN + GAP) + GAP, SPAN)

        def handler(method: str, target: str, headers: Mapping[str, str]) -> Answer:
            return Answer(200, [("Content-Type", "application/octet-stream")],
                          stream=body(), length=len(want))

        server = httpserve.Server(("127.0.0.1", 0), handler, limits=httpserve.Limits(),
                                  access=lambda _: None, log=lambda _: None)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            for _ in range(2):  # two answers on one keep-alive connection
                conn.request("GET", "/v2/x/blobs/y")
                resp = conn.getresponse()
                got = resp.read()
                assert resp.status == 200
                assert got == want
            conn.close()
        finally:
            server.shutdown()
            server.server_close()
    assert len(made) <= 1, f"{len(made)} selectors for {2 * spans} spans on one connection"
