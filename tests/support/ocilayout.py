"""A checker for OCI image layouts, written from image-spec v1.1.1 image-layout.md and
descriptor.md, independent of bundler's own reader. Each check quotes the rule it enforces."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")  # descriptor.md: sha256 "MUST be lowercase hex"


class LayoutError(AssertionError):
    pass


def _descriptor(d: Any, root: Path, seen: set[str]) -> bytes:
    # descriptor.md: "mediaType ... REQUIRED", "digest ... REQUIRED", "size ... REQUIRED"
    if not isinstance(d, dict) or not isinstance(d.get("mediaType"), str):
        raise LayoutError(f"descriptor without mediaType: {d!r}")
    if not isinstance(d.get("digest"), str) or not _DIGEST.fullmatch(d["digest"]):
        raise LayoutError(f"descriptor digest malformed: {d!r}")
    if not isinstance(d.get("size"), int) or d["size"] < 0:
        raise LayoutError(f"descriptor size malformed: {d!r}")
    # image-layout.md: "blobs/<alg>/<encoded>"; the content MUST match the digest and size
    path = root / "blobs" / "sha256" / d["digest"][7:]
    if not path.is_file():
        raise LayoutError(f"blob {d['digest']} referenced but missing")
    data: bytes = path.read_bytes()
    if len(data) != d["size"]:
        raise LayoutError(f"blob {d['digest']} has {len(data)} bytes, descriptor says {d['size']}")
    seen.add(d["digest"][7:])
    return data


def check_layout(root: Path) -> dict[str, Any]:
    """Raise LayoutError unless `root` is a valid OCI image layout; return index.json."""
    # image-layout.md: "oci-layout file ... MUST be a JSON object" with imageLayoutVersion
    layout = json.loads((root / "oci-layout").read_bytes())
    if layout.get("imageLayoutVersion") != "1.0.0":
        raise LayoutError("oci-layout: imageLayoutVersion must be 1.0.0")
    # image-layout.md: "index.json file ... REQUIRED ... MUST be an image index"
    index = json.loads((root / "index.json").read_bytes())
    if index.get("schemaVersion") != 2:
        raise LayoutError("index.json: schemaVersion must be 2")
    if index.get("mediaType", "application/vnd.oci.image.index.v1+json") != \
            "application/vnd.oci.image.index.v1+json":
        raise LayoutError("index.json: wrong mediaType")
    seen: set[str] = set()
    for d in index["manifests"]:
        manifest = json.loads(_descriptor(d, root, seen))
        if manifest.get("mediaType") != d["mediaType"]:
            raise LayoutError("manifest mediaType differs from its descriptor's")
        for child in [manifest["config"], *manifest["layers"]]:
            _descriptor(child, root, seen)
    # image-layout.md: every file in blobs/<alg>/ is named by the digest of its content
    for path in (root / "blobs" / "sha256").iterdir():
        if hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
            raise LayoutError(f"blobs/sha256/{path.name}: content does not match its name")
        # (image-layout.md allows unreferenced blobs; bundle-v1.md §6 does not)
        if path.name not in seen:
            raise LayoutError(f"blobs/sha256/{path.name}: not referenced")
    return dict(index)
