"""Property-based fuzzing (hypothesis) of every parser we own: the root document, index.json
and manifests, registry signature documents, inventories, model names, the zstd frame walker
and seek table, and the tar member reader behind a real bundle's head. For any input the
result is a value or a clean error of ours (IntegrityError, or the name's UsageError), never
another exception. CI runs a few thousand examples; `scripts/fuzz` runs many more."""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bundler import cosign, signing
from bundler.archive import member_spans
from bundler.digest import Digest
from bundler.errors import BundlerError, IntegrityError, UsageError
from bundler.inventory import Inventory
from bundler.layout import Root
from bundler.oci import Index, Manifest
from bundler.reader import BundleReader
from bundler.reference import ModelName
from bundler.zstdframes import FrameWalker, parse_seek_table, seek_table
from tests.support.zstd import compress, decompress

# CI: 250 examples per property (a few thousand in all); scripts/fuzz sets many more
settings.register_profile("fuzz", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          max_examples=int(os.environ.get("BUNDLE_FUZZ_EXAMPLES", "250")))
settings.load_profile("fuzz")

HEX = "0123456789abcdef"
digests = st.one_of(
    st.text(HEX, min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.text(max_size=80),
    st.integers(),
    st.none(),
)
sizes = st.one_of(st.integers(-5, 2**64), st.floats(allow_nan=True), st.booleans(),
                  st.text(max_size=5))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)


def descriptor(media: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"mediaType": media, "digest": digests, "size": sizes},
        optional={"annotations": st.dictionaries(st.text(max_size=40), st.text(max_size=60),
                                                 max_size=2)})


def as_bytes(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def clean(parse: Any, raw: bytes) -> None:
    """`parse(raw)` returns, or raises IntegrityError; nothing else."""
    with contextlib.suppress(IntegrityError):
        parse(raw)


ROOT_MEDIA = st.sampled_from(["application/vnd.ollama-bundle.root.v1+json", "x"])
roots = st.fixed_dictionaries({
    "mediaType": ROOT_MEDIA,
    "created": st.one_of(st.just("2026-11-27T08:00:00Z"), st.text(max_size=25)),
    "tool": st.one_of(st.fixed_dictionaries({"name": st.text(max_size=5),
                                             "version": st.text(max_size=5)}), json_values),
    "index": st.one_of(st.fixed_dictionaries({"digest": digests, "size": sizes}), json_values),
    "blobs": st.lists(st.fixed_dictionaries({"digest": digests, "size": sizes}), max_size=5),
}, optional={
    "cosign": st.lists(st.fixed_dictionaries({"keyid": st.text(HEX + "g", max_size=70),
                                              "digest": digests, "size": sizes}), max_size=3),
    "parts": st.lists(st.fixed_dictionaries({"digest": digests, "size": sizes}), max_size=3),
    "bases": st.lists(json_values, max_size=2),
    "external": st.lists(st.fixed_dictionaries({"digest": digests, "size": sizes,
                                                "base": sizes}), max_size=3),
})


@given(roots)
def test_root_documents(obj: dict[str, Any]) -> None:
    clean(Root.parse, as_bytes(obj))


@given(st.binary(max_size=300))
def test_root_bytes(raw: bytes) -> None:
    clean(Root.parse, raw)


MANIFEST_MEDIA = st.sampled_from(["application/vnd.docker.distribution.manifest.v2+json",
                                  "application/vnd.oci.image.manifest.v1+json", "x"])


@given(st.fixed_dictionaries({
    "schemaVersion": st.one_of(st.just(2), sizes), "mediaType": MANIFEST_MEDIA,
    "config": descriptor(st.text(max_size=30)),
    "layers": st.lists(descriptor(st.text(max_size=40)), max_size=4)}))
def test_manifests(obj: dict[str, Any]) -> None:
    clean(lambda raw: Manifest.parse(raw, "manifest"), as_bytes(obj))


@given(st.fixed_dictionaries({
    "schemaVersion": st.one_of(st.just(2), sizes),
    "mediaType": st.sampled_from(["application/vnd.oci.image.index.v1+json", "y"]),
    "manifests": st.lists(descriptor(MANIFEST_MEDIA), max_size=4)}))
def test_indexes(obj: dict[str, Any]) -> None:
    clean(Index.parse, as_bytes(obj))


@given(st.binary(max_size=200))
def test_json_bytes_for_every_document(raw: bytes) -> None:
    clean(lambda r: Manifest.parse(r, "m"), raw)
    clean(Index.parse, raw)
    clean(lambda r: Inventory.parse(r, "inv"), raw)
    clean(lambda r: cosign.Document.parse(r, "0" * 64, []), raw)


@given(st.fixed_dictionaries({
    "mediaType": st.sampled_from([cosign.MEDIA_TYPE_DOCUMENT, "z"]),
    "signatures": st.lists(st.fixed_dictionaries({
        "manifest": digests, "reference": st.text(max_size=40),
        "signature": st.text(max_size=100)}), max_size=3)}))
def test_cosign_documents(obj: dict[str, Any]) -> None:
    subject = cosign.Subject("registry.ollama.ai/library/tiny", Digest("0" * 64))
    clean(lambda raw: cosign.Document.parse(raw, "a" * 64, [subject]), as_bytes(obj))


@given(st.fixed_dictionaries({
    "mediaType": st.sampled_from(["application/vnd.ollama-bundle.inventory.v1+json", "w"]),
    "created": st.text(max_size=22), "source": json_values,
    "models": st.lists(st.fixed_dictionaries({"name": st.text(max_size=30), "digest": digests,
                                              "size": sizes}), max_size=3),
    "blobs": st.lists(st.fixed_dictionaries({"digest": digests, "size": sizes}), max_size=3)}))
def test_inventories(obj: dict[str, Any]) -> None:
    clean(lambda raw: Inventory.parse(raw, "inv"), as_bytes(obj))


@given(st.one_of(st.text(max_size=120),
                 st.text("abcXYZ019_.-:/@", max_size=60)))
def test_model_names(text: str) -> None:
    try:
        name = ModelName.parse(text)
    except UsageError:
        return
    assert ModelName.parse(str(name)) == name  # a parsed name survives its own spelling


@given(st.binary(max_size=400))
def test_frame_walker_on_any_bytes(data: bytes) -> None:
    walker = FrameWalker()
    with contextlib.suppress(IntegrityError):
        walker.feed(data)
        walker.finish()


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                max_size=8), st.binary(max_size=40), st.integers(0, 2**40))
def test_seek_tables(rows: list[tuple[int, int]], noise: bytes, total: int) -> None:
    table = seek_table(rows)
    assert parse_seek_table(noise + table, sum(c for c, _ in rows) + len(table)) == rows
    got = parse_seek_table(noise, total)  # any bytes: a table only if it adds up to `total`
    if got is not None:
        assert sum(c for c, _ in got) + 8 + 8 * len(got) + 9 == total
    head = sum(d for _, d in rows[:noise[0] % 3]) if noise else 0  # 0-2 head frames
    spans = member_spans(rows, [(f"blobs/sha256/{i:064x}", n % 5000)
                                for i, (n, _) in enumerate(rows[:3])], head)
    assert spans is None or all(rows[0][0] <= s <= e for s, e in spans.values())


