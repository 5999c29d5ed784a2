"""Use cases for bundle files: export, ls, verify and import into an Ollama model store."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from bundler import __version__, cosign, modelkind, signing
from bundler.archive import ArchiveWriter, seek_table
from bundler.digest import Digest
from bundler.errors import BundlerError, IntegrityError, NotFoundError, UsageError
from bundler.inventory import (
    MEDIA_TYPE_INVENTORY,
    Inventory,
    ModelEntry,
    Release,
    release_of_inventory,
)
from bundler.layout import (
    INDEX_MEMBER,
    MEDIA_TYPE_ROOT,
    NO_BASES,
    OCI_LAYOUT,
    OCI_LAYOUT_MEMBER,
    ROOT_MEMBER,
    Base,
    BlobRef,
    Contents,
    CosignRef,
    External,
    Have,
    Model,
    ToolRef,
    blob_member,
    check_tool_version,
    compression_level,
    format_created,
    metadata_level,
    plan_contents,
    signature_member,
)
from bundler.progress import OnBytes, OnEvent, format_size, no_events, no_progress, plural
from bundler.reader import BundleReader, Head, Seekable
from bundler.reference import ModelName
from bundler.store import StagedBlob, Store
from bundler.streams import ReadAhead, Sink, SplitOutput
from bundler.volumes import part_name, split_name

TOOL_NAME = "ollama-bundle"
_FREE_SPACE_MARGIN = 1024 * 1024  # plus 1 % of what is written: file system overhead


# ---------------------------------------------------------------------------------------------
# Selecting models by name


def pick(wanted: Sequence[str], available: Sequence[ModelName], where: str) -> list[ModelName]:
    """Resolve user-typed names against `available`, case-insensitively (Ollama's lookup)."""
    by_fold = {n.folded(): n for n in available}
    picked: dict[ModelName, None] = {}
    for text in wanted:
        name = ModelName.parse(text)
        found = by_fold.get(name.folded())
        if found is None:
            listing = ", ".join(n.display_shortest() for n in available) or "none"
            raise NotFoundError(f"model {text!r} is not in {where}", hint=f"available: {listing}")
        picked[found] = None
    return list(picked)


def model_json(model: Model) -> dict[str, Any]:
    return {
        "name": model.name.display_shortest(),
        "fullName": str(model.name),
        "id": model.manifest.digest.short,
        "digest": str(model.manifest.digest),
        "size": model.manifest.total_size,
        "layers": [layer.media_type.rsplit(".", 1)[-1] for layer in model.manifest.layers],
        "weights": modelkind.weights(model.manifest),
    }


# ---------------------------------------------------------------------------------------------
# Export


class BlobSource(Protocol):
    """Where export reads blobs: an Ollama store, or a registry (push.RegistrySource)."""

    def describe(self) -> str: ...

    def open_blob(self, digest: Digest) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def mismatch(self, model: ModelName, digest: Digest, got: Digest) -> IntegrityError: ...


@dataclass(frozen=True, slots=True)
class StoreSource:
    store: Store

    def describe(self) -> str:
        return self.store.location.describe()

    def open_blob(self, digest: Digest) -> contextlib.AbstractContextManager[BinaryIO]:
        return self.store.open_blob(digest)

    def mismatch(self, model: ModelName, digest: Digest, got: Digest) -> IntegrityError:
        return IntegrityError(
            f"corrupt store: model {model.display_shortest()}: blob {digest} does not match "
            f"its digest (got {got})",
            hint="re-pull the model, or remove it with 'ollama rm'; nothing was written")


@dataclass(frozen=True, slots=True)
class ExportPlan:
    source: BlobSource
    contents: Contents
    remote_left_out: tuple[ModelName, ...] = ()  # by --all (formats/ollama-store.md §6)

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.contents.blobs)


