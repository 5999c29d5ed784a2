"""README "Verifying a bundle without this tool", run as printed: the recipe is read from
README.md at test time and run by `sh -e` in a directory holding only `models.tar.zst` and
`release.pub`, the names it uses. Its cosign variant (a comment in step 3) is run with the real
cosign that scripts/build-go-tools builds."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.common import REPO, make_keys, run, small_store, weights
from tests.support.readme import blocks

HEADING = "Verifying a bundle without this tool"


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    """A directory with `models.tar.zst` (signed) and `release.pub`, as the recipe expects."""
    store = small_store(tmp_path / "store")
    keys = make_keys(tmp_path / "keys")
    work = tmp_path / "work"
    work.mkdir()
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key),
             "-o", str(work / "models.tar.zst")], env={"BUNDLE_PASSPHRASE": ""})
    assert r.exit_code == 0, r.output
    (work / "release.pub").write_bytes(keys.pub.read_bytes())
    return work


def _recipe() -> str:
    (block,) = blocks(HEADING)
    return block


def _sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-ec", script], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}, timeout=300,
                          check=False)


def test_the_recipe_as_printed_verifies_a_signed_bundle(signed: Path) -> None:
    r = _sh(_recipe(), signed)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Verified OK"
    # step 4 prints the digest the root names and the one index.json has: the same
    assert len(lines) == 3 and lines[1] == lines[2] and re.fullmatch(r"sha256:[0-9a-f]{64}",
                                                                     lines[1]), lines


def _tampered(bundle: Path) -> None:
    """Flip one byte inside a weights blob and recompress, keeping every size: the signed root
    no longer matches that blob, and nothing else changes."""
    tar = subprocess.run(["zstd", "-dc", str(bundle)], capture_output=True, check=True).stdout
    at = tar.index(weights(300_000)[4096:4160])
    changed = tar[:at] + bytes([tar[at] ^ 0xFF]) + tar[at + 1:]
    bundle.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=changed,
                                      capture_output=True, check=True).stdout)


def test_the_recipe_as_printed_fails_on_a_tampered_blob(signed: Path) -> None:
    _tampered(signed / "models.tar.zst")
    r = _sh(_recipe(), signed)
    assert r.returncode != 0
    assert "Verified OK" in r.stdout  # the root is intact: it is the blob that differs
    assert "FAILED" in r.stdout + r.stderr


def test_the_recipe_fails_for_another_key(signed: Path, tmp_path: Path) -> None:
    other = make_keys(tmp_path / "other", "other")
    (signed / "release.pub").write_bytes(other.pub.read_bytes())
    r = _sh(_recipe(), signed)
    assert r.returncode != 0
    assert "Verified OK" not in r.stdout


def test_the_cosign_variant_of_step_3(signed: Path) -> None:
    """The comment under step 3: `cosign verify-blob` accepts the same signature."""
    step3 = re.search(r"\(or: (cosign verify-blob .*?)\)\n", _recipe(), re.DOTALL)
    assert step3, "the recipe no longer shows the cosign variant"
    variant = step3.group(1).replace("\\\n#", "\\\n")
    built = subprocess.run([str(REPO / "scripts" / "build-go-tools"), "cosign"],
                           capture_output=True, text=True, check=False,
                           stdin=subprocess.DEVNULL)
    assert built.returncode == 0, built.stderr[-3000:]
    cosign = Path(built.stdout.splitlines()[-1])
    unpack = _recipe().split("# 2.", 1)[0]  # step 1: unpack and cd into it
    keyid = _recipe().split("# 2.", 1)[1].split("\n", 2)[1]  # the KEYID= line
    script = f"{unpack}\n{keyid}\nPATH={cosign.parent}:$PATH\n{variant}\n"
    r = _sh(script, signed)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Verified OK" in r.stdout + r.stderr
