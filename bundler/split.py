"""Split bundles (formats/bundle-v1.md §10): part sizes and names, the sidecar, writing the
parts while exporting (SplitOutput) and reading them back as one stream (PartsReader).
(reader.open_split opens a split bundle by its first part, whose signed head lists the rest.)"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from bundler import oscompat
from bundler.digest import CHUNK_SIZE, Digest
from bundler.errors import IntegrityError, NotFoundError, UsageError
from bundler.progress import plural
from bundler.streams import Sink, WriteBehind, open_output, remove_leftovers, temporary_file

MEDIA_TYPE_PARTS = "application/vnd.ollama-bundle.parts.v1+json"
MIN_PART = 64 * 1024  # parts 2..N: at least 64 KiB each

PRESETS = {
    "fat32": 4 * 1024**3 - 1,  # FAT32's largest file
    "dvd": 4_700_000_000,  # single-layer DVD±R (4.7 GB)
    "dvd-dl": 8_500_000_000,
    "bd25": 25_000_000_000,
    "bd50": 50_000_000_000,
}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")


def parse_size(text: str) -> int:
    """A part size: a preset (fat32, dvd, dvd-dl, bd25, bd50) or a number with a unit spelled
    out, decimal (KB, MB, GB, TB) or binary (KiB, MiB, GiB, TiB); a bare number is bytes."""
    preset = PRESETS.get(text.strip().lower())
    if preset is not None:
        return preset
    m = _SIZE.fullmatch(text.strip())
    unit = _UNITS.get(m.group(2).upper()) if m else None
    if m is None or unit is None:
        raise UsageError(f"--split {text!r}: not a size",
                         hint="use fat32, dvd, dvd-dl, bd25, bd50, or e.g. 4GiB, 4GB, 700MB")
    size = int(float(m.group(1)) * unit)
    if size < MIN_PART:
        raise UsageError(f"--split {text!r}: parts must be at least 64 KiB")
    return size


def part_name(output: str, number: int) -> str:
    """OUT.001, OUT.002, ... (more digits past 999)."""
    return f"{output}.{number:03d}"


def sidecar_name(output: str) -> str:
    return f"{output}.parts.json"


@dataclass(frozen=True, slots=True)
class Part:
    name: str  # file name
    size: int
    digest: Digest


def sidecar(parts: Sequence[Part]) -> bytes:
    return json.dumps({
        "mediaType": MEDIA_TYPE_PARTS,
        "parts": [{"name": p.name, "size": p.size, "digest": str(p.digest)} for p in parts],
    }, sort_keys=True, separators=(",", ":")).encode() + b"\n"


_PART = re.compile(r"(.+)\.([0-9]{3,})")


def split_name(name: str) -> tuple[str, int] | None:
    """('OUT', 1) for 'OUT.001'; None if `name` is not a part's name."""
    m = _PART.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else None


def is_first_part(name: str) -> bool:
    """Whether a file name is that of a split bundle's first part, NAME.001."""
    return (split_name(name) or ("", 0))[1] == 1


def _stem(first: Path) -> str:
    stem, number = split_name(first.name) or ("", 0)
    if number != 1:
        raise ValueError(f"{first.name} is not a split bundle's first part, NAME.001")
    return stem


def part_paths(first: Path, count: int) -> list[Path]:
    """A split bundle's files NAME.001 to NAME.<count> (formats/bundle-v1.md §10), beside
    `first`, its part 1: the parts its root lists are 2 to N, the seek table's is N + 1. The
    sidecar is `sidecar_name`; par2 files are `parity.recovery_files`'s."""
    stem = _stem(first)
    return [first.with_name(part_name(stem, i)) for i in range(1, count + 1)]


def parts_beside(first: Path) -> list[Path]:
    """Every file named NAME.NNN beside `first` (NAME.001), sorted: the parts of a split
    bundle whose root and sidecar cannot be read."""
    stem = _stem(first)
    try:
        entries = list(first.parent.iterdir())
    except OSError:
        return []
    return sorted(e for e in entries if (split_name(e.name) or ("", 0))[0] == stem)