def plan_export(store: Store, names: Sequence[str], *, all_models: bool,
                have: Have = NO_BASES, on_event: OnEvent = no_events) -> ExportPlan:
    store.require()
    available = store.names(on_event)
    if all_models:
        if not available:
            raise NotFoundError(f"no models in {store.location.describe()}")
        picked = available
    else:
        picked = pick(names, available, store.location.describe())
    models = [store.read_model(n) for n in picked]
    remote = {m.name: r for m in models if (r := _remote(store, m)) is not None}
    if all_models and remote:  # they cannot run behind an air gap (formats/ollama-store.md §6)
        on_event(f"warning: left out {plural(len(remote), 'remote model')} (run on another "
                 "host, so not behind an air gap): "
                 + ", ".join(f"{n.display_shortest()} ({r})" for n, r in remote.items())
                 + "; name one to export it anyway")
        models = [m for m in models if m.name not in remote]
        if not models:
            raise NotFoundError(f"no local models in {store.location.describe()}, only "
                                f"{plural(len(remote), 'remote one')}",
                                hint="name a remote model to export it anyway")
    else:
        for n, r in remote.items():
            on_event(f"warning: {n.display_shortest()} is a remote model ({r}): it has no "
                     "weights and runs only where that host can be reached")
    for m in models:
        if (why := modelkind.marker_tag(m.name)) is not None:
            on_event(f"warning: {why}")
    for model in models:
        for blob in model.manifest.blobs:
            size = store.blob_size(blob.digest)
            if size != blob.size:
                problem = "is missing" if size is None else (
                    f"has {plural(size, 'byte')}, the manifest says {blob.size}")
                raise IntegrityError(
                    f"corrupt store: model {model.name.display_shortest()}: blob {blob.digest} "
                    f"{problem}", hint="re-pull the model, or remove it with 'ollama rm'")
    return ExportPlan(StoreSource(store), plan_contents(models, have),
                      tuple(remote) if all_models else ())


def _remote(store: Store, model: Model) -> str | None:
    """What modelkind.remote_of says of the model's config blob (None if it is unreadable:
    the export's own checks then name the problem)."""
    if store.blob_size(model.manifest.config.digest) != model.manifest.config.size:
        return None
    with store.open_blob(model.manifest.config.digest) as f:
        return modelkind.remote_of(f.read(modelkind.MAX_CONFIG_BYTES))


# ---------------------------------------------------------------------------------------------
# The carried tool (formats/bundle-v1.md §11)

_PEX_REQUIREMENT = re.compile(r"ollama-bundle==(\S+)")


def default_tool(environ: Mapping[str, str]) -> Path:
    """The PEX this process runs from (pex sets $PEX to its path), else the one
    scripts/build-pex wrote into dist/ beside this package's source."""
    running = environ.get("PEX", "")
    if running and Path(running).is_file():
        return Path(running)
    built = Path(__file__).resolve().parents[1] / "dist" / f"{TOOL_NAME}-{__version__}.pex"
    if built.is_file():
        return built
    raise NotFoundError("--with-tool: this tool is not running from a PEX and there is no "
                        f"dist/{built.name}",
                        hint="build it with scripts/build-pex, or give --with-tool FILE")


@dataclass(frozen=True, slots=True)
class CarriedTool:
    path: Path
    ref: ToolRef


def carried_tool(path: Path) -> CarriedTool:
    """A PEX of this tool, checked to be one (its PEX-INFO names an ollama-bundle version),
    with its digest and size."""
    what = f"--with-tool {path}"
    try:
        with zipfile.ZipFile(path) as z:
            info = json.loads(z.read("PEX-INFO"))
        found = [m.group(1) for r in info.get("requirements", ())
                 if isinstance(r, str) and (m := _PEX_REQUIREMENT.fullmatch(r))]
    except FileNotFoundError:
        raise NotFoundError(f"{what}: no such file") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, AttributeError):
        raise UsageError(f"{what}: not a PEX file", hint="build one with scripts/build-pex"
                         ) from None
    if len(found) != 1:
        raise UsageError(f"{what}: a PEX, but not one of {TOOL_NAME}",
                         hint="build one with scripts/build-pex")
    version = check_tool_version(found[0], what)
    with path.open("rb") as f:
        source = ReadAhead(f)
        size = sum(len(chunk) for chunk in source)
    return CarriedTool(path, ToolRef(version, BlobRef(source.digest, size)))


