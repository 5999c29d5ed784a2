"""Export: plan which models and blobs a bundle carries, from an Ollama store or from
registries (`export --from-registry`), and write it signed: one file or split parts, with
parity data and a verification after writing if asked."""

from __future__ import annotations

import contextlib
import json
import re
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from bundler import __version__, cosign, modelkind, parity, signing
from bundler.archive import ArchiveWriter
from bundler.digest import CHUNK_SIZE, Digest
from bundler.errors import BundlerError, IntegrityError, NotFoundError, UsageError
from bundler.layout import (
    INDEX_MEMBER,
    NO_BASES,
    OCI_LAYOUT,
    OCI_LAYOUT_MEMBER,
    ROOT_MEMBER,
    TOOL_MODE,
    BlobRef,
    Contents,
    CosignRef,
    Have,
    Model,
    ToolRef,
    blob_member,
    check_tool_version,
    compression_level,
    delta_json,
    format_created,
    metadata_level,
    plan_contents,
    signature_member,
    tool_json,
)
from bundler.oci import MEDIA_TYPE_DOCKER_MANIFEST, Manifest
from bundler.progress import (
    Meters,
    OnBytes,
    OnEvent,
    no_events,
    no_meters,
    no_progress,
    plural,
)
from bundler.reader import open_bundle, read_through
from bundler.reference import ModelName, pick
from bundler.registry.client import Client, describe_error
from bundler.registry.transport import Response
from bundler.split import Part, SplitOutput
from bundler.store import Store
from bundler.streams import ReadAhead, Sink, open_output
from bundler.zstdframes import seek_table

TOOL_NAME = "ollama-bundle"


# ---------------------------------------------------------------------------------------------
# Export


class BlobSource(Protocol):
    """Where export reads blobs: an Ollama store, or a registry (RegistrySource, below)."""

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
                store.require_regular_blob(blob.digest)  # a FIFO or device: named as such
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
            "models": [m.to_json() for m in self.models], "blobs": self.blobs,
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


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """How `write_bundle` writes: signers, compression, time, carried tool, and for a file
    the split, parity data and verification after writing (README "export")."""

    keys: tuple[signing.PrivateKey, ...] = ()
    level: int | None = None
    created_epoch: int | None = None
    tool: CarriedTool | None = None
    part_size: int | None = None  # split into parts of at most this many bytes
    parity_percent: int | None = None
    verify_after_write: bool = False


@dataclass(frozen=True, slots=True)
class Written:
    result: ExportResult
    output: str  # as given: OUT, or - for stdout
    written: str  # the bundle as 'bundle verify' opens it: OUT, or its part 1
    parts: tuple[Part, ...] = ()  # of a split bundle, part 1 first
    verified: bool = False  # read back and verified after writing

    def to_json(self) -> dict[str, Any]:
        parts = ({"parts": [{"name": p.name, "size": p.size, "digest": str(p.digest)}
                            for p in self.parts]} if self.parts else {})
        return {**self.result.to_json(), "output": self.output, **parts,
                "verifiedAfterWrite": self.verified}


def write_bundle(plan: ExportPlan, output: str | Sink, options: WriteOptions, *,
                 meters: Meters = no_meters, on_event: OnEvent = no_events) -> Written:
    """Export to `output` (a file path, or a sink such as stdout: then neither split, parity
    nor verification), split into parts when asked (all renamed into place only when
    complete), then write parity data and read everything back, when asked."""
    if not isinstance(output, str):
        with meters("export", plan.total_bytes) as bar:
            return Written(_export(plan, output, options, bar.update), "-", "-")
    written = output
    parts: tuple[Part, ...] = ()
    if options.part_size is not None:
        split = SplitOutput(Path(output), options.part_size)
        try:
            with meters("export", plan.total_bytes) as bar:
                result = _export(plan, split, options, bar.update)
            split.commit()
        except BaseException:
            split.discard()
            raise
        parts = tuple(split.parts)
        written = str(Path(output).with_name(parts[0].name))
    else:
        with open_output(Path(output)) as f, meters("export", plan.total_bytes) as bar:
            result = _export(plan, f, options, bar.update)
    files = ([Path(output).with_name(p.name) for p in parts] if options.part_size is not None
             else [Path(output)])
    if options.parity_percent:
        parity.create(files, options.parity_percent)
        on_event(f"wrote par2 repair data ({options.parity_percent} %) for "
                 f"{plural(len(files), 'file')}")
    if options.verify_after_write:
        with open_bundle(Path(written)) as f, meters("verify", None) as bar:
            read_through(f, [k.public for k in options.keys],
                         allow_unsigned=not options.keys,
                         on_total=lambda n: bar.reset(n), on_bytes=bar.update)
        on_event(f"verified {written} after writing")
    return Written(result, output, written, parts, options.verify_after_write)


def _export(plan: ExportPlan, out: Sink | SplitOutput, options: WriteOptions,
            on_bytes: OnBytes) -> ExportResult:
    return export_bundle(plan, out, keys=options.keys, level=options.level,
                         created_epoch=options.created_epoch, on_bytes=on_bytes,
                         tool=options.tool)


