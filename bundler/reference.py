"""Ollama model names: parse, validate, map to manifest paths, canonicalise case.

Pure (standard library and bundler.errors only, no I/O). The rules are Ollama's
`types/model/name.go` and `getExistingName` in `server/routes.go` (formats/ollama-store.md
§2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from string import ascii_letters, digits
from typing import Final, NamedTuple

from bundler.errors import NotFoundError, UsageError
from bundler.progress import plural

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "PART_KINDS",
    "InvalidNameError",
    "ModelName",
    "is_valid_part",
    "pick",
]

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"

PART_KINDS: Final = ("host", "namespace", "model", "tag")
"""The four parts of a name, in manifest-path order (types/model/name.go)."""

_MAX_BYTES: Final = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
_FIRST: Final = frozenset(ascii_letters + digits + "_")
_LATER: Final = {
    "host": _FIRST | frozenset(".:-"),
    "namespace": _FIRST | frozenset("-"),
    "model": _FIRST | frozenset(".-"),
    "tag": _FIRST | frozenset(".-"),
}
_LATER_TEXT: Final = {
    "host": 'ASCII letters, digits, "_", ".", ":" and "-"',
    "namespace": 'ASCII letters, digits, "_" and "-"',
    "model": 'ASCII letters, digits, "_", "." and "-"',
    "tag": 'ASCII letters, digits, "_", "." and "-"',
}

GRAMMAR_HINT: Final = (
    "A model name is [[host/]namespace/]model[:tag] (an http:// or https:// before the host is "
    "ignored); defaults are registry.ollama.ai, library and latest. Every part starts with an "
    "ASCII letter, digit or _; after that a host may use letters, digits, _ . : - (1-350 bytes), "
    "a namespace letters, digits, _ - (1-80 bytes), a model or tag letters, digits, _ . - "
    "(1-80 bytes)."
)


class InvalidNameError(UsageError):
    """A model name that Ollama would reject (types/model/name.go); exit code 2."""

    def __init__(self, message: str, *, hint: str | None = GRAMMAR_HINT) -> None:
        super().__init__(message, hint=hint)


def _q(text: str) -> str:
    """Quote `text` for a message, escaping control characters, keeping non-ASCII readable."""
    return json.dumps(text, ensure_ascii=False)


def _short(text: str) -> str:
    """Quote `text`, abbreviated when it is long (over-long parts are up to ~350 bytes)."""
    return _q(text) if len(text) <= 40 else f"{_q(text[:20])}…({len(text)} characters)"


def _part_problem(kind: str, text: str | None) -> str | None:
    """What is wrong with one part, or None if it is valid; None as `text` means "missing"."""
    if text is None:
        return f"the {kind} is empty (nothing on one side of a separator)"
    if text == "":
        return f"the {kind} is empty"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > _MAX_BYTES[kind]:
        return (f"the {kind} {_short(text)} is {plural(size, 'byte')} long (at most "
                f"{_MAX_BYTES[kind]})")
    for index, char in enumerate(text):
        if not char.isascii():
            return f"the {kind} {_short(text)} contains the non-ASCII character {_q(char)}"
        if index == 0 and char not in _FIRST:
            return (
                f"the {kind} {_short(text)} starts with {_q(char)} "
                "(it must start with an ASCII letter, digit or _)"
            )
        if char not in _LATER[kind]:
            return (
                f"the {kind} {_short(text)} contains {_q(char)} "
                f"(a {kind} may contain only {_LATER_TEXT[kind]})"
            )
    return None


def is_valid_part(kind: str, text: str) -> bool:
    """Whether `text` is a valid `kind` part ("host", "namespace", "model" or "tag").

    Ollama's isValidPart (types/model/name.go): ASCII only, lengths in bytes.
    """
    if kind not in _MAX_BYTES:
        raise ValueError(f"unknown name part kind {kind!r}; expected one of {PART_KINDS}")
    return _part_problem(kind, text) is None


class _Bare(NamedTuple):
    """A name as split by Ollama's ParseNameBare, before defaults.

    "" means absent (a default may fill it); None means promised by a separator but empty
    (Ollama's "!MISSING!" sentinel, which never validates).
    """

    scheme: str
    host: str | None
    namespace: str | None
    model: str | None
    tag: str | None


def _cut_promised(text: str | None, sep: str) -> tuple[str | None, str | None, bool]:
    """Cut at the last `sep`; an empty side becomes None (missing). Not found: (text, "", False)."""
    if text is None:
        return None, "", False
    index = text.rfind(sep)
    if index < 0:
        return text, "", False
    return text[:index] or None, text[index + len(sep) :] or None, True


def _parse_bare(text: str) -> _Bare:
    """Split `text` into parts as Ollama's ParseNameBare does (types/model/name.go)."""
    rest: str | None = text
    tag: str | None = ""
    # "/" is illegal in a tag, so a ":" after the last "/" starts the tag.
    if text.rfind(":") > text.rfind("/"):
        rest, tag, _ = _cut_promised(rest, ":")
    rest, model, promised = _cut_promised(rest, "/")
    if not promised:
        return _Bare("", "", "", rest, tag)
    rest, namespace, promised = _cut_promised(rest, "/")
    if not promised:
        return _Bare("", "", rest, model, tag)
    scheme, host = "", rest
    if rest is not None:
        before, sep, after = rest.partition("://")
        if sep:
            scheme, host = before, after
    return _Bare(scheme, host, namespace, model, tag)


@dataclass(frozen=True, slots=True)
class ModelName:
    """A fully qualified Ollama model name (types/model/name.go).

    Every instance is valid: construction checks each part like Ollama's IsFullyQualified.
    Parts keep the case they were given.
    """

    host: str
    namespace: str
    model: str
    tag: str

    def __post_init__(self) -> None:
        problems = [
            problem
            for kind, value in zip(PART_KINDS, self.manifest_parts(), strict=True)
            if (problem := _part_problem(kind, value)) is not None
        ]
        if problems:
            parts = ", ".join(_short(p) for p in self.manifest_parts())
            raise InvalidNameError(f"invalid model name parts ({parts}): {'; '.join(problems)}")

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse a name as Ollama's ParseName does (types/model/name.go).

        A "scheme://" before the host is dropped; empty host, namespace and tag get the
        defaults registry.ollama.ai, library and latest. An empty side of a ":" or "/"
        (":tag", "model:", "/model", "ns/") is invalid, not defaulted.

        Raises InvalidNameError unless every part is valid after defaults.
        """
        bare = _parse_bare(text)
        host = DEFAULT_HOST if bare.host == "" else bare.host
        namespace = DEFAULT_NAMESPACE if bare.namespace == "" else bare.namespace
        tag = DEFAULT_TAG if bare.tag == "" else bare.tag
        values = (host, namespace, bare.model, tag)
        problems: list[str] = []
        for kind, value in zip(PART_KINDS, values, strict=True):
            problem = _part_problem(kind, value)
            if problem is None:
                continue
            if kind == "namespace" and bare.host == "" and value and (":" in value or "." in value):
                problem += (
                    "; a registry host must be followed by a namespace, as in "
                    f"{value}/library/{bare.model or 'model'}"
                )
            problems.append(problem)
        if problems:
            raise InvalidNameError(f"invalid model name {_q(text)}: {'; '.join(problems)}")
        return cls(host or "", namespace or "", bare.model or "", tag or "")

    @classmethod
    def from_manifest_path(cls, parts: Sequence[str]) -> ModelName | None:
        """The name for a manifest path relative to manifests/, split into components.

        Ollama's ParseNameFromFilepath (types/model/name.go): exactly 4 components
        (host, namespace, model, tag), all valid; otherwise None (not a model).
        """
        if isinstance(parts, str):
            raise TypeError("from_manifest_path takes path components, not a string")
        if len(parts) != 4:
            return None
        host, namespace, model, tag = parts
        if not all(is_valid_part(k, v) for k, v in zip(PART_KINDS, parts, strict=True)):
            return None
        return cls(host, namespace, model, tag)

    def manifest_parts(self) -> tuple[str, str, str, str]:
        """(host, namespace, model, tag): the manifest path under manifests/, case kept."""
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        """The full form "host/namespace/model:tag" (Ollama's Name.String)."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def display_shortest(self) -> str:
        """The name as `ollama list` shows it (Ollama's DisplayShortest, reference §1.3).

        The host is omitted if it equals registry.ollama.ai ignoring case, and then the
        namespace too if it equals library ignoring case. The tag is always shown.
        """
        folded_host, folded_namespace, _, _ = self.folded()
        if folded_host != DEFAULT_HOST:
            return str(self)
        if folded_namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def folded(self) -> tuple[str, str, str, str]:
        """The parts lower-cased, for case-insensitive comparison.

        Parts are ASCII, so this equals Go's strings.EqualFold (types/model/name.go).
        """
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def canonical(self, existing: Iterable[ModelName]) -> ModelName:
        """This name spelt as the existing manifests spell it (Ollama's getExistingName).

        As in Ollama's server/routes.go from v0.5.2 to v0.34.3: each part is matched on its
        own, case-insensitively, against the same part of every existing name, not the whole
        name. Every match overwrites, so the last matching name in `existing` order wins for
        that part, and parts may come from different existing names. A part with no match
        keeps this name's spelling. (Ollama iterates a Go map, so when several spellings of
        one part exist its choice is arbitrary; pass `existing` in a stable order.)

        v0.34.4 spells a name it writes from one existing name instead (a whole-name match,
        else the longest run of leading parts). The older rule is kept on purpose: a name it
        spells is found by every release, while one spelt the new way can be missed by the
        per-part lookup of releases up to v0.34.3 (formats/ollama-store.md §2).
        """
        mine = self.folded()
        chosen = list(self.manifest_parts())
        for name in existing:
            for index, (theirs, spelling) in enumerate(
                zip(name.folded(), name.manifest_parts(), strict=True)
            ):
                if theirs == mine[index]:
                    chosen[index] = spelling
        host, namespace, model, tag = chosen
        return ModelName(host, namespace, model, tag)


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
