"""`import --to-registry`: replay a bundle into a registry, blobs first (HEAD to skip, mount
from another repository), manifests byte for byte and tags last."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from bundler import cosign, signing
from bundler.config import DEFAULT_JOBS
from bundler.digest import CHUNK_SIZE, Digest
from bundler.distribution import is_valid_tag
from bundler.errors import IntegrityError, UsageError
from bundler.layout import BlobRef, External, Model
from bundler.oci import MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST, Manifest
from bundler.progress import OnBytes, OnEvent, no_events, no_progress
from bundler.reader import BundleReader, Head, Reread
from bundler.reference import pick
from bundler.registry.client import (
    Client,
    EmptyBlobError,
    RegistryError,
    Target,
    describe_error,
    repository_name,
)
from bundler.releases import require_bases

if TYPE_CHECKING:
    from bundler.pullcheck import RegistryCheck

UPLOAD_CHUNK = 32 * CHUNK_SIZE  # PATCH size for large blobs; smaller blobs go in one PUT
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
    checks: list[RegistryCheck] = field(default_factory=list)  # one per pushed model, capped
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
            # the verdict: the first probe that failed, else the first
            "check": None if self.check is None else self.check.to_json(),
            "checks": [c.to_json() for c in self.checks], "probed": len(self.checks),
        }

    @property
    def check(self) -> RegistryCheck | None:
        return next((c for c in self.checks if not c.ok), next(iter(self.checks), None))


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
        placement = Placement.of(items)
        placement.find_external(head.root.external, client)
        # a missing base refuses the push before anything is written (formats/bundle-v1.md §4.3)
        require_bases(head, [i.model for i in items], placement.found_external,
                      f"the registry {client.target.base}")
        items, refused, refusal = _store_empty_blob(client, items)
        if refused:
            placement = Placement.of(items)
            placement.find_external(head.root.external, client)
        result = PushResult(head, client.target, items)
        placement.place(head.layer_blobs, client)
        result.present, result.mounted = placement.present, placement.mounted
        result.uploaded, result.uploaded_bytes = placement.uploaded, placement.uploaded_bytes
        _transfer(reader, head, placement, client, uploads, on_total=on_total,
                  chunk_size=chunk_size, jobs=jobs)
        for digest, repo, home in placement.cross_mounts(client):
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


class BlobRegistry(Protocol):
    """What placing blobs asks of a registry (a Client; a stub in the unit tests)."""

    def has_blob(self, repo: str, digest: Digest, size: int) -> bool: ...

    def mount(self, repo: str, digest: Digest, source: str) -> bool: ...


@dataclass(slots=True)
class Placement:
    """Where each blob is, or goes: every repository whose model names it needs it; its home
    is the first of those that has it, else one it is mounted into from the model's own
    repository, else the first, to be uploaded there; the others get it by a mount from the
    home after the uploads. Built from the items alone (`of`); `find_external` and `place`
    ask the registry, in archive order."""

    needs: dict[Digest, list[str]]  # repositories that need the blob, in push order
    natural: dict[Digest, str]  # where a blob may already be: its model's own repository
    homes: dict[Digest, tuple[str, list[str], int]] = field(default_factory=dict)
    found_external: set[Digest] = field(default_factory=set)  # left out, and there
    uploading: set[Digest] = field(default_factory=set)
    present: int = 0
    mounted: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0

    @classmethod
    def of(cls, items: Sequence[PushItem]) -> Placement:
        needs: dict[Digest, list[str]] = {}
        natural: dict[Digest, str] = {}
        for item in items:
            for blob in item.model.manifest.blobs:
                repos = needs.setdefault(blob.digest, [])
                if item.repository not in repos:
                    repos.append(item.repository)
                own = repository_name(item.model.name.namespace, item.model.name.model)
                if own is not None and own != item.repository:
                    natural.setdefault(blob.digest, own)
        return cls(needs, natural)

    def find_external(self, external: Sequence[External], registry: BlobRegistry) -> None:
        """The blobs a delta bundle leaves out: they must be there already (or mountable)."""
        for e in external:
            repos = self.needs.get(e.blob.digest, [])
            home = next((r for r in repos if registry.has_blob(r, e.blob.digest, e.blob.size)),
                        None)
            source = self.natural.get(e.blob.digest)
            if home is None and repos and source and registry.has_blob(source, e.blob.digest,
                                                                       e.blob.size):
                # mounted from there by cross_mounts, once the bases are known to be there:
                # a push refused for a missing base writes nothing, not even a mount
                home = source
            if home is not None:
                self.homes[e.blob.digest] = (home, repos, e.blob.size)
                self.found_external.add(e.blob.digest)
                self.present += 1

    def place(self, blobs: Sequence[BlobRef], registry: BlobRegistry) -> None:
        """The carried blobs: present, mounted from the model's own repository, or to upload."""
        for ref in blobs:
            repos = self.needs.get(ref.digest, [])
            if not repos:
                continue
            home = next((r for r in repos if registry.has_blob(r, ref.digest, ref.size)), None)
            source = self.natural.get(ref.digest)
            if home is not None:
                self.present += 1
            elif source and registry.mount(repos[0], ref.digest, source):
                home = repos[0]  # already in the registry under the model's own name
                self.mounted += 1
            if home is None:
                home = repos[0]
                self.uploading.add(ref.digest)
                self.uploaded += 1
                self.uploaded_bytes += ref.size
            self.homes[ref.digest] = (home, repos, ref.size)

    def cross_mounts(self, registry: BlobRegistry) -> Iterator[tuple[Digest, str, str]]:
        """(blob, repository, home) for each other repository that needs a blob and lacks
        it, once the uploads are done: to be mounted from the home."""
        for digest, (home, repos, size) in self.homes.items():
            for repo in repos:
                if repo != home and not registry.has_blob(repo, digest, size):
                    yield digest, repo, home


def _transfer(reader: BundleReader, head: Head, placement: Placement, client: Client,
              uploads: _Uploads, *, on_total: OnBytes, chunk_size: int, jobs: int) -> None:
    """Upload the blobs `placement` marks, each to its home (see push_bundle)."""
    uploading, homes = placement.uploading, placement.homes
    everything = sum(b.size for b in head.layer_blobs)
    large = sum(1 for b in head.layer_blobs if b.digest in uploading and b.size > PARALLEL_MAX)
    seekable = (reader.seekable() if placement.uploaded_bytes < everything
                or (jobs > 1 and large > 1) else None)
    if seekable is not None:
        # each blob to upload is read on its own through the seek table, up to `jobs` at
        # a time; nothing else is read
        on_total(placement.uploaded_bytes)
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
