"""Trust (formats/signature-v1.md): which keys are trusted (--trust, the trust directory,
its `revoked` file, and who may change them), the decision on a bundle's signatures (§4) and
the check of its registry signature documents (§6.3). Testable without the CLI."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bundler import cosign, oscompat, signing
from bundler.config import config_dir
from bundler.errors import BundlerError, IntegrityError, UsageError
from bundler.layout import Model
from bundler.progress import OnEvent, no_events, plural

# ---------------------------------------------------------------------------------------------
# Trusted keys


def trust_dir(env: Mapping[str, str], home: Path) -> Path:
    """$BUNDLE_TRUST_DIR, else ~/.config/ollama-bundle/trusted."""
    value = env.get("BUNDLE_TRUST_DIR")
    return Path(value) if value else config_dir(env, home) / "trusted"


def trusted_keys(paths: Sequence[Path], env: Mapping[str, str], home: Path,
                 on_event: OnEvent = no_events) -> list[signing.PublicKey]:
    """The keys given with --trust and every *.pub in the trust directory, less those its
    `revoked` file lists (formats/signature-v1.md §4); the directory and its files refused if
    another user could change them."""
    keys = [signing.read_public(p) for p in paths]
    directory = trust_dir(env, home)
    if directory.is_dir():
        files = sorted(directory.glob("*.pub"))
        revoked_file = directory / "revoked"
        for path in [directory, *files, *([revoked_file] if revoked_file.exists() else [])]:
            check_trusted_file(path)
        keys += [signing.read_public(p) for p in files]
        revoked = revoked_ids(revoked_file) if revoked_file.exists() else set()
        for key in [k for k in keys if k.keyid in revoked]:
            on_event(f"warning: key {key.keyid[:16]}… ({key.source}) is revoked in "
                     f"{revoked_file}; it is not trusted")
        keys = [k for k in keys if k.keyid not in revoked]
    on_event(f"trust: {plural(len(keys), 'key')} ({directory}" + (
        "" if directory.is_dir() else ", absent") + (f", plus {len(paths)} --trust)" if paths else ")"))
    return keys


def revoked_ids(path: Path) -> set[str]:
    """Key ids in the trust directory's `revoked` file: one per line, # comments."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    ids = set()
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text and not re.fullmatch(r"[0-9a-f]{64}", text):
            raise UsageError(f"{path} line {n}: not a key id (64 lowercase hex characters)",
                             hint="key id: openssl pkey -pubin -in KEY.pub -outform DER | "
                                  "sha256sum")
        if text:
            ids.add(text)
    return ids


def check_trusted_file(path: Path) -> None:
    """The trust directory and its keys decide what gets in: refuse them if someone other
    than this user (or root) owns them or could change them."""
    try:
        st = path.stat()
    except OSError as e:
        raise BundlerError(f"cannot read {path}: {e.strerror}") from None
    uid = oscompat.effective_uid()  # None on Windows: no POSIX owner and mode to check
    if uid is not None and (st.st_mode & 0o022 or st.st_uid not in (0, uid)):
        raise UsageError(
            f"{path} could be changed by another user (owner uid {st.st_uid}, mode "
            f"{st.st_mode & 0o7777:04o}): its keys are not trusted",
            hint=f"chown {uid} {path} && chmod go-w {path}")


# ---------------------------------------------------------------------------------------------
# Decisions on a bundle's signatures


@dataclass(frozen=True, slots=True)
class Signatures:
    """The outcome of the trust decision (formats/signature-v1.md §4)."""

    carried: tuple[str, ...]  # key ids named by the bundle's signature members
    trusted: tuple[str, ...]  # key ids of trusted keys whose signature verified

    @property
    def is_trusted(self) -> bool:
        return bool(self.trusted)


def decide_trust(
    root_raw: bytes, carried: dict[str, bytes], trusted: Sequence[signing.PublicKey],
) -> Signatures:
    """formats/signature-v1.md §4: each signature member is checked against the trusted key
    whose key id it names; a trusted key's signature that does not verify is tampering."""
    ders = {k: signing.decode(sig, f"signature member {k[:16]}…") for k, sig in carried.items()}
    by_id = {key.keyid: key for key in trusted}
    ok = []
    for keyid, der in ders.items():
        key = by_id.get(keyid)
        if key is None:
            continue
        if not signing.verify(key, root_raw, der):
            raise IntegrityError(
                f"the signature of trusted key {keyid[:16]}… does not verify: the bundle "
                "was altered after it was signed",
                hint="get a fresh copy of the bundle from its source",
            )
        ok.append(keyid)
    return Signatures(tuple(sorted(carried)), tuple(sorted(ok)))


def refuse_untrusted(signatures: Signatures) -> IntegrityError:
    if signatures.carried:
        ids = ", ".join(k[:16] for k in signatures.carried)
        return IntegrityError(
            f"the bundle is signed by {ids}, none of which you trust",
            hint="pass --trust SIGNER.pub, or copy SIGNER.pub into the trust directory "
                 "($BUNDLE_TRUST_DIR, default ~/.config/ollama-bundle/trusted); "
                 "key id: openssl pkey -pubin -in SIGNER.pub -outform DER | sha256sum",
        )
    return IntegrityError(
        "the bundle is not signed",
        hint="ask for a signed bundle, or pass --allow-unsigned to accept it on digests alone",
    )


def check_registry_signatures(
    documents: dict[str, bytes], models: Sequence[Model], trusted: Sequence[signing.PublicKey],
) -> tuple[cosign.Document, ...]:
    """formats/signature-v1.md §6.3: every document well formed and for exactly these models;
    those of trusted keys verified (a bad one is tampering) and returned."""
    expected = cosign.subjects(models)
    by_id = {key.keyid: key for key in trusted}
    verified = []
    for keyid, raw in documents.items():
        doc = cosign.Document.parse(raw, keyid, expected)
        key = by_id.get(keyid)
        for subject, sig in doc.signatures:
            der = signing.decode(sig, f"{cosign.member(keyid)}: signature of {subject.reference}")
            if key is not None and not signing.verify(key, subject.payload(), der):
                raise IntegrityError(
                    f"{cosign.member(keyid)}: the cosign signature of {subject.reference} "
                    f"{subject.manifest.short} does not verify with trusted key {keyid[:16]}…",
                    hint="the signer's tool was broken; nothing was written")
        if key is not None:
            verified.append(doc)
    return tuple(verified)
