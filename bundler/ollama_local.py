"""The Ollama that runs on this machine: read what bundler/discover.py needs (systemd units,
/etc/passwd, the desktop app's settings database) and ask the server's /api/tags
(formats/ollama-store.md §1)."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath

from bundler import discover
from bundler.errors import NetworkError
from bundler.registry import transport
from bundler.store import StoreLocation, locate

_MAX_UNIT_BYTES = 1024 * 1024


def read_service(root: Path = Path("/")) -> discover.Service | None:
    """ollama.service and its drop-ins, under `root` (tests use a directory of their own)."""
    present = []
    for d in discover.UNIT_DIRS:
        base = root / d.lstrip("/")
        if (base / discover.SERVICE).is_file():
            present.append(f"{d}/{discover.SERVICE}")
        with contextlib.suppress(OSError):
            present += [f"{d}/{discover.SERVICE}.d/{p.name}"
                        for p in (base / f"{discover.SERVICE}.d").glob("*.conf") if p.is_file()]
    files = []
    for path in discover.unit_files(present):
        try:
            with (root / path.lstrip("/")).open("rb") as f:
                files.append((path, f.read(_MAX_UNIT_BYTES).decode("utf-8", "replace")))
        except OSError:
            continue
    return discover.parse_service(files) if files else None


def app_setting(db: Path) -> str | None:
    """The desktop app's Model location (`models` of the settings row, app/store/database.go),
    read only; None if there is no readable database or no setting."""
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            row = conn.execute("SELECT models FROM settings WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row and isinstance(row[0], str) and row[0] else None


def locate_store(option: Path | None, env: Mapping[str, str], home: Path, *,
                 root: Path = Path("/"), system: str = sys.platform) -> StoreLocation:
    """--models, else $OLLAMA_MODELS, else the store of the Ollama this machine runs: the Linux
    service's, or the desktop app's Model location; else the default (store.locate)."""
    if option is not None or discover.ollama_var(env.get("OLLAMA_MODELS")):
        return locate(option, env, home)
    found: tuple[str, str] | None = None
    if system.startswith("linux"):
        service = read_service(root)
        if service is not None:
            try:
                passwd = (root / "etc" / "passwd").read_text("utf-8", "replace")
            except OSError:
                passwd = ""
            found = discover.service_store(service, passwd)
    else:
        db = discover.app_db_path(system, env, home)
        if db is not None:
            setting = app_setting(Path(db))
            found = discover.app_store(setting, PurePath(db),
                                       setting is not None and Path(setting).is_dir())
    if found is None:
        return locate(option, env, home)
    return StoreLocation(Path(found[0]), found[1])


@dataclass(frozen=True, slots=True)
class ServerCheck:
    """What the local server said, or why it was not asked (`url` None) or did not answer."""

    url: str | None
    seen: discover.Seen | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, object]:
        obj: dict[str, object] = {"url": self.url, "problem": self.problem}
        if self.seen is not None:
            obj.update(listed=list(self.seen.listed), missing=list(self.seen.missing),
                       otherManifest=list(self.seen.other))
        return obj


def check_server(env: Mapping[str, str], wanted: Mapping[str, str]) -> ServerCheck:
    """Ask the local Ollama (OLLAMA_HOST, else 127.0.0.1:11434) which of `wanted` (display
    name -> manifest sha256 hex) it lists."""
    url = discover.server_url(env)
    if url is None:
        return ServerCheck(None, problem="OLLAMA_HOST names another machine: not asked")
    try:
        resp = transport.get_local(f"{url}/api/tags")
    except NetworkError:
        return ServerCheck(url, problem="no Ollama server answered")
    found = discover.seen(resp.body, wanted) if resp.status == 200 else None
    if found is None:
        return ServerCheck(url, problem=f"no model list in its answer (HTTP {resp.status})")
    return ServerCheck(url, found)
