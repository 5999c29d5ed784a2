"""scripts/bench --serve runs as written, on a small model: the real `ollama pull --insecure`
from `bundle serve` and from the recipe, one puller and eight at once, each row with numbers,
and the server's peak RSS (the bench stops on a pull that fails or stores a short blob)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.support.common import REPO
from tests.support.ollama import DEFAULT_VERSION


def test_bench_serve_prints_both_rows(ollama_bin: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench"), "--serve", "--size",
                        "4MiB", "--runs", "1", "--workdir", str(tmp_path / "w"), "--json",
                        str(out)], capture_output=True, text=True, check=False, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    number = r"[\d,]+"
    ratio = r"\d+\.\d\d [✅❌]"
    for pulls in ("1", "8 at once"):
        assert re.search(rf"^\| {pulls} \| {number} \| {number} \| {ratio} \|", r.stdout,
                         re.MULTILINE), r.stdout
    assert re.search(r"Peak RSS of `bundle serve` .*: \d+ MiB", r.stdout), r.stdout
    doc = json.loads(out.read_text())
    ops = {op["operation"]: op for op in doc["serve"]}
    assert set(ops) == {"pull", "pull x8"}
    assert ops["pull"]["pullers"] == 1
    assert ops["pull x8"]["pullers"] == 8
    for op in ops.values():
        assert op["ratio"] > 0
        for run in [*op["ours"], *op["recipe"]]:
            assert run["wall"] > 0
            assert set(run["cpu_of"]) == {"server", "pullers"}
    assert doc["bundle_serve"]["peak_rss_mib"] > 0
    assert doc["bundle_serve"]["cpu"] > 0
    assert doc["machine"]["ollama"] == DEFAULT_VERSION.removeprefix("v")
