"""The Ollama model store on disk (formats/ollama-store.md): find models and blobs, stage and
commit blobs atomically, write manifests verbatim and last."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bundler import oscompat
from bundler.digest import CHUNK_SIZE, Digest
from bundler.errors import BundlerError, IntegrityError, NotFoundError
from bundler.layout import Model
from bundler.oci import MAX_MANIFEST_BYTES, Manifest
from bundler.progress import OnEvent, no_events
from bundler.reference import ModelName
from bundler.streams import WriteBehind

LOCK_NAME = ".ollama-bundle.lock"
RELEASES_NAME = ".ollama-bundle.releases.json"  # which release last wrote each model
_PARTIAL_PREFIX = ".bundle-"
_PARTIAL_SUFFIX = ".partial"
_RESUMABLE = re.compile(r"\.bundle-[0-9a-f]{64}\.partial")


@dataclass(frozen=True, slots=True)
class StoreLocation:
    path: Path
    source: str  # "--models", "$OLLAMA_MODELS" or "default"

    def describe(self) -> str:
        return f"{self.path} (from {self.source})"


def locate(option: Path | None, env: Mapping[str, str], home: Path) -> StoreLocation:
    """formats/ollama-store.md §1: --models, else $OLLAMA_MODELS (trimmed as Ollama trims it),
    else ~/.ollama/models."""
    if option is not None:
        return StoreLocation(option, "--models")
    value = env.get("OLLAMA_MODELS", "").strip().strip("\"'")
    if value:
        return StoreLocation(Path(value), "$OLLAMA_MODELS")
    return StoreLocation(home / ".ollama" / "models", "default")


MAX_RELEASES_BYTES = 16 * 1024 * 1024  # the release records (§5): some 100,000 models
_NOT_REGULAR_HINT = ("remove it or move it out of the store: Ollama and ollama-bundle keep "
                     "only regular files there")


def _not_regular(error: type[BundlerError], path: Path, kind: str) -> BundlerError:
    prefix = "corrupt store: " if issubclass(error, IntegrityError) else ""
    return error(f"{prefix}{path} is {kind}, not a regular file", hint=_NOT_REGULAR_HINT)


def open_regular(path: Path, error: type[BundlerError], *, follow: bool = True) -> int:
    """A descriptor of the regular file at `path`, opened read-only without blocking (a FIFO
    planted there must not hang us) and, with `follow` False, without following a link; what
    is not a regular file is refused as `error` (formats/ollama-store.md §4.2).
    FileNotFoundError and other OSErrors pass through."""
    flags = os.O_RDONLY | oscompat.O_NONBLOCK
    try:
        fd = oscompat.open_fd(path, flags) if follow else oscompat.open_nofollow(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise _not_regular(error, path, "a symbolic link") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(error, path, oscompat.file_kind(mode))
    return fd


def read_regular(path: Path, limit: int, error: type[BundlerError], what: str, *,
                 follow: bool = True) -> bytes:
    """At most `limit` bytes of the regular file at `path` (`open_regular`); larger is refused
    as `error`: never more than limit + 1 bytes are read."""
    fd = open_regular(path, error, follow=follow)
    try:
        data = bytearray()
        while len(data) <= limit and (chunk := os.read(fd, min(CHUNK_SIZE,
                                                                limit + 1 - len(data)))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(f"{path} is larger than {limit // (1024 * 1024)} MiB: not {what}",
                    hint="neither Ollama nor ollama-bundle wrote it: remove it or move it out "
                         "of the store")
    return bytes(data)


def _os_error(action: str, path: Path, e: OSError) -> BundlerError:
    if e.errno == errno.ENOSPC:
        return BundlerError(f"{action} {path}: no space left on device",
                            hint="free space on that file system and run the import again")
    if e.errno == errno.EROFS:
        return BundlerError(f"{action} {path}: {e.strerror}",
                            hint="that file system is mounted read-only: remount it "
                                 "read-write, or choose --models DIR on another one")
    if e.errno in (errno.EACCES, errno.EPERM):
        return BundlerError(f"{action} {path}: {e.strerror}",
                            hint="run as the store's owner (or root), or choose --models DIR")
    return BundlerError(f"{action} {path}: {e.strerror}")


class Store:
    """An Ollama model store rooted at `root`."""

    def __init__(self, location: StoreLocation) -> None:
        self.location = location
        self.root = location.path
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"

    # -- reading -----------------------------------------------------------------------------

    def require(self) -> None:
        """A readable store must exist (exit 4 if it does not, 1 if it cannot be read)."""
        if self.root.exists() and not self.root.is_dir():
            raise BundlerError(f"model store {self.location.describe()} is not a directory",
                               hint="pass --models DIR or set OLLAMA_MODELS to the store")
        if not self.root.is_dir():
            raise NotFoundError(
                f"model store not found: {self.location.describe()}",
                hint="pass --models DIR or set OLLAMA_MODELS (a Linux service keeps its store in "
                     "/usr/share/ollama/.ollama/models)",
            )
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise BundlerError(f"model store is not readable: {self.location.describe()}",
                               hint="run as the store's owner, or with sudo")

    def names(self, on_event: OnEvent = no_events) -> list[ModelName]:
        """Every model as Ollama lists it: files at depth 4 under manifests/ with valid parts."""
        found: list[ModelName] = []
        try:
            hosts = list(os.scandir(self.manifests_dir))
        except FileNotFoundError:
            return found
        except OSError as e:
            raise _os_error("cannot list", self.manifests_dir, e) from None
        for entry in _entries_at_depth(hosts, 3):
            rel = Path(entry.path).relative_to(self.manifests_dir).parts
            try:
                if entry.is_dir():
                    continue
                if entry.is_symlink() and not Path(entry.path).exists():
                    on_event(f"warning: dangling link {entry.path} breaks 'ollama list'")
                    continue
            except OSError:
                continue
            name = ModelName.from_manifest_path(rel)
            if name is not None:
                found.append(name)
        return sorted(found, key=str)

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.manifest_parts())

    def require_storable(self, name: ModelName) -> None:
        """Refuse, before anything is written, a name whose manifest path this OS cannot have
        (formats/ollama-store.md §7)."""
        for part in name.manifest_parts():
            problem = oscompat.file_name_problem(part)
            if problem is not None:
                raise BundlerError(
                    f"{name.display_shortest()} cannot be stored in {self.root}: its manifest "
                    f"directory would be {part!r}, and {problem}",
                    hint="Ollama cannot store this name here either; leave it out with --only, "
                         "or import it --to-registry")

    def read_manifest(self, name: ModelName, error: type[BundlerError] = BundlerError,
                      ) -> bytes | None:
        """The manifest file's bytes (at most 4 MiB: more is no manifest), or None if there
        is none; what is not a regular file, or is larger, is refused as `error`."""
        path = self.manifest_path(name)
        try:
            return read_regular(path, MAX_MANIFEST_BYTES, error, "a manifest")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _os_error("cannot read", path, e) from None

    def read_model(self, name: ModelName) -> Model:
        path = self.manifest_path(name)
        try:
            raw = read_regular(path, MAX_MANIFEST_BYTES, IntegrityError, "a manifest")
        except FileNotFoundError:
            raise NotFoundError(f"model {name.display_shortest()} not found in "
                                f"{self.location.describe()}") from None
        except OSError as e:
            raise _os_error("cannot read", path, e) from None
        try:
            return Model(name, Manifest.parse(raw, f"{path}"))
        except IntegrityError as e:
            raise IntegrityError(f"corrupt store: {e.message}",
                                 hint="re-pull the model, or remove it with 'ollama rm'") from None

    def blob_path(self, digest: Digest) -> Path:
        """blobs/sha256-<hex>: the only place a store blob's name is spelled out."""
        return self.blobs_dir / f"sha256-{digest.hex}"

    def find_blob(self, digest: Digest) -> Path | None:
        """The blob's file, in the current spelling or the pre-0.1.30 `sha256:<hex>`."""
        for path in (self.blob_path(digest), self.blobs_dir / f"sha256:{digest.hex}"):
            if path.is_file():
                return path
        return None

    def blob_size(self, digest: Digest) -> int | None:
        """The size of the blob's file, or None if the store does not have it."""
        path = self.find_blob(digest)
        try:
            return None if path is None else path.stat().st_size
        except FileNotFoundError:
            return None

    def has_blob(self, digest: Digest, size: int) -> bool:
        return self.blob_size(digest) == size

    def require_regular_blob(self, digest: Digest) -> None:
        """IntegrityError if the blob's name (either spelling) holds something that is not a
        regular file, such as a FIFO or a link to a device (formats/ollama-store.md §4.2)."""
        for path in (self.blob_path(digest), self.blobs_dir / f"sha256:{digest.hex}"):
            try:
                mode = path.stat().st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode):
                raise _not_regular(IntegrityError, path, oscompat.file_kind(mode))

    def open_blob(self, digest: Digest) -> BinaryIO:
        path = self.find_blob(digest)
        try:
            if path is None:
                raise FileNotFoundError
            return os.fdopen(open_regular(path, IntegrityError), "rb", buffering=0)
        except FileNotFoundError:
            raise IntegrityError(f"corrupt store: blob {digest} vanished during the export",
                                 hint="another program removed it; run the export again") from None
        except OSError as e:
            raise _os_error("cannot read", path or self.blob_path(digest), e) from None

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, on_event: OnEvent = no_events) -> Iterator[None]:
        """Write as the store's owner, holding the store's advisory lock; removes staged files
        a dead importer left."""
        with oscompat.as_owner_of(self.root), contextlib.ExitStack() as stack:
            self._mkdir(self.root)
            path = self.root / LOCK_NAME
            try:
                stack.enter_context(oscompat.exclusive_lock(path, lambda: on_event(
                    f"waiting for another import into {self.root} to finish")))
            except oscompat.NotRegularFileError as e:
                raise _not_regular(BundlerError, path, oscompat.file_kind(e.mode)) from None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise _not_regular(BundlerError, path, "a symbolic link") from None
                raise _os_error("cannot open lock file", path, e) from None
            self._remove_stale(on_event)
            yield

    def _remove_stale(self, on_event: OnEvent) -> None:
        for d in (self.blobs_dir, self.manifests_dir, self.root):
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise _os_error("cannot list", d, e) from None
            for entry in entries:
                if (d == self.blobs_dir and _RESUMABLE.fullmatch(entry.name)
                        and not (d / f"sha256-{entry.name[8:72]}").exists()):
                    continue  # a blob an interrupted import began: the next one continues it
                if entry.name.startswith(_PARTIAL_PREFIX) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    on_event(f"removed {entry.path}, left by an interrupted import")

    def prepare(self) -> None:
        self._mkdir(self.blobs_dir)
        self._mkdir(self.manifests_dir)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.blobs_dir if self.blobs_dir.is_dir() else self.root).free

    def free_inodes(self) -> int | None:
        """Files and directories that can still be created there; None if the file system
        does not count them (statvfs reports f_files 0)."""
        return oscompat.free_inodes(self.blobs_dir if self.blobs_dir.is_dir() else self.root)

    def inodes_needed(self, blobs: int, names: Iterable[ModelName]) -> int:
        """What an import creates (formats/ollama-store.md §4): a staged file per blob, a
        file per manifest and the directories missing on their paths, blobs/ and manifests/
        if missing, and the releases record's temp file."""
        names = list(names)
        missing = {p for name in names
                   for p in self.manifest_path(name).relative_to(self.manifests_dir).parents[:-1]
                   if not (self.manifests_dir / p).is_dir()}
        return (blobs + len(names) + len(missing) + 1
                + sum(not d.is_dir() for d in (self.blobs_dir, self.manifests_dir)))

    def stage(self, digest: Digest, *, resume: bool = False) -> StagedBlob:
        """A blob's staging file, blobs/.bundle-<hex>.partial (a name Ollama's prune removes).
        With `resume`, what an interrupted import left there is kept and appended to (the
        caller verifies all of it); otherwise it starts empty."""
        path = self.blobs_dir / f"{_PARTIAL_PREFIX}{digest.hex}{_PARTIAL_SUFFIX}"
        flags = os.O_RDWR | os.O_CREAT | oscompat.O_NONBLOCK | (0 if resume else os.O_TRUNC)
        try:
            try:
                fd = oscompat.open_nofollow(path, flags, 0o644)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                os.unlink(path)  # a symbolic link planted there: never followed
                fd = oscompat.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # never write through a link
                os.close(fd)
                os.unlink(path)
                fd = oscompat.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise _os_error("cannot create", path, e) from None
        oscompat.set_mode(fd, path, 0o644)
        existing = os.lseek(fd, 0, os.SEEK_END)
        return StagedBlob(self, digest, path, os.fdopen(fd, "wb", buffering=0), existing)

    def partial_size(self, digest: Digest) -> int:
        """How much of `digest` an interrupted import left in its staging file."""
        try:
            st = os.lstat(self.blobs_dir / f"{_PARTIAL_PREFIX}{digest.hex}{_PARTIAL_SUFFIX}")
        except OSError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def hash_staged(self, staged: StagedBlob) -> Any:
        """A sha256 object fed the bytes an interrupted import left in `staged`."""
        h = hashlib.sha256()
        try:
            with staged.path.open("rb", buffering=0) as f:
                while chunk := f.read(CHUNK_SIZE):
                    h.update(chunk)
        except OSError as e:
            raise _os_error("cannot read", staged.path, e) from None
        return h

    def commit_blob(self, staged: StagedBlob) -> None:
        """Rename a verified, fsynced staged blob to its final name, its mtime made fresh
        first: a blob staged long ago (or by an earlier, interrupted import) would otherwise
        be older than the grace period of Ollama's prune (formats/ollama-store.md §4.1)."""
        final = self.blob_path(staged.digest)
        try:
            os.utime(staged.path)
            os.replace(staged.path, final)
        except FileNotFoundError:
            raise BundlerError(
                f"staged blob {staged.path} vanished before it was renamed (an Ollama server "
                "starting meanwhile prunes such files)", hint="run the import again") from None
        except OSError as e:
            raise _os_error("cannot rename", staged.path, e) from None

    def touch_staged(self, staged: StagedBlob) -> None:
        """Refresh a staged blob's mtime while the import goes on (Ollama's prune spares a
        file younger than its grace period; formats/ollama-store.md §4.1)."""
        with contextlib.suppress(OSError):
            os.utime(staged.path)

    def touch_blob(self, digest: Digest) -> None:
        """Refresh an existing blob's mtime, so Ollama's prune grace period covers it."""
        path = self.find_blob(digest)
        if path is not None:
            with contextlib.suppress(OSError):
                os.utime(path)

    def releases(self) -> dict[str, dict[str, str]]:
        """Per model (full name, folded): the `root` digest and `created` time of the release
        that last wrote it (formats/ollama-store.md §5). Unreadable means none; what is not a
        regular file (never followed) or is larger than 16 MiB is refused (§4.2)."""
        try:
            obj = json.loads(read_regular(self.root / RELEASES_NAME, MAX_RELEASES_BYTES,
                                          BundlerError, "release records", follow=False))
        except (OSError, ValueError):
            return {}
        models = obj.get("models") if isinstance(obj, dict) else None
        return {k: v for k, v in (models or {}).items()
                if isinstance(k, str) and isinstance(v, dict)
                and isinstance(v.get("created"), str) and isinstance(v.get("root"), str)}

    def stage_releases(self, entries: dict[str, dict[str, str]]) -> StagedManifest:
        """The records with these added or replaced, in a temp file (under the lock, before
        the manifests are renamed); commit_releases renames it into place."""
        records = {**self.releases(), **entries}
        raw = json.dumps({"models": records}, indent=1, sort_keys=True).encode() + b"\n"
        tmp = self.root / f"{_PARTIAL_PREFIX}{secrets.token_hex(8)}{_PARTIAL_SUFFIX}"
        try:
            fd = oscompat.open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, raw)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _os_error("cannot write", self.root / RELEASES_NAME, e) from None
        return StagedManifest(tmp, self.root / RELEASES_NAME)

    def commit_releases(self, staged: StagedManifest) -> None:
        try:
            os.replace(staged.tmp, staged.final)
        except OSError as e:
            staged.discard()
            raise _os_error("cannot write", staged.final, e) from None

    def record_releases(self, entries: dict[str, dict[str, str]]) -> None:
        """Add or replace records (under the lock, after the manifests are written)."""
        self.commit_releases(self.stage_releases(entries))

    def stage_manifest(self, name: ModelName, raw: bytes) -> StagedManifest:
        """Exact bytes in a temp file at depth 1 (invisible to Ollama), fsynced, with the
        directories of its final path made: what commit_manifest renames."""
        final = self.manifest_path(name)
        for parent in reversed(final.relative_to(self.manifests_dir).parents[:-1]):
            self._mkdir(self.manifests_dir / parent)
        tmp = self.manifests_dir / f"{_PARTIAL_PREFIX}{secrets.token_hex(8)}{_PARTIAL_SUFFIX}"
        try:
            fd = oscompat.open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                oscompat.set_mode(fd, tmp, 0o644)
                os.write(fd, raw)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _os_error("cannot write manifest", final, e) from None
        return StagedManifest(tmp, final)

    def commit_manifest(self, staged: StagedManifest) -> None:
        """Rename a staged manifest into place (it needs no new inode) and fsync its
        directory."""
        try:
            os.replace(staged.tmp, staged.final)
            oscompat.fsync_dir(staged.final.parent)
        except OSError as e:
            raise _os_error("cannot write manifest", staged.final, e) from None

    def write_manifest(self, name: ModelName, raw: bytes) -> None:
        """Exact bytes, via a temp file at depth 1 (invisible to Ollama), fsync, rename."""
        staged = self.stage_manifest(name, raw)
        try:
            self.commit_manifest(staged)
        except BaseException:
            staged.discard()
            raise

    def sync_blobs_dir(self) -> None:
        oscompat.fsync_dir(self.blobs_dir)

    def _mkdir(self, path: Path) -> None:
        if path.is_dir():
            return
        try:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.chmod(0o755)
        except OSError as e:
            raise _os_error("cannot create directory", path, e) from None


