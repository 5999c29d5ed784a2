"""OCI documents as frozen dataclasses; strict JSON in, canonical JSON out, raw bytes kept."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bundler.digest import Digest
from bundler.errors import IntegrityError

# https://github.com/opencontainers/image-spec/blob/v1.1.1/media-types.md
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Docker schema2, what Ollama stores and pulls (Ollama's manifest/manifest.go; formats/ollama-store.md §2)
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_MEDIA_TYPES = (MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST)
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

MAX_SIZE = 2**63 - 1
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # Distribution's manifest limit
_MAX_DEPTH = 64


def canonical_json(obj: Any) -> bytes:
    """The one way we serialise JSON we author (formats/README.md, "Canonical JSON")."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _check_tree(obj: Any, level: int = 0) -> None:
    """Nesting depth, and strings that are valid Unicode (no lone surrogates from \\ud800)."""
    if level > _MAX_DEPTH:
        raise ValueError(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(obj, str):
        obj.encode("utf-8")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            k.encode("utf-8")
            _check_tree(v, level + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_tree(v, level + 1)


def load_json(raw: bytes, what: str) -> dict[str, Any]:
    """Parse strict JSON (formats/README.md, "Strict JSON"); the top level must be an object."""
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("byte-order mark")
        obj = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant,
            parse_float=lambda s: _reject_constant(f"number {s}"),
        )
        _check_tree(obj)
    except (ValueError, RecursionError) as e:
        raise IntegrityError(f"{what}: not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what}: not a JSON object")
    return obj


def get(obj: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    """obj[key], required to be of `kind` (bool is never an int here)."""
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IntegrityError(f"{what}: {key!r} is missing or not a {kind.__name__}")
    return value


def get_size(obj: Mapping[str, Any], what: str) -> int:
    size: int = get(obj, "size", int, what)
    if not 0 <= size <= MAX_SIZE:
        raise IntegrityError(f"{what}: size {size} is out of range")
    return size


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise IntegrityError(f"{what}: descriptor is not an object")
        annotations = obj.get("annotations", {})
        if not isinstance(annotations, dict) or not all(
            isinstance(v, str) for v in annotations.values()
        ):
            raise IntegrityError(f"{what}: annotations must map strings to strings")
        return cls(
            media_type=get(obj, "mediaType", str, what),
            digest=Digest.parse(obj.get("digest"), what=what),
            size=get_size(obj, what),
            annotations=annotations,
        )

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "mediaType": self.media_type, "digest": str(self.digest), "size": self.size,
        }
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return obj


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest as Ollama stores it; `raw` is the file, its digest the model ID."""

    raw: bytes = field(repr=False)
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Config first, then layers."""
        return (self.config, *self.layers)

    @property
    def total_size(self) -> int:
        """What `ollama list` shows as SIZE: config plus layers, from the manifest."""
        return sum(d.size for d in self.blobs)

    @classmethod
    def parse(cls, raw: bytes, what: str) -> Manifest:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{what}: manifest is larger than 4 MiB")
        obj = load_json(raw, what)
        if obj.get("schemaVersion") != 2 or isinstance(obj.get("schemaVersion"), bool):
            raise IntegrityError(f"{what}: schemaVersion is not 2")
        media_type = get(obj, "mediaType", str, what)
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise IntegrityError(f"{what}: unsupported manifest mediaType {media_type!r}")
        layers = obj.get("layers")
        if layers is None and "layers" in obj:
            layers = []  # a nil slice, as Ollama's manifest.WriteManifest writes remote models
        if not isinstance(layers, list):
            raise IntegrityError(f"{what}: 'layers' is missing or not a list")
        return cls(
            raw=raw,
            media_type=media_type,
            config=Descriptor.from_json(obj.get("config"), f"{what} config"),
            layers=tuple(
                Descriptor.from_json(d, f"{what} layer {i}") for i, d in enumerate(layers)
            ),
        )


@dataclass(frozen=True, slots=True)
class Index:
    """index.json: one descriptor per model, named by the ref.name annotation."""

    manifests: tuple[Descriptor, ...]

    def to_bytes(self) -> bytes:
        return canonical_json({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [d.to_json() for d in self.manifests],
        })

    @classmethod
    def parse(cls, raw: bytes, what: str = "index.json") -> Index:
        obj = load_json(raw, what)
        if obj.get("schemaVersion") != 2 or isinstance(obj.get("schemaVersion"), bool):
            raise IntegrityError(f"{what}: schemaVersion is not 2")
        if obj.get("mediaType") != MEDIA_TYPE_OCI_INDEX:
            raise IntegrityError(f"{what}: mediaType is not {MEDIA_TYPE_OCI_INDEX}")
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise IntegrityError(f"{what}: 'manifests' is missing or not a list")
        return cls(tuple(
            Descriptor.from_json(d, f"{what} manifest {i}") for i, d in enumerate(manifests)
        ))


def unique(digests: Sequence[Digest]) -> list[Digest]:
    """The digests in order of first appearance, each once."""
    return list(dict.fromkeys(digests))
