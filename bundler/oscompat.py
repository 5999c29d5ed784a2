"""Everything that differs between the operating systems ollama-bundle runs on (Linux, macOS,
Windows), in one place: the store's lock, positional reads, write-behind hints, directory fsync
and acting as a store's owner (formats/ollama-store.md §4, §7).

Nothing here is imported at load time that an OS lacks (`fcntl` and `msvcrt` are imported by
the lock, on the OS that has them). Every OS-specific path is checked for, never assumed, and
has a plain fallback that works everywhere. With `OLLAMA_BUNDLE_PORTABLE=1` in the environment
every one of them is switched off, so that the plain paths macOS and Windows take also run (and
are tested) on Linux.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

PORTABLE_ENV = "OLLAMA_BUNDLE_PORTABLE"

# Windows opens descriptors in text mode (CRLF translation) unless told otherwise.
O_BINARY: int = getattr(os, "O_BINARY", 0)
# A FIFO planted where a file is expected must not block the open (POSIX only; Windows has none).
O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)

SyncFileRange = Callable[[int, int, int, int], int]


@dataclass(frozen=True, slots=True)
class Features:
    """The OS-specific paths in use: a function where it is on, None where the plain fallback
    (named beside each) is taken instead."""

    pread: Callable[[int, int, int], bytes] | None  # else seek and read a descriptor of our own
    sync_file_range: SyncFileRange | None  # Linux sync_file_range(2); else no write-behind hint
    fdatasync: Callable[[int], None] | None  # wait for a written window; else do not wait
    drop_cache: Callable[[int, int, int], None] | None  # posix_fadvise DONTNEED; else leave it
    dir_fsync: bool  # fsync a directory after a rename (POSIX); else rely on the file's fsync
    switch_user: bool  # seteuid/setegid to a store's owner (POSIX); else write as ourselves
    sendfile: Callable[[int, int, int, int], int] | None = None  # else read and write


PLAIN = Features(pread=None, sync_file_range=None, fdatasync=None, drop_cache=None,
                 dir_fsync=False, switch_user=False, sendfile=None)


def portable() -> bool:
    """True if $OLLAMA_BUNDLE_PORTABLE asks for the plain paths only."""
    return os.environ.get(PORTABLE_ENV, "").strip() == "1"


def features() -> Features:
    """The paths in use now (looked up on every call, so a test can switch them)."""
    return PLAIN if portable() else _NATIVE


if sys.platform == "linux":

    def _load_sync_file_range() -> SyncFileRange | None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        except (OSError, AttributeError):
            return None
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return cast("SyncFileRange", fn)

else:

    def _load_sync_file_range() -> SyncFileRange | None:
        return None


def _drop_cache() -> Callable[[int, int, int], None] | None:
    fadvise = getattr(os, "posix_fadvise", None)
    dontneed = getattr(os, "POSIX_FADV_DONTNEED", None)
    if fadvise is None or dontneed is None:
        return None
    return lambda fd, start, length: fadvise(fd, start, length, dontneed)


_NATIVE = Features(
    pread=getattr(os, "pread", None),
    sync_file_range=_load_sync_file_range(),
    fdatasync=getattr(os, "fdatasync", None),
    drop_cache=_drop_cache(),
    dir_fsync=sys.platform != "win32" and hasattr(os, "O_DIRECTORY"),
    switch_user=all(hasattr(os, f) for f in ("geteuid", "seteuid", "setegid", "setgroups",
                                             "getgroups")),
    sendfile=getattr(os, "sendfile", None),
)


# -- files ---------------------------------------------------------------------------------------


class NotRegularFileError(Exception):
    """A file we open is a FIFO, a device, a socket or a directory (`mode` says which)."""

    def __init__(self, path: Path, mode: int) -> None:
        super().__init__(str(path))
        self.path, self.mode = path, mode


def file_kind(mode: int) -> str:
    """'a FIFO', 'a character device', ... for an st_mode that is not a regular file's."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "not a regular file"


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open that never follows a symbolic link at `path` (OSError ELOOP if one is there):
    O_NOFOLLOW where the OS has it; elsewhere (Windows) an lstat just before the open."""
    nofollow: int = getattr(os, "O_NOFOLLOW", 0)
    if not nofollow:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
    return os.open(path, flags | nofollow | O_BINARY, mode)


def is_device_name(path: Path) -> bool:
    """Whether `path` is one of the system's own device names, /dev/... (such as /dev/stdout,
    a link to the process's standard output): links there are the system's, not planted.
    Windows has no /dev."""
    if _WINDOWS:
        return False
    parent = Path(os.path.normpath(path.absolute())).parent  # lexical: no link followed
    return parent == Path("/dev") or Path("/dev") in parent.parents


def open_fd(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open in binary mode (Windows would otherwise translate line ends)."""
    return os.open(path, flags | O_BINARY, mode)


