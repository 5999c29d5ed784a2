"""Where the Ollama a user runs keeps its models (formats/ollama-store.md §1): pure rules over
the environment and the contents of files (systemd units, /etc/passwd, the desktop app's
setting), and over a server's /api/tags answer. No I/O: bundler/ollama_local.py reads the
files and asks the server."""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath, PurePosixPath

SERVICE = "ollama.service"
# systemd's unit search path for system units, highest priority first (systemd.unit(5)).
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
DEFAULT_HOST = "127.0.0.1"  # Ollama's envconfig.Host()
DEFAULT_PORT = 11434


def ollama_var(value: str | None) -> str:
    """An environment value as Ollama's envconfig.Var reads it: white space trimmed, then any
    leading and trailing " and ' characters."""
    return (value or "").strip().strip("\"'")


# ---------------------------------------------------------------------------------------------
# The Linux service (systemd)


def unit_files(present: Iterable[str]) -> list[str]:
    """Of the paths that exist (`present`), the ones systemd reads for ollama.service, in the
    order it applies them: the unit file (first in UNIT_DIRS), then every drop-in
    ollama.service.d/*.conf sorted by file name, a name in a higher-priority directory hiding
    the same name below it (systemd.unit(5), "drop-in")."""
    have = set(present)
    unit = next((f"{d}/{SERVICE}" for d in UNIT_DIRS if f"{d}/{SERVICE}" in have), None)
    if unit is None:
        return []
    dropins: dict[str, str] = {}
    for d in UNIT_DIRS:
        prefix = f"{d}/{SERVICE}.d/"
        for path in sorted(p for p in have if p.startswith(prefix) and p.endswith(".conf")
                           and "/" not in p[len(prefix):]):
            dropins.setdefault(path[len(prefix):], path)
    return [unit, *(dropins[name] for name in sorted(dropins))]


@dataclass(frozen=True, slots=True)
class Service:
    """What the [Service] sections of the unit and its drop-ins set, the last setting of each
    winning; each value with the file that set it."""

    files: tuple[str, ...]
    user: tuple[str, str] | None = None  # (name or uid, file)
    environment: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # key -> (value, file)


