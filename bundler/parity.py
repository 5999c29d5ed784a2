"""Repair data for bundle files with the standard par2 tool (Debian's `par2`): the only place
that runs it. One recovery set per file (`FILE.par2` plus `FILE.vol*.par2`), so each part of a
split bundle can be repaired on its own.

Recovery files are not signed and can name any file (formats/bundle-v1.md §10): before par2
runs, every recovery file it could load is read here, and a set that names anything but the
one bundle file it sits beside is refused, as is a bundle file or recovery file that is not a
regular file (a symbolic link is never followed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import BinaryIO

from bundler import oscompat
from bundler.digest import CHUNK_SIZE
from bundler.errors import BundlerError, IntegrityError, NotFoundError
from bundler.reader import read_root
from bundler.split import part_name, part_paths, parts_beside, sidecar_name, split_name

# The par2 2.0 packet header: magic, length (of the whole packet), packet MD5, recovery set
# id, type; a file description packet's body: file id, MD5, MD5 of the first 16 KiB, length,
# then the file's name, NUL-padded to a multiple of 4 (par2 2.0 specification, "File
# Description packet"; par2cmdline par2fileformat.h).
_MAGIC = b"PAR2\0PKT"
_HEADER = 64
_TYPE = slice(48, 64)
# packet type -> where in its body the name starts
_NAMING = {b"PAR 2.0\0FileDesc": 56, b"PAR 2.0\0UniFileN": 16}
_MAX_NAME = 64 * 1024


def _par2() -> str:
    found = shutil.which("par2")
    if found is None:
        raise NotFoundError("par2 is not installed, so no repair data can be made or used",
                            hint="install it: sudo apt-get install par2 (Debian, Ubuntu), "
                                 "dnf install par2cmdline (Fedora), brew install par2 (macOS)")
    return found


def require() -> None:
    """NotFoundError (with how to install it) unless par2 is installed."""
    _par2()


def recovery_file(path: Path) -> Path:
    return path.with_name(path.name + ".par2")


def create(files: Sequence[Path], percent: int) -> list[Path]:
    """Recovery data of `percent` % of each file's size; returns the index files."""
    tool = _par2()
    made = []
    for path in (f.absolute() for f in files):
        index = recovery_file(path)
        for old in path.parent.glob(f"{glob_escape(path.name)}*.par2"):
            old.unlink()  # from an earlier export under the same name
        done = subprocess.run([tool, "create", "-q", "-q", f"-r{percent}", "-n1", "--",
                               str(index), str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            raise BundlerError(f"par2 could not make repair data for {path.name}: "
                               + _last_line(done))
        made.append(index)
    return made


@dataclass(frozen=True, slots=True)
class Repair:
    name: str
    state: str  # "intact", "repaired", "no repair data", "beyond repair"


def bundle_files(first: Path) -> list[Path]:
    """The files of a bundle that repair may write (formats/bundle-v1.md §10): the file given;
    for a split bundle given as NAME.001, the parts part 1's signed root lists (1 to N, and
    N + 1, the seek table's), or, when part 1 cannot be read, those the sidecar lists if it
    names only this bundle's parts in order, else every NAME.NNN beside part 1."""
    stem, number = split_name(first.name) or ("", 0)
    if number != 1:
        return [first]
    count = _count_from_head(first) or _count_from_sidecar(first, stem)
    if count:
        return [p for p in part_paths(first, count) if os.path.lexists(p)]
    return parts_beside(first)


def _open_regular(path: Path) -> BinaryIO | None:
    """A regular file (never followed, never waited on), or None."""
    try:
        fd = oscompat.open_nofollow(path, os.O_RDONLY | oscompat.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _count_from_head(first: Path) -> int | None:
    """Parts 1 to N + 1, as part 1's root (unverified) says, or None if it cannot be read."""
    f = _open_regular(first)
    if f is None:
        return None
    try:
        with f:
            return len(read_root(f).parts) + 2
    except (BundlerError, OSError):
        return None


def _count_from_sidecar(first: Path, stem: str) -> int | None:
    """How many files the sidecar lists, if it names exactly NAME.001, NAME.002, ... of this
    bundle (it is not signed: any other name makes it count for nothing)."""
    f = _open_regular(first.with_name(sidecar_name(stem)))
    if f is None:
        return None
    try:
        with f:
            names = [p["name"] for p in json.loads(f.read(1024 * 1024))["parts"]]
    except (ValueError, TypeError, KeyError, OSError):
        return None
    expected = [part_name(stem, i + 1) for i in range(len(names))]
    return len(names) if names and names == expected else None


def recovery_files(path: Path) -> list[Path]:
    """Every file par2 could load as part of `path`'s recovery set: FILE.par2 and FILE.*.par2
    (par2cmdline's Par2Repairer looks for `<name>.*.par2`, case ignored), in its directory."""
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    prefix = path.name.lower() + "."
    return sorted(e for e in entries
                  if e.name.lower().startswith(prefix) and e.name.lower().endswith(".par2"))


def named_files(index: Path) -> Iterator[bytes]:
    """The file names a par2 file's packets give (file description and Unicode name packets),
    wherever in the file they lie: par2 finds packets at any offset, so the whole file is
    scanned, streaming. Refuses a file that is not a regular file (never followed)."""
    try:
        fd = oscompat.open_nofollow(index, os.O_RDONLY | oscompat.O_NONBLOCK)
    except OSError as e:
        raise IntegrityError(f"repair data {index.name} cannot be read: {e.strerror}",
                             hint="repair data must be a regular file, not a link") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IntegrityError(f"repair data {index.name} is not a regular file",
                                 hint="remove it; 'bundle repair' reads only regular files")
        offset = 0
        while chunk := oscompat.pread(fd, CHUNK_SIZE + _HEADER, offset):
            at = chunk.find(_MAGIC)
            while 0 <= at < CHUNK_SIZE:
                header = oscompat.pread(fd, _HEADER, offset + at)
                name_at = _NAMING.get(header[_TYPE])
                if name_at is not None and len(header) == _HEADER:
                    length = struct.unpack("<Q", header[8:16])[0]
                    if not _HEADER + name_at <= length <= _HEADER + name_at + _MAX_NAME:
                        raise IntegrityError(f"repair data {index.name} has a malformed "
                                             "file description",
                                             hint="remove it and copy it again, or do without")
                    body = oscompat.pread(fd, length - _HEADER, offset + at + _HEADER)
                    raw = body[name_at:]
                    yield (raw.rstrip(b"\0") if name_at == 56
                           else raw.decode("utf-16-le", "replace").rstrip("\0").encode())
                at = chunk.find(_MAGIC, at + 1)
            if len(chunk) <= CHUNK_SIZE:
                break
            offset += CHUNK_SIZE
    finally:
        os.close(fd)


def check_recovery_set(path: Path) -> None:
    """Refuse `path` unless it is a regular file (not a link) and every recovery file beside
    it that par2 could load names only `path` itself (formats/bundle-v1.md §10)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFoundError(f"{path} not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise IntegrityError(f"{path.name} is not a regular file (a link, or something else)",
                             hint="'bundle repair' writes only the bundle's own files; copy "
                                  "the bundle from the release medium instead")
    own = path.name.encode()
    for index in recovery_files(path):
        for name in named_files(index):
            if name != own:
                shown = name[:200].decode("utf-8", "replace")
                raise IntegrityError(
                    f"repair data {index.name} names {shown!r}, not {path.name}: par2 would "
                    "write that file; nothing was repaired",
                    hint="recovery files are not signed: remove the ones that are not this "
                         "bundle's (export --parity makes only FILE.par2 and FILE.vol*.par2)")


def repair(files: Sequence[Path]) -> list[Repair]:
    """Check each file with its recovery set and repair it in place where it is damaged.
    Every recovery set is checked before par2 runs on any (`check_recovery_set`)."""
    tool = _par2()
    paths = [f.absolute() for f in files]
    for path in paths:
        check_recovery_set(path)
    out = []
    for path in paths:
        index = recovery_file(path)
        if not index.is_file() or index.is_symlink():
            out.append(Repair(path.name, "no repair data"))
            continue
        check = subprocess.run([tool, "verify", "-q", "-q", "--", str(index)],
                               capture_output=True, check=False, cwd=path.parent)
        if check.returncode == 0:
            out.append(Repair(path.name, "intact"))
            continue
        backups = set(_backups(path))
        fixed = subprocess.run([tool, "repair", "-q", "-q", "--", str(index)],
                               capture_output=True, check=False, cwd=path.parent)
        if fixed.returncode == 0:  # par2 keeps the damaged file as FILE.1 (or .2, ...)
            for backup in set(_backups(path)) - backups:
                with contextlib.suppress(OSError):
                    if stat.S_ISREG(os.lstat(backup).st_mode):
                        backup.unlink()
        out.append(Repair(path.name, "repaired" if fixed.returncode == 0 else "beyond repair"))
    return out


def _backups(path: Path) -> list[Path]:
    prefix = path.name + "."
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    return [e for e in entries
            if e.name.startswith(prefix) and e.name[len(prefix):].isascii()
            and e.name[len(prefix):].isdigit()]


def _last_line(done: subprocess.CompletedProcess[bytes]) -> str:
    text = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
    return text[-1] if text else f"exit {done.returncode}"
