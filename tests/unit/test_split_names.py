"""bundler/split.py: the names of a split bundle's files (formats/bundle-v1.md §10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.split import part_paths, parts_beside, sidecar_name


def test_part_paths_name_the_parts_beside_part_one(tmp_path: Path) -> None:
    first = tmp_path / "b.tar.zst.001"
    assert part_paths(first, 3) == [tmp_path / "b.tar.zst.001", tmp_path / "b.tar.zst.002",
                                    tmp_path / "b.tar.zst.003"]
    assert part_paths(first, 1001)[-1] == tmp_path / "b.tar.zst.1001"
    assert part_paths(first, 0) == []


@pytest.mark.parametrize("name", ["b.tar.zst", "b.tar.zst.002", "b.tar.zst.01"])
def test_part_paths_want_part_one(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"NAME\.001"):
        part_paths(tmp_path / name, 2)


def test_parts_beside_lists_only_this_bundles_parts(tmp_path: Path) -> None:
    names = ["b.001", "b.002", "b.1000", "b.01", "b.001.par2", "b.001.002", "bb.003", "c.001",
             sidecar_name("b"), "b.[0-9].001"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert parts_beside(tmp_path / "b.001") == [tmp_path / "b.001", tmp_path / "b.002",
                                                tmp_path / "b.1000"]
    assert parts_beside(tmp_path / "b.[0-9].001") == [tmp_path / "b.[0-9].001"]