@dataclass(frozen=True, slots=True)
class ExportResult:
    output: str
    models: tuple[Model, ...]
    blobs: int
    bytes_in: int
    signers: tuple[str, ...]
    created: str
    store: str
    contents: Contents | None = None
    tool_file: ToolRef | None = None
    remote_left_out: tuple[ModelName, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output, "store": self.store, "created": self.created,
            "remoteLeftOut": [n.display_shortest() for n in self.remote_left_out],
            "models": [model_json(m) for m in self.models], "blobs": self.blobs,
            "bytes": self.bytes_in, "signers": list(self.signers),
            **(delta_json(self.contents.bases, self.contents.external)
               if self.contents is not None else {}),
            **tool_json(self.tool_file),
        }


def export_bundle(
    plan: ExportPlan, out: Sink | SplitOutput, *, keys: Sequence[signing.PrivateKey],
    level: int | None, created_epoch: int | None, on_bytes: OnBytes = no_progress,
    tool: CarriedTool | None = None,
) -> ExportResult:
    """Write the bundle to `out`, verifying every store blob's digest while it streams. Into
    a SplitOutput the configs and layers go first (parts 2..N), and the head, which names
    those parts, last (part 1; formats/bundle-v1.md §10); the caller commits it."""
    contents = plan.contents
    created = format_created(int(time.time()) if created_epoch is None else created_epoch)
    signers = sorted({k.public.keyid: k for k in keys}.items())  # one signature per key id
    documents = registry_signatures(contents.models, [k for _, k in signers])

    def head(writer: ArchiveWriter, parts: Sequence[BlobRef]) -> list[tuple[str, bytes]]:
        root = contents.root(created=created, tool_name=TOOL_NAME, tool_version=__version__,
                             cosign=[CosignRef(k, BlobRef(Digest.of(d), len(d)))
                                     for k, d in documents], parts=parts,
                             tool_file=None if tool is None else tool.ref)
        root_bytes = root.to_bytes()
        sigs = [(keyid, signing.sign(k, root_bytes)) for keyid, k in signers]
        signed = [
            (ROOT_MEMBER, root_bytes),
            *((signature_member(keyid), sig) for keyid, sig in sigs),
            *((cosign.member(keyid), doc) for keyid, doc in documents),
        ]
        layout = [(OCI_LAYOUT_MEMBER, OCI_LAYOUT), (INDEX_MEMBER, contents.index_raw)]
        if tool is None:
            writer.write_small([*signed, *layout], level=metadata_level(level))
        else:  # formats/bundle-v1.md §7: the tool in stored frames of its own
            writer.write_small(signed, level=metadata_level(level))
            _write_tool(writer, tool)
            writer.write_small(layout, level=metadata_level(level))
        for m in {m.manifest.digest: m.manifest for m in contents.models}.values():
            writer.write_stream(blob_member(m.digest), len(m.raw), [m.raw],
                                level=metadata_level(level))
            on_bytes(len(m.raw))
        return sigs

    if isinstance(out, SplitOutput):
        blobs = ArchiveWriter(out)
        _write_blobs(plan, blobs, level, on_bytes)
        blobs.end_archive()
        parts = [BlobRef(p.digest, p.size) for p in out.finish()]
        with out.head() as first:
            writer = ArchiveWriter(first)
            sigs = head(writer, parts)
        out.trailer(seek_table([*writer.frames, *blobs.frames]))
    else:
        writer = ArchiveWriter(out)
        sigs = head(writer, ())
        _write_blobs(plan, writer, level, on_bytes)
        writer.close()
    return ExportResult(
        output="", models=contents.models, blobs=len(contents.blobs),
        bytes_in=sum(b.size for b in contents.blobs), signers=tuple(k for k, _ in sigs),
        created=created, store=plan.source.describe(), contents=contents,
        tool_file=None if tool is None else tool.ref,
        remote_left_out=plan.remote_left_out,
    )


