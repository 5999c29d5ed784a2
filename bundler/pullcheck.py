"""`check-registry`: will `ollama pull` work from here? Probed as Ollama pulls: anonymously,
the GGUF path of server/download.go or, for tensor models, x/transfer/download.go
(formats/ollama-store.md §8); and the case notes a push reports."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

from bundler.digest import Digest
from bundler.distribution import PushItem, Target
from bundler.errors import IntegrityError, UsageError
from bundler.modelkind import MEDIA_TYPE_TENSOR
from bundler.oci import MEDIA_TYPE_DOCKER_MANIFEST
from bundler.reference import ModelName
from bundler.registry.client import (
    MAX_REDIRECTS,
    Client,
    RegistryError,
    parse_challenge,
)
from bundler.registry.listing import EndlessListError, model_tags
from bundler.registry.transport import Response, TlsError, Transport

MAX_PROBES = 100  # model tags one check-registry without MODEL probes


@dataclass(slots=True)
class RegistryCheck:
    model: str
    ok: bool
    findings: list[str]
    advice: list[str]
    path: str = ""  # "gguf" (server/download.go) or "tensor" (x/transfer), once the manifest is read
    note: str = ""  # what a colleague whose store spells the name otherwise will see

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok, "findings": self.findings,
                "advice": self.advice, "path": self.path or None, "note": self.note or None}


NGINX_ADVICE = ("put the recipe in front of the registry: scripts/registry-for-ollama (nginx "
                 "adds a Location header to blob responses), or use S3-compatible storage with "
                 "redirects on a different hostname")
ANONYMOUS_ADVICE = ("let anyone pull (GET and HEAD) without credentials and keep them for "
                    "pushes, e.g. nginx in front with `limit_except GET HEAD { auth_basic ...; }`"
                    ", or a token service on the registry's own host:port that gives anonymous "
                    "pull tokens")
_OLLAMA_AUTH = ("Ollama sends no credentials of yours: on a 401 it speaks only Bearer, to a "
                "token service on the registry's own host:port, signing the token request with "
                "its own key (server/auth.go)")


def check_registry(client: Client, repository: str, tag: str) -> RegistryCheck:
    """Probe `repository:tag` (spelt as Ollama asks for it) as `ollama pull` would: without
    our credentials or client certificate; a token only from a same-host:port Bearer service;
    the manifest with the schema2 Accept; then the download path the layers choose (GGUF:
    HEAD, a GET stopping at another host, then Range without auth; tensor: x/transfer)."""
    target = client.target
    name = f"{target.host}/{repository}:{tag}"
    plain = client.transport.anonymous()  # what Ollama's GGUF part downloads carry: nothing
    manifest_url = client.url(f"/v2/{repository}/manifests/{quote(tag)}")
    accept = {"Accept": MEDIA_TYPE_DOCKER_MANIFEST}
    findings: list[str] = []
    registry = plain
    try:
        resp = plain.request("GET", manifest_url, headers=accept)
    except TlsError as e:  # Ollama: Go's system roots, no client certificate
        return RegistryCheck(name, False, [
            f"without a client certificate {e.message}; `ollama pull` presents none"], [
            ("serve pulls without client certificates, with a certificate the pulling "
            "machines' system CA store trusts")])
    if resp.status == 401:
        token, said = _token_like_ollama(plain, target, resp, repository)
        if token is None:
            return RegistryCheck(name, False, [said], [ANONYMOUS_ADVICE])
        findings.append(said)
        registry = plain.with_headers(target.host, {"Authorization": f"Bearer {token}"})
        resp = registry.request("GET", manifest_url, headers=accept)
    if resp.status != 200:
        return _manifest_failed(client, plain, repository, tag, resp)
    findings.append("anonymous pull: the manifest is served to the Docker schema2 Accept header"
                    if registry is plain else
                    "the manifest is served with that token to the Docker schema2 Accept header")
    try:
        doc = json.loads(resp.body)
        layers = [*(doc.get("layers") or []), doc["config"]]  # null: a remote model
        tensor = any(d.get("mediaType") == MEDIA_TYPE_TENSOR for d in layers)
        blob = max(layers, key=lambda d: int(d["size"]))
        digest = Digest.parse(blob["digest"])
    except (ValueError, KeyError, TypeError, AttributeError, IntegrityError):
        return RegistryCheck(name, False, ["the manifest is not a schema2 manifest"], [])
    url = client.url(f"/v2/{repository}/blobs/{digest}")
    if tensor:
        return _check_transfer(name, registry, url, findings)
    probe = Client(registry, target, None)  # Ollama's token (if any) goes to the registry only
    head = _like_go(probe.transport, "HEAD", url)  # redirects followed, as Ollama's HEAD does
    if isinstance(head, str) or head.status != 200 or not head.header("Content-Length"):
        problem = (f"HEAD blob: {head}" if isinstance(head, str)
                   else f"HEAD blob: HTTP {head.status} without Content-Length")
        return RegistryCheck(name, False, [*findings, problem], [], "gguf")
    findings.append("GGUF model: blob HEAD answers with Content-Length" + (
        f" (from {urlsplit(head.url).netloc}, after a redirect)" if head.url != url else ""))
    direct = _resolve_like_ollama(probe, url)
    if direct.startswith("error:"):
        return RegistryCheck(name, False, [*findings, direct[6:].strip()], [NGINX_ADVICE], "gguf")
    findings.append(f"blob GET gives a direct URL ({direct})")
    # server/download.go downloadChunk: http.DefaultClient, no Authorization, redirects followed
    ranged = _like_go(plain, "GET", direct, {"Range": "bytes=0-0"})
    if isinstance(ranged, str):
        problem = f"a Range request on the direct URL: {ranged}"
        return RegistryCheck(name, False, [*findings, problem], [], "gguf")
    data = ranged.reader().read(2)  # a server that ignores Range would send the whole blob
    ranged.close()
    if ranged.status != 206 or len(data) != 1:
        problem = f"a Range request on the direct URL, without credentials (Ollama sends none " \
                  f"there), got HTTP {ranged.status}, not 206"
        advice = (ANONYMOUS_ADVICE if ranged.status in (401, 403)
                  else "serve Range requests on blob URLs")
        return RegistryCheck(name, False, [*findings, problem], [advice], "gguf")
    findings.append("the direct URL serves Range requests without credentials")
    return RegistryCheck(name, True, findings, [], "gguf")


def _token_like_ollama(plain: Transport, target: Target, resp: Response,
                       repository: str) -> tuple[str | None, str]:
    """(token, finding) for a 401 as Ollama meets it (server/auth.go getAuthorizationToken):
    a Bearer realm on the registry's own host:port only; the token from its `token` field."""
    kind, params = parse_challenge(resp.header("WWW-Authenticate") or "")
    if kind.lower() != "bearer":
        return None, (f"the registry asks for {kind or 'unknown'} credentials to pull; "
                      f"{_OLLAMA_AUTH}, never Basic, so `ollama pull` fails")
    realm = params.get("realm", "")
    where = urlsplit(realm)
    if where.netloc.lower() != target.host:
        return None, (f"the registry's token service is {where.netloc or realm!r}, not on the "
                      f"registry's own host:port {target.host}; {_OLLAMA_AUTH}, so `ollama "
                      f"pull` fails with 'realm host {where.netloc!r} does not match original "
                      f"host {target.host!r}'")
    query = {"service": params.get("service", ""),
             "scope": params.get("scope") or f"repository:{repository}:pull"}
    got = plain.request("GET", realm + ("&" if "?" in realm else "?") + urlencode(query))
    token = None
    if got.status == 200:
        with contextlib.suppress(ValueError, AttributeError):
            token = json.loads(got.body).get("token")
    if not isinstance(token, str) or not token:
        return None, (f"the token service {realm} gives no token without credentials (HTTP "
                      f"{got.status}, or no 'token' field); {_OLLAMA_AUTH}, so `ollama pull` "
                      "fails")
    return token, (f"the token service {realm} gives an anonymous pull token; Ollama asks it "
                   "too, signing the request with its own key instead of credentials "
                   "(server/auth.go); that the service ignores that signature is not checked")


