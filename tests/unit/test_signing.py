"""Keys and signatures (formats/signature-v1.md), checked against openssl where it can."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from bundler import signing
from bundler.errors import IntegrityError, UsageError

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_signatures_are_deterministic_low_s_and_verify() -> None:
    key = signing.generate()
    for i in range(20):  # about half of raw ECDSA signatures are high-s
        payload = f"root {i}".encode()
        sig = signing.sign(key, payload)
        assert sig == signing.sign(key, payload)
        der = signing.decode(sig, "sig")
        r, s = decode_dss_signature(der)
        assert s <= N // 2
        assert signing.verify(key.public, payload, der)
        assert not signing.verify(key.public, payload + b"x", der)
        high = base64.b64encode(encode_dss_signature(r, N - s))
        with pytest.raises(IntegrityError, match="canonical"):
            signing.decode(high, "sig")


@pytest.mark.parametrize("bad", [b"", b"not base64!", b"AAAA", b" " + b"MEUCIQ==",
                                 base64.b64encode(b"\x30\x03\x02\x01\x01")])
def test_malformed_signatures_are_refused(bad: bytes) -> None:
    with pytest.raises(IntegrityError):
        signing.decode(bad, "sig")


def test_key_files_are_what_openssl_reads(tmp_path: Path) -> None:
    key = signing.generate()
    key_path, pub_path = signing.write_key_pair(tmp_path / "k", key, b"s3cret")
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    out = subprocess.run(["openssl", "pkey", "-in", str(key_path), "-passin", "pass:s3cret",
                          "-pubout"], capture_output=True, check=True).stdout
    assert out == pub_path.read_bytes()
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(pub_path), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    assert hashlib.sha256(der).hexdigest() == key.public.keyid
    loaded = signing.read_private(key_path, b"s3cret")
    assert loaded.public.keyid == key.public.keyid
    with pytest.raises(UsageError):
        signing.read_private(key_path, b"wrong")
    # a P-384 key is refused with a clear message
    p384 = subprocess.run(["openssl", "ecparam", "-name", "secp384r1", "-genkey", "-noout"],
                          capture_output=True, check=True).stdout
    pub384 = subprocess.run(["openssl", "ec", "-pubout"], input=p384, capture_output=True,
                            check=True).stdout
    with pytest.raises(UsageError, match="P-256"):
        signing.load_public(pub384, "p384.pub")
