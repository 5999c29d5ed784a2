"""An Ollama-style `pull` for tests, rebuilt on the standard library from Ollama's
server/images.go (PullModel), server/download.go and x/transfer/download.go: the classic (GGUF)
path, and the x/transfer path Ollama takes for models with `application/vnd.ollama.image.tensor`
layers (safetensors/MLX), see the end of this docstring.

What it copies from Ollama, because that is what a registry must survive:

- the manifest GET sends exactly `Accept: application/vnd.docker.distribution.manifest.v2+json`;
- for each layer, then the config: a blob already at blobs/sha256-<hex> is skipped blindly;
  otherwise HEAD (redirects followed) gives the size from Content-Length;
- the *direct URL* is resolved with a GET on the blob URL that follows redirects only to the same
  hostname (port ignored, at most 10) and stops at the first redirect to another hostname; only
  a final 307 or 200 is accepted, and the answer's Location header (resolved against the URL
  asked) is the direct URL, so a 200 without one fails with "http: no Location header in
  response";
- the blob is then fetched from the direct URL in parallel `Range: bytes=a-b` parts, without
  auth, following redirects as Go's default client does (Range sent again), writing each response's first part-size bytes at the part's offset *without checking the
  status* (a server that ignores Range corrupts the file and the pull ends in a digest mismatch);
- sha256 check, rename from `-partial`, and the manifest's raw bytes written last to
  manifests/<host:port>/<namespace>/<model>/<tag>.

The x/transfer path (any layer of media type application/vnd.ollama.image.tensor): a blob is
skipped if it exists with the expected size; otherwise a GET on the blob URL whose client
follows no redirect: 200 keeps that URL (so a plain registry works), a 301, 302 or 307 gives the
Location if its host:port differs, else it is followed (at most 10), anything else fails; then
one GET of that URL, which must answer 200 or 206; sha256 and size are checked while it is
written to <blob>.tmp, then renamed. No HEAD and no Range parts.

Differences: no auth (the registries here have none), no retries or resume, and parts are sized
so that there are at most `parts` of them (Ollama's Total/16 can give a 17th tail part). Sizes
are parameters so that small test blobs still download in several parts.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_TENSOR = "application/vnd.ollama.image.tensor"
USER_AGENT = "ollama/0.0.0-test (amd64 linux) Go/go1.24"
TRANSFER_USER_AGENT = "ollama-transfer/1.0"
DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
NUM_PARTS = 16
MIN_PART_SIZE = 100 * 1000 * 1000      # Ollama: format.MegaByte units, decimal
MAX_PART_SIZE = 1000 * 1000 * 1000
COPY_CHUNK = 1 << 20


class PullError(Exception):
    """The pull failed; the message says where and why."""


@dataclass(frozen=True)
class Exchange:
    """One HTTP request the client made, for tests to inspect."""

    method: str
    url: str
    status: int
    range: str | None = None
    location: str | None = None


@dataclass
class PullResult:
    manifest: bytes
    manifest_path: Path
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    parts: dict[str, int] = field(default_factory=dict)
    exchanges: list[Exchange] = field(default_factory=list)
    path: str = "gguf"  # or "tensor": x/transfer

    def ranged(self, digest: str | None = None) -> list[Exchange]:
        """The ranged GETs (optionally for one blob, by its digest in the URL)."""
        return [e for e in self.exchanges if e.range is not None
                and (digest is None or e.url.split("?")[0].endswith(digest))]


class _Client:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def open(self, method: str, url: str,
             headers: Mapping[str, str]) -> tuple[http.client.HTTPConnection,
                                                  http.client.HTTPResponse]:
        """Send one request (no redirects); the caller reads the body and closes."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PullError(f"unsupported URL {url!r}")
        conn_type = (http.client.HTTPSConnection if parts.scheme == "https"
                     else http.client.HTTPConnection)
        conn = conn_type(parts.hostname, parts.port, timeout=self.timeout)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request(method, path, headers=dict(headers))
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise PullError(f"{method} {url}: {e}") from e
        with self._lock:
            self.exchanges.append(Exchange(method, url, resp.status, headers.get("Range"),
                                           resp.getheader("Location")))
        return conn, resp

    def fetch(self, method: str, url: str, headers: Mapping[str, str],
              read_body: bool = True) -> tuple[int, http.client.HTTPMessage, bytes, str]:
        """Go's default policy: follow up to 10 redirects to anywhere; returns the final
        status, headers, body and URL."""
        for _ in range(MAX_REDIRECTS + 1):
            conn, resp = self.open(method, url, headers)
            try:
                location = resp.getheader("Location")
                if resp.status in REDIRECTS and location:
                    url = urljoin(url, location)  # GET and HEAD keep their method
                    continue
                body = resp.read() if read_body and method != "HEAD" else b""
                return resp.status, resp.headers, body, url
            except (OSError, http.client.HTTPException) as e:
                raise PullError(f"{method} {url}: {e}") from e
            finally:
                conn.close()
        raise PullError(f"{method} {url}: stopped after {MAX_REDIRECTS} redirects")


