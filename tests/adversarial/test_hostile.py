"""Hostile archives: bundles crafted to escape the target, to confuse the tar or JSON parser,
or to exhaust memory. Each is refused with exit 3 by `verify` and `import`; nothing is written
inside or outside the target (formats/bundle-v1.md §3, §4, §5, §6, §7, §9).

Documents (root.json, index.json, manifests) are edited and then re-signed with the trusted
key, so that what refuses them is the parser, not the signature. The edits come from the
catalogue tests/support/hostile.py, which scripts/make-hostile-corpus writes tests/corpus/ from.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bundler import signing
from bundler.archive import ArchiveReader
from bundler.layout import signature_member
from tests.support.common import CONFIG_V1, run, tree
from tests.support.hostile import (
    GNU_LONG,
    HOSTILE_FRAMES,
    HUGE_SIZES,
    INDEX_ATTACKS,
    INDEX_RAW_ATTACKS,
    MANIFEST_ATTACKS,
    MANIFEST_RAW_ATTACKS,
    NEGATIVE_SIZES,
    PAX_CASES,
    RENAMES,
    ROOT_ATTACKS,
    SPECIAL_TYPES,
    GiB,
    huge_size,
    manifest_bomb,
    with_member,
)
from tests.support.scene import INDEX, ROOT, Bundle, Scene, run_measured
from tests.support.tar import (
    BLOCK,
    blob_name,
    build,
    pax_header,
    pax_record,
    raw_header,
    regular,
    sha256_hex,
)
from tests.support.zstd import compress, frames, zero_bomb, zstd_zeros


def position(b: Bundle, where: str) -> int:
    return {
        "first": 0,
        "after-index": b.first_blob,
        "between-blobs": b.first_blob + 4,
        "after-last-blob": len(b.members),
    }[where]


# ---------------------------------------------------------------------------------------------
# Member names


NAMES = ["../evil", "/abs/evil", "blobs/sha256/../../evil", "./index.json", "/tmp/evil",
         "ollama-bundle/../../evil"]


@pytest.mark.parametrize("where", ["first", "after-index", "between-blobs", "after-last-blob"])
@pytest.mark.parametrize("name", NAMES)
def test_hostile_name_inserted(scene: Scene, name: str, where: str) -> None:
    b = scene.bundle()
    evil = regular(name, b"#!/bin/sh\necho owned\n", mode=0o755)
    scene.refused(scene.write_tar(with_member(b, position(b, where), evil, replace=False)))


@pytest.mark.parametrize("kind", ["index.json", "template", "last"])
@pytest.mark.parametrize("rename", list(RENAMES))
def test_member_renamed(scene: Scene, rename: str, kind: str) -> None:
    """The member where it belongs, its name spelled another way that `tar -x` might
    resolve to the same file."""
    b = scene.bundle()
    i = b.kind(kind)
    b.members[i] = b.members[i].copy(name=RENAMES[rename][0](b.members[i].name))
    scene.refused(scene.write_tar(b.tar()))


# ---------------------------------------------------------------------------------------------
# Member types


LINK_TARGETS = ["/etc/passwd", "../../outside.txt", "previous-blob"]


@pytest.mark.parametrize("placement", ["replacing", "before"])
@pytest.mark.parametrize("link_to", LINK_TARGETS)
@pytest.mark.parametrize("kind", ["index.json", "template", "last"])
@pytest.mark.parametrize("type_", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
def test_link_member(scene: Scene, type_: bytes, kind: str, link_to: str,
                     placement: str) -> None:
    """A link named like a member: in its place, or just before it (the write-through-a-link
    attack)."""
    b = scene.bundle()
    i = b.kind(kind)
    target = b.members[i - 1].name if link_to == "previous-blob" else link_to
    link = regular(b.members[i].name, b"", type=type_, linkname=target)
    scene.refused(scene.write_tar(with_member(b, i, link, replace=placement == "replacing")))


@pytest.mark.parametrize("kind", ["index.json", "template"])
@pytest.mark.parametrize("special", list(SPECIAL_TYPES))
def test_special_member_in_place_of_a_file(scene: Scene, special: str, kind: str) -> None:
    """The member keeps its name and body; only its type changes."""
    b = scene.bundle()
    i = b.kind(kind)
    type_, fields, _ = SPECIAL_TYPES[special]
    b.members[i] = b.members[i].copy(type=type_, **fields)
    scene.refused(scene.write_tar(b.tar()))


@pytest.mark.parametrize("name", ["blobs", "blobs/sha256", "blobs/sha256/", "ollama-bundle",
                                  "ollama-bundle/signatures/"])
def test_directory_member(scene: Scene, name: str) -> None:
    b = scene.bundle()
    d = regular(name, b"", type=tarfile.DIRTYPE, mode=0o755)
    pos = b.first_blob if name.startswith("blobs") else 1
    scene.refused(scene.write_tar(with_member(b, pos, d, replace=False)))


def test_old_style_directory_named_like_a_blob(scene: Scene) -> None:
    """Type '\\0' with a trailing slash is a directory to tar (V7)."""
    b = scene.bundle()
    i = b.kind("template")
    b.members[i] = b.members[i].copy(type=tarfile.AREGTYPE, name=b.members[i].name + "/")
    scene.refused(scene.write_tar(b.tar()))


def test_old_style_regular_file_type(scene: Scene) -> None:
    """Type '\\0' (a regular file to every tar) where the writer puts '0': the header is not
    the writer's (§3, "Headers are canonical")."""
    b = scene.bundle()
    i = b.kind("template")
    b.members[i] = b.members[i].copy(type=tarfile.AREGTYPE)
    scene.refused(scene.write_tar(b.tar()))


