"""The air-gapped side for real: the PEX that scripts/build-pex makes, carried inside a bundle,
and the wheelhouse kit of scripts/build-kit, run in a network namespace with no network at all
(only a loopback that is down), with `python3 -I` and an empty, read-only HOME.

The builds need the package index, so they run once per session outside the namespace."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from bundler import __version__
from tests.support.common import REPO, fake_pex, make_keys, tree
from tests.support.hostile import TOOL_DECOYS
from tests.support.readme import blocks, substitute
from tests.support.scene import Bundle
from tests.support.tar import build
from tests.support.zstd import compress

PYTHON = Path(sys.base_prefix) / "bin" / "python3"  # a stock interpreter, not our venv
TOOL_MEMBER = f"ollama-bundle/tool/ollama-bundle-{__version__}.pex"
FIRST_TIME = "First time on the air-gapped side"


@dataclass(frozen=True)
class Built:
    pex: Path
    pex_again: Path
    kit: Path


def _build(script: str, out: Path) -> None:
    r = subprocess.run([str(REPO / "scripts" / script), "-o", str(out)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    d = tmp_path_factory.mktemp("offline-build")
    _build("build-pex", d / "first.pex")
    _build("build-pex", d / "second.pex")
    _build("build-kit", d / "kit.tar")
    yield Built(d / "first.pex", d / "second.pex", d / "kit.tar")


def offline(script: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run `script` (sh) in new network and mount namespaces: no interface but a loopback,
    HOME an empty read-only tmpfs, an environment of PATH, HOME and LANG only."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    prelude = (f"set -eu; mount -t tmpfs -o ro,size=64k tmpfs {home}; cd {workdir}; "
               # prove it: no network interface but lo, and HOME cannot be written
               "[ \"$(awk 'NR > 2 {print $1}' /proc/net/dev)\" = lo: ] "
               "|| { echo 'network present' >&2; exit 99; }; "
               "! touch \"$HOME/x\" 2>/dev/null || { echo 'HOME writable' >&2; exit 99; }; ")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(["unshare", "--net", "--mount", "sh", "-c", prelude + script],
                          env=env, capture_output=True, text=True, check=False, timeout=600)


def _sh(args: Sequence[str | Path]) -> str:
    return " ".join("'" + str(a).replace("'", "'\\''") + "'" for a in args)


@pytest.fixture
def signed_bundle(tmp_path: Path, built: Built) -> tuple[Path, Path, Path]:
    """A store, a key pair and a signed bundle of the store carrying the PEX."""
    store = tmp_path / "store"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-sample-store"), str(store),
                    "--size", "1MiB"], check=True, capture_output=True)
    keys = make_keys(tmp_path / "keys")
    bundle = tmp_path / "models.tar.zst"
    r = subprocess.run([sys.executable, "-m", "bundler", "export", "--all", "--models",
                        str(store), "--key", str(keys.key), "--with-tool", str(built.pex),
                        "-o", str(bundle)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return store, keys.pub, bundle


def test_pex_builds_are_byte_identical(built: Built) -> None:
    first, second = built.pex.read_bytes(), built.pex_again.read_bytes()
    assert len(first) > 1_000_000 and first == second


def test_pex_carries_every_target(built: Built) -> None:
    import zipfile

    with zipfile.ZipFile(built.pex) as z:
        wheels = json.loads(z.read("PEX-INFO"))["distributions"]
    for name in ("zstandard", "cffi"):
        for py in ("cp311", "cp312", "cp313"):
            for arch in ("x86_64", "aarch64"):
                assert any(w.startswith(f"{name}-") and f"-{py}-" in w and w.endswith(
                    f"{arch}.whl") for w in wheels), (name, py, arch)
    for arch in ("x86_64", "aarch64"):  # one abi3 wheel serves every version
        assert any(w.startswith("cryptography-") and "abi3-manylinux_2_28_" in w
                   and w.endswith(f"{arch}.whl") for w in wheels), arch


def _first_time(work: Path, models: Path, keep: Path) -> str:
    """README "First time on the air-gapped side" as printed, run in `work` (which holds
    models.tar.zst and release.pub), importing into `models` and installing into `keep`."""
    (block,) = blocks(FIRST_TIME)
    return substitute(block, {"/usr/share/ollama/.ollama/models": str(models),
                              "/usr/local/bin/ollama-bundle": str(keep)})


def test_first_time_recipe_as_printed_imports_offline(
        tmp_path: Path, signed_bundle: tuple[Path, Path, Path]) -> None:
    store, public, bundle = signed_bundle
    work = tmp_path / "airgap"
    (work / "bin").mkdir(parents=True)
    shutil.copy(bundle, work / "models.tar.zst")
    shutil.copy(public, work / "release.pub")
    keep = work / "bin" / "ollama-bundle"
    script = _first_time(work, work / "imported", keep) + f"\n{_sh([keep])} --version\n"
    r = offline(script, work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Verified OK" in r.stdout and f"tool OK: ollama-bundle {__version__}" in r.stdout
    assert "(trusted)" in r.stdout and " new " in r.stdout  # the import ran
    assert tree(work / "imported") == tree(store)
    assert keep.stat().st_mode & 0o777 == 0o755
    assert r.stdout.rstrip().endswith(f"ollama-bundle, version {__version__}")  # ./FILE runs


# README "First time on the air-gapped side" as it was printed before the recipe took the
# tool's name from the signed root: the name came from the archive (`ls`), the check from
# `sha256sum -c` reading that name back.
OLD_RECIPE = """\
KEYID=$(openssl pkey -pubin -in release.pub -outform DER | sha256sum | cut -c1-64)
tar --zstd -xf models.tar.zst --occurrence ollama-bundle/root.json \\
    "ollama-bundle/signatures/$KEYID.sig" ollama-bundle/tool/