def _write_tool(writer: ArchiveWriter, tool: CarriedTool) -> None:
    try:
        f = tool.path.open("rb")
    except OSError as e:
        raise BundlerError(f"--with-tool {tool.path}: {e.strerror}") from None
    with f:
        source = ReadAhead(f)
        writer.write_stream(tool.ref.member, tool.ref.blob.size, source, level=None)
    if source.digest != tool.ref.blob.digest:
        raise IntegrityError(f"--with-tool {tool.path}: the file changed while it was exported")


def _write_blobs(plan: ExportPlan, writer: ArchiveWriter, level: int | None,
                 on_bytes: OnBytes) -> None:
    """Every config and layer, each in its own frames."""
    contents = plan.contents
    owners: dict[Digest, tuple[ModelName, str]] = {}
    for m in contents.models:
        for b in m.manifest.blobs:
            owners.setdefault(b.digest, (m.name, b.media_type))
    for ref in contents.blobs[len({m.manifest.digest for m in contents.models}):]:
        owner, media_type = owners[ref.digest]
        with plan.source.open_blob(ref.digest) as f:
            source = ReadAhead(f)
            writer.write_stream(blob_member(ref.digest), ref.size, _counted(source, on_bytes),
                                level=compression_level(media_type, level))
        if source.digest != ref.digest:
            raise plan.source.mismatch(owner, ref.digest, source.digest)


def registry_signatures(models: Sequence[Model], keys: Sequence[signing.PrivateKey],
                        ) -> list[tuple[str, bytes]]:
    """Each signer's registry signature document (formats/signature-v1.md §6), by key id."""
    subjects = cosign.subjects(models)
    return [(k.public.keyid, cosign.Document(k.public.keyid, tuple(
        (s, signing.sign(k, s.payload())) for s in subjects)).to_bytes()) for k in keys]


def _counted(chunks: ReadAhead, on_bytes: OnBytes) -> Iterator[memoryview]:
    for chunk in chunks:
        on_bytes(len(chunk))
        yield chunk


# ---------------------------------------------------------------------------------------------
# Reading: ls and verify


def signer_json(head: Head) -> dict[str, Any]:
    return {"carried": list(head.signatures.carried), "trusted": list(head.signatures.trusted),
            "cosign": [d.keyid for d in head.registry_signatures]}


def delta_json(bases: Sequence[Base], external: Sequence[External]) -> dict[str, Any]:
    return {"bases": [b.to_json() for b in bases],
            "leftOut": {"blobs": len(external), "bytes": sum(e.blob.size for e in external)}}


def tool_json(tool: ToolRef | None) -> dict[str, Any]:
    if tool is None:
        return {}
    return {"toolFile": {"member": tool.member, **tool.to_json()}}


def head_json(head: Head) -> dict[str, Any]:
    return {
        "created": head.root.created,
        "tool": f"{head.root.tool_name} {head.root.tool_version}",
        "models": [model_json(m) for m in head.models],
        "blobs": len(head.root.blobs),
        "bytes": head.root.total_size,
        "signatures": signer_json(head),
        **delta_json(head.root.bases, head.root.external),
        **tool_json(head.root.tool_file),
    }


def list_bundle(src: BinaryIO, trusted: Sequence[signing.PublicKey]) -> Head:
    """Read only the head: root, signatures, index.json and manifests (and, with a seek
    table, nothing after them: BundleReader reads no further ahead)."""
    with BundleReader(src) as reader:
        return reader.read_head(trusted, allow_unsigned=True, enforce_trust=False)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    head: Head
    verified_blobs: int
    verified_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {**head_json(self.head), "verifiedBlobs": self.verified_blobs,
                "verifiedBytes": self.verified_bytes, "ok": True}


def verify_bundle(
    src: BinaryIO, trusted: Sequence[signing.PublicKey], *, allow_unsigned: bool,
    on_total: OnBytes = no_progress, on_bytes: OnBytes = no_progress,
    on_event: OnEvent = no_events,
) -> VerifyResult:
    with BundleReader(src, on_bytes) as reader:
        head = reader.read_head(trusted, allow_unsigned=allow_unsigned, on_event=on_event)
        on_total(sum(b.size for b in head.layer_blobs))
        for _, body in reader.blobs():
            for _ in body:
                pass
        reader.finish()
    return VerifyResult(head, len(head.root.blobs), head.root.total_size)


