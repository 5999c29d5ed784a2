"""A Docker/OCI distribution client over a Transport: auth challenges (Basic, Bearer),
retries with backoff, blob uploads (monolithic and chunked with resume), manifests."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urljoin, urlsplit

from bundler.digest import Digest
from bundler.distribution import Target
from bundler.errors import NetworkError
from bundler.progress import OnEvent, no_events
from bundler.registry.transport import RefusedError, Response, TlsError, Transport

MAX_TRIES = 6
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10  # Go's default http.Client: "stopped after 10 redirects"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """A WWW-Authenticate value as (scheme, {param: value})."""
    kind, _, params = header.partition(" ")
    return kind, dict(_CHALLENGE_PARAM.findall(params))


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


class RegistryError(NetworkError):
    pass


class EmptyBlobError(RegistryError):
    """The registry cannot store a zero-length blob: Distribution 2.x's S3 storage driver
    completes a multipart upload with no parts, which S3 refuses as MalformedXML, and answers
    500 to the final PUT (registry/storage/driver/s3-aws/s3.go, writer.Commit; Distribution 3
    uploads one empty part instead)."""


def describe_error(resp: Response, action: str) -> RegistryError:
    """The registry's own words (OCI error JSON) for a failed request."""
    detail = f"HTTP {resp.status}"
    try:
        errors = json.loads(resp.body)["errors"]
        detail += ": " + "; ".join(f"{e.get('code')}: {e.get('message', '')}" for e in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    hints = {401: "the registry wants credentials: --username and --password-stdin, or "
                  "docker login", 403: "these credentials may not push here",
             404: "check the registry address and namespace"}
    return RegistryError(f"{action} failed: {detail}", hint=hints.get(resp.status))


class Client:
    """Talks to one registry. Retries idempotent work on 5xx, 429 and dropped connections
    (exponential backoff with jitter, honouring Retry-After); answers auth challenges."""

    def __init__(self, transport: Transport, target: Target, credentials: Credentials | None,
                 *, on_event: OnEvent = no_events, sleep: Callable[[float], None] = time.sleep,
                 ) -> None:
        self.transport, self.target, self._credentials = transport, target, credentials
        self._on_event, self._sleep = on_event, sleep
        self._tokens: dict[str, str] = {}  # scope -> Authorization value
        self._basic = False
        self._reached = False  # once the registry answered, a refused connection is retried

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        """True once the registry asked for credentials."""
        return bool(self._tokens) or self._basic

    def url(self, path: str) -> str:
        return self.target.base + path

    def own(self, url: str) -> bool:
        """Whether `url` is on the registry itself: its scheme, host and port. Only there do
        credentials and tokens go (never to another host, never in clear to a registry
        reached over HTTPS)."""
        return _origin(url) == _origin(self.target.base)

    def _authorization(self, scope: str, url: str | None = None) -> dict[str, str]:
        if url is not None and not self.own(url):
            return {}
        if scope in self._tokens:
            return {"Authorization": self._tokens[scope]}
        if self._basic and self._credentials is not None:
            return {"Authorization": self._credentials.basic()}
        return {}

    def send(self, method: str, url: str, *, scope: str, headers: Mapping[str, str] | None = None,
             body: bytes | bytearray | memoryview | None = None, stream: bool = False) -> Response:
        """A request with auth and retries; returns whatever status the registry gave last.
        To a URL off the registry (`own`), no credentials are sent, and a 401 is answered."""
        authed = not self.own(url)
        for attempt in range(1, MAX_TRIES + 1):
            all_headers = {**self._authorization(scope, url), **(headers or {})}
            try:
                resp = self.transport.request(method, url, headers=all_headers, body=body,
                                              stream=stream)
            except TlsError:
                raise
            except NetworkError as e:
                if isinstance(e, RefusedError) and not self._reached:
                    raise  # nothing listens where the user said, from the start: say so now
                if attempt == MAX_TRIES:
                    raise
                self._wait(attempt, None, f"{e.message}; retrying")
                continue
            self._reached = True
            if resp.status == 401 and not authed:
                authed = True
                self._authenticate(resp, scope)
                continue
            if resp.status in _RETRY_STATUS and attempt < MAX_TRIES:
                self._wait(attempt, resp.header("Retry-After"),
                           f"{method} {url.split('?')[0]}: HTTP {resp.status}; retrying")
                continue
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, attempt: int, retry_after: str | None, why: str) -> None:
        delay = min(30.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random())  # noqa: S311
        if retry_after and retry_after.strip().isdigit():
            delay = min(120.0, float(retry_after.strip()))
        self._on_event(f"{why} in {delay:.1f} s")
        self._sleep(delay)

    def _authenticate(self, resp: Response, scope: str) -> None:
        challenge = resp.header("WWW-Authenticate") or ""
        kind, _, params_text = challenge.partition(" ")
        if kind.lower() == "basic":
            if self._credentials is None:
                raise describe_error(resp, "authentication")
            self._basic = True
            return
        if kind.lower() != "bearer":
            raise describe_error(resp, "authentication")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.get("realm")
        if not realm:
            raise RegistryError("the registry's Bearer challenge has no realm")
        where = urlsplit(realm)
        registry_host = urlsplit(self.target.base).hostname
        if self._credentials is not None and where.scheme != "https" and (
                where.hostname != registry_host or self.target.scheme != "http"):
            # in clear, credentials go only to the host of a plain-HTTP registry the user
            # named himself (its token service may listen on another port)
            raise RegistryError(
                f"the registry sends its token requests to {where.scheme}://{where.netloc}, "
                "which is not HTTPS: the credentials are not sent there",
                hint="serve the token endpoint over HTTPS")
        query = {"scope": scope} if scope else {}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"Authorization": self._credentials.basic()} if self._credentials else {}
        token_resp = self.transport.request(
            "GET", realm + ("&" if "?" in realm else "?") + urlencode(query), headers=headers)
        if token_resp.status != 200:
            raise describe_error(token_resp, "getting a registry token")
        try:
            doc = json.loads(token_resp.body)
            token = doc.get("token") or doc["access_token"]
        except (ValueError, KeyError, TypeError):
            raise RegistryError("the token server's answer holds no token") from None
        self._tokens[scope] = f"Bearer {token}"

    # -- the API -----------------------------------------------------------------------------

    def _follow(self, resp: Response, method: str, url: str, scope: str, *,
                headers: Mapping[str, str] | None = None, stream: bool = False) -> Response:
        """Follow redirects (HEAD stays HEAD, GET stays GET), at most MAX_REDIRECTS, with
        credentials only to the registry itself, never to another host or in clear. A
        registry on S3 storage answers blob HEAD and GET with a 307 to the storage host
        (Distribution's registry/storage/blobserver.go)."""
        for _ in range(MAX_REDIRECTS):
            location = resp.header("Location")
            if resp.status not in _REDIRECT_STATUS or not location:
                break
            resp.close()
            url = urljoin(url, location)
            resp = (self.send(method, url, scope=scope, stream=stream, headers=headers)
                    if self.own(url) else self.transport.request(method, url, stream=stream,
                                                                 headers=headers))
        return resp

    def has_blob(self, repo: str, digest: Digest, size: int) -> bool:
        url = self.url(f"/v2/{repo}/blobs/{digest}")
        resp = self._follow(self.send("HEAD", url, scope=_pull(repo)), "HEAD", url, _pull(repo))
        if resp.status == 200:
            return resp.header("Content-Length") in (None, str(size))
        if resp.status == 404:
            return False
        raise describe_error(resp, f"checking blob {digest.short} in {repo}")

    def mount(self, repo: str, digest: Digest, source: str) -> bool:
        """Cross-repository mount; True if the registry linked the blob (201)."""
        query = urlencode({"mount": str(digest), "from": source})
        resp = self.send("POST", self.url(f"/v2/{repo}/blobs/uploads/?{query}"),
                         scope=_push(repo, source), headers={"Content-Length": "0"})
        if resp.status == 201:
            return True
        if resp.status == 202:  # an upload session was opened instead: close it
            if resp.header("Location"):
                self.cancel_upload(self._location(resp))
            return False
        raise describe_error(resp, f"mounting blob {digest.short} into {repo}")

    def start_upload(self, repo: str) -> str:
        resp = self.send("POST", self.url(f"/v2/{repo}/blobs/uploads/"), scope=_push(repo),
                         headers={"Content-Length": "0"})
        if resp.status != 202 or not resp.header("Location"):
            raise describe_error(resp, f"starting an upload to {repo}")
        return self._location(resp)

    def _location(self, resp: Response) -> str:
        """The upload URL a registry answered with. It may be on another host (then it gets
        no credentials, `own`), but not in clear from a registry reached over HTTPS."""
        location = urljoin(resp.url, resp.header("Location") or "")
        if self.target.scheme == "https" and urlsplit(location).scheme != "https":
            raise RegistryError(
                f"the registry at {self.target.base} names an upload URL over plain HTTP "
                f"({_redact(location)}): nothing is sent there",
                hint="the registry (or a proxy in front of it) must give HTTPS upload URLs")
        return location

    def upload(self, repo: str, digest: Digest, size: int, chunks: Iterable[bytes | memoryview],
               *, chunk_size: int) -> None:
        """Upload a blob: one PUT if it fits one chunk, else PATCHes of chunk_size bytes that
        resume from the registry's reported Range after a failure, then the final PUT with the
        digest. `chunks` must end (raising if the content is wrong) before the final PUT."""
        location = self.start_upload(repo)
        scope = _push(repo)
        min_chunk = chunk_size
        buffer = bytearray()
        offset = 0
        try:
            for chunk in chunks:
                buffer += chunk
                while len(buffer) >= min_chunk and offset + len(buffer) < size:
                    location, min_chunk = self._patch(repo, location, offset, buffer, min_chunk)
                    offset += len(buffer)
                    buffer.clear()
            # the last part goes with the final PUT (all of a small blob: one request)
            if offset == 0:  # all of it is in memory: after a failure, start it again
                location = self._put_whole(repo, digest, size, location, bytes(buffer))
                return
            query = ("&" if "?" in location else "?") + urlencode({"digest": str(digest)})
            resp = self.send("PUT", location + query, scope=scope, body=bytes(buffer),
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Length": str(len(buffer))})
            self._check_committed(resp, repo, digest, size)
        except BaseException:
            self.cancel_upload(location)
            raise

    def _put_whole(self, repo: str, digest: Digest, size: int, location: str,
                   data: bytes) -> str:
        """The whole blob in one PUT. A registry may keep part of a body whose request failed
        (Distribution then refuses the session), so each retry starts a new upload."""
        scope = _push(repo)
        for attempt in range(1, MAX_TRIES + 1):
            query = ("&" if "?" in location else "?") + urlencode({"digest": str(digest)})
            failure: Response | NetworkError | None = None
            try:
                resp = self.transport.request("PUT", location + query, body=data, headers={
                    **self._authorization(scope, location), "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(data))})
            except TlsError:
                raise
            except NetworkError as e:
                failure = e
            else:
                if resp.status == 401 and self.own(location):
                    self._authenticate(resp, scope)
                elif resp.status in _RETRY_STATUS:
                    failure = resp
                    if size == 0 and resp.status == 500 and attempt > 1:  # twice: no hiccup
                        self.cancel_upload(location)
                        raise EmptyBlobError(
                            f"the registry cannot store the zero-length blob {digest.short} "
                            f"(HTTP 500 to its final PUT, {attempt} times), as Distribution "
                            "2.x on S3 storage cannot: its driver completes a multipart "
                            "upload with no parts, which S3 refuses as MalformedXML",
                            hint="run the registry on Distribution 3 (it stores empty blobs "
                                 "on S3) or on filesystem storage, or re-create the model "
                                 "without its empty layer")
                else:
                    self._check_committed(resp, repo, digest, size)
                    return location
            if attempt == MAX_TRIES:
                break
            if failure is not None:
                retry_after = failure.header("Retry-After") if isinstance(failure, Response) else None
                self._wait(attempt, retry_after, f"uploading blob {digest.short} to {repo}: "
                                                 f"{_why(failure)}; starting it again")
                if self.has_blob(repo, digest, size):
                    return location  # it was committed; the answer was lost
            self.cancel_upload(location)
            location = self.start_upload(repo)
        raise RegistryError(f"uploading blob {digest.short} to {repo} failed {MAX_TRIES} times",
                            hint="run the import again")

    def upload_streamed(self, repo: str, digest: Digest, size: int,
                        body: Iterable[memoryview], reread: Callable[[int], Iterable[memoryview]],
                        ) -> None:
        """Upload a blob that can be read again: the whole of it in one streamed PATCH, then
        the final PUT with the digest. After a failure, continue from the registry's reported
        Range with the content read again (`reread(offset)`), or start a new upload if the
        registry lost the session. `body` and every `reread` must end (raising if the content
        is wrong) before the final PUT."""
        scope = _push(repo)
        location = self.start_upload(repo)
        try:
            offset, source, attempt = 0, body, 0
            while offset < size:
                attempt += 1
                outcome = self._patch_stream(repo, location, offset, size, source)
                if isinstance(outcome, str):
                    location = outcome
                    break
                if attempt == MAX_TRIES:
                    raise RegistryError(f"uploading blob {digest.short} to {repo} failed "
                                        f"{MAX_TRIES} times", hint="run the import again")
                if outcome is not None:
                    retry_after = (outcome.header("Retry-After")
                                   if isinstance(outcome, Response) else None)
                    self._wait(attempt, retry_after, f"uploading blob {digest.short} to "
                                                     f"{repo}: {_why(outcome)}; resuming")
                try:
                    offset = self._upload_offset(location, scope)
                except RegistryError:  # the registry lost track of this upload: start anew
                    self.cancel_upload(location)
                    location, offset = self.start_upload(repo), 0
                source = reread(offset)
            query = ("&" if "?" in location else "?") + urlencode({"digest": str(digest)})
            resp = self.send("PUT", location + query, scope=scope, body=b"",
                             headers={"Content-Length": "0"})
            self._check_committed(resp, repo, digest, size)
        except BaseException:
            self.cancel_upload(location)
            raise

    def _check_committed(self, resp: Response, repo: str, digest: Digest, size: int) -> None:
        """The answer to the final PUT. A 404 after a retry means an earlier try committed
        the blob and its answer was lost: then the blob is there."""
        if resp.status == 404 and self.has_blob(repo, digest, size):
            return
        if resp.status != 201:
            raise describe_error(resp, f"uploading blob {digest.short} to {repo}")
        if resp.header("Docker-Content-Digest") not in (None, str(digest)):
            raise RegistryError(f"the registry stored blob {digest.short} under another "
                                f"digest ({resp.header('Docker-Content-Digest')})")

    def _patch_stream(self, repo: str, location: str, offset: int, size: int,
                      source: Iterable[memoryview]) -> str | Response | NetworkError | None:
        """One PATCH of bytes offset..size-1 streamed from `source`: the next Location on
        success, else what went wrong (None: the registry wanted credentials, now given)."""
        scope = _push(repo)
        try:
            resp = self.transport.request("PATCH", location, body=source, headers={
                **self._authorization(scope, location), "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{size - 1}", "Content-Length": str(size - offset)})
        except TlsError:
            raise
        except NetworkError as e:
            return e
        if resp.status == 202:
            return self._location(resp)
        if resp.status == 401 and self.own(location):
            self._authenticate(resp, scope)
            return None
        if resp.status in _RETRY_STATUS:
            return resp
        raise describe_error(resp, f"uploading to {repo}")

    def _patch(self, repo: str, location: str, offset: int, data: bytearray,
               min_chunk: int) -> tuple[str, int]:
        """PATCH data at offset; after a failure, ask the registry where the upload stands and
        resend only what is missing. Returns the next Location and the chunk size to use."""
        scope = _push(repo)
        end = offset + len(data)
        for attempt in range(1, MAX_TRIES + 1):
            have = self._upload_offset(location, scope) if attempt > 1 else offset
            if have == end:
                return location, min_chunk
            if have != offset:
                raise RegistryError(f"upload to {repo} is at byte {have}, expected {offset}",
                                    hint="run the import again")
            try:
                resp = self.transport.request(
                    "PATCH", location, body=data, headers={
                        **self._authorization(scope, location),
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{end - 1}",
                        "Content-Length": str(len(data))})
            except NetworkError as e:
                self._wait(attempt, None, f"{e.message}; resuming")
                continue
            if resp.status == 202:
                minimum = resp.header("OCI-Chunk-Min-Length")
                if minimum and minimum.isdigit():
                    min_chunk = max(min_chunk, int(minimum))
                return self._location(resp), min_chunk
            if resp.status in _RETRY_STATUS or (resp.status == 401 and self.own(location)):
                if resp.status == 401:
                    self._authenticate(resp, scope)
                else:
                    self._wait(attempt, resp.header("Retry-After"),
                               f"PATCH to {repo}: HTTP {resp.status}; resuming")
                continue
            raise describe_error(resp, f"uploading to {repo}")
        raise RegistryError(f"uploading to {repo} failed {MAX_TRIES} times")

    def _upload_offset(self, location: str, scope: str) -> int:
        """Where an upload session stands, from its Range header `0-<last byte>`. Distribution
        answers `0-0` for an empty upload too; our chunks are never one byte, so 0-0 means 0."""
        resp = self.send("GET", location, scope=scope)
        if resp.status == 404:  # Distribution: our _state token is stale, the answer was lost
            raise RegistryError(
                "the registry took part of an upload but its answer was lost, so the upload "
                "cannot be continued", hint="run the import again: blobs already in the "
                                            "registry are skipped")
        if resp.status != 204:
            raise describe_error(resp, "asking for the upload's status")
        end = (resp.header("Range") or "0-0").removeprefix("bytes=").partition("-")[2]
        if not end.isdigit():
            raise RegistryError(f"the registry reports an odd upload range {end!r}")
        return 0 if int(end) == 0 else int(end) + 1

    def cancel_upload(self, location: str) -> None:
        """Best effort: abandon an upload session."""
        with contextlib.suppress(NetworkError):
            self.transport.request("DELETE", location,
                                   headers=self._authorization("", location))

    def put_manifest(self, repo: str, reference: str, raw: bytes, media_type: str) -> str:
        """PUT the exact bytes; returns the Docker-Content-Digest the registry answered."""
        resp = self.send("PUT", self.url(f"/v2/{repo}/manifests/{quote(reference)}"),
                         scope=_push(repo), body=raw,
                         headers={"Content-Type": media_type, "Content-Length": str(len(raw))})
        if resp.status not in (200, 201):
            raise describe_error(resp, f"putting manifest {repo}:{reference}")
        return resp.header("Docker-Content-Digest") or ""

    def open_blob(self, repo: str, digest: Digest, *, offset: int = 0) -> Response:
        """GET a blob (from `offset` on, with a Range request, if given), following redirects
        (credentials go only to the registry itself). 200, or 206 for a Range."""
        url = self.url(f"/v2/{repo}/blobs/{digest}")
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self._follow(self.send("GET", url, scope=_pull(repo), stream=True,
                                      headers=headers),
                            "GET", url, _pull(repo), headers=headers, stream=True)
        if resp.status not in (200, 206):
            resp.close()
            raise describe_error(resp, f"downloading blob {digest.short} from {repo}")
        return resp

    def get_manifest(self, repo: str, reference: str, accept: str) -> Response:
        return self.send("GET", self.url(f"/v2/{repo}/manifests/{quote(reference)}"),
                         scope=_pull(repo), headers={"Accept": accept})


def _origin(url: str) -> tuple[str, str, int | None]:
    """scheme, host and port (the scheme's default if none is given) of a URL."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port or default


def _redact(url: str) -> str:
    return url.split("?", 1)[0]


def _why(failure: Response | NetworkError) -> str:
    return failure.message if isinstance(failure, NetworkError) else f"HTTP {failure.status}"


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push(repo: str, source: str | None = None) -> str:
    scope = f"repository:{repo}:pull,push"
    return scope if source is None else f"{scope} repository:{source}:pull"

