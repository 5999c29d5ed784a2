"""HTTP for registries over urllib3: TLS options, client certificates, proxies from the
environment, timeouts. The only urllib3 user; everything above it sees `Response`."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast
from urllib.parse import urlsplit

from bundler.errors import IntegrityError, NetworkError, UsageError

if TYPE_CHECKING:
    import urllib3

# urllib3 (and ssl, urllib.request) are imported by the functions that use them, not here: a
# command that makes no HTTP request does not pay for loading them.

CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 300.0  # a registry may hash a multi-GB blob before it answers the final PUT
# What an answer read whole may hold: a document (manifest, token, a page of a list) at most
# Distribution's manifest limit (registry/handlers/manifests.go, maxManifestBodySize), the
# body of an error answer far less; more is never read.
ANSWER_LIMIT = 4 * 1024 * 1024
ERROR_ANSWER_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class TlsOptions:
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    skip_verify: bool = False


@dataclass(slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes = b""
    url: str = ""
    _raw: urllib3.BaseHTTPResponse | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def reader(self) -> BinaryIO:
        """The streamed body as a file object (readinto); read errors become NetworkError."""
        assert self._raw is not None
        return cast("BinaryIO", _Body(self._raw, self.url))

    def close(self) -> None:
        """Drop an unread streamed body (the connection is closed, not reused)."""
        if self._raw is not None:
            self._raw.close()
            self._raw.release_conn()

    def stream(self, size: int) -> Iterator[bytes]:
        """The body, read in chunks, for responses opened with stream=True."""
        from urllib3.exceptions import HTTPError as Urllib3Error

        assert self._raw is not None
        try:
            yield from self._raw.stream(size)
        except Urllib3Error as e:
            raise NetworkError(f"reading {self.url} failed: {e}") from None
        finally:
            self._raw.release_conn()


class Transport:
    """One connection pool per proxy, shared by every request of a run."""

    def __init__(self, tls: TlsOptions = TlsOptions(), *,
                 read_timeout: float = READ_TIMEOUT) -> None:
        """`read_timeout`: seconds of silence from the server before a request fails (and is
        retried by the caller)."""
        import ssl

        import urllib3

        kw: dict[str, object] = {"num_pools": 8, "maxsize": 8, "retries": False,
                                 "timeout": urllib3.Timeout(connect=CONNECT_TIMEOUT,
                                                            read=read_timeout)}
        if tls.skip_verify:
            kw["cert_reqs"] = ssl.CERT_NONE
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        else:
            kw["cert_reqs"] = ssl.CERT_REQUIRED
            if tls.ca_cert is not None:
                if not tls.ca_cert.is_file():
                    raise UsageError(f"CA certificate not found: {tls.ca_cert}")
                kw["ca_certs"] = str(tls.ca_cert)
        if tls.client_cert is not None:
            kw["cert_file"] = str(tls.client_cert)
            kw["key_file"] = str(tls.client_key) if tls.client_key else None
        self._kw = kw
        self._tls, self._read_timeout = tls, read_timeout
        self._direct = urllib3.PoolManager(**kw)  # type: ignore[arg-type]
        self._proxies: dict[str, urllib3.ProxyManager] = {}
        self._extra: dict[str, dict[str, str]] = {}  # host:port -> headers added to requests

    def anonymous(self) -> Transport:
        """The same CA and proxy settings without a client certificate: what `ollama pull`
        presents (its Go client has none)."""
        return Transport(TlsOptions(self._tls.ca_cert, None, None, self._tls.skip_verify),
                         read_timeout=self._read_timeout)

    def with_headers(self, netloc: str, headers: Mapping[str, str]) -> Transport:
        """This transport (same pools) adding `headers` to every request to `netloc`."""
        other = copy.copy(self)
        other._extra = {**self._extra, netloc.lower(): dict(headers)}
        return other

    def _pool(self, url: str) -> urllib3.PoolManager:
        """HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as the standard library reads them."""
        import urllib.request

        import urllib3

        parts = urlsplit(url)
        proxy = urllib.request.getproxies().get(parts.scheme)
        if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
            return self._direct
        if proxy not in self._proxies:
            self._proxies[proxy] = urllib3.ProxyManager(proxy, **self._kw)  # type: ignore[arg-type]
        return self._proxies[proxy]

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
        body: bytes | bytearray | memoryview | Iterable[memoryview] | None = None,
        stream: bool = False,
    ) -> Response:
        """One request, no retries and no redirects followed (the caller decides). An
        iterable body is streamed; give its Content-Length in `headers`."""
        import urllib3
        from urllib3.exceptions import HTTPError as Urllib3Error

        # urllib3 applies the connect timeout while it sends a body: give a request with a
        # body as long as the read timeout (a registry may stop reading while it writes)
        timeout = (urllib3.Timeout(connect=self._read_timeout, read=self._read_timeout)
                   if body is not None else None)
        extra = self._extra.get(urlsplit(url).netloc.lower())
        if extra:
            headers = {**extra, **(headers or {})}
        try:
            raw = self._pool(url).urlopen(
                method, url, body=body, headers=dict(headers or {}), redirect=False,
                preload_content=False, decode_content=False,
                **({"timeout": timeout} if timeout is not None else {}),
            )
        except urllib3.exceptions.SSLError as e:
            netloc = urlsplit(url).netloc
            if _speaks_plain_http(e):
                raise TlsError(
                    f"TLS to {netloc} failed: the server answers in plain HTTP, not TLS ({e})",
                    hint=f"use http://{netloc} (or --plain-http) for a plain-HTTP registry",
                ) from None
            raise TlsError(
                f"TLS to {netloc} failed: {e.reason if hasattr(e, 'reason') else e}",
                hint="pass --ca-cert FILE for a private CA (or --insecure-skip-tls-verify)",
            ) from None
        except urllib3.exceptions.NewConnectionError as e:
            if not _refused(e):
                raise NetworkError(f"{method} {_redact(url)} failed: {e}", hint=_CHECK) from None
            parts = urlsplit(url)
            raise RefusedError(
                f"nothing answers at {parts.scheme}://{parts.netloc} (connection refused)",
                hint="check that the registry is running and the address and port (and "
                     "HTTPS_PROXY/NO_PROXY, if a proxy should be in the way)") from None
        except Urllib3Error as e:
            raise NetworkError(f"{method} {_redact(url)} failed: {e}", hint=_CHECK) from None
        if stream:
            return Response(raw.status, raw.headers, b"", url, raw)
        return Response(raw.status, raw.headers, _bounded(raw, method, url), url)


_CHECK = ("check the address, that the registry is running, the scheme (http:// or "
          "--plain-http for a plain-HTTP registry) and HTTPS_PROXY/NO_PROXY")
# OpenSSL's words for a TLS handshake answered in plain HTTP ("HTTP/1.1 400 ..." read as a
# TLS record): before 3.2 WRONG_VERSION_NUMBER, from 3.2 on "record layer failure"
_PLAIN_HTTP_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "record layer failure",
                       "wrong version number", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG")


def _speaks_plain_http(error: BaseException) -> bool:
    """Whether a TLS failure is OpenSSL reading a plain-HTTP answer as a TLS record."""
    import ssl

    seen: BaseException | None = error
    for _ in range(8):  # the ssl.SSLError is somewhere in urllib3's chain of causes
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError) and seen.reason in _PLAIN_HTTP_REASONS:
            return True
        seen = seen.__cause__ or seen.__context__
    return any(reason in str(error) for reason in _PLAIN_HTTP_REASONS)


def _refused(error: BaseException) -> bool:
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


LOCAL_TIMEOUT = 2.0


def get_local(url: str, *, timeout: float = LOCAL_TIMEOUT, limit: int = 16 * 1024 * 1024,
              ) -> Response:
    """One GET to a server on this machine (a local Ollama's API): no proxy, no retries,
    short timeouts, the body cut at `limit` bytes. NetworkError if nothing answers."""
    import urllib3
    from urllib3.exceptions import HTTPError as Urllib3Error

    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=timeout,
                                                                      read=timeout))
    try:
        raw = pool.urlopen("GET", url, redirect=False, preload_content=False)
        try:
            body = raw.read(limit)
        finally:
            raw.release_conn()
    except Urllib3Error as e:
        raise NetworkError(f"GET {url} failed: {e}") from None
    finally:
        pool.clear()
    return Response(raw.status, raw.headers, body, url)


def _bounded(raw: urllib3.BaseHTTPResponse, method: str, url: str) -> bytes:
    """The body of an answer read whole: at most ANSWER_LIMIT bytes, and the limit plus one
    read to tell. A longer document is an error (OversizedAnswerError); a longer error body is cut
    at ERROR_ANSWER_LIMIT (its status is what counts). The connection of an answer not read
    to its end is closed, not reused."""
    from urllib3.exceptions import HTTPError as Urllib3Error

    limit = ANSWER_LIMIT if raw.status < 300 else ERROR_ANSWER_LIMIT
    try:
        body = raw.read(limit + 1)
        if len(body) > limit:
            raw.close()
            if raw.status < 300:
                raise OversizedAnswerError(
                    f"the registry's answer to {method} {_redact(url)} is larger than "
                    f"{limit // (1024 * 1024)} MiB (more is never read)",
                    hint="the registry, or a proxy in front of it, is broken or hostile")
            body = body[:limit]
    except Urllib3Error as e:
        raise NetworkError(f"reading {_redact(url)} failed: {e}") from None
    finally:
        raw.release_conn()
    return body


class _Body:
    def __init__(self, raw: urllib3.BaseHTTPResponse, url: str) -> None:
        self._raw, self._url = raw, url

    def readinto(self, buffer: memoryview) -> int:
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            return self._raw.readinto(buffer)
        except Urllib3Error as e:
            raise NetworkError(f"reading {_redact(self._url)} failed: {e}") from None

    def read(self, n: int = -1) -> bytes:
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            return self._raw.read(None if n < 0 else n)
        except Urllib3Error as e:
            raise NetworkError(f"reading {_redact(self._url)} failed: {e}") from None


class TlsError(NetworkError):
    """The registry's TLS certificate was refused: permanent, not worth a retry."""


class RefusedError(NetworkError):
    """Nothing listens at the address: on the first contact, not worth a retry."""


class OversizedAnswerError(IntegrityError):
    """An answer longer than a document of its kind may be: a size error, never retried."""


def _redact(url: str) -> str:
    """A URL without query string (upload URLs carry state tokens)."""
    return url.split("?", 1)[0]
