"""Progress is a callback from the core; rendering belongs to the CLI."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

OnBytes = Callable[[int], object]  # tqdm's bar.update fits; so does list.append in tests
OnEvent = Callable[[str], object]  # one human-readable log line (stderr in the CLI)


class Meter(Protocol):
    """One stage's progress, as the CLI draws it (a tqdm bar fits)."""

    def update(self, n: int, /) -> object: ...

    def reset(self, total: int | None = None, /) -> object: ...


# a Meter for each stage of a use case of several, by name and total (None: told later)
Meters = Callable[[str, int | None], contextlib.AbstractContextManager[Meter]]


@contextlib.contextmanager
def _no_meter(desc: str, total: int | None = None) -> Iterator[Meter]:
    yield _Silent()


class _Silent:
    def update(self, n: int, /) -> None:
        pass

    def reset(self, total: int | None = None, /) -> None:
        pass


no_meters: Meters = _no_meter


def no_progress(nbytes: int) -> None:
    """Default: the core reports bytes and nobody listens."""


def no_events(line: str) -> None:
    """Default: the core reports events and nobody listens."""


def format_size(n: int) -> str:
    """Bytes for people: 512 B, 3.4 MiB, 2.0 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def plural(n: int, noun: str, many: str | None = None) -> str:
    """A count for people: 1 blob, 0 blobs, 2 blobs (`many` for an irregular plural)."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"
