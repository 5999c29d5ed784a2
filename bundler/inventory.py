"""Inventories (formats/inventory-v1.md) and comparing releases (`bundle diff`). Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bundler.digest import Digest
from bundler.errors import IntegrityError, NotFoundError
from bundler.layout import BlobRef, Model, Root, check_created
from bundler.oci import get, get_size, load_json
from bundler.progress import format_size, plural

MEDIA_TYPE_INVENTORY = "application/vnd.ollama-bundle.inventory.v1+json"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str  # as the source spells it
    digest: Digest  # of the manifest
    size: int


@dataclass(frozen=True, slots=True)
class Inventory:
    created: str
    source: str
    models: tuple[ModelEntry, ...]
    blobs: tuple[BlobRef, ...]

    def to_bytes(self) -> bytes:
        return json.dumps({
            "mediaType": MEDIA_TYPE_INVENTORY,
            "created": self.created,
            "source": self.source,
            "models": [{"name": m.name, "digest": str(m.digest), "size": m.size}
                       for m in sorted(self.models, key=lambda m: m.name)],
            "blobs": [b.to_json() for b in sorted(self.blobs, key=lambda b: str(b.digest))],
        }, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes, what: str) -> Inventory:
        obj = load_json(raw, what)
        if obj.get("mediaType") != MEDIA_TYPE_INVENTORY:
            raise IntegrityError(f"{what}: not an inventory (mediaType "
                                 f"{str(obj.get('mediaType'))[:80]!r})",
                                 hint="inventories come from 'bundle inventory'")
        models = []
        for i, m in enumerate(get(obj, "models", list, what)):
            where = f"{what} model {i}"
            if not isinstance(m, dict):
                raise IntegrityError(f"{where}: not an object")
            models.append(ModelEntry(get(m, "name", str, where),
                                     Digest.parse(m.get("digest"), what=where),
                                     get_size(m, where)))
        blobs = tuple(BlobRef.from_json(b, f"{what} blob {i}")
                      for i, b in enumerate(get(obj, "blobs", list, what)))
        return cls(check_created(get(obj, "created", str, what), what),
                   get(obj, "source", str, what), tuple(models), blobs)


@dataclass(frozen=True, slots=True)
class Release:
    """What `diff` compares: a bundle or an inventory, reduced to names and blobs."""

    label: str
    models: Mapping[str, Digest]  # full name -> manifest digest
    blobs: Mapping[Digest, int]  # configs and layers (carried or left out) -> size


@dataclass(frozen=True, slots=True)
class Diff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: int
    new_blobs: int
    new_bytes: int  # what a delta of NEW against OLD would carry

    def to_json(self) -> dict[str, Any]:
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": list(self.changed), "unchanged": self.unchanged,
                "newBlobs": self.new_blobs, "newBytes": self.new_bytes}


def diff(old: Release, new: Release) -> Diff:
    added = sorted(set(new.models) - set(old.models))
    removed = sorted(set(old.models) - set(new.models))
    both = sorted(set(old.models) & set(new.models))
    changed = [n for n in both if old.models[n] != new.models[n]]
    fresh = {d: s for d, s in new.blobs.items() if old.blobs.get(d) != s}
    return Diff(tuple(added), tuple(removed), tuple(changed), len(both) - len(changed),
                len(fresh), sum(fresh.values()))


def release_of_inventory(inv: Inventory, label: str) -> Release:
    return Release(label, {m.name: m.digest for m in inv.models},
                   {b.digest: b.size for b in inv.blobs})


def require_bases(root: Root, models: Sequence[Model], present: set[Digest], where: str) -> None:
    """formats/bundle-v1.md §4.3: every blob a delta bundle leaves out that these models need
    must already be in the target; else name them, who needs them and which release had them."""
    needed = {b.digest for m in models for b in m.manifest.blobs}
    missing = [e for e in root.external if e.blob.digest in needed
               and e.blob.digest not in present]
    if not missing:
        return
    parts = []
    for e in missing[:3]:
        users = sorted({m.name.display_shortest() for m in models
                        if any(b.digest == e.blob.digest for b in m.manifest.blobs)})
        base = root.bases[e.base]
        had = "listed by the inventory" if base.media_type == MEDIA_TYPE_INVENTORY else "carried by"
        parts.append(f"{e.blob.digest.short} ({format_size(e.blob.size)}, for {', '.join(users)}; "
                     f"{had} {base.describe()})")
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    # the releases to import, oldest first (a chain of deltas is imported in that order); an
    # inventory is no release: it only said the target had these blobs
    bases = sorted({root.bases[e.base] for e in missing}, key=lambda b: (b.created, b.name))
    bundles = [b.name for b in bases if b.media_type != MEDIA_TYPE_INVENTORY]
    inventories = [b.name for b in bases if b.media_type == MEDIA_TYPE_INVENTORY]
    steps = [f"import {', then '.join(bundles)} there first"] if bundles else []
    if inventories:
        steps.append(f"import the release that brought what {', '.join(inventories)} listed, "
                     "or use a full bundle (export without --base)")
    raise NotFoundError(
        f"this delta bundle leaves out {plural(len(missing), 'blob')} that {where} does not "
        "have: "
        + "; ".join(parts) + more,
        hint=f"{'; or '.join(steps)}; or leave these models out with --only")
