"""Registries that answer what the real one never would (tests/support/hostile_registry.py):
upload Locations on other hosts or over plain HTTP, and answers without end. Credentials go
only to the registry itself (formats/threat-model.md, T16 and T29); every answer is read only
up to what it may hold, and a failure is one clean error line (T30)."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.common import MANIFEST_V2, Keys, run
from tests.support.hostile_registry import (
    ModelFiles,
    Reply,
    Route,
    Seen,
    hostile_registry,
    json_body,
)
from tests.support.tls_registry import make_certs

USER, PASSWORD = "pusher", "location-secret-17"
BASIC = {"WWW-Authenticate": 'Basic realm="hostile"'}


class Uploads:
    """A registry that wants Basic credentials for everything and names `elsewhere` (a URL)
    in the Location of every upload it opens; `store` is the server there, which takes every
    PATCH and final PUT. A mount succeeds for a blob uploaded before, as Distribution's does."""

    def __init__(self) -> None:
        self.stored: set[str] = set()
        self.elsewhere = ""
        self._n = 0

    def store(self, request: Seen) -> Reply:
        if request.method == "PUT":
            digest = parse_qs(urlsplit(request.path).query).get("digest", [""])[0]
            self.stored.add(digest)
            return Reply(201, {"Docker-Content-Digest": digest})
        if request.method == "PATCH":
            return Reply(202, {"Location": request.path.split("?")[0], "Range": "0-0"})
        return Reply(204)

    def registry(self, request: Seen) -> Reply | None:
        if "authorization" not in request.headers:
            return Reply(401, BASIC)
        path, query = request.path.split("?")[0], parse_qs(urlsplit(request.path).query)
        if request.method == "POST" and query.get("mount", [""])[0] in self.stored:
            return Reply(201)
        if request.method == "POST" and path.endswith("/blobs/uploads/"):
            self._n += 1
            return Reply(202, {"Location": f"{self.elsewhere}/upload/{self._n}", "Range": "0-0"})
        if request.method == "PUT" and "/manifests/" in path:
            return Reply(201, {"Docker-Content-Digest": "sha256:" + hashlib.sha256(
                request.body).hexdigest()})
        return None  # 404: no blob, no manifest, no tags


def _push(url: str, bundle: Path, keys: Keys, env: dict[str, str], tmp_path: Path,
          *extra: str) -> tuple[int, str]:
    r = run(["import", str(bundle), "--to-registry", url + "/team", "--trust", str(keys.pub),
             "--username", USER, "--password-stdin", *extra],
            env={**env, "DOCKER_CONFIG": str(tmp_path / "docker")},
            input=PASSWORD.encode() + b"\n")
    return r.exit_code, r.stdout + r.stderr


def test_credentials_do_not_follow_an_upload_location_to_another_host(
        bundle_file: Path, keys: Keys, env: dict[str, str], tmp_path: Path) -> None:
    """The registry names an upload URL on another host (127.0.0.2, another port): the blobs
    go there, and the credentials do not."""
    uploads = Uploads()
    with hostile_registry(uploads.store, host="127.0.0.2") as store, \
            hostile_registry(uploads.registry) as reg:
        uploads.elsewhere = store.url
        code, out = _push(reg.url, bundle_file, keys, env, tmp_path)
    assert code == 0, out
    assert [s.method for s in store.seen].count("PUT") >= 3, store.seen  # every blob went there
    assert [s.headers.get("authorization") for s in store.seen] == [None] * len(store.seen)
    assert any("authorization" in s.headers for s in reg.seen)  # the registry itself got them
    assert PASSWORD not in out


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, Path]]:
    d = tmp_path / "certs"
    d.mkdir()
    make_certs(d)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "srv.pem", d / "srv.key")
    yield context, d / "ca.pem"


