"""The read part of the Distribution API as `bundle serve` answers it (formats/serve-v1.md):
routes, path and name checks, `Range`, which frames of a member hold a byte range, error
bodies and the access-log line; and the names a model gets in a registry (`Target`,
`plan_push`), for `import --to-registry`, `check-registry` and `bundle serve`. Pure: no I/O."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

from bundler.digest import Digest
from bundler.errors import IntegrityError, UsageError
from bundler.layout import Model
from bundler.oci import MEDIA_TYPE_DOCKER_MANIFEST
from bundler.reference import pick

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_LINES = 64
MAX_RANGE_HEADER = 64
MAX_LIST = 1000

# Distribution's grammar (distribution/reference/regexp.go): path components and tags; the one
# copy, for the names we push (registry/client.py) and the names we serve (route)
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_RANGE = re.compile(r"bytes=(?:([0-9]{1,19})-([0-9]{0,19})|-([0-9]{1,19}))")
_CONTROL = re.compile(r"[^\x20-\x7e]|[\"\\]")


def is_repository_component(text: str) -> bool:
    """One path component of a Distribution repository name."""
    return bool(_COMPONENT.fullmatch(text))


def is_valid_tag(tag: str) -> bool:
    return bool(_TAG.fullmatch(tag))


def _is_digest(text: str) -> bool:
    try:
        Digest.parse(text)
    except IntegrityError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Target:
    """A registry given as [http://|https://]host[:port][/namespace]."""

    scheme: str
    host: str  # host[:port]
    namespace: str | None

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    @classmethod
    def parse(cls, text: str, *, plain_http: bool = False) -> Target:
        scheme = "http" if plain_http else "https"
        rest = text
        for prefix in ("http://", "https://"):
            if text.lower().startswith(prefix):
                scheme, rest = prefix[:-3], text[len(prefix):]
                break
        host, _, namespace = rest.strip("/").partition("/")
        if not host or not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9a-fA-F:]+\](:[0-9]{1,5})?",
                                        host):
            raise UsageError(f"not a registry address: {text!r}",
                             hint="use [http://|https://]host[:port][/namespace]")
        if namespace and not is_repository_component(namespace):
            raise UsageError(f"registry namespace {namespace!r} is not one lowercase path "
                             "component", hint="Ollama names have exactly namespace/model")
        return cls(scheme, host.lower(), namespace or None)

    def repository(self, namespace: str, model: str) -> str | None:
        """Where the model namespace/model lives in this registry: the URL's namespace if it
        has one, else the model's own, lowercased (`repository_name`). The one mapping for
        `import --to-registry`, `export --from-registry --mirror`, `inventory --registry`
        (`holds`) and `check-registry`."""
        return repository_name(self.namespace or namespace, model)

    def holds(self, repository: str) -> bool:
        """Whether `repository` is one `repository()` can give: under the URL's namespace."""
        return self.namespace is None or repository.startswith(f"{self.namespace}/")


def repository_name(namespace: str, model: str) -> str | None:
    """The Distribution repository for an Ollama namespace/model, lowercased; None if even the
    lowercase form is not a legal repository name."""
    repo = f"{namespace.lower()}/{model.lower()}"
    ok = all(map(is_repository_component, repo.split("/")))
    return repo if ok else None


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


def plan_push(models: Sequence[Model], target: Target, only: Sequence[str]) -> list[PushItem]:
    """Where each model goes: <host>/<namespace from the URL, else its own>/<model>:<tag>,
    lowercased where Distribution requires it."""
    models = list(models)
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


class HttpError(Exception):
    """An answer other than the one asked for: status, Distribution error code, message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def body(self) -> bytes:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> bytes:
    """Distribution's error document (distribution-spec, "Error Codes")."""
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]},
                      separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Route:
    """What a request asks for: `kind` is base, catalog, tags, manifest or blob."""

    kind: str
    name: str = ""
    reference: str = ""
    n: int = MAX_LIST
    last: str = ""


