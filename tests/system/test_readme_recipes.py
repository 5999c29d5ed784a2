"""The README's recipes, run as printed. Each ```sh block a user is told to run is read from
README.md at test time (tests/support/readme.py) and run by `sh -e` with only file names, ports
and the placeholder host `registry.example` replaced, so that a README edit that breaks a recipe
fails here. Prompts are answered on a terminal, as a user would; `ollama` is the real one
(tests/support/ollama.py); `sudo` is Debian's, run by a user who is not root.

The air-gapped side runs in a mount namespace: /etc is an overlay whose changes (the user, the
sudoers rule, /etc/ollama-bundle/trusted) vanish with it, and /root is empty, as on a machine
where root never ran the tool; the code under test is exactly what users get."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import termios
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.common import MODEL, PARAMS, REPO, TEMPLATE, make_model, tree, weights
from tests.support.ollama import ollama_binary, ollama_serve
from tests.support.readme import blocks, section, substitute
from tests.support.servers import _kill_leftovers, free_port, run_moto

VENV_BIN = REPO / ".venv" / "bin"
REGISTRY_SCRIPT = REPO / "scripts" / "registry-for-ollama"
PASSPHRASE = "correct horse battery staple"  # noqa: S105 (typed at the test key's prompt)
USER = "recipe-user"
AIRGAP_STORE = "/usr/share/ollama/.ollama/models"
# The models "A typical transfer" exports, as Ollama stores them (formats/ollama-store.md §2)
MODELS = {
    "llama3.2:latest": "registry.ollama.ai/library/llama3.2/latest",
    "qwen2.5:7b": "registry.ollama.ai/library/qwen2.5/7b",
    "hf.co/org/repo:Q4_K_M": "hf.co/org/repo/Q4_K_M",
}


def connected_store(root: Path) -> dict[str, str]:
    """The connected side's store with the README's three models; name -> model ID."""
    ids = {}
    for seed, (name, path) in enumerate(MODELS.items()):
        manifest = make_model(root, path, [(MODEL, weights(150_000, seed=seed)),
                                           (TEMPLATE, b"{{ .Prompt }}"),
                                           (PARAMS, b'{"stop":["</s>"]}\n')])
        ids[name] = hashlib.sha256(manifest).hexdigest()
    return ids


def clean_env(home: Path, path: str, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8", **extra}


def _controlling_tty() -> None:  # in the child, after setsid: make its stdin (the pty) its tty
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_on_a_terminal(script: str, *, cwd: Path, env: Mapping[str, str],
                      answer: str = PASSPHRASE, timeout: float = 300) -> tuple[int, str]:
    """`sh -exc script` on a pseudo-terminal, typing `answer` at each passphrase prompt (after
    it appears: getpass flushes what was typed before)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["sh", "-exc", script], cwd=cwd, env=dict(env), stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=_controlling_tty)  # noqa: PLW1509 (no threads here)
    os.close(slave)
    out, answered = b"", 0
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise AssertionError(f"the recipe hung; its terminal so far:\n{out.decode()}")
            try:
                chunk = os.read(master, 65536)
            except OSError as e:  # EIO: every writer of the terminal has gone
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            out += chunk
            prompts = re.findall(rb"(?:Passphrase for [^\n]*|Repeat for confirmation): ", out)
            for _ in prompts[answered:]:
                os.write(master, answer.encode() + b"\n")
            answered = len(prompts)
    finally:
        os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture(scope="module")
