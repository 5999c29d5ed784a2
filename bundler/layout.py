"""The bundle's contents (formats/bundle-v1.md): member names, the root document, index.json
and the rules that tie them together. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bundler import modelkind
from bundler.digest import Digest
from bundler.errors import BundlerError, IntegrityError
from bundler.oci import (
    ANNOTATION_REF_NAME,
    Descriptor,
    Index,
    Manifest,
    canonical_json,
    get,
    get_size,
    load_json,
    unique,
)
from bundler.progress import format_size
from bundler.reference import InvalidNameError, ModelName

MEDIA_TYPE_ROOT = "application/vnd.ollama-bundle.root.v1+json"
ROOT_MEMBER = "ollama-bundle/root.json"
OCI_LAYOUT_MEMBER = "oci-layout"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
INDEX_MEMBER = "index.json"
MAX_ROOT_BYTES = 16 * 1024 * 1024
MAX_INDEX_BYTES = 16 * 1024 * 1024
MAX_SIGNATURE_BYTES = 4096
MAX_SIGNATURES = 64
TOOL_DIRECTORY = "ollama-bundle/tool/"
MAX_TOOL_BYTES = 512 * 1024 * 1024
# formats/bundle-v1.md §5, §6: what a reader holds from one head, declared by the root before
# a byte of them is read (an Ollama manifest is a few KiB)
MAX_MODELS = 10_000
MAX_HEAD_MANIFEST_BYTES = 16 * 1024 * 1024

# formats/bundle-v1.md §3: the carried tool is written executable; writers before that wrote
# it 0644 like every other member, and readers accept both for it (and only for it).
TOOL_MODE = 0o755
TOOL_MODES_READ = (TOOL_MODE, 0o644)

# formats/bundle-v1.md §7: weights barely compress; JSON and text do.
WEIGHTS_MEDIA_TYPES = frozenset(f"application/vnd.ollama.image.{kind}" for kind in (
    "model", "projector", "adapter", "draft", "tensor"))
LEVEL_WEIGHTS = None  # stored as raw zstd blocks
LEVEL_OTHER = 3


def compression_level(media_type: str, override: int | None) -> int | None:
    """The zstd level for a config or layer (None: stored as raw blocks): `override` if given,
    else by what the member holds."""
    if override is not None:
        return override
    return LEVEL_WEIGHTS if media_type in WEIGHTS_MEDIA_TYPES else LEVEL_OTHER


def metadata_level(override: int | None) -> int:
    """The zstd level for the head frame and the manifests."""
    return LEVEL_OTHER if override is None else override


_SIGNATURE_MEMBER = re.compile(r"ollama-bundle/signatures/([0-9a-f]{64})\.sig")
_KEYID = re.compile(r"[0-9a-f]{64}")
_TOOL_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
_CREATED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def blob_member(digest: Digest) -> str:
    """blobs/sha256/<hex>: the only place a blob's name inside a bundle is spelled out."""
    return f"blobs/sha256/{digest.hex}"


def signature_member(keyid: str) -> str:
    return f"ollama-bundle/signatures/{keyid}.sig"


def signature_keyid(member: str) -> str | None:
    """The key id a signature member names, or None if `member` is not a signature member."""
    m = _SIGNATURE_MEMBER.fullmatch(member)
    return m.group(1) if m else None


def tool_member(version: str) -> str:
    """The carried tool's member name (formats/bundle-v1.md §11)."""
    return f"{TOOL_DIRECTORY}ollama-bundle-{version}.pex"


def check_tool_version(version: str, what: str) -> str:
    if not _TOOL_VERSION.fullmatch(version):
        raise IntegrityError(f"{what}: version {version[:80]!r} is not 1 to 64 characters of "
                             "[0-9A-Za-z.+_-]")
    return version