def route(method: str, target: str) -> Route:
    """The route of a request target; HttpError for anything not served
    (formats/serve-v1.md §2)."""
    if method not in ("GET", "HEAD"):
        raise HttpError(405, "UNSUPPORTED", f"{method} is not served: this registry is "
                        "read-only", [("Allow", "GET, HEAD")])
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        raise HttpError(400, "UNSUPPORTED", "the request target must be a path")
    raw = parts.path
    if raw in ("/v2", "/v2/"):
        return Route("base")
    if not raw.startswith("/v2/"):
        raise HttpError(404, "NAME_UNKNOWN", "not a Distribution API path")
    try:
        components = [unquote(c, errors="strict") if "%" in c else c for c in raw[4:].split("/")]
    except UnicodeDecodeError:
        raise HttpError(400, "NAME_INVALID", "invalid path component") from None
    for c in components:
        if c in ("", ".", "..") or any(ch in c for ch in "/\\\0"):
            raise HttpError(400, "NAME_INVALID", "invalid path component")
    query = _query(parts.query)
    if components == ["_catalog"]:
        return Route("catalog", n=query[0], last=query[1])
    if len(components) >= 3 and components[-2:] == ["tags", "list"]:
        return Route("tags", _name(components[:-2]), n=query[0], last=query[1])
    if len(components) >= 3 and components[-2] in ("manifests", "blobs"):
        name, reference = _name(components[:-2]), components[-1]
        if components[-2] == "blobs":
            if not _is_digest(reference):
                raise HttpError(400, "DIGEST_INVALID", "not a sha256 digest")
            return Route("blob", name, reference)
        if not (_is_digest(reference) or is_valid_tag(reference)):
            raise HttpError(400, "TAG_INVALID", "not a tag or a sha256 digest")
        return Route("manifest", name, reference)
    raise HttpError(404, "NAME_UNKNOWN", "not a Distribution API path")


def _name(components: list[str]) -> str:
    if not all(map(is_repository_component, components)) or len("/".join(components)) > 255:
        raise HttpError(400, "NAME_INVALID", "invalid repository name")
    return "/".join(components)


def _query(text: str) -> tuple[int, str]:
    try:
        query = parse_qs(text, max_num_fields=8, strict_parsing=False)
    except ValueError:
        raise HttpError(400, "UNSUPPORTED", "malformed query") from None
    n_text, last = (query.get("n") or [""])[-1], (query.get("last") or [""])[-1]
    if n_text and not (re.fullmatch(r"[0-9]{1,9}", n_text) and int(n_text) > 0):  # (ASCII)
        raise HttpError(400, "PAGINATION_NUMBER_INVALID", "n must be a positive number")
    return (min(int(n_text), MAX_LIST) if n_text else MAX_LIST), last[:256]


def page(items: Sequence[str], n: int, last: str) -> tuple[list[str], str | None]:
    """Distribution's pagination: the sorted items after `last`, at most n, and the `last`
    of the next page if more remain."""
    after = [i for i in sorted(items) if i > last] if last else sorted(items)
    shown = after[:n]
    return shown, (shown[-1] if len(after) > n and shown else None)


def next_link(path: str, n: int, last: str) -> str:
    return f'<{path}?n={n}&last={quote(last, safe="")}>; rel="next"'


