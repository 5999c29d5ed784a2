"""`bundle serve`: signed bundles served read-only over the Distribution API, so that
`ollama pull` and OCI clients read models straight from the files (formats/serve-v1.md)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bundler import cosign, signing
from bundler.archive import MemberBytes
from bundler.config import DRAIN_TIMEOUT, SERVE_PORT
from bundler.digest import Digest
from bundler.distribution import (
    Answer,
    HttpError,
    Piece,
    Route,
    Target,
    byte_range,
    next_link,
    page,
    piece_length,
    plan_push,
    route,
    split_last,
)
from bundler.errors import BundlerError, IntegrityError, NotFoundError, UsageError
from bundler.httpserve import Cut, Limits, Server, Stats, tls_context
from bundler.inventory import require_bases
from bundler.layout import BlobRef
from bundler.oci import MEDIA_TYPE_OCI_MANIFEST
from bundler.progress import OnEvent, no_events, plural
from bundler.reader import BundleReader, open_bundle
from bundler.split import split_name

CHECKERS = 2  # blobs whose digest is checked at once
DEFAULT_PORT = SERVE_PORT


@dataclass(frozen=True, slots=True)
class Served:
    """A manifest served as it is; its digest hashed once, not on every request that names
    it (a blob request looks up the manifests of its repository too)."""

    raw: bytes = field(repr=False)
    media_type: str
    digest: Digest

    @classmethod
    def of(cls, raw: bytes, media_type: str) -> Served:
        return cls(raw, media_type, Digest.of(raw))


class BlobCheck:
    """One blob of a bundle, read by range; its digest checked in the background the first
    time it is asked for (formats/serve-v1.md §4)."""

    def __init__(self, member: MemberBytes, ref: BlobRef, bundle: str,
                 pool: ThreadPoolExecutor, log: OnEvent) -> None:
        self.member, self.ref, self.bundle = member, ref, bundle
        self._pool, self._log = pool, log
        self._lock = threading.Lock()
        self._started = False
        self._done = threading.Event()
        self.good = False

    @property
    def size(self) -> int:
        return self.ref.size

    @property
    def bad(self) -> bool:
        return self._done.is_set() and not self.good

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self._pool.submit(self._check)

    def _check(self) -> None:
        try:
            h, n = hashlib.sha256(), 0
            if not self.member.header_ok():
                raise IntegrityError("its tar header is not where the seek table puts it")
            if self.size:
                for piece in self.member.pieces(0, self.size - 1, raw_spans=False):
                    assert isinstance(piece, memoryview)
                    h.update(piece)
                    n += len(piece)
            self.good = n == self.size and h.hexdigest() == self.ref.digest.hex
            if not self.good:
                self._log(f"error: blob {self.ref.digest} in {self.bundle} does not match its "
                          "digest; it is refused from now on")
        except (BundlerError, OSError) as e:
            self._log(f"error: blob {self.ref.digest} in {self.bundle} cannot be read: "
                      f"{getattr(e, 'message', e)}; it is refused from now on")
            self.good = False
        finally:
            self._done.set()

    def wait(self) -> bool:
        self.start()
        self._done.wait()
        return self.good

    def stream(self, first: int, last: int) -> Iterator[Piece]:
        """Bytes first..last; the blob's last byte only once its digest has been checked."""
        left = last - first + 1
        final = last == self.size - 1
        for piece in self.member.pieces(first, last):
            n = piece_length(piece)
            if final and n == left:
                head, tail = split_last(piece)
                if head is not None:
                    yield head
                if not self.wait():
                    raise Cut
                yield tail
                return
            left -= n
            yield piece


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    repository: str
    tag: str
    digest: Digest
    bundle: str

    def to_json(self, host: str, insecure: bool) -> dict[str, Any]:
        return {"name": self.name, "repository": self.repository, "tag": self.tag,
                "digest": str(self.digest), "bundle": self.bundle,
                "pull": pull_command(host, insecure, self.repository, self.tag)}


