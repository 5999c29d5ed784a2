"""Streaming tar.zst writer and reader (formats/bundle-v1.md §3, §7); the only zstandard user.
zstd's framing (raw blocks, the seek table, the frame walker) is bundler/zstdframes.py.

The writer emits deterministic ustar headers and one zstd frame per blob member. The reader is
hostile-input safe: it parses headers itself, accepts only regular files (and PAX `size`
records), and hands bodies out as views of preallocated buffers that a second thread fills
with decompressed data, so decompression overlaps hashing and writing.
"""

from __future__ import annotations

import bisect
import io
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

from bundler import oscompat
from bundler.digest import CHUNK_SIZE
from bundler.distribution import FileSpan, Frame, frames_for, member_frames
from bundler.errors import IntegrityError
from bundler.progress import plural
from bundler.streams import Prefetch, Sink
from bundler.zstdframes import (
    FRAME_MAX,
    MAX_SEEK_TABLE,
    SEEKABLE_MAGIC,
    FrameWalker,
    parse_seek_table,
    raw_blocks,
    raw_frame_blocks,
    raw_spans,
    seek_table,
)

if TYPE_CHECKING:
    import zstandard

# zstandard is imported by the functions that use it, not here: a command that reads or writes
# no bundle (--version, keygen, inventory of a store) does not pay for loading it.

BLOCK = 512
_PAX_SIZE = re.compile(rb"([1-9][0-9]{0,3}) size=(0|[1-9][0-9]{0,19})\n")
_MAX_PAX_BYTES = 1024
_MAX_TRAILING_ZEROS = 1024 * 1024  # after end-of-archive; tar's own record padding is 10 KiB
MAX_WINDOW = 2**27  # formats/bundle-v1.md §7: readers limit the window to 128 MiB
MIN_LEVEL, MAX_LEVEL = -7, 19


def padding(size: int) -> int:
    return -size % BLOCK


