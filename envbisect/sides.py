"""Read ``--bad`` and ``--good`` into pinned packages (their wheels go to the wheel source).

The bad side is the source of truth: a live env is read and repacked as it is
installed; a lock (``uv.lock``, ``pylock.toml``) or a frozen requirements file
is first installed as it stands (no dependency resolution) into a scratch env,
then read the same way. The good side is read the same way when it is a live
env, a lock or a hash-pinned requirements file; any other requirements file is
resolved, for the bad side's interpreter, to exact pins preferring the bad
side's versions (the pins are offered to the resolver as its existing output),
offline from the bad side's wheels first and from the index only when that
cannot satisfy it; versions the bad side does not have are fetched once and
repacked too. Its direct references (editable, URL, VCS and path lines) are
resolved with it (their dependencies too), installed as they are into a
scratch env and read and repacked like a live env's distributions.
A bad-side package that is locally modified (its files differ from its RECORD)
is never the good side's: the good side gets the clean release from the index.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName, canonicalize_name

from envbisect.delta import Package
from envbisect.errors import EnvironmentBuildError, InputError
from envbisect.hashing import FileHashes
from envbisect.installers.base import Installer, InstallerError
from envbisect.locks import InputKind, input_kind, read_lock
from envbisect.model import Venv
from envbisect.requirements import RequirementFile, read_requirement_file
from envbisect.venvs import (
    InstalledEnv,
    Interpreter,
    interpreter_from,
    is_virtualenv,
    query_interpreter,
    read_venv,
)
from envbisect.wheelsource import Wheels, package_of
from envbisect.workspace import Workspace

Say = Callable[[str], None]


@dataclass(frozen=True)
class Side:
    """One side of the comparison: pinned packages for one interpreter."""

    label: str
    packages: Mapping[NormalizedName, Package]
    interpreter: Interpreter
    root_extras: Mapping[NormalizedName, frozenset[str]]


def find_interpreter(bad: Path, python: Path | None) -> Interpreter:
    """The interpreter of the trial envs: the bad env's own, else ``--python``, else
    envbisect's. Known before anything is built, so the workspace is made for it."""
    if is_virtualenv(bad):
        venv_python = Venv(bad).python
        if not venv_python.exists():
            read_venv(bad)  # raises the right one-line error
        return interpreter_from(
            query_interpreter(venv_python, label=f"{bad}: its interpreter {venv_python}")
        )
    executable = python or Path(getattr(sys, "_base_executable", sys.executable))
    label = f"--python {python}" if python else f"envbisect's own Python {executable}"
    return interpreter_from(query_interpreter(executable, label=label))


