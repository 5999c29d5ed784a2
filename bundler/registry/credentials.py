"""Registry credentials: --username with --password-stdin, else docker's config.json
(`auths`, `credHelpers`, `credsStore` through docker-credential-* helpers). Secrets are never
printed, logged or passed in argv."""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from bundler.errors import UsageError
from bundler.registry.client import Credentials


def docker_config_path(env: Mapping[str, str], home: Path) -> Path:
    return Path(env.get("DOCKER_CONFIG") or home / ".docker") / "config.json"


def from_docker_config(host: str, env: Mapping[str, str], home: Path) -> Credentials | None:
    """What `docker login HOST` stored, if anything."""
    path = docker_config_path(env, home)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict):
        return None
    helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
    if isinstance(helper, str) and helper:
        return _from_helper(helper, host)
    for key, entry in (config.get("auths") or {}).items():
        if _host_of(key) == host and isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise UsageError(f"{path}: the entry for {host} is not base64 user:password"
                                 ) from None
            return Credentials(user, password)
    return None


def _host_of(key: str) -> str:
    for prefix in ("https://", "http://"):
        key = key.removeprefix(prefix)
    return key.split("/", 1)[0].lower()


def _from_helper(helper: str, host: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run([program, "get"], input=host.encode(), capture_output=True,
                              timeout=30, check=False, env=os.environ.copy())
    except FileNotFoundError:
        raise UsageError(f"docker's config names the credential helper {program}, which is not "
                         "installed", hint="install it, or pass --username and --password-stdin"
                         ) from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"{program} did not answer within 30 s") from None
    if done.returncode != 0:
        return None  # "credentials not found in native keychain"
    try:
        doc = json.loads(done.stdout)
        return Credentials(doc["Username"], doc["Secret"])
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{program} gave an answer that is not credentials JSON") from None
