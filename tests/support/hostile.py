"""The catalogue of hostile edits to a bundle (formats/threat-model.md T3, T4, T12-T15), one
copy for both users: tests/adversarial/test_hostile.py and test_tamper.py run each on a fresh
bundle of their own, and scripts/make-hostile-corpus writes each, made from its base bundle,
into tests/corpus/.

Each table maps a case's tag to what the edit does and a line saying what it attacks (the
corpus's README and cases.json show that line). Where an edit goes (which member, which
frame) is each user's choice: the tests try more places than the corpus keeps files for.
`SAME_AS` names the few cases the corpus already carries under another name, in another
group, byte for byte: the generator skips them (it refuses two files with the same bytes).
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable
from typing import Any

from tests.support.scene import ROOT, Bundle
from tests.support.tar import (
    BLOCK,
    EOA,
    Member,
    build,
    pax_header,
    pax_record,
    raw_header,
    regular,
    sha256_hex,
)
from tests.support.zstd import compress, rle_block, zstd_frame

GiB = 1 << 30
HUGE = 2**40
EVIL = b"#!/bin/sh\necho owned\n"
REF = "org.opencontainers.image.ref.name"


def with_member(b: Bundle, pos: int, *parts: Member | bytes, replace: bool) -> bytes:
    """The bundle's tar with `parts` at `pos`, replacing the member there or inserted before
    it."""
    after = pos + 1 if replace else pos
    return build([*b.members[:pos], *parts, *b.members[after:]])


def padded(m: Member) -> bytes:
    return m.data + bytes(-len(m.data) % BLOCK)


# ---------------------------------------------------------------------------------------------
# Member names and types

# A member where it belongs, its name spelled another way that `tar -x` might resolve to the
# same file. NAME is the member's own name.
RENAMES: dict[str, tuple[Callable[[str], str], str]] = {
    "dot-slash": (lambda n: f"./{n}", "'./NAME'"),
    "absolute": (lambda n: f"/{n}", "'/NAME'"),
    "parent": (lambda n: f"../{n}", "'../NAME'"),
    "detour": (lambda n: f"x/../{n}", "'x/../NAME'"),
    "double-slash": (lambda n: n.replace("/", "//", 1) if "/" in n else f".//{n}",
                     "a doubled slash"),
    "trailing-slash": (lambda n: f"{n}/", "'NAME/'"),
    "backslashes": (lambda n: n.replace("/", "\\") if "/" in n else f".\\{n}",
                    "backslashes for slashes"),
    "upper-case": (lambda n: n.upper(), "upper case"),
    "to-self": (lambda n: f"blobs/sha256/../../{n}", "'blobs/sha256/../../NAME'"),
}

# A member that keeps its name and body, typed as something other than a regular file.
SPECIAL_TYPES: dict[str, tuple[bytes, dict[str, Any], str]] = {
    "char-device": (tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}, "a character device 1,3"),
    "block-device": (tarfile.BLKTYPE, {"devmajor": 8, "devminor": 0}, "a block device 8,0"),
    "fifo": (tarfile.FIFOTYPE, {}, "a FIFO"),
    "directory": (tarfile.DIRTYPE, {}, "a directory"),
    "contiguous": (tarfile.CONTTYPE, {}, "a contiguous file ('7')"),
    "gnu-sparse": (tarfile.GNUTYPE_SPARSE, {}, "a GNU sparse file ('S')"),
    "gnu-volume-label": (b"V", {}, "a GNU volume label ('V')"),
    "gnu-multivolume": (b"M", {}, "a GNU multi-volume continuation ('M')"),
    "gnu-dumpdir": (b"D", {}, "a GNU dump directory ('D')"),
    "unknown-type": (b"Z", {}, "an unknown type 'Z'"),
    "global-pax": (tarfile.XGLTYPE, {}, "a global PAX header ('g')"),
    "solaris-pax": (tarfile.SOLARIS_XHDTYPE, {}, "a Solaris extended header ('X')"),
}


# ---------------------------------------------------------------------------------------------
# Sizes in headers

HUGE_SIZES: dict[str, str] = {
    "pax": "a PAX header size=2^40",
    "base-256": "a GNU base-256 size field of 2^40",
    "octal-max": "the largest octal size (8 GiB - 1)",
}


def huge_size(m: Member, encoding: str) -> list[Member | bytes]:
    """The member with a header claiming 1 TiB (or 8 GiB - 1), its small body after it."""
    if encoding == "pax":
        return [pax_header(pax_record("size", str(HUGE))), m]
    if encoding == "base-256":
        return [raw_header(m.name, HUGE) + padded(m)]
    if encoding == "octal-max":
        return [raw_header(m.name, 8**11 - 1) + padded(m)]
    raise ValueError(encoding)


NEGATIVE_SIZES: dict[str, tuple[int | bytes, str]] = {
    "base-256-minus-1": (-1, "a base-256 size of -1"),
    "base-256-minus-512": (-512, "a base-256 size of -512"),
    "octal-minus": (b"-0000001000\0", "an octal size field '-0000001000'"),
}


# ---------------------------------------------------------------------------------------------
# PAX and GNU extensions


def odd_length(style: str, n: int) -> bytes:
    """A `size` record whose length prefix has the right value, spelled as no tar spells it
    (POSIX: "%d %s=%s\\n")."""
    payload = b" size=%d\n" % n
    for length in range(10, 100):
        digits = str(length).encode()
        spelled = {"plus": b"+" + digits, "underscore": digits[:1] + b"_" + digits[1:]}[style]
        if len(spelled) + len(payload) == length:
            return spelled + payload
    raise AssertionError(style)


# A PAX header inserted before the member of that kind; its records, given the member's size.
PAX_CASES: dict[str, tuple[str, Callable[[int], list[bytes]], str]] = {
    "length-plus-sign": ("template", lambda n: [odd_length("plus", n)],
                         "a record length spelled '+NN'"),
    "length-underscore": ("template", lambda n: [odd_length("underscore", n)],
                          "a record length spelled 'N_N'"),
    "path-index": ("index.json", lambda n: [pax_record("path", "index.json")],
                   "path=index.json (a name where none is needed)"),
    "path-traversal": ("template", lambda n: [pax_record("path", "../../evil")],
                       "path=../../evil"),
    "path-root": ("root", lambda n: [pax_record("path", ROOT)],
                  "path=ollama-bundle/root.json before the root"),
    "size-and-path": ("template", lambda n: [pax_record("size", str(n)),
                                             pax_record("path", "x")],
                      "size and path=x (renames the member)"),
    "path-and-size": ("template", lambda n: [pax_record("path", "x"),
                                             pax_record("size", str(n))],
                      "path=x and size (renames the member)"),
    "linkpath": ("template", lambda n: [pax_record("linkpath", "/etc/passwd")],
                 "linkpath=/etc/passwd"),
    "mtime": ("template", lambda n: [pax_record("mtime", "1.5")], "mtime=1.5"),
    "uid": ("template", lambda n: [pax_record("uid", "0")], "uid=0"),
    "comment": ("template", lambda n: [pax_record("comment", "hello")], "comment=hello"),
    "gnu-sparse": ("template", lambda n: [pax_record("GNU.sparse.major", "1"),
                                          pax_record("GNU.sparse.minor", "0"),
                                          pax_record("GNU.sparse.realsize", str(HUGE))],
                   "GNU sparse 1.0 records claiming a 1 TiB real size"),
    "gnu-sparse-major": ("template", lambda n: [pax_record("GNU.sparse.major", "1")],
                         "a lone GNU.sparse.major=1 record"),
    "hdrcharset": ("template", lambda n: [pax_record("hdrcharset", "BINARY")],
                   "hdrcharset=BINARY"),
    "size-twice": ("template", lambda n: [pax_record("size", str(n))] * 2,
                   "the size record twice"),
    "size-leading-zero": ("template", lambda n: [pax_record("size", "0" + str(n))],
                          "size with a leading zero"),
    "size-plus-sign": ("template", lambda n: [pax_record("size", "+" + str(n))],
                       "size with a plus sign"),
    "size-underscore": ("template", lambda n: [pax_record("size", "1_0")], "size=1_0"),
    "size-negative": ("template", lambda n: [pax_record("size", "-1")], "size=-1"),
    "size-wrong": ("template", lambda n: [pax_record("size", "1")], "size=1 (wrong)"),
    "size-huge-root": ("root", lambda n: [pax_record("size", str(2**62))],
                       "size=2^62 before the root"),
    "size-huge-index": ("index.json", lambda n: [pax_record("size", str(HUGE))],
                        "size=2^40 before index.json"),
    "size-beyond-2-63": ("template", lambda n: [pax_record("size", str(2**64 + n))],
                         "size=2^64 + the real size"),
    "size-5000-digits": ("template", lambda n: [pax_record("size", "9" * 5000)],
                         "a size of 5000 digits"),
    "size-bad-length": ("template", lambda n: [b"99 size=" + str(n).encode() + b"\n"],
                        "a record whose length prefix is wrong"),
    "size-no-newline": ("template", lambda n: [pax_record("size", str(n))[:-1]],
                        "a record without its newline"),
    "empty": ("template", lambda n: [b""], "no records at all"),
    "over-1-KiB": ("template", lambda n: [pax_record("size", str(n)),
                                          pax_record("comment", "x" * 2000)],
                   "a 2 KB comment record"),
}

# A GNU long-name ('L') or long-link ('K') member before index.json: type, what it names.
GNU_LONG: dict[str, tuple[bytes, str, str]] = {
    "longname-index": (tarfile.GNUTYPE_LONGNAME, "index.json", "'L' naming index.json"),
    "longname-traversal": (tarfile.GNUTYPE_LONGNAME, "../../evil", "'L' naming ../../evil"),
    "longlink": (tarfile.GNUTYPE_LONGLINK, "/etc/passwd", "'K' linking /etc/passwd"),
}


# ---------------------------------------------------------------------------------------------
# JSON documents (re-signed with the trusted key by whoever applies them)


def first_size(raw: bytes, new: bytes) -> bytes:
    return re.sub(rb'"size":\d+', b'"size":' + new, raw, count=1)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# root.json, its bytes edited
ROOT_ATTACKS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "duplicate-key-blobs": (lambda r: b'{"blobs":[],' + r[1:],
                            "a duplicate 'blobs' key, the first one empty"),
    "duplicate-key-size": (lambda r: r.replace(b'"size":', b'"size":0,"size":', 1),
                           "a duplicate 'size' key in a blob entry"),
    "duplicate-key-media-type": (lambda r: r.replace(
        b'"mediaType":', b'"mediaType":"application/vnd.ollama-bundle.root.v0+json",'
        b'"mediaType":', 1), "a duplicate 'mediaType' key"),
    "nan-size": (lambda r: first_size(r, b"NaN"), "size NaN"),
    "infinity-size": (lambda r: first_size(r, b"Infinity"), "size Infinity"),
    "minus-infinity-size": (lambda r: first_size(r, b"-Infinity"), "size -Infinity"),
    "float-size": (lambda r: re.sub(rb'("size":\d+)', rb"\1.0", r, count=1), "size N.0"),
    "exponent-size": (lambda r: re.sub(rb'("size":\d+)', rb"\1e0", r, count=1),
                      "size Ne0"),
    "negative-size": (lambda r: first_size(r, b"-1"), "size -1"),
    "size-2-63": (lambda r: first_size(r, str(2**63).encode()), "size 2^63"),
    "size-2-64": (lambda r: first_size(r, str(2**64).encode()), "size 2^64"),
    "size-5000-digits": (lambda r: first_size(r, b"9" * 5000), "a size of 5000 digits"),
    "bool-size": (lambda r: first_size(r, b"true"), "size true"),
    "string-size": (lambda r: re.sub(rb'"size":(\d+)', rb'"size":"\1"', r, count=1),
                    "size as a string"),
    "null-size": (lambda r: first_size(r, b"null"), "size null"),
    "deep-arrays-65": (lambda r: b'{"x":' + nested(65) + b"," + r[1:],
                       "an unknown member nested 65 arrays deep (the limit is 64)"),
    "deep-objects-65": (lambda r: b'{"x":' + b'{"a":' * 65 + b"1" + b"}" * 65 + b","
                        + r[1:], "an unknown member nested 65 objects deep"),
    "deep-arrays-10000": (lambda r: b'{"x":' + nested(10_000) + b"," + r[1:],
                          "an unknown member nested 10000 arrays deep"),
    "deep-objects-10000": (lambda r: b'{"x":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000
                           + b"," + r[1:], "an unknown member nested 10000 objects deep"),
    "only-brackets-10000": (lambda r: b"[" * 10_000, "10000 '[' and nothing else"),
    "non-utf8": (lambda r: r.replace(b'"ollama-bundle"', b'"ollama-\xffbundle"'),
                 "a 0xFF byte in a string"),
    "overlong-utf8": (lambda r: r.replace(b'"ollama-bundle"', b'"ollama\xc0\xafbundle"'),
                      "an overlong UTF-8 sequence for '/'"),
    "surrogate-utf8": (lambda r: r.replace(b'"ollama-bundle"', b'"ollama\xed\xa0\x80"'),
                       "a surrogate encoded in UTF-8 (ED A0 80)"),
    "lone-surrogate-escape": (lambda r: r.replace(b'"ollama-bundle"', b'"\\ud800"'),
                              "the tool name a lone surrogate escape '\\ud800'"),
    "lone-surrogate-key": (lambda r: b'{"\\udc00":1,' + r[1:],
                           "an unknown key that is a lone surrogate escape"),
    "byte-order-mark": (lambda r: b"\xef\xbb\xbf" + r, "a UTF-8 byte-order mark"),
    "utf-16": (lambda r: r.decode().encode("utf-16"), "UTF-16 with a BOM"),
    "trailing-document": (lambda r: r + b"{}", "a second document after the first"),
    "top-level-array": (lambda r: b"[" + r.rstrip(b"\n") + b"]\n", "an array at the top"),
    "empty": (lambda r: b"", "zero bytes"),
    "media-type-v2": (lambda r: r.replace(b"root.v1+json", b"root.v2+json"),
                      "an unknown media type (v2)"),
    "digest-upper-case": (lambda r: re.sub(
        rb'"sha256:([0-9a-f]{64})"', lambda m: b'"sha256:' + m.group(1).upper() + b'"',
        r, count=1), "a blob digest in upper-case hex"),
    "digest-traversal": (lambda r: re.sub(rb'"sha256:[0-9a-f]{64}"',
                                          b'"sha256:../../../../etc/passwd"', r, count=1),
                         "a blob digest 'sha256:../../../../etc/passwd'"),
    "digest-sha512": (lambda r: re.sub(rb'"sha256:([0-9a-f]{64})"',
                                       lambda m: b'"sha512:' + m.group(1) * 2 + b'"',
                                       r, count=1), "a sha512 digest"),
    "created-with-offset": (lambda r: re.sub(rb'"created":"[^"]*"',
                                             b'"created":"2026-01-01T00:00:00+01:00"', r),
                            "created with a UTC offset"),
    "created-nul": (lambda r: re.sub(rb'"created":"([^"]*)"', rb'"created":"\1\\u0000"', r),
                    "created ending in an escaped NUL"),
    "blobs-not-a-list": (lambda r: b'{"blobs":{},' + r[r.index(b"],") + 2:],
                         "blobs an object"),
    "index-missing": (lambda r: re.sub(rb'"index":\{[^}]*\},', b"", r), "no index"),
}


def _set_name(name: Any) -> Callable[[dict[str, Any]], None]:
    def edit(index: dict[str, Any]) -> None:
        index["manifests"][0]["annotations"][REF] = name
    return edit


def _dup_case(index: dict[str, Any]) -> None:
    d = dict(index["manifests"][-1])
    d["annotations"] = {REF: d["annotations"][REF].upper()}
    index["manifests"].append(d)


# index.json, its document edited (and written back sorted and compact)
INDEX_ATTACKS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "name-traversal": (_set_name("../../x:y"), "a model name '../../x:y'"),
    "name-namespace-dotdot": (_set_name("registry.ollama.ai/../tiny:latest"),
                              "a model name with a '..' namespace"),
    "name-absolute": (_set_name("/etc/passwd"), "a model name '/etc/passwd'"),
    "name-extra-parts": (_set_name("registry.ollama.ai/library/tiny/../../../evil:latest"),
                         "a model name with '/../../../' in it"),
    "name-tag-traversal": (_set_name("registry.ollama.ai/library/tiny:../../evil"),
                           "a tag '../../evil'"),
    "name-backslash": (_set_name("registry.ollama.ai/library/..\\..\\evil:latest"),
                       "a model name with backslashes"),
    "name-empty": (_set_name(""), "an empty model name"),
    "name-short": (_set_name("tiny:latest"), "a short name (no host)"),
    "name-with-scheme": (_set_name("https://registry.ollama.ai/library/tiny:latest"),
                         "a name with a URL scheme"),
    "name-nul": (_set_name("registry.ollama.ai/library/ti\0ny:latest"), "a NUL in a name"),
    "name-newline": (_set_name("registry.ollama.ai/library/tiny:latest\n"),
                     "a newline in a name"),
    "name-non-ascii": (_set_name("registry.ollama.ai/library/t\u00efny:latest"),
                       "a non-ASCII name"),
    "name-long": (_set_name("registry.ollama.ai/library/" + "a" * 100_000 + ":latest"),
                  "a 100000-character model name"),
    "name-not-a-string": (_set_name(42), "a name that is a number"),
    "name-missing": (lambda i: i["manifests"][0].pop("annotations"), "no annotations"),
    "names-equal-ignoring-case": (_dup_case, "two names equal ignoring case"),
    "manifest-not-in-root": (lambda i: i["manifests"][0].update(digest="sha256:" + "ab" * 32),
                             "a manifest digest the root does not list"),
    "manifest-size-differs": (lambda i: i["manifests"][0].update(
        size=i["manifests"][0]["size"] + 1), "a manifest size one too big"),
    "manifest-size-2-64": (lambda i: i["manifests"][0].update(size=2**64),
                           "a manifest size of 2^64"),
    "manifest-digest-traversal": (lambda i: i["manifests"][0].update(
        digest="sha256:../../etc"), "a manifest digest 'sha256:../../etc'"),
    "manifest-media-type": (lambda i: i["manifests"][0].update(
        mediaType="application/vnd.oci.image.manifest.v1+json"),
        "a descriptor media type that differs from the manifest's"),
    "manifests-reordered": (lambda i: i["manifests"].reverse(), "manifests not sorted"),
    "index-media-type": (lambda i: i.update(
        mediaType="application/vnd.oci.image.manifest.v1+json"), "a wrong index mediaType"),
    "schema-version-string": (lambda i: i.update(schemaVersion="2"), "schemaVersion '2'"),
    "schema-version-true": (lambda i: i.update(schemaVersion=True), "schemaVersion true"),
    "manifests-not-a-list": (lambda i: i.update(manifests={}), "manifests an object"),
}

# index.json, its bytes edited
INDEX_RAW_ATTACKS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "duplicate-key": (lambda r: b'{"manifests":[],' + r[1:],
                      "a duplicate 'manifests' key, the first one empty"),
    "duplicate-key-digest": (lambda r: r.replace(
        b'"digest":', b'"digest":"sha256:' + b"0" * 64 + b'","digest":', 1),
        "a duplicate 'digest' key in a descriptor"),
    "deep-nesting-65": (lambda r: b'{"x":' + nested(65) + b"," + r[1:],
                        "an unknown member nested 65 deep"),
    "deep-nesting-10000": (lambda r: b'{"x":' + nested(10_000) + b"," + r[1:],
                           "an unknown member nested 10000 deep"),
    "non-utf8": (lambda r: r.replace(b"tiny", b"t\xffny", 1), "a 0xFF byte in a name"),
    "lone-surrogate-name": (lambda r: r.replace(b"tiny", b"t\\udc80ny", 1),
                            "a lone surrogate escape in a model name"),
    "float-size": (lambda r: re.sub(rb'("size":\d+)', rb"\1.0", r, count=1),
                   "a size N.0"),
    "size-beyond-2-63": (lambda r: first_size(r, str(2**63 + 5).encode()),
                         "a size of 2^63 + 5"),
}


def _layer(m: dict[str, Any]) -> dict[str, Any]:
    layer: dict[str, Any] = m["layers"][0]
    return layer


# the first manifest, its document edited (and written back compact)
MANIFEST_ATTACKS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "layer-digest-traversal": (lambda m: _layer(m).update(
        digest="sha256:../../../etc/passwd"), "a layer digest 'sha256:../../../etc/passwd'"),
    "layer-digest-etc": (lambda m: _layer(m).update(digest="sha256:../../etc"),
                         "a layer digest 'sha256:../../etc'"),
    "layer-digest-absolute": (lambda m: _layer(m).update(digest="sha256:/etc/passwd"),
                              "a layer digest 'sha256:/etc/passwd'"),
    "layer-digest-upper-case": (lambda m: _layer(m).update(
        digest=_layer(m)["digest"].upper().replace("SHA256", "sha256")),
        "a layer digest in upper-case hex"),
    "layer-digest-dash": (lambda m: _layer(m).update(
        digest=_layer(m)["digest"].replace(":", "-")), "a layer digest 'sha256-<hex>'"),
    "config-digest-traversal": (lambda m: m["config"].update(
        digest="sha256:../../manifests/evil"), "a config digest 'sha256:../../manifests/evil'"),
    "layer-not-in-bundle": (lambda m: _layer(m).update(digest="sha256:" + "cd" * 32),
                            "a layer the bundle does not carry"),
    "layer-size-differs": (lambda m: _layer(m).update(size=_layer(m)["size"] + 1),
                           "a layer size one too big"),
    "layer-size-2-63": (lambda m: _layer(m).update(size=2**63), "a layer size of 2^63"),
    "config-missing": (lambda m: m.pop("config"), "no config"),
    "layers-not-a-list": (lambda m: m.update(layers={}), "layers an object"),
    "schema-version-1": (lambda m: m.update(schemaVersion=1), "schemaVersion 1"),
    "media-type-differs-from-index": (lambda m: m.update(
        mediaType="application/vnd.oci.image.manifest.v1+json"),
        "a mediaType other than the index descriptor's"),
    "unknown-media-type": (lambda m: m.update(mediaType="text/plain"), "mediaType text/plain"),
}

# the first manifest, its bytes edited
MANIFEST_RAW_ATTACKS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "duplicate-key": (lambda r: b'{"layers":[],' + r[1:],
                      "a duplicate 'layers' key, the first one empty"),
    "duplicate-key-digest": (lambda r: r.replace(
        b'"digest":', b'"digest":"sha256:' + b"0" * 64 + b'","digest":', 1),
        "a duplicate 'digest' key in the config descriptor"),
    "deep-nesting-65": (lambda r: b'{"x":' + nested(65) + b"," + r[1:],
                        "an unknown member nested 65 deep"),
    "deep-nesting-10000": (lambda r: b'{"x":' + nested(10_000) + b"," + r[1:],
                           "an unknown member nested 10000 deep"),
    "nan": (lambda r: first_size(r, b"NaN"), "a size NaN"),
    "size-5000-digits": (lambda r: first_size(r, b"9" * 5000), "a size of 5000 digits"),
    "non-utf8": (lambda r: r.replace(b"application", b"applic\xffation", 1),
                 "a 0xFF byte in a media type"),
    "lone-surrogate": (lambda r: r[:-1] + b',"x":"\\ud83d"}', "a lone surrogate escape"),
    "over-4-MiB": (lambda r: r[:-1] + b',"x":"' + b"x" * (4 * 1024 * 1024) + b'"}',
                   "a manifest of over 4 MiB"),
}


# ---------------------------------------------------------------------------------------------
# zstd frames

# A crafted frame, each holding 1 KiB of zeros (RFC 8878 §3.1.1.1)
HOSTILE_FRAMES: dict[str, tuple[bytes, str]] = {
    "single-segment-claiming-2GiB": (
        zstd_frame([rle_block(0, 1024, last=True)], window_log=None, content_size=2 * GiB),
        "a single-segment frame (window = content size) declaring 2 GiB, holding 1 KiB"),
    "window-256MiB": (zstd_frame([rle_block(0, 1024, last=True)], window_log=28),
                      "a frame asking for a 256 MiB window (the limit is 128 MiB)"),
    "window-2GiB": (zstd_frame([rle_block(0, 1024, last=True)], window_log=31),
                    "a frame asking for a 2 GiB window"),
    "content-size-1TiB": (zstd_frame([rle_block(0, 1024, last=True)], window_log=17,
                                     content_size=2**40),
                          "a frame declaring 1 TiB of content, holding 1 KiB"),
    "content-size-2-64-minus-1": (zstd_frame([rle_block(0, 1024, last=True)], window_log=17,
                                             content_size=2**64 - 1),
                                  "a frame declaring 2^64 - 1 bytes of content"),
}



def skippable(data: bytes, magic: int = 0x184D2A50) -> bytes:
    """A skippable frame (RFC 8878 §3.1.2): magic, 4-byte length, user data."""
    return magic.to_bytes(4, "little") + len(data).to_bytes(4, "little") + data


# ---------------------------------------------------------------------------------------------
# Bytes after the end (tests/adversarial/test_tamper.py; the corpus's "Trailing" group)

# after the tar's end-of-archive marker, inside the compressed stream
TRAILING_TAR: dict[str, tuple[bytes, str]] = {
    "one-byte": (b"\x01", "one byte 0x01"),
    "text": (b"garbage after the end", "text"),
    "after-a-zero-block": (bytes(512) + b"\x01", "a zero block, then 0x01"),
    "after-100-KiB-of-zeros": (bytes(100 * 1024) + b"x", "100 KiB of zeros, then 'x'"),
    "a-whole-member": (regular("extra.txt", b"hello").encode() + EOA,
                       "a whole member and another end marker"),
    "a-member-after-more-zeros": (bytes(4096) + regular("../evil", EVIL).encode() + EOA,
                                  "4 KiB of zeros, then a member '../evil'"),
    "a-plain-member-after-more-zeros": (bytes(4096) + regular("extra.txt", b"hello").encode()
                                        + EOA, "4 KiB of zeros, then a member 'extra.txt'"),
    "zeros-over-1-MiB": (bytes(1024 * 1024 + 512), "1 MiB + 512 zero bytes"),
}

# after the zstd stream (the seek table)
TRAILING_RAW: dict[str, tuple[bytes, str]] = {
    "zero-byte": (b"\x00", "one zero byte"),
    "one-byte": (b"\x01", "one byte 0x01"),
    "three-bytes": (b"abc", "three bytes 'abc'"),
    "text": (b"garbage " * 100, "800 bytes of text"),
    "lone-zstd-magic": ((0xFD2FB528).to_bytes(4, "little"), "a lone zstd magic number"),
    "frame-header-only": (zstd_frame([], window_log=17, content_size=1000),
                          "a zstd frame header with no blocks"),
    "frame-of-text": (compress(b"hello, not zeros"), "a complete zstd frame of text"),
    "skippable-frame-cut-short": (skippable(b"x" * 100)[:20], "a skippable frame cut short"),
    "skippable-frame-header-only": (skippable(b"")[:6], "6 bytes of a skippable frame"),
}


# ---------------------------------------------------------------------------------------------
# Header fields the reader does not use, edited in a member's ustar header (checksum made
# right by whoever applies them: tests.support.tar.edit_header)


def put(start: int, value: bytes) -> Callable[[bytearray], None]:
    def edit(header: bytearray) -> None:
        header[start : start + len(value)] = value
    return edit


def _prefix_split(header: bytearray) -> None:
    name = bytes(header[0:100]).rstrip(b"\0")
    prefix, _, rest = name.rpartition(b"/")
    assert prefix, name
    header[0:100] = rest.ljust(100, b"\0")
    header[345:500] = prefix.ljust(155, b"\0")


def _junk_after_name(header: bytearray) -> None:
    end = bytes(header[0:100]).index(b"\0")
    header[end + 1 : end + 9] = b"junkjunk"


HEADER_EDITS: dict[str, tuple[Callable[[bytearray], None], str]] = {
    "mtime": (put(136, b"%011o\0" % 1_700_000_000), "an mtime"),
    "mode-setuid": (put(100, b"%07o\0" % 0o4755), "mode 4755 (setuid)"),
    "mode-world-writable": (put(100, b"%07o\0" % 0o777), "mode 0777"),
    "uid": (put(108, b"%07o\0" % 1000), "uid 1000"),
    "gid": (put(116, b"%07o\0" % 1000), "gid 1000"),
    "uname": (put(265, b"root"), "uname root"),
    "uname-evil": (put(265, b"evil"), "uname evil"),
    "gname": (put(297, b"evil"), "gname evil"),
    "linkname": (put(157, b"/etc/passwd"), "a link name /etc/passwd on a regular file"),
    "devmajor": (put(329, b"%07o\0" % 1), "a device major number"),
    "junk-after-name": (_junk_after_name, "bytes after the NUL that ends the name"),
    "name-in-prefix-field": (_prefix_split, "its directory moved to the ustar prefix field"),
    "gnu-magic": (put(257, b"ustar  \0"), "the GNU magic 'ustar  '"),
    "unused-tail": (put(500, b"x" * 12), "bytes in the unused tail"),
}


# Cases of these tables the corpus already holds, byte for byte, in another group:
# "<table>/<tag>": the corpus case.
SAME_AS: dict[str, str] = {
    "PAX_CASES/path-traversal": "traversal-pax-path",
    "PAX_CASES/size-huge-index": "size-huge-pax-index-json",
    "GNU_LONG/longname-traversal": "traversal-gnu-longname",
}


# ---------------------------------------------------------------------------------------------
# Memory amplification: a small file whose head holds far more than it weighs


def manifest_bomb(b: Bundle, count: int, size: int) -> bytes:
    """The bundle, unsigned, with `count` models whose manifests are `size` bytes each (its
    first manifest with an annotation that differs in each, padded with spaces), as one zstd
    frame: a small file whose manifests, held whole, are `count * size` bytes."""
    import json

    import zstandard

    from tests.support.tar import blob_name, sha256_hex

    first = b.members[b.first_blob]
    template = json.loads(first.data)
    raws = []
    for i in range(count):
        doc = {**template, "annotations": {"bomb": str(i)}}
        body = json.dumps(doc, separators=(",", ":")).encode()
        raws.append(body + b" " * (size - len(body)))
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": template["mediaType"],
                            "digest": f"sha256:{sha256_hex(raw)}", "size": len(raw),
                            "annotations": {REF: f"registry.ollama.ai/library/bomb:{i}"}}
                           for i, raw in enumerate(raws)]}
    index_bytes = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    n_manifests = len({d["digest"] for d in b.index["manifests"]})
    used = {d["digest"][7:] for d in [template["config"], *template["layers"]]}
    rest = [m for m in b.members[b.first_blob + n_manifests:] if m.name[13:] in used]
    root = b.root
    root["index"] = {"digest": f"sha256:{sha256_hex(index_bytes)}", "size": len(index_bytes)}
    root["blobs"] = ([{"digest": f"sha256:{sha256_hex(raw)}", "size": len(raw)} for raw in raws]
                     + [{"digest": f"sha256:{sha256_hex(m.data)}", "size": len(m.data)}
                        for m in rest])
    root.pop("cosign", None)
    root_bytes = json.dumps(root, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    head = [regular(ROOT, root_bytes), b.member("oci-layout"), regular("index.json", index_bytes)]
    obj = zstandard.ZstdCompressor(level=19).compressobj()
    out = [obj.compress(m.encode()) for m in head]
    out += [obj.compress(regular(blob_name(raw), raw).encode()) for raw in raws]
    out += [obj.compress(m.encode()) for m in rest]
    out.append(obj.compress(EOA) + obj.flush())
    return b"".join(out)


# Decoys for the stock-tools check of the carried tool (README "First time on the air-gapped
# side", formats/threat-model.md T27)

# Each takes a signed bundle that carries a tool (`b`, its tool member named `name`) and a
# payload the attacker wants run, and gives the crafted archive's members. None of them holds
# a key: the root and its signature are the signer's, except where the root is replaced.
def _invisible_and_newline(b: Bundle, name: str, payload: bytes) -> list[Member]:
    # The genuine tool under its name plus a zero-width space (so `*.pex` does not match it),
    # the payload under that name, a newline and '#.pex': `ls *.pex` gives one line per
    # name... and this one name is two lines, of which sha256sum checks the first (the
    # genuine file) and takes the second for a comment.
    hidden = name + "\u200b"
    at = b.pos(name)
    return [*b.members[:at], regular(hidden, b.member(name).data),
            regular(hidden + "\n#.pex", payload, mode=0o755), *b.members[at + 1:]]


def _forged_root(b: Bundle, name: str, payload: bytes) -> list[Member]:
    # A root naming the payload, under the signer's (now wrong) signature: it fails the
    # openssl check, but a recipe that goes on anyway finds the payload "OK".
    root = b.root
    root["toolFile"].update(digest="sha256:" + sha256_hex(payload), size=len(payload))
    ms = [m.copy() for m in b.members]
    ms[b.pos(ROOT)] = regular(ROOT, json.dumps(root, sort_keys=True,
                                               separators=(",", ":")).encode() + b"\n")
    ms[b.pos(name)] = regular(name, payload, mode=0o755)
    return ms


def _first_at_the_name(b: Bundle, name: str, payload: bytes) -> list[Member]:
    # the payload under the tool's own name, before the genuine member of that name
    at = b.pos(name)
    return [*b.members[:at], regular(name, payload, mode=0o755), *b.members[at:]]


def _directory_at_the_name(b: Bundle, name: str, payload: bytes) -> list[Member]:
    # a member inside a "directory" of the tool's name, which tar takes as matching the name
    at = b.pos(name)
    return [*b.members[:at], regular(f"{name}/x", payload, mode=0o755), *b.members[at:]]


def _link_at_the_name(b: Bundle, name: str, payload: bytes) -> list[Member]:
    # the tool's name is a symbolic link to a file the payload is written to
    link = regular(name, b"", type=tarfile.SYMTYPE, linkname="../../payload.pex")
    at = b.pos(name)
    return [*b.members[:at], link, regular("payload.pex", payload, mode=0o755),
            *b.members[at + 1:]]


def _second_pex(b: Bundle, name: str, payload: bytes) -> list[Member]:
    # the genuine tool where it belongs, and a second, newer-looking one the root does not name
    at = b.pos(name)
    other = re.sub(r"-[^/]*\.pex$", "-99.0.pex", name)
    return [*b.members[:at + 1], regular(other, payload, mode=0o755), *b.members[at + 1:]]


# tag: (the crafted members, what it attacks, whether the genuine tool is still there, as
# the only member of its name, for a careful recipe to find)
TOOL_DECOYS: dict[str, tuple[Callable[[Bundle, str, bytes], list[Member]], str, bool]] = {
    "invisible-and-newline": (_invisible_and_newline, "a name with a zero-width space and a "
                              + "newline, the genuine tool hidden beside it", False),
    "forged-root": (_forged_root, "a root naming the payload, its signature no longer valid",
                    False),
    "first-at-the-name": (_first_at_the_name, "the payload first under the tool's name", False),
    "directory-at-the-name": (_directory_at_the_name, "the payload inside a directory of "
                              + "the tool's name", False),
    "link-at-the-name": (_link_at_the_name, "a symbolic link at the tool's name", False),
    "second-pex": (_second_pex, "a second .pex member the root does not name", True),
}