# ---------------------------------------------------------------------------------------------
# Sizes


SIZED_KINDS = ["root", "signature", "oci-layout", "index.json", "manifest", "template", "last"]


@pytest.mark.parametrize("encoding", list(HUGE_SIZES))
@pytest.mark.parametrize("kind", SIZED_KINDS)
def test_huge_size_in_header(scene: Scene, kind: str, encoding: str) -> None:
    """A header claiming 1 TiB (or 8 GiB - 1) where a small member belongs: refused on the
    header, before reading the body (so not as a truncated file)."""
    b = scene.bundle()
    i = b.kind(kind)
    stderr = scene.refused(scene.write_tar(with_member(b, i, *huge_size(b.members[i], encoding),
                                                       replace=True)))
    assert "ends early" not in stderr and "truncated" not in stderr


@pytest.mark.parametrize("size", list(NEGATIVE_SIZES))
@pytest.mark.parametrize("kind", ["root", "index.json", "template", "last"])
def test_negative_size_in_header(scene: Scene, kind: str, size: str) -> None:
    b = scene.bundle()
    i = b.kind(kind)
    m = b.members[i]
    raw = raw_header(m.name, NEGATIVE_SIZES[size][0]) + m.data + bytes(-len(m.data) % BLOCK)
    scene.refused(scene.write_tar(with_member(b, i, raw, replace=True)))


@pytest.mark.parametrize("size", list(NEGATIVE_SIZES))
def test_negative_size_signature_member(scene: Scene, size: str) -> None:
    """An extra signature member whose header size is negative: not a valid tar header."""
    b = scene.bundle()
    raw = raw_header(signature_member("f" * 64), NEGATIVE_SIZES[size][0])
    pos = 1 + len(b.signature_positions)
    scene.refused(scene.write_tar(with_member(b, pos, raw, replace=False)))


@pytest.mark.parametrize("kind", ["template", "last"])
def test_header_size_differs_from_root(scene: Scene, kind: str) -> None:
    """The header says one byte less than the root; the body is still all there."""
    b = scene.bundle()
    i = b.kind(kind)
    b.members[i] = b.members[i].copy(size=len(b.members[i].data) - 1)
    scene.refused(scene.write_tar(b.tar()))


def test_oversized_signature_member(scene: Scene) -> None:
    b = scene.bundle()
    i = b.kind("signature")
    b.members[i] = b.members[i].copy(data=b.members[i].data + b"=" * 4096)
    scene.refused(scene.write_tar(b.tar()))


def test_too_many_signature_members(scene: Scene) -> None:
    """65 members (64 is the limit), each a real signature by a throwaway key."""
    b = scene.bundle()
    root = b.member(ROOT).data
    sigs = [b.members[b.kind("signature")]]
    for _ in range(64):
        key = signing.generate()
        sigs.append(regular(signature_member(key.public.keyid), signing.sign(key, root)))
    sigs.sort(key=lambda m: m.name)
    b.members[1:2] = sigs
    scene.refused(scene.write_tar(b.tar()))