def member_header(name: str, size: int, mode: int = 0o644) -> bytes:
    """Deterministic ustar header (§3), preceded by a PAX `size` header when size >= 8 GiB;
    `mode` is 0644 but for the carried tool's 0755."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


class ArchiveWriter:
    """Writes members to `out` as zstd frames; `close()` writes the end-of-archive frame and
    the seek table."""

    def __init__(self, out: Sink) -> None:
        self._out = out
        self._cctxs: dict[int, zstandard.ZstdCompressor] = {}
        self._frames: list[tuple[int, int]] = []  # (compressed, decompressed) per frame
        self._written = 0

    def _write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self._written += len(data)

    def _cctx(self, level: int) -> zstandard.ZstdCompressor:
        import zstandard

        if level not in self._cctxs:
            self._cctxs[level] = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True, threads=0)
        return self._cctxs[level]

    def _frame(self, pieces: Iterable[bytes | memoryview], size: int, level: int | None) -> None:
        """One frame of `size` decompressed bytes: raw blocks (None), or compressed."""
        start = self._written
        if level is None:
            for part in raw_blocks(pieces, size):
                self._write(part)
        else:
            import zstandard

            try:
                with self._cctx(level).stream_writer(
                    cast("BinaryIO", self), size=size, closefd=False, write_size=CHUNK_SIZE,
                ) as z:
                    for piece in pieces:
                        z.write(piece)
            except zstandard.ZstdError as e:
                # the source failed (e.g. gave other than `size` bytes) and ending the frame
                # then failed too ("Src size is incorrect"): the source's error is the one
                if e.__context__ is not None:
                    raise e.__context__ from None
                raise
        self._frames.append((self._written - start, size))

    def write(self, data: bytes | memoryview) -> int:
        """(The compressor's output goes through here, so that it is counted.)"""
        self._write(data)
        return len(data)

    def write_small(self, members: Iterable[tuple[str, bytes]], *, level: int) -> None:
        """Several small members in one frame (the head of the bundle)."""
        data = bytearray()
        for name, body in members:
            data += member_header(name, len(body)) + body + bytes(padding(len(body)))
        self._frame([bytes(data)], len(data), level)

    def write_stream(self, name: str, size: int, chunks: Iterable[memoryview | bytes], *,
                     level: int | None, mode: int = 0o644) -> None:
        """One member in frames of at most FRAME_MAX bytes (the first starts at its header),
        compressed at `level` or stored as raw blocks (None); `chunks` must add up to exactly
        `size` bytes."""
        header = member_header(name, size, mode)
        pieces = iter(_checked(name, size, chunks, header))
        total = len(header) + size + padding(size)
        carry: list[memoryview] = []

        def take(n: int) -> Iterator[memoryview]:
            while n:
                if carry:
                    view = carry.pop()
                else:
                    piece = next(pieces, None)
                    if piece is None:
                        raise IntegrityError(f"{name}: the source ended early")
                    view = memoryview(piece)
                if len(view) > n:
                    carry.append(view[n:])
                    view = view[:n]
                n -= len(view)
                yield view

        done = 0
        while True:
            n = min(FRAME_MAX, total - done)
            self._frame(take(n), n, level)
            done += n
            if done == total:
                break
        for extra in pieces:  # lets _checked see the end (and complain about extra bytes)
            if extra:
                raise IntegrityError(f"{name}: the source gave more than {plural(size, 'byte')}")

    @property
    def frames(self) -> list[tuple[int, int]]:
        """(compressed, decompressed) size of every frame written so far."""
        return list(self._frames)

    def end_archive(self) -> None:
        """The end-of-archive frame."""
        self._frame([bytes(2 * BLOCK)], 2 * BLOCK, 1)

    def close(self) -> None:
        """The end-of-archive frame and the seek table."""
        self.end_archive()
        self._out.write(seek_table(self._frames))


def _checked(name: str, size: int, chunks: Iterable[memoryview | bytes],
             header: bytes) -> Iterator[memoryview | bytes]:
    """header, then the chunks (exactly `size` bytes of them), then the zero padding."""
    yield header
    written = 0
    for chunk in chunks:
        written += len(chunk)
        if written > size:
            break
        yield chunk
    if written != size:
        raise IntegrityError(f"{name}: source gave {plural(written, 'byte')}, expected {size}")
    yield bytes(padding(size))


# ---------------------------------------------------------------------------------------------
# Reading


def member_spans(rows: list[tuple[int, int]], members: Iterable[tuple[str, int]],
                 head: int) -> dict[str, tuple[int, int]] | None:
    """Where each member after the head frames (the first `head` decompressed bytes) starts
    and where its last frame ends in the compressed stream, from the seek table's rows
    (formats/bundle-v1.md §7.1); None if the framing is not the writer's."""
    offset, i, done = 0, 0, 0
    while done < head and i < len(rows):  # one frame, or more with a carried tool (§7)
        offset += rows[i][0]
        done += rows[i][1]
        i += 1
    if done != head or head <= 0:
        return None
    out = {}
    for name, size in members:
        content = len(member_header(name, size)) + size + padding(size)
        start = offset
        while content > 0 and i < len(rows):
            content -= rows[i][1]
            offset += rows[i][0]
            i += 1
        if content != 0:
            return None
        out[name] = (start, offset)
    return out


class _WalkedSource:
    """The compressed source as the decompressor reads it, shown to a FrameWalker; it ends
    early at `limit` (a compressed offset), if one is set."""

    def __init__(self, src: BinaryIO, walker: FrameWalker) -> None:
        self._src, self._walker = src, walker
        self.offset = 0  # compressed bytes read so far
        self.limit: int | None = None

    def read(self, n: int = -1) -> bytes:
        if self.limit is not None:
            n = min(CHUNK_SIZE if n < 0 else n, self.limit - self.offset)
            if n <= 0:
                return b""
        data = self._src.read(n)
        if data:
            self._walker.feed(data)
            self.offset += len(data)
        return data


class Positional(Protocol):
    """A stream that can also be read at any offset (a file, or the parts of a split bundle):
    offsets count from where the stream starts."""

    @property
    def size(self) -> int: ...

    def pread(self, n: int, offset: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _FileAt:
    fd: int
    start: int
    size: int
    owned: bool = False  # a descriptor of our own (without os.pread), closed by close()

    def pread(self, n: int, offset: int) -> bytes:
        return oscompat.pread(self.fd, n, self.start + offset)

    def locate(self, offset: int) -> tuple[int, int, int]:
        """The descriptor, its offset and the bytes from there on that hold `offset`."""
        return self.fd, self.start + offset, self.size - offset

    def close(self) -> None:
        if self.owned:
            os.close(self.fd)


def _positional(src: BinaryIO) -> Positional | None:
    """`src` as a Positional: its own, or a regular file's (read from its current offset)."""
    own = getattr(src, "positional", None)
    if callable(own):
        return cast("Positional | None", own())
    try:
        fd = src.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        start = os.lseek(fd, 0, os.SEEK_CUR)
        size = os.fstat(fd).st_size - start
        if oscompat.features().pread:
            return _FileAt(fd, start, size)
        return _own_file_at(src, fd, start, size)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None


def _own_file_at(src: BinaryIO, fd: int, start: int, size: int) -> _FileAt | None:
    """Without os.pread, a positional read seeks: it must not move the offset of `src`, which
    the decompressing thread reads. So open the same file again (by name), for ourselves."""
    name = getattr(src, "name", None)
    if not isinstance(name, str):
        return None  # standard input: streamed only
    own = oscompat.open_fd(Path(name), os.O_RDONLY)
    if not os.path.samestat(os.fstat(own), os.fstat(fd)):
        os.close(own)
        return None
    return _FileAt(own, start, size, owned=True)


def _raw_from(source: Positional, at: int, position: int, count: int,
              ) -> Iterator[memoryview] | None:
    """`count` content bytes from `position` on, of frames that start at `at` and hold raw
    blocks only (the stored frames of §7), found by walking the block headers, without
    reading the bytes before `position`; None if the frames are not all stored frames."""
    spans = raw_spans(source.pread, at, position, count)
    if spans is None:
        return None

    def read() -> Iterator[memoryview]:
        for offset, length in spans:
            while length:
                data = source.pread(min(length, CHUNK_SIZE), offset)
                if not data:
                    raise IntegrityError("bundle ends early when reading a stored frame")
                offset += len(data)
                length -= len(data)
                yield memoryview(data)

    return read()


class _PositionalReader:
    """A Positional read from an offset on (up to `end`, if given)."""

    def __init__(self, source: Positional, offset: int, end: int | None = None) -> None:
        self._source, self._offset, self._end = source, offset, end

    def read(self, n: int = -1) -> bytes:
        n = CHUNK_SIZE if n < 0 else n
        if self._end is not None:
            n = max(0, min(n, self._end - self._offset))
        data = self._source.pread(n, self._offset) if n else b""
        self._offset += len(data)
        return data


def _seek_rows(source: Positional) -> list[tuple[int, int]] | None:
    if source.size < 17:
        return None
    footer = source.pread(9, source.size - 9)
    if len(footer) != 9 or int.from_bytes(footer[-4:], "little") != SEEKABLE_MAGIC:
        return None
    size = 8 + 8 * int.from_bytes(footer[:4], "little") + 9
    if size > min(source.size, MAX_SEEK_TABLE):
        return None
    return parse_seek_table(source.pread(size, source.size - size), source.size)


class _Decompressor:
    """Decompresses `src` in a second thread (streams.Prefetch) while its frames are walked.

    Read-ahead stops at a compressed offset given with `stop_at` (a frame boundary, from the
    seek table): the thread decompresses up to there and ends; only when the consumer wants
    more does a new one continue from there. So a reader that wants only what comes before
    that offset (the head of a bundle) reads nothing after it."""

    def __init__(self, src: BinaryIO) -> None:
        import zstandard

        self._dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self._walker = FrameWalker()
        self._source = _WalkedSource(src, self._walker)
        self._stop: int | None = None
        self._paused = False
        self.frame_starts = self._walker.starts
        self._prefetch: Prefetch | None = None

    def stop_at(self, offset: int) -> None:
        """Read no further ahead than `offset` until the consumer needs what is there. Takes
        effect when decompression starts or continues (at a stop), not in the middle."""
        self._stop = offset

    def _start(self) -> None:
        stop, self._stop = self._stop, None
        self._source.limit = stop if stop is not None and stop > self._source.offset else None
        self._reader = self._dctx.stream_reader(
            cast("BinaryIO", self._source), read_size=CHUNK_SIZE, read_across_frames=True,
            closefd=False,
        )
        self._prefetch = Prefetch(self._fill, name="decompress")

    def next(self) -> memoryview | None:
        if self._prefetch is None:
            self._start()
        while True:
            assert self._prefetch is not None
            item = self._prefetch.next()
            if item is not None or not self._paused:
                return item
            self._prefetch.close()  # (its thread has ended)
            self._paused = False
            self._start()

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()

    def _fill(self, buffer: memoryview) -> int:
        import zstandard

        n = 0
        try:
            while n < len(buffer):
                got = self._reader.readinto(buffer[n:])
                if not got:
                    break
                n += got
        except zstandard.ZstdError as e:
            raise IntegrityError(f"bundle is not a valid zstd stream: {e}") from None
        if n == 0 and self._source.limit is not None and self._source.offset == self._source.limit:
            if not self._walker.between_frames:  # the stop came from the seek table
                raise IntegrityError("bundle: the seek table does not describe the frames "
                                     "before it", hint="the file was altered or damaged")
            self._paused = True  # (seen by next() after this thread's end-of-stream)
        elif n == 0:  # the end: the whole source must have been complete frames
            while self._source.read(CHUNK_SIZE):
                pass
            self._walker.finish()
        return n


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    size: int
    header: bytes  # the raw header block(s), PAX header included
    offset: int = 0  # where the header starts in the decompressed stream

    @property
    def is_canonical(self) -> bool:
        """True if the header is exactly what the writer emits (formats/bundle-v1.md §3)."""
        return self.header == member_header(self.name, self.size)

    def is_canonical_with(self, modes: Iterable[int]) -> bool:
        """True if the header is what the writer emits with one of `modes`."""
        return any(self.header == member_header(self.name, self.size, m) for m in modes)


class ArchiveReader:
    """Reads a bundle's tar stream member by member. Use as a context manager."""

    def __init__(self, src: BinaryIO) -> None:
        self._file = _positional(src)  # (before the decompressing thread starts reading)
        self._rows = None if self._file is None else _seek_rows(self._file)
        self._src = _Decompressor(src)
        if self._rows:  # read no further ahead than the head frame (formats/bundle-v1.md §7.1)
            self._src.stop_at(self._rows[0][0])
        self._chunk: memoryview = memoryview(b"")
        self._pos = 0
        self._offset = 0  # decompressed bytes consumed
        self._pending = 0  # body bytes of the current member not yet consumed
        self._pad = 0

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._src.close()
        if isinstance(self._file, _FileAt):
            self._file.close()

    # -- low level ---------------------------------------------------------------------------

    def _views(self, n: int) -> Iterator[memoryview]:
        """The next n bytes of the stream as views; a view is valid until the next call."""
        while n > 0:
            if self._pos == len(self._chunk):
                chunk = self._src.next()
                if chunk is None:
                    raise IntegrityError(
                        "bundle ends early: it is truncated or a member is missing",
                        hint="copy the file again; compare its size with the original",
                    )
                self._chunk, self._pos = chunk, 0
            take = min(n, len(self._chunk) - self._pos)
            view = self._chunk[self._pos : self._pos + take]
            self._pos += take
            self._offset += take
            n -= take
            yield view

    def _read(self, n: int) -> bytes:
        return b"".join(bytes(v) for v in self._views(n))

    # -- members -----------------------------------------------------------------------------

    def next_member(self) -> Member | None:
        """The next member's header, or None at the end-of-archive marker."""
        if self._pending:
            raise RuntimeError("previous member body not consumed")
        if self._pad:
            if self._read(self._pad).strip(b"\0"):
                raise IntegrityError("bundle: non-zero bytes in the padding after a member")
            self._pad = 0
        pax_size: int | None = None
        raw = b""
        offset = self._offset
        while True:
            block = self._read(BLOCK)
            if block == bytes(BLOCK):
                if pax_size is not None:
                    raise IntegrityError("bundle: a PAX header is not followed by a member")
                self._check_end()
                return None
            raw += block
            info = self._parse_header(block)
            if info.type == tarfile.XHDTYPE:
                if pax_size is not None or info.size > _MAX_PAX_BYTES:
                    raise IntegrityError("bundle: malformed PAX header")
                data = self._read(info.size)
                pax_size = self._parse_pax(data)
                raw += data + self._read_padding(info.size)
                continue
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise IntegrityError(
                    f"bundle member {info.name[:200]!r} is not a regular file (tar type "
                    f"{info.type!r})",
                    hint="a bundle holds only regular files; this file was not made by export",
                )
            size = info.size if pax_size is None else pax_size
            self._pending, self._pad = size, padding(size)
            return Member(info.name, size, raw, offset)

    def _read_padding(self, size: int) -> bytes:
        pad = self._read(padding(size))
        if pad.strip(b"\0"):
            raise IntegrityError("bundle: non-zero bytes in the padding after a member")
        return pad

    @staticmethod
    def _parse_header(block: bytes) -> tarfile.TarInfo:
        if block[257:265] not in (b"ustar\x0000", b"ustar  \x00"):
            raise IntegrityError("bundle: a tar header is not in ustar format")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError, ValueError) as e:
            raise IntegrityError(f"bundle: corrupt tar header ({e})") from None
        if info.size < 0:  # base-256 sizes can be negative
            raise IntegrityError(f"bundle member {info.name[:200]!r} has a negative size")
        return info

    @staticmethod
    def _parse_pax(data: bytes) -> int:
        # formats/bundle-v1.md §3.1: "exactly one record, size=<decimal>"
        m = _PAX_SIZE.fullmatch(data)
        if m is None or int(m.group(1)) != len(data):
            raise IntegrityError("bundle: a PAX header holds something other than one size record")
        return int(m.group(2))

    def _check_end(self) -> None:
        """After the first zero block: one more, then nothing but zeros (§3)."""
        if self._read(BLOCK) != bytes(BLOCK):
            raise IntegrityError("bundle: malformed end-of-archive marker")
        trailing = 0
        while (chunk := self._next_raw()) is not None:
            trailing += len(chunk)
            if trailing > _MAX_TRAILING_ZEROS or any(chunk.tobytes().rstrip(b"\0")):
                raise IntegrityError(
                    "bundle: data after the end of the archive",
                    hint="the file has trailing garbage; it is not a bundle as export wrote it",
                )

    def _next_raw(self) -> memoryview | None:
        if self._pos < len(self._chunk):
            rest = self._chunk[self._pos :]
            self._pos = len(self._chunk)
            self._offset += len(rest)
            return rest
        return self._src.next()

    def seek_rows(self) -> list[tuple[int, int]] | None:
        """The frames the seek table at the end of the stream lists, if the source can be
        read at any offset and has a valid one."""
        return self._rows

    def positional(self) -> Positional | None:
        """The source read at any offset, if it can be (a file, split parts)."""
        return self._file

    def check_end_at(self, offset: int) -> None:
        """The frames from compressed offset `offset` up to the seek table hold the
        end-of-archive marker and nothing else, complete (what `next_member()` requires at the
        end, §3): for a reader that reached the end through the seek table."""
        import zstandard

        assert self._file is not None and self._rows
        end = sum(c for c, _ in self._rows)
        if not 0 < end - offset <= CHUNK_SIZE:
            raise IntegrityError("bundle: data after the end of the archive",
                                 hint="this is not an intact bundle")
        data = self._file.pread(end - offset, offset)
        walker = FrameWalker()
        walker.feed(data)
        walker.finish()
        limit = 2 * BLOCK + _MAX_TRAILING_ZEROS
        try:
            out = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(
                io.BytesIO(data), read_across_frames=True).read(limit + 1)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"bundle is not a valid zstd stream: {e}") from None
        if len(out) < 2 * BLOCK or len(out) > limit or out.strip(b"\0"):
            raise IntegrityError("bundle: malformed end-of-archive marker",
                                 hint="this is not an intact bundle")

    def read_ahead_until(self, offset: int) -> None:
        """Read nothing at or after compressed offset `offset` (a frame boundary) until the
        stream before it has been consumed and more is wanted: for a caller that may stop
        there and read on through the seek table instead. Effective while the stream is still
        before the head frame's end, where it stops anyway."""
        self._src.stop_at(offset)

    def member_at(self, span: tuple[int, int], name: str, size: int,
                  ) -> Callable[[int], Iterator[memoryview]] | None:
        """Like `reopener`, for a member not read yet, whose frames the seek table puts at
        `span` (compressed start and end offsets): nothing outside them is read."""
        if self._file is None:
            return None
        member = Member(name, size, member_header(name, size))
        return self._body_at(self._file, span[0], member, lambda: span[1])

    def reopener(self, member: Member) -> Callable[[int], Iterator[memoryview]] | None:
        """For a member read from a regular file in which a zstd frame starts at its header
        (every member of a bundle as export writes it): a function that reads the member's
        body again from a given offset on, independently of this reader (each view is valid
        until the next). None otherwise."""
        starts = self._src.frame_starts
        at = starts.get(member.offset)
        if self._file is None or at is None:
            return None
        after = member.offset + len(member.header) + member.size + padding(member.size)
        return self._body_at(self._file, at, member, lambda: starts.get(after))

    @staticmethod
    def _body_at(source: Positional, at: int, member: Member, end: Callable[[], int | None],
                 ) -> Callable[[int], Iterator[memoryview]]:
        """`end()`: where the member's last frame ends, if known (then nothing after it is
        read, not even ahead)."""
        def body(skip: int) -> Iterator[memoryview]:
            import zstandard

            if skip:
                raw = _raw_from(source, at, len(member.header) + skip, member.size - skip)
                if raw is not None:  # stored frames: straight to the bytes wanted
                    yield from raw
                    return
            dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
            stop = end()
            reader = dctx.stream_reader(
                cast("BinaryIO", _PositionalReader(source, at, stop)), read_size=CHUNK_SIZE,
                read_across_frames=True)
            buffer = memoryview(bytearray(CHUNK_SIZE))
            todo, pos = len(member.header) + member.size, 0
            header = bytearray()
            while todo:
                try:
                    n = reader.readinto(buffer[: min(len(buffer), todo)])
                except zstandard.ZstdError as e:
                    raise IntegrityError(f"bundle: re-reading {member.name}: {e}") from None
                if not n:
                    raise IntegrityError(f"bundle ends early when re-reading {member.name}")
                view, todo = buffer[:n], todo - n
                if len(header) < len(member.header):  # the header, then the body
                    take = min(n, len(member.header) - len(header))
                    header += view[:take]
                    if len(header) == len(member.header) and header != member.header:
                        raise IntegrityError(f"bundle: {member.name} is not where the seek "
                                             "table or an earlier read put it")
                    view = view[take:]
                if pos + len(view) > skip:
                    yield view[max(0, skip - pos) :]
                pos += len(view)
            if stop is not None:  # the rest of its frames: the padding, the frame checksum
                try:
                    rest = reader.read(BLOCK + 1)
                except zstandard.ZstdError as e:
                    raise IntegrityError(f"bundle: re-reading {member.name}: {e}") from None
                if rest != bytes(padding(member.size)):
                    raise IntegrityError(f"bundle: {member.name} does not end where the seek "
                                         "table puts the end of its frames")

        return body

    def body(self) -> Iterator[memoryview]:
        """The current member's body as views (each valid until the next is taken)."""
        for view in self._views(self._pending):
            self._pending -= len(view)
            yield view

    def read_body(self) -> bytes:
        return b"".join(bytes(v) for v in self.body())


