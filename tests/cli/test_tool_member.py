"""The carried tool (formats/bundle-v1.md §11): `export --with-tool` writes member 2b and the
root's `toolFile`; `ls` shows it, `verify` and `import` check it and never run it; a tampered,
missing, renamed or unlisted tool member is refused like any other change (through
`Scene.refused`: both commands, exit 3, one clean error, nothing written)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from bundler import __version__
from bundler.layout import tool_member
from bundler.reader import BundleReader
from tests.support.common import Keys, fake_pex, run, tree
from tests.support.scene import Scene
from tests.support.tar import build, regular, split
from tests.support.zstd import decompress, frames

MEMBER = tool_member(__version__)


@pytest.fixture
def tool_bundle(tmp_path: Path, store: Path, keys: Keys, env: dict[str, str]) -> Path:
    out = tmp_path / "with-tool.tar.zst"
    pex = fake_pex(tmp_path / "tool.pex")
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key),
             "--with-tool", str(pex), "-o", str(out)], env)
    assert r.exit_code == 0, r.stderr
    assert f"tool: {MEMBER}" in r.stdout
    return out


def _members(path: Path) -> list[str]:
    return [m.info.name for m in split(decompress(path.read_bytes()))]


def test_tool_member_follows_the_signatures_and_the_root_names_it(
        tool_bundle: Path, bundle_file: Path, tmp_path: Path) -> None:
    names = _members(tool_bundle)
    keyid = names[1].removeprefix("ollama-bundle/signatures/").removesuffix(".sig")
    assert names[:5] == ["ollama-bundle/root.json", f"ollama-bundle/signatures/{keyid}.sig",
                         f"ollama-bundle/cosign/{keyid}.json", MEMBER, "oci-layout"]
    members = split(decompress(tool_bundle.read_bytes()))
    root = json.loads(members[0].data)
    data = (tmp_path / "tool.pex").read_bytes()
    assert members[3].data == data
    assert root["toolFile"]["size"] == len(data) and root["toolFile"]["version"] == __version__
    # without --with-tool nothing of the kind is written (§11)
    assert MEMBER not in _members(bundle_file)
    assert b"toolFile" not in decompress(bundle_file.read_bytes())[:4096]


def test_tool_bundle_is_listed_verified_and_imported(scene: Scene, tool_bundle: Path,
                                                     env: dict[str, str]) -> None:
    r = run(["ls", str(tool_bundle)], env)
    assert r.exit_code == 0 and f"tool: {MEMBER}" in r.stdout
    listed = run(["ls", "--json", str(tool_bundle)], env)
    assert json.loads(listed.stdout)["toolFile"]["member"] == MEMBER
    v = run(scene.verify_args(tool_bundle), env)
    assert v.exit_code == 0 and f"tool {MEMBER} verified" in v.stdout, v.output
    scene.accepted(tool_bundle)
    assert not [p for p in tree(scene.target) if "pex" in p or "tool" in p]


def test_seek_table_leads_past_the_head_frames(scene: Scene, tool_bundle: Path) -> None:
    """With a tool the head is several frames; the seek table still finds every blob (§7.1),
    and `import --only` reads through it."""
    assert len(frames(tool_bundle.read_bytes())) > len(frames(scene.bundle_file.read_bytes()))
    with tool_bundle.open("rb") as f, BundleReader(f) as reader:
        head = reader.read_head([], allow_unsigned=True)
        seekable = reader.seekable()
        assert seekable is not None and set(seekable) == {b.digest for b in head.layer_blobs}
        for ref in head.layer_blobs:
            assert sum(len(v) for v in seekable[ref.digest](0)) == ref.size
    r = run(scene.import_args(tool_bundle, "--only", "tiny:chat"), scene.env)
    assert r.exit_code == 0, r.output


def _rebuilt(scene: Scene, source: Path, edit: object) -> Path:
    members = split(decompress(source.read_bytes()))
    assert callable(edit)
    return scene.write_tar(build(edit(members)))


def test_tampered_tool_is_refused(scene: Scene, tool_bundle: Path) -> None:
    def flip_tool(ms: list) -> list:  # type: ignore[type-arg]
        i = [m.info.name for m in ms].index(MEMBER)
        data = bytearray(ms[i].data)
        data[len(data) // 2] ^= 1
        ms[i] = regular(MEMBER, bytes(data))
        return ms
    err = scene.refused(_rebuilt(scene, tool_bundle, flip_tool))
    assert f"{MEMBER}: digest differs from the signed root's" in err


def test_missing_tool_is_refused(scene: Scene, tool_bundle: Path) -> None:
    err = scene.refused(_rebuilt(scene, tool_bundle,
                                 lambda ms: [m for m in ms if m.info.name != MEMBER]))
    assert f"where {MEMBER} belongs" in err


def test_renamed_tool_is_refused(scene: Scene, tool_bundle: Path) -> None:
    def rename(ms: list) -> list:  # type: ignore[type-arg]
        return [regular(tool_member("9.9.9"), m.data) if m.info.name == MEMBER else m
                for m in ms]
    err = scene.refused(_rebuilt(scene, tool_bundle, rename))
    assert f"where {MEMBER} belongs" in err


def test_unlisted_tool_member_is_refused(scene: Scene, tmp_path: Path) -> None:
    """A tool member in a bundle whose root names none: an added member, refused."""
    pex = fake_pex(tmp_path / "x.pex").read_bytes()

    def add(ms: list) -> list:  # type: ignore[type-arg]
        at = [m.info.name for m in ms].index("oci-layout")
        return [*ms[:at], regular(MEMBER, pex), *ms[at:]]
    err = scene.refused(_rebuilt(scene, scene.bundle_file, add))
    assert f"bundle member '{MEMBER}' is not listed in the signed root" in err


def test_unknown_member_under_ollama_bundle_names_a_newer_writer(scene: Scene) -> None:
    def add(ms: list) -> list:  # type: ignore[type-arg]
        at = [m.info.name for m in ms].index("oci-layout")
        return [*ms[:at], regular("ollama-bundle/sbom.json", b"{}"), *ms[at:]]
    err = scene.refused(_rebuilt(scene, scene.bundle_file, add))
    assert "is not known to this version of ollama-bundle" in err


def test_split_bundle_carries_the_tool_in_part_1(tmp_path: Path, store: Path, keys: Keys,
                                                 env: dict[str, str]) -> None:
    pex = fake_pex(tmp_path / "tool.pex", size=2_000_000)
    out = tmp_path / "split.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--key", str(keys.key),
             "--with-tool", str(pex), "--split", "1MB", "-o", str(out)], env)
    assert r.exit_code == 0, r.stderr
    first = tmp_path / "split.tar.zst.001"
    assert first.stat().st_size > 2_000_000  # the head holds the tool
    for extra in (["--parts-only"], []):
        v = run(["verify", str(first), "--trust", str(keys.pub), *extra], env)
        assert v.exit_code == 0, v.output
    target = tmp_path / "target"
    i = run(["import", str(first), "--models", str(target), "--trust", str(keys.pub)], env)
    assert i.exit_code == 0, i.output


@pytest.mark.parametrize(("make", "code", "text"), [
    (lambda p: p.write_bytes(b"#!/bin/sh\necho not a pex\n"), 2, "not a PEX file"),
    (lambda p: fake_pex(p, version="1.0/../../x"), 3, "is not 1 to 64 characters"),
    (lambda p: None, 4, "no such file"),
])
def test_with_tool_refuses_what_is_not_our_pex(tmp_path: Path, store: Path,
                                               env: dict[str, str], make: object, code: int,
                                               text: str) -> None:
    pex = tmp_path / "tool.pex"
    assert callable(make)
    make(pex)
    out = tmp_path / "b.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--unsigned", "--with-tool", str(pex),
             "-o", str(out)], env)
    assert r.exit_code == code and text in r.stderr, r.output
    assert not out.exists()


def test_with_tool_without_a_pex_says_how_to_build_one(tmp_path: Path, store: Path,
                                                       env: dict[str, str]) -> None:
    """No $PEX and no dist/ PEX beside the source: a clear error, not a guess."""
    dist = Path(__file__).resolve().parents[2] / "dist" / f"ollama-bundle-{__version__}.pex"
    if dist.exists():
        pytest.skip("dist/ holds a built PEX, which is then the default")
    r = run(["export", "--all", "--models", str(store), "--unsigned", "--with-tool",
             "-o", str(tmp_path / "b.tar.zst")], {**env, "PEX": ""})
    assert r.exit_code == 4 and "scripts/build-pex" in r.stderr, r.output


def test_with_tool_defaults_to_the_running_pex(tmp_path: Path, store: Path,
                                               env: dict[str, str]) -> None:
    pex = fake_pex(tmp_path / "running.pex")
    out = tmp_path / "b.tar.zst"
    r = run(["export", "--all", "--models", str(store), "--unsigned", "--with-tool",
             "-o", str(out)], {**env, "PEX": str(pex)})
    assert r.exit_code == 0, r.output
    members = split(decompress(out.read_bytes()))
    assert [m.data for m in members if m.info.name == MEMBER] == [pex.read_bytes()]


def test_tool_member_is_stored_executable(tool_bundle: Path, tmp_path: Path) -> None:
    """Member 2b has mode 0755 (formats/bundle-v1.md §3), so `tar -x` gives a file that runs;
    every other member stays 0644."""
    with tarfile.open(fileobj=io.BytesIO(decompress(tool_bundle.read_bytes()))) as tf:
        modes = {m.name: m.mode for m in tf.getmembers()}
    assert modes.pop(MEMBER) == 0o755
    assert set(modes.values()) == {0o644}
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(tool_bundle), "-C", str(out), MEMBER],
                   check=True)
    assert (out / MEMBER).stat().st_mode & 0o777 == 0o755


def _tool_mode(mode: int) -> object:
    def edit(ms: list) -> list:  # type: ignore[type-arg]
        i = [m.info.name for m in ms].index(MEMBER)
        ms[i] = regular(MEMBER, ms[i].data, mode=mode)
        return ms
    return edit


def test_tool_member_of_an_older_writer_at_0644_is_accepted(scene: Scene,
                                                           tool_bundle: Path) -> None:
    """Writers before the executable tool member stored it 0644: readers accept that mode
    for member 2b (formats/bundle-v1.md §3), and only that one besides 0755."""
    scene.accepted(_rebuilt(scene, tool_bundle, _tool_mode(0o644)))


@pytest.mark.parametrize("mode", [0o777, 0o4755, 0o700, 0o744])
def test_tool_member_with_another_mode_is_refused(scene: Scene, tool_bundle: Path,
                                                  mode: int) -> None:
    err = scene.refused(_rebuilt(scene, tool_bundle, _tool_mode(mode)))
    assert f"bundle member '{MEMBER}': tar header differs from the canonical one" in err


def test_other_members_at_0755_are_refused(scene: Scene, tool_bundle: Path) -> None:
    def edit(ms: list) -> list:  # type: ignore[type-arg]
        i = [m.info.name for m in ms].index("index.json")
        ms[i] = regular("index.json", ms[i].data, mode=0o755)
        return ms
    err = scene.refused(_rebuilt(scene, tool_bundle, edit))
    assert "bundle member 'index.json': tar header differs" in err


@pytest.mark.parametrize("args", [
    ["--with-tool", "tiny"],  # meant: the default tool, then the model tiny
    ["tiny", "--with-tool", "tiny:chat"],
    ["tiny", "--with-tool", "tool.zip"],
])
def test_with_tool_value_that_is_not_a_pex_name_is_refused(tmp_path: Path, store: Path,
                                                           env: dict[str, str],
                                                           args: list[str]) -> None:
    """`--with-tool [FILE]` takes a value only when it names a .pex file: a model name after
    it is not taken for the tool file, it is refused with the way to say it."""
    (tmp_path / "tool.zip").write_bytes(fake_pex(tmp_path / "t.pex").read_bytes())
    out = tmp_path / "b.tar.zst"
    r = run(["export", *args, "--models", str(store), "--unsigned", "-o", str(out)],
            {**env, "PEX": str(fake_pex(tmp_path / "running.pex"))})
    value = args[args.index("--with-tool") + 1]
    assert r.exit_code == 2, r.output
    assert f"--with-tool {value}: FILE must be a PEX file named *.pex" in r.stderr, r.stderr
    assert "put --with-tool after the model names" in r.stderr
    assert not out.exists()


def test_with_tool_before_the_models_takes_a_pex(tmp_path: Path, store: Path,
                                                 env: dict[str, str]) -> None:
    pex = fake_pex(tmp_path / "tool.pex")
    out = tmp_path / "b.tar.zst"
    r = run(["export", "--with-tool", str(pex), "tiny", "--models", str(store), "--unsigned",
             "-o", str(out)], env)
    assert r.exit_code == 0, r.output
    assert [m.data for m in split(decompress(out.read_bytes())) if m.info.name == MEMBER] \
        == [pex.read_bytes()]
