"""Start-up loads only what the command runs (README "Performance"): the CLI module, --help and
--version load none of the heavy libraries; ls and verify load no HTTP client, and no progress
bar library when there is no terminal to draw on. Checked by the modules a real process
imported, not by timing it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.common import Keys

HEAVY = {"cryptography", "urllib3", "zstandard", "tqdm"}


def imported(*args: str, env: dict[str, str]) -> set[str]:
    """The top-level packages of every module `python -X importtime -m bundler ARGS` imported
    (importtime reports each module once, when it is first imported)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "bundler", *args],
                       capture_output=True, env={**os.environ, **env}, check=False)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in p.stderr.decode().splitlines()
            if line.startswith("import time:") and "|" in line}


def test_importing_the_cli_loads_no_heavy_library() -> None:
    code = ("import sys, bundler.cli; print(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {sorted(HEAVY)!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
    assert p.stdout.strip() == "[]"


def test_version_and_help_load_no_heavy_library(env: dict[str, str]) -> None:
    for args in (["--version"], ["--help"], ["export", "--help"], ["import", "--help"],
                 ["serve", "--help"]):
        names = imported(*args, env=env)
        assert "click" in names  # (the parse saw the imports)
        assert not names & HEAVY, (args, sorted(names & HEAVY))
        # nor the standard library's HTTP and TLS (bundle serve's server, the registry client)
        assert not names & {"http", "ssl"}, (args, sorted(names & {"http", "ssl"}))


def test_ls_and_verify_load_no_http_client_and_without_a_terminal_no_progress_bar(bundle_file: Path, keys: Keys,
                                           env: dict[str, str]) -> None:
    names = imported("ls", str(bundle_file), "--trust", str(keys.pub), env=env)
    assert {"zstandard", "cryptography"} <= names  # it read and checked the bundle
    assert not names & {"urllib3", "tqdm"}, sorted(names & {"urllib3", "tqdm"})
    for quiet in ([], ["-q"]):  # (stderr is a pipe here: tqdm would draw nothing)
        names = imported("verify", str(bundle_file), "--trust", str(keys.pub), *quiet, env=env)
        assert "zstandard" in names
        assert not names & {"urllib3", "tqdm"}, sorted(names & {"urllib3", "tqdm"})


def test_a_terminal_still_gets_the_progress_bar(bundle_file: Path, keys: Keys,
                                                 env: dict[str, str]) -> None:
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        p = subprocess.run([sys.executable, "-m", "bundler", "verify", str(bundle_file),
                            "--trust", str(keys.pub)], stdout=subprocess.PIPE, stderr=follower,
                           env={**os.environ, **env}, check=False, timeout=120)
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other end is closed and everything was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
    assert p.returncode == 0
    assert b"verify" in drawn and b"B/s" in drawn, drawn[-500:]