def test_an_upload_location_over_plain_http_from_an_https_registry_is_refused(
        bundle_file: Path, keys: Keys, env: dict[str, str], tmp_path: Path,
        tls_server: tuple[ssl.SSLContext, Path]) -> None:
    """An HTTPS registry naming a plain-HTTP upload URL on its own host: nothing goes there
    (neither the credentials nor the content), one clean error, exit 5."""
    context, ca = tls_server
    uploads = Uploads()
    with hostile_registry(uploads.store) as plain:
        uploads.elsewhere = plain.url
        with hostile_registry(uploads.registry, tls=context) as reg:
            code, out = _push(reg.url, bundle_file, keys, env, tmp_path, "--ca-cert", str(ca))
    assert code == 5, out
    assert plain.seen == [], plain.seen
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "plain HTTP" in errors[0], out
    assert "Traceback" not in out and PASSWORD not in out


# ---------------------------------------------------------------------------------------------
# Answers without end: each is read only up to what it may hold (T30)

MiB = 1024 * 1024
HUGE = 64  # MiB a hostile answer holds (more would only slow the test down)
# what went into the socket when a bounded client stops reading: a 4 MiB limit, and the
# kernel's socket buffers on both sides (a few MiB on loopback)
SENT_BOUND = 24 * MiB


def _export(url: str, tmp_path: Path, *extra: str) -> tuple[int, str]:
    """export --from-registry of library/hostile:latest from `url`: exit code and output."""
    r = run(["export", "--from-registry", "hostile:latest", "--mirror", url, "--unsigned",
             "-o", str(tmp_path / "out.tar.zst"), *extra])
    return r.exit_code, r.stdout + r.stderr


def _one_error(out: str) -> str:
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    return errors[0]


def _oversized(kind: str, model: ModelFiles) -> Route:
    """A registry whose answer of this kind holds HUGE MiB."""
    filler = b" " * MiB

    def route(request: Seen) -> Reply | None:
        path = request.path.split("?")[0]
        if kind == "token" and "authorization" not in request.headers and path != "/token":
            realm = f"http://{request.headers['host']}/token"
            return Reply(401, {"WWW-Authenticate": f'Bearer realm="{realm}",'
                                                   'service="hostile"'})
        if kind == "token" and path == "/token":
            return Reply(200, {"Content-Type": "application/json"}, b'{"token":"t"}' + filler,
                         repeat=HUGE)
        if path.endswith("/manifests/latest") and kind in ("manifest", "error"):
            status = 200 if kind == "manifest" else 400
            return Reply(status, {"Content-Type": MANIFEST_V2}, model.manifest[:-1] + filler,
                         repeat=HUGE)
        if path == "/v2/_catalog":
            body = json_body({"repositories": [model.repository]})
            return Reply(200, {}, body + filler if kind == "catalog" else body,
                         repeat=HUGE if kind == "catalog" else 1)
        if path == f"/v2/{model.repository}/tags/list" and kind == "tags":
            return Reply(200, {}, json_body({"name": model.repository, "tags": ["latest"]})
                         + filler, repeat=HUGE)
        return model.answer(request)

    return route


@pytest.mark.parametrize("kind", ["manifest", "error", "token", "catalog", "tags"])
def test_an_oversized_answer_is_not_read_whole(kind: str, tmp_path: Path,
                                               env: dict[str, str]) -> None:
    """A manifest, an error body, a token answer, a catalog or a tag list of 64 MiB: at most
    its limit (4 MiB; an error body 64 KiB) and one byte are read, then one clean error (the
    size, exit 3; for an error answer the registry's status, exit 5)."""
    model = ModelFiles.make()
    with hostile_registry(_oversized(kind, model)) as reg:
        if kind in ("catalog", "tags"):
            r = run(["check-registry", reg.url])
            code, out = r.exit_code, r.stdout + r.stderr
        else:
            code, out = _export(reg.url, tmp_path)
    error = _one_error(out)
    assert 0 < reg.sent("") < SENT_BOUND, (reg.sent(""), out)
    if kind == "error":
        assert code == 5 and "HTTP 400" in error, out
    else:
        assert code == 3 and "larger than" in error, out
    assert not (tmp_path / "out.tar.zst").exists()


def _longer_blob(model: ModelFiles, digest: str, *, endless: bool) -> Route:
    """The blob sent with more bytes than the manifest says: HUGE MiB without a
    Content-Length (the connection would end it), or one byte more with one that says so."""
    def route(request: Seen) -> Reply | None:
        if request.path.endswith(digest):
            blob = model.blobs[digest]
            if endless:
                return Reply(200, {}, blob[: MiB] + bytes(MiB - len(blob[: MiB])),
                             repeat=HUGE, length=-1)
            return Reply(200, {}, blob + b"!")
        return model.answer(request)

    return route


