"""zstd framing (RFC 8878; the seekable format of zstd's contrib/seekable_format) as the bundle
uses it (formats/bundle-v1.md §7, §7.1): frames of raw blocks, the seek table, and a walker
that follows a stream's frame and block structure without decompressing. Pure: no I/O, no
zstandard; bundler/archive.py puts tar on top."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from bundler.errors import IntegrityError

ZSTD_MAGIC = (0xFD2FB528).to_bytes(4, "little")  # a zstd frame's first bytes (RFC 8878 §3.1.1)
_RAW_BLOCK = 128 * 1024  # zstd's maximum block size
# frame header for raw frames: magic, descriptor 0xC0 (8-byte content size, no single
# segment, no checksum), window descriptor 0x38 (128 KiB window), content size
RAW_FRAME = ZSTD_MAGIC + b"\xc0\x38"


def raw_blocks(pieces: Iterable[bytes | memoryview], total: int) -> Iterator[bytes | memoryview]:
    """A zstd frame of raw blocks (RFC 8878 §3.1.1.2) around `pieces`, which add up to `total`.
    Used for weights, which do not compress: the decoder copies them, nobody searches them."""
    yield RAW_FRAME + total.to_bytes(8, "little")
    left = total
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), _RAW_BLOCK):
            block = view[start : start + _RAW_BLOCK]
            left -= len(block)
            yield (len(block) << 3 | (left == 0)).to_bytes(3, "little")
            yield block
    if total == 0:
        yield (1).to_bytes(3, "little")  # one empty last block


def raw_block(header: bytes) -> tuple[int, bool] | None:
    """A block header (RFC 8878 §3.1.1.2) of a raw block as `raw_blocks` writes them: (its
    size, whether it is the frame's last); None for any other block or a short header."""
    if len(header) != 3:
        return None
    value = int.from_bytes(header, "little")
    if (value >> 1) & 3 != 0 or value >> 3 > _RAW_BLOCK:
        return None
    return value >> 3, bool(value & 1)


Pread = Callable[[int, int], bytes]  # (n, offset) -> at most n bytes of a stream at offset
_RAW_HEADER = len(RAW_FRAME) + 8  # RAW_FRAME and the 8-byte content size


def raw_spans(pread: Pread, at: int, position: int, count: int) -> list[tuple[int, int]] | None:
    """Where `count` content bytes from `position` on lie, as (compressed offset, length), in
    frames that start at `at` and hold raw blocks only (the stored frames of
    formats/bundle-v1.md §7), found by walking the block headers through `pread` without
    reading the bytes before `position`; None if the frames are not all stored frames."""
    spans: list[tuple[int, int]] = []
    pos, left = 0, count
    while left:
        head = pread(_RAW_HEADER, at)
        if len(head) != _RAW_HEADER or head[: len(RAW_FRAME)] != RAW_FRAME:
            return None
        at += _RAW_HEADER
        while True:
            block = raw_block(pread(3, at))
            if block is None:
                return None
            size, last = block
            at += 3
            if pos + size > position and left:
                start = max(0, position - pos)
                take = min(size - start, left)
                spans.append((at + start, take))
                left -= take
            pos += size
            at += size
            if last or not left:
                break
        if spans and not left:
            break
        if pos > position + count:
            return None
    return spans


def raw_frame_blocks(pread: Pread, offset: int, length: int, size: int,
                     ) -> tuple[list[int], list[int]] | None:
    """For a stored frame (raw blocks only, formats/bundle-v1.md §7) of `size` compressed
    bytes at `offset` holding `length` content bytes: each block's content start within the
    frame and its compressed offset, read through `pread`; None for any other frame."""
    head = pread(_RAW_HEADER, offset)
    if (len(head) != _RAW_HEADER or head[: len(RAW_FRAME)] != RAW_FRAME
            or int.from_bytes(head[len(RAW_FRAME) :], "little") != length):
        return None
    starts, offsets = [], []
    at, pos, end = offset + _RAW_HEADER, 0, offset + size
    while True:
        block = raw_block(pread(3, at))
        if block is None or at + 3 + block[0] > end:
            return None
        block_size, last = block
        starts.append(pos)
        offsets.append(at + 3)
        pos, at = pos + block_size, at + 3 + block_size
        if last:
            return (starts, offsets) if pos == length and at == end else None


FRAME_MAX = 1 << 30  # decompressed bytes per frame: the seek table's fields are 32-bit
SEEK_TABLE_MAGIC = 0x184D2A5E  # a skippable frame (zstd's seekable format)
SEEKABLE_MAGIC = 0x8F92EAB1


def seek_table(entries: Iterable[tuple[int, int]]) -> bytes:
    """zstd's seekable format: a skippable frame listing each frame's compressed and
    decompressed size (no checksums), then the footer (formats/bundle-v1.md §7.1)."""
    rows = list(entries)
    body = b"".join(c.to_bytes(4, "little") + d.to_bytes(4, "little") for c, d in rows)
    body += len(rows).to_bytes(4, "little") + b"\0" + SEEKABLE_MAGIC.to_bytes(4, "little")
    return SEEK_TABLE_MAGIC.to_bytes(4, "little") + len(body).to_bytes(4, "little") + body


_SKIPPABLE_MAGIC = 0x184D2A50  # ... 0x184D2A5F
_FCS_BYTES = (0, 2, 4, 8)
MAX_SEEK_TABLE = 64 * 1024 * 1024
_DID_BYTES = (0, 1, 2, 4)


def parse_seek_table(tail: bytes, total: int) -> list[tuple[int, int]] | None:
    """The frame sizes a seek table at the end of a `total`-byte stream lists (`tail`: the
    stream's last bytes, at least the whole table), if they add up; else None."""
    if len(tail) < 17 or int.from_bytes(tail[-4:], "little") != SEEKABLE_MAGIC or tail[-5]:
        return None
    count = int.from_bytes(tail[-9:-5], "little")
    size = 8 + 8 * count + 9
    if size > len(tail) or int.from_bytes(tail[-size : -size + 4], "little") != SEEK_TABLE_MAGIC:
        return None
    body = tail[-size + 8 : -9]
    rows = [(int.from_bytes(body[i : i + 4], "little"), int.from_bytes(body[i + 4 : i + 8], "little"))
            for i in range(0, len(body), 8)]
    return rows if sum(c for c, _ in rows) + size == total else None


class FrameWalker:
    """Follows the frame and block structure of a zstd stream (RFC 8878 §3.1) as its bytes
    pass by, without decompressing. python-zstandard's stream reader returns end-of-file
    quietly on a truncated last frame or a dangling frame header; `finish()` does not."""

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4
        self._buf = bytearray()
        self._skip = 0
        self._last = False
        self._checksum = False
        self.frames = 0
        # where frames start: decompressed offset -> compressed offset, for frames whose
        # header declares the content size (all of ours); -1 once a frame's size is unknown
        self.starts: dict[int, int] = {}
        self._fed = 0  # compressed bytes consumed so far
        self._frame_at = 0  # compressed offset of the current frame
        self._out = 0  # decompressed offset of the current frame's content
        self._fcs = 0
        self._content = 0
        # (compressed, decompressed) size of every frame, while all declare their size
        self.sizes: list[tuple[int, int]] | None = []
        self._seek_table = False
        self.table: bytes | None = None  # the seek table's body, if the stream has one

    @property
    def between_frames(self) -> bool:
        """True if every frame fed so far is complete (nothing of a next one fed yet)."""
        return self._state == "magic" and not self._buf and not self._skip

    def feed(self, data: bytes) -> None:
        view, pos, n = memoryview(data), 0, len(data)
        base = self._fed
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                if not self._skip:
                    self._fed = base + pos
                    self._after_body()
                continue
            take = min(self._need - len(self._buf), n - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                field = bytes(self._buf)
                self._buf.clear()
                self._fed = base + pos
                self._on_field(field)
        self._fed = base + n

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need
        if need == 0:
            self._on_field(b"")

    def _on_field(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            if field == ZSTD_MAGIC:
                if self.table is not None:
                    raise IntegrityError("bundle: a zstd frame follows the seek table")
                self._frame_at = self._fed - 4
                self._expect("descriptor", 1)
            elif magic & 0xFFFFFFF0 == _SKIPPABLE_MAGIC:
                self._seek_table = magic == SEEK_TABLE_MAGIC and self.table is None
                self._expect("skippable-size", 4)
            else:
                raise IntegrityError("bundle is not a zstd stream, or has trailing garbage",
                                     hint="the file is damaged, or is not a bundle")
        elif state == "descriptor":
            fhd = field[0]
            if fhd & 0x08:
                raise IntegrityError("bundle: zstd frame header has a reserved bit set")
            single = (fhd >> 5) & 1
            self._checksum = bool((fhd >> 2) & 1)
            self._fcs = fcs = _FCS_BYTES[fhd >> 6] or single  # flag 0: 1 byte if single-segment
            self._expect("header-rest", (0 if single else 1) + _DID_BYTES[fhd & 3] + fcs)
        elif state == "header-rest":
            self._note_start(field[len(field) - self._fcs :])
            self._expect("block-header", 3)
        elif state == "block-header":
            h = int.from_bytes(field, "little")
            block_type, size = (h >> 1) & 3, h >> 3
            if block_type == 3:
                raise IntegrityError("bundle: zstd block of reserved type")
            self._last = bool(h & 1)
            self._state = "block"
            self._skip = 1 if block_type == 1 else size
            if not self._skip:
                self._after_body()
        elif state == "checksum":
            self._end_frame()
        elif state == "skippable-size" and self._seek_table:
            size = int.from_bytes(field, "little")
            if size > MAX_SEEK_TABLE:
                raise IntegrityError("bundle: the seek table is too large")
            self._expect("seek-table", size)
        elif state == "seek-table":
            self.table = field
            self._expect("magic", 4)
        elif state == "skippable-size":
            self._state = "skippable"
            self._skip = int.from_bytes(field, "little")
            if not self._skip:
                self._after_body()

    def _note_start(self, fcs: bytes) -> None:
        if self._out < 0:
            return
        if not fcs:
            self._out = -1  # content size unknown: no later offsets are known either
            self.sizes = None
            return
        self._content = int.from_bytes(fcs, "little") + (256 if len(fcs) == 2 else 0)
        if self._content == 2**64 - 1:  # zstd's "content size unknown"
            self._out = -1
            self.sizes = None
            return
        self.starts[self._out] = self._frame_at
        self._out += self._content

    def _after_body(self) -> None:
        if self._state == "skippable":
            self._expect("magic", 4)
        elif not self._last:
            self._expect("block-header", 3)
        elif self._checksum:
            self._expect("checksum", 4)
        else:
            self._end_frame()

    def _end_frame(self) -> None:
        self.frames += 1
        if self.sizes is not None:
            self.sizes.append((self._fed - self._frame_at, self._content))
        self._expect("magic", 4)

    def finish(self) -> None:
        """At end of input: require that the last frame was complete, and that a seek table
        describes exactly the frames before it (formats/bundle-v1.md §7.1)."""
        if self._state != "magic" or self._buf or self._skip or not self.frames:
            raise IntegrityError(
                "bundle ends in the middle of a zstd frame: it is truncated or has trailing "
                "garbage", hint="copy the file again; compare its size with the original")
        listable = self.sizes is not None and all(
            c < 2**32 and d < 2**32 for c, d in self.sizes)
        if self.table is not None and (
                not listable or seek_table(self.sizes or [])[8:] != self.table):
            raise IntegrityError("bundle: the seek table does not describe the frames before "
                                 "it", hint="the file was altered or damaged")