@dataclass(frozen=True, slots=True)
class PartsResult:
    head: Head
    parts: tuple[tuple[str, int], ...]  # name, size of every part, part 1 first

    def to_json(self) -> dict[str, Any]:
        return {**head_json(self.head), "ok": True,
                "parts": [{"name": n, "size": s} for n, s in self.parts]}


def verify_parts(first: Path, trusted: Sequence[signing.PublicKey], *, allow_unsigned: bool,
                 on_total: OnBytes = no_progress, on_bytes: OnBytes = no_progress,
                 on_event: OnEvent = no_events) -> PartsResult:
    """formats/bundle-v1.md §10: the signature and head in part 1, then the size and sha256
    of every other part against the list the signed root holds; every bad part is named."""
    stem, number = split_name(first.name) or ("", 0)
    if number != 1:
        raise UsageError("--parts-only checks a split bundle: give its first part, NAME.001")
    with first.open("rb") as f, BundleReader(f) as reader:
        head = reader.read_head(trusted, allow_unsigned=allow_unsigned, on_event=on_event)
    paths = [first.with_name(part_name(stem, i + 2)) for i in range(len(head.root.parts))]
    problems: list[str] = []
    present = []
    for path, ref in zip(paths, head.root.parts, strict=True):
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            problems.append(f"{path.name} is missing")
        elif size != ref.size:
            problems.append(f"{path.name} has {plural(size, 'byte')}, not {ref.size}")
        else:
            present.append((path, ref))
    on_total(sum(ref.size for _, ref in present))
    for path, ref in present:
        with path.open("rb", buffering=0) as part:
            source = ReadAhead(part)
            for view in source:
                on_bytes(len(view))
        if source.digest != ref.digest:
            problems.append(f"{path.name} is corrupt (sha256 differs)")
    if problems:
        verb = "is" if len(problems) == 1 else "are"
        raise IntegrityError(f"{len(problems)} of {plural(len(paths) + 1, 'part')} {verb} bad: "
                             + "; ".join(problems),
                             hint="copy those parts again from the release medium (or "
                                  "'bundle repair' them if parity files were made)")
    return PartsResult(head, ((first.name, first.stat().st_size),
                              *((p.name, r.size) for p, r in zip(paths, head.root.parts,
                                                                 strict=True))))


# ---------------------------------------------------------------------------------------------
# Import into a store


@dataclass(frozen=True, slots=True)
class ModelChange:
    model: Model
    target: ModelName  # the name in the store (existing spelling kept)
    action: str  # "new", "replaced" or "unchanged"
    previous: Digest | None = None

    def to_json(self) -> dict[str, Any]:
        obj = {**model_json(self.model), "name": self.target.display_shortest(),
               "fullName": str(self.target), "action": self.action}
        if self.previous is not None:
            obj["previous"] = str(self.previous)
        return obj


@dataclass(frozen=True, slots=True)
class ImportResult:
    head: Head
    store: str
    changes: tuple[ModelChange, ...]
    blobs_written: int
    bytes_written: int
    blobs_present: int
    dry_run: bool
    seeking: bool = False  # read only the blobs it wrote, through the seek table
    old_blob_names: tuple[Digest, ...] = ()  # present only as blobs/sha256:<hex>

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store, "dryRun": self.dry_run, "created": self.head.root.created,
            "readOnlyWhatWasNeeded": self.seeking,
            "signatures": signer_json(self.head),
            "models": [c.to_json() for c in self.changes],
            "blobsWritten": self.blobs_written, "bytesWritten": self.bytes_written,
            "blobsPresent": self.blobs_present,
            "oldBlobNames": [str(d) for d in self.old_blob_names],
        }


def _plan_changes(head: Head, store: Store, only: Sequence[str]) -> list[ModelChange]:
    models = list(head.models)
    if only:
        picked = set(pick(only, [m.name for m in models], "the bundle"))
        models = [m for m in models if m.name in picked]
    existing = store.names()
    changes = []
    for m in models:
        target = m.name.canonical(existing)
        path = store.manifest_path(target)
        try:
            current = Digest.of(path.read_bytes())
        except FileNotFoundError:
            changes.append(ModelChange(m, target, "new"))
            continue
        except OSError as e:
            raise BundlerError(f"cannot read {path}: {e.strerror}") from None
        same = current == m.manifest.digest
        changes.append(ModelChange(m, target, "unchanged" if same else "replaced",
                                   None if same else current))
    return changes


