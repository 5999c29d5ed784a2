"""`bundle serve` (formats/serve-v1.md) against real clients on loopback: the Ollama-rules pull
client (tests/support/ollama_pull.py), skopeo, `bundle check-registry`; tampered, delta and
split bundles; the hostile-request catalogue; signals; memory."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pty
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bundler import httpserve, serve
from bundler.distribution import Answer
from tests.support.common import (
    MODEL,
    TEMPLATE,
    Keys,
    go_json,
    make_keys,
    make_model,
    run,
    weights,
)
from tests.support.ollama_pull import PullError, pull
from tests.support.servers import SCHEMA2, _get, _request
from tests.support.serving import Served, serving, start
from tests.support.tls_registry import make_certs

TENSOR = "application/vnd.ollama.image.tensor"
PART = 40_000  # small parts, so that small test blobs still come down in several ranges


def _pull(served: Served, repo: str, tag: str, store: Path) -> Any:
    namespace, model = repo.split("/")
    return pull(served.url, namespace, model, tag, store, min_part_size=PART, parts=8)


def _blobs(store: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((store / "blobs").iterdir())}


def _export(store: Path, out: Path, keys: Keys, *extra: str) -> Path:
    r = run(["export", *extra, "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def _raw(served: Served, data: bytes, *, read: int = 65536) -> bytes:
    """Send raw bytes, return what the server answers until it closes (or `read` bytes)."""
    host, port = served.netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        out = b""
        while len(out) < read:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
        return out


def test_pulls_are_byte_identical_and_real_clients_read_it(
        tmp_path: Path, store: Path, bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    with serving(str(bundle_file), "--trust", str(keys.pub), tmp=tmp_path) as served:
        assert f"ollama pull --insecure {served.netloc}/library/tiny:latest" in [
            m["pull"] for m in served.ready["models"]]
        for repo, tag, path in [("library/tiny", "latest", "registry.ollama.ai/library/tiny/latest"),
                                ("library/tiny", "chat", "registry.ollama.ai/library/tiny/chat"),
                                ("org/repo", "Q4_K_M", "hf.co/org/repo/Q4_K_M")]:
            pulled = tmp_path / "pulled" / path.replace("/", "_")
            result = _pull(served, repo, tag, pulled)
            assert result.manifest == (store / "manifests" / path).read_bytes()
            source = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in (store / "blobs").iterdir()}
            assert all(source[name] == digest for name, digest in _blobs(pulled).items())
            assert len(_blobs(pulled)) == len(json.loads(result.manifest)["layers"]) + 1
            weights_digest = json.loads(result.manifest)["layers"][0]["digest"]
            assert result.parts[weights_digest] > 1  # Location followed, then Range parts
            assert all(e.status == 206 for e in result.ranged(weights_digest))
        # skopeo reads the exact manifest bytes (it refuses to copy Ollama media types)
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{served.netloc}/library/tiny:latest"],
                             capture_output=True, check=True)
        assert raw.stdout == (store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
        tags = subprocess.run(["skopeo", "list-tags", "--tls-verify=false",
                               f"docker://{served.netloc}/library/tiny"],
                              capture_output=True, check=True)
        assert {"latest", "chat"} <= set(json.loads(tags.stdout)["Tags"])
        check = run(["check-registry", served.url, "--json"])
        assert check.exit_code == 0, check.output
        assert json.loads(check.stdout)["probed"] == 3
        # the cosign signature tag the bundle carries, as a push would have made it
        digest = "sha256:" + hashlib.sha256(
            (store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()).hexdigest()
        status, body, headers = _get(
            f"{served.url}/v2/library/tiny/manifests/{digest.replace(':', '-')}.sig")
        assert status == 200 and headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
        for layer in [json.loads(body)["config"], *json.loads(body)["layers"]]:
            status, blob, _ = _get(f"{served.url}/v2/library/tiny/blobs/{layer['digest']}")
            assert status == 200 and "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
    # the access log, in the Common Log Format
    assert '"GET /v2/library/tiny/manifests/latest HTTP/1.1" 200 ' in served.log()


def test_a_tensor_model_pulls_as_x_transfer_does(tmp_path: Path, keys: Keys,
                                                  env: dict[str, str]) -> None:
    """Tensor layers make Ollama pull through x/transfer (formats/ollama-store.md §8): a plain
    GET of each blob URL, which must answer 200; our 200 (with its Location) is that."""
    store = tmp_path / "s"
    make_model(store, "registry.ollama.ai/x/flux/latest",  # named layers, as x/create writes
               [(TENSOR, weights(300_000, 1)), (TENSOR, weights(3000, 2)),
                ("application/vnd.ollama.image.json", b'{"_class_name":"x"}')],
               config=go_json({"model_format": "safetensors", "requires": "0.14.0"}) + b"\n")
    bundle = _export(store, tmp_path / "b.tar.zst", keys, "--all")
    with serving(str(bundle), "--trust", str(keys.pub), tmp=tmp_path) as served:
        result = _pull(served, "x/flux", "latest", tmp_path / "p")
        assert result.path == "tensor"
        assert result.manifest == (store / "manifests/registry.ollama.ai/x/flux/latest").read_bytes()
        check = run(["check-registry", served.url, "x/flux:latest"])
        assert check.exit_code == 0, check.output
    assert all(_blobs(store)[k] == v for k, v in _blobs(tmp_path / "p").items())


def test_manifest_and_blob_answers(tmp_path: Path, store: Path, bundle_file: Path, keys: Keys,
                                   env: dict[str, str]) -> None:
    manifest = (store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    layer = json.loads(manifest)["layers"][0]
    data = (store / "blobs" / layer["digest"].replace(":", "-")).read_bytes()
    with serving(str(bundle_file), "--trust", str(keys.pub), tmp=tmp_path) as served:
        for ref in ("latest", digest):
            status, headers, body = _request("HEAD", f"{served.url}/v2/library/tiny/manifests/{ref}")
            assert status == 200 and body == b"" and headers["Content-Type"] == SCHEMA2
            assert headers["Docker-Content-Digest"] == digest
            assert headers["Content-Length"] == str(len(manifest))
            assert _get(f"{served.url}/v2/library/tiny/manifests/{ref}")[1] == manifest
        blob = f"{served.url}/v2/library/tiny/blobs/{layer['digest']}"
        status, headers, body = _request("HEAD", blob)
        assert status == 200 and headers["Content-Length"] == str(len(data)) and body == b""
        status, headers, body = _request("GET", blob)
        assert status == 200 and body == data and headers["Location"].endswith(layer["digest"])
        for spec, want in [("bytes=0-0", data[:1]), ("bytes=1000-", data[1000:]),
                           ("bytes=-7", data[-7:]), (f"bytes=5-{len(data) + 99}", data[5:]),
                           ("bytes=131000-131100", data[131000:131101])]:  # across a raw block
            status, headers, body = _request("GET", blob, headers={"Range": spec})
            assert status == 206 and body == want, spec
            first = len(data) - len(want) if spec.startswith("bytes=-") else int(spec[6:].split("-")[0])
            assert headers["Content-Range"] == f"bytes {first}-{first + len(want) - 1}/{len(data)}"
        # a blob is served only under a repository whose manifests name it
        assert _request("GET", f"{served.url}/v2/org/repo/blobs/{layer['digest']}")[0] == 404
        status, _, body = _request("GET", f"{served.url}/v2/library/nothere/manifests/latest")
        assert status == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
        status, _, body = _request("GET", f"{served.url}/v2/library/tiny/manifests/v9")
        assert status == 404 and json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        status, headers, body = _request("GET", f"{served.url}/v2/_catalog?n=1")
        assert status == 200 and json.loads(body) == {"repositories": ["library/tiny"]}
        assert 'rel="next"' in headers["Link"] and "last=library%2Ftiny" in headers["Link"]
        status, _, body = _request("GET", f"{served.url}/v2/_catalog?n=1&last=library%2Ftiny")
        assert json.loads(body) == {"repositories": ["org/repo"]}


def test_namespace_maps_names_as_import_to_registry_does(
        tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    with serving(str(bundle_file), "--trust", str(keys.pub), "--namespace", "team",
                 tmp=tmp_path) as served:
        assert json.loads(_get(f"{served.url}/v2/_catalog")[1]) == {
            "repositories": ["team/repo", "team/tiny"]}
        _pull(served, "team/repo", "Q4_K_M", tmp_path / "p")


def test_writes_get_405_and_hostile_requests_clean_errors(
        tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    with serving(str(bundle_file), "--trust", str(keys.pub), tmp=tmp_path) as served:
        base = f"{served.url}/v2/library/tiny"
        for method, path in [("POST", "/blobs/uploads/"), ("PUT", "/manifests/latest"),
                             ("PATCH", "/blobs/uploads/x"), ("DELETE", "/manifests/latest")]:
            status, headers, body = _request(method, base + path, b"{}")
            assert status == 405 and headers["Allow"] == "GET, HEAD", method
            assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
        layer = json.loads(_get(f"{base}/manifests/latest")[1])["layers"][0]["digest"]
        blob = f"{base}/blobs/{layer}"
        for spec in ["bytes=0-1,5-6", "bytes=99999999-", "items=0-1", "bytes=5-1", "bytes=-0",
                     "bytes=" + "9" * 40 + "-", "bytes= 0-1", "bytes=0-1" + " " * 100]:
            status, headers, body = _request("GET", blob, headers={"Range": spec})
            assert status == 416 and headers["Content-Range"].startswith("bytes */"), spec
            assert json.loads(body)["errors"][0]["code"] == "RANGE_INVALID"
        for path, status in [("/v2/../../etc/passwd/manifests/latest", 400),
                             ("/v2/library/%2e%2e/manifests/latest", 400),
                             ("/v2/library%2ftiny/manifests/latest", 400),
                             ("/v2/Library/Tiny/manifests/latest", 400),
                             ("/v2/library/tiny/blobs/sha256:XYZ", 400),
                             ("/v2/library/tiny/manifests/..", 400),
                             ("/v2/library/tiny/manifests/%00", 400),
                             ("/v2/library/tiny/manifests/%ff", 400),
                             ("/etc/passwd", 404), ("/v2/library/tiny/other/x", 404)]:
            got = _raw(served, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert got.startswith(f"HTTP/1.1 {status} ".encode()), (path, got[:200])
            assert b'{"errors":[{"code":' in got
        long_line = _raw(served, b"GET /v2/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
        assert long_line.startswith(b"HTTP/1.1 414 ")
        many = _raw(served, b"GET /v2/ HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n")
        assert many.startswith(b"HTTP/1.1 400 ")
        long_header = _raw(served, b"GET /v2/ HTTP/1.1\r\nX-A: " + b"b" * 9000 + b"\r\n\r\n")
        assert long_header.startswith(b"HTTP/1.1 400 ")
        assert _raw(served, b"\x16\x03\x01\x00\xde\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert _raw(served, b"GET /v2/ HTTP/9.9\r\n\r\n").startswith(b"HTTP/1.1 505 ")
        body_on_get = _raw(served, b"GET /v2/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        assert body_on_get.startswith(b"HTTP/1.1 400 ")
        # the server still serves after all that
        assert _get(f"{served.url}/v2/")[0] == 200
    assert "\\x16\\x03" in served.log()  # control bytes of a request line escaped in the log


def test_default_limits_take_eight_ollama_pulls_at_once(tmp_path: Path, bundle_file: Path,
                                                        keys: Keys, env: dict[str, str]) -> None:
    """Eight machines pulling a large model at once: Ollama opens up to 16 part downloads per
    blob, plus the connection its manifest and HEAD came on (server/download.go
    numDownloadParts). Loopback addresses 127.0.0.2-9 stand for the eight machines."""
    machines = [f"127.0.0.{i}" for i in range(2, 10)]
    with serving(str(bundle_file), "--trust", str(keys.pub), tmp=tmp_path) as served:
        host, port = served.netloc.split(":")
        held = [socket.create_connection((host, int(port)), timeout=10, source_address=(a, 0))
                for a in machines for _ in range(17)]
        try:
            for address in machines:  # accepted after every held one, so counted after them
                with socket.create_connection((host, int(port)), timeout=10,
                                              source_address=(address, 0)) as s:
                    s.sendall(b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n")
                    answer = s.recv(65536)
                assert answer.startswith(b"HTTP/1.1 200 "), (address, answer[:200])
        finally:
            for s in held:
                s.close()


def test_connection_limits(tmp_path: Path, bundle_file: Path, keys: Keys,
                           env: dict[str, str]) -> None:
    with serving(str(bundle_file), "--trust", str(keys.pub), "--max-per-client", "2",
                 tmp=tmp_path) as served:
        host, port = served.netloc.split(":")
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(2)]
        try:
            time.sleep(0.2)  # (not a timing assertion: lets the server count both)
            refused = _raw(served, b"GET /v2/ HTTP/1.1\r\n\r\n")
            assert refused.startswith(b"HTTP/1.1 503 ") and b"TOOMANYREQUESTS" in refused
        finally:
            for s in held:
                s.close()
        for _ in range(50):  # the held ones are counted out once closed
            if _get(f"{served.url}/v2/")[0] == 200:
                break
            time.sleep(0.1)
        assert _get(f"{served.url}/v2/")[0] == 200


def test_a_port_in_use_is_a_clean_usage_error(tmp_path: Path, bundle_file: Path, keys: Keys,
                                              env: dict[str, str]) -> None:
    with serving(str(bundle_file), "--trust", str(keys.pub), tmp=tmp_path) as served:
        proc = start([str(bundle_file), "--trust", str(keys.pub), "--listen", served.netloc],
                     tmp_path / "second.log")
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 2 and stdout == b""
        err = (tmp_path / "second.log").read_text()
        assert err.count("error: cannot listen on ") == 1 and "Traceback" not in err


def test_a_live_line_on_a_terminal(tmp_path: Path, bundle_file: Path, keys: Keys,
                                   env: dict[str, str]) -> None:
    """On a terminal, stderr carries a status line of connections and bytes served, redrawn
    in place; the access log lines are written above it."""
    main, side = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bundler", "serve", str(bundle_file),
                             "--trust", str(keys.pub), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=side)
    os.close(side)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().split(" at ")[1].strip().rstrip("/")
        assert _get(f"{url}/v2/library/tiny/manifests/latest")[0] == 200
        seen = b""
        while b"B served" not in seen.rpartition(b"GET /v2/library/tiny/manifests/latest")[2]:
            ready, _, _ = select.select([main], [], [], 30)  # (a guard against a hang)
            assert ready, seen
            seen += os.read(main, 65536)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        os.close(main)
    assert proc.returncode == 0
    assert b"\r\x1b[K0 connections, 0 answers in progress, " in seen


def test_untrusted_bundle_is_refused_before_listening(
        tmp_path: Path, bundle_file: Path, env: dict[str, str]) -> None:
    other = make_keys(tmp_path / "other")
    proc = start([str(bundle_file), "--trust", str(other.pub), "--listen", "127.0.0.1:0"],
                 tmp_path / "err.log")
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3 and stdout == b""
    assert "error: " in (tmp_path / "err.log").read_text()


def test_a_tampered_weights_blob_is_never_sent_whole(tmp_path: Path, keys: Keys,
                                                    env: dict[str, str]) -> None:
    store = tmp_path / "s"
    good, bad = weights(300_000, seed=11), weights(300_000, seed=12)
    make_model(store, "registry.ollama.ai/library/good/latest", [(MODEL, good)])
    make_model(store, "registry.ollama.ai/library/bad/latest", [(MODEL, bad)])
    bundle = _export(store, tmp_path / "b.tar.zst", keys, "--all")
    data = bytearray(bundle.read_bytes())
    at = data.find(bad[150_000:150_064])  # weights are stored raw (formats/bundle-v1.md §7)
    assert at > 0
    data[at + 10] ^= 0x40
    bundle.write_bytes(bytes(data))
    with serving(str(bundle), "--trust", str(keys.pub), tmp=tmp_path) as served:
        pulled = tmp_path / "pulled"
        with pytest.raises(PullError):
            _pull(served, "library/bad", "latest", pulled)
        bad_digest = "sha256:" + hashlib.sha256(bad).hexdigest()
        assert [p.name for p in (pulled / "blobs").iterdir()] == []  # nothing of it stored
        assert not (pulled / "manifests").exists()
        # from then on the blob is refused outright, HEAD too
        for method in ("GET", "HEAD"):
            status, _, body = _request(method, f"{served.url}/v2/library/bad/blobs/{bad_digest}")
            assert status == 500
            assert b"BLOB_UNKNOWN" in body or method == "HEAD"
        # the other model, from the same file, pulls
        _pull(served, "library/good", "latest", pulled)
        assert (pulled / "blobs" / ("sha256-" + hashlib.sha256(good).hexdigest())).read_bytes() \
            == good
    assert f"blob {bad_digest}" in served.log() and "does not match its digest" in served.log()


def test_a_whole_get_of_a_tampered_blob_is_cut_before_its_last_byte(
        tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = tmp_path / "s"
    bad = weights(200_000, seed=13)
    make_model(store, "registry.ollama.ai/library/bad/latest", [(MODEL, bad)])
    bundle = _export(store, tmp_path / "b.tar.zst", keys, "--all")
    data = bytearray(bundle.read_bytes())
    at = data.find(bad[100_000:100_064])
    data[at] ^= 1
    bundle.write_bytes(bytes(data))
    digest = "sha256:" + hashlib.sha256(bad).hexdigest()
    with serving(str(bundle), "--trust", str(keys.pub), tmp=tmp_path) as served:
        got = _raw(served, f"GET /v2/library/bad/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n"
                   .encode(), read=10_000_000)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 200000" in head
        assert len(body) < len(bad)


def test_eight_concurrent_pulls(tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = tmp_path / "s"
    big = weights(3_000_000, seed=21)
    manifest = make_model(store, "registry.ollama.ai/library/big/latest",
                          [(MODEL, big), (TEMPLATE, b"{{ .Prompt }}")])
    bundle = _export(store, tmp_path / "b.tar.zst", keys, "--all")
    errors: list[BaseException] = []

    def one(i: int, served: Served) -> None:
        try:
            r = pull(served.url, "library", "big", "latest", tmp_path / f"p{i}",
                     min_part_size=200_000, parts=16)
            assert r.manifest == manifest
        except BaseException as e:  # noqa: BLE001 - collected and raised below
            errors.append(e)

    with serving(str(bundle), "--trust", str(keys.pub), tmp=tmp_path) as served:
        threads = [threading.Thread(target=one, args=(i, served)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    want = _blobs(store)
    for i in range(8):
        assert _blobs(tmp_path / f"p{i}") == want


def test_a_delta_bundle_is_served_with_its_base(tmp_path: Path, store: Path, keys: Keys,
                                               env: dict[str, str]) -> None:
    base = _export(store, tmp_path / "m1.tar.zst", keys, "tiny:latest")
    make_model(store, "registry.ollama.ai/library/new/latest",
               [(MODEL, weights(300_000)), (TEMPLATE, b"{{ .New }}")])
    delta = _export(store, tmp_path / "m2.tar.zst", keys, "--all", "--base", str(base))
    alone = start([str(delta), "--trust", str(keys.pub), "--listen", "127.0.0.1:0"],
                  tmp_path / "alone.log")
    alone.communicate(timeout=60)
    assert alone.returncode == 4
    assert "leaves out" in (tmp_path / "alone.log").read_text()
    with serving(str(base), str(delta), "--trust", str(keys.pub), tmp=tmp_path) as served:
        for repo, tag, path in [("library/new", "latest", "registry.ollama.ai/library/new/latest"),
                                ("library/tiny", "latest", "registry.ollama.ai/library/tiny/latest"),
                                ("org/repo", "Q4_K_M", "hf.co/org/repo/Q4_K_M")]:
            result = _pull(served, repo, tag, tmp_path / "pulled")
            assert result.manifest == (store / "manifests" / path).read_bytes()
    source = _blobs(store)
    assert all(source[k] == v for k, v in _blobs(tmp_path / "pulled").items())


def test_split_parts_and_sighup(tmp_path: Path, store: Path, keys: Keys,
                                env: dict[str, str]) -> None:
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    _export(store, shelf / "m1.tar.zst", keys, "tiny:latest", "--split", "64KiB")
    assert len(list(shelf.glob("m1.tar.zst.0*"))) > 3
    log = tmp_path / "access.log"
    with serving(str(shelf), "--trust", str(keys.pub), "--access-log", str(log),
                 tmp=tmp_path) as served:
        result = _pull(served, "library/tiny", "latest", tmp_path / "p1")
        assert result.manifest == (store / "manifests/registry.ollama.ai/library/tiny/latest"
                                   ).read_bytes()
        assert _get(f"{served.url}/v2/org/repo/tags/list")[0] == 404
        before = _open_files(served, "m1.tar.zst.002")
        _export(store, shelf / "m2.tar.zst", keys, "--all")  # next month's release appears
        served.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if _get(f"{served.url}/v2/org/repo/tags/list")[0] == 200:
                break
            time.sleep(0.1)
        _pull(served, "org/repo", "Q4_K_M", tmp_path / "p2")
        # the set served before the reload was closed once nothing read from it any more
        assert before >= 1 and _open_files(served, "m1.tar.zst.002") == before
    assert "reloaded: 3 models" in served.log()
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith("127.0.0.1 - - [") for line in lines)


def _open_files(served: Served, name: str) -> int:
    fds = Path(f"/proc/{served.proc.pid}/fd")
    return sum(1 for fd in fds.iterdir() if fd.readlink().name == name)


def test_sigterm_lets_a_download_finish(tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = tmp_path / "s"
    big = weights(24_000_000, seed=31)  # more than the socket buffers hold: still being sent
    make_model(store, "registry.ollama.ai/library/big/latest", [(MODEL, big)])
    bundle = _export(store, tmp_path / "b.tar.zst", keys, "--all")
    digest = "sha256:" + hashlib.sha256(big).hexdigest()
    with serving(str(bundle), "--trust", str(keys.pub), tmp=tmp_path) as served:
        host, port = served.netloc.split(":")
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(f"GET /v2/library/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ")
        served.proc.send_signal(signal.SIGTERM)  # while most of the blob is still to come
        got = first.partition(b"\r\n\r\n")[2]
        while chunk := s.recv(1 << 20):
            got += chunk
        s.close()
        assert got == big
        assert served.proc.wait(30) == 0
        assert _raw_refused(served)
    assert "stopped" in served.log()


def _raw_refused(served: Served) -> bool:
    host, port = served.netloc.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        return True
    return False


def test_memory_stays_flat_while_serving(tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    """Eight Ollama-style pulls at once of a 64 MiB blob (16 parts each): the server's peak RSS
    stays under the bound the issue sets for serving (150 MiB), far below the bytes served."""
    store = tmp_path / "s"
    big = weights(64 * 1024 * 1024, seed=41)
    make_model(store, "registry.ollama.ai/library/big/latest", [(MODEL, big)])
    bundle = _export(store, tmp_path / "b.tar.zst", keys, "--all")
    shutil.rmtree(store / "blobs")
    errors: list[BaseException] = []

    def one(i: int, served: Served) -> None:
        try:
            pull(served.url, "library", "big", "latest", tmp_path / f"p{i}",
                 min_part_size=4_000_000, parts=16)
        except BaseException as e:  # noqa: BLE001 - collected and raised below
            errors.append(e)

    # (8 x 16 parts from one address: more than the defaults allow one client)
    with serving(str(bundle), "--trust", str(keys.pub), "--max-connections", "160",
                 "--max-per-client", "160", tmp=tmp_path) as served:
        threads = [threading.Thread(target=one, args=(i, served)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        status = Path(f"/proc/{served.proc.pid}/status").read_text()
        peak_kib = int(next(line.split()[1] for line in status.splitlines()
                            if line.startswith("VmHWM:")))
    assert not errors, errors
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB serving 8 x 64 MiB"
    digest = "sha256-" + hashlib.sha256(big).hexdigest()
    for i in range(8):
        assert hashlib.sha256((tmp_path / f"p{i}/blobs" / digest).read_bytes()).hexdigest() \
            == digest[7:]


def test_tls_and_the_plain_read_path(tmp_path: Path, store: Path, bundle_file: Path, keys: Keys,
                                     env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS (no sendfile through TLS: bytes read and written), then the portable paths (no
    pread, no sendfile) on plain HTTP: the same bytes either way."""
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "ca.pem"))  # for the pull client
    manifest = (store / "manifests/hf.co/org/repo/Q4_K_M").read_bytes()
    with serving(str(bundle_file), "--trust", str(keys.pub), "--tls-cert", str(certs / "srv.pem"),
                 "--tls-key", str(certs / "srv.key"), tmp=tmp_path) as served:
        assert served.url.startswith("https://")
        assert served.ready["models"][0]["pull"].startswith("ollama pull 127.0.0.1:")
        assert _pull(served, "org/repo", "Q4_K_M", tmp_path / "p1").manifest == manifest
        check = run(["check-registry", served.url, "--ca-cert", str(certs / "ca.pem")])
        assert check.exit_code == 0, check.output
        # a client that does not trust the certificate gets no answer
        plain = _raw(served, b"GET /v2/ HTTP/1.1\r\n\r\n")
        assert not plain.startswith(b"HTTP/1.1 200")
    with serving(str(bundle_file), "--trust", str(keys.pub), tmp=tmp_path,
                 env={"OLLAMA_BUNDLE_PORTABLE": "1"}) as served:
        assert _pull(served, "org/repo", "Q4_K_M", tmp_path / "p2").manifest == manifest
    assert _blobs(tmp_path / "p1") == _blobs(tmp_path / "p2")
    assert all(_blobs(store)[k] == v for k, v in _blobs(tmp_path / "p2").items())


