"""Repair data for bundle files with the standard par2 tool (Debian's `par2`): the only place
that runs it. One recovery set per file (`FILE.par2` plus `FILE.vol*.par2`), so each part of a
split bundle can be repaired on its own."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path

from bundler.errors import BundlerError, NotFoundError
from bundler.split import split_name


def _par2() -> str:
    found = shutil.which("par2")
    if found is None:
        raise NotFoundError("par2 is not installed, so no repair data can be made or used",
                            hint="install it: sudo apt-get install par2 (Debian, Ubuntu), "
                                 "dnf install par2cmdline (Fedora), brew install par2 (macOS)")
    return found


def require() -> None:
    """NotFoundError (with how to install it) unless par2 is installed."""
    _par2()


def recovery_file(path: Path) -> Path:
    return path.with_name(path.name + ".par2")


def create(files: Sequence[Path], percent: int) -> list[Path]:
    """Recovery data of `percent` % of each file's size; returns the index files."""
    tool = _par2()
    made = []
    for path in (f.resolve() for f in files):
        index = recovery_file(path)
        for old in path.parent.glob(f"{path.name}*.par2"):
            old.unlink()  # from an earlier export under the same name
        done = subprocess.run([tool, "create", "-q", "-q", f"-r{percent}", "-n1", "--",
                               str(index), str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            raise BundlerError(f"par2 could not make repair data for {path.name}: "
                               + _last_line(done))
        made.append(index)
    return made


@dataclass(frozen=True, slots=True)
class Repair:
    name: str
    state: str  # "intact", "repaired", "no repair data", "beyond repair"


def bundle_files(first: Path) -> list[Path]:
    """The files of a bundle: every part of a split bundle given as NAME.001, else the file."""
    stem, number = split_name(first.name) or ("", 0)
    return ([f for f in sorted(first.parent.glob(f"{glob_escape(stem)}.[0-9][0-9][0-9]*"))
             if split_name(f.name)] if number == 1 else [first])


def repair(files: Sequence[Path]) -> list[Repair]:
    """Check each file with its recovery set and repair it in place where it is damaged."""
    tool = _par2()
    out = []
    for path in (f.resolve() for f in files):
        index = recovery_file(path)
        if not index.is_file():
            out.append(Repair(path.name, "no repair data"))
            continue
        check = subprocess.run([tool, "verify", "-q", "-q", "--", str(index)],
                               capture_output=True, check=False, cwd=path.parent)
        if check.returncode == 0:
            out.append(Repair(path.name, "intact"))
            continue
        fixed = subprocess.run([tool, "repair", "-q", "-q", "--", str(index)],
                               capture_output=True, check=False, cwd=path.parent)
        backup = path.with_name(path.name + ".1")  # par2 keeps the damaged file as FILE.1
        if fixed.returncode == 0 and backup.is_file():
            backup.unlink()
        out.append(Repair(path.name, "repaired" if fixed.returncode == 0 else "beyond repair"))
    return out


def _last_line(done: subprocess.CompletedProcess[bytes]) -> str:
    text = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
    return text[-1] if text else f"exit {done.returncode}"
