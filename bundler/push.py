"""Use cases for registries: replay a bundle into a registry (`import --to-registry`) and
probe a registry the way Ollama's pull does (`check-registry`)."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urljoin, urlsplit

from bundler import cosign, signing
from bundler.bundle import ExportPlan, pick, require_bases
from bundler.digest import CHUNK_SIZE, Digest
from bundler.errors import IntegrityError, NotFoundError, UsageError
from bundler.inventory import Inventory, ModelEntry
from bundler.layout import NO_BASES, BlobRef, Have, Model, plan_contents
from bundler.oci import MEDIA_TYPE_OCI_MANIFEST, Manifest
from bundler.progress import OnBytes, OnEvent, no_events, no_progress
from bundler.reader import BundleReader, Head, Reread
from bundler.reference import ModelName
from bundler.registry import (
    MAX_REDIRECTS,
    MEDIA_TYPE_DOCKER_MANIFEST,
    Client,
    EmptyBlobError,
    RegistryError,
    Target,
    describe_error,
    is_valid_tag,
    parse_challenge,
    repository_name,
)
from bundler.transport import Response, TlsError, Transport

UPLOAD_CHUNK = 32 * CHUNK_SIZE  # PATCH size for large blobs; smaller blobs go in one PUT
DEFAULT_JOBS = 4  # uploads in flight
PARALLEL_MAX = 64 * CHUNK_SIZE  # blobs up to this size may be read twice, for parallel upload
EMPTY_BLOB = Digest.of(b"")


class _Uploads:
    """Uploads of blobs read again from the bundle file, at most jobs - 1 in flight beside
    the main pass; the first failure is raised by `wait()` (or by the next `submit()`)."""

    def __init__(self, client: Client, jobs: int) -> None:
        self._client, self._jobs = client, jobs
        self.parallel = jobs > 1
        self._pool = ThreadPoolExecutor(jobs, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(max(1, jobs - 1))
        self._futures: list[Future[None]] = []

    def widen(self) -> None:
        """No main pass to read beside: all `jobs` uploads may be in flight."""
        self._slots = threading.BoundedSemaphore(self._jobs)

    def __enter__(self) -> _Uploads:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, repo: str, digest: Digest, size: int, reread: Reread) -> None:
        self._slots.acquire()
        self._raise_failures()
        future = self._pool.submit(self._upload, repo, digest, size, reread)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def _upload(self, repo: str, digest: Digest, size: int, reread: Reread) -> None:
        if size <= CHUNK_SIZE:  # one PUT
            self._client.upload(repo, digest, size, reread(0), chunk_size=CHUNK_SIZE)
        else:
            self._client.upload_streamed(repo, digest, size, reread(0), reread)

    def _raise_failures(self) -> None:
        for future in self._futures:
            if future.done():
                future.result()

    def wait(self) -> None:
        for future in self._futures:
            future.result()


@dataclass(frozen=True, slots=True)
class PushItem:
    model: Model
    repository: str
    tag: str

    def pull_name(self, target: Target) -> str:
        return f"{target.host}/{self.repository}:{self.tag}"

    def renamed(self, target: Target) -> bool:
        """True if Distribution's rules changed the name (not just the namespace we chose)."""
        namespace = target.namespace or self.model.name.namespace
        return f"{namespace}/{self.model.name.model}" != self.repository


def plan_push(head: Head, target: Target, only: Sequence[str]) -> list[PushItem]:
    """Where each model goes: <host>/<namespace from the URL, else its own>/<model>:<tag>,
    lowercased where Distribution requires it."""
    models = list(head.models)
    if only:
        wanted = set(pick(only, [m.name for m in models], "the bundle"))
        models = [m for m in models if m.name in wanted]
    items: dict[tuple[str, str], PushItem] = {}
    for m in models:
        repo = target.repository(m.name.namespace, m.name.model)
        if repo is None or not is_valid_tag(m.name.tag):
            raise UsageError(f"{m.name} cannot be named in a Distribution registry",
                             hint="import it into a store instead, or rename it with 'ollama cp'")
        key = (repo, m.name.tag)
        if key in items:
            raise UsageError(f"{m.name} and {items[key].model.name} would both be {repo}:"
                             f"{m.name.tag}", hint="push them to different namespaces with --only")
        if m.manifest.media_type != MEDIA_TYPE_DOCKER_MANIFEST:
            raise UsageError(f"{m.name}: Ollama pulls only Docker schema2 manifests")
        items[key] = PushItem(m, repo, m.name.tag)
    return list(items.values())


