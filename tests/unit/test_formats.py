"""The pure core: real Ollama manifest bytes, strict JSON, the root document, blob order, tar
headers."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from bundler.archive import ArchiveReader, ArchiveWriter, member_header
from bundler.digest import Digest
from bundler.errors import IntegrityError
from bundler.layout import BlobRef, Model, Root, plan_contents
from bundler.oci import Manifest, load_json
from bundler.reference import ModelName
from bundler.store import Store, StoreLocation, locate
from tests.support.common import run

DATA = Path(__file__).resolve().parents[1] / "data"
LLAMA_ID = "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"


def test_llama32_manifest_id_and_size() -> None:
    """The real manifest (a public llama3.2 manifest) hashes to the `ollama list` ID."""
    raw = (DATA / "llama3.2-latest.manifest").read_bytes()
    manifest = Manifest.parse(raw, "llama3.2")
    assert str(manifest.digest) == f"sha256:{LLAMA_ID}"
    assert manifest.digest.short == "a80c4f17acd5"
    assert manifest.total_size == 2019393189
    assert str(manifest.config.digest) == "sha256:" + Digest.of(
        (DATA / "llama3.2-latest.config").read_bytes()).hex
    assert [d.media_type.rsplit(".", 1)[-1] for d in manifest.layers] == [
        "model", "template", "license", "license", "params"]


def test_llama32_in_a_store(tmp_path: Path, env: dict[str, str]) -> None:
    """Read from a store as Ollama lays it out; missing weights are named, exit 3."""
    root = tmp_path / "models"
    path = root / "manifests/registry.ollama.ai/library/llama3.2/latest"
    path.parent.mkdir(parents=True)
    path.write_bytes((DATA / "llama3.2-latest.manifest").read_bytes())
    (root / "blobs").mkdir()
    config = (DATA / "llama3.2-latest.config").read_bytes()
    # the pre-0.1.30 blob spelling is read too
    (root / "blobs" / f"sha256:{Digest.of(config).hex}").write_bytes(config)
    store = Store(StoreLocation(root, "test"))
    assert store.names() == [ModelName.parse("llama3.2")]
    model = store.read_model(ModelName.parse("llama3.2"))
    assert model.manifest.digest.hex == LLAMA_ID
    assert store.has_blob(model.manifest.config.digest, 561)
    r = run(["export", "llama3.2", "--models", str(root), "--unsigned", "-o",
             str(tmp_path / "o.tar.zst")])
    assert r.exit_code == 3
    assert "dde5aa3fc5ff" in r.stderr and "llama3.2:latest" in r.stderr


@pytest.mark.parametrize("raw", [
    b'{"a":1,"a":2}', b'{"a":NaN}', b'{"a":1.5}', b"\xff\xfe{}", b"[" * 10_000, b"[]",
    b'\xef\xbb\xbf{"a":1}', b'{"a":Infinity}', b"", b'{"a":"\xc3"}',
])
def test_strict_json_refuses(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        load_json(raw, "doc")


def test_root_round_trip_and_rules() -> None:
    d = Digest.of(b"x")
    root = Root("2026-01-01T00:00:00Z", "ollama-bundle", "0.1.0", BlobRef(d, 1), (BlobRef(d, 1),))
    raw = root.to_bytes()
    assert raw.endswith(b"}\n") and b" " not in raw
    assert Root.parse(raw) == root
    with pytest.raises(IntegrityError, match="twice"):
        Root.parse(raw.replace(b'"blobs":[', b'"blobs":[{"digest":"%s","size":1},' % str(d).encode()))
    with pytest.raises(IntegrityError, match="mediaType"):
        Root.parse(raw.replace(b"root.v1", b"root.v2"))
    with pytest.raises(IntegrityError, match="digest"):
        Root.parse(raw.replace(d.hex.encode(), d.hex.upper().encode()))


def _model(name: str, layers: list[bytes], config: bytes = b"{}") -> Model:
    def desc(mt: str, data: bytes) -> str:
        return f'{{"mediaType":"{mt}","digest":"{Digest.of(data)}","size":{len(data)}}}'
    raw = ('{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
           f'"config":{desc("application/vnd.docker.container.image.v1+json", config)},'
           f'"layers":[{",".join(desc("application/vnd.ollama.image.model", x) for x in layers)}]}}')
    return Model(ModelName.parse(name), Manifest.parse(raw.encode(), name))


def test_blob_order_and_sharing() -> None:
    """formats/bundle-v1.md §4.2: manifests, then configs, then layers; each digest once."""
    b = _model("b:1", [b"W", b"T2"])
    a = _model("a:1", [b"W", b"T1"])
    same = _model("a:2", [b"W", b"T1"])
    contents = plan_contents([b, a, same])
    assert [str(m.name) for m in contents.models] == [
        "registry.ollama.ai/library/a:1", "registry.ollama.ai/library/a:2",
        "registry.ollama.ai/library/b:1"]
    expected = [a.manifest.digest, b.manifest.digest, Digest.of(b"{}"), Digest.of(b"W"),
                Digest.of(b"T1"), Digest.of(b"T2")]
    assert [r.digest for r in contents.blobs] == expected
    with pytest.raises(IntegrityError, match="letter case"):
        plan_contents([a, _model("A:1", [b"W"])])


def test_member_headers_are_deterministic_and_pax_above_8gib() -> None:
    name = "blobs/sha256/" + "a" * 64
    small = member_header(name, 100)
    assert len(small) == 512 and small == member_header(name, 100)
    big = member_header(name, 9 * 1024**3)
    assert len(big) == 1536 and b"size=9663676416\n" in big
    # GNU tar's reader agrees (via Python's tarfile): name, size, mode, owner, mtime
    info = tarfile.TarInfo.frombuf(small, "utf-8", "strict")
    assert (info.name, info.size, info.mode, info.uid, info.mtime, info.uname) == (
        name, 100, 0o644, 0, 0, "")


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=5),
       st.integers(min_value=1, max_value=4000))
def test_archive_round_trip_any_sizes(bodies: list[bytes], split: int) -> None:
    """Members of any size survive writer -> reader, whatever the write chunking."""
    out = io.BytesIO()
    w = ArchiveWriter(out)
    w.write_small([("head", b"h")], level=3)
    for i, body in enumerate(bodies):
        w.write_stream(f"m{i}", len(body), [body[j:j + split] for j in range(0, len(body), split)],
                       level=(None, -1, 3)[i % 3])
    w.close()
    with ArchiveReader(io.BytesIO(out.getvalue())) as r:
        m = r.next_member()
        assert m is not None and m.name == "head" and r.read_body() == b"h"
        for i, body in enumerate(bodies):
            m = r.next_member()
            assert m is not None and (m.name, m.size) == (f"m{i}", len(body))
            assert r.read_body() == body
        assert r.next_member() is None
    # and it is an ordinary zstd-compressed tar
    plain = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(out.getvalue()), read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        assert tar.getnames() == ["head", *(f"m{i}" for i in range(len(bodies)))]


def test_locate_store() -> None:
    home = Path("/home/u")
    assert locate(Path("/x"), {"OLLAMA_MODELS": "/y"}, home).path == Path("/x")
    assert locate(None, {"OLLAMA_MODELS": " '/y' "}, home).path == Path("/y")
    assert locate(None, {"OLLAMA_MODELS": "  "}, home).path == home / ".ollama" / "models"
    assert locate(None, {}, home).source == "default"


@pytest.mark.parametrize("size", [0, 1, 128 * 1024 - 512, 128 * 1024, 300_001])
def test_stored_members_are_raw_zstd_blocks_that_zstd_reads(tmp_path: Path, size: int) -> None:
    """formats/bundle-v1.md §7: weights are stored as raw blocks; stock zstd and tar agree."""
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path = tmp_path / "b.tar.zst"
    with path.open("wb") as f:
        w = ArchiveWriter(f)
        w.write_stream("blob", size, [body[:1000], body[1000:]], level=None)
        w.close()
    assert len(path.read_bytes()) > size  # stored, not compressed
    subprocess.run(["zstd", "-q", "-t", str(path)], check=True)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(path), "-C", str(out)], check=True)
    assert (out / "blob").read_bytes() == body
