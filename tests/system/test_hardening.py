"""Defences the threat model (formats/threat-model.md) asked for: credentials never sent in
clear to a token service on another host, a trust directory others could change refused, and
text from a bundle or a registry never driving the terminal."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from bundler.layout import ROOT_MEMBER
from bundler.reader import BundleReader
from tests.support.common import MODEL, Keys, cli, make_model, run, tree, weights
from tests.support.scene import Scene, assert_clean_error
from tests.support.servers import free_port, http_status, run_registry_with
from tests.support.tar import regular
from tests.support.token_registry import ISSUER, SERVICE, _make_issuer


def test_credentials_are_not_sent_in_clear_to_another_hosts_token_service(
        tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    """The real registry, configured to send clients to a plain-HTTP token service on another
    host name: with credentials, the push stops before contacting it."""
    listener = socket.create_server(("127.0.0.1", free_port()))
    port = listener.getsockname()[1]
    contacted: list[bytes] = []

    def accept() -> None:
        listener.settimeout(30)
        try:
            conn, _ = listener.accept()
            contacted.append(conn.recv(4096))
            conn.close()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    issuer = _make_issuer()
    (tmp_path / "root.pem").write_bytes(issuer.cert.public_bytes(serialization.Encoding.PEM))
    extra = (f"auth:\n  token:\n    realm: http://localhost:{port}/token\n"
             f"    service: {SERVICE}\n    issuer: {ISSUER}\n"
             "    rootcertbundle: {dir}/root.pem\n")
    try:
        with run_registry_with(tmp_path, extra,
                               lambda p: http_status("127.0.0.1", p) == 401) as reg_port:
            p = cli("import", str(bundle_file), "--to-registry",
                    f"http://127.0.0.1:{reg_port}/x", "--trust", str(keys.pub),
                    "--username", "u", "--password-stdin",
                    env={**env, "DOCKER_CONFIG": str(tmp_path / "docker")},
                    stdin=b"secret-password\n")
    finally:
        listener.close()
    assert p.returncode == 5, p.stderr
    assert b"not HTTPS" in p.stderr and b"Traceback" not in p.stderr
    assert not contacted, contacted  # nothing, credentials least of all, went there


def test_a_trust_directory_others_can_change_is_refused(
        bundle_file: Path, keys: Keys, env: dict[str, str], tmp_path: Path) -> None:
    trusted = Path(env["BUNDLE_TRUST_DIR"])
    trusted.mkdir(parents=True, exist_ok=True)
    pub = trusted / "release.pub"
    pub.write_bytes(keys.pub.read_bytes())
    args = ["verify", str(bundle_file)]
    assert run(args, env).exit_code == 0  # control: the key there is trusted
    for path, mode in ((pub, 0o666), (trusted, 0o777)):
        path.chmod(mode)
        r = run(args, env)
        assert r.exit_code == 2 and "could be changed by another user" in r.stderr, r.output
        path.chmod(0o644 if path == pub else 0o755)
    assert run(args, env).exit_code == 0


def test_text_from_a_bundle_does_not_drive_the_terminal(scene: Scene) -> None:
    """An unsigned bundle whose root carries terminal escape sequences and a bidi override
    in its tool name: `ls` shows them escaped."""
    b = scene.bundle()
    root = json.loads(b.member(ROOT_MEMBER).data)
    root["tool"]["name"] = "evil\x1b]0;pwned\x07\u202e"
    raw = json.dumps(root, separators=(",", ":"), sort_keys=True,
                     ensure_ascii=False).encode() + b"\n"
    b.members[b.pos(ROOT_MEMBER)] = regular(ROOT_MEMBER, raw)
    path = scene.write_tar(b.tar())
    r = run(["ls", str(path)], scene.env)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\u202e" not in r.output
    assert "evil\\x1b]0;pwned\\x07\\u202e" in r.output


def test_an_older_release_does_not_roll_a_model_back(tmp_path: Path, keys: Keys,
                                                     env: dict[str, str]) -> None:
    """A replayed, validly signed old release would replace newer models: refused unless
    --allow-downgrade; a newer release, and a model no release wrote, are not affected."""
    store = tmp_path / "store"
    make_model(store, "registry.ollama.ai/library/tiny/latest", [(MODEL, weights(9_000, seed=1))])
    old, new = tmp_path / "old.tar.zst", tmp_path / "new.tar.zst"
    for out, epoch in ((old, "1790000000"), (new, "1792000000")):
        r = run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                 str(out)], {**env, "SOURCE_DATE_EPOCH": epoch})
        assert r.exit_code == 0, r.output
        make_model(store, "registry.ollama.ai/library/tiny/latest",
                   [(MODEL, weights(9_000, seed=2))])  # the model changes between releases
    target = tmp_path / "target"

    def imp(bundle: Path, *extra: str) -> Any:
        return run(["import", str(bundle), "--models", str(target), "--trust",
                    str(keys.pub), *extra], env)

    assert imp(old).exit_code == 0 and imp(new).exit_code == 0  # an upgrade is fine
    before = tree(target)
    r = imp(old)
    assert r.exit_code == 3 and "roll the model back" in r.stderr, r.output
    assert_clean_error(r.stderr)
    assert tree(target) == before
    r = imp(old, "--allow-downgrade")
    assert r.exit_code == 0, r.output
    manifest = target / "manifests/registry.ollama.ai/library/tiny/latest"
    assert tree(target) != before and manifest.is_file()
    # a model that no release wrote (pulled by Ollama itself) is replaced without question
    assert imp(new).exit_code == 0
    (target / ".ollama-bundle.releases.json").unlink()
    assert imp(old).exit_code == 0


def test_a_revoked_key_is_not_trusted_even_when_given(bundle_file: Path, keys: Keys,
                                                      env: dict[str, str]) -> None:
    trusted = Path(env["BUNDLE_TRUST_DIR"])
    trusted.mkdir(parents=True, exist_ok=True)
    (trusted / "release.pub").write_bytes(keys.pub.read_bytes())
    revoked = trusted / "revoked"
    revoked.write_text(f"# stolen laptop, 2026-11\n{keys.keyid}\n")
    for extra in ([], ["--trust", str(keys.pub)]):
        r = run(["verify", str(bundle_file), *extra], env)
        assert r.exit_code == 3 and "is revoked" in r.stderr, r.output
    revoked.write_text("# nothing revoked\n")
    assert run(["verify", str(bundle_file)], env).exit_code == 0
    revoked.write_text("not-a-key-id\n")
    r = run(["verify", str(bundle_file)], env)
    assert r.exit_code == 2 and "line 1" in r.stderr


def test_links_planted_at_staging_names_are_never_followed(
        tmp_path: Path, bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    """The store's owner plants a symbolic link and a hard link where the importer stages
    blobs: the import replaces them and writes nothing through them."""
    target = tmp_path / "target"
    (target / "blobs").mkdir(parents=True)
    victim, other = tmp_path / "victim.txt", tmp_path / "other.txt"
    victim.write_bytes(b"keep me\n")
    other.write_bytes(b"keep me too\n")
    with bundle_file.open("rb") as f, BundleReader(f) as reader:
        head = reader.read_head([], allow_unsigned=True, enforce_trust=False)
    first, second = (b.digest.hex for b in head.layer_blobs[:2])
    (target / "blobs" / f".bundle-{first}.partial").symlink_to(victim)
    os.link(other, target / "blobs" / f".bundle-{second}.partial")
    r = run(["import", str(bundle_file), "--models", str(target), "--trust", str(keys.pub)],
            env)
    assert r.exit_code == 0, r.output
    assert victim.read_bytes() == b"keep me\n" and other.read_bytes() == b"keep me too\n"
    assert not list((target / "blobs").glob(".bundle-*"))


def test_two_models_that_would_share_a_registry_tag_are_refused(
        tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = tmp_path / "s"
    for ns in ("alpha", "beta"):
        make_model(store, f"registry.ollama.ai/{ns}/same/latest", [(MODEL, weights(500))])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)], env).exit_code == 0
    r = run(["import", str(bundle), "--to-registry", "http://127.0.0.1:9/team", "--trust",
             str(keys.pub)], env)  # refused while planning, before any request
    assert r.exit_code == 2 and "would both be team/same:latest" in r.stderr, r.output
