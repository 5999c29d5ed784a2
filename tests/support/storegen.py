"""Generated Ollama model stores: one description of what a valid store may hold, drawn either
by hypothesis (tests/support/generated.py, which shrinks a failing store to a small one) or by a seeded
random.Random (`scripts/make-sample-store --random SEED`). Standard library only.

What a store may hold, and how it is written, follows Ollama's source:

- names (types/model/name.go `isValidPart`): host `[A-Za-z0-9_][A-Za-z0-9_.:-]*` (1-350 bytes),
  namespace `[A-Za-z0-9_][A-Za-z0-9_-]*`, model and tag `[A-Za-z0-9_][A-Za-z0-9_.-]*` (1-80
  bytes); the manifest path keeps the case given (`Filepath`), and a name pulled or created
  next to existing ones takes, part by part, an existing part's spelling that equals it
  ignoring case (server/routes.go `getExistingName`), so no store holds two spellings of one
  part;
- blobs (manifest/paths.go `BlobsPath`): `blobs/sha256-<hex>`, or `blobs/sha256:<hex>` as
  Ollama before 0.1.30 named them (server/fixblobs.go renames them at start-up); mode 0644,
  directories 0755;
- manifests (manifest/manifest.go, server/images.go): `manifests/<host>/<namespace>/<model>/
  <tag>`, compact JSON with Go's escaping, the registry's bytes as pulled (no trailing newline)
  or json.Encoder's as created (a trailing newline); layers made by `ollama create` from
  another model carry `from` (manifest/layer.go `Layer`);
- configs (types/model/config.go `ConfigV2`): json.Encoder output, with or without `rootfs`;
- files Ollama and editors leave behind, which Ollama ignores: `sha256-<hex>-partial` and
  `sha256-<hex>-partial-N` (server/download.go), `sha256-<digits>` (manifest/layer.go
  `NewLayer`'s CreateTemp), editor droppings whose names are no valid name part;
- blobs no manifest references (left when OLLAMA_NOPRUNE is set).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
_IMAGE = "application/vnd.ollama.image."
MODEL, PROJECTOR, ADAPTER = _IMAGE + "model", _IMAGE + "projector", _IMAGE + "adapter"
TEMPLATE, SYSTEM, PARAMS = _IMAGE + "template", _IMAGE + "system", _IMAGE + "params"
LICENSE, MESSAGES, PROMPT = _IMAGE + "license", _IMAGE + "messages", _IMAGE + "prompt"

DEFAULT_HOST, DEFAULT_NAMESPACE = "registry.ollama.ai", "library"
FILE_MODE, DIR_MODE = 0o644, 0o755
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_MAX_BYTES = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
_MAX_DRAWN = {**_MAX_BYTES, "host": 255}  # a longer host cannot be a directory name (NAME_MAX)
_LATER = {"host": _ALNUM + "_.:-", "namespace": _ALNUM + "_-", "model": _ALNUM + "_.-",
          "tag": _ALNUM + "_.-"}
# names people use, and ones that sort around the cosign signature tags sha256-<hex>.sig
# (a registry lists tags sorted: upper case, digits, "latest" before them; "v1", "zeta" after)
_HOSTS = ("registry.ollama.ai", "hf.co", "localhost:5000", "127.0.0.1:8080", "Registry.Example",
          "REGISTRY.EXAMPLE:443", "my_host.internal", "ollama.com")
_NAMESPACES = ("library", "team", "Team", "hf-user", "ORG", "a", "x_y", "_internal")
_MODELS = ("llama3.2", "Llama-3.2-1B", "qwen2.5", "nomic-embed-text", "m", "MODEL", "phi3_mini",
           "gemma.2b", "_m")
_TAGS = ("latest", "Q4_K_M", "q4_0", "7b", "v1", "zeta", "sha256", "sha256-x", "sha", "sig",
         "t", "A", "1.0", "latest-cloud", "_x", "v1.0-rc.2")


class Chooser(Protocol):
    """Where the choices come from: hypothesis (tests/support/generated.py) or a seeded Random."""

    def integer(self, low: int, high: int) -> int: ...
    def boolean(self) -> bool: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def text(self, first: str, later: str, low: int, high: int) -> str: ...


class RandomChooser:
    """Choices from random.Random(seed): same seed, same store."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def boolean(self) -> bool:
        return self._rng.random() < 0.5

    def choice(self, options: Sequence[T]) -> T:
        return options[self._rng.randrange(len(options))]

    def text(self, first: str, later: str, low: int, high: int) -> str:
        n = self._rng.randint(low, high)
        return "".join(self._rng.choice(first if i == 0 else later) for i in range(n))