@pytest.mark.parametrize(("blob", "endless", "cache"), [
    ("weights", True, True), ("weights", True, False), ("config", True, True),
    ("config", False, False), ("config", False, True), ("weights", False, False)])
def test_a_blob_longer_than_its_manifest_says_is_a_size_error(
        blob: str, endless: bool, cache: bool, tmp_path: Path, env: dict[str, str]) -> None:
    """The registry sends more of a blob (the weights, stored; the config, compressed) than
    the manifest's size, without end or one byte more: reading stops at that size (with
    --cache nothing beyond it is written), one clean size error naming the blob, exit 3, no
    output, and nothing longer than the blob left in the cache."""
    model = ModelFiles.make()
    digest = model.weights_digest if blob == "weights" else next(
        d for d in model.blobs if d != model.weights_digest)
    size = len(model.blobs[digest])
    extra = ["--cache", str(tmp_path / "cache")] if cache else []
    with hostile_registry(_longer_blob(model, digest, endless=endless)) as reg:
        code, out = _export(reg.url, tmp_path, *extra)
    error = _one_error(out)
    assert code == 3 and digest[7:19] in error, out
    assert reg.sent(digest) < SENT_BOUND
    assert not (tmp_path / "out.tar.zst").exists()
    if cache:
        assert all(p.stat().st_size <= size for p in (tmp_path / "cache").iterdir())


def _paging(model: ModelFiles, which: str) -> Route:
    """A catalog whose every page names the same `next` page (itself), or a repository
    whose tag pages never end (each names a new next page); after 5 catalog pages or 50 tag
    pages either ends, so that a client that does not stop still finishes."""
    pages = {"n": 0}

    def route(request: Seen) -> Reply | None:
        path = request.path.split("?")[0]
        if path == "/v2/_catalog":
            pages["n"] += which == "catalog"
            more = which == "catalog" and pages["n"] < 5
            names = [f"library/m{i:04}" for i in range(1000)] if more else [model.repository]
            link = {"Link": '</v2/_catalog?last=library%2Fm0999&n=1000>; rel="next"'}
            return Reply(200, link if more else {}, json_body({"repositories": names}))
        if path.endswith("/tags/list"):
            if which != "tags":
                return Reply(200, {}, json_body({"tags": []}))
            pages["n"] += 1
            n = pages["n"]
            link = {"Link": f'</v2/{model.repository}/tags/list?last=t{n}-999&n=1000>; '
                            'rel="next"'} if n < 50 else {}
            return Reply(200, link, json_body({"tags": [f"t{n}-{i:03}" for i in range(1000)]}))
        return model.answer(request)

    return route


def test_catalog_pages_that_repeat_are_not_followed_again(tmp_path: Path,
                                                          env: dict[str, str]) -> None:
    model = ModelFiles.make()
    with hostile_registry(_paging(model, "catalog")) as reg:
        r = run(["check-registry", reg.url])
    error = _one_error(r.stdout + r.stderr)
    assert r.exit_code == 5 and "repeat" in error, r.stdout + r.stderr
    assert [s.path.split("?")[0] for s in reg.seen].count("/v2/_catalog") == 2


def test_tag_pages_without_end_are_read_only_up_to_the_probe_limit(
        tmp_path: Path, env: dict[str, str]) -> None:
    """check-registry without MODEL probes at most 100 tags: paging stops once it has more
    than that, and the output says so."""
    model = ModelFiles.make()
    with hostile_registry(_paging(model, "tags")) as reg:
        r = run(["check-registry", reg.url, "--json"])
    assert [s.path.split("?")[0] for s in reg.seen].count(
        f"/v2/{model.repository}/tags/list") == 1
    doc, _ = json.JSONDecoder().raw_decode(r.stdout)  # the error's document follows
    assert r.exit_code == 5 and doc["probed"] == 100 and doc["modelTags"] is None, r.stdout