def _refuse_downgrade(head: Head, changes: Sequence[ModelChange], store: Store) -> None:
    """Replay protection: a model is not replaced by one from a release created before the
    release that last wrote it here (formats/ollama-store.md §5)."""
    records = store.releases()
    for c in changes:
        record = records.get(_release_key(c.target))
        if c.action == "replaced" and record and record["created"] > head.root.created:
            raise IntegrityError(
                f"{c.target.display_shortest()}: this bundle (created {head.root.created}) is "
                f"older than the release that wrote the model here (created "
                f"{record['created']}); importing it would roll the model back",
                hint="if that is what you want, pass --allow-downgrade")


def _release_key(name: ModelName) -> str:
    return "/".join(name.folded())


def import_bundle(
    src: BinaryIO, store: Store, trusted: Sequence[signing.PublicKey], *, allow_unsigned: bool,
    only: Sequence[str] = (), dry_run: bool = False, allow_downgrade: bool = False,
    on_total: OnBytes = no_progress, on_bytes: OnBytes = no_progress,
    on_event: OnEvent = no_events,
) -> ImportResult:
    """Verify everything, stage blobs, then commit blobs and finally manifests, all under the
    store's lock (formats/ollama-store.md §4). A dry run reads only the head."""
    lock = contextlib.nullcontext() if dry_run else store.locked(on_event)
    with lock, BundleReader(src, on_bytes) as reader:
        head = reader.read_head(trusted, allow_unsigned=allow_unsigned, on_event=on_event)
        changes = _plan_changes(head, store, only)
        for c in changes:
            store.require_storable(c.target)
        if not allow_downgrade:
            _refuse_downgrade(head, changes, store)
        needed = {b.digest: b.size for c in changes for b in c.model.manifest.blobs}
        present = {d for d, size in needed.items() if store.has_blob(d, size)}
        require_bases(head, [c.model for c in changes], present, store.location.describe())
        to_write = {d: s for d, s in needed.items() if d not in present}
        old_names = tuple(d for d in needed if d in present
                          and store.find_blob(d) != store.blob_path(d))
        if old_names:  # formats/ollama-store.md §4, "Old blob names"
            on_event(f"warning: {plural(len(old_names), 'blob')} this import uses: in the store "
                     f"only under the old name blobs/sha256:<hex> (e.g. {old_names[0]}); a running "
                     "Ollama finds them only after a restart, which renames them to "
                     "sha256-<hex>: restart Ollama after the import")
        result = ImportResult(head, store.location.describe(), tuple(changes), len(to_write),
                              sum(to_write.values()), len(present), dry_run,
                              old_blob_names=old_names)
        if dry_run:
            return result
        store.prepare()
        free, want = store.free_bytes(), sum(to_write.values())
        if want + want // 100 + _FREE_SPACE_MARGIN > free:
            raise BundlerError(
                f"not enough space in {store.root}: {plural(want, 'byte')} to write, "
                f"{free} free",
                hint="free space there, or import fewer models with --only")
        everything = sum(b.size for b in head.layer_blobs)
        resumable = any(store.partial_size(d) for d in to_write)  # an interrupted import's
        seekable = (reader.seekable() if sum(to_write.values()) < everything or resumable
                    else None)
        on_total(everything if seekable is None else sum(to_write.values()))
        result = dataclasses.replace(result, seeking=seekable is not None)
        staged: list[StagedBlob] = []
        try:
            if seekable is None:
                _stage_all(reader, store, to_write, staged)
            else:
                _stage_seeking(seekable, store, to_write, staged)
            reader.finish()
            if set(to_write) - {blob.digest for blob in staged}:
                raise IntegrityError("a referenced blob is not carried")  # check_manifests
            for digest in present:  # fresh mtimes: Ollama's prune spares them now
                store.touch_blob(digest)
            for blob in staged:
                store.commit_blob(blob)
        except BaseException:
            for blob in staged:
                blob.discard()
            raise
        store.sync_blobs_dir()
        for change in changes:
            if change.action == "unchanged":
                continue
            for b in change.model.manifest.blobs:  # fresh until the manifest names them
                store.touch_blob(b.digest)
            gone = [b.digest for b in change.model.manifest.blobs
                    if not store.has_blob(b.digest, b.size)]
            if gone:  # another program (ollama rm, a prune) removed it meanwhile
                raise BundlerError(
                    f"blob {gone[0]} of {change.target.display_shortest()} vanished during the "
                    "import; its manifest was not written", hint="run the import again")
            store.write_manifest(change.target, change.model.manifest.raw)
        root = str(Digest.of(head.root.raw))
        store.record_releases({_release_key(c.target): {"created": head.root.created,
                                                        "root": root} for c in changes})
    return result