@dataclass(slots=True)
class PushResult:
    head: Head
    target: Target
    items: list[PushItem]
    uploaded: int = 0
    uploaded_bytes: int = 0
    present: int = 0
    mounted: int = 0
    cosign_signatures: int = 0  # signature layers added to sha256-<hex>.sig tags
    check: RegistryCheck | None = None
    commands: list[str] = field(default_factory=list)
    case_notes: dict[str, str] = field(default_factory=dict)  # pull name -> `case_note`

    def to_json(self) -> dict[str, Any]:
        return {
            "registry": self.target.base, "signatures": {
                "carried": list(self.head.signatures.carried),
                "trusted": list(self.head.signatures.trusted)},
            "models": [{"name": str(i.model.name), "pushedAs": i.pull_name(self.target),
                        "digest": str(i.model.manifest.digest),
                        "renamed": i.renamed(self.target),
                        "caseNote": self.case_notes.get(i.pull_name(self.target))}
                       for i in self.items],
            "blobsUploaded": self.uploaded, "bytesUploaded": self.uploaded_bytes,
            "blobsPresent": self.present, "blobsMounted": self.mounted,
            "cosignSignatures": self.cosign_signatures,
            "ollamaPull": self.commands,
            "check": None if self.check is None else self.check.to_json(),
        }


def push_bundle(
    src: BinaryIO, client: Client, trusted: Sequence[signing.PublicKey], *,
    allow_unsigned: bool, only: Sequence[str] = (), on_total: OnBytes = no_progress,
    on_bytes: OnBytes = no_progress, on_event: OnEvent = no_events,
    chunk_size: int = UPLOAD_CHUNK, jobs: int = DEFAULT_JOBS,
) -> PushResult:
    """Verify the head, upload every blob the registry lacks (HEAD to skip, mount from
    another repository), then PUT the manifests, byte for byte, last.

    With a seek table (a bundle file or split parts), when some blobs are already there or
    several large ones must go up, each blob to upload is read on its own, up to `jobs` at a
    time, and nothing else is read. Otherwise one pass over the bundle: large blobs go up one
    at a time from it; from a file, blobs up to PARALLEL_MAX bytes are read again by up to
    `jobs` - 1 workers beside it; from a pipe everything goes up in turn."""
    with BundleReader(src, on_bytes) as reader, _Uploads(client, jobs) as uploads:
        head = reader.read_head(trusted, allow_unsigned=allow_unsigned, on_event=on_event)
        items = plan_push(head, client.target, only)
        items, refused, refusal = _store_empty_blob(client, items)
        result = PushResult(head, client.target, items)
        needs: dict[Digest, list[str]] = {}
        natural: dict[Digest, str] = {}  # where a blob may already be: the model's own repo
        for item in items:
            for blob in item.model.manifest.blobs:
                repos = needs.setdefault(blob.digest, [])
                if item.repository not in repos:
                    repos.append(item.repository)
                own = repository_name(item.model.name.namespace, item.model.name.model)
                if own is not None and own != item.repository:
                    natural.setdefault(blob.digest, own)
        homes: dict[Digest, tuple[str, list[str], int]] = {}
        present: set[Digest] = set()
        for e in head.root.external:  # left out of a delta bundle: must be there already
            repos = needs.get(e.blob.digest, [])
            home = next((r for r in repos if client.has_blob(r, e.blob.digest, e.blob.size)),
                        None)
            source = natural.get(e.blob.digest)
            if home is None and repos and source and client.mount(repos[0], e.blob.digest,
                                                                  source):
                home = repos[0]
                result.mounted += 1
            if home is not None:
                homes[e.blob.digest] = (home, repos, e.blob.size)
                present.add(e.blob.digest)
                result.present += 1
        require_bases(head, [i.model for i in items], present,
                      f"the registry {client.target.base}")
        uploading: set[Digest] = set()
        for ref in head.layer_blobs:  # where each blob is, or goes
            repos = needs.get(ref.digest, [])
            if not repos:
                continue
            home = next((r for r in repos if client.has_blob(r, ref.digest, ref.size)), None)
            source = natural.get(ref.digest)
            if home is not None:
                result.present += 1
            elif source and client.mount(repos[0], ref.digest, source):
                home = repos[0]  # already in the registry under the model's own name
                result.mounted += 1
            if home is None:
                home = repos[0]
                uploading.add(ref.digest)
                result.uploaded += 1
                result.uploaded_bytes += ref.size
            homes[ref.digest] = (home, repos, ref.size)
        everything = sum(b.size for b in head.layer_blobs)
        large = sum(1 for b in head.layer_blobs if b.digest in uploading and b.size > PARALLEL_MAX)
        seekable = (reader.seekable() if result.uploaded_bytes < everything
                    or (jobs > 1 and large > 1) else None)
        if seekable is not None:
            # each blob to upload is read on its own through the seek table, up to `jobs` at
            # a time; nothing else is read
            on_total(result.uploaded_bytes)
            uploads.widen()
            for ref in head.layer_blobs:
                if ref.digest in uploading:
                    uploads.submit(homes[ref.digest][0], ref.digest, ref.size,
                                   seekable[ref.digest])
            reader.finish()  # the end of the archive, where the seek table puts it
        else:
            on_total(everything)
            for ref, body in reader.blobs():
                if ref.digest in uploading:
                    home = homes[ref.digest][0]
                    reread = reader.reread()
                    if reread is not None and ref.size <= PARALLEL_MAX and uploads.parallel:
                        uploads.submit(home, ref.digest, ref.size, reread)  # read again there
                    elif reread is not None and ref.size > chunk_size:
                        # one streamed request; a failure reads the file again
                        client.upload_streamed(home, ref.digest, ref.size, body, reread)
                    else:  # from a pipe: chunks kept in memory until the registry has them
                        client.upload(home, ref.digest, ref.size, body, chunk_size=chunk_size)
                for _ in body:  # verified all the same (the rest of it, after a retry)
                    pass
            reader.finish()
        uploads.wait()
        for digest, (home, repos, size) in homes.items():
            for repo in repos:
                if repo != home and not client.has_blob(repo, digest, size):
                    if not client.mount(repo, digest, home):
                        raise RegistryError(f"the registry would not mount blob "
                                            f"{digest.short} from {home} into {repo}")
                    result.mounted += 1
        for item in items:  # tags last: a model appears only once all its blobs are in
            m = item.model.manifest
            layers = head.cosign_layers(item.model)
            if layers:  # by digest, then its signatures, then the tag (signature-v1.md §6.4)
                _check_stored(item, client, m, str(m.digest))
                result.cosign_signatures += push_signatures(client, item.repository,
                                                            m.digest, layers)
            _check_stored(item, client, m, item.tag)
            on_event(f"pushed {item.model.name.display_shortest()} as "
                     f"{item.pull_name(client.target)}")
        insecure = " --insecure" if client.target.scheme == "http" else ""
        result.commands = [f"ollama pull{insecure} {i.pull_name(client.target)}" for i in items]
    if refusal is not None:
        names = ", ".join(i.model.name.display_shortest() for i in refused)
        raise RegistryError(
            f"pushed {len(items)} of {len(items) + len(refused)} models; not {names}: "
            f"{refusal.message}", hint=refusal.hint)
    return result