@pytest.mark.parametrize("order", ["reversed", "repeated"])
def test_signature_members_out_of_order(scene: Scene, order: str) -> None:
    b = scene.bundle()
    good = b.members[b.kind("signature")]
    key = signing.generate()
    other = regular(signature_member(key.public.keyid), signing.sign(key, b.member(ROOT).data))
    pair = sorted([good, other], key=lambda m: m.name)
    sigs = pair[::-1] if order == "reversed" else [good, good.copy()]
    b.members[1:2] = sigs
    scene.refused(scene.write_tar(b.tar()))


# ---------------------------------------------------------------------------------------------
# PAX and GNU extensions


@pytest.mark.parametrize("case", list(PAX_CASES))
def test_pax_header(scene: Scene, case: str) -> None:
    b = scene.bundle()
    kind, records, _ = PAX_CASES[case]
    i = b.kind(kind)
    header = pax_header(*records(len(b.members[i].data)))
    scene.refused(scene.write_tar(with_member(b, i, header, replace=False)))


def test_two_pax_headers_in_a_row(scene: Scene) -> None:
    b = scene.bundle()
    i = b.kind("template")
    size = str(len(b.members[i].data))
    headers = [pax_header(pax_record("size", size)), pax_header(pax_record("size", size))]
    scene.refused(scene.write_tar(with_member(b, i, *headers, replace=False)))


@pytest.mark.parametrize("where", ["after-last-blob", "after-index"])
def test_pax_header_with_no_member_after_it(scene: Scene, where: str) -> None:
    """A PAX `size` header followed by the end-of-archive marker (or by the next PAX-less
    header) belongs to no member."""
    b = scene.bundle()
    pax = pax_header(pax_record("size", "0"))
    if where == "after-last-blob":
        tar = build([*b.members, pax])
    else:
        i = b.first_blob
        pax = pax_header(pax_record("size", str(len(b.members[i].data))))
        tar = build([*b.members[:i], pax, pax, *b.members[i:]])
    scene.refused(scene.write_tar(tar))


def test_pax_header_of_global_type_before_root(scene: Scene) -> None:
    b = scene.bundle()
    g = pax_header(pax_record("path", "../evil"), type_=tarfile.XGLTYPE,
                   name="pax_global_header")
    scene.refused(scene.write_tar(with_member(b, 0, g, replace=False)))


def test_pax_size_header_before_a_small_member(scene: Scene) -> None:
    """A well-formed PAX `size` header where the writer puts none (members under 8 GiB): the
    header blocks are not the writer's (§3, "Headers are canonical")."""
    b = scene.bundle()
    i = b.kind("template")
    pax = pax_header(pax_record("size", str(len(b.members[i].data))))
    scene.refused(scene.write_tar(with_member(b, i, pax, replace=False)))


def test_pax_size_header_written_by_tarfile_before_a_small_member(scene: Scene) -> None:
    """The same, as Python's tarfile writes it for a member forced to carry one."""
    b = scene.bundle()
    i = b.kind("last")
    m = b.members[i]
    info = tarfile.TarInfo(m.name)
    info.size, info.mode = len(m.data), 0o644
    info.pax_headers = {"size": str(len(m.data))}
    raw = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict") + m.data + bytes(
        -len(m.data) % BLOCK)
    assert raw[156:157] == tarfile.XHDTYPE
    scene.refused(scene.write_tar(with_member(b, i, raw, replace=True)))


@pytest.mark.parametrize("size", [8 * GiB, 8 * GiB - 1 + 2**40])
def test_pax_size_header_of_a_big_member_is_accepted(size: int) -> None:
    """Control at the archive layer (a CLI test would need an 8 GiB blob): the header blocks
    Python's tarfile writes for a member of 8 GiB or more, a PAX `size` header and a ustar
    header (§3.1), are read as that member."""
    name = "blobs/sha256/" + "ab" * 32
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    headers = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
    assert headers[156:157] == tarfile.XHDTYPE
    with ArchiveReader(io.BytesIO(compress(headers + bytes(BLOCK)))) as reader:
        m = reader.next_member()
    assert m is not None
    assert (m.name, m.size) == (name, size)
    assert m.is_canonical


