"""`import` into an Ollama model store: verify, stage, then commit blobs and manifests last
under the store's lock (formats/ollama-store.md §4)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from bundler import signing
from bundler.digest import Digest
from bundler.errors import BundlerError, IntegrityError
from bundler.inventory import require_bases
from bundler.layout import Model
from bundler.progress import OnBytes, OnEvent, format_size, no_events, no_progress, plural
from bundler.reader import BundleReader, Head, Seekable
from bundler.reference import ModelName, pick
from bundler.store import StagedBlob, StagedManifest, Store

_FREE_SPACE_MARGIN = 1024 * 1024  # plus 1 % of what is written: file system overhead
_FREE_INODES_MARGIN = 2  # ext4 and xfs keep none back; leave a couple for the system


@dataclass(frozen=True, slots=True)
class ModelChange:
    model: Model
    target: ModelName  # the name in the store (existing spelling kept)
    action: str  # "new", "replaced" or "unchanged"
    previous: Digest | None = None

    def to_json(self) -> dict[str, Any]:
        obj = {**self.model.to_json(), "name": self.target.display_shortest(),
               "fullName": str(self.target), "action": self.action}
        if self.previous is not None:
            obj["previous"] = str(self.previous)
        return obj


@dataclass(frozen=True, slots=True)
class ImportResult:
    head: Head
    store: str
    changes: tuple[ModelChange, ...]
    blobs_written: int
    bytes_written: int
    blobs_present: int
    dry_run: bool
    seeking: bool = False  # read only the blobs it wrote, through the seek table
    old_blob_names: tuple[Digest, ...] = ()  # present only as blobs/sha256:<hex>
    blobs_kept: int = 0  # staged by an interrupted import, kept whole or in part
    bytes_kept: int = 0  # of those, the bytes neither read from the bundle nor written

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store, "dryRun": self.dry_run, "created": self.head.root.created,
            "readOnlyWhatWasNeeded": self.seeking,
            "signatures": self.head.signers_json(),
            "models": [c.to_json() for c in self.changes],
            "blobsWritten": self.blobs_written, "bytesWritten": self.bytes_written,
            "blobsPresent": self.blobs_present,
            "kept": {"blobs": self.blobs_kept, "bytes": self.bytes_kept},
            "oldBlobNames": [str(d) for d in self.old_blob_names],
        }


def _plan_changes(head: Head, store: Store, only: Sequence[str]) -> list[ModelChange]:
    models = list(head.models)
    if only:
        picked = set(pick(only, [m.name for m in models], "the bundle"))
        models = [m for m in models if m.name in picked]
    existing = store.names()
    changes = []
    for m in models:
        target = m.name.canonical(existing)
        raw = store.read_manifest(target)
        if raw is None:
            changes.append(ModelChange(m, target, "new"))
            continue
        current = Digest.of(raw)
        same = current == m.manifest.digest
        changes.append(ModelChange(m, target, "unchanged" if same else "replaced",
                                   None if same else current))
    return changes


def _refuse_downgrade(head: Head, changes: Sequence[ModelChange], store: Store) -> None:
    """Replay protection: a model is not replaced by one from a release created before the
    release that last wrote it here (formats/ollama-store.md §5)."""
    records = store.releases()
    for c in changes:
        record = records.get(_release_key(c.target))
        if c.action == "replaced" and record and record["created"] > head.root.created:
            raise IntegrityError(
                f"{c.target.display_shortest()}: this bundle (created {head.root.created}) is "
                f"older than the release that wrote the model here (created "
                f"{record['created']}); importing it would roll the model back",
                hint="if that is what you want, pass --allow-downgrade")


def _release_key(name: ModelName) -> str:
    return "/".join(name.folded())


def import_bundle(
    src: BinaryIO, store: Store, trusted: Sequence[signing.PublicKey], *, allow_unsigned: bool,
    only: Sequence[str] = (), dry_run: bool = False, allow_downgrade: bool = False,
    on_total: OnBytes = no_progress, on_bytes: OnBytes = no_progress,
    on_event: OnEvent = no_events,
) -> ImportResult:
    """Verify everything, stage blobs, then commit blobs and finally manifests, all under the
    store's lock, which is taken (the store created) only once the head is trusted
    (formats/ollama-store.md §4). A dry run reads only the head."""
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(BundleReader(src, on_bytes))
        head = reader.read_head(trusted, allow_unsigned=allow_unsigned, on_event=on_event)
        if not dry_run:  # nothing, not the store nor its lock file, before the head is trusted
            stack.enter_context(store.locked(on_event))
        changes = _plan_changes(head, store, only)
        for c in changes:
            store.require_storable(c.target)
        if not allow_downgrade:
            _refuse_downgrade(head, changes, store)
        needed = {b.digest: b.size for c in changes for b in c.model.manifest.blobs}
        present = {d for d, size in needed.items() if store.has_blob(d, size)}
        require_bases(head.root, [c.model for c in changes], present, store.location.describe())
        to_write = {d: s for d, s in needed.items() if d not in present}
        old_names = tuple(d for d in needed if d in present
                          and store.find_blob(d) != store.blob_path(d))
        if old_names:  # formats/ollama-store.md §4, "Old blob names"
            on_event(f"warning: {plural(len(old_names), 'blob')} this import uses: in the store "
                     f"only under the old name blobs/sha256:<hex> (e.g. {old_names[0]}); a running "
                     "Ollama finds them only after a restart, which renames them to "
                     "sha256-<hex>: restart Ollama after the import")
        result = ImportResult(head, store.location.describe(), tuple(changes), len(to_write),
                              sum(to_write.values()), len(present), dry_run,
                              old_blob_names=old_names)
        if dry_run:
            return result
        free, want = store.free_bytes(), sum(to_write.values())
        if want + want // 100 + _FREE_SPACE_MARGIN > free:
            raise BundlerError(
                f"not enough space in {store.root}: {plural(want, 'byte')} to write, "
                f"{free} free",
                hint="free space there, or import fewer models with --only")
        inodes = store.free_inodes()
        files = store.inodes_needed(len(to_write), [c.target for c in changes
                                                    if c.action != "unchanged"])
        if inodes is not None and files + _FREE_INODES_MARGIN > inodes:
            raise BundlerError(
                f"not enough inodes in {store.root}: {files} files and directories to create, "
                f"{inodes} free", hint="remove files on that file system (or give it more "
                                       "inodes), or import fewer models with --only")
        store.prepare()
        everything = sum(b.size for b in head.layer_blobs)
        # what an interrupted import staged of each blob (kept, not read again, if right)
        left = {d: min(store.partial_size(d), s) for d, s in to_write.items()}
        seekable = (reader.seekable() if sum(to_write.values()) < everything
                    or any(left.values()) else None)
        on_total(everything if seekable is None
                 else sum(to_write.values()) - sum(left.values()))
        staged: list[StagedBlob] = []
        kept = _Kept()
        try:
            if seekable is None:
                _stage_all(reader, store, to_write, staged, kept)
            else:
                _stage_seeking(seekable, store, to_write, staged, kept)
            reader.finish()
            if set(to_write) - {blob.digest for blob in staged}:
                raise IntegrityError("a referenced blob is not carried")  # check_manifests
            for digest in present:  # fresh mtimes: Ollama's prune spares them now
                store.touch_blob(digest)
            for blob in staged:
                store.commit_blob(blob)
        except KeyboardInterrupt:  # as a crash: staged files stay for the next import
            for blob in staged:
                blob.close()
            raise _interrupted(store, staged) from None
        except BaseException:
            for blob in staged:
                blob.discard()
            raise
        result = dataclasses.replace(
            result, seeking=seekable is not None, blobs_written=len(to_write) - kept.whole,
            bytes_written=sum(to_write.values()) - kept.bytes, blobs_kept=kept.blobs,
            bytes_kept=kept.bytes)
        store.sync_blobs_dir()
        # formats/ollama-store.md §4 step 5: every manifest (and the releases record) staged
        # first, then all renamed: running out of inodes or space among them writes none
        pending: list[StagedManifest] = []
        try:
            for change in changes:
                if change.action == "unchanged":
                    continue
                for b in change.model.manifest.blobs:  # fresh until the manifest names them
                    store.touch_blob(b.digest)
                gone = [b.digest for b in change.model.manifest.blobs
                        if not store.has_blob(b.digest, b.size)]
                if gone:  # another program (ollama rm, a prune) removed it meanwhile
                    raise BundlerError(
                        f"blob {gone[0]} of {change.target.display_shortest()} vanished during "
                        "the import; no manifest was written", hint="run the import again")
                pending.append(store.stage_manifest(change.target, change.model.manifest.raw))
            root = str(Digest.of(head.root.raw))
            releases = store.stage_releases({_release_key(c.target): {
                "created": head.root.created, "root": root} for c in changes})
        except BaseException:
            for staged_manifest in pending:
                staged_manifest.discard()
            raise
        for staged_manifest in pending:
            store.commit_manifest(staged_manifest)
        store.commit_releases(releases)
    return result


@dataclass(slots=True)
class _Kept:
    """What an interrupted import had staged and this one kept."""

    blobs: int = 0
    whole: int = 0  # kept complete: nothing of them written
    bytes: int = 0

    def add(self, n: int, size: int) -> None:
        if n:
            self.blobs += 1
            self.whole += n == size
            self.bytes += n


def _interrupted(store: Store, staged: Sequence[StagedBlob]) -> BundlerError:
    """Ctrl-C during staging: what it leaves is what a crash leaves (formats/ollama-store.md
    §4), and the next import into the store continues it."""
    kept = [n for n in (store.partial_size(b.digest) for b in staged) if n]
    if not kept:
        return BundlerError("interrupted before any model was changed")
    return BundlerError(
        f"interrupted before any model was changed; {plural(len(kept), 'staged blob')} "
        f"({format_size(sum(kept))}) kept in {store.blobs_dir} for the next import",
        hint="run the same import again: it continues where this one stopped")


def _stage_seeking(blobs: dict[Digest, Seekable], store: Store, to_write: dict[Digest, int],
                   staged: list[StagedBlob], kept: _Kept) -> None:
    """Read only the wanted blobs, through the seek table, into staged files (appended to
    `staged`, which the caller discards on failure); a blob an interrupted import began is
    continued where it stopped (all of it verified)."""
    for digest, size in to_write.items():
        blob = store.stage(digest, resume=True)
        staged.append(blob)
        if 0 < blob.existing <= size:
            prefix = store.hash_staged(blob)
            if blob.existing == size and prefix.hexdigest() == digest.hex:
                _staged_one(store, staged)  # complete: kept, nothing read or written
                kept.add(size, size)
                continue
            views = (blobs[digest].after(blob.existing, prefix) if blob.existing < size
                     else _restarted(blob, blobs[digest]))
        else:
            views = _restarted(blob, blobs[digest])
        for view in views:
            blob.write(view)
        _staged_one(store, staged)
        kept.add(blob.existing, size)  # what was continued (verified with the rest)


def _restarted(blob: StagedBlob, body: Seekable) -> Iterator[memoryview]:
    blob.restart()
    return body(0)


def _staged_one(store: Store, staged: list[StagedBlob]) -> None:
    """The last staged blob is complete: fsync it, and refresh the mtimes of those staged
    before it, so that a long import keeps them inside the grace period of Ollama's prune
    (formats/ollama-store.md §4.1)."""
    staged[-1].finish()
    for blob in staged[:-1]:
        store.touch_staged(blob)


def _stage_all(reader: BundleReader, store: Store, to_write: dict[Digest, int],
               staged: list[StagedBlob], kept: _Kept) -> None:
    """Stream every remaining blob: verify all, write the wanted ones to staged files
    (appended to `staged`, which the caller discards on failure)."""
    for ref, body in reader.blobs():
        if ref.digest not in to_write:
            for _ in body:
                pass
            continue
        blob = store.stage(ref.digest, resume=True)
        staged.append(blob)
        for view in blob.unchanged(body):  # what an interrupted import left is not rewritten
            blob.write(view)
        _staged_one(store, staged)
        kept.add(blob.existing, ref.size)