def _store_empty_blob(client: Client, items: list[PushItem],
                      ) -> tuple[list[PushItem], list[PushItem], EmptyBlobError | None]:
    """Put the zero-length blob, before anything else, into each repository whose model
    holds one, so that a registry that cannot store it costs only those models. Returns the
    items to push, the ones left out, and why."""
    keep: list[PushItem] = []
    refused: list[PushItem] = []
    refusal: EmptyBlobError | None = None
    for item in items:
        if not any(b.digest == EMPTY_BLOB and b.size == 0 for b in item.model.manifest.blobs) \
                or client.has_blob(item.repository, EMPTY_BLOB, 0):
            keep.append(item)
            continue
        if refusal is None:
            try:
                client.upload(item.repository, EMPTY_BLOB, 0, [b""], chunk_size=UPLOAD_CHUNK)
            except EmptyBlobError as e:
                refusal = e
            else:
                keep.append(item)
                continue
        refused.append(item)
    return keep, refused, refusal


def _check_stored(item: PushItem, client: Client, m: Manifest, reference: str) -> None:
    answered = client.put_manifest(item.repository, reference, m.raw, m.media_type)
    if not answered:  # no Docker-Content-Digest: read back what the registry stored
        resp = client.get_manifest(item.repository, reference, m.media_type)
        answered = str(Digest.of(resp.body)) if resp.status == 200 else "nothing readable"
    if answered != str(m.digest):
        raise IntegrityError(
            f"the registry stored {item.pull_name(client.target)} as {answered}, not "
            f"{m.digest}", hint="the registry rewrote the manifest; Ollama would see "
                                "another model ID")


