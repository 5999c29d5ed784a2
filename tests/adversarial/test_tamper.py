"""A tampered bundle is refused (exit 3) by `verify` and by `import`, and the import writes
nothing: not into the target store, not beside it (formats/bundle-v1.md §9,
formats/ollama-store.md §4, formats/signature-v1.md §4).

Every case goes through `Scene.refused` (tests/support/scene.py): both commands, the exit code,
one clean `error:` line, and before/after listings of the target store (files, modes,
mtimes, digests), of everything else under tmp_path, and of a few paths outside it.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bundler import cosign, signing
from bundler.layout import signature_member
from tests.support.common import Keys, make_keys, run, tree
from tests.support.hostile import HEADER_EDITS, TRAILING_RAW, TRAILING_TAR, skippable
from tests.support.scene import INDEX, ROOT, Scene
from tests.support.tar import EOA, blob_name, build, edit_header, flip, regular, sha256_hex, split
from tests.support.zstd import compress, decompress, frames

KINDS = ["root", "signature", "cosign", "oci-layout", "index.json", "manifest", "config", "template",
         "weights", "last"]


@pytest.fixture
def other(tmp_path: Path) -> Keys:
    """A second key pair, never trusted."""
    return make_keys(tmp_path / "keys2", "other")


# ---------------------------------------------------------------------------------------------
# Controls: the crafting itself does not make a bundle fail


def test_untouched_bundle_imports(scene: Scene, store: Path) -> None:
    before = tree(scene.target)
    scene.accepted(scene.bundle_file)
    after = tree(scene.target)
    for path in ("registry.ollama.ai/library/tiny/latest", "registry.ollama.ai/library/tiny/chat",
                 "hf.co/org/repo/Q4_K_M"):
        raw = (store / "manifests" / path).read_bytes()
        assert (scene.target / "manifests" / path).read_bytes() == raw
        manifest = json.loads(raw)
        for d in [manifest["config"], *manifest["layers"]]:
            blob = scene.target / "blobs" / f"sha256-{d['digest'][7:]}"
            assert blob.stat().st_size == d["size"]
    # the model the bundle lacks is kept, the one it replaces is replaced
    other = "manifests/registry.ollama.ai/library/other/latest"
    assert after[other] == before[other]
    assert after["manifests/registry.ollama.ai/library/tiny/latest"] != \
        before["manifests/registry.ollama.ai/library/tiny/latest"]
    assert not [p for p in after if ".partial" in p or ".bundle-" in p]


def test_rebuilt_and_recompressed_bundle_imports(scene: Scene) -> None:
    """Splitting and rebuilding gives the writer's exact tar; one big frame at another level
    is still a bundle (§7)."""
    tar = decompress(scene.bundle_file.read_bytes())
    b = scene.bundle()
    assert b.tar() == tar
    assert [m.name for m in b.members][:5] == [
        ROOT, signature_member(scene.keys.keyid), cosign.member(scene.keys.keyid), "oci-layout",
        INDEX]
    scene.accepted(scene.write(compress(tar, level=7)))


def test_writer_framing_is_as_the_crafting_assumes(scene: Scene) -> None:
    """One frame for the head, one per blob (below 1 GiB), one for the end-of-archive blocks,
    then the seek table: a skippable frame listing every frame's sizes (§7, §7.1)."""
    data = scene.bundle_file.read_bytes()
    b = scene.bundle()
    spans = frames(data)
    assert len(spans) == 1 + (len(b.members) - b.first_blob) + 1 + 1
    start, end = spans[-2]
    assert decompress(data[start:end]) == EOA
    start, end = spans[-1]
    table = data[start:end]
    assert table[:4] == (0x184D2A5E).to_bytes(4, "little")
    assert int.from_bytes(table[4:8], "little") == len(table) - 8
    assert table[-4:] == (0x8F92EAB1).to_bytes(4, "little") and table[-5] == 0
    count = int.from_bytes(table[-9:-5], "little")
    assert count == len(spans) - 1
    rows = [(int.from_bytes(table[8 + 8 * i : 12 + 8 * i], "little"),
             int.from_bytes(table[12 + 8 * i : 16 + 8 * i], "little")) for i in range(count)]
    assert rows == [(e - s, len(decompress(data[s:e]))) for s, e in spans[:-1]]


# ---------------------------------------------------------------------------------------------
# One byte changed inside a member (sizes kept)