@pytest.fixture(scope="module")
def head_tar(tmp_path_factory: pytest.TempPathFactory,
             ) -> tuple[bytes, int, signing.PublicKey]:
    """A real bundle's decompressed bytes, where its first config/layer member starts, and
    the key that signed it."""
    from tests.support.common import make_keys, run, small_store

    tmp = tmp_path_factory.mktemp("fuzz")
    store = small_store(tmp / "store")
    keys = make_keys(tmp)
    out = tmp / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(out)]).exit_code == 0
    tar = decompress(out.read_bytes())
    with out.open("rb") as f, BundleReader(f) as reader:
        head = reader.read_head([], allow_unsigned=True, enforce_trust=False)
    manifest_bytes = sum(b.size for b in head.root.blobs[: head.manifest_count])
    return tar, len(head.root.raw) + manifest_bytes, signing.read_public(keys.pub)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1,
                max_size=4))
def test_tar_member_reader_on_a_mutated_head(
        head_tar: tuple[bytes, int, signing.PublicKey], flips: list[tuple[int, int]]) -> None:
    """Bytes of a real bundle's head (headers, root, signatures, index, manifests) changed:
    reading the head gives a clean error: every byte there is signed, named by a digest or
    must be canonical."""
    tar, head_end, key = head_tar
    data = bytearray(tar)
    span = min(len(data), head_end + 4096)
    for offset, mask in flips:
        data[offset % span] ^= mask
    assume(data != tar)  # two flips of the same byte can cancel out
    try:
        with BundleReader(io.BytesIO(compress(bytes(data)))) as reader:
            reader.read_head([key], allow_unsigned=False)
    except BundlerError as e:
        assert isinstance(e, IntegrityError | UsageError), e
    else:
        raise AssertionError("a changed head was accepted")


def test_the_real_bundle_reads(head_tar: tuple[bytes, int, signing.PublicKey]) -> None:
    """Control for the test above: the unchanged bytes read."""
    tar, _, key = head_tar
    with BundleReader(io.BytesIO(compress(tar))) as reader:
        head = reader.read_head([key], allow_unsigned=False)
    assert len(head.models) == 3 and head.signatures.trusted == (key.keyid,)


def test_profile_is_loaded() -> None:
    assert settings().max_examples == int(os.environ.get("BUNDLE_FUZZ_EXAMPLES", "250"))
