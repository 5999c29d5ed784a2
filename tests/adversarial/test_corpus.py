"""The checked-in corpus of hostile bundles (tests/corpus/, written by
scripts/make-hostile-corpus; tests/corpus/README.md says what each case attacks).

Every case goes through `Scene.refused` (tests/support/scene.py), trusting tests/corpus/corpus.pub:
`verify` and `import` into a store that already holds models both exit with the case's
`expect_exit`, print exactly one `error:` line and no traceback, and change nothing in the
target store, beside it (a sentinel file) or at a few paths outside it. The base bundle the
cases are made from imports cleanly, and the generator, run again, writes the same bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bundler import signing
from tests.support.common import REPO, Keys, tree
from tests.support.scene import Scene

CORPUS = REPO / "tests" / "corpus"
GENERATOR = REPO / "scripts" / "make-hostile-corpus"
BASE = "base.tar.zst"
FIXED = ("README.md", "base.tar.zst", "cases.json", "corpus.key", "corpus.pub")
MAX_TOTAL_BYTES = 2 * 1024 * 1024


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((CORPUS / "cases.json").read_text())
    return cases


def _params() -> Iterator[Any]:
    for case in _cases():
        marks = ([pytest.mark.xfail(strict=True, reason=case.get("note", "known bug"))]
                 if case.get("known_bug") else [])
        yield pytest.param(case, id=case["file"].removesuffix(".tar.zst"), marks=marks)


@pytest.fixture
def corpus_scene(tmp_path: Path, env: dict[str, str],
                 monkeypatch: pytest.MonkeyPatch) -> Scene:
    """A target store with other models; the corpus key trusted on the command line."""
    pub = CORPUS / "corpus.pub"
    keys = Keys(CORPUS / "corpus.key", pub, signing.read_public(pub).keyid)
    scene = Scene(tmp_path, tmp_path / "target", keys, env, CORPUS / BASE)
    monkeypatch.chdir(tmp_path / "cwd")
    return scene


@pytest.mark.parametrize("case", list(_params()))
def test_case_is_refused(corpus_scene: Scene, case: dict[str, Any]) -> None:
    assert case["expect_exit"] in (1, 3), case
    source = CORPUS / case["file"]
    data = source.read_bytes()
    # a copy beside the target, so that anything written next to the bundle is seen too
    path = corpus_scene.write(data, case["file"])
    corpus_scene.refused(path, code=case["expect_exit"])
    assert path.read_bytes() == data
    assert source.read_bytes() == data


def test_base_bundle_imports(corpus_scene: Scene) -> None:
    """Control: the bundle every case is crafted from is accepted, and its models land."""
    before = tree(corpus_scene.target)
    path = corpus_scene.write((CORPUS / BASE).read_bytes(), BASE)
    corpus_scene.accepted(path)
    after = tree(corpus_scene.target)
    other = "manifests/registry.ollama.ai/library/other/latest"
    assert after[other] == before[other]
    for tag in ("latest", "chat"):
        manifest_path = corpus_scene.target / "manifests/registry.ollama.ai/library/tiny" / tag
        manifest = json.loads(manifest_path.read_bytes())
        for d in [manifest["config"], *manifest["layers"]]:
            blob = corpus_scene.target / "blobs" / f"sha256-{d['digest'][7:]}"
            assert blob.stat().st_size == d["size"]
    assert after["manifests/registry.ollama.ai/library/tiny/latest"] != \
        before["manifests/registry.ollama.ai/library/tiny/latest"]


def test_cases_json_lists_every_file() -> None:
    cases = _cases()
    listed = [c["file"] for c in cases]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in CORPUS.iterdir() if p.is_file()}
    assert on_disk == set(listed) | set(FIXED)
    readme = (CORPUS / "README.md").read_text()
    for case in cases:
        assert case["attacks"].strip(), case
        assert f"`{case['file']}`" in readme, case["file"]
        assert set(case) <= {"file", "attacks", "expect_exit", "known_bug", "note"}, case
    assert sum((CORPUS / name).stat().st_size for name in on_disk) < MAX_TOTAL_BYTES


def test_generator_rewrites_the_same_bytes(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    r = subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)],
                       capture_output=True, text=True, check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    made = {p.name for p in out.iterdir()}
    checked_in = {p.name for p in CORPUS.iterdir() if p.is_file()}
    assert made == checked_in, (sorted(made - checked_in), sorted(checked_in - made))
    differ = [name for name in sorted(made)
              if (out / name).read_bytes() != (CORPUS / name).read_bytes()]
    assert not differ, f"run scripts/make-hostile-corpus and commit tests/corpus: {differ}"
    assert (out / "corpus.key").stat().st_mode & 0o777 == 0o600
