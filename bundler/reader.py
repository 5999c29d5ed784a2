"""Read a bundle in one pass (formats/bundle-v1.md §9): the verified head first, then each blob
checked against the root while it streams."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from bundler import cosign, signing
from bundler.archive import (
    ArchiveReader,
    Member,
    MemberBytes,
    member_header,
    member_spans,
    padding,
)
from bundler.digest import Digest
from bundler.errors import BundlerError, IntegrityError, NotFoundError, UsageError
from bundler.layout import (
    INDEX_MEMBER,
    MAX_INDEX_BYTES,
    MAX_ROOT_BYTES,
    MAX_SIGNATURE_BYTES,
    MAX_SIGNATURES,
    OCI_LAYOUT,
    OCI_LAYOUT_MEMBER,
    ROOT_MEMBER,
    TOOL_DIRECTORY,
    TOOL_MODES_READ,
    BlobRef,
    Model,
    Root,
    blob_member,
    check_manifests,
    delta_json,
    index_models,
    signature_keyid,
    tool_json,
)
from bundler.oci import MAX_MANIFEST_BYTES, Index
from bundler.progress import OnBytes, OnEvent, no_events, no_progress, plural
from bundler.split import PartsReader, is_first_part, part_paths
from bundler.trust import Signatures, check_registry_signatures, decide_trust, refuse_untrusted


@dataclass(frozen=True, slots=True)
class Head:
    root: Root
    signatures: Signatures
    models: tuple[Model, ...]
    # registry signature documents of trusted signers, every signature verified
    registry_signatures: tuple[cosign.Document, ...] = ()

    def cosign_layers(self, model: Model) -> list[tuple[bytes, str]]:
        """(payload, base64 signature) of each trusted signer for this model's manifest."""
        subject = cosign.Subject.of(model)
        return [(subject.payload(), sig.decode()) for doc in self.registry_signatures
                for s, sig in doc.signatures if s == subject]

    @property
    def manifest_count(self) -> int:
        return len({m.manifest.digest for m in self.models})

    @property
    def layer_blobs(self) -> tuple[BlobRef, ...]:
        """The blobs after the manifests: configs and layers, in archive order."""
        return self.root.blobs[self.manifest_count :]

    def signers_json(self) -> dict[str, Any]:
        return {"carried": list(self.signatures.carried),
                "trusted": list(self.signatures.trusted),
                "cosign": [d.keyid for d in self.registry_signatures]}

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.root.created,
            "tool": f"{self.root.tool_name} {self.root.tool_version}",
            "models": [m.to_json() for m in self.models],
            "blobs": len(self.root.blobs),
            "bytes": self.root.total_size,
            "signatures": self.signers_json(),
            **delta_json(self.root.bases, self.root.external),
            **tool_json(self.root.tool_file),
        }


Reread = Callable[[int], Iterator[memoryview]]


def _verified(ref: BlobRef, views: Iterator[memoryview], on_bytes: OnBytes, *,
              skip: int = 0) -> Iterator[memoryview]:
    """The views from `skip` on, hashing all; IntegrityError at the end on a mismatch."""
    h, pos = hashlib.sha256(), 0
    for view in views:
        h.update(view)
        on_bytes(len(view))
        if pos + len(view) > skip:
            yield view[max(0, skip - pos) :]
        pos += len(view)
    if h.hexdigest() != ref.digest.hex:
        raise IntegrityError(
            f"blob {ref.digest}: content does not match its digest",
            hint="the bundle was altered or damaged in transit; get a fresh copy",
        )


def read_root(src: BinaryIO) -> Root:
    """Only the root document (unverified): how a split bundle's parts are found."""
    with ArchiveReader(src) as archive:
        m = archive.next_member()
        if m is None or m.name != ROOT_MEMBER or m.size > MAX_ROOT_BYTES:
            raise IntegrityError(f"{ROOT_MEMBER} is not the first member: not a bundle")
        return Root.parse(archive.read_body())