def ollama() -> Path:
    return ollama_binary()


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory every user can reach (pytest's own tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="readme-recipes-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def transfer_blocks() -> tuple[str, str]:
    connected, airgapped = blocks("A typical transfer")
    return connected, airgapped


@dataclass(frozen=True)
class Connected:
    """What the connected block of "A typical transfer" left: HOME (the store, ~/keys), the
    bundle it wrote and the model IDs."""

    home: Path
    bundle: Path
    ids: dict[str, str]

    @property
    def pub(self) -> Path:
        return self.home / "keys" / "release.pub"

    @property
    def store(self) -> Path:
        return self.home / ".ollama" / "models"


@pytest.fixture(scope="module")
def connected(tmp_path_factory: pytest.TempPathFactory) -> Connected:
    """The connected block as printed, as root, typing the passphrase at both prompts."""
    root = tmp_path_factory.mktemp("connected")
    home = root / "home"
    ids = connected_store(home / ".ollama" / "models")
    work = root / "work"
    work.mkdir()
    code, text = run_on_a_terminal(transfer_blocks()[0], cwd=work, env=clean_env(
        home, f"{VENV_BIN}:/usr/bin:/bin"))
    assert code == 0, text
    assert text.count("Passphrase for ") == 2, text  # keygen asked (and confirmed), export
    for name in ("llama3.2", "qwen2.5", "hf.co/org/repo"):
        assert name in text  # bundle ls lists each model
    return Connected(home, work / "models-2026-11.tar.zst", ids)


def as_user_with_sudo(world: Path, script: str, *, files: Mapping[str, Path],
                      env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `sh -exc script` as a new user who may sudo, in their home holding `files`, inside
    a mount namespace (see the module docstring); /etc on the host is left as it was."""
    home, ns = world / "home", world / "ns"
    home.mkdir(mode=0o700)
    ns.mkdir()
    for name, src in files.items():
        shutil.copy(src, home / name)
    tools = world / "bin"
    tools.mkdir(exist_ok=True)
    path = f"{tools}:{VENV_BIN}:/usr/local/bin:/usr/bin:/bin"
    prelude = r"""set -e
mount -t tmpfs tmpfs "$NS"
mkdir "$NS/upper" "$NS/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$NS/upper,workdir=$NS/work" /etc
# root's HOME, empty; what of it the venv's interpreter lives in stays (0711: reachable)
mkdir "$NS/python"
if [ -n "$PYTHON_HOME" ]; then mount --bind "$PYTHON_HOME" "$NS/python"; fi
mount -t tmpfs -o mode=0711 tmpfs /root
if [ -n "$PYTHON_HOME" ]; then
  mkdir -p "$PYTHON_HOME" && mount --bind "$NS/python" "$PYTHON_HOME"
fi
useradd -M -d "$UHOME" -s /bin/sh "$USER_NAME"
printf '%s ALL=(ALL) NOPASSWD: ALL\n' "$USER_NAME" > "$NS/sudoers"
install -m 0440 "$NS/sudoers" "/etc/sudoers.d/$USER_NAME"
chown -R "$USER_NAME:" "$UHOME"
cd "$UHOME"
exec runuser -u "$USER_NAME" -- env -i HOME="$UHOME" PATH="$UPATH" LANG=C.UTF-8 $EXTRA \
    sh -exc "$SCRIPT"
"""
    extra = " ".join(f"{k}={v}" for k, v in env.items())
    assert all(re.fullmatch(r"[A-Za-z0-9_.:/=-]+", part) for part in extra.split())
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", prelude],
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NS": str(ns),
                            "UHOME": str(home), "USER_NAME": USER, "UPATH": path,
                            "EXTRA": extra, "SCRIPT": script, "PYTHON_HOME": _python_home()},
                       capture_output=True, text=True, timeout=600, check=False)
    assert not Path("/etc/ollama-bundle").exists(), "the test changed the host's /etc"
    assert USER not in Path("/etc/passwd").read_text()
    return r


def _python_home() -> str:
    """The installation of the venv's interpreter when it lives under /root (a pyenv), which
    the namespace's empty /root would hide; else empty."""
    base = Path(sys.base_prefix).resolve()
    return str(base) if base.is_relative_to("/root") else ""


def test_a_typical_transfer_as_printed(tmp_path: Path, world: Path, ollama: Path,
                                      connected: Connected) -> None:
    """Connected side as root; air-gapped side as a user who is not root, through sudo, with
    the key in the system trust directory, into the store of an `ollama serve` that is
    already running, which then lists every model with its ID."""
    store = world / "store"
    store.mkdir()
    tools = world / "bin"
    tools.mkdir()
    shutil.copy(ollama, tools / "ollama")
    airgapped = substitute(transfer_blocks()[1], {AIRGAP_STORE: str(store)})
    (tmp_path / "ollama-home").mkdir()
    with ollama_serve(ollama, store, home=tmp_path / "ollama-home") as server:
        r = as_user_with_sudo(world, airgapped, files={
            "release.pub": connected.pub, "models-2026-11.tar.zst": connected.bundle},
            env={"OLLAMA_HOST": server.host})
        assert r.returncode == 0, r.stdout + r.stderr
        listed = server.tags()
    user_dir = world / "home" / ".config" / "ollama-bundle" / "trusted"
    assert f"trust: 1 key (/etc/ollama-bundle/trusted; {user_dir}, absent)" in r.stderr  # verify
    # the import, under sudo: root's HOME, and the key from the system directory
    assert "trust: 1 key (/etc/ollama-bundle/trusted; /root/.config/ollama-bundle/trusted, " \
        "absent)" in r.stderr
    for name, model_id in connected.ids.items():
        assert re.search(rf"^  new +{re.escape(name)} +{model_id[:12]}$", r.stdout,
                         re.MULTILINE), r.stdout  # the import's report
        assert re.search(rf"^{re.escape(name)}\s+{model_id[:12]}\s", r.stdout, re.MULTILINE), \
            r.stdout  # ollama list
    assert {m["name"]: m["digest"] for m in listed} == connected.ids
    assert tree(store) == tree(connected.store)


def test_under_sudo_a_key_in_the_users_own_trust_directory_is_named_in_the_hint(
        world: Path, connected: Connected) -> None:
    """What the README used to print: the key in ~/.config/ollama-bundle/trusted, which root's
    run does not read. The refusal says so, and no model is written."""
    store = world / "store"
    script = ("mkdir -p ~/.config/ollama-bundle/trusted && "
              "cp release.pub ~/.config/ollama-bundle/trusted/\n"
              "bundle verify models-2026-11.tar.zst\n"
              f'sudo "$(command -v bundle)" import models-2026-11.tar.zst --models {store}\n')
    r = as_user_with_sudo(world, script, files={
        "release.pub": connected.pub, "models-2026-11.tar.zst": connected.bundle}, env={})
    assert r.returncode == 3, r.stdout + r.stderr
    assert "none of which you trust" in r.stderr
    theirs = world / "home" / ".config" / "ollama-bundle" / "trusted"
    assert (f"under sudo, {USER}'s trust directory {theirs} (1 key) is not read (HOME is "
            "root's): copy the key into /etc/ollama-bundle/trusted/, or pass --trust") \
        in r.stderr
    assert not (store / "manifests").exists()


def test_quick_start_demo_as_printed(tmp_path: Path) -> None:
    """Quick start's first command (its second, scripts/test, is what .ci/run runs:
    tests/unit/test_readme.py ties the two), given a directory of its own."""
    (block,) = blocks("Quick start")
    demo = block.splitlines()[0]
    assert demo.split("#")[0].strip() == "scripts/demo"
    script = substitute(demo, {"scripts/demo": f"scripts/demo {tmp_path / 'demo'}"})
    r = subprocess.run(["sh", "-exc", script], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "DEMO_SIZE": "1MiB"}, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: every manifest and blob arrived byte for byte" in r.stdout


@contextmanager
def registry_recipe_stopped_after(data: Path) -> Iterator[None]:
    try:
        yield
    finally:
        subprocess.run([str(REGISTRY_SCRIPT), "stop", "--data", str(data)],
                       capture_output=True, check=False, timeout=120)
        _kill_leftovers(data)


def user_trusting(home: Path, pub: Path) -> None:
    """~/.config/ollama-bundle/trusted holding `pub`, as the user who runs a block set it up."""
    trusted = home / ".config" / "ollama-bundle" / "trusted"
    trusted.mkdir(parents=True, mode=0o700)
    shutil.copy(pub, trusted / "release.pub")


def test_serving_models_from_a_private_registry_as_printed(
        tmp_path: Path, ollama: Path, connected: Connected) -> None:
    """The registry set-up as printed: the recipe's registry, the push, and a colleague's real
    `ollama pull --insecure` and `ollama cp`. It listens on 127.0.0.1, the address
    `registry.example` stands for here, instead of every interface."""
    port, upstream = free_port(), free_port()
    data = tmp_path / "registry"
    first, _s3 = blocks("Serving models to colleagues from a private registry")
    script = substitute(first, {
        "start --port 5000 --listen 0.0.0.0":
            f"start --port {port} --listen 127.0.0.1 --upstream-port {upstream} --data {data}",
        "models-2026-11.tar.zst": str(connected.bundle),
        "registry.example:5000": f"127.0.0.1:{port}",
    })
    home = tmp_path / "home"
    user_trusting(home, connected.pub)
    name = f"127.0.0.1:{port}/team/llama3.2:latest"
    (tmp_path / "colleague").mkdir()
    (tmp_path / "ollama-home").mkdir()
    with registry_recipe_stopped_after(data), \
            ollama_serve(ollama, tmp_path / "colleague", home=tmp_path / "ollama-home") as server:
        code, text = run_on_a_terminal(script, cwd=REPO, env=clean_env(
            home, f"{ollama.parent}:{VENV_BIN}:/usr/sbin:/usr/bin:/bin",
            OLLAMA_HOST=server.host))
        assert code == 0, text
        listed = {m["name"]: m["digest"] for m in server.tags()}
    assert f"ollama pull --insecure {name}" in text  # what the push prints, too
    assert listed == {name: connected.ids["llama3.2:latest"],
                      "llama3.2:latest": connected.ids["llama3.2:latest"]}


def test_the_s3_set_up_as_printed(tmp_path: Path, ollama: Path, connected: Connected) -> None:
    """The S3 block as printed, with moto's server mode on 127.0.0.2 standing in for
    `https://s3.example:9000` (plain HTTP: moto has no TLS here) and placeholder credentials,
    which moto accepts. A push through it, then a colleague's real `ollama pull --insecure`
    that follows the registry's 307 to the storage host."""
    _first, block = blocks("Serving models to colleagues from a private registry")
    port, upstream = free_port(), free_port()
    data = tmp_path / "registry"
    with run_moto(tmp_path / "moto") as s3:
        script = substitute(block, {
            "start --port 5000 --listen 0.0.0.0":
                f"start --port {port} --listen 127.0.0.1 --upstream-port {upstream} "
                f"--data {data}",
            "--s3-bucket models": f"--s3-bucket {s3.bucket}",
            "https://s3.example:9000": s3.url,
        })
        home = tmp_path / "home"
        user_trusting(home, connected.pub)
        env = clean_env(home, f"{ollama.parent}:{VENV_BIN}:/usr/sbin:/usr/bin:/bin")
        (tmp_path / "colleague").mkdir()
        (tmp_path / "ollama-home").mkdir()
        with registry_recipe_stopped_after(data), \
                ollama_serve(ollama, tmp_path / "colleague",
                             home=tmp_path / "ollama-home") as server:
            r = subprocess.run(["sh", "-exc", script], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, r.stdout + r.stderr
            assert f"S3 bucket {s3.bucket} at {s3.url}" in r.stdout
            push = subprocess.run(
                [str(VENV_BIN / "bundle"), "import", str(connected.bundle), "--only",
                 "llama3.2", "--to-registry", f"http://127.0.0.1:{port}/team"],
                env=env, capture_output=True, text=True, timeout=300, check=False)
            assert push.returncode == 0, push.stdout + push.stderr
            name = f"127.0.0.1:{port}/team/llama3.2:latest"
            server.cli("pull", "--insecure", name)
            listed = {m["name"]: m["digest"] for m in server.tags()}
    assert listed == {name: connected.ids["llama3.2:latest"]}


def test_release_trains_as_printed(tmp_path: Path, connected: Connected) -> None:
    """Both months on both sides, the delta, and the bad stick, every block as printed: the
    stick is a directory, the store and the registry the tests' own. Between the months the
    connected store gains a model that shares llama3.2's weights."""
    month1, month1_airgap, month2, month2_airgap, recopy = blocks("Release trains")
    home = tmp_path / "home"
    shutil.copytree(connected.home, home, symlinks=True)
    usb, store = tmp_path / "usb", tmp_path / "airgap-store"
    usb.mkdir()
    connected_work, airgap_work = tmp_path / "connected", tmp_path / "airgap"
    connected_work.mkdir()
    airgap_work.mkdir()
    shutil.copy(connected.pub, airgap_work / "release.pub")
    port, data = free_port(), tmp_path / "registry"
    places = {"/media/usb": str(usb), AIRGAP_STORE: str(store),
              "registry.example:5000": f"127.0.0.1:{port}"}
    env = clean_env(home, f"{VENV_BIN}:/usr/sbin:/usr/bin:/bin")

    def run(block: str, cwd: Path, *keys: str, expect: int = 0) -> str:
        code, text = run_on_a_terminal(substitute(block, {k: places[k] for k in keys}),
                                       cwd=cwd, env=env)
        assert code == expect, text
        return text

    with registry_recipe_stopped_after(data):
        started = subprocess.run(
            [str(REGISTRY_SCRIPT), "start", "--port", str(port), "--upstream-port",
             str(free_port()), "--data", str(data)],
            capture_output=True, text=True, timeout=120, check=False)
        assert started.returncode == 0, started.stdout + started.stderr
        run(month1, connected_work, "/media/usb")
        run(month1_airgap, airgap_work, "/media/usb", AIRGAP_STORE, "registry.example:5000")
        assert tree(store) == tree(connected.store)
        make_model(home / ".ollama" / "models", "registry.ollama.ai/library/llama3.2/chat",
                   [(MODEL, weights(150_000, seed=0)), (TEMPLATE, b"{{ .System }}")])
        text = run(month2, connected_work, "/media/usb")
        assert "llama3.2:chat" in text  # bundle diff
        delta = sorted(usb.glob("models-2026-12.tar.zst.*"))
        assert sum(p.stat().st_size for p in delta) < 150_000  # not the weights again
        run(month2_airgap, airgap_work, "/media/usb", AIRGAP_STORE, "registry.example:5000")
    assert tree(store) == tree(home / ".ollama" / "models")

    # the bad stick: verify names the part, as the README shows; copying it again mends it
    bad = usb / "models-2026-12.tar.zst.002"
    data_ = bytearray(bad.read_bytes())
    data_[len(data_) // 2] ^= 1
    bad.write_bytes(bytes(data_))
    verify = next(line for line in recopy.splitlines() if line.startswith("bundle verify"))
    text = run(verify, connected_work, "/media/usb", expect=3)
    printed = section("Release trains").split("```\nerror: ", 1)[1].split("\n", 1)[0]
    assert f"error: {printed}" in text
    run(recopy, connected_work, "/media/usb")
