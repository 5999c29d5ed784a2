"""The sha256 digest value type: parsed once at the edge, then trusted as a path component."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from bundler.errors import IntegrityError

CHUNK_SIZE = 1024 * 1024  # one chunk size for every streaming loop (the L2 cache is 1 MiB)

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A `sha256:<64 lowercase hex>` digest (formats/README.md, "Digest")."""

    hex: str

    @classmethod
    def parse(cls, text: object, *, what: str = "digest") -> Digest:
        if not isinstance(text, str) or not _SHA256.fullmatch(text):
            raise IntegrityError(
                f"{what}: not a sha256 digest: {str(text)[:80]!r}",
                hint="a digest is 'sha256:' followed by 64 lowercase hex characters",
            )
        return cls(text[7:])

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

    @property
    def short(self) -> str:
        """The 12-character form that `ollama list` shows as ID."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"sha256:{self.hex}"
