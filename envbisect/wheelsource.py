"""Where trial wheels come from: one interface over repacked, cached and index wheels.

As pip-tools' repositories stand between its resolver and PyPI, a
:class:`WheelSource` stands between the run and its wheels: the wheel of an
exact package (:meth:`~WheelSource.wheel_for`), releases fetched from the
user's indexes (:meth:`~WheelSource.fetch`), and the releases there are
(:meth:`~WheelSource.versions`). :class:`Wheels` is the local one: a live
env's distributions are repacked as they are on disk (content-addressed in the
:class:`~envbisect.wheels.WheelCache`), and index releases are fetched with
the run's installer, for the target interpreter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.utils import NormalizedName

from envbisect.delta import Package
from envbisect.errors import EnvironmentBuildError
from envbisect.installers.base import Installer
from envbisect.venvs import InstalledDistribution, Interpreter, read_distributions
from envbisect.wheels import NotRepackable, Wheel, WheelCache
from envbisect.workspace import Workspace

Say = Callable[[str], None]


class WheelSource(ABC):
    """The wheels a run's trial envs are built from."""

    name: str = ""  #: what lists and fetches releases (an installer: "uv", "pip")

    @abstractmethod
    def wheel_for(self, package: Package) -> Path:
        """The wheel of exactly this package: its version and, for a repacked one, its files."""

    @abstractmethod
    def fetch(self, pins: Sequence[str]) -> dict[NormalizedName, Package]:
        """Fetch these ``name==version`` releases from the index (no dependencies); each is
        then available to :meth:`wheel_for`."""

    @abstractmethod
    def versions(self, name: str, ends: tuple[str, str]) -> list[str]:
        """The releases of ``name`` available for the target interpreter, ``ends`` included."""


class Wheels(WheelSource):
    """Repacked wheels of installed distributions, and index releases fetched and repacked."""

    def __init__(
        self,
        installer: Installer,
        cache: WheelCache,
        workspace: Workspace,
        interpreter: Interpreter,
        say: Say,
    ) -> None:
        self.installer = installer
        self.name = installer.name
        self.cache = cache
        self.workspace = workspace
        self.interpreter = interpreter
        self.say = say
        #: every wheel repacked so far: what resolving the good set may pick versions from
        self.wheelhouse = workspace.scratch("wheelhouse")
        #: the same without locally modified ones: where a clean release may come from
        self.clean_wheelhouse = workspace.scratch("wheelhouse-clean")
        self._paths: dict[Package, Path] = {}

    def wheel_for(self, package: Package) -> Path:
        return self._paths[package]

    def versions(self, name: str, ends: tuple[str, str]) -> list[str]:
        scratch = self.workspace.scratch(f"releases-{name}")
        return self.installer.releases(name, self.interpreter.executable, ends, scratch)

    def fetch(self, pins: Sequence[str]) -> dict[NormalizedName, Package]:
        self.say(f"fetching {', '.join(pins)}")
        staging = self.workspace.scratch(f"fetch-{len(pins)}-{abs(hash(tuple(pins)))}")
        python = self.interpreter.executable
        self.installer.fetch(pins, staging, python, self.clean_wheelhouse)
        return self.add(read_distributions((staging,)).values())

    def add(self, dists: Iterable[InstalledDistribution]) -> dict[NormalizedName, Package]:
        """Repack installed distributions as they are on disk (those without a RECORD are
        fetched from the index instead); their packages, each with its wheel."""
        repacked = self._repack(dists)
        packages = {}
        for name, (dist, wheel) in repacked.items():
            packages[name] = package = package_of(dist)
            self._paths[package] = wheel.path
        return packages

    def _repack(
        self, dists: Iterable[InstalledDistribution]
    ) -> dict[NormalizedName, tuple[InstalledDistribution, Wheel]]:
        dists = list(dists)
        repacked: dict[NormalizedName, tuple[InstalledDistribution, Wheel]] = {}
        unpackable: list[InstalledDistribution] = []

        def one(dist: InstalledDistribution) -> None:
            try:
                repacked[dist.name] = (dist, self.cache.repack(dist))
            except NotRepackable:
                unpackable.append(dist)

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="envbisect-repack") as pool:
            list(pool.map(one, dists))
        for dist, wheel in repacked.values():
            if dist.left_out:
                self.say(
                    f"warning: {dist.pin}: left out of its repacked wheel: {_some(dist.left_out)}"
                )
            houses = (
                [self.wheelhouse]
                if dist.local_changes
                else [self.wheelhouse, self.clean_wheelhouse]
            )
            for house in houses:
                link = house / wheel.path.name
                if not link.exists():
                    link.symlink_to(wheel.path)
        if unpackable:
            pins = [dist.pin for dist in unpackable]
            if self.installer.offline:
                raise EnvironmentBuildError(
                    f"{', '.join(pins)}: installed without a RECORD, so not repackable, and "
                    "--offline keeps the index out"
                )
            self.say(f"{len(pins)} distribution(s) cannot be repacked; fetching: {', '.join(pins)}")
            staging = self.workspace.scratch("fetch-unrepackable")
            self.installer.fetch(pins, staging, self.interpreter.executable, self.clean_wheelhouse)
            for name, dist in read_distributions((staging,)).items():
                repacked[name] = (dist, self.cache.repack(dist))
        return repacked


def package_of(dist: InstalledDistribution) -> Package:
    """The delta's view of an installed distribution."""
    return Package(
        name=dist.name,
        display_name=dist.display_name,
        version=dist.version,
        requires=dist.requires,
        digest=dist.content_digest,
        editable=dist.editable,
        local_changes=dist.local_changes,
    )


def _some(items: tuple[str, ...], most: int = 3) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")
