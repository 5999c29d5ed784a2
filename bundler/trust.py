"""Trust (formats/signature-v1.md): which keys are trusted (--trust, the trust directory,
its `revoked` file, and who may change them), the decision on a bundle's signatures (§4) and
the check of its registry signature documents (§6.3). Testable without the CLI."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bundler import cosign, oscompat, signing
from bundler.config import config_dir, system_trust_dir
from bundler.discover import passwd_home
from bundler.errors import BundlerError, IntegrityError, UsageError
from bundler.layout import Model
from bundler.progress import OnEvent, no_events, plural

# ---------------------------------------------------------------------------------------------
# Trusted keys

SYSTEM_TRUST_DIR = system_trust_dir()


def trust_dir(env: Mapping[str, str], home: Path) -> Path:
    """$BUNDLE_TRUST_DIR, else ~/.config/ollama-bundle/trusted."""
    value = env.get("BUNDLE_TRUST_DIR")
    return Path(value) if value else config_dir(env, home) / "trusted"


class TrustedKeys(tuple[signing.PublicKey, ...]):
    """The keys a reader trusts, and what the refusal of a bundle signed by none of them
    adds to its hint (`note`)."""

    note: str

    def __new__(cls, keys: Iterable[signing.PublicKey], note: str = "") -> TrustedKeys:
        self = super().__new__(cls, keys)
        self.note = note
        return self


def trusted_keys(paths: Sequence[Path], env: Mapping[str, str], home: Path,
                 on_event: OnEvent = no_events, *,
                 system: Path | None = SYSTEM_TRUST_DIR) -> TrustedKeys:
    """The keys given with --trust and every *.pub in the system trust directory and in the
    user's, less those a `revoked` file in either lists (formats/signature-v1.md §4); a
    directory or file refused if someone else could change it (the system one: anyone but
    root)."""
    keys = [signing.read_public(p) for p in paths]
    revoked: dict[str, Path] = {}
    seen = []
    user = trust_dir(env, home)
    for directory, roots_only in ((system, True), (user, False)):
        if directory is None or (not roots_only and directory == system):
            continue
        if not directory.is_dir():
            seen.append(f"{directory}, absent")
            continue
        seen.append(str(directory))
        files = sorted(directory.glob("*.pub"))
        revoked_file = directory / "revoked"
        for path in [directory, *files, *([revoked_file] if revoked_file.exists() else [])]:
            check_trusted_file(path, roots_only=roots_only)
        keys += [signing.read_public(p) for p in files]
        if revoked_file.exists():
            revoked |= dict.fromkeys(revoked_ids(revoked_file) - revoked.keys(), revoked_file)
    for key in [k for k in keys if k.keyid in revoked]:
        on_event(f"warning: key {key.keyid[:16]}… ({key.source}) is revoked in "
                 f"{revoked[key.keyid]}; it is not trusted")
    keys = [k for k in keys if k.keyid not in revoked]
    on_event(f"trust: {plural(len(keys), 'key')} ({'; '.join(seen)}"
             + (f", plus {len(paths)} --trust)" if paths else ")"))
    return TrustedKeys(keys, _sudo_note(env, user, system))


def _sudo_note(env: Mapping[str, str], used: Path, system: Path | None) -> str:
    """Under sudo HOME is root's, so the invoking user's own trust directory is not read:
    say so when it holds keys (their names are listed, nothing in it is read or trusted)."""
    user = env.get("SUDO_USER", "")
    if not user or user == "root" or oscompat.effective_uid() != 0 or system is None:
        return ""
    try:
        passwd = Path("/etc/passwd").read_text("utf-8", "replace")
    except OSError:
        return ""
    home = passwd_home(passwd, user)
    if home is None:
        return ""
    theirs = config_dir({}, Path(home)) / "trusted"
    try:
        count = 0 if theirs == used else sum(1 for _ in theirs.glob("*.pub"))
    except OSError:
        return ""
    if not count:
        return ""
    return (f"; under sudo, {user}'s trust directory {theirs} ({plural(count, 'key')}) is not "
            f"read (HOME is root's): copy the key into {system}/, or pass --trust")


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


def check_trusted_file(path: Path, *, roots_only: bool = False) -> None:
    """A trust directory and its keys decide what gets in: refuse them if someone other
    than this user (or root) owns them or could change them; the system directory, which
    every user reads, only root may own."""
    try:
        st = path.stat()
    except OSError as e:
        raise BundlerError(f"cannot read {path}: {e.strerror}") from None
    uid = oscompat.effective_uid()  # None on Windows: no POSIX owner and mode to check
    owners = (0,) if roots_only else (0, uid)
    if uid is not None and (st.st_mode & 0o022 or st.st_uid not in owners):
        owner = "root" if roots_only else str(uid)
        raise UsageError(
            f"{path} could be changed by another user (owner uid {st.st_uid}, mode "
            f"{st.st_mode & 0o7777:04o}): its keys are not trusted",
            hint=f"chown {owner} {path} && chmod go-w {path}")


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


def refuse_untrusted(signatures: Signatures,
                     trusted: Sequence[signing.PublicKey] = ()) -> IntegrityError:
    if signatures.carried:
        ids = ", ".join(k[:16] for k in signatures.carried)
        system = "" if SYSTEM_TRUST_DIR is None else f"{SYSTEM_TRUST_DIR} for every user, or "
        note = trusted.note if isinstance(trusted, TrustedKeys) else ""
        return IntegrityError(
            f"the bundle is signed by {ids}, none of which you trust",
            hint=f"pass --trust SIGNER.pub, or copy SIGNER.pub into a trust directory ({system}"
                 "$BUNDLE_TRUST_DIR, default ~/.config/ollama-bundle/trusted); "
                 "key id: openssl pkey -pubin -in SIGNER.pub -outform DER | sha256sum" + note,
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
