"""Distribution's lists (catalog, tags), page by page, and the tags among them that may be
models."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from bundler.registry.client import Client, RegistryError, describe_error


def model_tags(client: Client) -> Iterator[tuple[str, str]]:
    """(repository, tag) of every tag under the URL's namespace that may be a model: not
    cosign's signatures, attestations and SBOMs (formats/signature-v1.md §6.4)."""
    for repo in _paged(client, "/v2/_catalog", "repositories", "registry:catalog:*"):
        if client.target.holds(repo):
            for tag in _paged(client, f"/v2/{repo}/tags/list", "tags",
                              f"repository:{repo}:pull"):
                if not _COSIGN_TAG.fullmatch(tag):
                    yield repo, tag


_COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(sig|att|sbom)")


def _paged(client: Client, path: str, key: str, scope: str) -> Iterator[str]:
    """A Distribution list (catalog, tags), page by page (?n=&last=)."""
    last = ""
    while True:
        query = f"?n=1000&last={last}" if last else "?n=1000"
        resp = client.send("GET", client.url(path + query), scope=scope)
        if resp.status == 404 and key == "tags":
            return
        if resp.status != 200:
            raise describe_error(resp, f"listing {path}")
        try:
            names = json.loads(resp.body).get(key) or []
        except (ValueError, AttributeError):
            raise RegistryError(f"the registry's answer to {path} is not JSON") from None
        yield from (n for n in names if isinstance(n, str))
        if len(names) < 1000 or not resp.header("Link"):
            return
        last = names[-1]
