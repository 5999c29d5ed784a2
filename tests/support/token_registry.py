"""The real registry configured for token auth, with a small token issuer of our own (Debian
packages none) that signs ES256 JWTs the registry trusts: the `token_registry` fixture.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support.servers import http_status, run_registry_with

SERVICE, ISSUER = "test-registry", "test-issuer"
realm_placeholder = "@REALM@"
USER, PASSWORD = "robot", "token-secret-42"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Issuer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    requests: list[dict[str, list[str]]]

    def token(self, scope: str, authorized: bool) -> str:
        access = []
        for item in scope.split():
            kind, name, actions = item.split(":")
            access.append({"type": kind, "name": name,
                           "actions": actions.split(",") if authorized else ["pull"]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(
                      serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": USER if authorized else "", "aud": SERVICE,
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": str(now),
                  "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}." \
                        f"{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(),
                                                  ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _make_issuer() -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return Issuer(key, cert, [])


@contextlib.contextmanager
def token_server(issuer: Issuer) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            issuer.requests.append(query)
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            given = self.headers.get("Authorization")
            if given is not None and given != expected:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps({"token": issuer.token(query.get("scope", [""])[0],
                                                     authorized=given == expected)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Issuer]]:
    d = tmp_path_factory.mktemp("token-registry")
    issuer = _make_issuer()
    (d / "root.pem").write_bytes(issuer.cert.public_bytes(serialization.Encoding.PEM))
    extra = (f"auth:\n  token:\n    realm: {realm_placeholder}\n    service: {SERVICE}\n"
             f"    issuer: {ISSUER}\n    rootcertbundle: {{dir}}/root.pem\n")
    with token_server(issuer) as realm, run_registry_with(
            d, extra.replace(realm_placeholder, realm),
            lambda port: http_status("127.0.0.1", port) == 401) as port:
        yield f"http://127.0.0.1:{port}", issuer