@pytest.mark.parametrize("mask", [0x01, 0xFF], ids=["bit", "byte"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", KINDS)
def test_flipped_byte_in_member(scene: Scene, kind: str, where: str, mask: int) -> None:
    b = scene.bundle()
    m = b.members[b.kind(kind)]
    offset = {"first": 0, "middle": len(m.data) // 2, "last": len(m.data) - 1}[where]
    m.data = flip(m.data, offset, mask)
    scene.refused(scene.write_tar(b.tar()))


def test_weights_are_the_biggest_and_params_the_last_blob(scene: Scene) -> None:
    """The two 'last byte' cases above are the last byte of the archive's data and of the
    biggest layer, streamed after other blobs were staged."""
    b = scene.bundle()
    assert b.kind("weights") not in (b.first_blob, b.kind("last"))
    assert len(b.members[b.kind("weights")].data) >= 300_000


# ---------------------------------------------------------------------------------------------
# One byte changed in the compressed file


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75, 0.9])
def test_flipped_byte_in_compressed_file(scene: Scene, fraction: float) -> None:
    data = scene.bundle_file.read_bytes()
    scene.refused(scene.write(flip(data, int(len(data) * fraction))))


@pytest.mark.parametrize("offset", range(16))
def test_flipped_byte_in_first_frame(scene: Scene, offset: int) -> None:
    data = scene.bundle_file.read_bytes()
    scene.refused(scene.write(flip(data, offset)))


@pytest.mark.parametrize("offset", range(-1, -33, -1))
def test_flipped_byte_at_the_end(scene: Scene, offset: int) -> None:
    """The last 32 bytes before the seek table: the whole end-of-archive frame (magic, header,
    block, checksum) and the tail of the last blob's frame."""
    data = scene.bundle_file.read_bytes()
    end = frames(data)[-1][0]
    scene.refused(scene.write(flip(data, end + offset)))


@pytest.mark.parametrize("where", [0, 4, 8, 12, -16, -12, -9, -5, -1])
def test_flipped_byte_in_the_seek_table(scene: Scene, where: int) -> None:
    """The seek table is not signed (§7.1). Reading everything (verify) notices any change to
    it. An import that reads only what it writes may not, and then must write exactly what a
    clean import writes: every byte it takes is verified by digest."""
    data = scene.bundle_file.read_bytes()
    start, end = frames(data)[-1]
    path = scene.write(flip(data, (start if where >= 0 else end) + where))
    r = run(scene.verify_args(path), scene.env)
    assert r.exit_code == 3, r.output
    clean = scene.tmp / "clean"
    shutil.copytree(scene.target, clean)
    assert run(["import", str(scene.bundle_file), "--models", str(clean), "--trust",
                str(scene.keys.pub)], scene.env).exit_code == 0
    r = run(scene.import_args(path), scene.env)
    assert r.exit_code in (0, 3), r.output
    assert "Traceback" not in r.output
    if r.exit_code == 0:
        assert tree(scene.target) == tree(clean)


# ---------------------------------------------------------------------------------------------
# Truncation


TRUNCATE: dict[str, Callable[[int], int]] = {
    "empty": lambda n: 0,
    "1-byte": lambda n: 1,
    "10%": lambda n: n // 10,
    "50%": lambda n: n // 2,
    "99%": lambda n: n * 99 // 100,
    "minus-4-bytes": lambda n: n - 4,
    "minus-1-byte": lambda n: n - 1,
}


@pytest.mark.parametrize("point", list(TRUNCATE))
def test_truncated_compressed_file(scene: Scene, point: str) -> None:
    data = scene.bundle_file.read_bytes()
    scene.refused(scene.write(data[: TRUNCATE[point](len(data))]))


@pytest.mark.parametrize("point", ["50%", "minus-1-byte", "whole-frames"])
def test_ls_of_a_truncated_file_says_it_is_truncated(scene: Scene, point: str) -> None:
    """`ls` reads only the head; a file cut short (its seek table gone with its end) is still
    not listed as if it were whole: exit 3, saying so. The intact file lists (control)."""
    data = scene.bundle_file.read_bytes()
    cut = (frames(data)[-2][0] if point == "whole-frames"  # the end-of-archive frame and on
           else TRUNCATE[point](len(data)))
    r = run(["ls", str(scene.write(data[:cut])), "--trust", str(scene.keys.pub)], scene.env)
    assert r.exit_code == 3, r.output
    assert "truncated" in r.stderr, r.stderr
    assert "Traceback" not in r.output
    assert run(["ls", str(scene.bundle_file)], scene.env).exit_code == 0


@pytest.mark.parametrize("frame", [-2, -3, 1])
def test_compressed_file_cut_at_a_frame_boundary(scene: Scene, frame: int) -> None:
    """Whole frames missing: the end-of-archive frame, the last blob's, or all but the head."""
    data = scene.bundle_file.read_bytes()
    start, _ = frames(data)[frame]
    scene.refused(scene.write(data[:start]))


def test_without_its_seek_table_a_bundle_is_still_a_bundle(scene: Scene) -> None:
    """Control: the seek table only speeds readers up (§7.1); a zstd frame after it is not
    allowed, and a table that does not describe the frames is refused."""
    data = scene.bundle_file.read_bytes()
    spans = frames(data)
    scene.accepted(scene.write(data[: spans[-1][0]]))
    eoa_start, eoa_end = spans[-2]
    scene.refused(scene.write(data + data[eoa_start:eoa_end]))
    wrong = bytearray(data)
    wrong[spans[-1][0] + 8] ^= 1  # the first frame's compressed size
    assert "seek table" in scene.refused(scene.write(bytes(wrong)))


@pytest.mark.parametrize("point", ["before-end-of-archive", "after-first-zero-block",
                                   "inside-last-blob", "after-index", "inside-a-header"])
def test_truncated_tar(scene: Scene, point: str) -> None:
    tar = decompress(scene.bundle_file.read_bytes())
    b = scene.bundle()
    head = len(build(b.members[: b.first_blob], end=b""))
    cut = {
        "before-end-of-archive": len(tar) - 1024,
        "after-first-zero-block": len(tar) - 512,
        "inside-last-blob": len(tar) - 1024 - 512 + 10,
        "after-index": head,
        "inside-a-header": head + 100,
    }[point]
    scene.refused(scene.write_tar(tar[:cut]))


# ---------------------------------------------------------------------------------------------
# Members dropped, reordered, repeated


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_member(scene: Scene, kind: str) -> None:
    b = scene.bundle()
    del b.members[b.kind(kind)]
    scene.refused(scene.write_tar(b.tar()))


SWAPS = [("root", "signature"), ("signature", "oci-layout"), ("oci-layout", "index.json"),
         ("index.json", "manifest"), ("manifest", "manifest2"), ("config", "template"),
         ("weights", "last"), ("manifest", "last")]


@pytest.mark.parametrize(("a", "z"), SWAPS, ids=[f"{a}-{z}" for a, z in SWAPS])
def test_swapped_members(scene: Scene, a: str, z: str) -> None:
    b = scene.bundle()
    i, j = b.kind(a), b.kind(z)
    b.members[i], b.members[j] = b.members[j], b.members[i]
    scene.refused(scene.write_tar(b.tar()))


@pytest.mark.parametrize("kind", KINDS)
def test_duplicated_member(scene: Scene, kind: str) -> None:
    b = scene.bundle()
    i = b.kind(kind)
    b.members.insert(i + 1, b.members[i].copy())
    scene.refused(scene.write_tar(b.tar()))


# ---------------------------------------------------------------------------------------------
# Signatures


def test_signature_of_an_untrusted_key(scene: Scene, other: Keys) -> None:
    """The signature replaced by another key's valid signature over the same root."""
    b = scene.bundle()
    key = signing.read_private(other.key, None)
    b.members[b.kind("signature")] = regular(signature_member(other.keyid),
                                             signing.sign(key, b.member(ROOT).data))
    stderr = scene.refused(scene.write_tar(b.tar()))
    assert other.keyid[:16] in stderr
    assert "none of which you trust" in stderr


@pytest.mark.parametrize("as_id", ["other-key", "zeros", "fs"])
def test_trusted_signature_under_another_key_id(scene: Scene, other: Keys, as_id: str) -> None:
    """The trusted key's own signature, its member renamed to another key id. The root fixes
    no signature member, so this is a byte change only the reader can catch (§4.1: "No byte
    of a bundle can change without a reader noticing"): the member's name must be the id of
    the key that verified it."""
    b = scene.bundle()
    keyid = {"other-key": other.keyid, "zeros": "0" * 64, "fs": "f" * 64}[as_id]
    i = b.kind("signature")
    b.members[i] = b.members[i].copy(name=signature_member(keyid))
    scene.refused(scene.write_tar(b.tar()))


GARBAGE: dict[str, Callable[[signing.PrivateKey, bytes], bytes]] = {
    "random-base64": lambda k, root: base64.b64encode(bytes(range(70))),
    "empty": lambda k, root: b"",
    "not-base64": lambda k, root: b"this is !! not base64 ~~",
    "base64-with-newline": lambda k, root: signing.sign(k, root) + b"\n",
    "urlsafe-base64": lambda k, root: base64.urlsafe_b64encode(
        base64.b64decode(signing.sign(k, root))).replace(b"=", b""),
    "signature-over-other-bytes": lambda k, root: signing.sign(k, root + b" "),
    "der-truncated": lambda k, root: base64.b64encode(
        base64.b64decode(signing.sign(k, root))[:-1]),
}


@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_garbage_in_the_trusted_signature_member(scene: Scene, garbage: str) -> None:
    b = scene.bundle()
    i = b.kind("signature")
    b.members[i].data = GARBAGE[garbage](scene.private_key, b.member(ROOT).data)
    scene.refused(scene.write_tar(b.tar()))


@pytest.mark.parametrize("garbage", ["random-base64", "empty", "not-base64", "der-truncated"])
@pytest.mark.parametrize("keyid", ["0" * 64, "f" * 64], ids=["before", "after"])
def test_malformed_extra_signature_member(scene: Scene, keyid: str, garbage: str) -> None:
    """Beside the valid trusted signature, a member that is not base64 or not DER: "A
    malformed signature member (not base64, not DER) is an integrity error" (signature-v1.md
    §4.1), wherever it sorts."""
    b = scene.bundle()
    sig = regular(signature_member(keyid),
                  GARBAGE[garbage](scene.private_key, b.member(ROOT).data))
    b.members.insert(1 if keyid < scene.keys.keyid else 2, sig)
    scene.refused(scene.write_tar(b.tar()))


def test_trusted_signature_garbled_beside_a_copy_under_another_id(scene: Scene) -> None:
    """The member named by the trusted key id does not verify with that key: an integrity
    error (signature-v1.md §4.1), even though a copy of the good signature sorts first."""
    b = scene.bundle()
    i = b.kind("signature")
    good = b.members[i].data
    b.members[i].data = base64.b64encode(bytes(70))
    b.members.insert(i, regular(signature_member("0" * 64), good))
    scene.refused(scene.write_tar(b.tar()))


def _der_int(n: int, *, pad: bool = False) -> bytes:
    body = n.to_bytes((n.bit_length() + 8) // 8, "big")  # a leading zero when the top bit is set
    if pad:
        body = b"\x00" + body
    return b"\x02" + bytes([len(body)]) + body


def _der(r: int, s: int, *, long_length: bool = False, pad_r: bool = False) -> bytes:
    content = _der_int(r, pad=pad_r) + _der_int(s)
    length = bytes([0x81, len(content)]) if long_length else bytes([len(content)])
    return b"\x30" + length + content


def _r_s(sig_b64: bytes) -> tuple[int, int]:
    der = base64.b64decode(sig_b64)
    assert der[0] == 0x30 and der[1] == len(der) - 2
    rest = der[2:]
    values = []
    for _ in range(2):
        assert rest[0] == 0x02
        n = rest[1]
        values.append(int.from_bytes(rest[2 : 2 + n], "big"))
        rest = rest[2 + n :]
    assert not rest
    return values[0], values[1]


NON_CANONICAL_DER = {
    "long-form-length": {"long_length": True},
    "zero-padded-integer": {"pad_r": True},
}


@pytest.mark.parametrize("variant", list(NON_CANONICAL_DER))
def test_trusted_signature_in_non_canonical_der(scene: Scene, variant: str) -> None:
    """The trusted key's own signature (same r and s), re-encoded in a DER that is not the
    canonical one (signature-v1.md §4.1: "standard base64 of a canonical DER")."""
    b = scene.bundle()
    i = b.kind("signature")
    r, s = _r_s(b.members[i].data)
    assert base64.b64encode(_der(r, s)) == b.members[i].data
    b.members[i].data = base64.b64encode(_der(r, s, **NON_CANONICAL_DER[variant]))
    scene.refused(scene.write_tar(b.tar()))


def test_trusted_signature_in_non_canonical_base64(scene: Scene) -> None:
    """The trusted key's own signature with the unused low bits of its last base64 character
    set: it decodes to the same DER (RFC 4648 §3.5), so only a canonical-encoding check sees
    the changed byte (bundle-v1.md §4.1). The root is re-signed until its DER signature's
    length is not a multiple of 3, so that its base64 has pad bits."""
    b = scene.bundle()
    key = scene.private_key
    root = b.root
    for second in range(60):
        root["created"] = f"2026-01-01T00:00:{second:02d}Z"
        b.set_root_obj(root, sign_with=key)
        sig = b.members[b.kind("signature")].data
        if sig.endswith(b"="):
            break
    else:
        raise AssertionError("no signature with base64 padding in 60 tries")
    scene.accepted(scene.write_tar(b.tar(), "canonical.tar.zst"))
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    data = sig.rstrip(b"=")
    last = alphabet.index(data[-1:])
    unused = 0b1111 if sig.endswith(b"==") else 0b11
    assert last & unused == 0
    changed = data[:-1] + alphabet[last | unused : (last | unused) + 1] + sig[len(data):]
    assert base64.b64decode(changed) == base64.b64decode(sig) and changed != sig
    b.members[b.kind("signature")].data = changed
    scene.refused(scene.write_tar(b.tar()))


def test_verify_with_another_trusted_key(scene: Scene, other: Keys) -> None:
    stderr = scene.refused(scene.bundle_file, trust=other.pub)
    assert scene.keys.keyid[:16] in stderr


def test_two_signers_one_trusted_is_accepted(scene: Scene, store: Path, other: Keys,
                                             tmp_path: Path) -> None:
    """Control: a co-signer the reader does not trust does not make a bundle fail."""
    out = tmp_path / "two.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(scene.keys.key),
             "--key", str(other.key), "-o", str(out)], scene.env)
    assert r.exit_code == 0, r.output
    scene.accepted(out)