def open_split(first: Path) -> PartsReader:
    """Part 1 of a split bundle, and the parts its root lists beside it, as one stream."""
    if not is_first_part(first.name):
        raise UsageError(f"{first.name} is not the first part of a split bundle (NAME.001)")
    try:
        with first.open("rb") as f:
            root = read_root(f)
    except FileNotFoundError:
        raise NotFoundError(f"bundle not found: {first}") from None
    *paths, trailer = part_paths(first, len(root.parts) + 2)
    return PartsReader(paths, [(p.size, p.digest) for p in root.parts],
                       trailer if trailer.is_file() else None)


@contextlib.contextmanager
def open_bundle(path: Path, *, parts: bool = True) -> Iterator[BinaryIO]:
    """A bundle file, unbuffered; with `parts`, a split bundle named by its first part NAME.001
    is opened whole (formats/bundle-v1.md §10)."""
    if parts and is_first_part(path.name):
        reader = open_split(path)
        try:
            yield cast("BinaryIO", reader)
        finally:
            reader.close()
        return
    try:
        f = path.open("rb", buffering=0)
    except FileNotFoundError:
        raise NotFoundError(f"bundle not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a bundle file") from None
    except OSError as e:
        raise BundlerError(f"cannot read {path}: {e.strerror}") from None
    with f:
        yield f


def _head_frames(rows: list[tuple[int, int]], root: Root) -> int | None:
    """How many frames the head is (§7): one, or with a carried tool the first frame, the
    tool's stored frames and one more; None if the rows do not add up."""
    if root.tool_file is None:
        return 1
    tool = root.tool_file
    content = len(member_header(tool.member, tool.blob.size)) + tool.blob.size \
        + padding(tool.blob.size)
    i = 1
    while content > 0 and i < len(rows):
        content -= rows[i][1]
        i += 1
    return i + 1 if content == 0 and i < len(rows) else None


@dataclass(frozen=True, slots=True)
class Seekable:
    """A blob read on its own through the seek table: from the start, or after `skip` bytes
    the caller already has (and has hashed), without reading those from the bundle."""

    ref: BlobRef
    body: Callable[[int], Iterator[memoryview]]
    on_bytes: OnBytes

    def __call__(self, skip: int) -> Iterator[memoryview]:
        return _verified(self.ref, self.body(0), self.on_bytes, skip=skip)

    def after(self, skip: int, prefix: Any) -> Iterator[memoryview]:
        """The bytes after `skip`; `prefix` is a sha256 object fed the first `skip` bytes."""
        for view in self.body(skip):
            prefix.update(view)
            self.on_bytes(len(view))
            yield view
        if prefix.hexdigest() != self.ref.digest.hex:
            raise IntegrityError(
                f"blob {self.ref.digest}: content does not match its digest",
                hint="the bundle, or what an interrupted import left, was damaged; run the "
                     "import again")


def _require_canonical(m: Member, modes: Sequence[int] | None = None) -> None:
    # formats/bundle-v1.md §3: headers are exactly what the writer emits (for the carried
    # tool, with one of the modes writers have used for it)
    if not (m.is_canonical if modes is None else m.is_canonical_with(modes)):
        raise IntegrityError(f"bundle member {m.name[:200]!r}: tar header differs from the "
                             "canonical one (mode, owner, time or other fields were changed)",
                             hint="this is not an intact bundle")