@pytest.mark.parametrize("case", list(GNU_LONG))
def test_gnu_long_name(scene: Scene, case: str) -> None:
    b = scene.bundle()
    i = b.kind("index.json")
    type_, name, _ = GNU_LONG[case]
    long = regular("././@LongLink", name.encode() + b"\0", type=type_)
    scene.refused(scene.write_tar(with_member(b, i, long, replace=False)))


def test_gnu_long_name_written_by_tarfile(scene: Scene) -> None:
    """A member with a 150-byte name, as tarfile's GNU format writes it (an 'L' member first),
    inserted between blobs."""
    b = scene.bundle()
    m = regular("blobs/sha256/" + "a" * 137, b"x", fmt=tarfile.GNU_FORMAT)
    assert m.encode()[156:157] == tarfile.GNUTYPE_LONGNAME
    scene.refused(scene.write_tar(with_member(b, position(b, "between-blobs"), m,
                                              replace=False)))


def test_pax_path_written_by_tarfile(scene: Scene) -> None:
    """A member whose long name tarfile puts in a PAX `path` record."""
    b = scene.bundle()
    m = regular("blobs/sha256/" + "b" * 137, b"x", fmt=tarfile.PAX_FORMAT)
    scene.refused(scene.write_tar(with_member(b, position(b, "between-blobs"), m,
                                              replace=False)))


# ---------------------------------------------------------------------------------------------
# Members the root does not list, blobs listed twice


def test_unlisted_blob_between_blobs(scene: Scene) -> None:
    b = scene.bundle()
    data = b"a perfectly named blob"
    extra = regular(blob_name(data), data)
    scene.refused(scene.write_tar(with_member(b, position(b, "between-blobs"), extra,
                                              replace=False)))


def test_root_lists_a_blob_twice(scene: Scene) -> None:
    b = scene.bundle()
    root = b.root
    root["blobs"].append(root["blobs"][-1])
    b.members.append(b.members[-1].copy())
    b.set_root_obj(root, sign_with=scene.private_key)
    scene.refused(scene.write_tar(b.tar()))


def test_root_lists_a_blob_no_manifest_names(scene: Scene) -> None:
    b = scene.bundle()
    data = b"nobody's blob"
    root = b.root
    root["blobs"].append({"digest": f"sha256:{sha256_hex(data)}", "size": len(data)})
    b.members.append(regular(blob_name(data), data))
    b.set_root_obj(root, sign_with=scene.private_key)
    scene.refused(scene.write_tar(b.tar()))


# ---------------------------------------------------------------------------------------------
# JSON documents, re-signed with the trusted key


@pytest.mark.parametrize("attack", list(ROOT_ATTACKS))
def test_root_document(scene: Scene, attack: str) -> None:
    b = scene.bundle()
    raw = b.member(ROOT).data
    edited = ROOT_ATTACKS[attack][0](raw)
    assert edited != raw
    b.set_root(edited, sign_with=scene.private_key)
    scene.refused(scene.write_tar(b.tar()))


def test_root_document_resigned_unchanged_is_accepted(scene: Scene) -> None:
    """Control: re-signing alone (no edit) keeps the bundle valid."""
    b = scene.bundle()
    b.set_root(b.member(ROOT).data, sign_with=scene.private_key)
    scene.accepted(scene.write_tar(b.tar()))


@pytest.mark.parametrize("attack", list(INDEX_ATTACKS))
def test_index_document(scene: Scene, attack: str) -> None:
    b = scene.bundle()
    index = b.index
    INDEX_ATTACKS[attack][0](index)
    raw = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    b.set_index(raw, sign_with=scene.private_key)
    scene.refused(scene.write_tar(b.tar()))


@pytest.mark.parametrize("attack", list(INDEX_RAW_ATTACKS))
def test_index_document_bytes(scene: Scene, attack: str) -> None:
    b = scene.bundle()
    raw = b.member(INDEX).data
    b.set_index(INDEX_RAW_ATTACKS[attack][0](raw), sign_with=scene.private_key)
    scene.refused(scene.write_tar(b.tar()))