def check_created(created: str, what: str) -> str:
    """A UTC time YYYY-MM-DDTHH:MM:SSZ, else IntegrityError."""
    try:
        if not _CREATED.fullmatch(created):
            raise ValueError
        datetime.fromisoformat(created[:-1])  # a real date (no lazy _strptime import)
    except ValueError:
        raise IntegrityError(f"{what}: 'created' is not a UTC time YYYY-MM-DDTHH:MM:SSZ",
                             ) from None
    return created


def format_created(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class BlobRef:
    digest: Digest
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"digest": str(self.digest), "size": self.size}

    @classmethod
    def from_json(cls, obj: object, what: str) -> BlobRef:
        if not isinstance(obj, dict):
            raise IntegrityError(f"{what}: not an object")
        return cls(Digest.parse(obj.get("digest"), what=what), get_size(obj, what))


@dataclass(frozen=True, slots=True)
class CosignRef:
    """A registry signature document, as the root lists it (§4, member 2a)."""

    keyid: str
    blob: BlobRef

    def to_json(self) -> dict[str, Any]:
        return {"keyid": self.keyid, **self.blob.to_json()}

    @classmethod
    def from_json(cls, obj: object, what: str) -> CosignRef:
        if not isinstance(obj, dict):
            raise IntegrityError(f"{what}: not an object")
        keyid = get(obj, "keyid", str, what)
        if not _KEYID.fullmatch(keyid):
            raise IntegrityError(f"{what}: keyid is not 64 lowercase hex characters")
        return cls(keyid, BlobRef.from_json(obj, what))


@dataclass(frozen=True, slots=True)
class ToolRef:
    """The carried tool, as the root names it (formats/bundle-v1.md §11, member 2b)."""

    version: str
    blob: BlobRef

    @property
    def member(self) -> str:
        return tool_member(self.version)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, **self.blob.to_json()}

    @classmethod
    def from_json(cls, obj: object, what: str) -> ToolRef:
        if not isinstance(obj, dict):
            raise IntegrityError(f"{what}: not an object")
        blob = BlobRef.from_json(obj, what)
        if blob.size > MAX_TOOL_BYTES:
            raise IntegrityError(f"{what}: {blob.size} bytes, more than the limit "
                                 f"{MAX_TOOL_BYTES}")
        return cls(check_tool_version(get(obj, "version", str, what), what), blob)


@dataclass(frozen=True, slots=True)
class Base:
    """A release a delta bundle was made against (§4.3)."""

    media_type: str  # a bundle root's or an inventory's
    digest: Digest  # of the base's root document, or of the inventory file
    created: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": str(self.digest),
                "created": self.created, "name": self.name}

    @classmethod
    def from_json(cls, obj: object, what: str) -> Base:
        if not isinstance(obj, dict):
            raise IntegrityError(f"{what}: not an object")
        return cls(get(obj, "mediaType", str, what), Digest.parse(obj.get("digest"), what=what),
                   check_created(get(obj, "created", str, what), what),
                   get(obj, "name", str, what))

    def describe(self) -> str:
        return f"{self.name} (created {self.created})"


@dataclass(frozen=True, slots=True)
class External:
    """A config or layer a delta bundle leaves out, and the base that had it (§4.3)."""

    blob: BlobRef
    base: int

    def to_json(self) -> dict[str, Any]:
        return {**self.blob.to_json(), "base": self.base}