@dataclass(frozen=True)
class Options:
    """What kind of store to draw.

    registry_safe: every name can be pushed to a Distribution registry both under its own
    namespace and all under one namespace (lowercase forms are legal repository names and
    no two models would land on one repository:tag).
    weights: the size range of weights blobs, in bytes (default bytes to a few KiB).
    """

    registry_safe: bool = False
    max_models: int = 4
    max_tags: int = 4
    weights: tuple[int, int] = (0, 4096)
    strays: bool = True
    cloud: bool = True  # cloud stubs: a config with remote_host, "layers": null


@dataclass(frozen=True)
class Name:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def folded(self) -> tuple[str, ...]:
        return tuple(p.lower() for p in self.parts)

    def __str__(self) -> str:
        """The full form host/namespace/model:tag (Ollama's Name.String)."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def shortest(self) -> str:
        """Ollama's DisplayShortest: the NAME column of `ollama list`."""
        if self.host.lower() != DEFAULT_HOST:
            return str(self)
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


@dataclass(frozen=True)
class Blob:
    data: bytes = field(repr=False)  # (up to megabytes: a failing example's report shows hex)
    old_spelling: bool = False  # blobs/sha256:<hex>, as Ollama before 0.1.30 named it

    @property
    def hex(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def __repr__(self) -> str:
        return f"Blob(sha256:{self.hex}, {len(self.data)} bytes, old_spelling={self.old_spelling})"

    @property
    def file_name(self) -> str:
        return ("sha256:" if self.old_spelling else "sha256-") + self.hex


@dataclass(frozen=True)
class Model:
    """One manifest and the names (tags) it is stored under."""

    names: tuple[Name, ...]
    manifest: bytes

    @property
    def digests(self) -> list[str]:
        doc = json.loads(self.manifest)
        return [d["digest"] for d in [doc["config"], *(doc["layers"] or [])]]


@dataclass(frozen=True)
class StoreSpec:
    models: tuple[Model, ...]
    blobs: tuple[Blob, ...]  # every blob file: referenced ones and orphans
    strays: tuple[tuple[str, bytes], ...] = ()  # (path under the root, content)

    @property
    def names(self) -> list[Name]:
        return sorted((n for m in self.models for n in m.names), key=str)

    @property
    def local_names(self) -> list[Name]:
        """The names `export --all` carries: every model but remote (cloud) ones, whose config
        names a remote host (formats/ollama-store.md §6.1)."""
        return [n for n in self.names if not self.is_remote(n)]

    def is_remote(self, name: Name) -> bool:
        doc = json.loads(self.manifest_of(name))
        config = next(b.data for b in self.blobs if "sha256:" + b.hex == doc["config"]["digest"])
        fields = json.loads(config)
        return bool(fields.get("remote_host") or fields.get("remote_model"))

    def manifest_of(self, name: Name) -> bytes:
        return next(m.manifest for m in self.models if name in m.names)

    def describe(self) -> str:
        """A readable summary, for a failing example's report."""
        lines = []
        for m in self.models:
            doc = json.loads(m.manifest)
            layers = [f"{d['mediaType'].rsplit('.', 1)[-1]}:{d['size']}"
                      for d in doc["layers"] or []]
            lines.append(f"{', '.join(map(str, m.names))}: {' '.join(layers)}"
                         f"{'' if m.manifest.endswith(b'}') else ' (newline)'}")
        old = sum(b.old_spelling for b in self.blobs)
        lines.append(f"{len(self.blobs)} blob files ({old} sha256:), {len(self.strays)} strays")
        return "\n".join(lines)


# --- Go encoding/json ---------------------------------------------------------------------


def go_json(value: Any) -> bytes:
    """json.Marshal: compact, `<`, `>`, `&`, U+2028 and U+2029 escaped, other text as UTF-8."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


# --- drawing ------------------------------------------------------------------------------


def _part(ch: Chooser, kind: str, safe: bool) -> str:
    """A valid name part of `kind`: a well-known one, or one drawn from the grammar (lengths up
    to the limit, first character alphanumeric or _)."""
    pool = {"host": _HOSTS, "namespace": _NAMESPACES, "model": _MODELS, "tag": _TAGS}[kind]
    if safe:  # Distribution: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* once lowercased
        if kind == "host":
            return ch.choice(_HOSTS)
        if kind != "tag" and ch.boolean():
            pool = tuple(p for p in pool if not p.startswith("_"))
            return ch.choice(pool)
        if kind == "tag":
            return ch.choice(_TAGS) if ch.boolean() else ch.text(_ALNUM + "_", _LATER["tag"], 1, 12)
        seps = ("-", "_", "__", "--") if kind == "namespace" else ("-", "_", ".", "__")
        words = [ch.text(_ALNUM, _ALNUM, 1, 6) for _ in range(ch.integer(1, 3))]
        out = words[0]
        for w in words[1:]:
            out += ch.choice(seps) + w
        return out
    if ch.boolean():
        return ch.choice(pool)
    limit = _MAX_DRAWN[kind]
    length = ch.choice((1, 2, 8, 20, limit))  # the limit itself now and then
    return ch.text(_ALNUM + "_", _LATER[kind], 1, length)


def _name(ch: Chooser, safe: bool) -> Name:
    host = ch.choice((DEFAULT_HOST, DEFAULT_HOST, _part(ch, "host", safe)))
    namespace = ch.choice((DEFAULT_NAMESPACE, _part(ch, "namespace", safe)))
    return Name(host, namespace, _part(ch, "model", safe), _part(ch, "tag", safe))


def _canonical(name: Name, spellings: list[dict[str, str]]) -> Name:
    """getExistingName: each part spelt as an existing part equal to it ignoring case."""
    parts = [spellings[i].setdefault(p.lower(), p) for i, p in enumerate(name.parts)]
    return Name(*parts)


def _payload(seed: int, size: int, magic: bytes = b"") -> bytes:
    """`size` bytes: `magic`, then deterministic incompressible bytes from `seed`."""
    body = random.Random(seed).randbytes(max(0, size - len(magic)))
    return (magic + body)[:size]


def _gguf(seed: int, size: int) -> bytes:
    """A GGUF v3 file's first bytes (magic, version, no tensors or keys), then random bytes."""
    return _payload(seed, size, b"GGUF" + struct.pack("<IQQ", 3, 0, 0))


_TEMPLATES = ("{{ .Prompt }}", "{{ if .System }}<|system|>{{ .System }}{{ end }}{{ .Prompt }}",
              "[INST] {{ .Prompt }} [/INST]", "")
_SYSTEMS = ("You are terse.", "Tu es concis \u2014 r\u00e9ponds en fran\u00e7ais.", "",
            "Use <b> & </b>\u2028sparingly.")


def _text_layer(ch: Chooser, media_type: str) -> bytes:
    if media_type in (TEMPLATE, PROMPT):
        return ch.choice(_TEMPLATES).encode()
    if media_type == SYSTEM:
        return ch.choice(_SYSTEMS).encode()
    if media_type == LICENSE:
        return ch.choice(("MIT License\n", "Apache-2.0", "", "Lizenz \u00a9 2026\n")).encode()
    if media_type == PARAMS:  # a Go map: json.Encoder sorts the keys and appends "\n"
        params: dict[str, Any] = {}
        if ch.boolean():
            params["stop"] = ["<|eot_id|>", "<|end|>"][: ch.integer(1, 2)]
        if ch.boolean():
            params["temperature"] = ch.choice((0.7, 1, 0))
        if ch.boolean():
            params["num_ctx"] = ch.choice((2048, 8192))
        return go_json(dict(sorted(params.items()))) + b"\n"
    # MESSAGES: a JSON array of {"role","content"} (Modelfile MESSAGE), json.Encoder output
    n = ch.integer(0, 2)
    return go_json([{"role": ("user", "assistant")[i % 2], "content": f"m{i} <ok>"}
                    for i in range(n)]) + b"\n"


@dataclass
class _Pool:
    """Blobs already drawn, by media type: later models may reuse them (shared blobs)."""

    by_type: dict[str, list[bytes]] = field(default_factory=dict)

    def reuse(self, ch: Chooser, media_type: str) -> bytes | None:
        have = self.by_type.get(media_type)
        return ch.choice(have) if have and ch.boolean() else None

    def new(self, media_type: str, data: bytes) -> bytes:
        self.by_type.setdefault(media_type, []).append(data)
        return data


def _config(ch: Chooser, layers: list[dict[str, Any]], family: str, remote: str = "") -> bytes:
    """ConfigV2 as json.Encoder writes it; `rootfs` only in configs made before v0.32.7; a
    cloud stub (server/create.go, FROM a cloud model) names its remote host and model."""
    config: dict[str, Any] = {
        "model_format": "gguf", "model_family": family, "model_families": [family],
        "model_type": ch.choice(("1B", "7.6B", "137M", "")),
        "file_type": ch.choice(("Q4_0", "Q4_K_M", "F16"))}
    if remote:
        config.update({"model_format": "", "model_family": "", "model_families": None,
                       "model_type": "", "file_type": "",
                       "remote_host": "https://ollama.com:443", "remote_model": remote,
                       "capabilities": ["completion", "tools"], "context_length": 131072})
    config.update({"architecture": "amd64", "os": "linux"})
    if not remote and ch.boolean():
        config["rootfs"] = {"type": "layers", "diff_ids": [d["digest"] for d in layers]}
    return go_json(config) + b"\n"


DEFAULT = Options()


def draw_store(ch: Chooser, options: Options = DEFAULT) -> StoreSpec:
    """A store Ollama could have written: see the module's docstring."""
    safe = options.registry_safe
    spellings: list[dict[str, str]] = [{}, {}, {}, {}]
    used: set[tuple[str, ...]] = set()
    pushed_as: set[tuple[str, ...]] = set()  # (model, tag) and (namespace, model, tag), folded
    pool = _Pool()
    blobs: dict[str, Blob] = {}

    def add(data: bytes) -> dict[str, Any]:
        hex_ = hashlib.sha256(data).hexdigest()
        if hex_ not in blobs:
            blobs[hex_] = Blob(data, old_spelling=ch.integer(0, 4) == 4)
        return {"digest": f"sha256:{hex_}", "size": len(data)}

    models: list[Model] = []
    for m in range(ch.integer(1, options.max_models)):
        names: list[Name] = []
        for _ in range(ch.integer(1, options.max_tags)):
            name = _canonical(_name(ch, safe), spellings)
            keys = {name.folded()}
            if safe:
                keys |= {("*", *name.folded()[2:]), ("**", *name.folded()[1:])}
            if name.folded() in used or (safe and keys & pushed_as):
                continue
            used.add(name.folded())
            pushed_as.update(keys - {name.folded()})
            names.append(name)
        if not names:
            continue
        if options.cloud and ch.integer(0, 5) == 5:  # a cloud stub: no layers at all
            config = add(_config(ch, [], "", remote=ch.choice(("gpt-oss:120b", "qwen3:480b"))))
            models.append(Model(tuple(names), go_json({
                "schemaVersion": 2, "mediaType": MANIFEST_V2,
                "config": {"mediaType": CONFIG_V1, **config}, "layers": None}) + b"\n"))
            continue
        low, high = options.weights
        layers: list[tuple[str, bytes]] = []
        for media_type in (MODEL, PROJECTOR, ADAPTER):
            if media_type != MODEL and ch.integer(0, 3) != 3:
                continue
            data = pool.reuse(ch, media_type)
            if data is None:
                size = ch.integer(low, high) if media_type == MODEL else ch.integer(0, 2048)
                data = pool.new(media_type, _gguf(ch.integer(0, 2**32 - 1), size))
            layers.append((media_type, data))
        for media_type in (TEMPLATE, SYSTEM, PARAMS, LICENSE, MESSAGES):
            if ch.boolean():
                data = pool.reuse(ch, media_type)
                if data is None:
                    data = pool.new(media_type, _text_layer(ch, media_type))
                layers.append((media_type, data))
        if ch.integer(0, 5) == 5:  # a second licence (licences may repeat)
            layers.append((LICENSE, f"Extra licence {m}\n".encode()))
        descriptors = []
        created_from = ch.integer(0, 3) == 3 and models  # `ollama create` FROM a local model
        seen: set[bytes] = set()
        for media_type, data in layers:
            if data in seen:  # one layer per blob in a manifest, as create makes them
                continue
            seen.add(data)
            d: dict[str, Any] = {"mediaType": media_type, **add(data)}
            if created_from and media_type != PARAMS and ch.boolean():
                d["from"] = models[0].names[0].shortest()
            descriptors.append(d)
        config = add(_config(ch, descriptors, ch.choice(("llama", "qwen2", "bert"))))
        raw = go_json({"schemaVersion": 2, "mediaType": MANIFEST_V2,
                       "config": {"mediaType": CONFIG_V1, **config}, "layers": descriptors})
        if ch.boolean():  # written by create (json.Encoder), not pulled
            raw += b"\n"
        models.append(Model(tuple(names), raw))
    if options.strays and ch.boolean():  # a blob no manifest references (OLLAMA_NOPRUNE)
        add(_payload(ch.integer(0, 2**32 - 1), ch.integer(0, 300)))
    strays = _strays(ch, models, list(blobs)) if options.strays else ()
    return StoreSpec(tuple(models), tuple(blobs.values()), strays)


def _strays(ch: Chooser, models: list[Model], hexes: list[str]) -> tuple[tuple[str, bytes], ...]:
    """Files Ollama ignores: partial downloads, create's temp files, editor droppings."""
    out: list[tuple[str, bytes]] = []
    some = hexes[ch.integer(0, len(hexes) - 1)] if hexes else "0" * 64
    other = hashlib.sha256(b"not in this store").hexdigest()
    options: list[tuple[str, bytes]] = [
        (f"blobs/sha256-{other}-partial", bytes(ch.integer(0, 100))),
        (f"blobs/sha256-{other}-partial-0",
         go_json({"N": 0, "Offset": 0, "Size": 100, "Completed": ch.integer(0, 100)})),
        (f"blobs/sha256-{some}-partial", b"\0" * 10),
        (f"blobs/sha256-{ch.integer(10**8, 10**9)}", b"half a layer"),
        ("blobs/.DS_Store", b"\0\0\0\1Bud1"),
        ("manifests/.DS_Store", b"\0\0\0\1Bud1"),
        (f"blobs/sha256-{other}.tmp", b"transfer"),
    ]
    if models:
        name = models[0].names[0]
        leaf = f"manifests/{name.host}/{name.namespace}/{name.model}"
        options += [(f"{leaf}/.{name.tag}.swp", b"b0VIM 9.0"), (f"{leaf}/{name.tag}~", b"{}"),
                    (f"{leaf}/#{name.tag}#", b"{"),
                    (f"manifests/{name.host}/{name.namespace}/README", b"notes")]
    for path, data in options:
        if ch.integer(0, 2) == 2:
            out.append((path, data))
    return tuple(out)


# --- writing ------------------------------------------------------------------------------


def _mkdirs(root: Path, rel: Path) -> None:
    path = root
    for part in rel.parts:
        path = path / part
        if not path.is_dir():
            path.mkdir()
            path.chmod(DIR_MODE)  # os.MkdirAll(..., 0o755) whatever the umask


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".storegen-{os.getpid()}.partial")
    tmp.write_bytes(data)
    tmp.chmod(FILE_MODE)
    tmp.replace(path)


