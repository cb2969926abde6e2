"""Build and remove throwaway environments: uv and pip behind one interface.

A trial env is always built the same way (:meth:`Workspace.build`): create an
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

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from envbisect import processes
from envbisect.errors import EnvironmentBuildError, InputError, TimeLimitError
from envbisect.inputs import read_requirement_file
from envbisect.isolation import isolated_environ
from envbisect.model import TrialEnv

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
            raise InstallerError(what, _summary(done.output), done.output)
        return done.output


class InstallerError(EnvironmentBuildError):
    """An installer command failed; ``reason`` is what its output says went wrong."""

    def __init__(self, what: str, reason: str, output: str) -> None:
        super().__init__(f"{what} failed: {reason}", disk_full=_disk_full(output))
        self.reason = reason
        self.output = output


def _disk_full(text: str) -> bool:
    return "No space left on device" in text or "Disk quota exceeded" in text


def _summary(output: str) -> str:
    """What went wrong, from an installer's output, on one line.

    uv says ``error: …``, then why on ``cause:`` lines (continued, indented);
    older uv draws a cross and an arrow instead; pip says ``ERROR: …``.
    """
    if _disk_full(output):
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


class UvInstaller(Installer):
    """uv: fast creation, hardlinks from its cache, a real resolver, ``uv pip sync``."""

    name = "uv"
    can_sync = True

    def __init__(
        self,
        cache_dir: Path,
        logs: Path,
        find_links: Sequence[Path] = (),
        *,
        offline: bool = False,
    ) -> None:
        super().__init__(cache_dir, logs, find_links, offline=offline)
        from uv import find_uv_bin

        self.uv = find_uv_bin()

    def _env(self) -> dict[str, str]:
        env = isolated_environ()
        env.update(
            UV_CACHE_DIR=str(self.cache_dir / "uv"),
            UV_PYTHON_DOWNLOADS="never",
            UV_NO_PROGRESS="1",
        )
        if self.offline:
            env["UV_OFFLINE"] = "1"
        return env

    def create(self, path: Path, python: Path) -> None:
        self._run(
            "creating a virtualenv",
            [self.uv, "venv", "--quiet", "--no-config", "--python", str(python), str(path)],
            self._env(),
        )

    def install(self, env: Path, wheels: Sequence[Path]) -> None:
        if not wheels:
            return
        self._run(
            "installing wheels",
            [
                self.uv,
                "pip",
                "install",
                "--quiet",
                "--no-config",
                "--no-deps",
                "--offline",
                "--link-mode",
                "hardlink",
                "--python",
                str(env / "bin" / "python"),
                *map(str, wheels),
            ],
            self._env(),
        )

    def resolve(
        self, requirements: Path, output: Path, python: Path, find_links: Path, offline: bool
    ) -> None:
        argv = [
            self.uv,
            "pip",
            "compile",
            "--quiet",
            "--no-header",
            "--no-annotate",
            "--python",
            str(python),
            *self._links(find_links),
            "--output-file",
            str(output),
            str(requirements),
        ]
        if offline:
            argv[4:4] = ["--no-index", "--offline"]
        self._run(f"resolving {requirements}", argv, self._env())

    def releases(
        self, name: str, python: Path, within: tuple[str, str], scratch: Path
    ) -> list[str]:
        # uv lists no versions, but resolves one with the user's indexes, index strategy
        # and credentials: ask for the highest release in range, then again without it,
        # until none is left (~50 ms a query once uv's cache holds the index page).
        low, high = sorted(within, key=Version)
        pre = Version(low).is_prerelease or Version(high).is_prerelease
        query, answer = scratch / "release-query.in", scratch / "release-answer.txt"
        found: list[str] = []
        while True:
            spec = f"{name}>={low},<={high}{''.join(f',!={v}' for v in found)}\n"
            try:
                scratch.mkdir(parents=True, exist_ok=True)
                query.write_text(spec)
                answer.unlink(missing_ok=True)
            except OSError as exc:
                raise EnvironmentBuildError.from_os_error(f"writing {query}", exc) from exc
            argv = [
                self.uv,
                "pip",
                "compile",
                "--quiet",
                "--no-header",
                "--no-annotate",
                "--no-deps",
                "--resolution",
                "highest",
                "--prerelease",
                "allow" if pre else "disallow",
                "--python",
                str(python),
                *self._links(),
                *(["--no-index"] if self.offline else []),
                "--output-file",
                str(answer),
                str(query),
            ]
            try:
                output = self._run(f"listing the releases of {name}", argv, self._env())
            except InstallerError as exc:
                if found and "No solution found" in exc.output:
                    return found  # every release in range is listed
                raise
            version = _pinned(answer)
            if version is None or version in found:
                raise InstallerError(
                    f"listing the releases of {name}", "uv named no new version", output
                )
            found.append(version)

    def fetch(self, pins: Sequence[str], target: Path, python: Path, find_links: Path) -> None:
        self._run(
            f"fetching {', '.join(pins)}",
            [
                self.uv,
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--python",
                str(python),
                *self._links(find_links),
                "--target",
                str(target),
                *pins,
            ],
            self._env(),
        )

    def sync(self, env: Path, wheels: Sequence[Path], listing: Path) -> None:
        # `uv pip sync` uninstalls what is not listed (with the bytecode and scripts its
        # RECORD names) and installs what is missing: the env ends as if built afresh.
        listing.write_text("".join(f"{wheel.resolve().as_uri()}\n" for wheel in wheels))
        self._run(
            "syncing a trial env",
            [
                self.uv,
                "pip",
                "sync",
                "--quiet",
                "--no-config",
                "--offline",
                "--allow-empty-requirements",
                "--link-mode",
                "hardlink",
                "--python",
                str(env / "bin" / "python"),
                str(listing),
            ],
            self._env(),
        )

    def install_requirements(self, env: Path, requirements: Path) -> None:
        self._run(
            f"installing {requirements}",
            [
                self.uv,
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--python",
                str(env / "bin" / "python"),
                *self._links(),
                "-r",
                str(requirements),
            ],
            self._env(),
        )


class PipInstaller(Installer):
    """virtualenv + pip (run from envbisect's env with ``--python``), pip-tools to resolve.

    pip-tools resolves for the interpreter it runs on, and cannot be told another
    (pip-tools #1124): for a target other than envbisect's own Python, pip-compile runs
    in a tool env of the target Python, made once under the cache dir and reused.
    """

    name = "pip"

    def _pip(self, python: Path, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "--disable-pip-version-check",
            *args,
        ]

    def _env(self) -> dict[str, str]:
        env = isolated_environ()
        env["PIP_CACHE_DIR"] = str(self.cache_dir / "pip")
        if self.offline:
            env["PIP_NO_INDEX"] = "1"
        return env

    def create(self, path: Path, python: Path) -> None:
        _virtualenv(path, python, seed=False)

    def install(self, env: Path, wheels: Sequence[Path]) -> None:
        if wheels:
            self._run(
                "installing wheels",
                self._pip(
                    env / "bin" / "python",
                    "install",
                    "--quiet",
                    "--no-deps",
                    "--no-index",
                    *map(str, wheels),
                ),
                self._env(),
            )

    def resolve(
        self, requirements: Path, output: Path, python: Path, find_links: Path, offline: bool
    ) -> None:
        argv = [
            str(self._compiler(python)),
            "-m",
            "piptools",
            "compile",
            "--quiet",
            "--no-header",
            "--no-annotate",
            "--strip-extras",
            *self._links(find_links),
            "--output-file",
            str(output),
            str(requirements),
        ]
        if offline:
            argv.insert(4, "--no-index")
        self._run(f"resolving {requirements}", argv, self._env())

    def _compiler(self, python: Path) -> Path:
        """The Python that runs pip-compile for ``python``: envbisect's own for its own
        interpreter, else the tool env of ``python`` (made on first use)."""
        target = python.resolve()
        if target == Path(getattr(sys, "_base_executable", sys.executable)).resolve():
            return Path(sys.executable)
        digest = hashlib.sha256(str(target).encode()).hexdigest()[:16]
        tool = self.cache_dir / "tools" / f"pip-tools-{digest}"
        ready = tool / TOOL_STAMP
        if ready.is_file():
            return tool / "bin" / "python"
        if self.offline:
            raise EnvironmentBuildError(
                f"resolving the good set for {python} needs pip-tools installed for that "
                f"Python, and --offline keeps the index out: run once without --offline "
                f"(it is made once, in {tool}), or use --installer uv"
            )
        try:
            tool.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=tool.parent))
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(f"creating {tool}", exc) from exc
        try:
            _virtualenv(staging / "env", python, seed=True)
            self._run(
                f"installing pip-tools for {python}",
                [
                    str(staging / "env" / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    PIP_TOOLS,
                ],
                self._env(),
            )
            (staging / "env" / TOOL_STAMP).write_text(f"{PIP_TOOLS}\n")
            if tool.exists() and not ready.is_file():
                remove_tree(tool)  # a leftover without its stamp
            try:
                (staging / "env").rename(tool)  # whole or not at all
            except OSError:
                if not ready.is_file():  # else another run made it meanwhile
                    raise
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(f"creating {tool}", exc) from exc
        finally:
            remove_tree(staging)
        return tool / "bin" / "python"

    def releases(
        self, name: str, python: Path, within: tuple[str, str], scratch: Path
    ) -> list[str]:
        output = self._run(
            f"listing the releases of {name}",
            self._pip(python, "index", "versions", name, "--json", "--pre", *self._links()),
            self._env(),
        )
        # Warnings come first, one per line; the answer is one JSON object.
        for line in reversed(output.splitlines()):
            if line.startswith("{"):
                try:
                    return [str(v) for v in json.loads(line)["versions"]]
                except (ValueError, KeyError, TypeError):
                    break
        raise InstallerError(f"listing the releases of {name}", "pip gave no answer", output)

    def fetch(self, pins: Sequence[str], target: Path, python: Path, find_links: Path) -> None:
        self._run(
            f"fetching {', '.join(pins)}",
            self._pip(
                python,
                "install",
                "--quiet",
                "--no-deps",
                *self._links(find_links),
                "--target",
                str(target),
                *pins,
            ),
            self._env(),
        )

    def install_requirements(self, env: Path, requirements: Path) -> None:
        self._run(
            f"installing {requirements}",
            self._pip(
                env / "bin" / "python",
                "install",
                "--quiet",
                "--no-deps",
                *self._links(),
                "-r",
                str(requirements),
            ),
            self._env(),
        )


#: What the tool env that resolves for another Python holds, and the file that says it is whole.
PIP_TOOLS = "pip-tools>=7.4"
TOOL_STAMP = ".envbisect-tool"


def _virtualenv(path: Path, python: Path, *, seed: bool) -> None:
    """A virtualenv from ``python``: empty, or (``seed``) with pip, for a tool env."""
    from virtualenv import cli_run

    # virtualenv reads settings from the environment and from its own config file:
    # neither may give a trial env the system's packages or a seeded pip.
    env = isolated_environ() | {"VIRTUALENV_CONFIG_FILE": os.devnull}
    try:
        cli_run(
            [
                str(path),
                "--python",
                str(python),
                *([] if seed else ["--no-seed"]),
                "--no-periodic-update",
                "--quiet",
            ],
            setup_logging=False,
            env=env,
        )
    except (RuntimeError, OSError, SystemExit) as exc:
        raise EnvironmentBuildError(f"creating a virtualenv at {path} failed: {exc}") from exc


def _pinned(answer: Path) -> str | None:
    """The version a resolver's output file pins its one package to, if it does."""
    try:
        lines = read_requirement_file(answer).lines
    except InputError:  # no file, or nothing in it
        return None
    return next((line.pinned_version for line in lines if line.name), None)


#: The installer backends by ``--installer`` name (the benchmark registers its baselines).
INSTALLERS: dict[str, type[Installer]] = {"uv": UvInstaller, "pip": PipInstaller}


def installer(
    kind: str,
    cache_dir: Path,
    logs: Path,
    find_links: Sequence[Path] = (),
    *,
    offline: bool = False,
) -> Installer:
    """The installer backend by name (see :data:`INSTALLERS`)."""
    if kind not in INSTALLERS:
        raise InputError(f"--installer must be one of {', '.join(INSTALLERS)}, not {kind!r}")
    return INSTALLERS[kind](cache_dir, logs, find_links, offline=offline)


@dataclass(frozen=True)
class BuildTimings:
    create: float
    install: float

    @property
    def total(self) -> float:
        return self.create + self.install


class Workspace:
    """A private temp directory holding every env and scratch dir of one run.

    A trial env is built afresh, or — when the installer can sync (uv) — made from
    an idle env of an earlier trial that differs least from it: a search's
    consecutive sets differ by a few packages, and syncing those is far cheaper
    than linking every file of every package again. Removing envs and scratch
    dirs happens on a background thread, off the search's critical path;
    :meth:`close` waits for it and removes the whole directory unless the user
    asked to keep the envs (then every trial has an env of its own).
    """

    #: Idle envs kept for reuse; more are removed.
    MAX_IDLE = 4

    def __init__(
        self,
        installer: Installer,
        run_token: str,
        *,
        python: Path | None = None,
        keep: bool = False,
    ) -> None:
        self.installer = installer
        self.python = python or Path(sys.executable)  #: the trial envs' interpreter
        self.keep = keep
        # mkdtemp makes it 0700: the envs and sockets are private to the user.
        self.root = Path(tempfile.mkdtemp(prefix=f"envbisect-{run_token}-"))
        self._remover = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envbisect-rm")
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()
        self._count = 0
        self._contents: dict[Path, frozenset[Path]] = {}  #: env → the wheels it holds
        self._idle: list[Path] = []

    def _slot(self, label: str) -> Path:
        with self._lock:
            self._count += 1
            return self.root / f"{self._count:03d}-{label}"

    def build(self, wheels: Sequence[Path], label: str) -> tuple[TrialEnv, BuildTimings]:
        """An env with exactly these wheels, plus a fresh scratch dir for its probe."""
        slot = self._slot(label)
        scratch = slot / "s"
        wanted = frozenset(wheels)
        started = time.monotonic()
        try:
            scratch.mkdir(parents=True)
            idle = self._take_idle(wanted)
            if idle is not None:
                try:
                    self.installer.sync(idle, wheels, scratch / "wheels.txt")
                except EnvironmentBuildError as exc:
                    self._remove(idle.parent)  # and build afresh: that says what is wrong
                    if exc.disk_full:
                        raise
                else:
                    self._hold(idle, wanted)
                    return TrialEnv(path=idle, scratch=scratch), BuildTimings(
                        0.0, time.monotonic() - started
                    )
            path = slot / "env"
            self.installer.create(path, self.python)
            created = time.monotonic()
            self.installer.install(path, wheels)
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(
                f"building a trial env in {slot}", exc
            ) from exc
        self._hold(path, wanted)
        return TrialEnv(path=path, scratch=scratch), BuildTimings(
            created - started, time.monotonic() - created
        )

    def _hold(self, env: Path, wheels: frozenset[Path]) -> None:
        with self._lock:
            self._contents[env] = wheels

    def _take_idle(self, wanted: frozenset[Path]) -> Path | None:
        """The idle env closest to ``wanted``, if syncing it beats building afresh."""
        if self.keep or not self.installer.can_sync:
            return None
        with self._lock:
            if not self._idle:
                return None
            best = min(self._idle, key=lambda env: len(self._contents[env] ^ wanted))
            if len(self._contents[best] ^ wanted) >= max(len(wanted), 1):
                return None
            self._idle.remove(best)
            return best

    def discard(self, trial: TrialEnv) -> None:
        """Done with a trial: its scratch dir goes; its env is kept idle for reuse, or goes."""
        if self.keep:
            return
        self._remove(trial.scratch)
        with self._lock:
            if self.installer.can_sync and len(self._idle) < self.MAX_IDLE:
                self._idle.append(trial.path)
                return
        self._remove(trial.path.parent)

    def _remove(self, path: Path) -> None:
        with self._lock:
            self._contents = {
                env: held for env, held in self._contents.items() if not env.is_relative_to(path)
            }
            self._pending.append(self._remover.submit(remove_tree, path))

    def scratch(self, name: str) -> Path:
        path = self.root / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(f"creating {path}", exc) from exc
        return path

    def close(self) -> str | None:
        """Wait for pending removals; remove the workspace unless keeping envs.

        A removal that fails is returned as one line (what is left, and why), not
        raised: the run's verdict must not be lost to its clean-up.
        """
        self._remover.shutdown(wait=True)
        if self.keep:
            return None
        try:
            remove_tree(self.root)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            return f"could not remove {self.root}: {exc.strerror or exc}{where}"
        return None


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything in it, and never change anything outside it.

    :func:`shutil.rmtree` never follows a symlink. When it cannot remove an entry
    (a package left a read-only or unreadable directory behind), the *directory*
    in the way is made accessible to us, and only when ``lstat`` says it is a real
    directory inside ``path``: a link's target is never chmod-ed.
    """
    if not os.path.lexists(path):
        return
    _rmtree(str(path), os.path.abspath(path))


def _rmtree(path: str, root: str) -> None:
    def retry(func: Callable[..., object], name: str, problem: object) -> None:
        # onexc (3.12+) passes the exception, onerror (3.11) an exc_info tuple.
        error = problem[1] if isinstance(problem, tuple) else problem
        assert isinstance(error, OSError)
        if isinstance(error, FileNotFoundError):
            return  # gone already (an unreadable directory removed on its own, below)
        if func in (os.open, os.scandir, os.listdir):
            # A directory we may not list: open it up and remove it as a tree of its own.
            if not _open_up(name, root):
                raise error
            _rmtree(name, root)
        else:
            # Removing an entry needs write access to the directory holding it.
            _open_up(os.path.dirname(name), root)
            func(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _open_up(directory: str, root: str) -> bool:
    """Give us rwx on ``directory`` if it is a real dir inside ``root``; whether that changed."""
    if os.path.commonpath([os.path.abspath(directory), root]) != root:
        return False
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode) or mode & stat.S_IRWXU == stat.S_IRWXU:
        return False
    os.chmod(directory, mode | stat.S_IRWXU)
    return True
