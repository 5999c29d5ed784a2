"""Registries that answer what the real one never would (tests/support/hostile_registry.py):
upload Locations on other hosts or over plain HTTP, and answers without end. Credentials go
only to the registry itself (formats/threat-model.md, T16 and T28); every answer is read only
up to what it may hold, and a failure is one clean error line (T29)."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.common import Keys, run
from tests.support.hostile_registry import Reply, Seen, hostile_registry
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
