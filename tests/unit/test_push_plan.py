"""push.Placement, the blob-placement plan of `import --to-registry`, against a stub registry
that only answers HEAD (has_blob) and mount: which blobs are present, mounted or uploaded, into
which repository, and in what order the registry is asked. The transfer itself runs against a
real registry in test_push.py."""

from __future__ import annotations

import json

from bundler.digest import Digest
from bundler.distribution import PushItem
from bundler.layout import BlobRef, External, Model
from bundler.oci import MEDIA_TYPE_DOCKER_MANIFEST, Manifest
from bundler.push import Placement
from bundler.reference import ModelName

CONFIG = "application/vnd.docker.container.image.v1+json"
WEIGHTS = "application/vnd.ollama.image.model"


def blob(data: bytes) -> BlobRef:
    return BlobRef(Digest.of(data), len(data))


def item(name: str, repository: str, *blobs: BlobRef) -> PushItem:
    config, *layers = blobs
    raw = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
        "config": {"mediaType": CONFIG, "digest": str(config.digest), "size": config.size},
        "layers": [{"mediaType": WEIGHTS, "digest": str(b.digest), "size": b.size}
                   for b in layers],
    }).encode()
    parsed = ModelName.parse(name)
    return PushItem(Model(parsed, Manifest.parse(raw, name)), repository, parsed.tag)


class StubRegistry:
    """Blobs per repository; mounts succeed from a repository that has the blob. Every
    question is recorded, in order."""

    def __init__(self, blobs: dict[str, set[Digest]]) -> None:
        self.blobs = blobs
        self.asked: list[tuple[str, str, str]] = []

    def has_blob(self, repo: str, digest: Digest, size: int) -> bool:
        self.asked.append(("HEAD", repo, digest.short))
        return digest in self.blobs.get(repo, set())

    def mount(self, repo: str, digest: Digest, source: str) -> bool:
        self.asked.append(("MOUNT", repo, digest.short))
        if digest not in self.blobs.get(source, set()):
            return False
        self.blobs.setdefault(repo, set()).add(digest)
        return True


CFG_A, CFG_B = blob(b"config a"), blob(b"config b")
SHARED, OWN_B, THERE = blob(b"shared weights"), blob(b"weights of b"), blob(b"in the registry")


def test_each_blob_is_present_mounted_or_uploaded_to_its_first_repository() -> None:
    items = [item("team/a:1", "ns/a", CFG_A, SHARED, THERE),
             item("team/b:1", "ns/b", CFG_B, SHARED, OWN_B)]
    registry = StubRegistry({"ns/a": {THERE.digest}, "team/b": {OWN_B.digest}})
    plan = Placement.of(items)
    assert plan.needs[SHARED.digest] == ["ns/a", "ns/b"]
    assert plan.natural[SHARED.digest] == "team/a"  # the first model's own repository
    assert plan.natural[OWN_B.digest] == "team/b"

    plan.place([CFG_A, SHARED, THERE, CFG_B, OWN_B], registry)

    assert plan.uploading == {CFG_A.digest, SHARED.digest, CFG_B.digest}
    assert (plan.present, plan.mounted, plan.uploaded) == (1, 1, 3)
    assert plan.uploaded_bytes == CFG_A.size + SHARED.size + CFG_B.size
    assert plan.homes[SHARED.digest] == ("ns/a", ["ns/a", "ns/b"], SHARED.size)
    assert plan.homes[OWN_B.digest][0] == "ns/b"  # mounted there from team/b
    assert plan.homes[THERE.digest][0] == "ns/a"
    assert registry.asked[:5] == [
        ("HEAD", "ns/a", CFG_A.digest.short), ("MOUNT", "ns/a", CFG_A.digest.short),
        ("HEAD", "ns/a", SHARED.digest.short), ("HEAD", "ns/b", SHARED.digest.short),
        ("MOUNT", "ns/a", SHARED.digest.short)]
    assert registry.asked[-2:] == [("HEAD", "ns/b", OWN_B.digest.short),
                                   ("MOUNT", "ns/b", OWN_B.digest.short)]


def test_after_the_uploads_the_other_repositories_get_mounts_from_the_home() -> None:
    items = [item("team/a:1", "team/a", CFG_A, SHARED), item("team/b:1", "team/b", CFG_B, SHARED)]
    registry = StubRegistry({})
    plan = Placement.of(items)
    assert plan.natural == {}  # pushed under their own names: nowhere else to look
    plan.place([CFG_A, SHARED, CFG_B], registry)
    assert plan.uploading == {CFG_A.digest, SHARED.digest, CFG_B.digest}
    assert not any(kind == "MOUNT" for kind, _, _ in registry.asked)
    assert list(plan.cross_mounts(registry)) == [(SHARED.digest, "team/b", "team/a")]
    registry.blobs["team/b"] = {SHARED.digest}  # already there: no mount
    assert list(plan.cross_mounts(registry)) == []


def test_blobs_left_out_of_a_delta_are_found_or_mounted_never_uploaded() -> None:
    items = [item("team/a:1", "ns/a", CFG_A, SHARED, THERE)]
    registry = StubRegistry({"ns/a": {THERE.digest}, "team/a": {SHARED.digest}})
    plan = Placement.of(items)
    plan.find_external([External(SHARED, 0), External(THERE, 0), External(OWN_B, 0)], registry)
    assert plan.found_external == {SHARED.digest, THERE.digest}
    assert (plan.present, plan.mounted, plan.uploaded) == (2, 0, 0)
    assert OWN_B.digest not in plan.homes  # needed by no model here: not asked for
    # looking writes nothing, not even a mount: the push may still be refused for a base
    assert registry.asked == [
        ("HEAD", "ns/a", SHARED.digest.short), ("HEAD", "team/a", SHARED.digest.short),
        ("HEAD", "ns/a", THERE.digest.short)]
    assert plan.uploading == set()
    # once the bases are known to be there, the shared blob is mounted from its own repository
    assert list(plan.cross_mounts(registry)) == [(SHARED.digest, "ns/a", "team/a")]
