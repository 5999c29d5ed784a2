"""The README's first command and the benchmark's smoke mode run as written; every Python script
is linted and type-checked."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
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


def test_every_python_script_is_linted_and_type_checked() -> None:
    """scripts/test runs `ruff check .` and `mypy` from pyproject.toml alone, and the scripts
    have no .py suffix: each one with a python shebang must be named in both lists."""
    shebangs = {p.name: p.read_bytes().split(b"\n", 1)[0]
                for p in (REPO / "scripts").iterdir() if p.is_file()}
    python_scripts = {f"scripts/{name}" for name, line in shebangs.items()
                      if line.startswith(b"#!") and b"python" in line}
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    ruff = {f for f in config["tool"]["ruff"]["extend-include"] if f.startswith("scripts/")}
    mypy = {f for f in config["tool"]["mypy"]["files"] if f.startswith("scripts/")}
    assert {"scripts/bench", "scripts/make-sample-store"} <= python_scripts
    assert ruff == python_scripts, "list them in [tool.ruff] extend-include"
    # a .py file (the PEX's preamble) ruff finds by itself, mypy only when named
    modules = {f"scripts/{name}" for name in shebangs if name.endswith(".py")}
    assert mypy == python_scripts | modules, "list them in [tool.mypy] files"
    assert config["tool"]["mypy"]["scripts_are_modules"] is True


def test_make_tiny_gguf_is_small_and_the_same_every_time(tmp_path: Path) -> None:
    """The real-Ollama tests' model (tests/ollama runs it): a llama GGUF well under 1 MB, the
    same bytes for the same seed, another for another seed."""
    import gguf

    script = str(REPO / "scripts" / "make-tiny-gguf")
    outs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        subprocess.run([sys.executable, script, str(tmp_path / name), "--seed", seed], check=True,
                       capture_output=True)
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] != outs[2]
    assert len(outs[0]) < 512 * 1024
    reader = gguf.GGUFReader(tmp_path / "a")
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]) == b"llama"
    assert "token_embd.weight" in {t.name for t in reader.tensors}
