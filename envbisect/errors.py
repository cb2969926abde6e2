"""envbisect's exception types and the exit codes they map to.

Errors a user can cause are raised where they are detected, as one of these
types, and turned into one clean line plus an exit code only at the CLI edge.
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (see README, "Exit codes")."""

    OK = 0  #: culprit found (run) / candidate passes (gate)
    REGRESSION = 1  #: gate: the candidate fails and the culprit change was found
    USAGE = 2  #: bad command line or bad input (path, requirement file, option)
    GOOD_FAILS = 3  #: the good set already fails the probe
    BAD_PASSES = 4  #: the bad set does not fail the probe: nothing to bisect
    BROKER = 5  #: broker unreachable, refused the credentials, or never answered
    INCONSISTENT = 6  #: no minimal failing set: results disagree (flaky or non-monotone)
    ENVIRONMENT = 7  #: an environment could not be built (unsatisfiable set, missing wheel, disk)
    TIME_LIMIT = 8  #: --max-time was reached before the search finished
    INTERNAL = 9  #: a bug in envbisect (never 1: CI reads 1 as "regression found")
    HANGUP = 129  #: SIGHUP (the terminal or session went away); everything was cleaned up
    INTERRUPTED = 130  #: SIGINT (Ctrl-C); everything was cleaned up
    TERMINATED = 143  #: SIGTERM; everything was cleaned up


class EnvbisectError(Exception):
    """Base class: a problem to report as one line, with an exit code."""

    exit_code: ExitCode = ExitCode.USAGE


class InputError(EnvbisectError):
    """A path, requirement file, lock file or option that cannot be used."""

    exit_code = ExitCode.USAGE


class BrokerError(EnvbisectError):
    """The broker cannot be reached, refuses us, or does not answer."""

    exit_code = ExitCode.BROKER


class BrokerUnreachable(BrokerError):
    """Nothing listens at the broker's address (the connection was refused)."""


class EnvironmentBuildError(EnvbisectError):
    """A trial environment could not be resolved, fetched or installed."""

    exit_code = ExitCode.ENVIRONMENT

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full  #: out of space or quota: every later build fails too

    @classmethod
    def from_os_error(cls, what: str, exc: OSError) -> EnvironmentBuildError:
        """``what`` failed with ``exc`` (a full disk, usually)."""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return cls(f"{what}: {exc.strerror or exc}", disk_full=full)


class TimeLimitError(EnvbisectError):
    """The whole run went past --max-time."""

    exit_code = ExitCode.TIME_LIMIT