def set_mode(fd: int, path: Path, mode: int) -> None:
    """chmod an open file: fchmod where the OS has it (not Windows before Python 3.13)."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:
        path.chmod(mode)


_SEEK_READ = threading.Lock()


def pread(fd: int, n: int, offset: int) -> bytes:
    """Up to n bytes at `offset`. Without os.pread it seeks and reads, which moves the
    descriptor's offset: use it only on a descriptor nothing else reads."""
    positional = features().pread
    if positional is not None:
        return positional(fd, n, offset)
    with _SEEK_READ:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)


if sys.platform == "win32":

    def free_inodes(path: Path) -> int | None:
        """None: Windows has no statvfs, and NTFS has no fixed number of files."""
        return None

else:

    def free_inodes(path: Path) -> int | None:
        """Files and directories that can still be created on `path`'s file system; None
        where it does not count them (statvfs reports f_files 0)."""
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_favail if st.f_files else None


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable: fsync the directory where the OS can open one. Windows
    cannot open a directory; there a rename is as durable as the file system makes it."""
    if not features().dir_fsync:
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle(fd: int, start: int, length: int, *, written: bool) -> None:
    """After [start, start + length) of `fd` was handed to writeback: wait for it unless that
    was done already (`written`), then drop it from the page cache, where the OS lets us."""
    f = features()
    if not written and f.fdatasync is not None:
        f.fdatasync(fd)
    if f.drop_cache is not None:
        f.drop_cache(fd, start, length)


# -- the store's lock ------------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive_lock(path: Path, on_wait: Callable[[], object]) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing, never deleted, never
    followed if it is a link), calling `on_wait` once if another process holds it. The lock
    goes with the descriptor, so a killed holder never leaves it taken (formats/ollama-store.md
    §7): flock(2) on POSIX (in portable mode too), byte 0 locked with msvcrt.locking on Windows."""
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT | O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # a FIFO or device planted there: never locked, nor waited on
            raise NotRegularFileError(path, mode)
        if sys.platform == "win32":
            with _windows_lock(fd, on_wait):
                yield
        else:
            import fcntl  # exists on POSIX only

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
    finally:
        os.close(fd)  # releases a flock


def claim(fd: int) -> bool:
    """Lock an open file for this process without waiting; False if a live process holds it.
    Export temporaries are claimed so that a later export removes only a killed one's
    (formats/threat-model.md G12). On Windows, where an open file cannot be removed, nothing
    needs claiming."""
    if sys.platform != "win32":
        import fcntl  # exists on POSIX only

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
    return True


if sys.platform == "win32":

    @contextlib.contextmanager
    def _windows_lock(fd: int, on_wait: Callable[[], object]) -> Iterator[None]:
        import msvcrt  # exists on Windows only

        def attempt() -> bool:
            os.lseek(fd, 0, os.SEEK_SET)  # msvcrt.locking locks from the current offset
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                return False
            return True

        if not attempt():
            on_wait()
            while not attempt():
                time.sleep(0.2)
        try:
            yield
        finally:  # Windows frees a closed file's locks only eventually: unlock first
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


# -- acting as the store's owner ---------------------------------------------------------------


if sys.platform == "win32":

    @contextlib.contextmanager
    def as_owner_of(path: Path) -> Iterator[None]:
        """Windows has no effective uid to switch: we write as ourselves."""
        yield

else:

    @contextlib.contextmanager
    def as_owner_of(path: Path) -> Iterator[None]:
        """As root, with `path` belonging to another user (the ollama service user): act as
        that user (effective uid and gid) until the block ends, so what we create is theirs
        and a link they planted cannot make root write where they could not
        (formats/ollama-store.md §4). Otherwise a no-op."""
        if not features().switch_user or os.geteuid() != 0:
            yield
            return
        try:
            st = path.stat()
        except OSError:
            st = None
        if st is None or st.st_uid == 0:
            yield
            return
        groups = os.getgroups()
        os.setgroups([st.st_gid])
        os.setegid(st.st_gid)
        os.seteuid(st.st_uid)
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)
            os.setgroups(groups)


_WINDOWS = sys.platform == "win32"


def file_name_problem(name: str) -> str | None:
    """Why this OS cannot have a file or directory called `name`, or None. Our own names
    never contain `:`; a host with a port, in Ollama's manifest path, does (formats/
    ollama-store.md §7)."""
    if _WINDOWS and ":" in name:
        return "Windows does not allow ':' in a file name"
    return None


def posix_permissions() -> bool:
    """True where a file's owner and mode bits say who may read and change it. On Windows
    ACLs do, and st_mode only says read-only or not (every file looks 0o666 or 0o444)."""
    return os.name == "posix"


def effective_uid() -> int | None:
    """This process's effective uid, or None where files have no POSIX owner (Windows)."""
    return os.geteuid() if posix_permissions() and hasattr(os, "geteuid") else None