def _manifest_failed(client: Client, plain: Transport, repository: str, tag: str,
                     resp: Response) -> RegistryCheck:
    name = f"{client.target.host}/{repository}:{tag}"
    finding = f"manifest: HTTP {resp.status}: `ollama pull {name}` fails with " \
              f"'{_ollama_manifest_error(resp)}'"
    lower = repository.lower()
    if lower != repository and plain.request(
            "GET", client.url(f"/v2/{lower}/manifests/{quote(tag)}"),
            headers={"Accept": MEDIA_TYPE_DOCKER_MANIFEST}).status == 200:
        return RegistryCheck(name, False, [
            finding, (f"Ollama asks for {repository} as spelt, and the registry keeps "
                     f"repositories in lower case: {lower}:{tag} is there")], [
            f"pull it as {client.target.host}/{lower}:{tag}; "
            + case_advice(repository, client.target.host)])
    return RegistryCheck(name, False, [finding], ["push the model first, or check the name"])


def _ollama_manifest_error(resp: Response) -> str:
    """What `ollama pull` prints for a failed manifest GET (server/images.go
    makeRequestWithRetry: a 404 becomes os.ErrNotExist)."""
    if resp.status == 404:
        return "pull model manifest: file does not exist"
    return f"pull model manifest: {resp.status}: {resp.body[:200].decode(errors='replace')}"


