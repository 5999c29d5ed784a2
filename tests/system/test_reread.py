"""Reading a blob again from the bundle file (for retried uploads): the frame map the reader
builds while it walks the zstd frames, and what a re-read verifies."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import BinaryIO

import pytest

from bundler import push, signing
from bundler.distribution import Target
from bundler.errors import IntegrityError
from bundler.reader import BundleReader
from bundler.registry import client as reg
from bundler.registry.transport import Transport
from tests.support.common import MODEL, Keys, make_model, run, weights
from tests.support.servers import Registry, _get
from tests.support.zstd import compress, decompress, frames


def _rereads(src: BinaryIO, trusted: list[signing.PublicKey]) -> dict[str, bytes | None]:
    """For each blob: its bytes read again from 1/3 of the way on (None if not possible),
    checked against what the stream gave."""
    out: dict[str, bytes | None] = {}
    with BundleReader(src) as reader:
        reader.read_head(trusted, allow_unsigned=False)
        for ref, body in reader.blobs():
            streamed = b"".join(bytes(v) for v in body)
            again = reader.reread()
            if again is None:
                out[str(ref.digest)] = None
                continue
            skip = ref.size // 3
            out[str(ref.digest)] = b"".join(bytes(v) for v in again(skip))
            assert out[str(ref.digest)] == streamed[skip:]
            assert hashlib.sha256(streamed).hexdigest() == ref.digest.hex
        reader.finish()
    return out


def test_every_blob_of_an_exported_file_can_be_read_again(bundle_file: Path,
                                                          keys: Keys) -> None:
    trusted = [signing.read_public(keys.pub)]
    with bundle_file.open("rb") as f:
        got = _rereads(f, trusted)
    assert got and all(v is not None for v in got.values())


def test_no_reread_from_a_pipe_or_a_recompressed_file(bundle_file: Path, keys: Keys,
                                                       tmp_path: Path) -> None:
    trusted = [signing.read_public(keys.pub)]
    assert set(_rereads(io.BytesIO(bundle_file.read_bytes()), trusted).values()) == {None}
    one_frame = tmp_path / "one.tar.zst"  # zstd -d | zstd: valid, but no frame per member
    one_frame.write_bytes(compress(decompress(bundle_file.read_bytes())))
    with one_frame.open("rb") as f:
        assert set(_rereads(f, trusted).values()) == {None}


def test_a_reread_verifies_what_it_reads(bundle_file: Path, keys: Keys,
                                         tmp_path: Path) -> None:
    """The file changed under us between the first read and the re-read: refused."""
    copy = tmp_path / "c.tar.zst"
    copy.write_bytes(bundle_file.read_bytes())
    start, end = max(frames(copy.read_bytes()), key=lambda f: f[1] - f[0])  # the weights
    with copy.open("rb") as f, BundleReader(f) as reader:
        reader.read_head([signing.read_public(keys.pub)], allow_unsigned=False)
        for ref, body in reader.blobs():
            for _ in body:
                pass
            if ref.size > 1_000_000:
                with copy.open("r+b") as w:  # a stored frame: one byte of the blob
                    w.seek((start + end) // 2)
                    byte = w.read(1)
                    w.seek((start + end) // 2)
                    w.write(bytes([byte[0] ^ 1]))
                again = reader.reread()
                assert again is not None
                with pytest.raises(IntegrityError, match="does not match its digest"):
                    for _ in again(0):
                        pass
                break


def test_a_corrupt_blob_in_a_file_is_never_committed_by_a_streamed_upload(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = tmp_path / "s"
    make_model(store, "registry.ollama.ai/library/bad/latest", [(MODEL, weights(3_000_000))])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    data = bytearray(bundle.read_bytes())
    start, end = max(frames(bytes(data)), key=lambda f: f[1] - f[0])
    data[(start + end) // 2] ^= 1  # inside the raw blocks of the weights' stored frame
    bundle.write_bytes(data)
    client = reg.Client(Transport(), Target.parse(registry.url + "/bad"), None)
    with bundle.open("rb") as f, pytest.raises(IntegrityError, match="does not match"):
        push.push_bundle(f, client, [signing.read_public(keys.pub)], allow_unsigned=False,
                         chunk_size=64 * 1024)
    manifest = json.loads((store / "manifests/registry.ollama.ai/library/bad/latest").read_text())
    weights_digest = manifest["layers"][0]["digest"]
    assert _get(f"{registry.url}/v2/bad/bad/blobs/{weights_digest}")[0] == 404
    assert _get(f"{registry.url}/v2/bad/bad/manifests/latest")[0] == 404