@dataclass(frozen=True, slots=True)
class Root:
    """The signed root document (formats/bundle-v1.md §4)."""

    created: str
    tool_name: str
    tool_version: str
    index: BlobRef
    blobs: tuple[BlobRef, ...]
    cosign: tuple[CosignRef, ...] = ()
    parts: tuple[BlobRef, ...] = ()  # parts 2..N of a split bundle (§10)
    bases: tuple[Base, ...] = ()
    external: tuple[External, ...] = ()
    tool_file: ToolRef | None = None  # the carried tool (§11)
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def total_size(self) -> int:
        return sum(b.size for b in self.blobs)

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {
            "mediaType": MEDIA_TYPE_ROOT,
            "created": self.created,
            "tool": {"name": self.tool_name, "version": self.tool_version},
            "index": self.index.to_json(),
            "blobs": [b.to_json() for b in self.blobs],
        }
        if self.cosign:
            obj["cosign"] = [c.to_json() for c in self.cosign]
        if self.parts:
            obj["parts"] = [b.to_json() for b in self.parts]
        if self.bases:
            obj["bases"] = [b.to_json() for b in self.bases]
        if self.external:
            obj["external"] = [e.to_json() for e in self.external]
        if self.tool_file is not None:
            obj["toolFile"] = self.tool_file.to_json()
        return canonical_json(obj) + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> Root:
        what = ROOT_MEMBER
        obj = load_json(raw, what)
        if obj.get("mediaType") != MEDIA_TYPE_ROOT:
            raise IntegrityError(
                f"{what}: unknown mediaType {str(obj.get('mediaType'))[:80]!r}",
                hint="the bundle was written by a newer or different tool",
            )
        created = check_created(get(obj, "created", str, what), what)
        tool = get(obj, "tool", dict, what)
        blobs = tuple(
            BlobRef.from_json(b, f"{what} blob {i}")
            for i, b in enumerate(get(obj, "blobs", list, what))
        )
        if len({b.digest for b in blobs}) != len(blobs):
            raise IntegrityError(f"{what}: a blob is listed twice")
        cosign = tuple(
            CosignRef.from_json(c, f"{what} cosign {i}")
            for i, c in enumerate(get(obj, "cosign", list, what) if "cosign" in obj else [])
        )
        if [c.keyid for c in cosign] != sorted({c.keyid for c in cosign}):
            raise IntegrityError(f"{what}: cosign documents out of order or listed twice")
        parts = tuple(BlobRef.from_json(b, f"{what} part {i + 2}")
                      for i, b in enumerate(_optional_list(obj, "parts", what)))
        bases = tuple(Base.from_json(b, f"{what} base {i}")
                      for i, b in enumerate(_optional_list(obj, "bases", what)))
        external = []
        for i, e in enumerate(_optional_list(obj, "external", what)):
            where = f"{what} external {i}"
            blob = BlobRef.from_json(e, where)
            base = get(e, "base", int, where)
            if not 0 <= base < len(bases):
                raise IntegrityError(f"{where}: base {base} is not in 'bases'")
            external.append(External(blob, base))
        carried = {b.digest for b in blobs}
        left_out = [e.blob.digest for e in external]
        if len(set(left_out)) != len(left_out) or carried & set(left_out):
            raise IntegrityError(f"{what}: a blob is both carried and left out, or left out "
                                 "twice")
        return cls(
            created=created,
            tool_name=get(tool, "name", str, f"{what} tool"),
            tool_version=get(tool, "version", str, f"{what} tool"),
            index=BlobRef.from_json(obj.get("index"), f"{what} index"),
            blobs=blobs,
            cosign=cosign,
            parts=parts,
            bases=bases,
            external=tuple(external),
            tool_file=(ToolRef.from_json(obj["toolFile"], f"{what} toolFile")
                       if "toolFile" in obj else None),
            raw=raw,
        )


def _optional_list(obj: Mapping[str, Any], key: str, what: str) -> list[Any]:
    return get(obj, key, list, what) if key in obj else []


@dataclass(frozen=True, slots=True)
class Model:
    """A named model: its name and its manifest (raw bytes kept)."""

    name: ModelName
    manifest: Manifest

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name.display_shortest(),
            "fullName": str(self.name),
            "id": self.manifest.digest.short,
            "digest": str(self.manifest.digest),
            "size": self.manifest.total_size,
            "layers": [layer.media_type.rsplit(".", 1)[-1] for layer in self.manifest.layers],
            "weights": modelkind.weights(self.manifest),
        }


