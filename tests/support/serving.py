"""`bundle serve` as a real process on loopback, for tests (formats/serve-v1.md)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT (no slash at the end)
    ready: dict[str, Any]  # what --json printed when the port opened
    stderr: Path

    @property
    def netloc(self) -> str:
        return self.url.split("://", 1)[1]

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def start(args: list[str], stderr: Path, env: dict[str, str] | None = None,
          ) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "bundler", "serve", *args],
                                stdout=subprocess.PIPE, stderr=err,
                                env={**os.environ, **(env or {})})


@contextlib.contextmanager
def serving(*args: str, tmp: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    """Start `bundle serve ARGS --listen 127.0.0.1:0 --json`, wait for the document it prints
    when listening, stop it (SIGTERM) at the end and require exit 0."""
    stderr = tmp / f"serve-{time.monotonic_ns()}.log"
    proc = start([*args, "--listen", "127.0.0.1:0", "--json"], stderr, env)
    assert proc.stdout is not None
    text, doc = "", None
    for raw in proc.stdout:
        text += raw.decode()
        with contextlib.suppress(ValueError):
            doc = json.loads(text)
            break
    if doc is None:
        proc.communicate(timeout=30)
        raise AssertionError(f"serve did not start (exit {proc.returncode}): "
                             f"{stderr.read_text(errors='replace')}")
    served = Served(proc, doc["url"].rstrip("/"), doc, stderr)
    try:
        yield served
    finally:
        code = served.stop()
    assert code == 0, served.log()
