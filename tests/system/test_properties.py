"""Round-trip properties on generated Ollama stores (tests/support/storegen.py, drawn by
hypothesis through tests/support/generated.py): names, namespaces, tags, blob spellings and
stray files unlike the sample store's. CI runs a few examples of each (the registry ones fewest: they push through
real servers); `scripts/fuzz --properties N` runs N of every one.

A failing example prints the store it was drawn from (`note`); hypothesis shrinks it first.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st

from bundler.reference import ModelName
from tests.support.common import Keys, rchar, run
from tests.support.generated import stores
from tests.support.servers import OllamaRegistry
from tests.support.storegen import Name, Options, StoreSpec, expected_view, ollama_view, write_store

settings.register_profile(
    "properties", deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large, HealthCheck.large_base_example])
MORE = os.environ.get("BUNDLE_PROPERTY_EXAMPLES")  # set by scripts/fuzz --properties N


def examples(ci: int, *, shrink: bool = True) -> settings:
    """The profile, with `ci` examples (CI) or BUNDLE_PROPERTY_EXAMPLES of them. Properties
    that run servers or processes per example do not shrink (it would take many minutes):
    their failing example is printed as it was drawn."""
    phases = tuple(Phase) if shrink else (Phase.explicit, Phase.reuse, Phase.generate)
    return settings(settings.get_profile("properties"), max_examples=int(MORE) if MORE else ci,
                    phases=phases)


EPOCH = "1790000000"  # one SOURCE_DATE_EPOCH: the same store and key give the same bundle
OWN_FILES = {".ollama-bundle.lock", ".ollama-bundle.releases.json"}
REGISTRY_SAFE = Options(registry_safe=True)
LARGER = Options(weights=(0, 300_000))  # several 64 KiB parts when split


@pytest.fixture
def work(tmp_path: Path, env: dict[str, str]) -> Iterator[Path]:
    """The test's directory; each example makes its own directory under it."""
    yield tmp_path


def _fresh(work: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=work))


def _ok(args: list[str], *, code: int = 0) -> Any:
    r = run([*args, "--json"], env={"SOURCE_DATE_EPOCH": EPOCH})
    assert r.exit_code == code, r.output
    return json.loads(r.stdout)


def _source(spec: StoreSpec, work: Path) -> Path:
    note(spec.describe())
    root = _fresh(work) / "src"
    write_store(spec, root)
    assert ollama_view(root) == expected_view(spec)  # the generator's own promise
    assume(spec.local_names)  # `export --all` of only remote models refuses (test_remote_models)
    return root


def _export(store: Path, out: Path, keys: Keys, *extra: str) -> Any:
    return _ok(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(out), *extra])


def _import(bundle: Path | str, target: Path, keys: Keys, *extra: str) -> Any:
    return _ok(["import", str(bundle), "--models", str(target), "--trust", str(keys.pub),
                *extra])


def assert_store_holds(target: Path, spec: StoreSpec, names: list[Name] | None = None) -> None:
    """Ollama sees exactly these models (all, or `names`), byte for byte, and the store holds
    nothing else: each referenced blob once, as sha256-<hex>, no stray file. All means every
    model `export --all` carries: remote (cloud) models are left out."""
    want = expected_view(spec, spec.local_names if names is None else names)
    assert ollama_view(target) == want
    files = {str(p.relative_to(target)) for p in target.rglob("*")
             if p.is_file() and p.name not in OWN_FILES}
    assert files == ({f"manifests/{m}" for m in want[0]}
                     | {f"blobs/sha256-{d.removeprefix('sha256:')}" for d in want[1]})


# --- store -> bundle -> store --------------------------------------------------------------


@examples(40)
@given(spec=stores())
def test_store_bundle_store_is_byte_identical(spec: StoreSpec, work: Path, keys: Keys) -> None:
    src = _source(spec, work)
    bundle = src.parent / "b.tar.zst"
    doc = _export(src, bundle, keys)
    assert sorted(m["fullName"] for m in doc["models"]) == sorted(map(str, spec.local_names))
    assert sorted(doc["remoteLeftOut"]) == sorted(
        n.shortest() for n in spec.names if spec.is_remote(n))
    assert {m["name"]: m["id"] for m in doc["models"]} == {
        n.shortest(): m["id"] for n in spec.local_names for m in doc["models"]
        if m["fullName"] == str(n)}
    target = src.parent / "target"
    _import(bundle, target, keys)
    assert_store_holds(target, spec)


# --- --only --------------------------------------------------------------------------------


@examples(25)
@given(spec=stores(), data=st.data())
def test_only_writes_exactly_that_subset(spec: StoreSpec, data: st.DataObject, work: Path,
                                         keys: Keys) -> None:
    src = _source(spec, work)
    bundle = src.parent / "b.tar.zst"
    _export(src, bundle, keys)
    names = spec.local_names
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="only")
    # Ollama's names are case-insensitive: a user may type any case, and short forms
    spelt = [data.draw(st.sampled_from(_spellings(n)), label=f"spelling of {n}") for n in chosen]
    target = src.parent / "target"
    _import(bundle, target, keys, *itertools.chain.from_iterable(("--only", s) for s in spelt))
    assert_store_holds(target, spec, chosen)


