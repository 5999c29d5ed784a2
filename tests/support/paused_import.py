"""Run the real `bundle` CLI with the store import paused at a controlled point, so a test can
restart Ollama (and so run its prune) exactly there:

    python -m tests.support.paused_import FLAGS POINT import BUNDLE --models DIR ...

POINT is `staged` (the first staged blob is complete and fsynced; formats/ollama-store.md §4
step 3) or `renamed` (every staged blob renamed to its final name, no manifest written yet:
between steps 4 and 5). There the process creates FLAGS/paused and waits until FLAGS/go exists
(at most 10 minutes), then goes on as the import always does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bundler import store
from bundler.cli import main

POINTS = ("staged", "renamed")


def _pause(flags: Path) -> None:
    (flags / "paused").touch()
    deadline = time.monotonic() + 600
    while not (flags / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _install(flags: Path, point: str) -> None:
    paused: list[bool] = []
    if point == "staged":
        finish = store.StagedBlob.finish

        def finished(self: store.StagedBlob) -> None:
            finish(self)
            if not paused:
                paused.append(True)
                _pause(flags)

        store.StagedBlob.finish = finished  # type: ignore[method-assign]
    else:
        sync = store.Store.sync_blobs_dir

        def synced(self: store.Store, *args: Any) -> None:
            sync(self, *args)
            _pause(flags)

        store.Store.sync_blobs_dir = synced  # type: ignore[method-assign]


if __name__ == "__main__":
    flags_dir, where, *rest = sys.argv[1:]
    if where not in POINTS:
        raise SystemExit(f"POINT must be one of {POINTS}, not {where}")
    _install(Path(flags_dir), where)
    main(rest, prog_name="bundle")
