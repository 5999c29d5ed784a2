"""The recipe's S3 mode: scripts/registry-for-ollama with --s3-bucket runs Debian's
docker-registry on its S3 storage driver, with an S3-compatible server on another loopback
address (moto's server mode, the stand-in; tests/support/servers.py `run_moto`). Blob HEAD
and GET then answer a 307 to the storage host, as on a real S3 installation.

Checked here: a blob that goes up as an S3 multipart upload in several parts, `check-registry`
passing (Ollama's HEAD follows the 307), eight Ollama-style pulls at once that follow the 307
and get every byte from the storage host, a second push that finds every blob through the
307, and Distribution 2.8's S3 driver refusing a zero-length blob: one error naming the model
and the cause, the other models pushed. Beside them, a fake storage host whose signed URLs
redirect once more (which moto cannot do) checks that the probe's HEAD and Range request
follow redirects as Ollama's do.

Blob size: a multi-GiB blob would be the realistic case. Measured on the 2-core CI machine with
a 2 GiB blob: the streamed PATCH took 33 s, but the final PUT took 185 s with moto at a 9 GB
peak: the registry moves the finished upload with S3 UploadPartCopy in 32 MiB parts
(Distribution's multipartcopychunksize), and moto reads the whole object for each part. moto's
ranged GET also reads the whole object for each range, so eight pulls of 2 GiB in 16 parts each
would read 256 GiB. So the blob is the smallest that still exercises what matters: five
multipart parts of Distribution's S3 chunksize (10 MiB) with an odd tail, and above its 32 MiB
multipartcopythresholdsize, so that the move is a multipart copy too.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import random
import re
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest

from bundler import pullcheck
from bundler.distribution import Target
from bundler.registry import client as reg
from bundler.registry.transport import Transport
from tests.support.common import MANIFEST_V2, MODEL, REPO, TEMPLATE, Keys, make_model, run, weights
from tests.support.ollama_pull import pull
from tests.support.servers import S3_HOST, S3Server, _kill_leftovers, _request, free_port, run_moto

SCRIPT = REPO / "scripts" / "registry-for-ollama"
S3_CHUNK = 10 * 1024 * 1024  # Distribution 2.8's S3 driver: defaultChunkSize
# Five parts: the driver sends chunksize parts and folds a last piece smaller than chunksize
# into the part before it (s3-aws/s3.go, writer.flushPart), so 10, 10, 10, 10 and 15 MiB + odd
BIG_SIZE = 5 * S3_CHUNK + 5 * 1024 * 1024 + 12_345
PART = 8_000_000  # the Ollama-style pull's part size: eight ranged parts per pull
PULLS = 8
SYSTEM = "application/vnd.ollama.image.system"


@dataclass(frozen=True)
class S3Recipe:
    url: str  # the front (nginx), where colleagues pull from
    data: Path
    s3: S3Server

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          check=False, stdin=subprocess.DEVNULL, env=env)


@pytest.fixture(scope="module")
def s3_recipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Recipe]:
    """The script in S3 mode against moto on 127.0.0.2; AWS_CA_BUNDLE stays in the
    environment if the machine sets it (the script must drop it for docker-registry)."""
    root = tmp_path_factory.mktemp("s3-recipe")
    data = root / "data"
    with run_moto(root / "moto") as s3:
        port = free_port()
        started = _script("start", "--port", str(port), "--upstream-port", str(free_port()),
                          "--listen", "127.0.0.1", "--data", str(data),
                          "--s3-bucket", s3.bucket, "--s3-endpoint", s3.url)
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            assert f"S3 bucket {s3.bucket} at {s3.url}" in started.stdout
            yield S3Recipe(f"http://127.0.0.1:{port}", data, s3)
        finally:
            _script("stop", "--data", str(data))
            _kill_leftovers(data)


def _write_streamed(store: Path, size: int, seed: int) -> dict[str, object]:
    """A blob of `size` deterministic bytes, written and hashed in 1 MiB chunks."""
    blobs = store / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    rng, h, tmp = random.Random(seed), hashlib.sha256(), blobs / "incoming"
    with open(tmp, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    tmp.rename(blobs / f"sha256-{h.hexdigest()}")
    return {"digest": f"sha256:{h.hexdigest()}", "size": size}


def _big_model(store: Path) -> tuple[bytes, str]:
    """library/big:latest, whose weights blob is BIG_SIZE bytes (never held in memory)."""
    blob = _write_streamed(store, BIG_SIZE, seed=7)
    manifest = make_model(store, "registry.ollama.ai/library/big/latest",
                          [(TEMPLATE, b"{{ .Prompt }}")])
    doc = json.loads(manifest)  # put the big layer first, as Ollama's manifests have it
    doc["layers"].insert(0, {"mediaType": MODEL, **blob})
    raw = json.dumps(doc, separators=(",", ":")).encode()
    (store / "manifests/registry.ollama.ai/library/big/latest").write_bytes(raw)
    return raw, str(blob["digest"])


def _export(store: Path, out: Path, keys: Keys) -> Path:
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _upload_parts(s3: S3Server) -> dict[str, set[int]]:
    """Part numbers moto received, per multipart upload (from its request log)."""
    found: dict[str, set[int]] = {}
    for m in re.finditer(r'"PUT [^ ]*\?(?=[^ ]*partNumber=(\d+))(?=[^ ]*uploadId=([^& ]+))',
                         s3.log.read_text()):
        found.setdefault(m.group(2), set()).add(int(m.group(1)))
    return found


def test_s3_recipe_push_check_and_eight_pulls_through_the_307(
        s3_recipe: S3Recipe, tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = tmp_path / "store"
    raw, big = _big_model(store)
    bundle = _export(store, tmp_path / "big.tar.zst", keys)

    r = run(["import", str(bundle), "--to-registry", s3_recipe.url + "/team", "--trust",
             str(keys.pub), "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["check"]["ok"] is True, doc["check"]
    assert doc["blobsUploaded"] == 3
    # the weights went up as one S3 multipart upload of five parts
    assert 5 in map(len, _upload_parts(s3_recipe.s3).values())

    # the registry redirects blob HEAD and GET to the storage host
    status, headers, _ = _request("HEAD", f"{s3_recipe.url}/v2/team/big/blobs/{big}")
    assert status == 307 and urlsplit(headers["Location"]).hostname == s3_recipe.s3.host

    r = run(["check-registry", s3_recipe.url, "team/big:latest"])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "will work" in r.stdout and s3_recipe.s3.host in r.stdout

    # a second push finds every blob in place through the 307 and uploads nothing
    r = run(["import", str(bundle), "--to-registry", s3_recipe.url + "/team", "--trust",
             str(keys.pub), "--json"])
    assert r.exit_code == 0, r.stderr
    again = json.loads(r.stdout)
    assert (again["blobsUploaded"], again["blobsPresent"]) == (0, 3)

    def one_pull(i: int) -> Path:
        dest = tmp_path / f"pulled-{i}"
        result = pull(s3_recipe.url, "team", "big", "latest", dest, min_part_size=PART,
                      timeout=120)
        ranged = result.ranged()  # all from the storage host, by its presigned URLs
        assert {urlsplit(e.url).hostname for e in ranged} == {s3_recipe.s3.host}
        assert all(e.status == 206 for e in ranged)
        parts = [e for e in ranged if big.removeprefix("sha256:") in e.url]
        assert len(parts) == 8 and result.parts[big] == 8
        heads = [e for e in result.exchanges if e.method == "HEAD"]
        assert heads[0].status == 307 and heads[-1].status == 200  # the HEAD followed it
        return dest

    with ThreadPoolExecutor(PULLS) as pool:
        pulled = list(pool.map(one_pull, range(PULLS)))
    for dest in pulled:
        assert (dest / "manifests" / s3_recipe.netloc / "team/big/latest").read_bytes() == raw
        for d in [*json.loads(raw)["layers"], json.loads(raw)["config"]]:
            name = "sha256-" + d["digest"][7:]
            assert _sha256(dest / "blobs" / name) == d["digest"]
            assert (dest / "blobs" / name).stat().st_size == d["size"]
        assert sorted(p.name for p in (dest / "blobs").iterdir()) == sorted(
            "sha256-" + d["digest"][7:] for d in [*json.loads(raw)["layers"],
                                                   json.loads(raw)["config"]])


def test_a_zero_length_blob_is_refused_by_name_and_the_other_models_go_up(
        s3_recipe: S3Recipe, tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    """Distribution 2.8's S3 driver completes a multipart upload with no parts for an empty
    blob, which S3 refuses (MalformedXML); the registry answers 500 to the final PUT."""
    store = tmp_path / "store"
    tiny = make_model(store, "registry.ollama.ai/library/tiny/latest",
                      [(MODEL, weights(200_000, seed=5)), (TEMPLATE, b"{{ .Prompt }}")])
    make_model(store, "registry.ollama.ai/library/hollow/latest",
               [(MODEL, weights(100_000, seed=6)), (SYSTEM, b"")])
    make_model(store, "registry.ollama.ai/library/zeta/latest",
               [(MODEL, weights(100_000, seed=8))])
    bundle = _export(store, tmp_path / "models.tar.zst", keys)

    r = run(["import", str(bundle), "--to-registry", s3_recipe.url + "/zero", "--trust",
             str(keys.pub)])
    assert r.exit_code == 5, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert "hollow" in errors[0] and "zero-length blob" in errors[0]
    assert "MalformedXML" in errors[0] and "2 of 3" in errors[0]
    assert "failed 6 times" not in r.stderr

    def manifest(repo: str) -> tuple[int, bytes]:
        status, _, body = _request("GET", f"{s3_recipe.url}/v2/zero/{repo}/manifests/latest",
                                   headers={"Accept": MANIFEST_V2})
        return status, body

    assert manifest("tiny") == (200, tiny)
    assert manifest("zeta")[0] == 200
    assert manifest("hollow")[0] == 404  # no tag without its blobs
    pull(s3_recipe.url, "zero", "tiny", "latest", tmp_path / "pulled", min_part_size=50_000)


def test_script_refuses_s3_settings_ollama_cannot_pull_through(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    same = _script("start", "--listen", "10.1.2.3", "--data", data, "--s3-bucket", "models",
                   "--s3-endpoint", "http://10.1.2.3:9000")
    assert same.returncode == 1 and "has the registry's hostname" in same.stderr, same.stderr
    lone = _script("start", "--data", data, "--s3-endpoint", "http://s3.example:9000")
    assert lone.returncode == 1 and "need --s3-bucket" in lone.stderr, lone.stderr
    bad = _script("start", "--data", data, "--s3-bucket", "Models_1")
    assert bad.returncode == 1 and "not an S3 bucket name" in bad.stderr, bad.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was written


class _Storage(http.server.BaseHTTPRequestHandler):
    """A storage host whose signed URLs redirect once more (as a CDN in front of a bucket
    may): /signed/x answers 302 to /real/x, which serves BLOB with Range. moto cannot do
    this, so a fake stands beside it. Records the requests it got."""

    seen: ClassVar[list[tuple[str, str, str | None, str | None]]] = []

    def _answer(self, body: bool) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Range"),
                          self.headers.get("Authorization")))
        if self.path.startswith("/signed/"):
            self.send_response(302)
            self.send_header("Location", "/real/" + self.path.removeprefix("/signed/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range") or "")
        data = BLOB[int(match[1]):int(match[2]) + 1] if match else BLOB
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Registry(http.server.BaseHTTPRequestHandler):
    """A registry on S3-like storage: the manifest, and blob HEAD/GET as a 307 elsewhere."""

    storage = ""

    def do_GET(self) -> None:
        if "/manifests/" in self.path:
            body = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2,
                               "config": {"mediaType": "x", "digest": BLOB_DIGEST, "size": 1},
                               "layers": [{"mediaType": MODEL, "digest": BLOB_DIGEST,
                                           "size": len(BLOB)}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", MANIFEST_V2)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(307)
        self.send_header("Location", f"{self.storage}/signed/{BLOB_DIGEST}?X-Amz-Signature=s")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


BLOB = weights(5000, seed=9)
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


@contextlib.contextmanager
def _serve(host: str, handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_check_registry_follows_redirects_on_head_and_range_as_ollama_does() -> None:
    """Ollama's blob HEAD and its Range parts go through Go's default client, which follows
    redirects to any host with the method and headers kept; only the direct-URL GET stops at
    the first redirect to another host (server/download.go)."""
    _Storage.seen.clear()
    with _serve(S3_HOST, _Storage) as storage:
        _Registry.storage = storage
        with _serve("127.0.0.1", _Registry) as url:
            client = reg.Client(Transport(), Target.parse(url), None)
            check = pullcheck.check_registry(client, "team/m", "latest")
    assert check.ok, check.findings
    assert any(f"from {urlsplit(storage).netloc}, after a redirect" in f
               for f in check.findings), check.findings
    # HEAD followed 307 then 302; the direct URL is the signed one; its Range GET followed
    # the 302 with the Range kept, and no credentials went to the storage host
    assert [(m, p.split("?")[0], r) for m, p, r, _ in _Storage.seen] == [
        ("HEAD", f"/signed/{BLOB_DIGEST}", None), ("HEAD", f"/real/{BLOB_DIGEST}", None),
        ("GET", f"/signed/{BLOB_DIGEST}", "bytes=0-0"),
        ("GET", f"/real/{BLOB_DIGEST}", "bytes=0-0")]
    assert all(auth is None for *_, auth in _Storage.seen)