def test_htpasswd_is_for_other_clients(tmp_path: Path, bundle_file: Path, keys: Keys,
                                       env: dict[str, str]) -> None:
    users = tmp_path / "htpasswd"
    users.write_text("alice:{SHA}" + base64.b64encode(hashlib.sha1(b"s3cret", usedforsecurity=False).digest()).decode()
                     + "\n")
    with serving(str(bundle_file), "--trust", str(keys.pub), "--htpasswd", str(users),
                 tmp=tmp_path) as served:
        status, headers, body = _request("GET", f"{served.url}/v2/")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
        for creds, want in [(b"alice:s3cret", 200), (b"alice:wrong", 401), (b"bob:s3cret", 401)]:
            auth = {"Authorization": "Basic " + base64.b64encode(creds).decode()}
            assert _request("GET", f"{served.url}/v2/_catalog", headers=auth)[0] == want
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds",
                              "alice:s3cret", f"docker://{served.netloc}/library/tiny:latest"],
                             capture_output=True, check=False)
        assert raw.returncode == 0, raw.stderr
        check = run(["check-registry", served.url, "library/tiny:latest"])
        assert check.exit_code == 5, check.output  # probed as Ollama pulls: anonymously
        with pytest.raises(PullError):
            _pull(served, "library/tiny", "latest", tmp_path / "p")
    assert '127.0.0.1 - alice [' in served.log()