def test_unsigned_bundle(scene: Scene, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "unsigned.tar.zst"
    r = run(["export", "--all", "--unsigned", "--models", str(store), "-o", str(out)],
            scene.env)
    assert r.exit_code == 0, r.output
    stderr = scene.refused(out)
    assert "not signed" in stderr
    scene.accepted(out, "--allow-unsigned")
    assert (scene.target / "manifests/hf.co/org/repo/Q4_K_M").read_bytes() == \
        (store / "manifests/hf.co/org/repo/Q4_K_M").read_bytes()


def test_signed_bundle_with_signature_dropped_is_unsigned(scene: Scene) -> None:
    b = scene.bundle()
    del b.members[b.kind("signature")]
    assert "not signed" in scene.refused(scene.write_tar(b.tar()))


# ---------------------------------------------------------------------------------------------
# The root edited, the old signature kept


ROOT_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "created": lambda r: r.update(created="2030-01-01T00:00:00Z"),
    "tool-version": lambda r: r["tool"].update(version="9.9.9"),
    "blob-size": lambda r: r["blobs"][-1].update(size=r["blobs"][-1]["size"] + 1),
    "blob-dropped": lambda r: r["blobs"].pop(),
    "unknown-member": lambda r: r.update(extra="ignored by readers, not by signatures"),
}