@dataclass(slots=True)
class PushCheck:
    """What `check_pushed` found after a push."""

    checks: list[RegistryCheck]  # one per pushed model, at most MAX_PROBES
    case_notes: dict[str, str]  # pull name -> `case_note`, for the renamed models

    @property
    def check(self) -> RegistryCheck | None:
        """The verdict: the first probe that failed, else the first."""
        return next((c for c in self.checks if not c.ok), next(iter(self.checks), None))

    def to_json(self, pushed: Mapping[str, Any]) -> dict[str, Any]:
        """The push's own JSON (`PushResult.to_json`) with what was found: each model's case
        note, then the verdict, every probe and how many there were."""
        return {**pushed,
                "models": [{**m, "caseNote": self.case_notes.get(m["pushedAs"])}
                           for m in pushed["models"]],
                "check": None if self.check is None else self.check.to_json(),
                "checks": [c.to_json() for c in self.checks], "probed": len(self.checks)}


def check_pushed(client: Client, items: Sequence[PushItem]) -> PushCheck:
    """After a push: probe each pushed model (at most MAX_PROBES) as `ollama pull` would
    (`check_registry`), and note for each renamed model what a colleague whose store spells
    it otherwise sees (`case_note`)."""
    checks = [check_registry(client, item.repository, item.tag) for item in items[:MAX_PROBES]]
    notes = {}
    for item in items:
        if item.renamed(client.target) and (note := case_note(client, item)):
            notes[item.pull_name(client.target)] = note
    return PushCheck(checks, notes)


def probed_text(probed: int, found: int | None, what: str) -> str:
    """"probed 3 of 5 model tags (at most 3)"; `found` None: more than MAX_PROBES."""
    if found is None:
        return f"probed {probed} of more than {MAX_PROBES} {what} (at most {MAX_PROBES})"
    bound = f" (at most {MAX_PROBES})" if found > probed else ""
    return f"probed {probed} of {found} {what}{bound}"


def require_pulls(checks: Sequence[RegistryCheck]) -> None:
    """RegistryError (exit 5) unless every probe says `ollama pull` will work."""
    failed = [c for c in checks if not c.ok]
    if not failed:
        return
    which = (f"the model probed ({failed[0].model})" if len(checks) == 1 else
             f"{len(failed)} of the {len(checks)} models probed")
    raise RegistryError(
        f"`ollama pull` will not work from this registry for {which}; the findings above "
        "say why", hint=next((a for c in failed for a in c.advice), None))


_STORED_SPELLING = (
    "Ollama takes the spelling of the stored name whose host, namespace and model equal the "
    "name's ignoring case (server/routes.go getExistingName; 0.34.3 and earlier releases "
    "matched each part on its own, so a model spelt so under any host or namespace did this)")


def case_advice(spelt: str, host: str) -> str:
    return (f"a colleague whose store already holds {host}/{spelt} with another tag (an "
            f"'ollama cp' to that spelling, say) gets that error even with the lowercase name: "
            f"{_STORED_SPELLING}; 'ollama rm' that copy first")


def case_note(client: Client, item: PushItem) -> str:
    """For a model whose name is not all lower case: what a colleague whose store already has
    it spelt so under this registry sees (probed: the manifest GET Ollama would send)."""
    spelt = f"{client.target.namespace or item.model.name.namespace}/{item.model.name.model}"
    if spelt == item.repository:
        return ""
    resp = client.transport.anonymous().request(
        "GET", client.url(f"/v2/{spelt}/manifests/{quote(item.tag)}"),
        headers={"Accept": MEDIA_TYPE_DOCKER_MANIFEST})
    if resp.status == 200:
        return ""
    return (f"a colleague whose store already holds {client.target.host}/{spelt} with another "
            f"tag (an 'ollama cp' to that spelling, say) gets '{_ollama_manifest_error(resp)}' "
            f"(HTTP {resp.status}): Ollama then asks for {spelt}:{item.tag}. "
            f"{_STORED_SPELLING[0].upper()}{_STORED_SPELLING[1:]}; 'ollama rm' that copy first")


