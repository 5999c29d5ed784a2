"""Reading a bundle without writing anything: `ls` (the head only), `verify` (every digest)
and `verify --parts-only` (the parts of a split bundle against the signed head)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bundler import signing
from bundler.errors import BundlerError, IntegrityError, NotFoundError, UsageError
from bundler.progress import OnBytes, OnEvent, no_events, no_progress, plural
from bundler.reader import BundleReader, Head, read_listing, read_through
from bundler.split import is_first_part, part_paths
from bundler.streams import ReadAhead


def list_bundle(src: BinaryIO, trusted: Sequence[signing.PublicKey]) -> Head:
    """`ls`: the head, and that the file goes on to its end (`read_listing`)."""
    return read_listing(src, trusted)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    head: Head
    verified_blobs: int
    verified_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {**self.head.to_json(), "verifiedBlobs": self.verified_blobs,
                "verifiedBytes": self.verified_bytes, "ok": True}


def verify_bundle(
    src: BinaryIO, trusted: Sequence[signing.PublicKey], *, allow_unsigned: bool,
    on_total: OnBytes = no_progress, on_bytes: OnBytes = no_progress,
    on_event: OnEvent = no_events,
) -> VerifyResult:
    head = read_through(src, trusted, allow_unsigned=allow_unsigned, on_total=on_total,
                        on_bytes=on_bytes, on_event=on_event)
    return VerifyResult(head, len(head.root.blobs), head.root.total_size)


@dataclass(frozen=True, slots=True)
class PartsResult:
    head: Head
    parts: tuple[tuple[str, int], ...]  # name, size of every part, part 1 first

    def to_json(self) -> dict[str, Any]:
        return {**self.head.to_json(), "ok": True,
                "parts": [{"name": n, "size": s} for n, s in self.parts]}


def verify_parts(first: Path, trusted: Sequence[signing.PublicKey], *, allow_unsigned: bool,
                 on_total: OnBytes = no_progress, on_bytes: OnBytes = no_progress,
                 on_event: OnEvent = no_events) -> PartsResult:
    """formats/bundle-v1.md §10: the signature and head in part 1, then the size and sha256
    of every other part against the list the signed root holds; every bad part is named."""
    if not is_first_part(first.name):
        raise UsageError("--parts-only checks a split bundle: give its first part, NAME.001")
    try:
        f = first.open("rb")
    except FileNotFoundError:
        raise NotFoundError(f"bundle not found: {first}") from None
    except OSError as e:
        raise BundlerError(f"cannot read {first}: {e.strerror}") from None
    with f, BundleReader(f) as reader:
        head = reader.read_head(trusted, allow_unsigned=allow_unsigned, on_event=on_event)
    paths = part_paths(first, len(head.root.parts) + 1)[1:]
    problems: list[str] = []
    present = []
    for path, ref in zip(paths, head.root.parts, strict=True):
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            problems.append(f"{path.name} is missing")
        elif size != ref.size:
            problems.append(f"{path.name} has {plural(size, 'byte')}, not {ref.size}")
        else:
            present.append((path, ref))
    on_total(sum(ref.size for _, ref in present))
    for path, ref in present:
        with path.open("rb", buffering=0) as part:
            source = ReadAhead(part)
            for view in source:
                on_bytes(len(view))
        if source.digest != ref.digest:
            problems.append(f"{path.name} is corrupt (sha256 differs)")
    if problems:
        verb = "is" if len(problems) == 1 else "are"
        raise IntegrityError(f"{len(problems)} of {plural(len(paths) + 1, 'part')} {verb} bad: "
                             + "; ".join(problems),
                             hint="copy those parts again from the release medium (or "
                                  "'bundle repair' them if parity files were made)")
    return PartsResult(head, ((first.name, first.stat().st_size),
                              *((p.name, r.size) for p, r in zip(paths, head.root.parts,
                                                                 strict=True))))
