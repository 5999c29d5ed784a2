"""Distribution's lists (catalog, tags), page by page, and the tags among them that may be
models."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import urljoin

from bundler.registry.client import Client, RegistryError, describe_error

PAGE = 1000  # names asked for per page (?n=)
MAX_PAGES = 1000  # pages of one list followed at most


def model_tags(client: Client) -> Iterator[tuple[str, str]]:
    """(repository, tag) of every tag under the URL's namespace that may be a model: not
    cosign's signatures, attestations and SBOMs (formats/signature-v1.md §6.4). Lazy: pages
    are fetched only as far as the caller reads."""
    for repo in _paged(client, "/v2/_catalog", "repositories", "registry:catalog:*"):
        if client.target.holds(repo):
            for tag in _paged(client, f"/v2/{repo}/tags/list", "tags",
                              f"repository:{repo}:pull"):
                if not _COSIGN_TAG.fullmatch(tag):
                    yield repo, tag


class EndlessListError(RegistryError):
    """A list whose pages would never end: the registry's fault, not a refusal to list."""


_COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(sig|att|sbom)")
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


def _paged(client: Client, path: str, key: str, scope: str) -> Iterator[str]:
    """A Distribution list (catalog, tags), page by page: the next page is the one the
    `Link: <...>; rel="next"` header names (distribution/docs/spec/api.md, "Pagination"),
    on the registry itself. A next page given twice, or more than MAX_PAGES, is an error:
    such a list would never end."""
    url = client.url(f"{path}?n={PAGE}")
    asked = {url}
    for _ in range(MAX_PAGES):
        resp = client.send("GET", url, scope=scope)
        if resp.status == 404 and key == "tags":
            return
        if resp.status != 200:
            raise describe_error(resp, f"listing {path}")
        try:
            names = json.loads(resp.body).get(key) or []
        except (ValueError, AttributeError):
            raise RegistryError(f"the registry's answer to {path} is not JSON") from None
        if not isinstance(names, list):
            raise RegistryError(f"the registry's answer to {path} holds no list of {key}")
        yield from (n for n in names if isinstance(n, str))
        found = _NEXT.search(resp.header("Link") or "")
        if not names or found is None:
            return
        url = urljoin(url, found.group(1))
        if not client.own(url):
            raise RegistryError(f"the registry's next page of {path} is on another host "
                                f"({url.split('?')[0]})")
        if url in asked:
            raise EndlessListError(f"the registry's pages of {path} repeat: it names the same "
                                "next page twice", hint="the registry is broken or hostile; "
                                "name the models to check: namespace/model:tag")
        asked.add(url)
    raise EndlessListError(f"the registry's list {path} goes on beyond {MAX_PAGES} pages of "
                        f"{PAGE}")
