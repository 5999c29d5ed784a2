"""The README's shell recipes, read from README.md at test time, so that a test runs a recipe
exactly as printed and a README change that breaks one fails the suite.

A recipe is a fenced ```sh block. `blocks(heading)` gives the blocks under one heading (up to the
next heading of the same or a higher level), in order; `substitute` replaces file names and ports
with a test's own, and refuses a replacement that does not occur, so that a README edit cannot
silently turn a substitution into a no-op."""

from __future__ import annotations

import re

from tests.support.common import REPO

README = REPO / "README.md"

_FENCE = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^(#{1,6}) (.+)$", re.MULTILINE)


def section(heading: str, text: str | None = None) -> str:
    """The text under the README heading whose title is `heading` (without the #s)."""
    text = README.read_text() if text is None else text
    for m in _HEADING.finditer(text):
        if m.group(2).strip() != heading:
            continue
        level = len(m.group(1))
        rest = text[m.end():]
        for n in _HEADING.finditer(rest):
            # headings inside fenced blocks are shell comments: skip those
            if len(n.group(1)) <= level and rest[:n.start()].count("```") % 2 == 0:
                return rest[:n.start()]
        return rest
    raise AssertionError(f"README.md has no heading {heading!r}")


def blocks(heading: str, text: str | None = None) -> list[str]:
    """Every ```sh block under `heading`, in order."""
    found = _FENCE.findall(section(heading, text))
    assert found, f"README.md section {heading!r} has no sh block"
    return list(found)


def substitute(script: str, replacements: dict[str, str]) -> str:
    """`script` with each key replaced by its value; every key must occur."""
    for old, new in replacements.items():
        assert old in script, f"the README recipe no longer contains {old!r}"
        script = script.replace(old, new)
    return script
