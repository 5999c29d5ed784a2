"""scripts/bench --ollama runs as written, on a small model: both rows against the real Ollama,
each round's Ollama pull and push done (the bench stops on a command that fails)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.common import REPO
from tests.support.ollama import DEFAULT_VERSION


def test_bench_against_ollama_prints_both_rows(ollama_bin: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench"), "--ollama", "--size",
                        "4MiB", "--runs", "1", "--workdir", str(tmp_path / "w"), "--json",
                        str(out)], capture_output=True, text=True, check=False, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| sneakernet | `bundle import` |" in r.stdout
    assert "| push | `bundle import --to-registry` |" in r.stdout
    doc = json.loads(out.read_text())
    ops = {op["operation"]: op for op in doc["ollama"]}
    assert set(ops) == {"sneakernet", "push"}
    assert set(ops["sneakernet"]["baselines"]) == {"ollama", "ollama+sync"}
    assert set(ops["push"]["baselines"]) == {"ollama"}
    assert doc["machine"]["ollama"] == DEFAULT_VERSION.removeprefix("v")
