"""The README's first command and the benchmark's smoke mode run as written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.common import REPO


def test_demo_runs_and_ids_match(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_SIZE": "1MiB"}
    r = subprocess.run([str(REPO / "scripts" / "demo"), str(tmp_path / "demo")], env=env,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: every manifest and blob arrived byte for byte" in r.stdout
    assert r.stdout.count(" same") == 4 and "DIFFERENT" not in r.stdout


def test_bench_quick_prints_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "bench"),
                        "--quick", "--workdir", str(tmp_path / "w"), "--json", str(out)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    for op in ("export", "import", "verify"):
        assert f"| {op} | quantized |" in r.stdout and f"| {op} | random |" in r.stdout
    assert out.stat().st_size > 0
