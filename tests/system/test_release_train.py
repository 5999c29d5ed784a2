"""The README's release-train example runs as written: scripts/release-train, end to end."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.common import REPO

STEPS = (
    "== month 1, connected side: a full release, split for FAT32 sticks ==",
    "== month 1: check the parts right after copying to the stick ==",
    "== month 1, air-gapped side: import into the Ollama store ==",
    "== month 1, air-gapped side: replay into the team registry ==",
    "== month 1, air-gapped side: the inventory to carry back out ==",
    "== month 2, connected side: a delta against the inventory, split for FAT32 sticks ==",
    "== month 2, connected side: what the delta brings ==",
    "== month 2, air-gapped side: import into the Ollama store ==",
    "== month 2, air-gapped side: replay into the team registry ==",
    "== when a stick is bad: one byte flipped in the last data part ==",
    "== when a stick is bad: copy that one part again and check again ==",
    "== summary ==",
)


def test_release_train_runs_end_to_end(tmp_path: Path) -> None:
    r = subprocess.run([str(REPO / "scripts" / "release-train"), "--workdir", str(tmp_path / "rt")],
                       capture_output=True, text=True, timeout=600, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    for header in STEPS:
        assert header in r.stdout, header
    # the corrupted data part of month 2 is named by verify --parts-only, then copied again
    assert "models.tar.zst.002 is corrupt" in out
    assert "as expected: exit 3, naming models.tar.zst.002" in r.stdout
    assert "+ registry.ollama.ai/library/tiny-support:latest" in r.stdout  # bundle diff
    assert "OK: every model arrived in the air-gapped store and the registry" in r.stdout
    assert not (tmp_path / "rt" / "registry" / "run" / "nginx.pid").exists()  # stopped at exit
