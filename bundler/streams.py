"""Read a file ahead in a second thread, hashing as it goes, into reused page-aligned buffers
(reference/performance.md traps 1-2): the caller compresses and writes while we read and hash."""

from __future__ import annotations

import hashlib
import mmap
import queue
import threading
from collections.abc import Iterator
from typing import BinaryIO

from bundler.digest import CHUNK_SIZE, Digest

_DEPTH = 4


class ReadAhead:
    """Iterate over views of `f`'s bytes; `digest` and `size` are final once iteration ends.

    A view is valid until the next one is taken. Errors in the reading thread are re-raised
    in the iterating thread.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self.size = 0
        self._buffers = [mmap.mmap(-1, CHUNK_SIZE) for _ in range(_DEPTH + 2)]
        self._queue: queue.Queue[memoryview | BaseException | None] = queue.Queue(_DEPTH)
        self._stop = threading.Event()

    @property
    def digest(self) -> Digest:
        return Digest(self._hash.hexdigest())

    def _put(self, item: memoryview | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            i = 0
            while not self._stop.is_set():
                view = memoryview(self._buffers[i % len(self._buffers)])
                n = self._f.readinto(view)  # type: ignore[attr-defined]
                if not n:
                    self._put(None)
                    return
                chunk = view[:n]
                self._hash.update(chunk)
                self.size += n
                if not self._put(chunk):
                    return
                i += 1
        except BaseException as e:  # noqa: BLE001 - re-raised in the iterating thread
            self._put(e)

    def __iter__(self) -> Iterator[memoryview]:
        thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            thread.join()