def push_signatures(client: Client, repo: str, digest: Digest,
                    signatures: Sequence[tuple[bytes, str]]) -> int:
    """Add cosign simple-signing layers to the tag sha256-<hex>.sig (formats/signature-v1.md
    §6.4), keeping the ones already there. Returns how many layers were added."""
    tag = cosign.signature_tag(digest)
    resp = client.get_manifest(repo, tag, MEDIA_TYPE_OCI_MANIFEST)
    existing: list[cosign.Existing] = []
    if resp.status == 200:
        found = cosign.existing_layers(resp.body, f"{repo}:{tag}")
        if found is None:
            raise RegistryError(f"{repo}:{tag} holds a manifest that is not a cosign signature "
                                "manifest; it was left as it is",
                                hint="remove that tag from the registry, then push again")
        existing = found
    elif resp.status != 404:
        raise describe_error(resp, f"reading the signatures {repo}:{tag}")
    payloads = {Digest.of(p): p for p, _ in signatures}
    merged = cosign.merge(existing, [cosign.Layer(Digest.of(p), len(p), sig)
                                     for p, sig in signatures])
    if merged is None:
        return 0
    config = cosign.signature_config(merged)
    for blob in [*payloads.values(), config]:
        d = Digest.of(blob)
        if not client.has_blob(repo, d, len(blob)):
            client.upload(repo, d, len(blob), [blob], chunk_size=UPLOAD_CHUNK)
    raw = cosign.signature_manifest(config, merged)
    answered = client.put_manifest(repo, tag, raw, MEDIA_TYPE_OCI_MANIFEST)
    if answered and answered != str(Digest.of(raw)):
        raise IntegrityError(f"the registry stored the signatures {repo}:{tag} as {answered}, "
                             f"not {Digest.of(raw)}", hint="the registry rewrote the manifest")
    return len(merged) - len(existing)


# ---------------------------------------------------------------------------------------------
# check-registry: will `ollama pull` work from here? Probed as Ollama pulls: anonymously, the
# GGUF path of server/download.go or, for tensor models, x/transfer/download.go
# (formats/ollama-store.md §8).

MAX_PROBES = 100  # model tags one check-registry without MODEL probes
MEDIA_TYPE_TENSOR = "application/vnd.ollama.image.tensor"


@dataclass(slots=True)
class RegistryCheck:
    model: str
    ok: bool
    findings: list[str]
    advice: list[str]
    path: str = ""  # "gguf" (server/download.go) or "tensor" (x/transfer), once the manifest is read
    note: str = ""  # what a colleague whose store spells the name otherwise will see

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok, "findings": self.findings,
                "advice": self.advice, "path": self.path or None, "note": self.note or None}


NGINX_ADVICE = ("put the recipe in front of the registry: scripts/registry-for-ollama (nginx "
                 "adds a Location header to blob responses), or use S3-compatible storage with "
                 "redirects on a different hostname")
ANONYMOUS_ADVICE = ("let anyone pull (GET and HEAD) without credentials and keep them for "
                    "pushes, e.g. nginx in front with `limit_except GET HEAD { auth_basic ...; }`"
                    ", or a token service on the registry's own host:port that gives anonymous "
                    "pull tokens")
_OLLAMA_AUTH = ("Ollama sends no credentials of yours: on a 401 it speaks only Bearer, to a "
                "token service on the registry's own host:port, signing the token request with "
                "its own key (server/auth.go)")


