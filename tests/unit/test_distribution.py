"""bundler/distribution.py: the routes, ranges, frames and log lines of `bundle serve`
(formats/serve-v1.md), pure functions."""

from __future__ import annotations

import pytest

from bundler.distribution import (
    FileSpan,
    Frame,
    HttpError,
    Route,
    access_line,
    byte_range,
    frames_for,
    member_frames,
    page,
    parse_listen,
    route,
    split_last,
)

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("method", "target", "want"), [
    ("GET", "/v2/", Route("base")),
    ("HEAD", "/v2", Route("base")),
    ("GET", "/v2/_catalog?n=5&last=a%2Fb", Route("catalog", n=5, last="a/b")),
    ("GET", "/v2/library/tiny/tags/list", Route("tags", "library/tiny")),
    ("GET", "/v2/library/tiny/manifests/latest", Route("manifest", "library/tiny", "latest")),
    ("HEAD", f"/v2/a/b/c/manifests/{D}", Route("manifest", "a/b/c", D)),
    ("GET", f"/v2/library/tiny/blobs/{D}", Route("blob", "library/tiny", D)),
    ("GET", "/v2/_catalog?n=99999", Route("catalog", n=1000)),
])
def test_routes(method: str, target: str, want: Route) -> None:
    assert route(method, target) == want


@pytest.mark.parametrize(("method", "target", "status", "code"), [
    ("POST", "/v2/library/tiny/blobs/uploads/", 405, "UNSUPPORTED"),
    ("PUT", "/v2/library/tiny/manifests/latest", 405, "UNSUPPORTED"),
    ("DELETE", "/other", 405, "UNSUPPORTED"),
    ("GET", "/v2/../x/manifests/latest", 400, "NAME_INVALID"),
    ("GET", "/v2/a/%2e%2e/manifests/latest", 400, "NAME_INVALID"),
    ("GET", "/v2/a%2fb/manifests/latest", 400, "NAME_INVALID"),
    ("GET", "/v2/a/%5cb/manifests/latest", 400, "NAME_INVALID"),
    ("GET", "/v2/a/b/manifests/%00", 400, "NAME_INVALID"),
    ("GET", "/v2/a/b/manifests/%ff", 400, "NAME_INVALID"),
    ("GET", "/v2/a//b/manifests/latest", 400, "NAME_INVALID"),
    ("GET", "/v2/A/b/manifests/latest", 400, "NAME_INVALID"),
    ("GET", "/v2/a/b/manifests/-tag", 400, "TAG_INVALID"),
    ("GET", "/v2/a/b/manifests/" + "t" * 200, 400, "TAG_INVALID"),
    ("GET", "/v2/a/b/blobs/sha256:ABC", 400, "DIGEST_INVALID"),
    ("GET", "/v2/a/b/blobs/latest", 400, "DIGEST_INVALID"),
    ("GET", "http://evil/v2/", 400, "UNSUPPORTED"),
    ("GET", "/etc/passwd", 404, "NAME_UNKNOWN"),
    ("GET", "/v2/a/b/other/x", 404, "NAME_UNKNOWN"),
    ("GET", "/v2/_catalog?n=0", 400, "PAGINATION_NUMBER_INVALID"),
    ("GET", "/v2/_catalog?n=abc", 400, "PAGINATION_NUMBER_INVALID"),
    ("GET", "/v2/_catalog?n=%C2%B2", 400, "PAGINATION_NUMBER_INVALID"),  # "²": isdigit, no int
    ("GET", "/v2/_catalog?n=%D9%A1", 400, "PAGINATION_NUMBER_INVALID"),  # an Arabic-Indic 1
    ("GET", "/v2/" + "/".join(["a" * 60] * 5) + "/tags/list", 400, "NAME_INVALID"),
])
def test_refused_routes(method: str, target: str, status: int, code: str) -> None:
    with pytest.raises(HttpError) as e:
        route(method, target)
    assert (e.value.status, e.value.code) == (status, code)
    assert e.value.body().startswith(b'{"errors":[{"code":"' + code.encode())