def _check_transfer(name: str, registry: Transport, url: str,
                    findings: list[str]) -> RegistryCheck:
    """x/transfer/download.go: resolve (GET, no redirects followed by the client; 200 keeps
    the URL, a 301/302/307 to another host:port gives the URL, to the same one is followed),
    then a GET there that must answer 200 or 206 (auth only on the registry's host:port)."""
    findings = [*findings, ("tensor model (application/vnd.ollama.image.tensor layers): Ollama "
                           "pulls it through x/transfer and needs its MLX runtime to run it")]
    resolved = _resolve_like_transfer(registry, url)
    if resolved.startswith("error:"):
        return RegistryCheck(name, False, [*findings, resolved[6:].strip()], [], "tensor")
    resp = registry.request("GET", resolved, stream=True)
    resp.close()
    if resp.status not in (200, 206):
        return RegistryCheck(name, False, [
            *findings, f"GET {resolved}: HTTP {resp.status} (x/transfer needs 200 or 206)"],
            [], "tensor")
    findings.append(f"blob GET {resolved} answers {resp.status}")
    return RegistryCheck(name, True, findings, [], "tensor")


def _resolve_like_transfer(transport: Transport, url: str) -> str:
    for _ in range(10):
        resp = transport.request("GET", url, stream=True)
        resp.close()
        location = resp.header("Location")
        if resp.status == 200:
            return url
        if resp.status in (301, 302, 307) and location:
            target = urljoin(url, location)
            if urlsplit(target).netloc != urlsplit(url).netloc:
                return target
            url = target
            continue
        return (f"error: blob GET answered HTTP {resp.status} (x/transfer accepts 200, or a "
                "301, 302 or 307 with Location)")
    return "error: too many redirects"


def check_targets(client: Client, names: Sequence[str],
                  ) -> tuple[list[tuple[str, str]], int | None]:
    """(repository as Ollama spells it, tag) for each MODEL given (the URL's namespace, else
    the name's), else for up to MAX_PROBES model tags under the URL's namespace; and how many
    model tags there are (None: more than MAX_PROBES; the listing stops there)."""
    if names:
        out = []
        for text in names:
            name = ModelName.parse(text)
            if client.target.repository(name.namespace, name.model) is None:
                raise UsageError(f"{text!r} cannot be a repository name")
            out.append((f"{client.target.namespace or name.namespace}/{name.model}", name.tag))
        return out, len(out)
    try:
        found = list(itertools.islice(model_tags(client), MAX_PROBES + 1))
    except EndlessListError:
        raise
    except RegistryError as e:
        raise UsageError(f"the registry does not list its repositories ({e.message})",
                         hint="name the models to check: namespace/model:tag") from None
    if not found:
        raise UsageError("the registry holds no models yet" + (
            f" under {client.target.namespace}/" if client.target.namespace else ""),
            hint="push some with 'bundle import BUNDLE --to-registry URL'")
    return found[:MAX_PROBES], len(found) if len(found) <= MAX_PROBES else None


def _like_go(transport: Transport, method: str, url: str,
             headers: Mapping[str, str] | None = None) -> Response | str:
    """`method url` as Go's default http.Client sends it, which is how Ollama sends the blob
    HEAD (server/download.go, Prepare, through makeRequest in server/images.go with no
    CheckRedirect) and each Range part (downloadChunk, http.DefaultClient, no credentials):
    redirects followed to any host, HEAD and GET keeping their method and headers, "stopped
    after 10 redirects". A GET's answer is streamed; an error is a string."""
    for _ in range(MAX_REDIRECTS):
        resp = transport.request(method, url, headers=headers, stream=method == "GET")
        location = resp.header("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not location:
            return resp
        resp.close()
        url = urljoin(url, location)
    return f"stopped after {MAX_REDIRECTS} redirects"


def _resolve_like_ollama(client: Client, url: str) -> str:
    """Ollama's server/download.go (blobDownload.run: the CheckRedirect that refuses when
    len(via) > 10): follow redirects to the same hostname, the port ignored (at
    most 10); stop at the first to another hostname; accept only 307, or 200 with Location."""
    host = urlsplit(url).hostname
    for _ in range(MAX_REDIRECTS + 1):
        resp = client.transport.request("GET", url, stream=True)
        location = resp.header("Location")
        resp.close()
        if resp.status in (301, 302, 303, 307, 308) and location:
            target = urljoin(url, location)
            if urlsplit(target).hostname == host:
                url = target
                continue
            if resp.status == 307:
                return target
            return f"error: a {resp.status} redirect to another host (Ollama accepts only 307)"
        if resp.status == 200:
            if not location:
                return ("error: blob GET answers 200 without a Location header, so `ollama "
                        "pull` fails with 'http: no Location header in response' (Ollama's "
                        "pull needs a 307 to another hostname or a 200 with Location)")
            return urljoin(url, location)
        return f"error: blob GET answered HTTP {resp.status}"
    return "error: more than 10 redirects"
