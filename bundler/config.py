"""Where things live by default: the config directory, the system trust directory and the
default key (the trust directories are read by bundler.trust). Reads only the environment
mapping it is given. And the defaults that --help shows without loading the modules that use
them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bundler.errors import UsageError

DEFAULT_JOBS = 4  # bundle import --to-registry: uploads in flight (bundler.push)
# bundle serve (bundler.httpserve): Ollama downloads up to 16 parts of a blob at once
# (server/download.go numDownloadParts): room for 16 such pulls at once, and for one pull per
# client address with room to spare
MAX_CONNECTIONS = 256
MAX_PER_CLIENT = 32
SERVE_PORT = 5000  # bundle serve --listen (bundler.serve)
DRAIN_TIMEOUT = 600.0  # bundle serve --drain-timeout, seconds (bundler.serve)


def config_dir(env: Mapping[str, str], home: Path) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "ollama-bundle"


def system_trust_dir() -> Path | None:
    """The trust directory every user reads (formats/signature-v1.md §4): root's to change,
    so that `sudo bundle import` trusts what the administrator put there. None on Windows,
    where any user could create it."""
    return Path("/etc/ollama-bundle/trusted") if os.name == "posix" else None


def default_key_prefix(env: Mapping[str, str], home: Path) -> Path:
    """Where `bundle keygen` puts its key without --out, and where export looks for it."""
    return config_dir(env, home) / "signing"


def source_date_epoch(env: Mapping[str, str]) -> int | None:
    value = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > _LAST_SECOND:
        raise UsageError(f"SOURCE_DATE_EPOCH={value[:40]!r} is not a time in seconds since 1970",
                         hint="unset it, or set it to e.g. $(git log -1 --format=%ct)")
    return int(value)


_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z, the last time the root's format can hold