def require_bases(head: Head, models: Sequence[Model], present: set[Digest], where: str) -> None:
    """formats/bundle-v1.md §4.3: every blob a delta bundle leaves out that these models need
    must already be in the target; else name them, who needs them and which release had them."""
    needed = {b.digest for m in models for b in m.manifest.blobs}
    missing = [e for e in head.root.external if e.blob.digest in needed
               and e.blob.digest not in present]
    if not missing:
        return
    parts = []
    for e in missing[:3]:
        users = sorted({m.name.display_shortest() for m in models
                        if any(b.digest == e.blob.digest for b in m.manifest.blobs)})
        base = head.root.bases[e.base]
        had = "listed by the inventory" if base.media_type == MEDIA_TYPE_INVENTORY else "carried by"
        parts.append(f"{e.blob.digest.short} ({format_size(e.blob.size)}, for {', '.join(users)}; "
                     f"{had} {base.describe()})")
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    # the releases to import, oldest first (a chain of deltas is imported in that order); an
    # inventory is no release: it only said the target had these blobs
    bases = sorted({head.root.bases[e.base] for e in missing}, key=lambda b: (b.created, b.name))
    bundles = [b.name for b in bases if b.media_type != MEDIA_TYPE_INVENTORY]
    inventories = [b.name for b in bases if b.media_type == MEDIA_TYPE_INVENTORY]
    steps = [f"import {', then '.join(bundles)} there first"] if bundles else []
    if inventories:
        steps.append(f"import the release that brought what {', '.join(inventories)} listed, "
                     "or use a full bundle (export without --base)")
    raise NotFoundError(
        f"this delta bundle leaves out {plural(len(missing), 'blob')} that {where} does not "
        "have: "
        + "; ".join(parts) + more,
        hint=f"{'; or '.join(steps)}; or leave these models out with --only")


# ---------------------------------------------------------------------------------------------
# Bases, inventories and diff (formats/bundle-v1.md §4.3, formats/inventory-v1.md)