@pytest.mark.parametrize("edit", list(ROOT_EDITS))
def test_root_edited_keeping_the_old_signature(scene: Scene, edit: str) -> None:
    b = scene.bundle()
    root = b.root
    ROOT_EDITS[edit](root)
    b.set_root_obj(root, sign_with=None)
    scene.refused(scene.write_tar(b.tar()))


def test_layer_replaced_consistently_keeping_the_old_signature(scene: Scene) -> None:
    """A template swapped and every document that names it rewritten to match: only the
    signature tells."""
    b = scene.bundle()
    old = b.members[b.kind("template")].data
    b.replace_blob(old, b"{{ .Evil }}", sign_with=None)
    scene.refused(scene.write_tar(b.tar()))


def test_layer_replaced_consistently_and_resigned_is_accepted(scene: Scene) -> None:
    """Control for the case above: the same rewrite, signed by the trusted key, imports."""
    b = scene.bundle()
    old = b.members[b.kind("template")].data
    b.replace_blob(old, b"{{ .Evil }}", sign_with=scene.private_key)
    scene.accepted(scene.write_tar(b.tar()))
    assert (scene.target / "blobs" / f"sha256-{sha256_hex(b'{{ .Evil }}')}").exists()


# ---------------------------------------------------------------------------------------------
# Data after the last blob