class SideReader:
    """Reads both sides; every wheel it repacks or fetches goes to ``wheels``."""

    def __init__(
        self,
        installer: Installer,
        wheels: Wheels,
        workspace: Workspace,
        hashes: FileHashes,
        say: Say,
    ) -> None:
        self.installer = installer
        self.wheels = wheels
        self.workspace = workspace
        self.interpreter = wheels.interpreter
        #: digests of a live env's files, kept across runs (envbisect's scratch envs: not)
        self.hashes = hashes
        self.say = say

    def read_bad(self, path: Path) -> Side:
        """The failing side: a live virtualenv, a lock file or a frozen requirements file."""
        if is_virtualenv(path):
            env = self._read_live(path)
            return Side(str(path), self.wheels.add(env.distributions.values()), env.interpreter, {})
        if path.is_dir() or not path.exists():
            read_venv(path)  # raises the right one-line error
        if input_kind(path) is InputKind.REQUIREMENTS:
            loose = [
                line
                for line in read_requirement_file(path).lines
                if line.pinned_version is None
                and not (line.editable or (line.requirement and line.requirement.url))
            ]
            if loose:
                raise InputError(
                    f"{loose[0].origin}: a failing side in requirements form must be pinned "
                    f"like `pip freeze` output, got {loose[0].text!r}"
                )
        return self._materialise(path, "bad")

    def read_good(self, path: Path, bad: Side) -> Side:
        """The working side: a live virtualenv, a lock, or a requirements file, pinned or not.

        A lock and a hash-pinned requirements file (complete by pip's rules) are installed
        as they stand, like the bad side; any other requirements file is resolved.
        """
        if is_virtualenv(path):
            env = self._read_live(path)
            if env.interpreter.minor != bad.interpreter.minor:
                raise InputError(
                    f"{path}: Python {env.interpreter.version}, but the bad side runs "
                    f"{bad.interpreter.version}; compare envs of one Python version"
                )
            packages = self.wheels.add(env.distributions.values())
            return Side(str(path), packages, bad.interpreter, {})
        if input_kind(path) is not InputKind.REQUIREMENTS:
            return self._materialise(path, "good")
        requirements = read_requirement_file(path)
        if requirements.pinned and all(line.hashes for line in requirements.lines):
            return self._materialise(path, "good")
        pins, direct = self._resolve(requirements, bad)
        same = {
            name: bad.packages[name]
            for name, version in pins.items()
            if name in bad.packages and bad.packages[name].version == version
        }
        # A patched copy is the bad side's change, never the good side's package.
        reused = {name: package for name, package in same.items() if not package.local_changes}
        missing = [f"{name}=={version}" for name, version in pins.items() if name not in reused]
        fetched = self._fetch_clean(missing, [p for p in same.values() if p.local_changes], bad)
        fetched.update(self._install_direct(path, direct) if direct else {})
        extras: dict[NormalizedName, frozenset[str]] = {}
        for line in requirements.lines:
            if line.requirement and line.requirement.extras and line.name:
                extras[line.name] = frozenset(canonicalize_name(x) for x in line.requirement.extras)
        return Side(str(path), {**reused, **fetched}, bad.interpreter, extras)

    def _fetch_clean(
        self, pins: list[str], modified: list[Package], bad: Side
    ) -> dict[NormalizedName, Package]:
        """Fetch ``pins``, the clean releases of the bad side's ``modified`` packages among them."""
        if not pins:
            return {}
        try:
            return self.wheels.fetch(pins)
        except EnvironmentBuildError as exc:
            if not (modified and self.installer.offline):
                raise
            names = ", ".join(str(package) for package in modified)
            raise EnvironmentBuildError(
                f"{names}: locally modified in {bad.label}, so the good set needs the clean "
                "release, and --offline keeps the index out (a --find-links dir may hold it)",
                disk_full=exc.disk_full,
            ) from exc

    def _read_live(self, path: Path) -> InstalledEnv:
        """A live env the user named: its files hashed (cached across runs), what it holds said."""
        read, reused = self.hashes.read, self.hashes.reused
        started = time.monotonic()
        env = read_venv(path, self.hashes)
        files = self.hashes.read - read + self.hashes.reused - reused
        self.say(
            f"read {len(env.distributions)} distributions ({files} files, "
            f"{self.hashes.reused - reused} unchanged since the last run) from {path} "
            f"in {time.monotonic() - started:.1f} s"
        )
        for package in map(package_of, env.distributions.values()):
            if package.local_changes:
                self.say(f"{package}, {package.local_summary()}")
        return env

    def _materialise(self, path: Path, role: str) -> Side:
        """Install a lock or a frozen requirements file as it stands into a scratch env, read it."""
        kind = input_kind(path)
        interpreter = self.interpreter
        scratch = self.workspace.scratch(f"{role}-env")
        extras: dict[NormalizedName, frozenset[str]] = {}
        if kind is InputKind.REQUIREMENTS:
            requirements = path
        else:
            lock = read_lock(path, kind, interpreter.markers)
            extras = dict(lock.extras)
            requirements = self.workspace.scratch("locks") / f"{role}.txt"
            requirements.write_text(lock.requirements())
            note = f"; left out {', '.join(lock.left_out)}" if lock.left_out else ""
            self.say(
                f"{path}: {len(lock.packages)} packages for Python "
                f"{interpreter.markers['python_full_version']}{note}"
            )
        self.installer.create(scratch, interpreter.executable)
        try:
            self.installer.install_requirements(scratch, requirements)
        except EnvironmentBuildError as exc:
            raise EnvironmentBuildError(f"{path}: {exc}") from exc
        env = read_venv(scratch)
        self.say(f"installed {len(env.distributions)} pinned distributions from {path}")
        return Side(str(path), self.wheels.add(env.distributions.values()), interpreter, extras)

    def _resolve(
        self, requirements: RequirementFile, bad: Side
    ) -> tuple[dict[NormalizedName, str], list[str]]:
        """The resolved good set: ``name==version`` pins, and the direct references kept."""
        output = self.workspace.scratch("resolve") / "good.txt"
        # The resolver keeps pins already in its output file where it can: the bad side's.
        output.write_text(
            "".join(f"{p.display_name}=={p.version}\n" for p in bad.packages.values())
        )
        python = bad.interpreter.executable
        try:
            self.installer.resolve(
                requirements.path, output, python, self.wheels.wheelhouse, offline=True
            )
        except InstallerError as offline:
            if self.installer.offline:
                raise EnvironmentBuildError(
                    f"{_origin(requirements, offline.reason)}: the good set needs what the bad "
                    f"env does not have, and --offline keeps the index out: {offline.reason}",
                    disk_full=offline.disk_full,
                ) from offline
            self.say("the bad side's versions cannot satisfy the good set; asking the index")
            try:
                self.installer.resolve(
                    requirements.path, output, python, self.wheels.wheelhouse, offline=False
                )
            except InstallerError as exc:
                raise EnvironmentBuildError(
                    f"{_origin(requirements, exc.reason)}: the good set cannot be resolved: "
                    f"{exc.reason}",
                    disk_full=exc.disk_full,
                ) from exc
        resolved = read_requirement_file(output)
        pins = {
            line.name: line.pinned_version
            for line in resolved.lines
            if line.name is not None and line.pinned_version is not None
        }
        direct = [ref for line in resolved.lines if (ref := line.direct_reference) is not None]
        more = f" and {len(direct)} direct reference(s)" if direct else ""
        self.say(f"resolved {requirements.path} to {len(pins)} pins{more}")
        return pins, direct

    def _install_direct(self, path: Path, references: list[str]) -> dict[NormalizedName, Package]:
        """Install direct references as they are (no deps) into a scratch env, repack them.

        An editable one stays editable: its repacked wheel points at its source.
        """
        listing = self.workspace.scratch("direct") / "good.txt"
        listing.write_text("".join(f"{reference}\n" for reference in references))
        scratch = self.workspace.scratch("good-direct-env")
        self.installer.create(scratch, self.interpreter.executable)
        try:
            self.installer.install_requirements(scratch, listing)
        except EnvironmentBuildError as exc:
            raise EnvironmentBuildError(f"{path}: {exc}", disk_full=exc.disk_full) from exc
        dists = read_venv(scratch).distributions
        self.say(f"installed {', '.join(d.pin for d in dists.values())} from {path} as written")
        return self.wheels.add(dists.values())


def _origin(requirements: RequirementFile, reason: str) -> str:
    """``file (line N)`` of the requirements the resolver's reason names, else the file."""
    named = [
        line.origin
        for line in requirements.lines
        if line.name and re.search(rf"(?<![\w.-]){re.escape(line.name)}(?![\w-])", reason.lower())
    ]
    if not named:
        return str(requirements.path)
    file = named[0].rsplit(" (line ", 1)[0]
    if all(origin.startswith(f"{file} (line ") for origin in named):
        numbers = [origin.rsplit(" (line ", 1)[1].rstrip(")") for origin in named]
        label = "line" if len(numbers) == 1 else "lines"
        return f"{file} ({label} {', '.join(numbers)})"
    return ", ".join(named)