def _write_tool(writer: ArchiveWriter, tool: CarriedTool) -> None:
    try:
        f = tool.path.open("rb")
    except OSError as e:
        raise BundlerError(f"--with-tool {tool.path}: {e.strerror}") from None
    with f:
        source = ReadAhead(f)
        writer.write_stream(tool.ref.member, tool.ref.blob.size, source, level=None,
                            mode=TOOL_MODE)
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
# export --from-registry: the same bundle the store exporter writes, without Ollama installed


@dataclass(slots=True)
class RegistrySource:
    """Blobs fetched from registries, each from a repository whose manifest names it."""

    homes: dict[Digest, tuple[Client, str]]
    where: str
    cache: Path | None = None
    sizes: dict[Digest, int] = field(default_factory=dict)  # as the manifests say

    def describe(self) -> str:
        return self.where

    @contextlib.contextmanager
    def open_blob(self, digest: Digest) -> Iterator[BinaryIO]:
        client, repo = self.homes[digest]
        if self.cache is not None:
            with self._cached(client, repo, digest).open("rb", buffering=0) as f:
                yield f
            return
        resp = client.open_blob(repo, digest)
        try:
            yield resp.reader()
        finally:
            resp.close()

    def _cached(self, client: Client, repo: str, digest: Digest) -> Path:
        """The blob in the cache: finished downloads are kept; a partial one is continued
        with a Range request. Not hashed here: the export hashes what it reads, and a blob
        that does not match is dropped from the cache (`mismatch`)."""
        assert self.cache is not None
        final = self.cache / f"sha256-{digest.hex}"
        if final.is_file():
            return final
        partial = self.cache / f"sha256-{digest.hex}.partial"
        offset = partial.stat().st_size if partial.is_file() else 0
        size = self.sizes.get(digest)
        if size is not None and offset == size:  # complete, interrupted before its rename
            partial.replace(final)
            return final
        if size is not None and offset > size:
            offset = 0
        resp = client.open_blob(repo, digest, offset=offset)
        try:
            if not (resp.status == 206 and offset):
                offset = 0
            mode = "ab" if offset else "wb"
            with partial.open(mode) as out:
                _copy_at_most(resp, out, None if size is None else size - offset,
                              f"blob {digest}")
        except BaseException:
            if size is not None and partial.is_file() and partial.stat().st_size > size:
                partial.unlink()  # never keep more than the blob can be
            raise
        finally:
            resp.close()
        partial.replace(final)
        return final

    def mismatch(self, model: ModelName, digest: Digest, got: Digest) -> IntegrityError:
        if self.cache is not None:  # never keep bad content: the next run fetches it again
            (self.cache / f"sha256-{digest.hex}").unlink(missing_ok=True)
        return IntegrityError(
            f"the registry served blob {digest} of {model.display_shortest()} with other "
            f"content (sha256 {got})", hint="a proxy or mirror altered it; nothing was written")


def _copy_at_most(resp: Response, out: IO[bytes], limit: int | None, what: str) -> None:
    """The streamed body into `out`, but never more than `limit` bytes (what the manifest
    says is left of the blob): a longer answer is a size error, its excess not written."""
    length = resp.header("Content-Length")
    if limit is not None and length is not None and length.isdigit() and int(length) > limit:
        raise IntegrityError(f"the registry sends {length} bytes of {what}, more than the "
                             f"{limit} its manifest leaves", hint=_ALTERED)
    written = 0
    for chunk in resp.stream(CHUNK_SIZE):
        written += len(chunk)
        if limit is not None and written > limit:
            raise IntegrityError(f"the registry sends more of {what} than the "
                                 f"{plural(limit, 'byte')} its manifest leaves", hint=_ALTERED)
        out.write(chunk)


_ALTERED = "a proxy or mirror altered it; nothing was written"


def plan_registry_export(names: Sequence[str], clients: Callable[[ModelName], Client],
                         cache: Path | None = None, have: Have = NO_BASES) -> ExportPlan:
    """Fetch each model's manifest (Docker schema2 Accept, as Ollama pulls) and plan the same
    bundle a store export of these models would be."""
    models: list[Model] = []
    homes: dict[Digest, tuple[Client, str]] = {}
    sizes: dict[Digest, int] = {}
    hosts: list[str] = []
    for text in names:
        name = ModelName.parse(text)
        client = clients(name)
        repo = (client.target.repository(name.namespace, name.model)
                or f"{name.namespace}/{name.model}")
        resp = client.get_manifest(repo, name.tag, MEDIA_TYPE_DOCKER_MANIFEST)
        if resp.status == 404:
            raise NotFoundError(f"model {text!r} not found at {client.target.base}/{repo}")
        if resp.status != 200:
            raise describe_error(resp, f"fetching the manifest of {text}")
        manifest = Manifest.parse(resp.body, f"manifest of {name}")
        models.append(Model(name, manifest))
        for blob in manifest.blobs:
            homes.setdefault(blob.digest, (client, repo))
            sizes.setdefault(blob.digest, blob.size)
        if client.target.base not in hosts:
            hosts.append(client.target.base)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot use --cache {cache}: {e.strerror}") from None
    return ExportPlan(RegistrySource(homes, "registry " + ", ".join(hosts), cache, sizes),
                      plan_contents(models, have))
