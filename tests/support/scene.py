"""A bundle taken apart (`Bundle`: members, documents, re-signing) and the scene of a
hostile-archive or tamper test (`Scene`, the `scene` fixture): a target store with content,
and everything around it watched.

Nothing here uses bundler's own archive code: the tar stream is split with `tarfile`, rebuilt
from headers made by `TarInfo.tobuf` (or by hand, tests/support/tar.py), and (de)compressed
with `zstandard` directly (tests/support/zstd.py), so a bug in bundler/archive.py cannot hide
itself by being used on both sides.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bundler import cosign, signing
from bundler.export import registry_signatures
from bundler.layout import Model, signature_member
from bundler.oci import ANNOTATION_REF_NAME, Manifest, canonical_json
from bundler.reference import ModelName
from tests.support.common import MODEL, TEMPLATE, Keys, make_model, run, tree, weights
from tests.support.tar import EOA, Member, blob_name, build, regular, sha256_hex, split
from tests.support.zstd import compress, decompress

ROOT = "ollama-bundle/root.json"
OCI_LAYOUT = "oci-layout"
INDEX = "index.json"
SIG_PREFIX = "ollama-bundle/signatures/"
LOCK = ".ollama-bundle.lock"

# ---------------------------------------------------------------------------------------------
# A bundle taken apart


@dataclass
class Bundle:
    """A bundle's members, with what each blob is (from the bundle's own documents)."""

    members: list[Member]

    @classmethod
    def load(cls, path: Path) -> Bundle:
        return cls(split(decompress(path.read_bytes())))

    def copy(self) -> Bundle:
        return Bundle([m.copy() for m in self.members])

    def tar(self, *, end: bytes = EOA) -> bytes:
        return build(self.members, end=end)

    def compressed(self, *, end: bytes = EOA) -> bytes:
        return compress(self.tar(end=end))

    def pos(self, name: str) -> int:
        return [m.name for m in self.members].index(name)

    def member(self, name: str) -> Member:
        return self.members[self.pos(name)]

    @property
    def root(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.member(ROOT).data)
        return obj

    @property
    def index(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.member(INDEX).data)
        return obj

    @property
    def signature_positions(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if m.name.startswith(SIG_PREFIX)]

    @property
    def first_blob(self) -> int:
        return self.pos(INDEX) + 1

    def manifests(self) -> list[dict[str, Any]]:
        digests = dict.fromkeys(d["digest"] for d in self.index["manifests"])
        return [json.loads(self.member(f"blobs/sha256/{d[7:]}").data) for d in digests]

    def kind(self, kind: str) -> int:
        """Position of a member of a kind: root, signature, oci-layout, index.json, manifest,
        manifest2, config, template, weights (the biggest blob), last (the last member)."""
        if kind == "root":
            return self.pos(ROOT)
        if kind == "signature":
            return self.signature_positions[0]
        if kind == "cosign":
            return next(i for i, m in enumerate(self.members) if cosign.member_keyid(m.name))
        if kind in (OCI_LAYOUT, INDEX):
            return self.pos(kind)
        if kind == "manifest":
            return self.first_blob
        if kind == "manifest2":
            return self.first_blob + 1
        manifests = self.manifests()
        if kind == "config":
            return self.pos(f"blobs/sha256/{manifests[0]['config']['digest'][7:]}")
        if kind == "template":
            layer = next(la for m in manifests for la in m["layers"]
                         if la["mediaType"] == TEMPLATE)
            return self.pos(f"blobs/sha256/{layer['digest'][7:]}")
        if kind == "weights":
            blobs = range(self.first_blob, len(self.members))
            return max(blobs, key=lambda i: len(self.members[i].data))
        if kind == "last":
            return len(self.members) - 1
        raise ValueError(kind)

    # -- rewriting signed documents --------------------------------------------------------

    def set_root(self, root_bytes: bytes, *, sign_with: signing.PrivateKey | None) -> None:
        """Replace root.json; re-sign it (replacing every signature) or keep the old ones."""
        self.members[self.pos(ROOT)] = regular(ROOT, root_bytes)
        if sign_with is not None:
            for i in reversed(self.signature_positions):
                del self.members[i]
            sig = regular(signature_member(sign_with.public.keyid),
                          signing.sign(sign_with, root_bytes))
            self.members.insert(self.pos(ROOT) + 1, sig)

    def set_root_obj(self, root: Mapping[str, Any], *,
                     sign_with: signing.PrivateKey | None) -> None:
        """Replace root.json; when re-signing, the signer's cosign document is made anew for
        the models as they now are (a consistent rewrite by the key holder)."""
        if sign_with is not None and "cosign" in root:
            with contextlib.suppress(Exception):
                # an index or manifest too hostile to sign for keeps the old document
                root = {**root, "cosign": self._resign_cosign(sign_with)}
        self.set_root(canonical_json(root) + b"\n", sign_with=sign_with)

    def _resign_cosign(self, key: signing.PrivateKey) -> list[dict[str, Any]]:
        models = [Model(ModelName.parse(d["annotations"][ANNOTATION_REF_NAME]), Manifest.parse(
            self.member(f"blobs/sha256/{d['digest'][7:]}").data, "manifest"))
            for d in self.index["manifests"]]
        ((keyid, doc),) = registry_signatures(models, [key])
        for i in reversed([i for i, m in enumerate(self.members)
                           if cosign.member_keyid(m.name)]):
            del self.members[i]
        self.members.insert(self.pos(ROOT) + 1, regular(cosign.member(keyid), doc))
        return [{"digest": f"sha256:{sha256_hex(doc)}", "keyid": keyid, "size": len(doc)}]

    def set_index(self, index_bytes: bytes, *, sign_with: signing.PrivateKey | None) -> None:
        """Replace index.json and the root's reference to it."""
        self.members[self.pos(INDEX)] = regular(INDEX, index_bytes)
        root = self.root
        root["index"] = {"digest": f"sha256:{sha256_hex(index_bytes)}",
                         "size": len(index_bytes)}
        self.set_root_obj(root, sign_with=sign_with)

    def replace_blob(self, old: bytes, new: bytes, *,
                     sign_with: signing.PrivateKey | None) -> None:
        """Swap a config or layer for other bytes and rewrite, consistently, every manifest
        that names it, index.json and the root: only the signature can tell."""
        old_d, new_d = f"sha256:{sha256_hex(old)}", f"sha256:{sha256_hex(new)}"
        i = self.pos(blob_name(old))
        self.members[i] = regular(blob_name(new), new)
        renamed: dict[str, tuple[str, int]] = {}
        n_manifests = len({d["digest"] for d in self.index["manifests"]})
        for j in range(self.first_blob, self.first_blob + n_manifests):
            m = self.members[j]
            manifest = json.loads(m.data)
            touched = False
            for d in [manifest["config"], *manifest["layers"]]:
                if d["digest"] == old_d:
                    d["digest"], d["size"], touched = new_d, len(new), True
            if touched:
                raw = json.dumps(manifest, separators=(",", ":")).encode()
                renamed[f"sha256:{sha256_hex(m.data)}"] = (f"sha256:{sha256_hex(raw)}", len(raw))
                self.members[j] = regular(blob_name(raw), raw)
        index = self.index
        for d in index["manifests"]:
            if d["digest"] in renamed:
                d["digest"], d["size"] = renamed[d["digest"]]
        root = self.root
        for b in root["blobs"]:
            if b["digest"] in renamed:
                b["digest"], b["size"] = renamed[b["digest"]]
            elif b["digest"] == old_d:
                b["digest"], b["size"] = new_d, len(new)
        index_bytes = canonical_json(index)
        self.members[self.pos(INDEX)] = regular(INDEX, index_bytes)
        root["index"] = {"digest": f"sha256:{sha256_hex(index_bytes)}",
                         "size": len(index_bytes)}
        self.set_root_obj(root, sign_with=sign_with)


    def rewrite_manifest(self, pos: int, raw: bytes, *,
                         sign_with: signing.PrivateKey | None) -> None:
        """Replace the manifest blob at `pos` by `raw`, and index.json and the root with it."""
        old = f"sha256:{sha256_hex(self.members[pos].data)}"
        new = f"sha256:{sha256_hex(raw)}"
        self.members[pos] = regular(blob_name(raw), raw)
        index = self.index
        for d in index["manifests"]:
            if d["digest"] == old:
                d["digest"], d["size"] = new, len(raw)
        root = self.root
        for b in root["blobs"]:
            if b["digest"] == old:
                b["digest"], b["size"] = new, len(raw)
        index_bytes = canonical_json(index)
        self.members[self.pos(INDEX)] = regular(INDEX, index_bytes)
        root["index"] = {"digest": f"sha256:{sha256_hex(index_bytes)}",
                         "size": len(index_bytes)}
        self.set_root_obj(root, sign_with=sign_with)


