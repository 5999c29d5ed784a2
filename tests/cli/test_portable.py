"""The connected side on macOS and Windows (README "Platforms"). CI runs Linux only, so these
tests take away, in a real Linux process, what those OSes lack: the POSIX-only modules
(`fcntl`, `termios`, `pwd`, `grp`, `resource`) cannot be imported, and the functions and flags
Windows' `os` does not have are removed. Every bundler module must still import, and export,
verify and import must still run (the store lock alone may import `fcntl`, from
bundler/oscompat.py, standing in for Windows' `msvcrt`). mypy checks the whole package as if
on Windows and on macOS, where typeshed leaves out what those OSes lack."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bundler
from bundler import oscompat, signing
from bundler.errors import UsageError
from tests.support.common import MODEL, Keys, make_model, run, tree, weights

ROOT = Path(__file__).resolve().parents[2]

BLOCKED_MODULES = ("fcntl", "termios", "pwd", "grp", "resource")
# In os on Linux, not on Windows (CPython's Modules/posixmodule.c, "Availability: Unix").
# os.statvfs stays: shutil.disk_usage uses it on POSIX (on Windows it asks nt instead).
WINDOWS_LACKS = (
    "pread", "pwrite", "preadv", "pwritev", "posix_fadvise", "POSIX_FADV_DONTNEED",
    "posix_fallocate", "fdatasync", "sync", "fchmod", "fchown", "lchown", "chown",
    "geteuid", "getegid", "getuid", "getgid", "seteuid", "setegid", "setuid", "setgid",
    "getgroups", "setgroups", "initgroups", "getpgid", "killpg", "fstatvfs", "mkfifo",
    "sendfile", "copy_file_range", "splice", "O_NOFOLLOW", "O_NONBLOCK", "O_DIRECTORY",
    "O_CLOEXEC", "O_DIRECT", "O_NOATIME", "O_SYNC", "O_DSYNC",
)

# Runs `python -m bundler ARGS` with all of the above taken away.
SIMULATION = textwrap.dedent(f"""
    import importlib.abc
    import os
    import pkgutil
    import runpy
    import sys

    BLOCKED = {BLOCKED_MODULES!r}
    for name in BLOCKED:
        assert name not in sys.modules, name + " was imported before the test began"

    def importer():
        f = sys._getframe(2)
        while f is not None and f.f_code.co_filename.startswith("<frozen"):
            f = f.f_back
        return "" if f is None else f.f_code.co_filename

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] not in BLOCKED:
                return None
            where = importer()
            if name == "fcntl" and where.endswith(os.path.join("bundler", "oscompat.py")):
                return None  # the store lock: msvcrt on Windows
            raise ModuleNotFoundError(f"No module named {{name!r}} (imported from {{where}})",
                                      name=name)

    sys.meta_path.insert(0, Block())
    for name in {WINDOWS_LACKS!r}:
        if hasattr(os, name):
            delattr(os, name)

    import bundler
    for info in pkgutil.iter_modules(bundler.__path__, "bundler."):
        __import__(info.name)
    sys.argv = ["bundle", *sys.argv[1:]]
    runpy.run_module("bundler", run_name="__main__", alter_sys=True)
