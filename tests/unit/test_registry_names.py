"""Registry addresses and Distribution's naming rules (pure parts of bundler.registry.client)."""

from __future__ import annotations

import pytest

from bundler.distribution import Target, is_valid_tag, repository_name
from bundler.errors import UsageError
from bundler.registry.client import Credentials


@pytest.mark.parametrize(("text", "plain", "expected"), [
    ("registry.example:5000", False, ("https", "registry.example:5000", None)),
    ("http://registry.example:5000/team", False, ("http", "registry.example:5000", "team")),
    ("HTTPS://Reg.Example/ns/", False, ("https", "reg.example", "ns")),
    ("127.0.0.1:5000", True, ("http", "127.0.0.1:5000", None)),
    ("[::1]:5000/x", False, ("https", "[::1]:5000", "x")),
])
def test_targets(text: str, plain: bool, expected: tuple[str, str, str | None]) -> None:
    t = Target.parse(text, plain_http=plain)
    assert (t.scheme, t.host, t.namespace) == expected


@pytest.mark.parametrize("text", ["", "http://", "host:port", "host/Team", "host/a/b",
                                  "ho st:5000", "host:5000/-x"])
def test_bad_targets(text: str) -> None:
    with pytest.raises(UsageError):
        Target.parse(text)


@pytest.mark.parametrize(("namespace", "model", "expected"), [
    ("library", "llama3.2", "library/llama3.2"),
    ("Org", "Big", "org/big"),
    ("_x", "m", None),  # Distribution components start with [a-z0-9]
    ("a--b", "m_1", "a--b/m_1"),
    ("ns", "m__x", "ns/m__x"),
    ("ns", "m___x", None),
])
def test_repository_names(namespace: str, model: str, expected: str | None) -> None:
    assert repository_name(namespace, model) == expected


def test_tags_and_secrets() -> None:
    assert is_valid_tag("Q4_K_M") and is_valid_tag("latest") and not is_valid_tag(".x")
    assert "s3cret" not in repr(Credentials("u", "s3cret"))