base64 -d "ollama-bundle/signatures/$KEYID.sig" > root.sig.der
openssl dgst -sha256 -verify release.pub -signature root.sig.der ollama-bundle/root.json
grep -o '"toolFile":{[^}]*}' ollama-bundle/root.json    # digest, size, version
TOOL=$(ls ollama-bundle/tool/ollama-bundle-*.pex)
echo "$(grep -o '"toolFile":{[^}]*}' ollama-bundle/root.json | grep -o 'sha256:[0-9a-f]*' \\
    | cut -c8-)  $TOOL" | sha256sum -c                  # -> ...pex: OK
python3.11 "$TOOL" import models.tar.zst --trust release.pub \\
    --models /usr/share/ollama/.ollama/models
"""
# What the attacker wants run: as sh and as Python alike, it leaves PWNED and prints what the
# real tool prints.
PAYLOAD = f"""#!/bin/sh
\"\"\"true"
touch PWNED; echo "tool {TOOL_MEMBER} verified"; exit 0
\"\"\"
import pathlib; pathlib.Path("PWNED").touch(); print("tool {TOOL_MEMBER} verified")
""".encode()
GENUINE = b"#!/bin/sh\necho 'the genuine tool ran'; exit 0\n"  # before the zip, as in a PEX


@pytest.fixture
def decoy_base(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A signed bundle carrying a stand-in tool that, run, only says so; its public key."""
    store = tmp_path / "store"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-sample-store"), str(store),
                    "--size", "64KiB"], check=True, capture_output=True)
    keys = make_keys(tmp_path / "keys")
    tool = tmp_path / "genuine.pex"
    tool.write_bytes(GENUINE + fake_pex(tmp_path / "zip.pex", size=20_000).read_bytes())
    bundle = tmp_path / "genuine.tar.zst"
    r = subprocess.run([sys.executable, "-m", "bundler", "export", "--all", "--models",
                        str(store), "--key", str(keys.key), "--with-tool", str(tool),
                        "-o", str(bundle)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return bundle, keys.pub, tool.read_bytes()


def _decoy(tmp_path: Path, base: tuple[Path, Path, bytes], tag: str, where: str) -> Path:
    """A directory holding models.tar.zst, crafted by TOOL_DECOYS[tag], and release.pub."""
    bundle, public, _ = base
    work = tmp_path / where
    work.mkdir()
    make = TOOL_DECOYS[tag][0]
    (work / "models.tar.zst").write_bytes(
        compress(build(make(Bundle.load(bundle), TOOL_MEMBER, PAYLOAD))))
    shutil.copy(public, work / "release.pub")
    return work


def test_decoy_fools_the_old_recipe(tmp_path: Path,
                                    decoy_base: tuple[Path, Path, bytes]) -> None:
    """The recipe this README printed before ran the attacker's file, with every step
    printing what the README said it prints."""
    work = _decoy(tmp_path, decoy_base, "invisible-and-newline", "old")
    r = offline(substitute(OLD_RECIPE, {"/usr/share/ollama/.ollama/models": "imported"}), work)
    assert (work / "PWNED").exists(), r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Verified OK" and lines[2].endswith("pex\u200b: OK"), lines
    assert lines[3] == f"tool {TOOL_MEMBER} verified" and r.returncode == 0, r.stderr


def test_forged_root_fools_the_old_recipe_pasted_whole(
        tmp_path: Path, decoy_base: tuple[Path, Path, bytes]) -> None:
    work = _decoy(tmp_path, decoy_base, "forged-root", "old")
    r = offline("set +e\n" + substitute(OLD_RECIPE, {"/usr/share/ollama/.ollama/models":
                                                     "imported"}), work)
    assert "Verification failure" in r.stdout + r.stderr and ": OK" in r.stdout
    assert (work / "PWNED").exists(), r.stdout + r.stderr


@pytest.mark.parametrize("tag", sorted(TOOL_DECOYS))
def test_first_time_recipe_never_runs_a_decoy(tmp_path: Path,
                                              decoy_base: tuple[Path, Path, bytes],
                                              tag: str) -> None:
    """The README's recipe as printed, every line run even after one fails (as when pasted
    whole): it runs the genuine tool or nothing."""
    _, _, genuine = decoy_base
    work = _decoy(tmp_path, decoy_base, tag, "new")
    r = offline("set +e\n" + _first_time(work, work / "imported", work / "kept"), work)
    out = r.stdout + r.stderr
    assert not list(work.rglob("PWNED")) and "PWNED" not in out, out
    kept = work / "first-import" / "ollama-bundle.pex"
    if TOOL_DECOYS[tag][2]:  # the genuine tool is there under its name: that one is run
        assert f"tool OK: ollama-bundle {__version__}" in r.stdout, out
        assert kept.read_bytes() == genuine and "the genuine tool ran" in r.stdout, out
    else:
        assert "NOT the tool the root names: do not run it" in r.stdout, out
        assert "tool OK" not in r.stdout and not kept.exists(), out
        assert "the genuine tool ran" not in r.stdout


def test_kit_installs_offline_and_verifies(tmp_path: Path, built: Built,
                                           signed_bundle: tuple[Path, Path, Path]) -> None:
    _, public, bundle = signed_bundle
    work = tmp_path / "airgap"
    work.mkdir()
    kit = f"ollama-bundle-{__version__}-kit"
    script = (f"tar -xf {_sh([built.kit])}; "
              f"PYTHON={_sh([PYTHON])} ./{kit}/install.sh venv; "
              f"venv/bin/bundle verify --trust {_sh([public])} {_sh([bundle])}; echo DONE")
    r = offline(script, work)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("DONE"), r.stdout + r.stderr
    assert "OK " in r.stdout and "tool " in r.stdout


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_pex_runs_on_other_pythons(tmp_path: Path, built: Built, version: str) -> None:
    """The other x86_64 targets, where this machine has those interpreters."""
    candidates: list[str | Path | None] = [shutil.which(f"python{version}")]
    if pyenv := shutil.which("pyenv"):  # pyenv's shims answer only for its global versions
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        candidates += sorted(Path(root.stdout.strip()).glob(f"versions/{version}.*/bin/"
                                                             f"python{version}"))
    python = next((str(c) for c in candidates if c and subprocess.run(
        [str(c), "-c", ""], capture_output=True, check=False).returncode == 0), None)
    if python is None:
        pytest.skip(f"no python{version} here")
    r = offline(f"{_sh([python])} -I {_sh([built.pex])} --version", tmp_path)
    assert r.returncode == 0 and __version__ in r.stdout, r.stdout + r.stderr
    # README step 5: `sh FILE` finds it when it is the only one on PATH
    real = subprocess.run([python, "-c", "import sys; print(sys.executable)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    only = tmp_path / "only"
    only.mkdir()
    (only / f"python{version}").symlink_to(real)
    r = offline(f"PATH={_sh([only])} /bin/sh {_sh([built.pex])} --version", tmp_path)
    assert r.returncode == 0 and __version__ in r.stdout, r.stdout + r.stderr


def test_tool_digest_is_the_roots(tmp_path: Path, built: Built,
                                  signed_bundle: tuple[Path, Path, Path]) -> None:
    """What export wrote into the root is the built file's sha256 and size."""
    _, _, bundle = signed_bundle
    subprocess.run(["tar", "--zstd", "-xf", str(bundle), "-C", str(tmp_path),
                    "ollama-bundle/root.json"], check=True)
    root = json.loads((tmp_path / "ollama-bundle" / "root.json").read_bytes())
    data = built.pex.read_bytes()
    assert root["toolFile"] == {"digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                                "size": len(data), "version": __version__}


def test_read_only_home_warns_once(tmp_path: Path, built: Built) -> None:
    """Under a read-only HOME pex unpacks into a temporary root and says so: once, although
    it runs itself again from the unpacked copy (scripts/pex_preamble.py)."""
    r = offline(f"{_sh([PYTHON])} -I {_sh([built.pex])} --version", tmp_path)
    assert r.returncode == 0 and __version__ in r.stdout, r.stdout + r.stderr
    assert r.stderr.count("PEX_ROOT is configured as") == 1, r.stderr
    assert "falling back to a temporary PEX_ROOT" in r.stderr