def _logical_lines(text: str) -> Iterable[str]:
    """Lines with backslash continuations joined, comments and blanks dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def parse_service(files: Sequence[tuple[str, str]]) -> Service:
    """(path, text) of each file in unit_files() order -> what the service runs with.
    Environment= takes space-separated, optionally quoted KEY=VALUE words; an empty
    assignment clears the list (systemd.exec(5)). Specifiers (%h ...) are not expanded."""
    user: tuple[str, str] | None = None
    env: dict[str, tuple[str, str]] = {}
    for path, text in files:
        section = ""
        for line in _logical_lines(text):
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
                continue
            if section != "Service" or "=" not in line:
                continue
            key, _, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if key == "User":
                user = (value, path) if value else None
            elif key == "Environment":
                if not value:
                    env.clear()
                    continue
                try:
                    words = shlex.split(value)
                except ValueError:
                    continue  # systemd ignores an unparsable assignment too
                for word in words:
                    name, eq, val = word.partition("=")
                    if eq and name:
                        env[name] = (val, path)
    return Service(tuple(p for p, _ in files), user, env)


def passwd_home(passwd: str, user: str) -> str | None:
    """The home directory of `user` (a name or a numeric uid) in /etc/passwd text."""
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and user in (fields[0], fields[2]):
            return fields[5]
    return None


def service_store(service: Service, passwd: str) -> tuple[str, str] | None:
    """(store, where it came from) for the service: OLLAMA_MODELS in its environment, else
    $HOME/.ollama/models for its HOME= or its User='s home (root without User=), as Ollama's
    envconfig.Models() resolves it in that process. None if the home cannot be found."""
    models = service.environment.get("OLLAMA_MODELS")
    if models is not None and ollama_var(models[0]):
        return ollama_var(models[0]), f"Environment=OLLAMA_MODELS in {models[1]}"
    home = service.environment.get("HOME")
    if home is not None and home[0]:
        return (str(PurePosixPath(home[0], ".ollama", "models")),
                f"the Linux service's HOME (Environment=HOME in {home[1]})")
    user, where = service.user or ("root", service.files[0])
    found = passwd_home(passwd, user)
    if found is None:
        return None
    said = f"User={user} in {where}" if service.user else f"no User= in {where}: root"
    return (str(PurePosixPath(found, ".ollama", "models")),
            f"the Linux service's home ({said})")


# ---------------------------------------------------------------------------------------------
# The desktop app (macOS, Windows)


def app_db_path(system: str, env: Mapping[str, str], home: PurePath) -> PurePath | None:
    """Where the desktop app keeps its settings (defaultDBPath in Ollama's app/store/store.go);
    None where there is no desktop app."""
    if system == "darwin":
        return home / "Library" / "Application Support" / "Ollama" / "db.sqlite"
    if system == "win32":
        local = env.get("LOCALAPPDATA")
        return PurePath(local, "Ollama", "db.sqlite") if local else None
    return None


def app_store(setting: str | None, db: PurePath, exists: bool) -> tuple[str, str] | None:
    """The app's "Model location" (the settings table's `models` column): the app starts its
    server with OLLAMA_MODELS set to it when the directory exists (`cmd` in Ollama's
    app/server/server.go); otherwise the server uses the default."""
    if not setting or not exists:
        return None
    return setting, f"the Ollama app's Model location setting in {db}"


# ---------------------------------------------------------------------------------------------
# Asking the server


def server_url(env: Mapping[str, str]) -> str | None:
    """The base URL of the local server, as Ollama's envconfig.Host() reads OLLAMA_HOST
    (default 127.0.0.1:11434), with 0.0.0.0 and :: asked on loopback; None when OLLAMA_HOST
    names another machine (this check asks only this one)."""
    text = ollama_var(env.get("OLLAMA_HOST"))
    scheme, sep, hostport = text.partition("://")
    if not sep:
        scheme, hostport = "http", text
    if scheme not in ("http", "https"):
        return None
    default_port = {"http": 80, "https": 443}[scheme] if sep else DEFAULT_PORT
    hostport = hostport.split("/", 1)[0]
    host, port = hostport or DEFAULT_HOST, default_port
    if hostport.startswith("["):
        inside, _, rest = hostport[1:].partition("]")
        host = inside
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif hostport.count(":") == 1:
        name, _, number = hostport.partition(":")
        if number.isdigit():
            host, port = name or DEFAULT_HOST, int(number)
    if not 0 < port < 65536:
        port = default_port
    if host == "localhost":
        host = DEFAULT_HOST
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else DEFAULT_HOST)
    if not address.is_loopback:
        return None
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"{scheme}://{shown}:{port}"


@dataclass(frozen=True, slots=True)
class Seen:
    """What the server's list says of the models an import wrote."""

    listed: tuple[str, ...]  # names it lists with the imported manifest
    missing: tuple[str, ...]  # names it does not list at all
    other: tuple[str, ...]  # names it lists with another manifest


def seen(tags: bytes, wanted: Mapping[str, str]) -> Seen | None:
    """`wanted`: display name -> manifest sha256 hex. `tags`: the /api/tags body (`models`, each
    with `name` as DisplayShortest and `digest` the manifest's sha256 hex; Ollama's
    server/model_list_cache.go). Names compare case-insensitively. None if the body is not
    such a list."""
    try:
        doc = json.loads(tags)
        models = {str(m["name"]).lower(): str(m.get("digest", ""))
                  for m in doc.get("models") or []}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    listed: list[str] = []
    missing: list[str] = []
    other: list[str] = []
    for name, digest in wanted.items():
        got = models.get(name.lower())
        (missing if got is None else listed if got == digest else other).append(name)
    return Seen(tuple(listed), tuple(missing), tuple(other))
