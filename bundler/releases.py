"""Releases and what a target already has: the bases of a delta bundle (formats/bundle-v1.md
§4.3), inventories of a store or registry (formats/inventory-v1.md) and what `diff` compares."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bundler import signing
from bundler.digest import Digest
from bundler.errors import BundlerError, IntegrityError, NotFoundError
from bundler.inventory import (
    MEDIA_TYPE_INVENTORY,
    Inventory,
    ModelEntry,
    Release,
    release_of_inventory,
)
from bundler.layout import MEDIA_TYPE_ROOT, Base, BlobRef, Have
from bundler.oci import MEDIA_TYPE_DOCKER_MANIFEST, Manifest
from bundler.progress import OnEvent, no_events
from bundler.reader import Head, open_bundle, read_listing
from bundler.registry.client import Client
from bundler.registry.listing import model_tags
from bundler.store import Store
from bundler.streams import check_output, open_output
from bundler.zstdframes import ZSTD_MAGIC

MAX_INVENTORY_BYTES = 256 * 1024 * 1024


def read_release(path: Path, trusted: Sequence[signing.PublicKey]) -> tuple[Base, Head | Inventory]:
    """A bundle (its head only) or an inventory, and the Base record that names it."""
    try:
        with path.open("rb") as f:
            bundle = f.read(4) == ZSTD_MAGIC
            f.seek(0)
            raw = b"" if bundle else f.read(MAX_INVENTORY_BYTES + 1)
        if bundle:  # a split bundle named by its first part: all its parts (the end is last)
            with open_bundle(path) as src:
                head = read_listing(src, trusted)
            return Base(MEDIA_TYPE_ROOT, Digest.of(head.root.raw), head.root.created,
                        path.name), head
    except FileNotFoundError:
        raise NotFoundError(f"{path} not found") from None
    except IsADirectoryError:
        raise NotFoundError(f"{path} is a directory, not a bundle or inventory") from None
    except OSError as e:
        raise BundlerError(f"cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_INVENTORY_BYTES:
        raise IntegrityError(f"{path}: too large for an inventory")
    inventory = Inventory.parse(raw, str(path))
    return Base(MEDIA_TYPE_INVENTORY, Digest.of(raw), inventory.created, path.name), inventory


def read_bases(paths: Sequence[Path], trusted: Sequence[signing.PublicKey]) -> Have:
    """What the given earlier releases have: a bundle has what it carries and what it left
    out itself (attributed to its own bases); an inventory has what it lists."""
    bases: list[Base] = []
    blobs: dict[Digest, tuple[int, int]] = {}

    def index(base: Base) -> int:
        for i, b in enumerate(bases):
            if b.digest == base.digest:
                return i
        bases.append(base)
        return len(bases) - 1

    for path in paths:
        base, release = read_release(path, trusted)
        i = index(base)
        if isinstance(release, Inventory):
            for b in release.blobs:
                blobs.setdefault(b.digest, (b.size, i))
            continue
        for ref in release.layer_blobs:
            blobs.setdefault(ref.digest, (ref.size, i))
        for e in release.root.external:
            blobs.setdefault(e.blob.digest, (e.blob.size, index(release.root.bases[e.base])))
    return Have(tuple(bases), blobs)


def release_of(path: Path, trusted: Sequence[signing.PublicKey]) -> Release:
    _, release = read_release(path, trusted)
    if isinstance(release, Inventory):
        return release_of_inventory(release, path.name)
    blobs = {b.digest: b.size for b in release.layer_blobs}
    blobs.update((e.blob.digest, e.blob.size) for e in release.root.external)
    return Release(path.name, {str(m.name): m.manifest.digest for m in release.models}, blobs)


def write_inventory(inventory: Inventory, output: Path) -> None:
    """The inventory file, renamed into place when complete (a device or FIFO written
    directly)."""
    check_output(output)
    with open_output(output) as f:
        f.write(inventory.to_bytes())


def inventory_store(store: Store, created: str, on_event: OnEvent = no_events) -> Inventory:
    """Every model in the store and the blobs of theirs that are present (formats/
    inventory-v1.md §2)."""
    store.require()
    models: list[ModelEntry] = []
    blobs: dict[Digest, int] = {}
    for name in store.names(on_event):
        model = store.read_model(name)
        models.append(ModelEntry(str(name), model.manifest.digest, len(model.manifest.raw)))
        for b in model.manifest.blobs:
            if store.blob_size(b.digest) == b.size:
                blobs[b.digest] = b.size
    return Inventory(created, f"store {store.root}", tuple(models),
                     tuple(BlobRef(d, s) for d, s in blobs.items()))


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