def _spellings(name: Name) -> list[str]:
    full = str(name)
    return [full, full.lower(), full.upper(), name.shortest(), name.shortest().swapcase()]


# --- delta against an inventory ------------------------------------------------------------


@examples(15)
@given(spec=stores(), data=st.data())
def test_delta_against_an_inventory_then_import_equals_the_full_import(
        spec: StoreSpec, data: st.DataObject, work: Path, keys: Keys) -> None:
    src = _source(spec, work)
    full = src.parent / "full.tar.zst"
    _export(src, full, keys)
    direct = src.parent / "direct"
    _import(full, direct, keys)
    # the far side has some of the models (maybe none), from the full bundle
    have = data.draw(st.lists(st.sampled_from(spec.local_names), unique=True),
                     label="far side has")
    far = src.parent / "far"
    far.mkdir()
    if have:
        _import(full, far, keys, *itertools.chain.from_iterable(("--only", str(n)) for n in have))
    inventory = src.parent / "far.inventory.json"
    _ok(["inventory", "--models", str(far), "-o", str(inventory)])
    delta = src.parent / "delta.tar.zst"
    _export(src, delta, keys, "--base", str(inventory))
    _import(delta, far, keys)
    assert ollama_view(far) == ollama_view(direct)
    assert_store_holds(far, spec)


# --- split + cat ---------------------------------------------------------------------------


@examples(10)
@given(spec=stores(LARGER), part=st.integers(64 * 1024, 400 * 1024))
def test_split_parts_joined_by_cat_are_the_single_file(spec: StoreSpec, part: int, work: Path,
                                                       keys: Keys) -> None:
    """The parts joined by `cat` are one valid bundle with the single file's models and
    blob frames (only the signed head differs: it lists the parts)."""
    src = _source(spec, work)
    single = src.parent / "one.tar.zst"
    _export(src, single, keys)
    out = src.parent / "parts" / "b.tar.zst"
    out.parent.mkdir()
    _export(src, out, keys, "--split", str(part))
    parts = sorted(out.parent.glob("b.tar.zst.[0-9][0-9][0-9]"))
    assert [p.name[-3:] for p in parts] == [f"{i:03d}" for i in range(1, len(parts) + 1)]
    assert all(p.stat().st_size <= part for p in parts)
    joined = src.parent / "joined.tar.zst"
    with joined.open("wb") as f:
        subprocess.run(["cat", *map(str, parts)], stdout=f, check=True)
    plain, cat = single.read_bytes(), joined.read_bytes()
    blob_frames = b"".join(p.read_bytes() for p in parts[1:-1])
    assert blob_frames and plain[len(plain) - len(blob_frames) - len(parts[-1].read_bytes()):
                                 ].startswith(blob_frames)
    assert cat.endswith(blob_frames + parts[-1].read_bytes())
    assert _ok(["verify", str(joined), "--trust", str(keys.pub)])["models"] == _ok(
        ["verify", str(single), "--trust", str(keys.pub)])["models"]
    a, b = src.parent / "a", src.parent / "b"
    _import(joined, a, keys)
    _import(single, b, keys)
    assert ollama_view(a) == ollama_view(b)
    assert_store_holds(a, spec)


# --- store -> bundle -> registry -> bundle --------------------------------------------------

_namespaces = itertools.count()


def _pushed_as(name: Name, namespace: str | None) -> tuple[str, str]:
    return (f"{(namespace or name.namespace).lower()}/{name.model.lower()}", name.tag)


@pytest.mark.parametrize("with_namespace", [True, False], ids=["URL/namespace", "URL"])
@examples(4, shrink=False)
@given(spec=stores(REGISTRY_SAFE))
def test_store_to_registry_and_back_is_the_same_bundle(
        spec: StoreSpec, with_namespace: bool, work: Path, keys: Keys,
        ollama_registry: OllamaRegistry) -> None:
    """Push through the nginx recipe, `check-registry` passes for every model, and
    `export --from-registry --mirror` writes the very bundle the store gave."""
    src = _source(spec, work)
    bundle = src.parent / "a.tar.zst"
    _export(src, bundle, keys)
    namespace = f"p{os.getpid()}n{next(_namespaces)}" if with_namespace else None
    url = ollama_registry.url + (f"/{namespace}" if namespace else "")
    pushed = _ok(["import", str(bundle), "--to-registry", url, "--trust", str(keys.pub)])
    host = ollama_registry.netloc
    want = {str(n): "{}/{}:{}".format(host, *_pushed_as(n, namespace)) for n in spec.local_names}
    assert {m["name"]: m["pushedAs"] for m in pushed["models"]} == want
    # check-registry: the namespace's tags as the registry lists them; else the models named
    models = [] if namespace else ["{}:{}".format(*_pushed_as(n, None)) for n in spec.local_names]
    checked = _ok(["check-registry", url, *models])
    assert all(c["ok"] for c in checked["checks"]), checked
    assert {c["model"] for c in checked["checks"]} == set(want.values())
    back = src.parent / "b.tar.zst"
    _ok(["export", "--from-registry", *map(str, spec.local_names), "--mirror", url, "--key",
         str(keys.key), "-o", str(back)])
    assert back.read_bytes() == bundle.read_bytes()


