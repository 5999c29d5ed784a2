"""import --to-registry against the real Distribution registry, read back by independent
clients (skopeo, plain HTTP); faults injected by a loopback proxy in front of it."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import zstandard

from bundler import push, signing
from bundler.distribution import Target
from bundler.errors import IntegrityError
from bundler.registry import client as reg
from bundler.registry.transport import Transport
from tests.support.common import MODEL, TEMPLATE, Keys, make_model, run, weights
from tests.support.faultproxy import Fault, fault_proxy
from tests.support.ollama_pull import PullError, pull
from tests.support.servers import SCHEMA2, OllamaRegistry, Registry, _assert_served, _get


def _count(requests: list[str], prefix: str) -> int:
    return sum(r.startswith(prefix) for r in requests)


def _push(bundle: Path, url: str, keys: Keys, *extra: str) -> Any:
    r = run(["import", str(bundle), "--to-registry", url, "--trust", str(keys.pub), "--json",
             *extra])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_push_round_trip_byte_identical(registry: Registry, store: Path,
                                       bundle_file: Path, keys: Keys,
                                       env: dict[str, str]) -> None:
    url = registry.url + "/rt"
    doc = _push(bundle_file, url, keys)
    host = url.removeprefix("http://").split("/")[0]
    assert sorted(m["pushedAs"] for m in doc["models"]) == sorted([
        f"{host}/rt/repo:Q4_K_M", f"{host}/rt/tiny:chat", f"{host}/rt/tiny:latest"])
    assert doc["ollamaPull"][0].startswith(f"ollama pull --insecure {host}/rt/")
    assert doc["blobsUploaded"] > 0 and doc["check"]["ok"] is False  # bare registry: no Location
    for path, repo, tag in [("registry.ollama.ai/library/tiny/latest", "rt/tiny", "latest"),
                            ("registry.ollama.ai/library/tiny/chat", "rt/tiny", "chat"),
                            ("hf.co/org/repo/Q4_K_M", "rt/repo", "Q4_K_M")]:
        _assert_served(registry.url, repo, tag, (store / "manifests" / path).read_bytes())
    # skopeo, an independent client, reads the same manifest bytes back
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{host}/rt/tiny:latest"], capture_output=True, check=True)
    assert raw.stdout == (store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
    # a second push finds everything there
    again = _push(bundle_file, url, keys)
    assert again["blobsUploaded"] == 0 and again["blobsPresent"] > 0


def test_push_mounts_and_maps_names(registry: Registry, tmp_path: Path, keys: Keys,
                                    env: dict[str, str]) -> None:
    store = tmp_path / "s"
    w = weights(100_000, seed=5)
    make_model(store, "registry.ollama.ai/Org/Big/latest", [(MODEL, w)])
    make_model(store, "registry.ollama.ai/other/big/latest", [(MODEL, w), (TEMPLATE, b"t")])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    doc = _push(bundle, registry.url, keys)
    names = {m["name"]: m for m in doc["models"]}
    assert names["registry.ollama.ai/Org/Big:latest"]["pushedAs"].endswith("/org/big:latest")
    assert names["registry.ollama.ai/Org/Big:latest"]["renamed"] is True
    assert doc["blobsMounted"] >= 1  # the shared weights went up once
    assert doc["blobsUploaded"] == 3  # weights, template, config shared by both


def test_chunked_upload_with_resume_through_faults(registry: Registry, tmp_path: Path,
                                                   keys: Keys, env: dict[str, str]) -> None:
    """From a pipe (nothing can be read twice): dropped connections, 5xx and 429 on every kind
    of request; the push completes and the registry holds exactly the bundle's content."""
    store = tmp_path / "s"
    manifest = make_model(store, "registry.ollama.ai/library/m/latest",
                          [(MODEL, weights(5_500_000, seed=3)), (TEMPLATE, b"{{ .Prompt }}")])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    faults = [Fault("POST", "/blobs/uploads/", 1, "status:503"),
              Fault("HEAD", "/blobs/", 2, "status:429"),
              Fault("PATCH", "/blobs/uploads/", 2, "drop-before"),
              Fault("PATCH", "/blobs/uploads/", 4, "status:502"),
              Fault("PUT", "/blobs/uploads/", 1, "drop-before"),
              Fault("PUT", "/manifests/", 1, "status:500")]
    with fault_proxy(registry.url, faults) as (url, log):
        client = reg.Client(Transport(), Target.parse(url), None,
                                 sleep=lambda _: None)
        trusted = [signing.read_public(keys.pub)]
        pipe = io.BytesIO(bundle.read_bytes())  # no file descriptor: like stdin
        result = push.push_bundle(pipe, client, trusted, allow_unsigned=False,
                                  chunk_size=64 * 1024)
    assert len(log.fired) == len(faults), log.fired
    assert result.uploaded == 3
    assert _count(log.requests, "PATCH /v2/library/m/blobs/uploads/") > 4  # in chunks
    _assert_served(registry.url, "library/m", "latest", manifest)


