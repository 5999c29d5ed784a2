"""Exit codes and the one exception hierarchy; every intentional failure is a BundlerError."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes (README "Exit codes"); decided here and mapped only in cli.py."""

    OK = 0
    ERROR = 1  # any other failure
    USAGE = 2  # bad command line (click's own UsageError uses 2 too)
    INTEGRITY = 3  # signature, digest, size or format
    NOT_FOUND = 4  # model, file, key or store not found
    NETWORK = 5  # network or registry


class BundlerError(Exception):
    """A failure the user can act on: `message` says what happened to what, `hint` what to do."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(BundlerError):
    """The command line asks for something impossible or contradictory."""

    exit_code = ExitCode.USAGE


class IntegrityError(BundlerError):
    """A signature, digest, size or format check failed: the data is not what it claims."""

    exit_code = ExitCode.INTEGRITY


class NotFoundError(BundlerError):
    """A model, file, key or store that the command needs is not there."""

    exit_code = ExitCode.NOT_FOUND


class NetworkError(BundlerError):
    """A network or registry failure."""

    exit_code = ExitCode.NETWORK