@dataclass(frozen=True, slots=True)
class Contents:
    """What a bundle holds, in archive order: index.json bytes and the blob list."""

    models: tuple[Model, ...]
    index_raw: bytes
    blobs: tuple[BlobRef, ...]
    bases: tuple[Base, ...] = ()
    external: tuple[External, ...] = ()

    def root(self, *, created: str, tool_name: str, tool_version: str,
             cosign: Sequence[CosignRef] = (), parts: Sequence[BlobRef] = (),
             tool_file: ToolRef | None = None) -> Root:
        return Root(
            created=created, tool_name=tool_name, tool_version=tool_version,
            index=BlobRef(Digest.of(self.index_raw), len(self.index_raw)), blobs=self.blobs,
            cosign=tuple(cosign), parts=tuple(parts), bases=self.bases, external=self.external,
            tool_file=tool_file,
        )


@dataclass(frozen=True, slots=True)
class Have:
    """What the bases of a delta bundle hold: blob -> (size, index of the base)."""

    bases: tuple[Base, ...] = ()
    blobs: Mapping[Digest, tuple[int, int]] = field(default_factory=dict)


NO_BASES = Have()


def plan_contents(models: Iterable[Model], have: Have = NO_BASES) -> Contents:
    """Order models and blobs as formats/bundle-v1.md §4.2 and §5 say; build index.json.
    Configs and layers the bases have (same size) are left out (§4.3)."""
    ordered = tuple(sorted(models, key=lambda m: str(m.name)))
    declared = sum({m.manifest.digest: len(m.manifest.raw) for m in ordered}.values())
    if len(ordered) > MAX_MODELS or declared > MAX_HEAD_MANIFEST_BYTES:  # what readers take
        raise BundlerError(f"{len(ordered)} models with {format_size(declared)} of manifests "
                           f"are more than one bundle holds ({MAX_MODELS} models, "
                           f"{format_size(MAX_HEAD_MANIFEST_BYTES)} of manifests)",
                           hint="export the models in several bundles")
    folded = [m.name.folded() for m in ordered]
    if len(set(folded)) != len(folded):
        raise IntegrityError("two models differ only in letter case; Ollama treats them as one")
    index = Index(tuple(
        Descriptor(
            media_type=m.manifest.media_type, digest=m.manifest.digest, size=len(m.manifest.raw),
            annotations={ANNOTATION_REF_NAME: str(m.name)},
        )
        for m in ordered
    ))
    refs: dict[Digest, int] = {}
    for m in ordered:
        refs.setdefault(m.manifest.digest, len(m.manifest.raw))
    for m in ordered:
        refs.setdefault(m.manifest.config.digest, m.manifest.config.size)
    for m in ordered:
        for layer in m.manifest.layers:
            refs.setdefault(layer.digest, layer.size)
    manifests = {m.manifest.digest for m in ordered}
    external = tuple(External(BlobRef(d, size), have.blobs[d][1]) for d, size in refs.items()
                     if d not in manifests and have.blobs.get(d, (-1, 0))[0] == size)
    left_out = {e.blob.digest for e in external}
    used = sorted({e.base for e in external})  # keep only the bases something came from
    renumber = {old: new for new, old in enumerate(used)}
    return Contents(ordered, index.to_bytes(),
                    tuple(BlobRef(d, s) for d, s in refs.items() if d not in left_out),
                    tuple(have.bases[i] for i in used),
                    tuple(External(e.blob, renumber[e.base]) for e in external))