# --- kill -9 at a random byte, then the re-run ---------------------------------------------

# weights much larger than SLACK, so that reading a blob again, or ahead, shows
BIG = Options(weights=(1_000_000, 24_000_000), max_models=2, max_tags=2)


def _activity(pid: int) -> tuple[str, list[str]]:
    """What changes while a process works: its I/O counters and each thread's CPU time."""
    io = Path(f"/proc/{pid}/io").read_text()
    cpu = [(t / "stat").read_text().rsplit(")", 1)[1].split()[11:13]
           for t in sorted(Path(f"/proc/{pid}/task").iterdir())]
    return io, [" ".join(c) for c in cpu]


def _kill_after(bundle: Path, target: Path, keys: Keys, cut: int) -> None:
    """Feed the first `cut` bytes of the bundle to `import -` through a pipe; once it has
    taken them all and does nothing more (no I/O, no CPU time for 0.2 s: it waits for the
    rest), kill -9 it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bundler", "import", "-", "--models", str(target), "--trust",
         str(keys.pub), "-q"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH})
    assert proc.stdin is not None
    try:
        with bundle.open("rb") as f:
            proc.stdin.write(f.read(cut))
        proc.stdin.flush()
        unread = bytearray(4)
        deadline = time.monotonic() + 60
        last, still = _activity(proc.pid), 0
        while still < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
            fcntl.ioctl(proc.stdin.fileno(), termios.FIONREAD, unread)
            now = _activity(proc.pid)
            quiet = now == last and int.from_bytes(unread, sys.byteorder) == 0
            still, last = (still + 1 if quiet else 0), now
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()


@examples(3, shrink=False)
@given(spec=stores(BIG), data=st.data())
def test_kill_9_at_a_random_byte_then_rerun_ends_identical_reading_only_what_is_missing(
        spec: StoreSpec, data: st.DataObject, work: Path, keys: Keys) -> None:
    src = _source(spec, work)
    bundle = src.parent / "b.tar.zst"
    _export(src, bundle, keys)
    # (a fraction: signatures vary in length, so the size varies by a few bytes)
    share = data.draw(st.integers(0, 1000), label="kill after this many thousandths")
    cut = bundle.stat().st_size * share // 1000
    target = src.parent / "target"
    _kill_after(bundle, target, keys, cut)
    needed = expected_view(spec, spec.local_names)[1]
    blobs = target / "blobs"
    done = {d for d in needed if (blobs / f"sha256-{d[7:]}").is_file()}
    kept = {d: (blobs / f".bundle-{d[7:]}.partial").stat().st_size for d in needed
            if d not in done and (blobs / f".bundle-{d[7:]}.partial").is_file()}
    missing = sum(len(b) for d, b in needed.items() if d not in done) - sum(kept.values())
    note(f"cut {cut} of {bundle.stat().st_size}; committed {len(done)}, staged {kept}, "
         f"missing {missing} bytes")
    before = rchar()
    r = run(["import", str(bundle), "--models", str(target), "--trust", str(keys.pub),
             "--json"])
    read = rchar() - before
    assert r.exit_code == 0, r.output
    assert_store_holds(target, spec)
    assert not list(blobs.glob(".bundle-*"))
    # The bundle's head (root, signatures, index, manifests: a few KiB), the staged bytes
    # hashed once, and what was missing, read through the seek table; SLACK covers the frame
    # headers around it and what a compressed blob cut off needs again (as in test_seek:
    # less than one 1 MiB read-ahead buffer).
    head = 64 * 1024
    assert read <= head + sum(kept.values()) + missing + SLACK, (read, missing, kept)


SLACK = 256 * 1024


# --- names -----------------------------------------------------------------------------------


@examples(200)
@given(spec=stores())
def test_generated_names_read_as_ollama_reads_them(spec: StoreSpec) -> None:
    """Every name in a generated store parses back from its full spelling and from its
    manifest path, and `ollama list` shows it as Ollama's DisplayShortest would."""
    for name in spec.names:
        parsed = ModelName.parse(str(name))
        assert parsed.manifest_parts() == name.parts
        assert ModelName.from_manifest_path(name.parts) == parsed
        assert parsed.display_shortest() == name.shortest()
        assert ModelName.parse(name.shortest()).folded() == name.folded()