@pytest.mark.parametrize("name", ["blob", "text"])
def test_extra_member_after_the_last_blob(scene: Scene, name: str) -> None:
    b = scene.bundle()
    data = b"an extra member"
    b.members.append(regular(blob_name(data) if name == "blob" else "extra.txt", data))
    scene.refused(scene.write_tar(b.tar()))


@pytest.mark.parametrize("tail", list(TRAILING_TAR))
def test_trailing_bytes_after_end_of_archive(scene: Scene, tail: str) -> None:
    b = scene.bundle()
    scene.refused(scene.write_tar(b.tar(end=EOA + TRAILING_TAR[tail][0])))


@pytest.mark.parametrize("tail", list(TRAILING_RAW))
def test_trailing_bytes_after_zstd_stream(scene: Scene, tail: str) -> None:
    data = scene.bundle_file.read_bytes()
    scene.refused(scene.write(data + TRAILING_RAW[tail][0]))


@pytest.mark.parametrize("magic", [0x184D2A50, 0x184D2A5F])
def test_skippable_frame_after_the_stream_is_accepted(scene: Scene, magic: int) -> None:
    """Control: a complete skippable frame is part of a valid zstd stream (§7)."""
    data = scene.bundle_file.read_bytes()
    scene.accepted(scene.write(data + skippable(b"user data", magic) + skippable(b"", magic)))


