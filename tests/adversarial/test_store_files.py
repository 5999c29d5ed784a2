"""Store files the importer and exporter open are opened without blocking or following a
link, refused unless they are regular files, and read within a bound; and a refused import
creates nothing (formats/ollama-store.md §4, §7; formats/threat-model.md T30)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.common import Keys, make_keys, run
from tests.support.scene import assert_clean_error


@pytest.mark.parametrize("how", ["untrusted", "unsigned", "tampered-head"])
def test_a_refused_import_creates_no_store(tmp_path: Path, bundle_file: Path, keys: Keys,
                                           env: dict[str, str], how: str) -> None:
    """Nothing may be created before the signature is trusted: not the store directory, not
    its lock file."""
    target = tmp_path / "new" / "models"
    trust = make_keys(tmp_path / "other").pub if how == "untrusted" else keys.pub
    src = bundle_file
    if how == "unsigned":
        src = tmp_path / "u.tar.zst"
        store = tmp_path / "store"
        assert run(["export", "--all", "--models", str(store), "--unsigned", "-o",
                    str(src)]).exit_code == 0
    elif how == "tampered-head":
        data = bytearray(bundle_file.read_bytes())
        data[200] ^= 0x01  # inside the head's first frame (members 1-4)
        src = tmp_path / "t.tar.zst"
        src.write_bytes(bytes(data))
    r = run(["import", str(src), "--models", str(target), "--trust", str(trust)])
    assert r.exit_code == 3, r.output
    assert_clean_error(r.stderr)
    assert not target.exists() and not target.parent.exists()
