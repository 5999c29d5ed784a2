"""Streaming file I/O: read ahead in a second thread, hashing as it goes, into reused
page-aligned buffers (a `readinto` into a bytearray of 128 KiB or more lands at a page offset,
and the kernel's copy into it runs several times slower; allocating a fresh buffer per chunk
slows a copy several times too); write behind, so that gigabytes of dirty pages never pile up."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import mmap
import os
import queue
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from bundler import oscompat
from bundler.digest import CHUNK_SIZE, Digest
from bundler.errors import BundlerError, IntegrityError, NotFoundError, UsageError
from bundler.progress import plural
from bundler.volumes import Part, part_name, sidecar, sidecar_name


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


def _temporary(target: Path, named: Path) -> tuple[Path, BinaryIO]:
    """A new file `.NAME.<random>.partial` beside `target`, unbuffered (`named` in errors),
    locked while it is open so that `remove_leftovers` knows it is alive."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        f = cast("BinaryIO", tmp.open("xb", buffering=0))
    except OSError as e:
        raise BundlerError(f"cannot write {named}: {e.strerror}",
                           hint="check that the directory is writable") from None
    oscompat.claim(f.fileno())
    return tmp, f


def remove_leftovers(output: Path) -> list[Path]:
    """Remove the temporary files (`_temporary`) an export to `output` that was killed left
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


@contextlib.contextmanager
def open_output(path: Path) -> Iterator[Sink]:
    """A regular file is written under a temporary name beside it, fsynced and renamed into
    place only when complete; a device or FIFO (e.g. /dev/null) is written directly."""
    target = path.resolve() if path.is_symlink() else path
    if target.exists() and not target.is_file():
        with target.open("wb", buffering=0) as device:
            yield device
        return
    remove_leftovers(target)
    tmp, f = _temporary(target, path)
    try:
        with f:
            yield WriteBehind(f)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ---------------------------------------------------------------------------------------------
# Split bundles (formats/bundle-v1.md §10)


class SplitOutput:
    """Parts 2, 3, ... of a split bundle: the stream written to it is cut every `size` bytes
    into files OUT.002, OUT.003, ... (hashed as they are written), all under temporary names
    until `commit()`. Part 1 is written last, with `head()`."""

    def __init__(self, output: Path, size: int) -> None:
        remove_leftovers(output)
        self._held: list[BinaryIO] = []
        self._output, self._size = output, size
        self._temps: list[Path] = []
        self._finals: list[Path] = []
        self.parts: list[Part] = []  # every part finished so far, part 1 first once written
        self._f: BinaryIO | None = None
        self._sink: WriteBehind | None = None
        self._hash = hashlib.sha256()
        self._written = 0

    def _temp(self, number: int) -> tuple[Path, BinaryIO]:
        final = Path(part_name(str(self._output), number))
        tmp, f = _temporary(final, final)
        self._temps.append(tmp)
        self._finals.append(final)
        return tmp, f

    def _end_part(self) -> None:
        assert self._f is not None
        os.fsync(self._f.fileno())
        self._held.append(self._f)  # open, so locked, until commit or discard
        number = len(self.parts) + 2
        self.parts.append(Part(Path(part_name(str(self._output), number)).name, self._written,
                               Digest(self._hash.hexdigest())))
        self._f = self._sink = None

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:
            if self._f is None:
                _, self._f = self._temp(len(self.parts) + 2)
                self._sink, self._hash, self._written = WriteBehind(self._f), hashlib.sha256(), 0
            assert self._sink is not None
            take = view[: self._size - self._written]
            self._sink.write(take)
            self._hash.update(take)
            self._written += len(take)
            view = view[len(take) :]
            if self._written == self._size:
                self._end_part()
        return len(data)

    def finish(self) -> list[Part]:
        """End the last part; the parts 2..N."""
        if self._f is not None:
            self._end_part()
        return list(self.parts)

    @contextlib.contextmanager
    def head(self) -> Iterator[Sink]:
        """Part 1, written (hashed) after every other part is finished."""
        tmp, f = self._temp(1)
        h = hashlib.sha256()
        behind = WriteBehind(f)

        class _Hashed:
            def write(self, data: bytes | memoryview) -> int:
                h.update(data)
                return behind.write(data)

        with f:
            yield _Hashed()
            os.fsync(f.fileno())
        self.parts.insert(0, Part(Path(part_name(str(self._output), 1)).name,
                                  tmp.stat().st_size, Digest(h.hexdigest())))

    def trailer(self, data: bytes) -> None:
        """The last part: the seek table of the whole stream, which describes part 1 and so
        cannot be named by the root in part 1 (formats/bundle-v1.md §10)."""
        _, f = self._temp(len(self.parts) + 1)
        with f:
            f.write(data)
            os.fsync(f.fileno())
        self.parts.append(Part(self._finals[-1].name, len(data), Digest.of(data)))

    def commit(self) -> None:
        """Rename every part into place, part 1 last, then write the sidecar."""
        self._release()
        first = Path(part_name(str(self._output), 1))
        for tmp, final in sorted(zip(self._temps, self._finals, strict=True),
                                 key=lambda tf: tf[1] == first):
            os.replace(tmp, final)
        stale = len(self.parts) + 1  # parts of an earlier, longer export under this name
        while (old := Path(part_name(str(self._output), stale))).is_file():
            old.unlink()
            stale += 1
        with open_output(Path(sidecar_name(str(self._output)))) as sink:
            sink.write(sidecar(self.parts))

    def _release(self) -> None:
        for f in self._held:
            f.close()
        self._held = []

    def discard(self) -> None:
        if self._f is not None:
            self._f.close()
        self._release()
        for tmp in self._temps:
            with contextlib.suppress(OSError):
                tmp.unlink()


class PartsReader:
    """The parts of a split bundle read as one stream. Every part must exist with its listed
    size before anything is read; each part after the first is hashed while it is read and
    checked when its end is reached, before the next is opened."""

    def __init__(self, paths: list[Path], listed: list[tuple[int, Digest]],
                 trailer: Path | None = None) -> None:
        """`paths`: part 1 and parts 2..N; `listed`: (size, digest) of parts 2..N; `trailer`:
        the last file, holding the seek table, if it is there."""
        self.paths, self.listed, self.trailer = paths, listed, trailer
        self._at: _PartsAt | None = None
        for path, (size, _) in zip(paths[1:], listed, strict=True):
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                raise NotFoundError(
                    f"part {path.name} of the split bundle is missing "
                    f"({plural(len(paths), 'part')})",
                    hint=f"copy {path.name} from the release medium next to {paths[0].name}",
                ) from None
            if actual != size:
                raise IntegrityError(
                    f"part {path.name} has {plural(actual, 'byte')}, the signed head lists "
                    f"{size}: it "
                    "was not copied completely", hint=f"copy {path.name} again")
        self._i = 0
        self._f: BinaryIO = paths[0].open("rb")
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        while True:
            data = self._f.read(n if n > 0 else CHUNK_SIZE)
            if data:
                if self._i:
                    self._hash.update(data)
                return data
            if not self._next():
                return b""

    def _next(self) -> bool:
        if self._i == len(self.paths):
            return False
        if self._i:
            digest = self.listed[self._i - 1][1]
            if self._hash.hexdigest() != digest.hex:
                name = self.paths[self._i].name
                raise IntegrityError(
                    f"part {name} is corrupt: its sha256 is not the one the signed head lists",
                    hint=f"copy {name} again from the release medium (or 'bundle repair' it "
                         "if parity files were made)")
        self._f.close()
        self._i += 1
        if self._i == len(self.paths):
            self._f = cast("BinaryIO", io.BytesIO(b""))
            return False
        self._f = self.paths[self._i].open("rb")
        self._hash = hashlib.sha256()
        return True

    def positional(self) -> _PartsAt:
        """The parts (and the seek table's file) as one stream readable at any offset."""
        if self._at is None:
            self._at = _PartsAt([*self.paths, *([self.trailer] if self.trailer else [])])
        return self._at

    def close(self) -> None:
        self._f.close()
        if self._at is not None:
            self._at.close()


class _PartsAt:
    def __init__(self, paths: list[Path]) -> None:
        self._fds: list[int] = []
        try:
            for path in paths:
                self._fds.append(oscompat.open_fd(path, os.O_RDONLY))
        except OSError:
            self.close()
            raise
        self._starts = [0]
        for fd in self._fds:
            self._starts.append(self._starts[-1] + os.fstat(fd).st_size)
        self.size = self._starts[-1]

    def pread(self, n: int, offset: int) -> bytes:
        out = bytearray()
        i = bisect.bisect_right(self._starts, offset) - 1
        while n > 0 and 0 <= i < len(self._fds):
            data = oscompat.pread(self._fds[i], n, offset - self._starts[i])
            if not data:
                i += 1
                continue
            out += data
            n -= len(data)
            offset += len(data)
            if offset >= self._starts[i + 1]:
                i += 1
        return bytes(out)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
