"""bundler/zstdframes.py: finding content bytes in stored frames (raw blocks only,
formats/bundle-v1.md §7) by their block headers, checked against the zstd CLI's decoding."""

from __future__ import annotations

import os
import subprocess

import pytest

from bundler.zstdframes import Pread, raw_blocks, raw_frame_blocks, raw_spans


def _stored(sizes: list[int]) -> tuple[bytes, list[bytes]]:
    """Stored frames, one per size, of random content; and each frame's content."""
    contents = [os.urandom(n) for n in sizes]
    return b"".join(b"".join(raw_blocks([c], len(c))) for c in contents), contents


def _pread(stream: bytes) -> Pread:
    return lambda n, offset: stream[offset : offset + n]


@pytest.mark.parametrize(("position", "count"), [
    (0, 1), (0, 300_000), (131_071, 2), (131_072, 131_072), (299_999, 1), (200_000, 150_000)])
def test_raw_spans_find_the_bytes_the_zstd_cli_decodes(position: int, count: int) -> None:
    stream, contents = _stored([300_000, 50_000])
    decoded = subprocess.run(["zstd", "-dc"], input=stream, capture_output=True,
                             check=True).stdout
    assert decoded == b"".join(contents)
    spans = raw_spans(_pread(stream), 0, position, count)
    assert spans is not None
    assert b"".join(stream[o : o + n] for o, n in spans) == decoded[position : position + count]


def test_raw_spans_refuse_a_compressed_frame() -> None:
    stream = subprocess.run(["zstd", "-c", "-1"], input=os.urandom(1000) + bytes(1000),
                            capture_output=True, check=True).stdout
    assert raw_spans(_pread(stream), 0, 0, 10) is None


def test_raw_frame_blocks_index_each_block() -> None:
    stream, contents = _stored([300_000])
    blocks = raw_frame_blocks(_pread(stream), 0, len(contents[0]), len(stream))
    assert blocks is not None
    starts, offsets = blocks
    assert starts == [0, 131_072, 262_144]
    for start, offset in zip(starts, offsets, strict=True):
        assert stream[offset : offset + 100] == contents[0][start : start + 100]


@pytest.mark.parametrize("change", ["length", "size"])
def test_raw_frame_blocks_refuse_a_frame_that_is_not_what_the_seek_table_says(change: str) -> None:
    stream, contents = _stored([1000])
    length, size = len(contents[0]), len(stream)
    blocks = raw_frame_blocks(_pread(stream), 0, length + (change == "length"),
                              size + (change == "size"))
    assert blocks is None