def check_registry(client: Client, repository: str, tag: str) -> RegistryCheck:
    """Probe `repository:tag` (spelt as Ollama asks for it) as `ollama pull` would: without
    our credentials or client certificate; a token only from a same-host:port Bearer service;
    the manifest with the schema2 Accept; then the download path the layers choose (GGUF:
    HEAD, a GET stopping at another host, then Range without auth; tensor: x/transfer)."""
    target = client.target
    name = f"{target.host}/{repository}:{tag}"
    plain = client.transport.anonymous()  # what Ollama's GGUF part downloads carry: nothing
    manifest_url = client.url(f"/v2/{repository}/manifests/{quote(tag)}")
    accept = {"Accept": MEDIA_TYPE_DOCKER_MANIFEST}
    findings: list[str] = []
    registry = plain
    try:
        resp = plain.request("GET", manifest_url, headers=accept)
    except TlsError as e:  # Ollama: Go's system roots, no client certificate
        return RegistryCheck(name, False, [
            f"without a client certificate {e.message}; `ollama pull` presents none"], [
            ("serve pulls without client certificates, with a certificate the pulling "
            "machines' system CA store trusts")])
    if resp.status == 401:
        token, said = _token_like_ollama(plain, target, resp, repository)
        if token is None:
            return RegistryCheck(name, False, [said], [ANONYMOUS_ADVICE])
        findings.append(said)
        registry = plain.with_headers(target.host, {"Authorization": f"Bearer {token}"})
        resp = registry.request("GET", manifest_url, headers=accept)
    if resp.status != 200:
        return _manifest_failed(client, plain, repository, tag, resp)
    findings.append("anonymous pull: the manifest is served to the Docker schema2 Accept header"
                    if registry is plain else
                    "the manifest is served with that token to the Docker schema2 Accept header")
    try:
        doc = json.loads(resp.body)
        layers = [*(doc.get("layers") or []), doc["config"]]  # null: a remote model
        tensor = any(d.get("mediaType") == MEDIA_TYPE_TENSOR for d in layers)
        blob = max(layers, key=lambda d: int(d["size"]))
        digest = Digest.parse(blob["digest"])
    except (ValueError, KeyError, TypeError, AttributeError, IntegrityError):
        return RegistryCheck(name, False, ["the manifest is not a schema2 manifest"], [])
    url = client.url(f"/v2/{repository}/blobs/{digest}")
    if tensor:
        return _check_transfer(name, registry, url, findings)
    probe = Client(registry, target, None)  # Ollama's token (if any) goes to the registry only
    head = _like_go(probe.transport, "HEAD", url)  # redirects followed, as Ollama's HEAD does
    if isinstance(head, str) or head.status != 200 or not head.header("Content-Length"):
        problem = (f"HEAD blob: {head}" if isinstance(head, str)
                   else f"HEAD blob: HTTP {head.status} without Content-Length")
        return RegistryCheck(name, False, [*findings, problem], [], "gguf")
    findings.append("GGUF model: blob HEAD answers with Content-Length" + (
        f" (from {urlsplit(head.url).netloc}, after a redirect)" if head.url != url else ""))
    direct = _resolve_like_ollama(probe, url)
    if direct.startswith("error:"):
        return RegistryCheck(name, False, [*findings, direct[6:].strip()], [NGINX_ADVICE], "gguf")
    findings.append(f"blob GET gives a direct URL ({direct})")
    # server/download.go downloadChunk: http.DefaultClient, no Authorization, redirects followed
    ranged = _like_go(plain, "GET", direct, {"Range": "bytes=0-0"})
    if isinstance(ranged, str):
        problem = f"a Range request on the direct URL: {ranged}"
        return RegistryCheck(name, False, [*findings, problem], [], "gguf")
    data = ranged.reader().read(2)  # a server that ignores Range would send the whole blob
    ranged.close()
    if ranged.status != 206 or len(data) != 1:
        problem = f"a Range request on the direct URL, without credentials (Ollama sends none " \
                  f"there), got HTTP {ranged.status}, not 206"
        advice = (ANONYMOUS_ADVICE if ranged.status in (401, 403)
                  else "serve Range requests on blob URLs")
        return RegistryCheck(name, False, [*findings, problem], [advice], "gguf")
    findings.append("the direct URL serves Range requests without credentials")
    return RegistryCheck(name, True, findings, [], "gguf")


def _token_like_ollama(plain: Transport, target: Target, resp: Response,
                       repository: str) -> tuple[str | None, str]:
    """(token, finding) for a 401 as Ollama meets it (server/auth.go getAuthorizationToken):
    a Bearer realm on the registry's own host:port only; the token from its `token` field."""
    kind, params = parse_challenge(resp.header("WWW-Authenticate") or "")
    if kind.lower() != "bearer":
        return None, (f"the registry asks for {kind or 'unknown'} credentials to pull; "
                      f"{_OLLAMA_AUTH}, never Basic, so `ollama pull` fails")
    realm = params.get("realm", "")
    where = urlsplit(realm)
    if where.netloc.lower() != target.host:
        return None, (f"the registry's token service is {where.netloc or realm!r}, not on the "
                      f"registry's own host:port {target.host}; {_OLLAMA_AUTH}, so `ollama "
                      f"pull` fails with 'realm host {where.netloc!r} does not match original "
                      f"host {target.host!r}'")
    query = {"service": params.get("service", ""),
             "scope": params.get("scope") or f"repository:{repository}:pull"}
    got = plain.request("GET", realm + ("&" if "?" in realm else "?") + urlencode(query))
    token = None
    if got.status == 200:
        with contextlib.suppress(ValueError, AttributeError):
            token = json.loads(got.body).get("token")
    if not isinstance(token, str) or not token:
        return None, (f"the token service {realm} gives no token without credentials (HTTP "
                      f"{got.status}, or no 'token' field); {_OLLAMA_AUTH}, so `ollama pull` "
                      "fails")
    return token, (f"the token service {realm} gives an anonymous pull token; Ollama asks it "
                   "too, signing the request with its own key instead of credentials "
                   "(server/auth.go); that the service ignores that signature is not checked")