def pull_command(host: str, insecure: bool, repository: str, tag: str) -> str:
    return f"ollama pull{' --insecure' if insecure else ''} {host}/{repository}:{tag}"


@dataclass
class Catalog:
    """What is served: manifests by repository and tag or digest, which blobs each
    repository may serve, and where each blob is."""

    tags: dict[str, dict[str, Served]] = field(default_factory=dict)
    blobs: dict[Digest, BlobCheck | bytes] = field(default_factory=dict)
    repo_blobs: dict[str, set[Digest]] = field(default_factory=dict)
    models: list[ServedModel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(CHECKERS, thread_name_prefix="check"))

    _users: int = 0
    _retired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.stack.close()

    def held(self, stream: Iterator[Piece]) -> Iterator[Piece]:
        """`stream`, with this catalog kept open until it ends or is closed, even unstarted
        (a SIGHUP may retire the catalog meanwhile)."""
        with self._lock:
            self._users += 1
        return _Held(stream, self._release)

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._retired and not self._users
        if last:
            self.close()

    def retire(self) -> None:
        """Replaced by a reload: close it once no answer reads from it any more."""
        with self._lock:
            self._retired = True
            idle = not self._users
        if idle:
            self.close()

    def manifest(self, repo: str, reference: str) -> Served | None:
        tags = self.tags.get(repo, {})
        if reference.startswith("sha256:"):
            return next((m for m in tags.values() if str(m.digest) == reference), None)
        return tags.get(reference)

    def _add(self, repo: str, tag: str, served: Served, blobs: Sequence[Digest]) -> None:
        self.tags.setdefault(repo, {})[tag] = served
        self.repo_blobs.setdefault(repo, set()).update([served.digest, *blobs])


class _Held:
    """An answer's stream that calls `release` once, when it ends, fails or is closed: a
    generator's `finally` would not run if it is closed before it was started."""

    def __init__(self, stream: Iterator[Piece], release: Callable[[], None]) -> None:
        self._stream, self._release = stream, release
        self._open = True

    def __iter__(self) -> _Held:
        return self

    def __next__(self) -> Piece:
        try:
            return next(self._stream)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._open:
            self._open = False
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
            self._release()


def bundle_paths(args: Sequence[Path]) -> list[Path]:
    """The bundles that BUNDLE arguments name, found again on every (re)load: a file, the
    first part of a split bundle (its other parts are not bundles of their own), or a
    directory: every *.tar.zst and *.001 in it."""
    out: list[Path] = []
    for arg in args:
        if arg.is_dir():
            out += sorted([*arg.glob("*.tar.zst"), *arg.glob("*.001")])
        else:
            out.append(arg)
    names = {p: split_name(p.name) for p in out}
    firsts = {sn[0] for sn in names.values() if sn is not None and sn[1] == 1}
    kept = [p for p, sn in names.items() if sn is None or sn[1] == 1 or sn[0] not in firsts]
    if not kept:
        raise NotFoundError("no bundle found in " + ", ".join(map(str, args)))
    return kept  # (each once: `names` is keyed by path)


def load_catalog(paths: Sequence[Path], trusted: Sequence[signing.PublicKey], *,
                 allow_unsigned: bool, namespace: str | None,
                 on_event: OnEvent = no_events) -> Catalog:
    """Open every bundle and verify its head as import does, before anything is served
    (formats/serve-v1.md §1). Raises, having closed everything, if any bundle is refused."""
    target = Target.parse(f"http://serve/{namespace or ''}")
    catalog = Catalog()
    try:
        _load(catalog, bundle_paths(paths), trusted, target, allow_unsigned, on_event)
    except BaseException:
        catalog.close()
        raise
    return catalog


@dataclass(frozen=True, slots=True)
class _Choice:
    """The model a repository and tag serve, as far as the bundles read so far go."""

    rank: tuple[str, int]  # (the bundle's signed `created`, its place among the arguments)
    model: ServedModel
    served: Served
    blobs: list[Digest]
    signatures: Sequence[tuple[bytes, str]]  # its bundle's cosign signatures (§1 step 5)