def write_store(spec: StoreSpec, root: Path) -> None:
    """Blobs first, manifests last, each renamed into place, as Ollama writes them."""
    if not root.is_dir():
        root.mkdir(parents=True)
        root.chmod(DIR_MODE)
    _mkdirs(root, Path("blobs"))
    _mkdirs(root, Path("manifests"))
    for blob in spec.blobs:
        _write(root / "blobs" / blob.file_name, blob.data)
    for path, data in spec.strays:
        _mkdirs(root, Path(path).parent)
        (root / path).write_bytes(data)
    for model in spec.models:
        for name in model.names:
            _mkdirs(root, Path("manifests", name.host, name.namespace, name.model))
            _write(root.joinpath("manifests", *name.parts), model.manifest)


def listing(spec: StoreSpec) -> list[str]:
    """`<ollama list NAME>  <12-hex ID>  <size>` per name, as make-sample-store prints."""
    out = []
    for name in spec.names:
        raw = spec.manifest_of(name)
        doc = json.loads(raw)
        size = sum(d["size"] for d in [doc["config"], *(doc["layers"] or [])])
        out.append(f"{name.shortest()}  {hashlib.sha256(raw).hexdigest()[:12]}  {size}")
    return out


# --- reading back, as Ollama sees a store ---------------------------------------------------


