"""cosign simple-signing signatures (formats/signature-v1.md §6): carried in the bundle,
pushed as sha256-<hex>.sig manifests into the real Distribution registry, read back with
plain HTTP and skopeo, and verified with openssl, as `cosign verify --key` checks them."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from bundler import cosign
from bundler.digest import Digest
from bundler.distribution import Target
from bundler.registry import client as reg
from bundler.registry.transport import Transport
from tests.support.common import Keys, make_keys, run
from tests.support.scene import Scene
from tests.support.servers import Registry, _get
from tests.support.tar import regular, sha256_hex

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"


def _export(store: Path, out: Path, *keys: Keys) -> None:
    args = ["export", "--all", "--models", str(store), "-o", str(out)]
    for k in keys:
        args += ["--key", str(k.key)]
    if not keys:
        args.append("--unsigned")
    r = run(args)
    assert r.exit_code == 0, r.stderr


def _push(bundle: Path, url: str, *trust: Keys, only: str | None = None) -> Any:
    args = ["import", str(bundle), "--to-registry", url, "--json"]
    for k in trust:
        args += ["--trust", str(k.pub)]
    if only:
        args += ["--only", only]
    r = run(args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _openssl_verifies(pub: Path, payload: bytes, signature_b64: str, tmp: Path) -> bool:
    (tmp / "payload").write_bytes(payload)
    (tmp / "sig.der").write_bytes(base64.b64decode(signature_b64))
    p = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature",
                        str(tmp / "sig.der"), str(tmp / "payload")], capture_output=True,
                       check=False)
    return p.returncode == 0 and p.stdout.strip() == b"Verified OK"


def _signatures(base: str, repo: str, tag: str) -> tuple[str, bytes, list[tuple[bytes, str]]]:
    """The model's digest, its .sig manifest bytes and each layer's (payload, signature),
    with the structure cosign's specification and containers/image require checked."""
    status, _, headers = _get(f"{base}/v2/{repo}/manifests/{tag}", SCHEMA2)
    assert status == 200
    digest = headers["Docker-Content-Digest"]
    status, raw, headers = _get(f"{base}/v2/{repo}/manifests/sha256-{digest[7:]}.sig",
                                OCI_MANIFEST)
    assert status == 200, raw
    assert headers["Content-Type"] == OCI_MANIFEST  # cosign and podman need an OCI manifest
    doc = json.loads(raw)
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == OCI_MANIFEST
    assert doc["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    _, config, _ = _get(f"{base}/v2/{repo}/blobs/{doc['config']['digest']}")
    assert "sha256:" + hashlib.sha256(config).hexdigest() == doc["config"]["digest"]
    assert json.loads(config)["rootfs"] == {
        "type": "layers", "diff_ids": [la["digest"] for la in doc["layers"]]}
    layers = []
    for la in doc["layers"]:
        assert la["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
        assert set(la["annotations"]) == {"dev.cosignproject.cosign/signature"}
        _, payload, _ = _get(f"{base}/v2/{repo}/blobs/{la['digest']}")
        assert "sha256:" + hashlib.sha256(payload).hexdigest() == la["digest"]
        assert len(payload) == la["size"]
        claim = json.loads(payload)
        # containers/image's strict reading: exactly these keys, optional present
        assert set(claim) == {"critical", "optional"} and claim["optional"] is None
        assert set(claim["critical"]) == {"identity", "image", "type"}
        assert claim["critical"]["type"] == "cosign container image signature"
        # cosign's SimpleClaimVerifier: the claimed digest is the tag's digest
        assert claim["critical"]["image"] == {"docker-manifest-digest": digest}
        layers.append((payload, la["annotations"]["dev.cosignproject.cosign/signature"]))
    return digest, raw, layers


def test_pushed_signatures_verify_with_openssl(registry: Registry, store: Path,
                                               tmp_path: Path, keys: Keys,
        env: dict[str, str]) -> None:
    bundle = tmp_path / "b.tar.zst"
    _export(store, bundle, keys)
    doc = _push(bundle, registry.url + "/cs", keys)
    assert doc["cosignSignatures"] == 3  # tiny:latest, tiny:chat, repo:Q4_K_M
    wrong = make_keys(tmp_path, "wrong")
    for repo, tag, source in [("cs/tiny", "latest", "registry.ollama.ai/library/tiny"),
                              ("cs/tiny", "chat", "registry.ollama.ai/library/tiny"),
                              ("cs/repo", "Q4_K_M", "hf.co/org/repo")]:
        digest, raw, layers = _signatures(registry.url, repo, tag)
        ((payload, sig),) = layers
        assert json.loads(payload)["critical"]["identity"] == {"docker-reference": source}
        assert _openssl_verifies(keys.pub, payload, sig, tmp_path)
        assert not _openssl_verifies(wrong.pub, payload, sig, tmp_path)
        assert not _openssl_verifies(keys.pub, payload.replace(b"sha256:", b"sha256:0"), sig,
                                     tmp_path)
        # skopeo, an independent client, reads the same signature manifest
        host = registry.url.removeprefix("http://")
        skopeo = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false",
             f"docker://{host}/{repo}:sha256-{digest[7:]}.sig"], capture_output=True, check=True)
        assert skopeo.stdout == raw
    # pushed again: nothing to add, the signature manifest stays as it was
    _, before, _ = _signatures(registry.url, "cs/tiny", "latest")
    assert _push(bundle, registry.url + "/cs", keys)["cosignSignatures"] == 0
    assert _signatures(registry.url, "cs/tiny", "latest")[1] == before