def _load(catalog: Catalog, paths: Sequence[Path], trusted: Sequence[signing.PublicKey],
          target: Target, allow_unsigned: bool, on_event: OnEvent) -> None:
    chosen: dict[tuple[str, str], _Choice] = {}
    heads = []
    for index, path in enumerate(paths):
        f = catalog.stack.enter_context(open_bundle(path))
        reader = catalog.stack.enter_context(BundleReader(f))
        head = reader.read_head(trusted, allow_unsigned=allow_unsigned, on_event=on_event)
        ranges = reader.ranges()
        if ranges is None:
            raise IntegrityError(f"{path}: the bundle has no seek table of this tool's writer, "
                                 "so its blobs cannot be read by range",
                                 hint="serve a bundle as export wrote it (not recompressed), or "
                                      "import it into a registry instead")
        for ref in head.layer_blobs:
            if ref.digest not in catalog.blobs:
                catalog.blobs[ref.digest] = BlobCheck(ranges[ref.digest], ref, str(path),
                                                      catalog.pool, on_event)
        heads.append((path, head))
        for item in plan_push(head.models, target, ()):
            key, rank = (item.repository, item.tag), (head.root.created, index)
            if key in chosen and chosen[key].rank > rank:
                continue
            m = item.model.manifest
            served = Served.of(m.raw, m.media_type)
            if key in chosen and chosen[key].served.digest != served.digest:
                catalog.notes.append(f"note: {item.repository}:{item.tag} from {path} replaces "
                                     f"the one from {chosen[key].model.bundle} (created later)")
            chosen[key] = _Choice(rank, ServedModel(str(item.model.name), item.repository,
                                                    item.tag, served.digest, str(path)),
                                  served, [b.digest for b in m.blobs],
                                  head.cosign_layers(item.model))
    for path, head in heads:  # a delta's left-out blobs, from the other bundles (§1 step 3)
        present = {e.blob.digest for e in head.root.external
                   if isinstance(b := catalog.blobs.get(e.blob.digest), BlobCheck)
                   and b.size == e.blob.size}
        require_bases(head.root, list(head.models), present, f"the bundles served with {path.name}")
    for (repo, tag), choice in sorted(chosen.items()):  # only what is served is signed (§1.5)
        catalog._add(repo, tag, choice.served, choice.blobs)
        catalog.models.append(choice.model)
        if choice.signatures:
            _add_signatures(catalog, repo, choice.served.digest, choice.signatures)


def _add_signatures(catalog: Catalog, repo: str, digest: Digest,
                    signatures: Sequence[tuple[bytes, str]]) -> None:
    """The signature manifest a push makes into an empty registry (signature-v1.md §6.4)."""
    tag = cosign.signature_tag(digest)
    existing = catalog.tags.get(repo, {}).get(tag)
    have: list[cosign.Existing] = []
    if existing is not None:
        have = cosign.existing_layers(existing.raw, tag) or []
    payloads = [(Digest.of(p), p, s) for p, s in signatures]  # (one payload, several signers)
    merged = cosign.merge(have, [cosign.Layer(d, len(p), s) for d, p, s in payloads])
    if merged is None:
        return
    config = cosign.signature_config(merged)
    blobs = {Digest.of(config): config, **{d: p for d, p, _ in payloads}}
    for digest_, blob in blobs.items():
        catalog.blobs.setdefault(digest_, blob)
    raw = cosign.signature_manifest(config, merged)
    catalog._add(repo, tag, Served.of(raw, MEDIA_TYPE_OCI_MANIFEST), list(blobs))


# ---------------------------------------------------------------------------------------------
# Answers (formats/serve-v1.md §2, §3)


