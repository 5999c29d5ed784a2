"""Streaming file I/O: read ahead in a second thread, hashing as it goes, into reused
page-aligned buffers (a `readinto` into a bytearray of 128 KiB or more lands at a page offset,
and the kernel's copy into it runs several times slower; allocating a fresh buffer per chunk
slows a copy several times too); write behind, so that gigabytes of dirty pages never pile up."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import queue
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from bundler import oscompat
from bundler.digest import CHUNK_SIZE, Digest
from bundler.errors import BundlerError, NotFoundError, UsageError


class Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> int | None: ...

_DEPTH = 4


class Prefetch:
    """Runs `fill` in a thread over a ring of reused page-aligned buffers and hands the filled
    views, in order, to the consuming thread (`next()` or iteration).

    `fill(buffer)` returns how many bytes it put at the start of `buffer`; 0 means the end.
    A view is valid until the next one is taken: depth views may wait in the queue and one is
    in use, so depth + 2 buffers never overlap. An exception in `fill` is re-raised in the
    consuming thread.
    """

    def __init__(self, fill: Callable[[memoryview], int], *, name: str) -> None:
        self._fill = fill
        self._buffers = [mmap.mmap(-1, CHUNK_SIZE) for _ in range(_DEPTH + 2)]
        self._queue: queue.Queue[memoryview | BaseException | None] = queue.Queue(_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: memoryview | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            i = 0
            while not self._stop.is_set():
                view = memoryview(self._buffers[i % len(self._buffers)])
                n = self._fill(view)
                if not n:
                    self._put(None)
                    return
                if not self._put(view[:n]):
                    return
                i += 1
        except BaseException as e:  # noqa: BLE001 - re-raised in the consuming thread
            self._put(e)

    def next(self) -> memoryview | None:
        """The next filled view, or None at the end (and again on every later call)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)  # stay failed
            raise item
        if item is None:
            self._queue.put(None)  # stay at the end
        return item

    def __iter__(self) -> Iterator[memoryview]:
        try:
            while (item := self.next()) is not None:
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop filling. A thread stuck in a read of a stalled pipe is left behind (it is a
        daemon and holds nothing that needs cleaning), so Ctrl-C never hangs."""
        self._stop.set()
        self._thread.join(timeout=2.0)


class ReadAhead:
    """Iterate over views of `f`'s bytes, read and hashed in a second thread; `digest` and
    `size` are final once iteration ends."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._hash = hashlib.sha256()

    @property
    def digest(self) -> Digest:
        return Digest(self._hash.hexdigest())

    def _fill(self, buffer: memoryview) -> int:
        n: int = self._f.readinto(buffer) or 0  # type: ignore[attr-defined]
        self._hash.update(buffer[:n])
        return n

    def __iter__(self) -> Iterator[memoryview]:
        return iter(Prefetch(self._fill, name="read-ahead"))


# ---------------------------------------------------------------------------------------------
# Writing: keep the kernel's dirty page cache small (measured: writing a new multi-GB file on a
# 2-core VM ran anywhere from 0.28 to 3 GB/s, slow when gigabytes of dirty pages piled up).

_WINDOW = 32 * 1024 * 1024
_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


class WriteBehind:
    """Writes to an unbuffered file and, every 32 MiB, starts writeback of what was just
    written and waits for (then drops from the cache) the window before it. Durability is
    unchanged: the caller still fsyncs at the end, which then has little left to do."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._fd = f.fileno()
        self._offset = 0
        self._window = 0  # start of the window not yet handed to writeback
        self._previous: tuple[int, int] | None = None
        self._range = oscompat.features().sync_file_range  # Linux only

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:  # raw files may write short
            view = view[self._f.write(view) :]
        self._offset += len(data)
        if self._offset - self._window >= _WINDOW:
            self._handoff()
        return len(data)

    def flush(self) -> None:
        self._f.flush()

    def _handoff(self) -> None:
        start, length = self._window, self._offset - self._window
        self._window = self._offset
        if self._range is not None and self._range(
                self._fd, start, length, _SYNC_FILE_RANGE_WRITE) != 0:
            self._range = None  # not supported here (a pipe, an odd file system)
        if self._previous is not None:
            p_start, p_length = self._previous
            if self._range is not None:
                self._range(self._fd, p_start, p_length, _SYNC_FILE_RANGE_WAIT_BEFORE
                            | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER)
            oscompat.settle(self._fd, p_start, p_length, written=self._range is not None)
        self._previous = (start, length)


def check_output(path: Path) -> None:
    """Refuse an output path that cannot work, before any work is done."""
    if not path.name:
        raise UsageError("the output file name is empty", hint="use -o FILE, or -o - for stdout")
    if path.is_dir():
        raise UsageError(f"{path} is a directory", hint=f"use -o {path}/models.tar.zst")
    if not path.parent.is_dir():
        raise NotFoundError(f"directory {path.parent} does not exist",
                            hint="create it first, or choose another -o")


def temporary_file(target: Path, named: Path) -> tuple[Path, BinaryIO]:
    """A new file `.NAME.<random>.partial` beside `target`, unbuffered (`named` in errors),
    created exclusively and never through a link, locked while it is open so that
    `remove_leftovers` knows it is alive."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        fd = oscompat.open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise BundlerError(f"cannot write {named}: {e.strerror}",
                           hint="check that the directory is writable") from None
    f = cast("BinaryIO", os.fdopen(fd, "wb", buffering=0))
    oscompat.claim(f.fileno())
    return tmp, f


def remove_leftovers(output: Path) -> list[Path]:
    """Remove the temporary files (`temporary_file`) an export to `output` that was killed left
    beside it: of the file, of split parts OUT.NNN and of OUT.parts.json; never one an
    export still running holds (formats/threat-model.md G12). Returns those removed."""
    pattern = re.compile(rf"\.{re.escape(output.name)}(\.[0-9]{{3,}}|\.parts\.json)?"
                         r"\.[0-9a-f]{8}\.partial")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(output.parent))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = oscompat.open_nofollow(Path(entry.path), os.O_RDONLY)
        except OSError:
            continue
        try:
            if oscompat.claim(fd):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def written_in_place(path: Path) -> bool:
    """Whether an output goes straight into what is at `path` (formats/README.md, "Output
    files"): a FIFO or a device (e.g. /dev/null), or a link among the system's own
    device names (/dev/stdout, /dev/fd/1). Any other link is replaced, never followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return oscompat.is_device_name(path)
    return not stat.S_ISREG(st.st_mode)


@contextlib.contextmanager
def open_output(path: Path) -> Iterator[Sink]:
    """Written under a temporary name beside `path`, fsynced and renamed onto the name only
    when complete: a symbolic link at `path` is replaced by the file, its target left alone.
    A FIFO or device is written in place (`written_in_place`)."""
    if written_in_place(path):
        with path.open("wb", buffering=0) as device:
            yield device
        return
    remove_leftovers(path)
    tmp, f = temporary_file(path, path)
    try:
        with f:
            yield WriteBehind(f)
            os.fsync(f.fileno())
        os.replace(tmp, path)  # rename(2) replaces a link at `path`, never its target
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ---------------------------------------------------------------------------------------------
# Split bundles (formats/bundle-v1.md §10)