def _manifest_failed(client: Client, plain: Transport, repository: str, tag: str,
                     resp: Response) -> RegistryCheck:
    name = f"{client.target.host}/{repository}:{tag}"
    finding = f"manifest: HTTP {resp.status}: `ollama pull {name}` fails with " \
              f"'{_ollama_manifest_error(resp)}'"
    lower = repository.lower()
    if lower != repository and plain.request(
            "GET", client.url(f"/v2/{lower}/manifests/{quote(tag)}"),
            headers={"Accept": MEDIA_TYPE_DOCKER_MANIFEST}).status == 200:
        return RegistryCheck(name, False, [
            finding, (f"Ollama asks for {repository} as spelt, and the registry keeps "
                     f"repositories in lower case: {lower}:{tag} is there")], [
            f"pull it as {client.target.host}/{lower}:{tag}; " + case_advice(repository)])
    return RegistryCheck(name, False, [finding], ["push the model first, or check the name"])


def _ollama_manifest_error(resp: Response) -> str:
    """What `ollama pull` prints for a failed manifest GET (server/images.go
    makeRequestWithRetry: a 404 becomes os.ErrNotExist)."""
    if resp.status == 404:
        return "pull model manifest: file does not exist"
    return f"pull model manifest: {resp.status}: {resp.body[:200].decode(errors='replace')}"


def case_advice(spelt: str) -> str:
    return (f"a colleague whose store already holds a model spelt {spelt.split('/')[-1]} (in any "
            "namespace; Ollama matches each part of a name case-insensitively against the "
            "store and asks for the stored spelling, server/routes.go getExistingName) gets "
            "that error even with the lowercase name: 'ollama rm' that copy first")


def case_note(client: Client, item: PushItem) -> str:
    """For a model whose name is not all lower case: what a colleague whose store already has
    it spelt so sees (probed: the manifest GET Ollama would send)."""
    spelt = f"{client.target.namespace or item.model.name.namespace}/{item.model.name.model}"
    if spelt == item.repository:
        return ""
    resp = client.transport.anonymous().request(
        "GET", client.url(f"/v2/{spelt}/manifests/{quote(item.tag)}"),
        headers={"Accept": MEDIA_TYPE_DOCKER_MANIFEST})
    if resp.status == 200:
        return ""
    return (f"a colleague whose store already holds a model spelt {item.model.name.model} (any "
            f"namespace) gets '{_ollama_manifest_error(resp)}' (HTTP {resp.status}): Ollama "
            f"then asks for {spelt}:{item.tag}, matching each part of the name "
            "case-insensitively against the store (server/routes.go getExistingName); 'ollama "
            "rm' that copy first")


def _check_transfer(name: str, registry: Transport, url: str,
                    findings: list[str]) -> RegistryCheck:
    """x/transfer/download.go: resolve (GET, no redirects followed by the client; 200 keeps
    the URL, a 301/302/307 to another host:port gives the URL, to the same one is followed),
    then a GET there that must answer 200 or 206 (auth only on the registry's host:port)."""
    findings = [*findings, ("tensor model (application/vnd.ollama.image.tensor layers): Ollama "
                           "pulls it through x/transfer and needs its MLX runtime to run it")]
    resolved = _resolve_like_transfer(registry, url)
    if resolved.startswith("error:"):
        return RegistryCheck(name, False, [*findings, resolved[6:].strip()], [], "tensor")
    resp = registry.request("GET", resolved, stream=True)
    resp.close()
    if resp.status not in (200, 206):
        return RegistryCheck(name, False, [
            *findings, f"GET {resolved}: HTTP {resp.status} (x/transfer needs 200 or 206)"],
            [], "tensor")
    findings.append(f"blob GET {resolved} answers {resp.status}")
    return RegistryCheck(name, True, findings, [], "tensor")


def _resolve_like_transfer(transport: Transport, url: str) -> str:
    for _ in range(10):
        resp = transport.request("GET", url, stream=True)
        resp.close()
        location = resp.header("Location")
        if resp.status == 200:
            return url
        if resp.status in (301, 302, 307) and location:
            target = urljoin(url, location)
            if urlsplit(target).netloc != urlsplit(url).netloc:
                return target
            url = target
            continue
        return (f"error: blob GET answered HTTP {resp.status} (x/transfer accepts 200, or a "
                "301, 302 or 307 with Location)")
    return "error: too many redirects"