def index_models(root: Root, index: Index) -> list[tuple[ModelName, Descriptor]]:
    """Check index.json against the root (§5) and return (name, manifest descriptor) pairs."""
    if len(index.manifests) > MAX_MODELS:
        raise IntegrityError(f"index.json: {len(index.manifests)} models, more than the limit "
                             f"{MAX_MODELS}", hint=_HEAD_HINT)
    named: list[tuple[ModelName, Descriptor]] = []
    seen: set[tuple[str, str, str, str]] = set()
    for i, d in enumerate(index.manifests):
        what = f"index.json manifest {i}"
        ref = d.annotations.get(ANNOTATION_REF_NAME)
        if ref is None:
            raise IntegrityError(f"{what}: no {ANNOTATION_REF_NAME} annotation")
        try:
            name = ModelName.parse(ref)
        except InvalidNameError:
            raise IntegrityError(f"{what}: {ref[:400]!r} is not a valid Ollama name") from None
        if str(name) != ref:
            raise IntegrityError(f"{what}: {ref!r} is not a full name host/namespace/model:tag")
        if name.folded() in seen:
            raise IntegrityError(f"{what}: {ref!r} is listed twice (letter case ignored)")
        seen.add(name.folded())
        named.append((name, d))
    manifests = unique([d.digest for _, d in named])
    head = root.blobs[: len(manifests)]
    if [b.digest for b in head] != manifests:
        raise IntegrityError("index.json: its manifests are not the first blobs of the root")
    sizes = {b.digest: b.size for b in head}
    for name, d in named:
        if sizes[d.digest] != d.size:
            raise IntegrityError(f"index.json: {name}: manifest size differs from the root's")
    declared = sum(sizes.values())
    if declared > MAX_HEAD_MANIFEST_BYTES:  # checked before any manifest is read
        raise IntegrityError(
            f"{ROOT_MEMBER}: its {len(sizes)} manifests declare {format_size(declared)}, more "
            f"than the {format_size(MAX_HEAD_MANIFEST_BYTES)} a reader holds from one head",
            hint=_HEAD_HINT)
    return named


_HEAD_HINT = ("manifests are a few KiB each: this is not a bundle ollama-bundle writes; "
              "if it is yours, export the models in several bundles")


def check_manifests(
    root: Root, named: Sequence[tuple[ModelName, Descriptor]], raws: Mapping[Digest, bytes],
) -> list[Model]:
    """Parse the verified manifest blobs and check them against the root (§6)."""
    # configs and layers must be among the blobs after the manifests (never a manifest) or
    # left out (§4.3)
    sizes = {b.digest: b.size for b in root.blobs[len(raws):]}
    sizes.update((e.blob.digest, e.blob.size) for e in root.external)
    parsed: dict[Digest, Manifest] = {}
    models: list[Model] = []
    referenced: set[Digest] = set()
    for name, d in named:
        manifest = parsed.get(d.digest)
        if manifest is None:
            manifest = Manifest.parse(raws[d.digest], f"manifest of {name}")
            parsed[d.digest] = manifest
        if manifest.media_type != d.media_type:
            raise IntegrityError(f"manifest of {name}: mediaType differs from index.json's")
        for blob in manifest.blobs:
            if sizes.get(blob.digest) != blob.size:
                raise IntegrityError(
                    f"manifest of {name}: blob {blob.digest} is not in the bundle with that size",
                )
            referenced.add(blob.digest)
        models.append(Model(name, manifest))
    extra = [b.digest for b in (*root.blobs[len(parsed):], *(e.blob for e in root.external))
             if b.digest not in referenced]
    if extra:
        raise IntegrityError(f"{ROOT_MEMBER}: blob {extra[0]} is not referenced by any manifest")
    return models


def delta_json(bases: Sequence[Base], external: Sequence[External]) -> dict[str, Any]:
    """A delta's bases and what it leaves out, for the results' JSON (§4.3)."""
    return {"bases": [b.to_json() for b in bases],
            "leftOut": {"blobs": len(external), "bytes": sum(e.blob.size for e in external)}}


def tool_json(tool: ToolRef | None) -> dict[str, Any]:
    """The carried tool, for the results' JSON (§11); nothing without one."""
    if tool is None:
        return {}
    return {"toolFile": {"member": tool.member, **tool.to_json()}}