# ---------------------------------------------------------------------------------------------
# The scene of a test: a target store with content, and everything around it watched


def listing(root: Path, *, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, Any]:
    """Every entry under root (links not followed): kind, mode, and for files size, mtime and
    sha256; for links the target. Directory mtimes are left out (staging touches them)."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            if skip(p):
                continue
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", str(p.readlink()))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode)
            elif p.is_file():
                out[rel] = ("file", st.st_mode, st.st_size, st.st_mtime_ns,
                            sha256_hex(p.read_bytes()))
            else:
                out[rel] = ("other", st.st_mode)
        dirnames[:] = [d for d in dirnames if not skip(Path(dirpath) / d)]
    return out


WATCHED_OUTSIDE = (Path("/etc/passwd"), Path("/abs"), Path("/abs/evil"), Path("/evil"),
                   Path("/tmp/evil"))


def _outside_state() -> dict[str, Any]:
    state: dict[str, Any] = {}
    for p in WATCHED_OUTSIDE:
        if p.is_file():
            st = p.stat()
            state[str(p)] = (st.st_size, st.st_mtime_ns, sha256_hex(p.read_bytes()))
        else:
            state[str(p)] = p.exists()
    return state


@dataclass
class Snapshot:
    target_tree: dict[str, str]
    target: dict[str, Any]
    around: dict[str, Any]
    outside: dict[str, Any]


def other_models(root: Path) -> Path:
    """A target store's existing content: a model the bundle also has (tiny:latest, with other
    bytes, so a successful import would replace it), one it lacks, and a blob it shares."""
    make_model(root, "registry.ollama.ai/library/tiny/latest",
               [(MODEL, weights(50_000, seed=9)), (TEMPLATE, b"{{ .Prompt }}")])
    make_model(root, "registry.ollama.ai/library/other/latest", [(MODEL, weights(40_000, seed=8))])
    return root


@dataclass
class Scene:
    """tmp_path/target is the store imported into; tmp_path/cwd the working directory."""

    tmp: Path
    target: Path
    keys: Keys
    env: dict[str, str]
    bundle_file: Path
    sentinel: Path = field(init=False)

    def __post_init__(self) -> None:
        other_models(self.target)
        (self.tmp / "cwd").mkdir(exist_ok=True)
        self.sentinel = self.tmp / "outside.txt"
        self.sentinel.write_bytes(b"not to be touched\n")

    @property
    def private_key(self) -> signing.PrivateKey:
        return signing.read_private(self.keys.key, None)

    def bundle(self) -> Bundle:
        return Bundle.load(self.bundle_file)

    def write(self, data: bytes, name: str = "crafted.tar.zst") -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def write_tar(self, tar: bytes, name: str = "crafted.tar.zst") -> Path:
        return self.write(compress(tar), name)

    def snapshot(self) -> Snapshot:
        target = self.target.resolve()
        return Snapshot(
            tree(self.target),
            listing(self.target, skip=lambda p: p.name == LOCK and p.parent == self.target),
            listing(self.tmp, skip=lambda p: p.resolve() == target),
            _outside_state(),
        )

    def import_args(self, path: Path, *extra: str) -> list[str]:
        return ["import", str(path), "--models", str(self.target),
                "--trust", str(self.keys.pub), *extra]

    def verify_args(self, path: Path, *extra: str) -> list[str]:
        return ["verify", str(path), "--trust", str(self.keys.pub), *extra]

    def refused(self, path: Path, *extra: str, code: int = 3,
                trust: Path | None = None) -> str:
        """Run verify and import on `path`: both must fail with `code`, one clean error line,
        and nothing may change in the target or anywhere around it. Returns import's stderr."""
        before = self.snapshot()
        stderr = ""
        for args in (self.verify_args(path, *extra), self.import_args(path, *extra)):
            if trust is not None:
                args[args.index("--trust") + 1] = str(trust)
            r = run(args, self.env)
            stderr = r.stderr
            assert r.exit_code == code, (args[0], r.exit_code, r.output)
            assert_clean_error(r.stderr, r.stdout)
            after = self.snapshot()
            assert after.target_tree == before.target_tree, args[0]
            assert after.target == before.target, args[0]
            assert after.around == before.around, args[0]
            assert after.outside == before.outside, args[0]
        assert self.sentinel.read_bytes() == b"not to be touched\n"
        return stderr

    def accepted(self, path: Path, *extra: str) -> None:
        """verify and import both succeed."""
        for args in (self.verify_args(path, *extra), self.import_args(path, *extra)):
            r = run(args, self.env)
            assert r.exit_code == 0, (args[0], r.output)
            assert "Traceback" not in r.output