# ---------------------------------------------------------------------------------------------
# Range (RFC 9110 §14)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive of the one range-spec formats/serve-v1.md §3 serves, None
    without a Range header; HttpError 416 for any other Range value."""
    if header is None:
        return None
    unsatisfiable = HttpError(416, "RANGE_INVALID", "only one satisfiable bytes range is served",
                              [("Content-Range", f"bytes */{size}")])
    m = _RANGE.fullmatch(header) if len(header) <= MAX_RANGE_HEADER else None
    if m is None:
        raise unsatisfiable
    if m.group(3) is not None:
        suffix = int(m.group(3))
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - suffix), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        raise unsatisfiable
    return first, min(last, size - 1)


# ---------------------------------------------------------------------------------------------
# Answers


@dataclass(frozen=True, slots=True)
class FileSpan:
    """Bytes that lie raw in a file: `length` bytes at `offset` of descriptor `fd`."""

    fd: int
    offset: int
    length: int


Piece = memoryview | FileSpan


@dataclass(slots=True)
class Answer:
    """A response: status, headers, and a body either in `body` or streamed from `stream`
    (`length` bytes; an exception from it cuts the connection before the rest is sent)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    stream: Iterator[Piece] | None = None
    length: int = 0

    @classmethod
    def error(cls, e: HttpError) -> Answer:
        body = e.body()
        return cls(e.status, [("Content-Type", "application/json"), *e.headers], body,
                   length=len(body))

    @classmethod
    def json(cls, obj: object, headers: Sequence[tuple[str, str]] = ()) -> Answer:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return cls(200, [("Content-Type", "application/json"), *headers], body,
                   length=len(body))


def split_last(piece: Piece) -> tuple[Piece | None, Piece]:
    """A piece as (everything but its last byte, its last byte)."""
    if isinstance(piece, FileSpan):
        head = FileSpan(piece.fd, piece.offset, piece.length - 1) if piece.length > 1 else None
        return head, FileSpan(piece.fd, piece.offset + piece.length - 1, 1)
    return (piece[:-1] if len(piece) > 1 else None), piece[-1:]


def piece_length(piece: Piece) -> int:
    return piece.length if isinstance(piece, FileSpan) else len(piece)


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True, slots=True)
class Frame:
    """One zstd frame of a member: where it is in the file, and which decompressed bytes of
    the member (tar header, body, padding) it holds."""

    offset: int  # compressed offset in the stream
    size: int  # compressed size
    start: int  # decompressed offset within the member's frames
    length: int  # decompressed size


def member_frames(rows: Sequence[tuple[int, int]], span: tuple[int, int]) -> list[Frame]:
    """The frames of the seek table's `rows` (formats/bundle-v1.md §7.1) between the
    compressed offsets `span` (a member's first frame's start, its last frame's end)."""
    out, offset, start = [], 0, 0
    for compressed, decompressed in rows:
        if span[0] <= offset and offset + compressed <= span[1]:
            out.append(Frame(offset, compressed, start, decompressed))
            start += decompressed
        offset += compressed
        if offset >= span[1]:
            break
    return out


def frames_for(frames: Sequence[Frame], first: int, last: int) -> list[tuple[Frame, int, int]]:
    """The frames that hold member bytes first..last (inclusive), each with the offset within
    the frame to start at and how many bytes to take from there."""
    out = []
    for f in frames:
        lo, hi = max(first, f.start), min(last, f.start + f.length - 1)
        if lo <= hi:
            out.append((f, lo - f.start, hi - lo + 1))
    return out


# ---------------------------------------------------------------------------------------------
# The access log


def printable(text: str) -> str:
    """Request text for a log line: control characters, quotes and backslashes escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def access_line(host: str, user: str | None, when: float, request_line: str, status: int,
                sent: int | None) -> str:
    """One line of the Common Log Format (formats/serve-v1.md §7)."""
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(when))
    return (f'{host} - {printable(user) if user else "-"} [{stamp}] '
            f'"{printable(request_line)}" {status} {"-" if sent is None else sent}')


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """`--listen`: HOST:PORT, [IPv6]:PORT, HOST or :PORT (then 127.0.0.1)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?|([A-Za-z0-9.-]*)(?::([0-9]{1,5}))?",
                     text.strip())
    if m is None:
        raise ValueError(f"not HOST:PORT: {text!r}")
    host = m.group(1) or m.group(3) or "127.0.0.1"
    port_text = m.group(2) or m.group(4)
    port = int(port_text) if port_text else default_port
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port