""")


def simulated(tmp_path: Path, *args: str, stdin: bytes | None = None,
              ) -> subprocess.CompletedProcess[bytes]:
    script = tmp_path / "without-posix.py"
    script.write_text(SIMULATION)
    return subprocess.run([sys.executable, str(script), *args], input=stdin,
                          capture_output=True, cwd=ROOT, env=dict(os.environ), check=False)


def test_the_simulation_blocks_what_it_says(tmp_path: Path) -> None:
    """The harness itself: a module other than oscompat importing fcntl fails, and os has lost
    the functions (so the tests below could fail)."""
    (tmp_path / "probe.py").write_text("import fcntl\n")
    script = tmp_path / "check.py"
    script.write_text(SIMULATION.split("import bundler\n")[0] + textwrap.dedent("""
        assert not hasattr(os, "pread") and not hasattr(os, "geteuid")
        sys.path.insert(0, sys.argv[1])
        try:
            import probe
        except ModuleNotFoundError as e:
            print("blocked:", e)
    """))
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, check=True)
    assert done.stdout.startswith("blocked: No module named 'fcntl'"), done.stdout


def test_every_module_imports_and_help_runs(tmp_path: Path) -> None:
    done = simulated(tmp_path, "--help")
    assert done.returncode == 0, done.stderr.decode()
    assert b"export" in done.stdout and b"import" in done.stdout


@pytest.mark.parametrize("portable", [False, True], ids=["detected", "portable"])
def test_export_verify_import_without_posix(tmp_path: Path, store: Path, keys: Keys,
                                            env: dict[str, str], portable: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What each OS lacks is found missing (`detected`), and with OLLAMA_BUNDLE_PORTABLE=1 as
    well: export (whole and split), verify against the trust directory, import from the file,
    from its parts and from stdin, each byte-identical to the source store."""
    if portable:
        monkeypatch.setenv("OLLAMA_BUNDLE_PORTABLE", "1")
    trusted = Path(env["BUNDLE_TRUST_DIR"])
    trusted.mkdir(mode=0o755)
    shutil.copy(keys.pub, trusted / "signer.pub")
    out = tmp_path / "models.tar.zst"
    for args in (["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                  str(out)],
                 ["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                  str(tmp_path / "split.tar.zst"), "--split", "128KiB"],
                 ["verify", str(out)]):
        done = simulated(tmp_path, *args)
        assert done.returncode == 0, done.stderr.decode()
    parts = sorted(tmp_path.glob("split.tar.zst.0*"))
    assert len(parts) > 2
    for name, source, stdin in (("file", str(out), None), ("parts", str(parts[0]), None),
                                ("stdin", "-", out.read_bytes())):
        target = tmp_path / f"target-{name}"
        done = simulated(tmp_path, "import", source, "--models", str(target), stdin=stdin)
        assert done.returncode == 0, (name, done.stderr.decode())
        assert tree(target) == tree(store), name
        assert not list(target.rglob(".bundle-*"))


def test_mypy_finds_nothing_the_other_oses_lack() -> None:
    """typeshed leaves out of `os` (and out of the stdlib) what an OS does not have: the package
    type-checks as if on Windows and on macOS, so nothing outside a platform check uses it."""
    for platform in ("win32", "darwin"):
        done = subprocess.run(
            [sys.executable, "-m", "mypy", "--platform", platform, "--cache-dir",
             str(ROOT / ".mypy_cache" / platform), "bundler"],
            capture_output=True, text=True, cwd=ROOT, check=False)
        assert done.returncode == 0, (platform, done.stdout)


def test_every_descriptor_is_opened_through_oscompat() -> None:
    """os.open outside bundler/oscompat.py would open in text mode on Windows (CRLF
    translation of blobs and manifests) and could follow links where O_NOFOLLOW is missing."""
    offenders = []
    for path in sorted(Path(bundler.__file__).parent.glob("*.py")):
        if path.name == "oscompat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "open"
                    and isinstance(node.value, ast.Name) and node.value.id == "os"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_default_store_is_ollamas(tmp_path: Path, env: dict[str, str]) -> None:
    """Without --models and $OLLAMA_MODELS: <home>/.ollama/models, home as Go's os.UserHomeDir
    reads it on this OS ($HOME here; %USERPROFILE% is Windows' and must not count)."""
    home = tmp_path / "home"
    variables = {**os.environ, "HOME": str(home), "USERPROFILE": str(tmp_path / "profile")}
    variables.pop("OLLAMA_MODELS", None)
    done = subprocess.run([sys.executable, "-m", "bundler", "export", "--all", "--unsigned",
                           "-o", str(tmp_path / "x.tar.zst")],
                          capture_output=True, text=True, env=variables, check=False)
    assert done.returncode == 4, done.stderr
    assert f"{home / '.ollama' / 'models'} (from default)" in done.stderr


def test_permission_checks_only_where_modes_mean_something(
        tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key readable by others is refused on POSIX; on Windows every file's mode looks like
    0o666 or 0o444, so the same check would refuse every key there."""
    keys.key.chmod(0o644)
    with pytest.raises(UsageError, match="readable by other users"):
        signing.read_private(keys.key, None)
    monkeypatch.setattr(oscompat, "posix_permissions", lambda: False)
    assert signing.read_private(keys.key, None).public.keyid == keys.keyid
    assert oscompat.effective_uid() is None


def test_a_name_with_a_port_is_refused_on_windows_before_anything_is_written(
        tmp_path: Path, keys: Keys, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`localhost:5000/...` is a directory `localhost:5000` in Ollama's layout, which Windows
    cannot create: the import says so, naming the model, and the store stays as it was. The
    same bundle imports on Linux (the control)."""
    source = tmp_path / "src"
    make_model(source, "localhost:5000/library/m/latest", [(MODEL, weights(100_000))])
    out = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(source), "--key", str(keys.key), "-o",
                str(out)]).exit_code == 0
    target = tmp_path / "target"
    target.mkdir()
    monkeypatch.setattr(oscompat, "_WINDOWS", True)
    r = run(["import", str(out), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 1
    assert "localhost:5000/library/m:latest cannot be stored" in r.stderr
    assert "Windows does not allow ':'" in r.stderr
    assert tree(target) == {}
    assert not (target / "blobs").exists()
    monkeypatch.setattr(oscompat, "_WINDOWS", False)
    r = run(["import", str(out), "--models", str(target), "--trust", str(keys.pub)])
    assert r.exit_code == 0, r.stderr
    assert tree(target) == tree(source)