def assert_clean_error(stderr: str, stdout: str = "") -> None:
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert len(errors[0]) < 1000, errors[0][:2000]
    for line in stderr.splitlines():
        assert line.split(":", 1)[0] in ("error", "hint", "trust", "store", "warning"), line


# ---------------------------------------------------------------------------------------------
# A real process, for peak memory


# VmHWM: the peak RSS of this process image (ru_maxrss would include the parent's, which
# Linux carries across fork and exec: a large test runner would be measured too)
MEASURE = """\
import runpy, sys
sys.argv = ["bundle", *sys.argv[1:]]
try:
    runpy.run_module("bundler", run_name="__main__", alter_sys=True)
finally:
    rss = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nMAXRSS={rss}\\n")
"""


@dataclass
class Measured:
    returncode: int
    stderr: str
    maxrss_bytes: int


def run_measured(args: Sequence[str], env: Mapping[str, str]) -> Measured:
    """`python -m bundler ARGS` in a child that reports its own peak RSS."""
    p = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True,
                       env={**os.environ, **env}, check=False, timeout=600)
    text = p.stderr.decode(errors="replace")
    head, _, tail = text.rpartition("MAXRSS=")
    assert tail, text
    return Measured(p.returncode, head, int(tail.strip()) * 1024)


@pytest.fixture(name="scene")
def scene_fixture(tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str],
                  monkeypatch: pytest.MonkeyPatch) -> Scene:
    """The target store, the bundle and the keys of one hostile or tamper case."""
    s = Scene(tmp_path, tmp_path / "target", keys, env, bundle_file)
    monkeypatch.chdir(tmp_path / "cwd")
    return s
