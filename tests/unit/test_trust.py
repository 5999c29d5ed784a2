"""bundler/trust.py: the trust directories (formats/signature-v1.md §4): the system-wide one
every user reads, the user's own, and `revoked` in either."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bundler import config
from bundler.errors import UsageError
from bundler.trust import trusted_keys
from tests.support.common import make_keys


def _dirs(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    system, user = tmp_path / "etc-trusted", tmp_path / "user-trusted"
    system.mkdir(mode=0o755)
    user.mkdir(mode=0o700)
    return system, user, {"BUNDLE_TRUST_DIR": str(user)}


def test_the_system_directory_is_the_documented_one() -> None:
    assert config.system_trust_dir() == (Path("/etc/ollama-bundle/trusted")
                                         if os.name == "posix" else None)


def test_keys_in_the_system_directory_are_trusted_with_the_users(tmp_path: Path) -> None:
    system, user, env = _dirs(tmp_path)
    a, b = make_keys(tmp_path / "k", "a"), make_keys(tmp_path / "k", "b")
    shutil.copy(a.pub, system / "a.pub")
    shutil.copy(b.pub, user / "b.pub")
    events: list[str] = []
    keys = trusted_keys([], env, tmp_path, events.append, system=system)
    assert sorted(k.keyid for k in keys) == sorted([a.keyid, b.keyid])
    assert events == [f"trust: 2 keys ({system}; {user})"]
    assert [k.keyid for k in trusted_keys([], env, tmp_path, system=tmp_path / "absent")] \
        == [b.keyid]


def test_revoked_in_the_system_directory_applies_to_every_key(tmp_path: Path) -> None:
    system, user, env = _dirs(tmp_path)
    a, b = make_keys(tmp_path / "k", "a"), make_keys(tmp_path / "k", "b")
    shutil.copy(b.pub, user / "b.pub")
    (system / "revoked").write_text(f"# stolen laptop\n{a.keyid}\n{b.keyid}\n")
    events: list[str] = []
    assert trusted_keys([a.pub], env, tmp_path, events.append, system=system) == ()
    assert sum("is revoked in" in e for e in events) == 2
    # and the user may revoke a key the system directory trusts, for themselves
    (system / "revoked").unlink()
    shutil.copy(a.pub, system / "a.pub")
    (user / "revoked").write_text(a.keyid + "\n")
    assert [k.keyid for k in trusted_keys([], env, tmp_path, system=system)] == [b.keyid]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0,
                    reason="chown needs root; CI runs as root")
def test_the_system_directory_must_be_roots_and_not_writable_by_others(tmp_path: Path) -> None:
    system, _, env = _dirs(tmp_path)
    a = make_keys(tmp_path / "k", "a")
    shutil.copy(a.pub, system / "a.pub")
    system.chmod(0o775)
    with pytest.raises(UsageError, match="could be changed by another user"):
        trusted_keys([], env, tmp_path, system=system)
    system.chmod(0o755)
    os.chown(system / "a.pub", 4242, 4242)  # a user's key in every user's trust
    with pytest.raises(UsageError, match=r"a\.pub.*owner uid 4242") as e:
        trusted_keys([], env, tmp_path, system=system)
    assert e.value.hint is not None and "chown root" in e.value.hint
    os.chown(system / "a.pub", 0, 0)
    assert [k.keyid for k in trusted_keys([], env, tmp_path, system=system)] == [a.keyid]