def answer(catalog: Catalog, method: str, target: str, headers: Mapping[str, str]) -> Answer:
    try:
        r = route(method, target)
        if r.kind == "base":
            return Answer.json({})
        if r.kind == "catalog":
            return _listing("repositories", list(catalog.tags), r, "/v2/_catalog", {})
        if r.name not in catalog.tags:
            raise HttpError(404, "NAME_UNKNOWN", "repository name not known to registry")
        if r.kind == "tags":
            return _listing("tags", list(catalog.tags[r.name]), r, f"/v2/{r.name}/tags/list",
                            {"name": r.name})
        if r.kind == "manifest":
            served = catalog.manifest(r.name, r.reference)
            if served is None:
                raise HttpError(404, "MANIFEST_UNKNOWN", "manifest unknown")
            return Answer(200, [("Content-Type", served.media_type),
                                ("Docker-Content-Digest", str(served.digest))],
                          served.raw, length=len(served.raw))
        return _blob(catalog, r, method, target.split("?")[0], headers.get("range"))
    except HttpError as e:
        return Answer.error(e)


def _listing(key: str, items: list[str], r: Route, path: str,
             extra: dict[str, str]) -> Answer:
    shown, more = page(items, r.n, r.last)
    headers = [] if more is None else [("Link", next_link(path, r.n, more))]
    return Answer.json({**extra, key: shown}, headers)


def _blob(catalog: Catalog, r: Route, method: str, path: str, range_header: str | None,
          ) -> Answer:
    digest = Digest.parse(r.reference)
    manifest = catalog.manifest(r.name, r.reference)
    source: BlobCheck | bytes | None = (
        manifest.raw if manifest is not None else
        catalog.blobs.get(digest) if digest in catalog.repo_blobs.get(r.name, set()) else None)
    if source is None:
        raise HttpError(404, "BLOB_UNKNOWN", "blob unknown to registry")
    if isinstance(source, BlobCheck) and (source.bad or (source.size == 0 and not source.wait())):
        raise HttpError(500, "BLOB_UNKNOWN", f"blob {digest} in the bundle does not match its "
                        "digest; it is refused")
    size = len(source) if isinstance(source, bytes) else source.size
    headers = [("Content-Type", "application/octet-stream"),
               ("Docker-Content-Digest", str(digest)), ("Accept-Ranges", "bytes"),
               ("Location", path)]
    wanted = byte_range(range_header, size) if method == "GET" else None
    first, last = wanted if wanted is not None else (0, size - 1)
    status = 200 if wanted is None else 206
    if wanted is not None:
        headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
    length = last - first + 1
    if isinstance(source, bytes):
        return Answer(status, headers, source[first : last + 1], length=length)
    source.start()  # on HEAD too: Ollama asks HEAD first, then the parts (download.go)
    if method == "HEAD" or length == 0:
        return Answer(status, headers, length=length)
    return Answer(status, headers, stream=catalog.held(source.stream(first, last)),
                  length=length)


# ---------------------------------------------------------------------------------------------
# Access (formats/serve-v1.md §6)


_NOBODY = bytes(20)  # the SHA-1 of no password