@pytest.mark.parametrize("attack", list(MANIFEST_ATTACKS))
def test_manifest_document(scene: Scene, attack: str) -> None:
    b = scene.bundle()
    i = b.kind("manifest")
    manifest = json.loads(b.members[i].data)
    MANIFEST_ATTACKS[attack][0](manifest)
    b.rewrite_manifest(i, json.dumps(manifest, separators=(",", ":")).encode(),
                       sign_with=scene.private_key)
    scene.refused(scene.write_tar(b.tar()))


@pytest.mark.parametrize("attack", list(MANIFEST_RAW_ATTACKS))
def test_manifest_document_bytes(scene: Scene, attack: str) -> None:
    b = scene.bundle()
    i = b.kind("manifest")
    b.rewrite_manifest(i, MANIFEST_RAW_ATTACKS[attack][0](b.members[i].data),
                       sign_with=scene.private_key)
    scene.refused(scene.write_tar(b.tar()))


def _manifests_in(store: Path) -> Iterator[Path]:
    for p in sorted((store / "manifests").rglob("*")):
        if p.is_file() and len(p.relative_to(store / "manifests").parts) == 4:
            yield p


def test_manifest_naming_another_manifest_as_its_config(scene: Scene) -> None:
    """A (signed) bundle in which one model's config is another model's manifest blob: the
    import may refuse it, or complete it, but never leave a manifest without its blobs
    (formats/ollama-store.md §4)."""
    b = scene.bundle()
    first = b.members[b.first_blob]
    i = b.first_blob + 1
    manifest = json.loads(b.members[i].data)
    manifest["config"] = {"mediaType": CONFIG_V1, "digest": f"sha256:{sha256_hex(first.data)}",
                          "size": len(first.data)}
    b.rewrite_manifest(i, json.dumps(manifest, separators=(",", ":")).encode(),
                       sign_with=scene.private_key)
    path = scene.write_tar(b.tar())
    before = tree(scene.target)
    r = run(scene.import_args(path), scene.env)
    assert "Traceback" not in r.output
    if r.exit_code != 0:
        assert r.exit_code == 3, r.output
        assert tree(scene.target) == before
        return
    missing = []
    for p in _manifests_in(scene.target):
        m = json.loads(p.read_bytes())
        for d in [m["config"], *m["layers"]]:
            blob = scene.target / "blobs" / f"sha256-{d['digest'][7:]}"
            if not blob.is_file() or blob.stat().st_size != d["size"]:
                missing.append((str(p.relative_to(scene.target)), d["digest"]))
    assert not missing, f"import succeeded but left manifests without blobs: {missing}"


# ---------------------------------------------------------------------------------------------
# Decompression bombs and hostile zstd frames


@pytest.fixture(scope="module")
def zstd_2gib_of_zeros() -> bytes:
    """2 GiB of zeros as libzstd compresses them (about 64 KiB; made once)."""
    return zstd_zeros(2 * GiB)


def _frames_replaced(data: bytes, index: int, new: bytes) -> bytes:
    start, end = frames(data)[index]
    return data[:start] + new + data[end:]


BOMBS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "rle-2GiB-after-end": lambda data, z: data + zero_bomb(2 * GiB),
    "rle-2GiB-undeclared-after-end": lambda data, z: data + zero_bomb(2 * GiB,
                                                                      declare_size=False),
    "libzstd-2GiB-after-end": lambda data, z: data + z,
    "rle-2GiB-instead-of-last-blob": lambda data, z: _frames_replaced(data, -2,
                                                                      zero_bomb(2 * GiB)),
    "libzstd-2GiB-instead-of-last-blob": lambda data, z: _frames_replaced(data, -2, z),
    "rle-2GiB-instead-of-all-blobs": lambda data, z: (data[: frames(data)[0][1]]
                                                      + zero_bomb(2 * GiB)),
    "rle-2GiB-instead-of-everything": lambda data, z: zero_bomb(2 * GiB),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_decompression_bomb(scene: Scene, bomb: str, zstd_2gib_of_zeros: bytes) -> None:
    data = scene.bundle_file.read_bytes()
    crafted = BOMBS[bomb](data, zstd_2gib_of_zeros)
    assert len(crafted) < len(data) + 256 * 1024
    scene.refused(scene.write(crafted))