# ---------------------------------------------------------------------------------------------
# Byte ranges of a member, through the seek table (formats/serve-v1.md §3)


class MemberBytes:
    """A member's body read by byte range: only the frames that hold the range are read; the
    bytes of stored frames come as FileSpans where the source can say which file holds them
    (for sendfile), else as views of one buffer; compressed frames are decompressed from their
    start. Thread-safe: each call reads on its own."""

    def __init__(self, source: Positional, frames: list[Frame], name: str, size: int) -> None:
        self._source, self._frames = source, frames
        self.name, self.size = name, size
        self.header = member_header(name, size)
        self._blocks: dict[int, tuple[list[int], list[int]] | None] = {}  # frame -> index

    @classmethod
    def of(cls, source: Positional, rows: list[tuple[int, int]], span: tuple[int, int],
           name: str, size: int) -> MemberBytes | None:
        frames = member_frames(rows, span)
        content = len(member_header(name, size)) + size + padding(size)
        if not frames or sum(f.length for f in frames) != content:
            return None
        return cls(source, frames, name, size)

    def header_ok(self) -> bool:
        """The member's tar header is the canonical one for its name and size (§3)."""
        got = b"".join(bytes(cast("memoryview", p)) for p in
                       self._pieces(0, len(self.header) - 1, raw_spans=False))
        return got == self.header

    def pieces(self, first: int, last: int, *, raw_spans: bool = True,
               ) -> Iterator[memoryview | FileSpan]:
        """Body bytes first..last (inclusive). Each view is valid until the next is taken."""
        h = len(self.header)
        return self._pieces(h + first, h + last, raw_spans=raw_spans)

    def _pieces(self, first: int, last: int, *, raw_spans: bool,
                ) -> Iterator[memoryview | FileSpan]:
        for frame, skip, take in frames_for(self._frames, first, last):
            blocks = self._raw_index(frame)
            if blocks is None:
                yield from self._decompressed(frame, skip, take)
            else:
                yield from self._raw(blocks, skip, take, raw_spans=raw_spans)

    def _raw_index(self, frame: Frame) -> tuple[list[int], list[int]] | None:
        """For a stored frame (raw blocks only, §7): each block's decompressed start within
        the frame and its compressed offset; None for any other frame."""
        if frame.offset in self._blocks:
            return self._blocks[frame.offset]
        index = raw_frame_blocks(self._source.pread, frame.offset, frame.length, frame.size)
        self._blocks[frame.offset] = index
        return index

    def _raw(self, blocks: tuple[list[int], list[int]], skip: int, take: int, *,
             raw_spans: bool) -> Iterator[memoryview | FileSpan]:
        starts, offsets = blocks
        i = bisect.bisect_right(starts, skip) - 1
        locate = getattr(self._source, "locate", None) if raw_spans else None
        while take > 0:
            end = starts[i + 1] if i + 1 < len(starts) else None
            within = skip - starts[i]
            n = take if end is None else min(take, end - skip)
            offset = offsets[i] + within
            while n > 0:
                if locate is not None:
                    fd, at, available = locate(offset)
                    count = min(n, available)
                    if count <= 0:
                        raise IntegrityError("bundle ends early when reading a stored frame")
                    yield FileSpan(fd, at, count)
                else:
                    data = self._source.pread(min(n, CHUNK_SIZE), offset)
                    if not data:
                        raise IntegrityError("bundle ends early when reading a stored frame")
                    count = len(data)
                    yield memoryview(data)
                offset, n, skip, take = offset + count, n - count, skip + count, take - count
            i += 1

    def _decompressed(self, frame: Frame, skip: int, take: int) -> Iterator[memoryview]:
        import zstandard

        reader = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(
            cast("BinaryIO", _PositionalReader(self._source, frame.offset,
                                               frame.offset + frame.size)),
            read_size=CHUNK_SIZE, read_across_frames=False)
        buffer = memoryview(bytearray(min(CHUNK_SIZE, max(skip, take))))
        try:
            while skip:
                n = reader.readinto(buffer[: min(len(buffer), skip)])
                if not n:
                    raise IntegrityError(f"bundle: {self.name}: a frame ends early")
                skip -= n
            while take:
                n = reader.readinto(buffer[: min(len(buffer), take)])
                if not n:
                    raise IntegrityError(f"bundle: {self.name}: a frame ends early")
                take -= n
                yield buffer[:n]
        except zstandard.ZstdError as e:
            raise IntegrityError(f"bundle: reading {self.name}: {e}") from None