def direct_url(client: _Client, blob_url: str, headers: Mapping[str, str]) -> str:
    """Ollama's direct-URL resolution (download.go): a GET that follows redirects to the same
    hostname only, then the Location of a final 307 or 200."""
    origin = urlsplit(blob_url).hostname
    url = blob_url
    redirects = 0
    while True:
        conn, resp = client.open("GET", url, headers)
        conn.close()  # like Ollama: only the headers matter, the body is never read
        location = resp.getheader("Location")
        if resp.status in REDIRECTS and location:
            target = urljoin(url, location)
            if urlsplit(target).hostname == origin:
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise PullError("maximum redirects exceeded (10) for directURL")
                url = target
                continue
            # a redirect to another hostname: stop and use this response as the final one
        if resp.status not in (200, 307):
            raise PullError(f"GET {url}: unexpected status code {resp.status}")
        if not location:
            raise PullError(f"GET {url}: http: no Location header in response")
        return urljoin(url, location)


def plan_parts(total: int, parts: int = NUM_PARTS, min_size: int = MIN_PART_SIZE,
               max_size: int = MAX_PART_SIZE) -> list[tuple[int, int]]:
    """(offset, size) of each part: total/parts clamped to [min_size, max_size]."""
    size = min(max(-(-total // parts), min_size), max_size)
    return [(offset, min(size, total - offset)) for offset in range(0, total, max(size, 1))]


def _download_part(client: _Client, url: str, fd: int, offset: int, size: int) -> None:
    # No Authorization and no Ollama User-Agent go to the direct URL. http.DefaultClient
    # follows up to 10 redirects anywhere, sending the Range header again each time.
    headers = {"Range": f"bytes={offset}-{offset + size - 1}"}
    for _ in range(MAX_REDIRECTS + 1):
        conn, resp = client.open("GET", url, headers)
        location = resp.getheader("Location")
        if resp.status not in REDIRECTS or not location:
            break
        conn.close()
        url = urljoin(url, location)
    else:
        raise PullError(f"GET {url}: stopped after {MAX_REDIRECTS} redirects")
    try:
        done = 0
        while done < size:  # the status is not checked, as in Ollama (io.CopyN)
            chunk = resp.read(min(COPY_CHUNK, size - done))
            if not chunk:
                raise PullError(f"GET {url} (Range bytes={offset}-{offset + size - 1}): "
                                f"body ended after {done} of {size} bytes (status {resp.status})")
            os.pwrite(fd, chunk, offset + done)
            done += len(chunk)
    except (OSError, http.client.HTTPException) as e:
        raise PullError(f"GET {url}: {e}") from e
    finally:
        conn.close()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_component(kind: str, value: str) -> None:
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise PullError(f"invalid {kind} {value!r}")


def _transfer_resolve(client: _Client, url: str) -> str:
    """x/transfer/download.go resolve: a GET whose client follows no redirect; 200 keeps the
    URL, a 301, 302 or 307 to another host:port is the download URL, to the same host:port it
    is followed (at most 10); anything else fails. The body is drained (read and dropped)."""
    for _ in range(MAX_REDIRECTS):
        conn, resp = client.open("GET", url, {"User-Agent": TRANSFER_USER_AGENT})
        try:
            resp.read()
        finally:
            conn.close()
        location = resp.getheader("Location")
        if resp.status == 200:
            return url
        if resp.status in (301, 302, 307):
            if not location:
                raise PullError(f"GET {url}: {resp.status} without Location")
            target = urljoin(url, location)
            if urlsplit(target).netloc != urlsplit(url).netloc:
                return target
            url = target
            continue
        raise PullError(f"GET {url}: status {resp.status}")
    raise PullError("too many redirects")


def _transfer_blob(client: _Client, blob_url: str, final: Path, digest: str,
                   size: int) -> None:
    """x/transfer/download.go downloadOnce and save: one GET of the resolved URL (no Range
    for a fresh download), 200 or 206 required, sha256 and size checked, then the rename."""
    url = _transfer_resolve(client, blob_url)
    conn, resp = client.open("GET", url, {"User-Agent": TRANSFER_USER_AGENT})
    tmp = final.parent / (final.name + ".tmp")
    try:
        if resp.status not in (200, 206):
            raise PullError(f"GET {url}: status {resp.status}")
        h = hashlib.sha256()
        written = 0
        with open(tmp, "wb") as out:
            while chunk := resp.read(COPY_CHUNK):
                out.write(chunk)
                h.update(chunk)
                written += len(chunk)
    except (OSError, http.client.HTTPException) as e:
        tmp.unlink(missing_ok=True)
        raise PullError(f"GET {url}: {e}") from e
    finally:
        conn.close()
    if "sha256:" + h.hexdigest() != digest:
        tmp.unlink()
        raise PullError("digest mismatch")
    if written != size:
        tmp.unlink()
        raise PullError("size mismatch")
    tmp.replace(final)


def pull(base_url: str, namespace: str, model: str, tag: str, store_dir: Path | str, *,
         parts: int = NUM_PARTS, min_part_size: int = MIN_PART_SIZE,
         max_part_size: int = MAX_PART_SIZE, workers: int = NUM_PARTS,
         timeout: float = 30.0) -> PullResult:
    """Pull <base_url host>/<namespace>/<model>:<tag> into the Ollama store at store_dir."""
    for kind, value in (("namespace", namespace), ("model", model), ("tag", tag)):
        _check_component(kind, value)
    base = urlsplit(base_url)
    if not base.netloc:
        raise PullError(f"invalid base URL {base_url!r}")
    _check_component("host", base.netloc)
    root = base_url.rstrip("/")
    store = Path(store_dir)
    client = _Client(timeout)
    headers = {"User-Agent": USER_AGENT}

    status, _, raw, url = client.fetch(
        "GET", f"{root}/v2/{namespace}/{model}/manifests/{tag}",
        {**headers, "Accept": MANIFEST_V2})
    if status != 200:
        raise PullError(f"GET {url}: pull model manifest: status {status}: "
                        f"{raw[:500].decode(errors='replace')}")
    try:
        manifest: Any = json.loads(raw)
        descriptors = [*manifest["layers"], manifest["config"]]
        digests = [str(d["digest"]) for d in descriptors]
        sizes = {str(d["digest"]): int(d["size"]) for d in descriptors}
        tensor = any(d.get("mediaType") == MEDIA_TYPE_TENSOR for d in descriptors)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PullError(f"GET {url}: not a manifest: {e}") from e
    result = PullResult(raw, store / "manifests" / base.netloc / namespace / model / tag,
                        exchanges=client.exchanges, path="tensor" if tensor else "gguf")

    blobs = store / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for digest in dict.fromkeys(digests):
        match = DIGEST.match(digest)
        if not match:
            raise PullError(f"invalid digest {digest!r} in manifest")
        final = blobs / f"sha256-{match.group(1)}"
        blob_url = f"{root}/v2/{namespace}/{model}/blobs/{digest}"
        if tensor:  # server/images.go PullModel: hasTensorLayers -> pullWithTransfer
            if final.exists() and final.stat().st_size == sizes[digest]:
                result.skipped.append(digest)
            else:
                _transfer_blob(client, blob_url, final, digest, sizes[digest])
                result.downloaded.append(digest)
            continue
        if final.exists():
            result.skipped.append(digest)
            continue
        status, head, _, url = client.fetch("HEAD", blob_url, headers)
        if status != 200:
            raise PullError(f"HEAD {url}: status {status}")
        length = head.get("Content-Length")
        if length is None or not length.isdigit():
            raise PullError(f"HEAD {url}: no Content-Length")
        total = int(length)
        direct = direct_url(client, blob_url, headers)
        plan = plan_parts(total, parts, min_part_size, max_part_size)
        result.parts[digest] = len(plan)
        partial = blobs / f"sha256-{match.group(1)}-partial"
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, total)
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(plan)))) as pool:
                for future in [pool.submit(_download_part, client, direct, fd, off, size)
                               for off, size in plan]:
                    future.result()
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        os.close(fd)
        got = _sha256_file(partial)
        if got != match.group(1):
            partial.unlink()
            raise PullError(f"digest mismatch, file must be downloaded again: "
                            f"want {digest}, got sha256:{got}")
        partial.replace(final)
        result.downloaded.append(digest)

    target = result.manifest_path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{tag}.tmp-{os.getpid()}"
    tmp.write_bytes(raw)
    tmp.replace(target)
    return result