def read_htpasswd(path: Path) -> dict[str, bytes]:
    """user -> SHA-1 digest, from lines `user:{SHA}<base64>` (htpasswd -s)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise NotFoundError(f"cannot read --htpasswd {path}: {e.strerror}") from None
    users = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, _, hashed = line.partition(":")
        if not user or not hashed.startswith("{SHA}"):
            raise UsageError(f"--htpasswd {path} line {n}: not user:{{SHA}}<base64>",
                             hint="write it with `htpasswd -s`; other hash kinds are not read")
        try:
            users[user] = base64.b64decode(hashed[5:], validate=True)
        except ValueError:
            raise UsageError(f"--htpasswd {path} line {n}: the hash is not base64") from None
    return users


def authorizer(users: Mapping[str, bytes] | None) -> Callable[[str | None], str | None]:
    def authorize(header: str | None) -> str | None:
        if users is None:
            return None
        refused = HttpError(401, "UNAUTHORIZED", "authentication required",
                            [("WWW-Authenticate", 'Basic realm="bundle serve"')])
        if header is None or not header.startswith("Basic ") or len(header) > 1024:
            raise refused
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode(
                "utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            raise refused from None
        got = hashlib.sha1(password.encode(), usedforsecurity=False).digest()
        # an unknown user is compared too (against no password's hash), so that the time an
        # answer takes does not tell which users exist
        if not hmac.compare_digest(users.get(user, _NOBODY), got) or user not in users:
            raise refused
        return user

    return authorize


# ---------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    namespace: str | None = None
    allow_unsigned: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    htpasswd: Path | None = None
    limits: Limits = field(default_factory=Limits)
    drain_timeout: float = DRAIN_TIMEOUT


@dataclass(frozen=True, slots=True)
class Ready:
    url: str
    host: str  # host:port as pull commands name it
    insecure: bool
    models: list[ServedModel]

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url,
                "models": [m.to_json(self.host, self.insecure) for m in self.models]}


def serve(paths: Sequence[Path], trusted: Sequence[signing.PublicKey], options: ServeOptions,
          *, on_ready: Callable[[Ready], None], access: Callable[[str], None],
          on_event: OnEvent = no_events, stop: threading.Event | None = None,
          on_stats: Callable[[Stats], None] | None = None) -> None:
    """Verify every bundle, open the port, serve until SIGTERM/SIGINT (or `stop`), then drain.
    SIGHUP re-reads the bundles. `on_stats` is called about twice a second while serving."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    tls = (tls_context(options.tls_cert, options.tls_key)
           if options.tls_cert is not None and options.tls_key is not None else None)
    users = read_htpasswd(options.htpasswd) if options.htpasswd is not None else None
    catalog = load_catalog(paths, trusted, allow_unsigned=options.allow_unsigned,
                           namespace=options.namespace, on_event=on_event)
    current = [catalog]
    try:
        for note in catalog.notes:
            on_event(note)
        server = Server((options.host, options.port),
                        lambda m, t, h: answer(current[0], m, t, h), limits=options.limits,
                        access=access, log=on_event, tls=tls, authorize=authorizer(users))
        stop = stop or threading.Event()
        reload = threading.Event()
        previous = _signals(stop, reload)
        thread = threading.Thread(target=server.serve_forever, name="accept", daemon=True)
        thread.start()
        try:
            name = options.host
            if name in ("0.0.0.0", "::", ""):  # noqa: S104 - what --listen may say
                name = socket.gethostname()
            host = f"[{name}]:{server.port}" if ":" in name else f"{name}:{server.port}"
            on_ready(Ready(f"{'https' if tls else 'http'}://{host}/", host, tls is None,
                           catalog.models))
            while not stop.is_set():
                reload.wait(0.5)
                if on_stats is not None:
                    on_stats(server.stats())
                if reload.is_set() and not stop.is_set():
                    reload.clear()
                    try:
                        fresh = load_catalog(paths, trusted,
                                             allow_unsigned=options.allow_unsigned,
                                             namespace=options.namespace, on_event=on_event)
                    except BundlerError as e:
                        on_event(f"error: reload refused, still serving the bundles as they "
                                 f"were: {e.message}")
                        continue
                    retired, current[0] = current[0], fresh
                    retired.retire()
                    on_event(f"reloaded: {plural(len(fresh.models), 'model')} from "
                             f"{plural(len(paths), 'bundle')}")
            server.shutdown()
            left = server.drain(options.drain_timeout)
            on_event("stopped" if not left else f"stopped with {plural(left, 'answer')} cut")
        finally:
            _restore(previous)
            server.server_close()
    finally:
        current[0].close()


def _signals(stop: threading.Event, reload: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_stop(_n: int, _f: FrameType | None) -> None:
        stop.set()

    def on_hup(_n: int, _f: FrameType | None) -> None:
        reload.set()

    previous: dict[int, Any] = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
                signal.SIGINT: signal.signal(signal.SIGINT, on_stop)}
    if hasattr(signal, "SIGHUP"):
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    return previous


def _restore(previous: Mapping[int, Any]) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)
