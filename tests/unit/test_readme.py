"""README stays true to the CLI: every command, option and exit code is documented."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from bundler.cli import main
from bundler.errors import ExitCode

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_option_is_in_readme(name: str) -> None:
    command = main.commands[name]
    assert f"### `bundle {name}" in README, f"README has no section for 'bundle {name}'"
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            for opt in param.opts:
                if opt.startswith("--"):
                    assert opt in README, f"README does not mention {name} {opt}"


def test_exit_codes_table_matches() -> None:
    rows = dict(re.findall(r"^\| (\d) \| (.+?) \|$", README, re.MULTILINE))
    assert {int(k) for k in rows} == {int(c) for c in ExitCode}
    assert "integrity" in rows["3"] and "not found" in rows["4"]


def test_quick_start_is_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["scripts/demo", "scripts/test"]
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "exec scripts/test" in ci
