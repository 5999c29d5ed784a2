"""Secrets stay secret: a key passphrase and a registry password, given every way the tool
takes them, right and wrong, never appear in anything a run prints (human or --json output,
errors, hints, warnings), and there is no option that would put them in argv."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from bundler.cli import main
from tests.support.common import Keys, cli, make_keys, small_store
from tests.support.tls_registry import PASSWORD, USER, SecureRegistry

PASSPHRASE = "pass-phrase-7Qz!x"  # noqa: S105 - a test secret, looked for in output


@pytest.fixture
def locked(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "k", passphrase=PASSPHRASE.encode())


def _outputs(runs: list[tuple[int, bytes, bytes]]) -> bytes:
    return b"".join(out + err for _, out, err in runs)


def test_no_option_takes_a_secret_on_the_command_line() -> None:
    for command in main.commands.values():
        for param in command.params:
            for opt in getattr(param, "opts", []):
                assert "password" not in opt or opt == "--password-stdin", opt
                assert "passphrase" not in opt or opt in ("--passphrase-file",
                                                          "--no-passphrase"), opt
                assert opt not in ("--secret", "--token"), opt


def test_a_key_passphrase_is_never_printed(tmp_path: Path, locked: Keys,
                                          env: dict[str, str]) -> None:
    store = small_store(tmp_path / "store")
    phrase_file = tmp_path / "phrase"
    phrase_file.write_text(PASSPHRASE + "\n")
    phrase_file.chmod(0o600)
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("not-" + PASSPHRASE + "\n")
    runs = []
    for extra, environ, ok in (
            (["--passphrase-file", str(phrase_file)], {}, True),
            ([], {"BUNDLE_PASSPHRASE": PASSPHRASE}, True),
            (["--passphrase-file", str(wrong_file)], {}, False),
            ([], {"BUNDLE_PASSPHRASE": "not-" + PASSPHRASE}, False)):
        for json_mode in ([], ["--json"]):
            p = cli("export", "--all", "--models", str(store), "--key", str(locked.key),
                    "-o", str(tmp_path / "b.tar.zst"), *extra, *json_mode,
                    env={**env, **environ})
            assert (p.returncode == 0) is ok, p.stderr
            runs.append((p.returncode, p.stdout, p.stderr))
    assert PASSPHRASE.encode() not in _outputs(runs)
    assert b"Traceback" not in _outputs(runs)


def test_a_registry_password_is_never_printed(secure_registry: SecureRegistry,
                                             bundle_file: Path, keys: Keys,
                                             env: dict[str, str], tmp_path: Path) -> None:
    docker = tmp_path / "docker"
    docker.mkdir()
    base = ["import", str(bundle_file), "--to-registry", secure_registry.url + "/secret",
            "--trust", str(keys.pub), "--ca-cert", str(secure_registry.ca)]
    home = {**env, "DOCKER_CONFIG": str(docker)}
    runs = []
    for password in (PASSWORD, "wrong-" + PASSWORD):
        for json_mode in ([], ["--json"]):
            p = cli(*base, "--username", USER, "--password-stdin", *json_mode, env=home,
                    stdin=password.encode() + b"\n")
            runs.append((p.returncode, p.stdout, p.stderr))
            p = cli("check-registry", secure_registry.url, "secret/tiny:latest",
                    "--ca-cert", str(secure_registry.ca), "--username", USER,
                    "--password-stdin", *json_mode, env=home, stdin=password.encode() + b"\n")
            runs.append((p.returncode, p.stdout, p.stderr))
        auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
        (docker / "config.json").write_text(json.dumps(
            {"auths": {secure_registry.url.removeprefix("https://"): {"auth": auth}}}))
        p = cli(*base, "--json", env=home)
        runs.append((p.returncode, p.stdout, p.stderr))
    assert [r[0] for r in runs].count(0) >= 3  # the right password worked
    assert any(r[0] == 5 for r in runs)  # the wrong one was refused
    text = _outputs(runs)
    for secret in ("wrong-" + PASSWORD, PASSWORD):
        assert secret.encode() not in text
        assert base64.b64encode(f"{USER}:{secret}".encode()) not in text
    assert b"Traceback" not in text