@pytest.mark.parametrize("bomb", ["rle-2GiB-after-end", "libzstd-2GiB-instead-of-last-blob"])
def test_decompression_bomb_memory_stays_flat(scene: Scene, bomb: str,
                                              zstd_2gib_of_zeros: bytes) -> None:
    """In a real process: exit 3, and the peak RSS far below the bomb's size."""
    data = scene.bundle_file.read_bytes()
    path = scene.write(BOMBS[bomb](data, zstd_2gib_of_zeros))
    before = scene.snapshot()
    for args in (scene.verify_args(path), scene.import_args(path)):
        m = run_measured(args, scene.env)
        assert m.returncode == 3, m.stderr
        assert "Traceback" not in m.stderr
        assert m.maxrss_bytes < 256 * 1024 * 1024, m.maxrss_bytes
    after = scene.snapshot()
    assert (after.target, after.around, after.outside) == (before.target, before.around,
                                                           before.outside)


def test_manifest_bomb_memory_stays_flat(scene: Scene) -> None:
    """A small unsigned file whose head declares 100 manifests of 4 MiB each: `ls`, `diff`
    and `export --base` read heads without requiring trust, and refuse it (exit 3) before
    holding them, in a real process whose peak RSS stays far below what they add up to."""
    path = scene.write(manifest_bomb(scene.bundle(), 100, 4 * 1024 * 1024))
    assert path.stat().st_size < 256 * 1024
    out = scene.tmp / "delta.tar.zst"
    for args in (["ls", str(path)], ["diff", str(path), str(scene.bundle_file)],
                 ["export", "--all", "--models", str(scene.tmp / "store"), "--base", str(path),
                  "--key", str(scene.keys.key), "-o", str(out)]):
        m = run_measured(args, scene.env)
        assert m.returncode == 3, m.stderr
        assert "Traceback" not in m.stderr
        assert "manifests" in m.stderr, m.stderr
        assert m.maxrss_bytes < 256 * 1024 * 1024, (args[0], m.maxrss_bytes)
    assert not out.exists()


@pytest.mark.parametrize("frame", list(HOSTILE_FRAMES))
@pytest.mark.parametrize("where", ["after-end", "instead-of-last-blob"])
def test_hostile_zstd_frame(scene: Scene, frame: str, where: str) -> None:
    data = scene.bundle_file.read_bytes()
    new = HOSTILE_FRAMES[frame][0]
    crafted = data + new if where == "after-end" else _frames_replaced(data, -2, new)
    scene.refused(scene.write(crafted))


def test_bundle_compressed_with_a_window_over_the_limit(scene: Scene) -> None:
    """A genuine bundle recompressed with a 256 MiB window (`zstd --long=28`): readers MUST
    limit the window to 128 MiB (§7)."""
    import zstandard

    tar = scene.bundle().tar()
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=28)
    obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = obj.compress(tar) + obj.flush()
    assert zstandard.get_frame_parameters(data).window_size == 2**28
    scene.refused(scene.write(data))


def test_crafted_rle_frames_are_valid_zstd() -> None:
    """The hand-made frames decode with libzstd to what they claim."""
    import zstandard

    d = zstandard.ZstdDecompressor()
    assert d.decompress(zero_bomb(300_000)) == bytes(300_000)
    reader = d.stream_reader(zero_bomb(300_000, declare_size=False))
    assert reader.read() == bytes(300_000)
    assert compress(b"x") != b""
    assert zstandard.get_frame_parameters(zero_bomb(2 * GiB)).content_size == 2 * GiB


# ---------------------------------------------------------------------------------------------
# What `bundle ls` prints comes from the bundle


def test_ls_of_a_root_with_a_lone_surrogate(scene: Scene) -> None:
    """`ls` reads the head without requiring trust and prints the tool name: a JSON escape
    for a lone surrogate there must not crash it (one clean line, exit 0 or 3)."""
    b = scene.bundle()
    raw = b.member(ROOT).data.replace(b'"name":"ollama-bundle"', b'"name":"\\ud800"')
    b.set_root(raw, sign_with=scene.private_key)
    path = scene.write_tar(b.tar())
    r = run(["ls", str(path), "--trust", str(scene.keys.pub)], scene.env)
    assert "Traceback" not in r.output
    assert r.exit_code in (0, 3), r.output