def test_streamed_upload_reads_the_file_again_after_faults(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    """From a file, a large blob goes up in one streamed PATCH. A connection dropped before the
    registry saw it, one dropped after (Distribution then forgets the session), a 502 and a
    lost answer to the final PUT: each is survived by reading the blob from the file again,
    and the registry holds exactly the bundle's content."""
    store = tmp_path / "s"
    manifest = make_model(store, "registry.ollama.ai/library/s/latest",
                          [(MODEL, weights(5_500_000, seed=6)), (TEMPLATE, b"{{ .System }}")])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    # (a fault counts the requests the faults before it let through)
    faults = [Fault("PATCH", "/blobs/uploads/", 1, "drop-before"),
              Fault("PATCH", "/blobs/uploads/", 1, "drop-after"),
              Fault("PATCH", "/blobs/uploads/", 1, "status:502"),
              Fault("PUT", "/blobs/uploads/", 2, "drop-after"),  # the weights' final PUT
              Fault("PUT", "/blobs/uploads/", 2, "drop-after")]  # the template's
    with fault_proxy(registry.url, faults) as (url, log):
        client = reg.Client(Transport(), Target.parse(url), None, sleep=lambda _: None)
        with bundle.open("rb") as f:
            result = push.push_bundle(f, client, [signing.read_public(keys.pub)],
                                      allow_unsigned=False, chunk_size=64 * 1024)
    assert len(log.fired) == len(faults), log.fired
    assert _count(log.requests, "PATCH /v2/library/s/blobs/uploads/") == 4  # whole blob each
    assert result.uploaded == 3
    _assert_served(registry.url, "library/s", "latest", manifest)


def test_nothing_is_pushed_from_a_tampered_bundle(registry: Registry,
                                                  tmp_path: Path, bundle_file: Path, keys: Keys,
                                                  env: dict[str, str]) -> None:
    # an untrusted bundle: refused before a single request
    other = signing.generate()
    client = reg.Client(Transport(), Target.parse(registry.url + "/tamper"),
                             None)
    with bundle_file.open("rb") as f, pytest.raises(IntegrityError):
        push.push_bundle(f, client, [other.public], allow_unsigned=False)
    status, body, _ = _get(registry.url + "/v2/_catalog")
    assert not [r for r in json.loads(body)["repositories"] if r.startswith("tamper/")]
    # a corrupted last blob: never committed, no tag
    with bundle_file.open("rb") as f:
        plain = bytearray(zstandard.ZstdDecompressor().stream_reader(
            f, read_across_frames=True).read())
    end = len(plain.rstrip(b"\0"))
    plain[end - 1] ^= 1
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(zstandard.ZstdCompressor().compress(bytes(plain)))
    r = run(["import", str(bad), "--to-registry", registry.url + "/tamper", "--trust",
             str(keys.pub)])
    assert r.exit_code == 3
    status, body, _ = _get(registry.url + "/v2/tamper/tiny/tags/list")
    assert status == 404 or not json.loads(body).get("tags")


def test_a_lost_answer_to_a_chunk_fails_cleanly_and_a_rerun_completes(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    """Distribution 2.8 cannot continue an upload whose latest Location we never saw (its
    _state token is then stale). From a pipe the chunk cannot be read again: the import says
    so, and running it again completes. (From a file it starts the blob again, above.)"""
    store = tmp_path / "s"
    manifest = make_model(store, "registry.ollama.ai/library/lost/latest",
                          [(MODEL, weights(3_500_000, seed=4))])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    trusted = [signing.read_public(keys.pub)]
    with fault_proxy(registry.url, [Fault("PATCH", "/blobs/uploads/", 2, "drop-after")]) as (
            url, log):
        client = reg.Client(Transport(), Target.parse(url), None, sleep=lambda _: None)
        with pytest.raises(reg.RegistryError, match="cannot be continued"):
            push.push_bundle(io.BytesIO(bundle.read_bytes()), client, trusted,
                             allow_unsigned=False, chunk_size=64 * 1024)
        assert log.fired
    status, _, _ = _get(f"{registry.url}/v2/library/lost/manifests/latest", SCHEMA2)
    assert status == 404  # no tag for an incomplete model
    doc = _push(bundle, registry.url, keys)
    assert doc["blobsUploaded"] >= 1
    _assert_served(registry.url, "library/lost", "latest", manifest)


def test_store_to_registry_to_ollama_pull_through_the_recipe(
        registry: Registry, ollama_registry: OllamaRegistry, tmp_path: Path, store: Path,
        bundle_file: Path, keys: Keys, env: dict[str, str]) -> None:
    """The whole path colleagues use: push through the nginx recipe, check-registry says pulls
    work, and an Ollama-style pull (tests/support/ollama_pull.py, written from the reference)
    gets the model byte for byte; against the bare registry the same probe fails and says why."""
    doc = _push(bundle_file, ollama_registry.url + "/team", keys)
    assert doc["check"]["ok"] is True, doc["check"]
    r = run(["check-registry", ollama_registry.url, "team/tiny:latest"])
    assert r.exit_code == 0 and "will work" in r.stdout
    r = run(["check-registry", registry.url, "team/tiny:latest"])
    assert r.exit_code == 5 and "no Location header" in r.stdout
    assert "scripts/registry-for-ollama" in r.stderr

    pulled = tmp_path / "pulled"
    pull(ollama_registry.url, "team", "tiny", "latest", pulled, min_part_size=100_000)
    with pytest.raises(PullError, match="no Location header"):
        pull(registry.url, "team", "tiny", "chat", tmp_path / "bare")
    raw = (store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
    host = ollama_registry.url.removeprefix("http://")
    assert (pulled / "manifests" / host / "team" / "tiny" / "latest").read_bytes() == raw
    for d in [json.loads(raw)["config"], *json.loads(raw)["layers"]]:
        name = "sha256-" + d["digest"][7:]
        assert (pulled / "blobs" / name).read_bytes() == (store / "blobs" / name).read_bytes()


def test_store_to_registry_to_bundle_is_the_same_bundle(
        registry: Registry, tmp_path: Path, store: Path, keys: Keys, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """export --from-registry (through a mirror) writes byte for byte the bundle the store
    exporter wrote for the same models; a mirror that alters a blob is caught."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    names = ["tiny:latest", "tiny:chat", "hf.co/org/repo:Q4_K_M"]
    a, b = tmp_path / "a.tar.zst", tmp_path / "b.tar.zst"
    r = run(["export", *names, "--models", str(store), "--key", str(keys.key), "-o", str(a)])
    assert r.exit_code == 0, r.stderr
    _push(a, registry.url, keys)
    r = run(["export", "--from-registry", *names, "--mirror", registry.url, "--key",
             str(keys.key), "-o", str(b)])
    assert r.exit_code == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()
    # and from the registry into a store: byte-identical to the source
    target = tmp_path / "target"
    assert run(["import", str(b), "--models", str(target), "--trust", str(keys.pub)]
               ).exit_code == 0
    for path in ("registry.ollama.ai/library/tiny/latest", "hf.co/org/repo/Q4_K_M"):
        assert (target / "manifests" / path).read_bytes() == \
            (store / "manifests" / path).read_bytes()

    c = tmp_path / "c.tar.zst"
    with fault_proxy(registry.url, [Fault("GET", "/blobs/sha256:", 2, "corrupt")]) as (url, _):
        r = run(["export", "--from-registry", *names, "--mirror", url, "--key", str(keys.key),
                 "-o", str(c)])
    assert r.exit_code == 3 and "other content" in r.stderr
    assert not c.exists() and not list(tmp_path.glob(".c.tar.zst*"))
    r = run(["export", "--from-registry", "nope:1", "--mirror", registry.url, "--unsigned",
             "-o", str(c)])
    assert r.exit_code == 4


def test_from_registry_cache_resumes_a_partial_download(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    store = tmp_path / "s"
    make_model(store, "registry.ollama.ai/library/cached/latest",
               [(MODEL, weights(3_000_000, seed=8))])
    a, b = tmp_path / "a.tar.zst", tmp_path / "b.tar.zst"
    assert run(["export", "cached", "--models", str(store), "--key", str(keys.key), "-o",
                str(a)]).exit_code == 0
    _push(a, registry.url, keys)
    cache = tmp_path / "cache"
    args = ["export", "--from-registry", "cached", "--key", str(keys.key), "-o", str(b),
            "--cache", str(cache)]
    weights_get = "/blobs/sha256:"  # the config comes first, then the weights
    with fault_proxy(registry.url, [Fault("GET", weights_get, 2, "truncate")]) as (url, log):
        r = run([*args, "--mirror", url])
        assert r.exit_code == 5 and log.fired
        partials = list(cache.glob("*.partial"))
        assert len(partials) == 1
        had = partials[0].stat().st_size
        assert 1_000_000 < had < 3_000_000  # half of the weights blob
        r = run([*args, "--mirror", url])
        assert r.exit_code == 0, r.stderr
        assert log.ranges == [f"bytes={had}-"]  # continued, not restarted
    assert a.read_bytes() == b.read_bytes()
    assert not list(cache.glob("*.partial")) and len(list(cache.iterdir())) == 2
    # a third run reads everything from the cache: the registry is not asked for blobs
    with fault_proxy(registry.url, []) as (url, log):
        assert run([*args, "--mirror", url]).exit_code == 0
        assert not [x for x in log.requests if "/blobs/" in x]


def test_from_registry_cache_drops_bad_content(registry: Registry, tmp_path: Path, keys: Keys,
                                               env: dict[str, str]) -> None:
    store = tmp_path / "s"
    make_model(store, "registry.ollama.ai/library/badcache/latest",
               [(MODEL, weights(200_000, seed=9))])
    a = tmp_path / "a.tar.zst"
    assert run(["export", "badcache", "--models", str(store), "--key", str(keys.key), "-o",
                str(a)]).exit_code == 0
    _push(a, registry.url, keys)
    cache = tmp_path / "cache"
    args = ["export", "--from-registry", "badcache", "--unsigned", "-o",
            str(tmp_path / "b.tar.zst"), "--cache", str(cache)]
    with fault_proxy(registry.url, [Fault("GET", "/blobs/sha256:", 2, "corrupt")]) as (url, _):
        r = run([*args, "--mirror", url])
    assert r.exit_code == 3 and "other content" in r.stderr
    assert len(list(cache.iterdir())) == 1  # the good config stays, the bad weights do not
    assert run([*args, "--mirror", registry.url]).exit_code == 0


@pytest.mark.parametrize("jobs", [1, 3])
def test_uploads_in_flight_are_bounded_by_jobs(registry: Registry, tmp_path: Path,
                                               keys: Keys, env: dict[str, str],
                                               jobs: int) -> None:
    """Blobs read again from the file go up beside the single pass, at most jobs - 1 at a
    time (one at a time with --jobs 1); the registry ends up with exactly the content."""
    store = tmp_path / "s"
    layers = [(MODEL, weights(300_000, seed=20 + i)) for i in range(6)]
    manifest = make_model(store, "registry.ollama.ai/library/par/latest", layers)
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    faults = [Fault("PUT", "/blobs/uploads/", 1, "delay:0.4") for _ in range(7)]
    with fault_proxy(registry.url, faults) as (url, log):
        client = reg.Client(Transport(), Target.parse(f"{url}/j{jobs}"), None,
                            sleep=lambda _: None)
        with bundle.open("rb") as f:
            result = push.push_bundle(f, client, [signing.read_public(keys.pub)],
                                      allow_unsigned=False, jobs=jobs)
    assert result.uploaded == 7  # six layers and the config
    assert log.max_in_flight["PUT"] == max(1, jobs - 1)
    _assert_served(registry.url, f"j{jobs}/par", "latest", manifest)


def test_a_failed_parallel_upload_stops_the_push_before_any_tag(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    store = tmp_path / "s"
    layers = [(MODEL, weights(200_000, seed=40 + i)) for i in range(4)]
    make_model(store, "registry.ollama.ai/library/fail/latest", layers)
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    with fault_proxy(registry.url, [Fault("PUT", "/blobs/uploads/", 3, "status:403")]) as (
            url, log):
        client = reg.Client(Transport(), Target.parse(url), None, sleep=lambda _: None)
        with bundle.open("rb") as f, pytest.raises(reg.RegistryError, match="403"):
            push.push_bundle(f, client, [signing.read_public(keys.pub)],
                             allow_unsigned=False, jobs=4)
        assert log.fired
    assert _get(f"{registry.url}/v2/library/fail/manifests/latest", SCHEMA2)[0] == 404


@pytest.mark.parametrize("source", ["file", "pipe"])
def test_stalls_and_drops_mid_blob_are_survived(registry: Registry, tmp_path: Path,
                                                keys: Keys, env: dict[str, str],
                                                source: str) -> None:
    """A registry that goes silent for longer than the timeout, and connections dropped
    halfway through a blob's bytes: retried, and the registry holds exactly the content."""
    store = tmp_path / "s"
    manifest = make_model(store, "registry.ollama.ai/library/stall/latest",
                          [(MODEL, weights(4_000_000, seed=50)), (TEMPLATE, b"{{ .Stall }}")])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    # the registry keeps the half it got and then refuses that upload session: a large blob
    # from a file, and a small one (all of it in memory), start again; a chunk from a pipe
    # cannot (test_a_lost_answer_to_a_chunk_... below)
    faults = [*([Fault("PATCH", "/blobs/uploads/", 1, "drop-mid")] if source == "file" else []),
              Fault("PATCH", "/blobs/uploads/", 1, "stall:2.5"),
              Fault("PUT", "/blobs/uploads/", 1, "drop-mid"),
              Fault("HEAD", "/blobs/", 1, "stall:2.5"),
              Fault("PUT", "/manifests/", 1, "stall:2.5")]
    with fault_proxy(registry.url, faults) as (url, log):
        client = reg.Client(Transport(read_timeout=1.0), Target.parse(f"{url}/{source}"),
                            None, sleep=lambda _: None)
        with bundle.open("rb") as f:
            src = f if source == "file" else io.BytesIO(f.read())
            result = push.push_bundle(src, client, [signing.read_public(keys.pub)],
                                      allow_unsigned=False, chunk_size=1024 * 1024)
    assert len(log.fired) == len(faults), log.fired
    assert result.uploaded == 3
    _assert_served(registry.url, f"{source}/stall", "latest", manifest)


def test_large_blobs_go_up_in_parallel_through_the_seek_table(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Several large blobs to upload: each is read on its own from the file, up to --jobs at
    a time (the threshold for "large" lowered so the test data stays small)."""
    monkeypatch.setattr(push, "PARALLEL_MAX", 1_000_000)
    store = tmp_path / "s"
    manifests = [make_model(store, f"registry.ollama.ai/library/l{i}/latest",
                            [(MODEL, weights(3_000_000, seed=70 + i))]) for i in range(4)]
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    faults = [Fault("PATCH", "/blobs/uploads/", 1, "delay:0.4") for _ in range(4)]
    with fault_proxy(registry.url, faults) as (url, log):
        client = reg.Client(Transport(), Target.parse(f"{url}/par"), None,
                            sleep=lambda _: None)
        with bundle.open("rb") as f:
            result = push.push_bundle(f, client, [signing.read_public(keys.pub)],
                                      allow_unsigned=False, jobs=3, chunk_size=1 << 20)
    assert result.uploaded == 5  # four weights and the shared config
    assert log.max_in_flight["PATCH"] == 3
    for i, manifest in enumerate(manifests):
        _assert_served(registry.url, f"par/l{i}", "latest", manifest)


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def test_a_second_push_reads_only_what_the_registry_lacks(
        registry: Registry, tmp_path: Path, keys: Keys, env: dict[str, str]) -> None:
    """Interrupted or partial replays continue: blobs already in the registry are not even
    read from the bundle (bytes read counted by the kernel)."""
    store = tmp_path / "s"
    size = 12_000_000
    for i in range(3):
        make_model(store, f"registry.ollama.ai/library/r{i}/latest",
                   [(MODEL, weights(size, seed=80 + i))])
    bundle = tmp_path / "b.tar.zst"
    assert run(["export", "--all", "--models", str(store), "--key", str(keys.key), "-o",
                str(bundle)]).exit_code == 0
    url = registry.url + "/again"
    _push(bundle, url, keys, "--only", "r0", "--only", "r2")
    before = _rchar()
    doc = _push(bundle, url, keys)
    read = _rchar() - before
    assert doc["blobsUploaded"] == 1 and doc["blobsPresent"] >= 3
    assert read < size + 256 * 1024, read  # r1's weights and the head, nothing else