@contextlib.contextmanager
def _http_server(tls: ssl.SSLContext | None = None) -> Iterator[httpserve.Server]:
    """The HTTP layer alone, in this process, answering `{}` to every request."""
    server = httpserve.Server(("127.0.0.1", 0), lambda m, t, h: Answer.json({}),
                              limits=httpserve.Limits(), access=lambda _: None, log=print,
                              tls=tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_only_http_1_0_and_1_1_are_served() -> None:
    """formats/serve-v1.md §2: 505 for any other version, with the status line and headers
    (http.server itself answers HTTP/0.9 with a bare body and takes HTTP/1.2 as 1.1)."""
    with _http_server() as server:
        for request in [b"GET /v2/\r\n\r\n", b"GET /v2/ HTTP/1.2\r\n\r\n",
                        b"GET /v2/ HTTP/1.9\r\n\r\n", b"GET /v2/ HTTP/2.0\r\n\r\n"]:
            got = _exchange(server.port, request)
            assert got.startswith(b"HTTP/1.1 505 "), (request, got[:100])
            assert b"Docker-Distribution-API-Version: registry/2.0" in got
        for version in (b"1.0", b"1.1"):
            got = _exchange(server.port, b"GET /v2/ HTTP/" + version + b"\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 200 "), got[:100]


def _client_hello() -> bytes:
    """The first bytes a TLS client sends (its ClientHello), from Python's own TLS client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="x")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("start", [b"", b"GET /v2/ HTTP/1.1\r\n", b"tls"],
                         ids=["request-line", "headers", "tls-handshake"])
def test_a_head_trickled_in_is_cut_at_the_head_timeout(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, start: bytes) -> None:
    """formats/serve-v1.md §5: the whole request head (and before it a TLS handshake) within
    the head timeout, however slowly its bytes come (a byte in time for every read is not
    enough)."""
    monkeypatch.setattr(httpserve, "HEAD_TIMEOUT", 1.0)
    tls, trickle = None, b"X" * 20
    if start == b"tls":
        make_certs(tmp_path)
        tls = httpserve.tls_context(tmp_path / "srv.pem", tmp_path / "srv.key")
        start, trickle = b"", _client_hello()
        assert len(trickle) > 21
    with _http_server(tls) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(start or trickle[:1])
        closed = False
        for i in range(1, 21):  # 20 x 0.25 s: five times the head timeout, a byte each time
            time.sleep(0.25)
            try:
                s.sendall(trickle[i : i + 1])
            except OSError:
                closed = True
                break
        if not closed:  # the last byte went out just now: is the connection still open?
            s.setblocking(False)
            try:
                closed = s.recv(65536) == b""
            except ConnectionResetError:
                closed = True
            except BlockingIOError:
                closed = False
        assert closed, "the server still waits for the rest of a head trickled in"


def test_a_retired_catalog_closes_when_an_answer_never_started_is_dropped() -> None:
    """formats/serve-v1.md §1 (SIGHUP): the old set's files are closed when the last answer
    reading from them ends, also one whose client left before its body began (the HTTP layer
    then closes the stream without taking a piece of it)."""
    catalog = serve.Catalog()
    stream = catalog.held(iter([memoryview(b"x")]))
    catalog.retire()
    assert not catalog.closed  # an answer still holds it
    getattr(stream, "close")()  # noqa: B009 - what httpserve does with every stream it ends
    assert catalog.closed


def test_a_replaced_model_leaves_no_signature_tag(tmp_path: Path, keys: Keys,
                                                  env: dict[str, str]) -> None:
    """formats/serve-v1.md §1 steps 4 and 5: of one repository and tag in two bundles only the
    later bundle's model is served, and so only its signature tag (the replaced model's was
    listed too, for a manifest no longer served, when the older bundle came first)."""
    paths = []
    for n in (1, 2):
        store = tmp_path / f"s{n}"
        make_model(store, "registry.ollama.ai/library/m/latest", [(MODEL, weights(5_000, seed=n))])
        paths.append(_export(store, tmp_path / f"b{n}.tar.zst", keys, "--all"))
    new = hashlib.sha256((tmp_path / "s2/manifests/registry.ollama.ai/library/m/latest")
                         .read_bytes()).hexdigest()
    old = hashlib.sha256((tmp_path / "s1/manifests/registry.ollama.ai/library/m/latest")
                         .read_bytes()).hexdigest()
    with serving(*map(str, paths), "--trust", str(keys.pub), tmp=tmp_path) as served:
        status, body, _ = _get(f"{served.url}/v2/library/m/tags/list")
        assert status == 200 and json.loads(body)["tags"] == ["latest", f"sha256-{new}.sig"]
        assert _get(f"{served.url}/v2/library/m/manifests/sha256-{old}.sig")[0] == 404


def test_a_connection_refused_under_tls_is_logged_with_no_bytes_sent(
        tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    """formats/serve-v1.md §5, §7: over the limit with TLS the connection is closed before the
    handshake, so its 503 line in the access log says no body bytes were sent."""
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    log = tmp_path / "access.log"
    with serving(str(bundle_file), "--trust", str(keys.pub), "--tls-cert", str(certs / "srv.pem"),
                 "--tls-key", str(certs / "srv.key"), "--max-per-client", "1",
                 "--access-log", str(log), tmp=tmp_path) as served:
        host, port = served.netloc.split(":")
        with socket.create_connection((host, int(port)), timeout=10):
            time.sleep(0.2)  # (not a timing assertion: lets the server count it)
            assert _raw(served, b"GET /v2/ HTTP/1.1\r\n\r\n") == b""
            for _ in range(50):
                if " 503 " in log.read_text():
                    break
                time.sleep(0.1)
    line = next(x for x in log.read_text().splitlines() if " 503 " in x)
    assert line.endswith(" 503 -"), line