class SplitOutput:
    """Parts 2, 3, ... of a split bundle: the stream written to it is cut every `size` bytes
    into files OUT.002, OUT.003, ... (hashed as they are written), all under temporary names
    until `commit()`. Part 1 is written last, with `head()`."""

    def __init__(self, output: Path, size: int) -> None:
        remove_leftovers(output)
        self._held: list[BinaryIO] = []
        self._output, self._size = output, size
        self._temps: list[Path] = []
        self._finals: list[Path] = []
        self.parts: list[Part] = []  # every part finished so far, part 1 first once written
        self._f: BinaryIO | None = None
        self._sink: WriteBehind | None = None
        self._hash = hashlib.sha256()
        self._written = 0

    def _temp(self, number: int) -> tuple[Path, BinaryIO]:
        final = Path(part_name(str(self._output), number))
        tmp, f = temporary_file(final, final)
        self._temps.append(tmp)
        self._finals.append(final)
        return tmp, f

    def _end_part(self) -> None:
        assert self._f is not None
        os.fsync(self._f.fileno())
        self._held.append(self._f)  # open, so locked, until commit or discard
        number = len(self.parts) + 2
        self.parts.append(Part(Path(part_name(str(self._output), number)).name, self._written,
                               Digest(self._hash.hexdigest())))
        self._f = self._sink = None

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:
            if self._f is None:
                _, self._f = self._temp(len(self.parts) + 2)
                self._sink, self._hash, self._written = WriteBehind(self._f), hashlib.sha256(), 0
            assert self._sink is not None
            take = view[: self._size - self._written]
            self._sink.write(take)
            self._hash.update(take)
            self._written += len(take)
            view = view[len(take) :]
            if self._written == self._size:
                self._end_part()
        return len(data)

    def finish(self) -> list[Part]:
        """End the last part; the parts 2..N."""
        if self._f is not None:
            self._end_part()
        return list(self.parts)

    @contextlib.contextmanager
    def head(self) -> Iterator[Sink]:
        """Part 1, written (hashed) after every other part is finished."""
        tmp, f = self._temp(1)
        h = hashlib.sha256()
        behind = WriteBehind(f)

        class _Hashed:
            def write(self, data: bytes | memoryview) -> int:
                h.update(data)
                return behind.write(data)

        with f:
            yield _Hashed()
            os.fsync(f.fileno())
        self.parts.insert(0, Part(Path(part_name(str(self._output), 1)).name,
                                  tmp.stat().st_size, Digest(h.hexdigest())))

    def trailer(self, data: bytes) -> None:
        """The last part: the seek table of the whole stream, which describes part 1 and so
        cannot be named by the root in part 1 (formats/bundle-v1.md §10)."""
        _, f = self._temp(len(self.parts) + 1)
        with f:
            f.write(data)
            os.fsync(f.fileno())
        self.parts.append(Part(self._finals[-1].name, len(data), Digest.of(data)))

    def commit(self) -> None:
        """Rename every part into place, part 1 last, then write the sidecar."""
        self._release()
        first = Path(part_name(str(self._output), 1))
        for tmp, final in sorted(zip(self._temps, self._finals, strict=True),
                                 key=lambda tf: tf[1] == first):
            os.replace(tmp, final)
        stale = len(self.parts) + 1  # parts of an earlier, longer export under this name
        while (old := Path(part_name(str(self._output), stale))).is_file():
            old.unlink()
            stale += 1
        with open_output(Path(sidecar_name(str(self._output)))) as sink:
            sink.write(sidecar(self.parts))

    def _release(self) -> None:
        for f in self._held:
            f.close()
        self._held = []

    def discard(self) -> None:
        if self._f is not None:
            self._f.close()
        self._release()
        for tmp in self._temps:
            with contextlib.suppress(OSError):
                tmp.unlink()


class PartsReader:
    """The parts of a split bundle read as one stream. Every part must exist with its listed
    size before anything is read; each part after the first is hashed while it is read and
    checked when its end is reached, before the next is opened."""

    def __init__(self, paths: list[Path], listed: list[tuple[int, Digest]],
                 trailer: Path | None = None) -> None:
        """`paths`: part 1 and parts 2..N; `listed`: (size, digest) of parts 2..N; `trailer`:
        the last file, holding the seek table, if it is there."""
        self.paths, self.listed, self.trailer = paths, listed, trailer
        self._at: _PartsAt | None = None
        for path, (size, _) in zip(paths[1:], listed, strict=True):
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                raise NotFoundError(
                    f"part {path.name} of the split bundle is missing "
                    f"({plural(len(paths), 'part')})",
                    hint=f"copy {path.name} from the release medium next to {paths[0].name}",
                ) from None
            if actual != size:
                raise IntegrityError(
                    f"part {path.name} has {plural(actual, 'byte')}, the signed head lists "
                    f"{size}: it "
                    "was not copied completely", hint=f"copy {path.name} again")
        self._i = 0
        self._f: BinaryIO = paths[0].open("rb")
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        while True:
            data = self._f.read(n if n > 0 else CHUNK_SIZE)
            if data:
                if self._i:
                    self._hash.update(data)
                return data
            if not self._next():
                return b""

    def _next(self) -> bool:
        if self._i == len(self.paths):
            return False
        if self._i:
            digest = self.listed[self._i - 1][1]
            if self._hash.hexdigest() != digest.hex:
                name = self.paths[self._i].name
                raise IntegrityError(
                    f"part {name} is corrupt: its sha256 is not the one the signed head lists",
                    hint=f"copy {name} again from the release medium (or 'bundle repair' it "
                         "if parity files were made)")
        self._f.close()
        self._i += 1
        if self._i == len(self.paths):
            self._f = cast("BinaryIO", io.BytesIO(b""))
            return False
        self._f = self.paths[self._i].open("rb")
        self._hash = hashlib.sha256()
        return True

    def positional(self) -> _PartsAt:
        """The parts (and the seek table's file) as one stream readable at any offset."""
        if self._at is None:
            self._at = _PartsAt([*self.paths, *([self.trailer] if self.trailer else [])])
        return self._at

    def close(self) -> None:
        self._f.close()
        if self._at is not None:
            self._at.close()


class _PartsAt:
    def __init__(self, paths: list[Path]) -> None:
        self._fds: list[int] = []
        try:
            for path in paths:
                self._fds.append(oscompat.open_fd(path, os.O_RDONLY))
        except OSError:
            self.close()
            raise
        self._starts = [0]
        for fd in self._fds:
            self._starts.append(self._starts[-1] + os.fstat(fd).st_size)
        self.size = self._starts[-1]

    def pread(self, n: int, offset: int) -> bytes:
        out = bytearray()
        i = bisect.bisect_right(self._starts, offset) - 1
        while n > 0 and 0 <= i < len(self._fds):
            data = oscompat.pread(self._fds[i], n, offset - self._starts[i])
            if not data:
                i += 1
                continue
            out += data
            n -= len(data)
            offset += len(data)
            if offset >= self._starts[i + 1]:
                i += 1
        return bytes(out)

    def locate(self, offset: int) -> tuple[int, int, int]:
        """The descriptor, its offset and the bytes from there on in that part that hold the
        stream's `offset`."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if not 0 <= i < len(self._fds):
            return -1, 0, 0
        return self._fds[i], offset - self._starts[i], self._starts[i + 1] - offset

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