def _valid(kind: str, text: str) -> bool:
    return (0 < len(text.encode()) <= _MAX_BYTES[kind] and text.isascii()
            and (text[0].isalnum() or text[0] == "_")
            and all(c in _LATER[kind] for c in text[1:]))


def ollama_view(root: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """What Ollama sees: manifests (files at depth 4 under manifests/ whose parts are valid
    names, manifest/manifest.go `Manifests`) by path, and the blobs they reference, by digest,
    in either file spelling. Stray files do not show."""
    manifests: dict[str, bytes] = {}
    base = root / "manifests"
    for path in sorted(base.glob("*/*/*/*")):
        parts = path.relative_to(base).parts
        if path.is_file() and all(_valid(k, p) for k, p in
                                  zip(("host", "namespace", "model", "tag"), parts, strict=True)):
            manifests["/".join(parts)] = path.read_bytes()
    blobs: dict[str, bytes] = {}
    for raw in manifests.values():
        doc = json.loads(raw)
        for d in [doc["config"], *(doc["layers"] or [])]:
            hex_ = d["digest"].removeprefix("sha256:")
            for spelling in ("sha256-", "sha256:"):
                if (root / "blobs" / (spelling + hex_)).is_file():
                    blobs[d["digest"]] = (root / "blobs" / (spelling + hex_)).read_bytes()
                    break
    return manifests, blobs


def expected_view(spec: StoreSpec, names: Sequence[Name] | None = None,
                  ) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """What ollama_view of the written store must give (of a store holding only `names`, if
    given), from the description alone."""
    by_hex = {b.hex: b.data for b in spec.blobs}
    chosen = [(n, m) for m in spec.models for n in m.names if names is None or n in names]
    manifests = {"/".join(n.parts): m.manifest for n, m in chosen}
    blobs = {d: by_hex[d.removeprefix("sha256:")] for _, m in chosen for d in m.digests}
    return dict(sorted(manifests.items())), blobs
