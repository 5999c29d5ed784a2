"""Split bundles (formats/bundle-v1.md §10): part sizes, part names, the sidecar. Pure: no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bundler.digest import Digest
from bundler.errors import UsageError

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