MAX_INVENTORY_BYTES = 256 * 1024 * 1024
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def read_release(path: Path, trusted: Sequence[signing.PublicKey]) -> tuple[Base, Head | Inventory]:
    """A bundle (its head only) or an inventory, and the Base record that names it."""
    try:
        with path.open("rb") as f:
            if f.read(4) == _ZSTD_MAGIC:
                f.seek(0)
                head = list_bundle(f, trusted)
                return Base(MEDIA_TYPE_ROOT, Digest.of(head.root.raw), head.root.created,
                            path.name), head
            f.seek(0)
            raw = f.read(MAX_INVENTORY_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"{path} not found") from None
    except IsADirectoryError:
        raise NotFoundError(f"{path} is a directory, not a bundle or inventory") from None
    except OSError as e:
        raise BundlerError(f"cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_INVENTORY_BYTES:
        raise IntegrityError(f"{path}: too large for an inventory")
    inventory = Inventory.parse(raw, str(path))
    return Base(MEDIA_TYPE_INVENTORY, Digest.of(raw), inventory.created, path.name), inventory


def read_bases(paths: Sequence[Path], trusted: Sequence[signing.PublicKey]) -> Have:
    """What the given earlier releases have: a bundle has what it carries and what it left
    out itself (attributed to its own bases); an inventory has what it lists."""
    bases: list[Base] = []
    blobs: dict[Digest, tuple[int, int]] = {}

    def index(base: Base) -> int:
        for i, b in enumerate(bases):
            if b.digest == base.digest:
                return i
        bases.append(base)
        return len(bases) - 1

    for path in paths:
        base, release = read_release(path, trusted)
        i = index(base)
        if isinstance(release, Inventory):
            for b in release.blobs:
                blobs.setdefault(b.digest, (b.size, i))
            continue
        for ref in release.layer_blobs:
            blobs.setdefault(ref.digest, (ref.size, i))
        for e in release.root.external:
            blobs.setdefault(e.blob.digest, (e.blob.size, index(release.root.bases[e.base])))
    return Have(tuple(bases), blobs)


def release_of(path: Path, trusted: Sequence[signing.PublicKey]) -> Release:
    _, release = read_release(path, trusted)
    if isinstance(release, Inventory):
        return release_of_inventory(release, path.name)
    blobs = {b.digest: b.size for b in release.layer_blobs}
    blobs.update((e.blob.digest, e.blob.size) for e in release.root.external)
    return Release(path.name, {str(m.name): m.manifest.digest for m in release.models}, blobs)


def inventory_store(store: Store, created: str, on_event: OnEvent = no_events) -> Inventory:
    """Every model in the store and the blobs of theirs that are present (formats/
    inventory-v1.md §2)."""
    store.require()
    models: list[ModelEntry] = []
    blobs: dict[Digest, int] = {}
    for name in store.names(on_event):
        model = store.read_model(name)
        models.append(ModelEntry(str(name), model.manifest.digest, len(model.manifest.raw)))
        for b in model.manifest.blobs:
            if store.blob_size(b.digest) == b.size:
                blobs[b.digest] = b.size
    return Inventory(created, f"store {store.root}", tuple(models),
                     tuple(BlobRef(d, s) for d, s in blobs.items()))


def _stage_seeking(blobs: dict[Digest, Seekable], store: Store, to_write: dict[Digest, int],
                   staged: list[StagedBlob]) -> None:
    """Read only the wanted blobs, through the seek table, into staged files (appended to
    `staged`, which the caller discards on failure); a blob an interrupted import began is
    continued where it stopped (all of it verified)."""
    for digest, size in to_write.items():
        blob = store.stage(digest, resume=True)
        staged.append(blob)
        if 0 < blob.existing <= size:
            prefix = store.hash_staged(blob)
            if blob.existing == size and prefix.hexdigest() == digest.hex:
                _staged_one(store, staged)  # complete: kept, nothing read or written
                continue
            views = (blobs[digest].after(blob.existing, prefix) if blob.existing < size
                     else _restarted(blob, blobs[digest]))
        else:
            views = _restarted(blob, blobs[digest])
        for view in views:
            blob.write(view)
        _staged_one(store, staged)


def _restarted(blob: StagedBlob, body: Seekable) -> Iterator[memoryview]:
    blob.restart()
    return body(0)


def _staged_one(store: Store, staged: list[StagedBlob]) -> None:
    """The last staged blob is complete: fsync it, and refresh the mtimes of those staged
    before it, so that a long import keeps them inside the grace period of Ollama's prune
    (formats/ollama-store.md §4.1)."""
    staged[-1].finish()
    for blob in staged[:-1]:
        store.touch_staged(blob)


def _stage_all(reader: BundleReader, store: Store, to_write: dict[Digest, int],
               staged: list[StagedBlob]) -> None:
    """Stream every remaining blob: verify all, write the wanted ones to staged files
    (appended to `staged`, which the caller discards on failure)."""
    for ref, body in reader.blobs():
        if ref.digest not in to_write:
            for _ in body:
                pass
            continue
        blob = store.stage(ref.digest, resume=True)
        staged.append(blob)
        for view in blob.unchanged(body):  # what an interrupted import left is not rewritten
            blob.write(view)
        _staged_one(store, staged)