def check_targets(client: Client, names: Sequence[str]) -> tuple[list[tuple[str, str]], int]:
    """(repository as Ollama spells it, tag) for each MODEL given (the URL's namespace, else
    the name's), else for up to MAX_PROBES model tags under the URL's namespace; and how many
    model tags there are."""
    if names:
        out = []
        for text in names:
            name = ModelName.parse(text)
            if client.target.repository(name.namespace, name.model) is None:
                raise UsageError(f"{text!r} cannot be a repository name")
            out.append((f"{client.target.namespace or name.namespace}/{name.model}", name.tag))
        return out, len(out)
    try:
        found = list(model_tags(client))
    except RegistryError as e:
        raise UsageError(f"the registry does not list its repositories ({e.message})",
                         hint="name the models to check: namespace/model:tag") from None
    if not found:
        raise UsageError("the registry holds no models yet" + (
            f" under {client.target.namespace}/" if client.target.namespace else ""),
            hint="push some with 'bundle import BUNDLE --to-registry URL'")
    return found[:MAX_PROBES], len(found)


def model_tags(client: Client) -> Iterator[tuple[str, str]]:
    """(repository, tag) of every tag under the URL's namespace that may be a model: not
    cosign's signatures, attestations and SBOMs (formats/signature-v1.md §6.4)."""
    for repo in _paged(client, "/v2/_catalog", "repositories", "registry:catalog:*"):
        if client.target.holds(repo):
            for tag in _paged(client, f"/v2/{repo}/tags/list", "tags",
                              f"repository:{repo}:pull"):
                if not _COSIGN_TAG.fullmatch(tag):
                    yield repo, tag


_COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(sig|att|sbom)")