class BundleReader:
    """One pass over a bundle: `read_head()`, then `blobs()`, then `finish()`."""

    def __init__(self, src: BinaryIO, on_bytes: OnBytes = no_progress) -> None:
        self._archive = ArchiveReader(src)
        self._on_bytes = on_bytes
        self._head: Head | None = None
        self._current: tuple[BlobRef, Member] | None = None
        self._parts = src.listed if isinstance(src, PartsReader) else None
        self._head_frame = -1
        self._head_bytes = -1  # decompressed size of the head frames, from the seek table
        self._spans: dict[str, tuple[int, int]] | None = None  # members' frames (§7.1)
        self._seeking = False

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._archive.close()

    def _member(self, expected: str, max_size: int | None = None) -> Member:
        m = self._archive.next_member()
        if m is None:
            raise IntegrityError(f"bundle ends before {expected}", hint="the file is truncated")
        if m.name != expected:
            raise IntegrityError(
                f"bundle member {m.name[:200]!r} where {expected} belongs",
                hint="members are missing, reordered or added: this is not an intact bundle",
            )
        if max_size is not None and m.size > max_size:
            raise IntegrityError(f"{expected} is {plural(m.size, 'byte')}, more than the limit "
                                 f"{max_size}")
        _require_canonical(m)
        return m

    def read_head(
        self, trusted: Sequence[signing.PublicKey], *, allow_unsigned: bool,
        on_event: OnEvent = no_events, enforce_trust: bool = True,
    ) -> Head:
        """Root, signatures, trust decision, oci-layout, index.json and manifests."""
        self._member(ROOT_MEMBER, MAX_ROOT_BYTES)
        root_raw = self._archive.read_body()
        root = Root.parse(root_raw)
        if root.tool_file is not None:  # a head of several frames (formats/bundle-v1.md §7):
            rows = self._archive.seek_rows()  # read ahead no further than its end
            heads = None if rows is None else _head_frames(rows, root)
            if rows is not None and heads is not None:
                self._archive.read_ahead_until(sum(c for c, _ in rows[:heads]))
        if self._parts is not None and [(p.size, p.digest) for p in root.parts] != self._parts:
            raise IntegrityError("the split bundle's part 1 changed while it was read")
        carried: dict[str, bytes] = {}
        m = self._archive.next_member()
        while m is not None and (keyid := signature_keyid(m.name)) is not None:
            _require_canonical(m)
            if len(carried) >= MAX_SIGNATURES or m.size > MAX_SIGNATURE_BYTES:
                raise IntegrityError("bundle: too many or too large signature members")
            if carried and keyid <= max(carried):
                raise IntegrityError("bundle: signature members out of order or repeated")
            carried[keyid] = self._archive.read_body()
            m = self._archive.next_member()
        signatures = decide_trust(root_raw, carried, trusted)
        if enforce_trust and not signatures.is_trusted:
            if not allow_unsigned:
                raise refuse_untrusted(signatures, trusted)
            on_event("warning: no trusted signature; accepting on digests alone "
                     "(--allow-unsigned)")
        documents: dict[str, bytes] = {}
        for listed in root.cosign:  # formats/bundle-v1.md §9 step 2a
            name = cosign.member(listed.keyid)
            if m is None or m.name != name:
                found = "the end" if m is None else repr(m.name[:200])
                raise IntegrityError(f"bundle: {found} where {name} belongs",
                                     hint="members are missing, reordered or added: this is "
                                          "not an intact bundle")
            _require_canonical(m)
            if listed.keyid not in carried:
                raise IntegrityError(f"{name}: the bundle has no signature of that key")
            if m.size != listed.blob.size or m.size > cosign.MAX_DOCUMENT_BYTES:
                raise IntegrityError(f"{name}: size differs from the signed root's")
            documents[listed.keyid] = self._archive.read_body()
            if Digest.of(documents[listed.keyid]) != listed.blob.digest:
                raise IntegrityError(f"{name}: digest differs from the signed root's",
                                     hint="the bundle was altered")
            m = self._archive.next_member()
        if m is not None and cosign.member_keyid(m.name) is not None:
            raise IntegrityError(f"bundle member {m.name!r} is not listed in the signed root",
                                 hint="this is not an intact bundle")
        tool = root.tool_file
        if tool is not None:  # formats/bundle-v1.md §9 step 2b; never executed (§11)
            if m is None or m.name != tool.member:
                found = "the end" if m is None else repr(m.name[:200])
                raise IntegrityError(f"bundle: {found} where {tool.member} belongs",
                                     hint="members are missing, reordered or added: this is "
                                          "not an intact bundle")
            _require_canonical(m, TOOL_MODES_READ)
            if m.size != tool.blob.size:
                raise IntegrityError(f"{tool.member}: size differs from the signed root's")
            h = hashlib.sha256()
            for view in self._archive.body():
                h.update(view)
            if h.hexdigest() != tool.blob.digest.hex:
                raise IntegrityError(f"{tool.member}: digest differs from the signed root's",
                                     hint="the bundle was altered; do not run that file")
            m = self._archive.next_member()
        if m is not None and m.name.startswith(TOOL_DIRECTORY):
            raise IntegrityError(f"bundle member {m.name[:200]!r} is not listed in the signed "
                                 "root", hint="this is not an intact bundle")
        if m is not None and m.name.startswith("ollama-bundle/") and not m.name.startswith(
                (ROOT_MEMBER, "ollama-bundle/signatures/", "ollama-bundle/cosign/")):
            raise IntegrityError(f"bundle member {m.name[:200]!r} is not known to this version "
                                 "of ollama-bundle",
                                 hint="it may come from a newer writer: read it with a newer "
                                      "version; else this is not an intact bundle")
        if m is None or m.name != OCI_LAYOUT_MEMBER or m.size != len(OCI_LAYOUT):
            raise IntegrityError(f"bundle: {OCI_LAYOUT_MEMBER} is missing or malformed")
        _require_canonical(m)
        if self._archive.read_body() != OCI_LAYOUT:
            raise IntegrityError(f"bundle: {OCI_LAYOUT_MEMBER} does not hold the exact bytes "
                                 "of formats/bundle-v1.md §2")
        m = self._member(INDEX_MEMBER, MAX_INDEX_BYTES)
        if m.size != root.index.size:
            raise IntegrityError("index.json: size differs from the signed root's")
        index_raw = self._archive.read_body()
        if Digest.of(index_raw) != root.index.digest:
            raise IntegrityError("index.json: digest differs from the signed root's",
                                 hint="the bundle was altered")
        named = index_models(root, Index.parse(index_raw))
        rows = self._archive.seek_rows()
        heads = None if rows is None else _head_frames(rows, root)
        self._head_bytes = -1 if rows is None or heads is None else sum(
            d for _, d in rows[:heads])
        self._spans = None if rows is None or heads is None else member_spans(
            rows, [(blob_member(b.digest), b.size) for b in root.blobs], self._head_bytes)
        manifests = len({d.digest for _, d in named})
        if self._spans is not None and manifests < len(root.blobs):  # formats/bundle-v1.md §7.1
            # the head ends where the first config or layer starts: read no further ahead, so
            # that reading on through the seek table (seekable()) reads nothing twice
            self._archive.read_ahead_until(self._spans[blob_member(root.blobs[manifests].digest)][0])
        raws: dict[Digest, bytes] = {}
        for ref in root.blobs[:manifests]:
            m = self._member(blob_member(ref.digest), MAX_MANIFEST_BYTES)
            if not raws:
                self._head_frame = m.offset  # members 1-4 (the head frames) end here
            self._check_size(m, ref)
            raw = self._archive.read_body()
            if Digest.of(raw) != ref.digest:
                raise IntegrityError(f"manifest blob {ref.digest}: content does not match "
                                     "its digest", hint="the bundle was altered or damaged")
            raws[ref.digest] = raw
        models = tuple(check_manifests(root, named, raws))
        self._head = Head(root, signatures, models,
                          check_registry_signatures(documents, models, trusted))
        return self._head

    @staticmethod
    def _check_size(m: Member, ref: BlobRef) -> None:
        if m.size != ref.size:
            raise IntegrityError(f"blob {ref.digest}: the archive says {plural(m.size, 'byte')}, the "
                                 f"signed root {ref.size}")

    def blobs(self) -> Iterator[tuple[BlobRef, Iterator[memoryview]]]:
        """Each config and layer blob with its body; the caller must consume every body.

        The body iterator checks the digest when exhausted and raises IntegrityError on a
        mismatch, so a consumer must not commit a blob before the iterator has finished.
        """
        assert self._head is not None
        for ref in self._head.layer_blobs:
            m = self._member(blob_member(ref.digest))
            self._check_size(m, ref)
            self._current = (ref, m)
            yield ref, _verified(ref, self._archive.body(), self._on_bytes)

    def _seek_spans(self) -> dict[str, tuple[int, int]] | None:
        """The members' frames (§7.1), if the writer's seek table is there and the head frames
        it names are the ones read; else None (then the bundle is read in order)."""
        if (self._archive.seek_rows() is None or self._spans is None
                or self._head_bytes != self._head_frame):
            return None
        return self._spans

    def seekable(self) -> dict[Digest, Seekable] | None:
        """After `read_head()`, for a file (or split parts) with the writer's seek table: each
        config and layer blob's body, read on its own without reading what comes before it
        (every byte still verified). None if the bundle cannot be read that way."""
        assert self._head is not None
        spans = self._seek_spans()
        if spans is None:
            return None
        out: dict[Digest, Seekable] = {}
        for ref in self._head.layer_blobs:
            name = blob_member(ref.digest)
            body = self._archive.member_at(spans[name], name, ref.size)
            if body is None:
                return None
            out[ref.digest] = Seekable(ref, body, self._on_bytes)
        self._seeking = True
        return out

    def ranges(self) -> dict[Digest, MemberBytes] | None:
        """After `read_head()`, for a file (or split parts) with the writer's seek table: each
        config and layer blob's body by byte range (formats/serve-v1.md §3), read on its own
        and not verified (the caller verifies). None if the bundle cannot be read that way."""
        assert self._head is not None
        rows, source, spans = (self._archive.seek_rows(), self._archive.positional(),
                               self._seek_spans())
        if rows is None or source is None or spans is None:
            return None
        out: dict[Digest, MemberBytes] = {}
        for ref in self._head.layer_blobs:
            name = blob_member(ref.digest)
            member = MemberBytes.of(source, rows, spans[name], name, ref.size)
            if member is None:
                return None
            out[ref.digest] = member
        return out

    def reread(self) -> Reread | None:
        """For the blob `blobs()` yielded last, if the bundle is a file that can be read again
        there: a function giving its body from an offset on (every byte still verified, the
        ones before the offset too), for retrying an upload. None for a pipe."""
        assert self._current is not None
        ref, member = self._current
        again = self._archive.reopener(member)
        if again is None:
            return None

        def body(skip: int) -> Iterator[memoryview]:
            return _verified(ref, again(0), no_progress, skip=skip)

        return body

    def check_complete(self) -> None:
        """After `read_head()`, for a reader that wants no blob: that the bundle is whole to
        its end-of-archive marker (formats/bundle-v1.md §9 step 7). With the writer's seek
        table (whose frame sizes add up to the file's size, §7.1) only the frames after the
        last blob are read; without one (a file cut short loses it) every blob is read on
        and verified."""
        assert self._head is not None
        spans = self._seek_spans()
        if spans is not None:
            self._archive.check_end_at(max(end for _, end in spans.values()))
            return
        for _, body in self.blobs():
            for _ in body:
                pass
        self.finish()

    def finish(self) -> None:
        """Require the end-of-archive marker after the last blob: next in the stream, or
        after `seekable()`, where the seek table puts the end of the last blob's frames."""
        if self._seeking:
            assert self._head is not None and self._spans is not None
            self._archive.check_end_at(max(end for _, end in self._spans.values()))
            return
        m = self._archive.next_member()
        if m is not None:
            raise IntegrityError(f"bundle member {m.name[:200]!r} is not listed in the root",
                                 hint="this is not an intact bundle")


def read_listing(src: BinaryIO, trusted: Sequence[signing.PublicKey]) -> Head:
    """Read the head: root, signatures, index.json and manifests; then that the file goes on
    to its end, with a seek table from its last frames alone (BundleReader reads no further
    ahead than the head), without one by reading on through every blob. Trust is reported,
    not enforced."""
    with BundleReader(src) as reader:
        head = reader.read_head(trusted, allow_unsigned=True, enforce_trust=False)
        reader.check_complete()
        return head


def read_through(
    src: BinaryIO, trusted: Sequence[signing.PublicKey], *, allow_unsigned: bool,
    on_total: OnBytes = no_progress, on_bytes: OnBytes = no_progress,
    on_event: OnEvent = no_events,
) -> Head:
    """Read the whole bundle, checking every digest and the archive's end; write nothing."""
    with BundleReader(src, on_bytes) as reader:
        head = reader.read_head(trusted, allow_unsigned=allow_unsigned, on_event=on_event)
        on_total(sum(b.size for b in head.layer_blobs))
        for _, body in reader.blobs():
            for _ in body:
                pass
        reader.finish()
    return head
