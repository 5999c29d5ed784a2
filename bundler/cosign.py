"""cosign simple signing (formats/signature-v1.md §6): the payloads signed for each model
manifest, the registry signature documents a bundle carries, and the signature manifests
pushed beside a model. Pure: no I/O, no cryptography (signatures are base64 text here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bundler.digest import Digest
from bundler.errors import IntegrityError
from bundler.layout import Model
from bundler.oci import MEDIA_TYPE_OCI_MANIFEST, canonical_json, get, load_json
from bundler.progress import plural

MEDIA_TYPE_DOCUMENT = "application/vnd.ollama-bundle.cosign.v1+json"
MEDIA_TYPE_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
ANNOTATION_SIGNATURE = "dev.cosignproject.cosign/signature"
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

_MEMBER = re.compile(r"ollama-bundle/cosign/([0-9a-f]{64})\.json")


def member(keyid: str) -> str:
    return f"ollama-bundle/cosign/{keyid}.json"


def member_keyid(name: str) -> str | None:
    """The key id a registry signature document's member name carries, or None."""
    m = _MEMBER.fullmatch(name)
    return m.group(1) if m else None


def signature_tag(digest: Digest) -> str:
    """cosign's tag for the signatures of the manifest `digest`."""
    return f"sha256-{digest.hex}.sig"


@dataclass(frozen=True, slots=True)
class Subject:
    """What one simple-signing payload names: a source repository and a manifest digest."""

    reference: str  # host/namespace/model
    manifest: Digest

    @classmethod
    def of(cls, model: Model) -> Subject:
        n = model.name
        return cls(f"{n.host}/{n.namespace}/{n.model}", model.manifest.digest)

    def payload(self) -> bytes:
        """§6.1: the exact bytes signed (Go's encoding/json order, which is sorted order)."""
        return canonical_json({
            "critical": {
                "identity": {"docker-reference": self.reference},
                "image": {"docker-manifest-digest": str(self.manifest)},
                "type": "cosign container image signature",
            },
            "optional": None,
        })


def subjects(models: Iterable[Model]) -> list[Subject]:
    """§6.2: one subject per distinct (repository, manifest), in the models' order."""
    return list(dict.fromkeys(Subject.of(m) for m in models))


@dataclass(frozen=True, slots=True)
class Document:
    """One signer's registry signature document: base64 DER signatures, one per subject."""

    keyid: str
    signatures: tuple[tuple[Subject, bytes], ...]

    def to_bytes(self) -> bytes:
        return canonical_json({
            "mediaType": MEDIA_TYPE_DOCUMENT,
            "signatures": [
                {"manifest": str(s.manifest), "reference": s.reference, "signature": sig.decode()}
                for s, sig in self.signatures
            ],
        }) + b"\n"

    @classmethod
    def parse(cls, raw: bytes, keyid: str, expected: Sequence[Subject]) -> Document:
        """§6.3 rule 1: exactly the subjects the bundle's models call for, in order.
        Signatures are returned undecoded; the caller checks their encoding and validity."""
        what = member(keyid)
        obj = load_json(raw, what)
        if obj.get("mediaType") != MEDIA_TYPE_DOCUMENT:
            raise IntegrityError(f"{what}: unknown mediaType {str(obj.get('mediaType'))[:80]!r}")
        entries = get(obj, "signatures", list, what)
        if len(entries) != len(expected):
            raise IntegrityError(f"{what}: {plural(len(entries), 'signature')} for "
                                 f"{plural(len(expected), 'model manifest')}")
        out: list[tuple[Subject, bytes]] = []
        for i, (entry, subject) in enumerate(zip(entries, expected, strict=True)):
            where = f"{what} signature {i}"
            if not isinstance(entry, dict):
                raise IntegrityError(f"{where}: not an object")
            manifest = Digest.parse(entry.get("manifest"), what=where)
            reference = get(entry, "reference", str, where)
            if Subject(reference, manifest) != subject:
                raise IntegrityError(f"{where}: names {reference[:200]!r} {manifest}, the bundle "
                                     f"calls for {subject.reference} {subject.manifest}")
            out.append((subject, get(entry, "signature", str, where).encode()))
        return cls(keyid, tuple(out))


# ---------------------------------------------------------------------------------------------
# Signature manifests in a registry (§6.4)


@dataclass(frozen=True, slots=True)
class Layer:
    """One signature in a cosign signature manifest: a payload blob and its signature."""

    digest: Digest
    size: int
    signature: str  # base64 DER

    def to_json(self) -> dict[str, Any]:
        # the field order cosign (go-containerregistry) writes
        return {"mediaType": MEDIA_TYPE_SIMPLESIGNING, "size": self.size,
                "digest": str(self.digest),
                "annotations": {ANNOTATION_SIGNATURE: self.signature}}


@dataclass(frozen=True, slots=True)
class Existing:
    """A layer already in a signature manifest, kept byte for byte (its certificate, Rekor
    bundle or timestamp annotations included)."""

    digest: Digest
    signature: str | None
    raw: dict[str, Any]


def existing_layers(raw: bytes, what: str) -> list[Existing] | None:
    """The layers of a signature manifest already in the registry; None if it is not an OCI
    manifest whose layers are all descriptors (something other than cosign wrote the tag)."""
    try:
        obj = load_json(raw, what)
        if obj.get("mediaType", MEDIA_TYPE_OCI_MANIFEST) != MEDIA_TYPE_OCI_MANIFEST:
            return None
        layers = []
        for i, d in enumerate(get(obj, "layers", list, what)):
            if not isinstance(d, dict):
                return None
            annotations = d.get("annotations")
            signature = (annotations.get(ANNOTATION_SIGNATURE)
                         if isinstance(annotations, dict) else None)
            layers.append(Existing(Digest.parse(d.get("digest"), what=f"{what} layer {i}"),
                                   signature if isinstance(signature, str) else None, d))
        return layers
    except IntegrityError:
        return None


def merge(existing: Sequence[Existing], ours: Sequence[Layer]) -> list[dict[str, Any]] | None:
    """The layers after adding ours (the existing ones first and unchanged, duplicates
    skipped), or None if every one of ours is there already."""
    have = {(la.digest, la.signature) for la in existing}
    new = [la for la in dict.fromkeys(ours) if (la.digest, la.signature) not in have]
    return [*(la.raw for la in existing), *(la.to_json() for la in new)] if new else None


def signature_config(layers: Sequence[dict[str, Any]]) -> bytes:
    """cosign's empty-image config for these layers (§6.4 step 4), in Go's field order."""
    return json.dumps({
        "architecture": "", "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
        "rootfs": {"type": "layers", "diff_ids": [la["digest"] for la in layers]},
        "config": {},
    }, separators=(",", ":")).encode()


def signature_manifest(config: bytes, layers: Sequence[dict[str, Any]]) -> bytes:
    """The OCI manifest pushed at tag sha256-<hex>.sig (§6.4 step 5)."""
    return json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "size": len(config),
                   "digest": str(Digest.of(config))},
        "layers": list(layers),
    }, separators=(",", ":")).encode()