def test_trailing_zeros_within_the_limit_are_accepted(scene: Scene) -> None:
    """Control: tar's own record padding (zeros after the marker) is not tampering (§3)."""
    b = scene.bundle()
    scene.accepted(scene.write_tar(b.tar(end=EOA + bytes(10240 - 1024))))


def test_split_is_exact_for_every_member(scene: Scene) -> None:
    """The crafting helpers see every member the writer wrote, bodies intact."""
    tar = decompress(scene.bundle_file.read_bytes())
    members = split(tar)
    root = json.loads(members[0].data)
    blobs = [m for m in members if m.name.startswith("blobs/")]
    assert [m.name for m in blobs] == [f"blobs/sha256/{x['digest'][7:]}" for x in root["blobs"]]
    assert all(m.name == blob_name(m.data) for m in blobs)


# ---------------------------------------------------------------------------------------------
# Bytes of the tar encoding itself: headers and padding. §4.1: "The member headers carry
# nothing a reader uses beyond name and size [...] No byte of a bundle can change without a
# reader noticing." §3: headers are deterministic and bodies padded with zero bytes.


@pytest.mark.parametrize("edit", list(HEADER_EDITS))
def test_header_field_changed(scene: Scene, edit: str) -> None:
    """A header field the reader does not use, changed in the last blob's header, the header
    checksum made right."""
    b = scene.bundle()
    i = b.kind("last")
    raw = edit_header(b.members[i], HEADER_EDITS[edit][0])
    assert raw != b.members[i].encode()
    scene.refused(scene.write_tar(build([*b.members[:i], raw, *b.members[i + 1 :]])))


@pytest.mark.parametrize("field", [("name", 5), ("mode", 102), ("size", 130), ("mtime", 140),
                                   ("checksum", 150), ("type", 156), ("magic", 258),
                                   ("uname", 270), ("unused-tail", 505)],
                         ids=lambda f: f[0])
def test_header_byte_flipped(scene: Scene, field: tuple[str, int]) -> None:
    """A header byte flipped without fixing the checksum."""
    b = scene.bundle()
    i = b.kind("template")
    raw = b.members[i].encode()
    raw = flip(raw, field[1], 0x01)
    scene.refused(scene.write_tar(build([*b.members[:i], raw, *b.members[i + 1 :]])))


@pytest.mark.parametrize("kind", ["root", "index.json", "last"])
def test_non_zero_padding(scene: Scene, kind: str) -> None:
    b = scene.bundle()
    i = b.kind(kind)
    n = -len(b.members[i].data) % 512
    assert n > 0
    b.members[i] = b.members[i].copy(pad=bytes(n - 1) + b"\x01")
    scene.refused(scene.write_tar(b.tar()))