@pytest.mark.parametrize(("header", "want"), [
    (None, None), ("bytes=0-0", (0, 0)), ("bytes=0-", (0, 99)), ("bytes=10-20", (10, 20)),
    ("bytes=90-1000", (90, 99)), ("bytes=-10", (90, 99)), ("bytes=-1000", (0, 99)),
    ("bytes=99-99", (99, 99)),
])
def test_byte_ranges(header: str | None, want: tuple[int, int] | None) -> None:
    assert byte_range(header, 100) == want


@pytest.mark.parametrize("header", [
    "bytes=100-", "bytes=5-4", "bytes=-0", "bytes=0-1,3-4", "items=0-1", "bytes =0-1",
    "bytes=0-1 ", "bytes=" + "1" * 20 + "-", "bytes=a-b", "bytes=-", "", "bytes=0-" + "9" * 60,
])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(HttpError) as e:
        byte_range(header, 100)
    assert e.value.status == 416 and ("Content-Range", "bytes */100") in e.value.headers


def test_no_range_of_an_empty_blob() -> None:
    for header in ("bytes=0-", "bytes=-1"):
        with pytest.raises(HttpError):
            byte_range(header, 0)


def test_member_frames_and_the_frames_that_hold_a_range() -> None:
    rows = [(100, 5000), (50, 600), (70, 1000), (70, 1000), (20, 1024)]
    frames = member_frames(rows, (150, 290))
    assert frames == [Frame(150, 70, 0, 1000), Frame(220, 70, 1000, 1000)]
    assert frames_for(frames, 0, 0) == [(frames[0], 0, 1)]
    assert frames_for(frames, 999, 1000) == [(frames[0], 999, 1), (frames[1], 0, 1)]
    assert frames_for(frames, 1500, 1999) == [(frames[1], 500, 500)]
    assert frames_for(frames, 0, 1999) == [(frames[0], 0, 1000), (frames[1], 0, 1000)]
    assert frames_for(frames, 2000, 2100) == []


def test_split_last() -> None:
    assert split_last(FileSpan(3, 10, 5)) == (FileSpan(3, 10, 4), FileSpan(3, 14, 1))
    assert split_last(FileSpan(3, 10, 1)) == (None, FileSpan(3, 10, 1))
    head, tail = split_last(memoryview(b"abc"))
    assert isinstance(head, memoryview) and isinstance(tail, memoryview)
    assert bytes(head) == b"ab" and bytes(tail) == b"c"


def test_pages() -> None:
    assert page(["c", "a", "b"], 2, "") == (["a", "b"], "b")
    assert page(["c", "a", "b"], 2, "b") == (["c"], None)
    assert page(["a"], 5, "") == (["a"], None)


def test_access_lines_escape_what_a_client_sent() -> None:
    line = access_line("127.0.0.1", None, 0, 'GET /\x1b[31m"x\\ HTTP/1.1', 200, 5)
    assert line == ('127.0.0.1 - - [01/Jan/1970:00:00:00 +0000] '
                    '"GET /\\x1b[31m\\x22x\\x5c HTTP/1.1" 200 5')
    assert access_line("::1", "alice", 0, "HEAD / HTTP/1.1", 404, None).endswith(" 404 -")


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:5000", ("127.0.0.1", 5000)), ("0.0.0.0:0", ("0.0.0.0", 0)),  # noqa: S104
    (":8080", ("127.0.0.1", 8080)), ("host.example", ("host.example", 5000)),
    ("[::1]:5001", ("::1", 5001)), ("[::]", ("::", 5000)),
])
def test_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text, 5000) == want


@pytest.mark.parametrize("text", ["a:b", "1.2.3.4:70000", "[::1", "a b:1", "h:1:2"])
def test_listen_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"not HOST:PORT|out of range"):
        parse_listen(text, 5000)