def _like_go(transport: Transport, method: str, url: str,
             headers: Mapping[str, str] | None = None) -> Response | str:
    """`method url` as Go's default http.Client sends it, which is how Ollama sends the blob
    HEAD (server/download.go, Prepare, through makeRequest in server/images.go with no
    CheckRedirect) and each Range part (downloadChunk, http.DefaultClient, no credentials):
    redirects followed to any host, HEAD and GET keeping their method and headers, "stopped
    after 10 redirects". A GET's answer is streamed; an error is a string."""
    for _ in range(MAX_REDIRECTS):
        resp = transport.request(method, url, headers=headers, stream=method == "GET")
        location = resp.header("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not location:
            return resp
        resp.close()
        url = urljoin(url, location)
    return f"stopped after {MAX_REDIRECTS} redirects"


def _resolve_like_ollama(client: Client, url: str) -> str:
    """Ollama's server/download.go (blobDownload.run: the CheckRedirect that refuses when
    len(via) > 10): follow redirects to the same hostname, the port ignored (at
    most 10); stop at the first to another hostname; accept only 307, or 200 with Location."""
    host = urlsplit(url).hostname
    for _ in range(MAX_REDIRECTS + 1):
        resp = client.transport.request("GET", url, stream=True)
        location = resp.header("Location")
        resp.close()
        if resp.status in (301, 302, 303, 307, 308) and location:
            target = urljoin(url, location)
            if urlsplit(target).hostname == host:
                url = target
                continue
            if resp.status == 307:
                return target
            return f"error: a {resp.status} redirect to another host (Ollama accepts only 307)"
        if resp.status == 200:
            if not location:
                return ("error: blob GET answers 200 without a Location header, so `ollama "
                        "pull` fails with 'http: no Location header in response' (Ollama's "
                        "pull needs a 307 to another hostname or a 200 with Location)")
            return urljoin(url, location)
        return f"error: blob GET answered HTTP {resp.status}"
    return "error: more than 10 redirects"


def inventory_registry(client: Client, created: str, on_event: OnEvent = no_events,
                       ) -> Inventory:
    """Every tag the registry lists whose manifest is Docker schema2 (what Ollama pulls), and
    the blobs those manifests name that the registry has (formats/inventory-v1.md §2)."""
    models: list[ModelEntry] = []
    blobs: dict[Digest, int] = {}
    namespace = client.target.namespace
    for repo, tag in model_tags(client):
        resp = client.get_manifest(repo, tag, MEDIA_TYPE_DOCKER_MANIFEST)
        if resp.status != 200:
            on_event(f"skipped {repo}:{tag}: HTTP {resp.status}")
            continue
        try:
            manifest = Manifest.parse(resp.body, f"{repo}:{tag}")
        except IntegrityError:
            on_event(f"skipped {repo}:{tag}: not a Docker schema2 manifest")
            continue
        models.append(ModelEntry(f"{client.target.host}/{repo}:{tag}", manifest.digest,
                                 len(resp.body)))
        for b in manifest.blobs:
            if b.digest not in blobs and client.has_blob(repo, b.digest, b.size):
                blobs[b.digest] = b.size
    where = client.target.base + (f"/{namespace}" if namespace else "")
    return Inventory(created, f"registry {where}", tuple(models),
                     tuple(BlobRef(d, s) for d, s in blobs.items()))


def _paged(client: Client, path: str, key: str, scope: str) -> Iterator[str]:
    """A Distribution list (catalog, tags), page by page (?n=&last=)."""
    last = ""
    while True:
        query = f"?n=1000&last={last}" if last else "?n=1000"
        resp = client.send("GET", client.url(path + query), scope=scope)
        if resp.status == 404 and key == "tags":
            return
        if resp.status != 200:
            raise describe_error(resp, f"listing {path}")
        try:
            names = json.loads(resp.body).get(key) or []
        except (ValueError, AttributeError):
            raise RegistryError(f"the registry's answer to {path} is not JSON") from None
        yield from (n for n in names if isinstance(n, str))
        if len(names) < 1000 or not resp.header("Link"):
            return
        last = names[-1]


# ---------------------------------------------------------------------------------------------
# export --from-registry: the same bundle the store exporter writes, without Ollama installed


@dataclass(slots=True)
class RegistrySource:
    """Blobs fetched from registries, each from a repository whose manifest names it."""

    homes: dict[Digest, tuple[Client, str]]
    where: str
    cache: Path | None = None
    sizes: dict[Digest, int] = field(default_factory=dict)  # as the manifests say

    def describe(self) -> str:
        return self.where

    @contextlib.contextmanager
    def open_blob(self, digest: Digest) -> Iterator[BinaryIO]:
        client, repo = self.homes[digest]
        if self.cache is not None:
            with self._cached(client, repo, digest).open("rb", buffering=0) as f:
                yield f
            return
        resp = client.open_blob(repo, digest)
        try:
            yield resp.reader()
        finally:
            resp.close()

    def _cached(self, client: Client, repo: str, digest: Digest) -> Path:
        """The blob in the cache: finished downloads are kept; a partial one is continued
        with a Range request. Not hashed here: the export hashes what it reads, and a blob
        that does not match is dropped from the cache (`mismatch`)."""
        assert self.cache is not None
        final = self.cache / f"sha256-{digest.hex}"
        if final.is_file():
            return final
        partial = self.cache / f"sha256-{digest.hex}.partial"
        offset = partial.stat().st_size if partial.is_file() else 0
        size = self.sizes.get(digest)
        if size is not None and offset == size:  # complete, interrupted before its rename
            partial.replace(final)
            return final
        if size is not None and offset > size:
            offset = 0
        resp = client.open_blob(repo, digest, offset=offset)
        try:
            mode = "ab" if resp.status == 206 and offset else "wb"
            with partial.open(mode) as out:
                for chunk in resp.stream(CHUNK_SIZE):
                    out.write(chunk)
        finally:
            resp.close()
        partial.replace(final)
        return final

    def mismatch(self, model: ModelName, digest: Digest, got: Digest) -> IntegrityError:
        if self.cache is not None:  # never keep bad content: the next run fetches it again
            (self.cache / f"sha256-{digest.hex}").unlink(missing_ok=True)
        return IntegrityError(
            f"the registry served blob {digest} of {model.display_shortest()} with other "
            f"content (sha256 {got})", hint="a proxy or mirror altered it; nothing was written")


def plan_registry_export(names: Sequence[str], clients: Callable[[ModelName], Client],
                         cache: Path | None = None, have: Have = NO_BASES) -> ExportPlan:
    """Fetch each model's manifest (Docker schema2 Accept, as Ollama pulls) and plan the same
    bundle a store export of these models would be."""
    models: list[Model] = []
    homes: dict[Digest, tuple[Client, str]] = {}
    sizes: dict[Digest, int] = {}
    hosts: list[str] = []
    for text in names:
        name = ModelName.parse(text)
        client = clients(name)
        repo = (client.target.repository(name.namespace, name.model)
                or f"{name.namespace}/{name.model}")
        resp = client.get_manifest(repo, name.tag, MEDIA_TYPE_DOCKER_MANIFEST)
        if resp.status == 404:
            raise NotFoundError(f"model {text!r} not found at {client.target.base}/{repo}")
        if resp.status != 200:
            raise describe_error(resp, f"fetching the manifest of {text}")
        manifest = Manifest.parse(resp.body, f"manifest of {name}")
        models.append(Model(name, manifest))
        for blob in manifest.blobs:
            homes.setdefault(blob.digest, (client, repo))
            sizes.setdefault(blob.digest, blob.size)
        if client.target.base not in hosts:
            hosts.append(client.target.base)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot use --cache {cache}: {e.strerror}") from None
    return ExportPlan(RegistrySource(homes, "registry " + ", ".join(hosts), cache, sizes),
                      plan_contents(models, have))
