"""ECDSA P-256 / SHA-256 keys and detached signatures (formats/signature-v1.md); the only
cryptography user. Bytes in, bytes out; key objects are passed down, never paths."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bundler import oscompat
from bundler.errors import BundlerError, IntegrityError, NotFoundError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography is imported by the functions that use it, not here: a command that handles no
# key or signature (--version, an unsigned bundle's ls without trusted keys) does not pay for
# loading it.
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # group order


@dataclass(frozen=True, slots=True)
class PublicKey:
    key: ec.EllipticCurvePublicKey
    keyid: str  # hex sha256 of the DER SubjectPublicKeyInfo
    source: str  # where it came from, for messages


@dataclass(frozen=True, slots=True)
class PrivateKey:
    key: ec.EllipticCurvePrivateKey
    public: PublicKey


def _keyid(key: ec.EllipticCurvePublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _public(key: ec.EllipticCurvePublicKey, source: str) -> PublicKey:
    return PublicKey(key, _keyid(key), source)


def generate() -> PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return PrivateKey(key, _public(key.public_key(), "new key"))


def private_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption()
    )
    return key.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption,
    )


def public_pem(key: PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def is_encrypted_pem(data: bytes) -> bool:
    """PKCS#8 encrypted, or a traditional PEM with a Proc-Type: ENCRYPTED header."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def load_private(data: bytes, passphrase: bytes | None, source: str) -> PrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError:
        raise UsageError(
            f"{source}: the key is encrypted and no passphrase was given",
            hint="pass --passphrase-file FILE or set BUNDLE_PASSPHRASE",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(
            f"{source}: wrong passphrase, or not a PKCS#8 PEM private key",
            hint="check the passphrase; keys come from 'bundle keygen'",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise UsageError(f"{source}: not an ECDSA P-256 private key")
    return PrivateKey(key, _public(key.public_key(), source))


def load_public(data: bytes, source: str) -> PublicKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(
            f"{source}: not a PEM public key (SubjectPublicKeyInfo)",
            hint="public keys are the PREFIX.pub files that 'bundle keygen' writes",
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise UsageError(f"{source}: not an ECDSA P-256 public key")
    return _public(key, source)


def read_public(path: Path) -> PublicKey:
    try:
        return load_public(path.read_bytes(), str(path))
    except FileNotFoundError:
        raise NotFoundError(f"public key not found: {path}") from None
    except OSError as e:
        raise BundlerError(f"cannot read public key {path}: {e.strerror}") from None


def read_private(path: Path, passphrase: bytes | Callable[[], bytes | None] | None) -> PrivateKey:
    """Load a private key file; `passphrase` may be a function, asked only if the key is
    encrypted."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(
            f"signing key not found: {path}",
            hint="make one with 'bundle keygen', pass --key KEY, or export with --unsigned",
        ) from None
    except OSError as e:
        raise BundlerError(f"cannot read signing key {path}: {e.strerror}") from None
    if data.lstrip().startswith(b"-----BEGIN PUBLIC KEY-----"):  # signature-v1.md §2
        raise UsageError(f"{path} is a public key, not a signing key",
                         hint="give --key the private key (PREFIX.key, beside the .pub); the "
                              ".pub file is what importers pass to --trust")
    if oscompat.posix_permissions() and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"signing key {path} is readable by other users (mode {stat.S_IMODE(mode):04o})",
            hint=f"chmod 600 {path}",
        )
    if callable(passphrase):
        passphrase = passphrase() if is_encrypted_pem(data) else None
    return load_private(data, passphrase, str(path))


def write_key_pair(prefix: Path, key: PrivateKey, passphrase: bytes | None) -> tuple[Path, Path]:
    """Write PREFIX.key (0600) and PREFIX.pub, each created exclusively and never through a
    link; refuse to overwrite anything, a link (dangling or not) included."""
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for p in (key_path, pub_path):
        if os.path.lexists(p):
            what = "a symbolic link" if p.is_symlink() else "it"
            raise UsageError(f"{p} already exists",
                             hint=f"choose another --out, or remove {what}")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for path, data, mode in ((key_path, private_pem(key, passphrase), 0o600),
                                 (pub_path, public_pem(key.public), 0o644)):
            fd = oscompat.open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            written.append(path)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except FileExistsError as e:  # appeared since the check above
        for path in written:
            path.unlink()
        raise UsageError(f"{e.filename} already exists",
                         hint="choose another --out, or remove it") from None
    return key_path, pub_path


def sign(key: PrivateKey, payload: bytes) -> bytes:
    """The signature member's content: base64 of the low-s DER signature over payload."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )

    deterministic = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)  # RFC 6979
    r, s = decode_dss_signature(key.key.sign(payload, deterministic))
    if s > _P256_N // 2:
        s = _P256_N - s
    return base64.b64encode(encode_dss_signature(r, s))


def decode(signature_b64: bytes, what: str) -> bytes:
    """The DER signature in a signature member; IntegrityError unless it is well formed
    (formats/signature-v1.md §3: standard base64 of a DER ECDSA-Sig-Value)."""
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )

    try:
        der = base64.b64decode(signature_b64, validate=True)
        r, s = decode_dss_signature(der)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{what} is not a base64 DER ECDSA signature") from None
    # canonical: one base64 spelling, minimal DER, low s (s and n - s both verify)
    if (base64.b64encode(der) != signature_b64 or encode_dss_signature(r, s) != der
            or not (0 < r < _P256_N and 0 < s <= _P256_N // 2)):
        raise IntegrityError(f"{what} is not a canonical (low-s, DER, base64) ECDSA signature")
    return der


def verify(key: PublicKey, payload: bytes, der: bytes) -> bool:
    """True if `der` is key's signature over payload."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key.key.verify(der, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
