"""What a registry command says when the registry is not where the user said: nothing listens
there (one error line at once, no retries), or it speaks plain HTTP to an https:// URL (the
hint names http:// and --plain-http, not the TLS options that cannot help)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.common import Keys, run
from tests.support.servers import Registry, free_port


def _errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("command", ["check-registry", "push", "export"])
def test_a_registry_that_is_not_running_is_one_error_line_without_retries(
        command: str, bundle_file: Path, keys: Keys, tmp_path: Path,
        env: dict[str, str]) -> None:
    """Connection refused on the first contact is not retried (a registry that stops answering
    later still is): exit 5, one error line naming the registry's URL, and a hint."""
    url = f"http://127.0.0.1:{free_port()}"
    args = {"check-registry": ["check-registry", url, "--timeout", "1"],
            "push": ["import", str(bundle_file), "--to-registry", url, "--trust",
                     str(keys.pub)],
            "export": ["export", "--from-registry", "tiny:latest", "--mirror", url,
                       "--unsigned", "-o", str(tmp_path / "out.tar.zst")]}[command]
    r = run(args, env={**env, "DOCKER_CONFIG": str(tmp_path / "docker")})
    out = r.stdout + r.stderr
    assert r.exit_code == 5, out
    errors = _errors(out)
    assert len(errors) == 1 and url in errors[0] and "connection refused" in errors[0], out
    assert "retrying" not in out, out  # each retry is a log line: there were none
    assert "hint: " in out and "running" in out, out
    assert not (tmp_path / "out.tar.zst").exists()


def test_https_to_a_plain_http_registry_points_to_http(registry: Registry) -> None:
    """The real docker-registry on plain HTTP, asked over https://: the hint says to use
    http:// or --plain-http, and does not offer --ca-cert or --insecure-skip-tls-verify
    (which give the same error)."""
    r = run(["check-registry", f"https://{registry.netloc}"])
    out = r.stdout + r.stderr
    assert r.exit_code == 5, out
    errors = _errors(out)
    assert len(errors) == 1 and "plain HTTP" in errors[0], out
    hint = next(line for line in out.splitlines() if line.startswith("hint:"))
    assert f"http://{registry.netloc}" in hint and "--plain-http" in hint, out
    assert "--ca-cert" not in hint and "--insecure-skip-tls-verify" not in hint, out
    r = run(["check-registry", f"https://{registry.netloc}", "--insecure-skip-tls-verify"])
    assert r.exit_code == 5 and "--plain-http" in r.stderr, r.stderr
