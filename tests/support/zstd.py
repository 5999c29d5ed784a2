"""zstd streams for the tests, made and read with `zstandard` directly (never bundler's own
archive code), and frames crafted by hand: RLE and raw blocks, decompression bombs
(RFC 8878 §3.1)."""

from __future__ import annotations

import io
from collections.abc import Iterable

import zstandard


def decompress(data: bytes) -> bytes:
    """Every frame of a zstd stream, as the tar bytes (no window limit: test data is small)."""
    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(data), read_across_frames=True)
    out: bytes = reader.read()
    return out


def compress(tar: bytes, level: int = 3) -> bytes:
    """One zstd frame with content size and checksum (not the writer's framing, on purpose)."""
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(tar)


def frames(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each zstd frame in `data`, in order."""
    out: list[tuple[int, int]] = []
    pos = 0
    dctx = zstandard.ZstdDecompressor()
    while pos < len(data):
        obj = dctx.decompressobj()
        obj.decompress(data[pos:])
        if not obj.eof:
            raise ValueError(f"incomplete zstd frame at {pos}")
        end = len(data) - len(obj.unused_data)
        out.append((pos, end))
        pos = end
    return out


_MAGIC = (0xFD2FB528).to_bytes(4, "little")


def zstd_frame(blocks: Iterable[bytes], *, window_log: int | None = 17,
               content_size: int | None = None) -> bytes:
    """A frame built by hand (RFC 8878 §3.1.1), without checksum.

    `window_log=None` makes a single-segment frame, whose window is its content size.
    `blocks` are complete blocks (header included), see `rle_block` and `raw_block`.
    """
    single = window_log is None
    if single and content_size is None:
        raise ValueError("a single-segment frame needs a content size")
    if content_size is None:
        fcs_flag, fcs = 0, b""
    elif content_size < 2**32 and not (single and content_size < 256):
        fcs_flag, fcs = 2, content_size.to_bytes(4, "little")
    else:
        fcs_flag, fcs = 3, content_size.to_bytes(8, "little")
    descriptor = (fcs_flag << 6) | (int(single) << 5)
    window = b"" if window_log is None else bytes([(window_log - 10) << 3])
    return _MAGIC + bytes([descriptor]) + window + fcs + b"".join(blocks)


def _block_header(size: int, kind: int, last: bool) -> bytes:
    return ((size << 3) | (kind << 1) | int(last)).to_bytes(3, "little")


def rle_block(byte: int, size: int, *, last: bool) -> bytes:
    return _block_header(size, 1, last) + bytes([byte])


def raw_block(data: bytes, *, last: bool) -> bytes:
    return _block_header(len(data), 0, last) + data


def zero_bomb(total: int, *, declare_size: bool = True, window_log: int = 17) -> bytes:
    """A valid frame of `total` zero bytes in 4-byte RLE blocks: 2 GiB is a 64 KiB frame."""
    step = 1 << min(window_log, 17)
    sizes = [step] * (total // step) + ([total % step] if total % step else [])
    blocks = [rle_block(0, s, last=i == len(sizes) - 1) for i, s in enumerate(sizes)]
    return zstd_frame(blocks, window_log=window_log,
                      content_size=total if declare_size else None)


def zstd_zeros(total: int, *, level: int = 1) -> bytes:
    """`total` zero bytes compressed by libzstd itself (one frame, content size, checksum)."""
    out = io.BytesIO()
    chunk = bytes(1 << 20)
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    with cctx.stream_writer(out, size=total, closefd=False) as w:
        left = total
        while left:
            n = min(left, len(chunk))
            w.write(chunk[:n])
            left -= n
    return out.getvalue()