@dataclass(frozen=True, slots=True)
class StagedManifest:
    """A manifest written to its temp file, not yet renamed to its final path."""

    tmp: Path
    final: Path

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.tmp.unlink()


class StagedBlob:
    """A blob being written under a temporary name in blobs/ (the reader verifies it)."""

    def __init__(self, store: Store, digest: Digest, path: Path, f: BinaryIO,
                 existing: int = 0) -> None:
        self.store, self.digest, self.path = store, digest, path
        self.existing = existing  # bytes an interrupted import left, to be continued
        self._f: BinaryIO | None = f
        self._out = WriteBehind(f)

    def write(self, data: memoryview | bytes) -> None:
        try:
            self._out.write(data)
        except OSError as e:
            raise _os_error("cannot write", self.path, e) from None

    def finish(self) -> None:
        """Close the file, fsynced."""
        assert self._f is not None
        try:
            os.fsync(self._f.fileno())
        except OSError as e:
            raise _os_error("cannot write", self.path, e) from None
        finally:
            self._f.close()
            self._f = None

    def unchanged(self, views: Iterable[memoryview]) -> Iterator[memoryview]:
        """The views from where they stop matching what an interrupted import left in the
        file (compared chunk by chunk, the file cut there), so that only what differs or is
        missing is written; a file longer than the views is cut to their length."""
        assert self._f is not None
        fd, pos, same = self._f.fileno(), 0, self.existing
        for view in views:
            if pos < same:
                if len(view) <= same - pos and oscompat.pread(fd, len(view), pos) == view:
                    pos += len(view)
                    continue
                same = pos  # differs (or the file ends inside this chunk): write from here
                os.ftruncate(fd, pos)
                os.lseek(fd, pos, os.SEEK_SET)
            pos += len(view)
            yield view
        if same > pos:
            os.ftruncate(fd, pos)
        self.existing = min(same, pos)

    def restart(self) -> None:
        """Drop what an interrupted import left: write from the start."""
        assert self._f is not None
        if self.existing:
            os.ftruncate(self._f.fileno(), 0)
            os.lseek(self._f.fileno(), 0, os.SEEK_SET)
            self.existing = 0

    def close(self) -> None:
        """Close the file and leave it, as a crash would, for the next import to continue."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def discard(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _entries_at_depth(entries: list[os.DirEntry[str]], depth: int) -> Iterator[os.DirEntry[str]]:
    """Entries `depth` directory levels below `entries` (Ollama globs manifests/*/*/*/*)."""
    for entry in entries:
        if depth == 0:
            yield entry
            continue
        try:
            if not entry.is_dir():
                continue
            children = list(os.scandir(entry.path))
        except OSError:
            continue
        yield from _entries_at_depth(children, depth - 1)

