"""The byte ranges `bundle serve` reads (formats/serve-v1.md §3): `BundleReader.ranges()` gives
each blob's bytes by range through the seek table, for stored and compressed frames, members of
one frame and of many, single files and split parts; what it reads is exactly the blob."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from bundler import archive, signing
from bundler.distribution import FileSpan
from bundler.reader import BundleReader, open_bundle
from tests.support.common import MODEL, TEMPLATE, Keys, make_model, run, weights


def _read(member: archive.MemberBytes, first: int, last: int, *, raw_spans: bool) -> bytes:
    out = bytearray()
    for piece in member.pieces(first, last, raw_spans=raw_spans):
        if isinstance(piece, FileSpan):
            data = bytearray()
            while len(data) < piece.length:
                data += os.pread(piece.fd, piece.length - len(data),
                                               piece.offset + len(data))
            out += data
        else:
            out += piece
    return bytes(out)


@pytest.mark.parametrize(("level", "frame_max", "split"), [
    (None, None, None), ("3", None, None), (None, 100_000, None), ("1", 100_000, None),
    (None, 100_000, "64KiB"),
])
def test_every_range_is_the_blobs_bytes(tmp_path: Path, keys: Keys, env: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch, level: str | None,
                                        frame_max: int | None, split: str | None) -> None:
    store = tmp_path / "s"
    blobs = {"weights": weights(700_000, seed=3), "text": b"{{ .Prompt }} " * 30_000}
    make_model(store, "registry.ollama.ai/library/m/latest",
               [(MODEL, blobs["weights"]), (TEMPLATE, blobs["text"])])
    if frame_max is not None:  # members of many frames, without a GiB of test data
        monkeypatch.setattr(archive, "FRAME_MAX", frame_max)
    out = tmp_path / "b.tar.zst"
    args = ["export", "--all", "--models", str(store), "--key", str(keys.key), "-o", str(out)]
    args += ["--level", level] if level else []
    args += ["--split", split] if split else []
    r = run(args)
    assert r.exit_code == 0, r.output
    path = Path(f"{out}.001") if split else out
    rng = random.Random(7)
    with open_bundle(path) as f, BundleReader(f) as reader:
        head = reader.read_head([signing.read_public(keys.pub)], allow_unsigned=False)
        ranges = reader.ranges()
        assert ranges is not None
        by_digest = {hashlib.sha256(b).hexdigest(): b for b in blobs.values()}
        for ref in head.layer_blobs:
            member = ranges[ref.digest]
            assert member.header_ok()
            data = by_digest.get(ref.digest.hex)
            if data is None:  # the config
                continue
            if frame_max is not None:
                assert len(member._frames) > 3
            if level is None and data is blobs["weights"]:  # stored frames: sendfile's spans
                pieces = list(member.pieces(0, len(data) - 1))
                file_spans = sum(isinstance(p, FileSpan) for p in pieces)
                assert len(pieces) > 2 and file_spans == len(pieces), pieces[:3]
            spans = [(0, len(data) - 1), (0, 0), (len(data) - 1, len(data) - 1)]
            spans += [(a, min(len(data) - 1, a + rng.randrange(1, 300_000)))
                      for a in (rng.randrange(len(data)) for _ in range(12))]
            for first, last in spans:
                for raw_spans in (True, False):
                    assert _read(member, first, last, raw_spans=raw_spans) == \
                        data[first : last + 1], (first, last, raw_spans)


def test_a_byte_changed_in_a_stored_frame_reads_changed(tmp_path: Path, keys: Keys,
                                                        env: dict[str, str]) -> None:
    """Ranges are not verified one by one: a byte changed inside a stored frame comes out
    changed, at full length, so that the whole-blob digest check of formats/serve-v1.md §4,
    which reads the same way, is what catches it."""
    store = tmp_path / "s"
    w = weights(400_000, seed=9)
    make_model(store, "registry.ollama.ai/library/m/latest", [(MODEL, w)])
    out = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(out)]).exit_code == 0
    data = bytearray(out.read_bytes())
    at = data.find(w[200_000:200_064])
    data[at] ^= 1
    out.write_bytes(bytes(data))
    digest = hashlib.sha256(w).hexdigest()
    with open_bundle(out) as f, BundleReader(f) as reader:
        head = reader.read_head([signing.read_public(keys.pub)], allow_unsigned=False)
        ranges = reader.ranges()
        assert ranges is not None
        member = next(ranges[r.digest] for r in head.layer_blobs if r.digest.hex == digest)
        got = _read(member, 0, len(w) - 1, raw_spans=False)
        assert len(got) == len(w) and got != w
        assert hashlib.sha256(got).hexdigest() != digest