def test_second_signer_is_merged_and_untrusted_signers_are_not_pushed(
        registry: Registry, store: Path, tmp_path: Path, keys: Keys,
        env: dict[str, str]) -> None:
    other, stranger = make_keys(tmp_path, "other"), make_keys(tmp_path, "stranger")
    first, second = tmp_path / "1.tar.zst", tmp_path / "2.tar.zst"
    _export(store, first, keys, stranger)
    _export(store, second, other, stranger)
    assert _push(first, registry.url + "/m", keys, only="tiny:latest")["cosignSignatures"] == 1
    _, _, layers = _signatures(registry.url, "m/tiny", "latest")
    assert len(layers) == 1 and _openssl_verifies(keys.pub, *layers[0], tmp_path)
    # another release signed by another trusted key adds its signature after the first
    assert _push(second, registry.url + "/m", other, only="tiny:latest")["cosignSignatures"] == 1
    _, _, after = _signatures(registry.url, "m/tiny", "latest")
    assert after[0] == layers[0] and len(after) == 2
    assert _openssl_verifies(other.pub, *after[1], tmp_path)
    # the stranger signed both bundles, but nobody trusted it: its signatures stay behind
    assert not any(_openssl_verifies(stranger.pub, *la, tmp_path) for la in after)


def test_unsigned_bundle_pushes_no_signatures(registry: Registry, store: Path,
                                              tmp_path: Path, env: dict[str, str]) -> None:
    bundle = tmp_path / "u.tar.zst"
    _export(store, bundle)
    r = run(["import", str(bundle), "--to-registry", registry.url + "/u", "--allow-unsigned",
             "--json", "--only", "tiny:latest"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["cosignSignatures"] == 0
    status, _, headers = _get(f"{registry.url}/v2/u/tiny/manifests/latest", SCHEMA2)
    assert status == 200
    digest = headers["Docker-Content-Digest"]
    assert _get(f"{registry.url}/v2/u/tiny/manifests/sha256-{digest[7:]}.sig",
                OCI_MANIFEST)[0] == 404


def test_documents_are_carried_and_match_the_spec(scene: Scene) -> None:
    """One document per signer, listed in the root, each signature over the payload of §6.1
    and checkable with openssl straight from the extracted bundle."""
    b = scene.bundle()
    root = b.root
    ((listed,),) = [root["cosign"]]
    member = b.member(cosign.member(scene.keys.keyid))
    assert listed == {"keyid": scene.keys.keyid, "size": len(member.data),
                      "digest": f"sha256:{sha256_hex(member.data)}"}
    doc = json.loads(member.data)
    assert member.data.endswith(b"\n") and doc["mediaType"] == cosign.MEDIA_TYPE_DOCUMENT
    wanted = {(d["annotations"]["org.opencontainers.image.ref.name"].rsplit(":", 1)[0],
               d["digest"]) for d in b.index["manifests"]}
    assert {(e["reference"], e["manifest"]) for e in doc["signatures"]} == wanted
    for e in doc["signatures"]:
        payload = (b'{"critical":{"identity":{"docker-reference":"' + e["reference"].encode()
                   + b'"},"image":{"docker-manifest-digest":"' + e["manifest"].encode()
                   + b'"},"type":"cosign container image signature"},"optional":null}')
        assert _openssl_verifies(scene.keys.pub, payload, e["signature"], scene.tmp)


def _edit_document(scene: Scene, edit: Any) -> Path:
    """The cosign document changed by `edit`, and the root re-signed over it by the trusted
    key: only the document's own checks can refuse it."""
    b = scene.bundle()
    name = cosign.member(scene.keys.keyid)
    doc = json.loads(b.member(name).data)
    edit(doc)
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    b.members[b.pos(name)] = regular(name, data)
    root = b.root
    root["cosign"] = [{"keyid": scene.keys.keyid, "size": len(data),
                       "digest": f"sha256:{sha256_hex(data)}"}]
    b.set_root(json.dumps(root, separators=(",", ":"), sort_keys=True).encode() + b"\n",
               sign_with=scene.private_key)
    return scene.write_tar(b.tar())


def test_document_with_a_bad_signature_is_refused(scene: Scene) -> None:
    def swap(doc: dict[str, Any]) -> None:  # valid signatures, on the wrong payloads
        sigs = doc["signatures"]
        sigs[0]["signature"], sigs[1]["signature"] = sigs[1]["signature"], sigs[0]["signature"]

    assert "does not verify" in scene.refused(_edit_document(scene, swap))


def test_document_for_other_models_is_refused(scene: Scene) -> None:
    def drop(doc: dict[str, Any]) -> None:
        del doc["signatures"][0]

    def rename(doc: dict[str, Any]) -> None:
        doc["signatures"][0]["reference"] = "registry.ollama.ai/library/evil"

    assert "model manifests" in scene.refused(_edit_document(scene, drop))
    assert "calls for" in scene.refused(_edit_document(scene, rename))


def test_document_not_listed_in_the_root_is_refused(scene: Scene) -> None:
    b = scene.bundle()
    root = b.root
    del root["cosign"]
    b.set_root(json.dumps(root, separators=(",", ":"), sort_keys=True).encode() + b"\n",
               sign_with=scene.private_key)
    assert "not listed in the signed root" in scene.refused(scene.write_tar(b.tar()))


def test_signatures_already_in_the_registry_are_kept_byte_for_byte(
        registry: Registry, store: Path, tmp_path: Path, keys: Keys,
        env: dict[str, str]) -> None:
    """A keyless signature (certificate and Rekor bundle annotations) pushed earlier by
    cosign stays exactly as it was; ours is added after it. A tag that is not a signature
    manifest is not overwritten."""
    bundle = tmp_path / "b.tar.zst"
    _export(store, bundle, keys)
    repo = "kept/tiny"
    manifest = (store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    client = reg.Client(Transport(), Target.parse(registry.url), None)
    payload = b'{"critical":{"type":"earlier"},"optional":null}'
    foreign = {"mediaType": cosign.MEDIA_TYPE_SIMPLESIGNING, "size": len(payload),
               "digest": str(Digest.of(payload)),
               "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ==",
                               "dev.sigstore.cosign/certificate": "-----BEGIN CERT...",
                               "dev.sigstore.cosign/bundle": '{"SignedEntryTimestamp":"x"}'}}
    config = cosign.signature_config([foreign])
    for blob in (payload, config):
        client.upload(repo, Digest.of(blob), len(blob), [blob], chunk_size=1 << 20)
    client.put_manifest(repo, f"sha256-{digest[7:]}.sig",
                        cosign.signature_manifest(config, [foreign]), OCI_MANIFEST)
    assert _push(bundle, registry.url + "/kept", keys, only="tiny:latest")[
        "cosignSignatures"] == 1
    _, raw, _ = _get(f"{registry.url}/v2/{repo}/manifests/sha256-{digest[7:]}.sig",
                     OCI_MANIFEST)
    layers = json.loads(raw)["layers"]
    assert layers[0] == foreign and len(layers) == 2
    # a tag that some other tool wrote there is left alone, and the push says so
    for blob in (payload, config):
        client.upload("odd/tiny", Digest.of(blob), len(blob), [blob], chunk_size=1 << 20)
    odd = cosign.signature_manifest(config, [foreign]).replace(
        OCI_MANIFEST.encode(), SCHEMA2.encode())  # a Docker manifest: not cosign's
    client.put_manifest("odd/tiny", f"sha256-{digest[7:]}.sig", odd, SCHEMA2)
    r = run(["import", str(bundle), "--to-registry", registry.url + "/odd", "--trust",
             str(keys.pub), "--only", "tiny:latest"])
    assert r.exit_code == 5 and "not a cosign signature manifest" in r.stderr, r.output
    assert _get(f"{registry.url}/v2/odd/tiny/manifests/sha256-{digest[7:]}.sig",
                SCHEMA2)[1] == odd
