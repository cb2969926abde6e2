"""Build and remove throwaway environments: uv and pip behind one interface.

A trial env is always built the same way (:meth:`envbisect.workspace.Workspace.build`): create an
empty virtualenv from the target interpreter, then install an exact list of
wheel files with no dependency resolution and no network. The installer
backends also resolve an unpinned good set, fetch the wheels the bad env
cannot provide and list a package's releases (``--narrow``), each for the
target interpreter and with the user's own pip or uv configuration (indexes,
find-links, credentials); only building envs from local wheel files ignores
it. Every command runs through :mod:`envbisect.processes`, in an environment
without the variables that would break isolation
(:data:`envbisect.probes.base.DROPPED_VARIABLES`).
"""

from __future__ import annotations

import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from envbisect import processes
from envbisect.errors import EnvironmentBuildError, InputError, TimeLimitError
from envbisect.requirements import read_requirement_file

# Seconds an installer command may take (fetching from a slow index included).
INSTALL_TIMEOUT = 1800.0


class Installer(ABC):
    """Creates envs, installs wheels, resolves and fetches: one backend per tool."""

    name: str = ""

    def __init__(
        self,
        cache_dir: Path,
        logs: Path,
        find_links: Sequence[Path] = (),
        *,
        offline: bool = False,
    ) -> None:
        self.cache_dir = cache_dir
        self.logs = logs
        self.find_links = tuple(find_links)  #: the user's local wheel dirs, beside the index
        self.offline = offline  #: never reach a package index
        self.deadline: float | None = None  #: time.monotonic() of --max-time

    def _links(self, *extra: Path) -> list[str]:
        """``--find-links`` options for the user's dirs and ``extra``."""
        return [arg for path in (*extra, *self.find_links) for arg in ("--find-links", str(path))]

    @abstractmethod
    def create(self, path: Path, python: Path) -> None:
        """An empty virtualenv at ``path`` from the base interpreter ``python``."""

    @abstractmethod
    def install(self, env: Path, wheels: Sequence[Path]) -> None:
        """Install exactly these wheel files: no dependencies, no index."""

    @abstractmethod
    def resolve(
        self, requirements: Path, output: Path, python: Path, find_links: Path, offline: bool
    ) -> None:
        """Pin ``requirements`` into ``output``; pins already in ``output`` are preferred."""

    @abstractmethod
    def fetch(self, pins: Sequence[str], target: Path, python: Path, find_links: Path) -> None:
        """Install ``pins`` (no deps) into the plain directory ``target`` from the index."""

    @abstractmethod
    def install_requirements(self, env: Path, requirements: Path) -> None:
        """Install a requirements file as it stands (no deps): materialise a frozen set."""

    @abstractmethod
    def releases(
        self, name: str, python: Path, within: tuple[str, str], scratch: Path
    ) -> list[str]:
        """Versions of ``name`` the configured indexes (and find-links) offer for ``python``.

        At least every one between the two versions of ``within`` (both included when
        offered); yanked releases are left out. Raises :class:`InstallerError` when
        none can be listed (``scratch``: a directory for query files).
        """

    #: Whether :meth:`sync` can turn an existing env into another set (else: build afresh).
    can_sync: bool = False

    def sync(self, env: Path, wheels: Sequence[Path], listing: Path) -> None:
        """Make an existing env hold exactly these wheels (``listing``: a scratch file)."""
        raise NotImplementedError(f"the {self.name} installer cannot sync an env")

    def _run(self, what: str, argv: Sequence[str], env: dict[str, str] | None = None) -> str:
        timeout = INSTALL_TIMEOUT
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeLimitError(f"--max-time reached before {what}")
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log", dir=self.logs)
            os.close(fd)
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(f"{what}: a log in {self.logs}", exc) from exc
        try:
            done = processes.run(argv, env=env, log=Path(name), timeout=timeout)
        finally:
            Path(name).unlink(missing_ok=True)  # what matters is in the error we raise
        if done.returncode is None:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise TimeLimitError(f"--max-time reached while {what}")
            raise InstallerError(what, f"did not finish within {timeout:.0f} s", done.output)
        if done.returncode != 0:
            raise InstallerError(what, summary(done.output), done.output)
        return done.output


class InstallerError(EnvironmentBuildError):
    """An installer command failed; ``reason`` is what its output says went wrong."""

    def __init__(self, what: str, reason: str, output: str) -> None:
        super().__init__(f"{what} failed: {reason}", disk_full=disk_full(output))
        self.reason = reason
        self.output = output


def disk_full(text: str) -> bool:
    return "No space left on device" in text or "Disk quota exceeded" in text


def summary(output: str) -> str:
    """What went wrong, from an installer's output, on one line.

    uv says ``error: …``, then why on ``cause:`` lines (continued, indented);
    older uv draws a cross and an arrow instead; pip says ``ERROR: …``.
    """
    if disk_full(output):
        return "no space left on device"
    lines = [line.strip() for line in output.splitlines()]
    start = next(
        (i for i, line in enumerate(lines) if line.startswith(("error:", "ERROR:", "\u00d7"))),
        None,
    )
    if start is None:
        text = next((line for line in reversed(lines) if line), "no output")
    else:
        said = []
        for line in lines[start:]:
            if not line or line.startswith("hint:"):
                break
            said.append(line)
        text = " ".join(said)
        # The cause is the useful part; the headline ("No solution found…") is not.
        for marker in ("cause:", "\u2570\u2500\u25b6"):
            if marker in text:
                text = text.split(marker, 1)[1]
    for marker in ("error:", "ERROR:", "cause:", "\u00d7", "\u2570\u2500\u25b6"):
        text = text.replace(marker, " ")
    return " ".join(text.split())[:400]


def pinned_version(answer: Path) -> str | None:
    """The version a resolver's output file pins its one package to, if it does."""
    try:
        lines = read_requirement_file(answer).lines
    except InputError:  # no file, or nothing in it
        return None
    return next((line.pinned_version for line in lines if line.name), None)
