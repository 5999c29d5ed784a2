"""Tar streams taken apart and put back together byte by byte, with `tarfile` and by hand
(never bundler's own archive code): members, PAX and raw ustar headers, checksums."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

BLOCK = 512
EOA = bytes(2 * BLOCK)

@dataclass
class Member:
    """One tar member: its header fields (a TarInfo) and its body."""

    info: tarfile.TarInfo
    data: bytes = b""
    fmt: Literal[0, 1, 2] = tarfile.USTAR_FORMAT
    size: int | None = None  # the header's size when it lies; None: len(data)
    pad: bytes | None = None  # the padding after the body when not zeros

    @property
    def name(self) -> str:
        return self.info.name

    def encode(self) -> bytes:
        """Header(s), body and padding; the body is written as given, so with `size` set the
        header lies about it."""
        self.info.size = len(self.data) if self.size is None else self.size
        header = self.info.tobuf(self.fmt, "utf-8", "surrogateescape")
        pad = bytes(-len(self.data) % BLOCK) if self.pad is None else self.pad
        return header + self.data + pad

    def copy(self, **fields: Any) -> Member:
        info = tarfile.TarInfo(self.info.name)
        for attr in ("size", "mode", "uid", "gid", "mtime", "type", "linkname", "uname",
                     "gname", "devmajor", "devminor"):
            setattr(info, attr, getattr(self.info, attr))
        info.pax_headers = dict(self.info.pax_headers)
        data = fields.pop("data", self.data)
        fmt = fields.pop("fmt", self.fmt)
        size = fields.pop("size", self.size)
        pad = fields.pop("pad", self.pad)
        for k, v in fields.items():
            setattr(info, k, v)
        return Member(info, data, fmt, size, pad)


def regular(name: str, data: bytes, **fields: Any) -> Member:
    """A member as the writer makes it (formats/bundle-v1.md §3), fields overridable."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    fmt = fields.pop("fmt", tarfile.USTAR_FORMAT)
    size = fields.pop("size", None)
    pad = fields.pop("pad", None)
    for k, v in fields.items():
        setattr(info, k, v)
    return Member(info, data, fmt, size, pad)


def pax_record(key: str, value: str | bytes) -> bytes:
    """One `"%d %s=%s\\n"` record, its length prefix included in the length."""
    payload = key.encode() + b"=" + (value.encode() if isinstance(value, str) else value) + b"\n"
    n = len(payload) + 2
    while len(str(n)) + 1 + len(payload) != n:
        n = len(str(n)) + 1 + len(payload)
    return str(n).encode() + b" " + payload


def pax_header(*records: bytes, type_: bytes = tarfile.XHDTYPE,
               name: str = "././@PaxHeader") -> Member:
    data = b"".join(records)
    return regular(name, data, type=type_)


def size_field(size: int) -> bytes:
    """The 12-byte size field: octal when it fits, else GNU base-256 (negative too)."""
    if 0 <= size < 8**11:
        return b"%011o\0" % size
    return (b"\xff" if size < 0 else b"\x80") + (size % 256**11).to_bytes(11, "big")


def raw_header(name: str, size: int | bytes, **fields: Any) -> bytes:
    """A ustar header whose size field is `size` (an int as `size_field` writes it, or the
    12 bytes verbatim), with a correct checksum."""
    m = regular(name, b"", **fields)
    buf = bytearray(m.info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    buf[124:136] = size if isinstance(size, bytes) else size_field(size)
    return with_checksum(buf)


def with_checksum(header: bytes | bytearray) -> bytes:
    buf = bytearray(header)
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def split(tar: bytes) -> list[Member]:
    """The members of a tar made by the writer: one Member per regular file."""
    members: list[Member] = []
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for info in tf.getmembers():
            f = tf.extractfile(info)
            assert f is not None, info.name
            data = f.read()
            members.append(regular(info.name, data, mode=info.mode))
    return members


def build(parts: Sequence[Member | bytes], *, end: bytes = EOA) -> bytes:
    """The tar: each Member encoded, each bytes part inserted verbatim, then `end`."""
    return b"".join(p if isinstance(p, bytes) else p.encode() for p in parts) + end


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_name(data: bytes) -> str:
    return f"blobs/sha256/{sha256_hex(data)}"


def edit_header(member: Member, edit: Callable[[bytearray], None]) -> bytes:
    """The member encoded, its ustar header edited in place and its checksum made right."""
    raw = member.encode()
    header = bytearray(raw[:BLOCK])
    edit(header)
    return with_checksum(header) + raw[BLOCK:]


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)
