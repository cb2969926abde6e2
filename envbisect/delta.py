"""Pure: the changes between a good and a bad package set, and their dependency graph.

A *change* is a package added in bad, removed from good, at another version, or
at the same version with other files (a locally modified install: files patched
in place, added or removed after installation, named by :class:`LocalChange`). A trial
applies a subset of the changes to the good set; :meth:`Delta.closure` grows
the subset so that the trial never lacks a dependency the bad set had:

- applying a change brings the changes of everything its bad-side version
  requires (structural: the bad package is tried with the dependencies it was
  installed with);
- a package whose requirement the trial would break (a removal, or a version
  outside its specifier) brings the change that mends it.

No I/O here: the marker environment comes in as a mapping.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version


class FileChange(StrEnum):
    """How an installed file differs from what its distribution's RECORD says."""

    MODIFIED = "modified"  #: other bytes than the RECORD's hash
    ADDED = "added"  #: in a directory the distribution owns, listed in no RECORD
    REMOVED = "removed"  #: listed in the RECORD, gone from disk


@dataclass(frozen=True)
class LocalChange:
    """One file of an installed distribution that differs from its RECORD."""

    path: str  #: as a RECORD names it: relative to site-packages
    kind: FileChange

    def __str__(self) -> str:
        return self.path if self.kind is FileChange.MODIFIED else f"{self.path} ({self.kind})"


@dataclass(frozen=True)
class Package:
    """A pinned distribution as the delta sees it."""

    name: NormalizedName
    display_name: str
    version: str
    requires: tuple[str, ...] = ()  #: raw Requires-Dist lines
    digest: str = ""  #: content digest (of the files on disk); differs when the files differ
    editable: bool = False  #: its code lives in a source tree outside the env
    local_changes: tuple[LocalChange, ...] = ()  #: files changed since it was installed

    def __str__(self) -> str:
        return f"{self.display_name} {self.version}"

    def local_summary(self, most: int = 3) -> str:
        """``locally modified: a.py, b.py and 2 more``; empty when installed as released."""
        if not self.local_changes:
            return ""
        shown = ", ".join(str(change) for change in self.local_changes[:most])
        more = len(self.local_changes) - most
        return f"locally modified: {shown}" + (f" and {more} more" if more > 0 else "")


#: A package set: what a trial installs, by name.
Packages = Mapping[NormalizedName, Package]


class ChangeKind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    VERSION = "version"
    MODIFIED = "modified"


@dataclass(frozen=True)
class Change:
    """One difference between the good and the bad set."""

    name: NormalizedName
    kind: ChangeKind
    good: Package | None
    bad: Package | None

    @property
    def display_name(self) -> str:
        return (self.bad or self.good or _missing()).display_name

    @property
    def direction(self) -> str:
        """ "upgrade", "downgrade" or "" for a version change."""
        if self.kind is not ChangeKind.VERSION or not self.good or not self.bad:
            return ""
        try:
            return (
                "upgrade" if Version(self.bad.version) > Version(self.good.version) else "downgrade"
            )
        except InvalidVersion:
            return ""

    def describe(self) -> str:
        """E.g. ``gevent 24.11.1 (added)``, ``pika 1.3.2 → 1.1.0 (downgrade)`` or
        ``pika 1.3.2, locally modified: pika/adapters/blocking_connection.py``."""
        local = self.bad.local_summary() if self.bad else ""
        if self.kind is ChangeKind.REMOVED and self.good:
            return f"{self.good} (removed)"
        if self.kind is ChangeKind.MODIFIED and self.bad:
            return f"{self.bad}, {local}" if local else f"{self.bad} (same version, other files)"
        if self.kind is ChangeKind.ADDED and self.bad:
            head = f"{self.bad} (added)"
        else:
            assert self.good and self.bad
            head = (
                f"{self.display_name} {self.good.version} → {self.bad.version} ({self.direction})"
            )
        return f"{head}, {local}" if local else head


def _missing() -> Package:
    raise AssertionError("unreachable: a change has at least one side")


Edges = Mapping[NormalizedName, Mapping[NormalizedName, Requirement]]


@dataclass(frozen=True)
class Delta:
    """The changes from ``good`` to ``bad`` and what each side's packages require."""

    good: Mapping[NormalizedName, Package]
    bad: Mapping[NormalizedName, Package]
    markers: Mapping[str, str]
    root_extras: Mapping[NormalizedName, frozenset[str]]

    @cached_property
    def changes(self) -> tuple[Change, ...]:
        found = []
        for name in sorted(set(self.good) | set(self.bad)):
            good, bad = self.good.get(name), self.bad.get(name)
            if good is None:
                found.append(Change(name, ChangeKind.ADDED, None, bad))
            elif bad is None:
                found.append(Change(name, ChangeKind.REMOVED, good, None))
            elif _version_key(good.version) != _version_key(bad.version):
                found.append(Change(name, ChangeKind.VERSION, good, bad))
            elif good.digest and bad.digest and good.digest != bad.digest:
                found.append(Change(name, ChangeKind.MODIFIED, good, bad))
        return tuple(found)

    @cached_property
    def by_name(self) -> Mapping[NormalizedName, Change]:
        return {change.name: change for change in self.changes}

    @cached_property
    def good_edges(self) -> Edges:
        return dependency_edges(self.good, self.markers, self.root_extras)

    @cached_property
    def bad_edges(self) -> Edges:
        return dependency_edges(self.bad, self.markers, self.root_extras)

    @cached_property
    def _good_violations(self) -> frozenset[tuple[NormalizedName, NormalizedName]]:
        return frozenset(
            (name, dep)
            for name, deps in self.good_edges.items()
            for dep, requirement in deps.items()
            if dep not in self.good or not _satisfies(self.good[dep].version, requirement)
        )

    def change(self, name: str) -> Change:
        """The change to the package ``name`` (any spelling)."""
        return self.by_name[canonicalize_name(name)]

    def counts(self) -> dict[str, int]:
        """How many changes of each kind (``{"added": 40, "version": 38}``)."""
        kinds: dict[str, int] = {}
        for change in self.changes:
            kinds[change.kind.value] = kinds.get(change.kind.value, 0) + 1
        return kinds

    def trial(self, selected: Iterable[str]) -> dict[NormalizedName, Package]:
        """The package set of a trial: the good set with the selected changes applied."""
        packages = dict(self.good)
        for name in selected:
            change = self.change(name)
            if change.bad is None:
                packages.pop(change.name, None)
            else:
                packages[change.name] = change.bad
        return packages

    def closure(self, selected: Iterable[str]) -> frozenset[str]:
        """The smallest superset of ``selected`` whose trial lacks nothing the bad set had."""
        chosen = {canonicalize_name(name) for name in selected}
        while True:
            grown = chosen | self._needed_by(chosen)
            if grown == chosen:
                return frozenset(chosen)
            chosen = grown

    def _needed_by(self, chosen: set[NormalizedName]) -> set[NormalizedName]:
        needed: set[NormalizedName] = set()
        for name in chosen:
            needed.update(dep for dep in self.bad_edges.get(name, {}) if dep in self.by_name)
        packages = self.trial(chosen)
        for name in packages:
            edges = self.bad_edges if name in chosen else self.good_edges
            for dep, requirement in edges.get(name, {}).items():
                present = packages.get(dep)
                if present is not None and _satisfies(present.version, requirement):
                    continue
                if (name, dep) in self._good_violations:
                    continue  # already broken in the good set: not the trial's doing
                if dep in self.by_name and dep not in chosen:
                    needed.add(dep)
                elif name in self.by_name and name not in chosen:
                    needed.add(name)
        return needed

    def needs(self, name: str) -> tuple[Package, ...]:
        """What a change's bad-side package requires directly, as installed in the bad set."""
        deps = self.bad_edges.get(canonicalize_name(name), {})
        return tuple(self.bad[dep] for dep in sorted(deps) if dep in self.bad)

    def required_by(self, name: str) -> tuple[Package, ...]:
        """The bad-side packages that require ``name`` directly ("pulled in by")."""
        key = canonicalize_name(name)
        return tuple(
            self.bad[other]
            for other in sorted(self.bad_edges)
            if key in self.bad_edges[other] and other in self.bad
        )

    def path_from_top(self, name: str) -> tuple[Package, ...]:
        """The shortest chain top-level → … → ``name`` in the bad set (``name`` if top-level)."""
        key = canonicalize_name(name)
        if key not in self.bad:
            return ()
        parents: dict[NormalizedName, NormalizedName | None] = {key: None}
        queue = deque([key])
        top = key
        while queue:
            current = queue.popleft()
            dependents = [p.name for p in self.required_by(current)]
            if not dependents:
                top = current
                break
            for dependent in dependents:
                if dependent not in parents:
                    parents[dependent] = current
                    queue.append(dependent)
        chain = [top]
        while (following := parents.get(chain[-1])) is not None:
            chain.append(following)
        return tuple(self.bad[step] for step in chain)


def unmet_requirements(
    package: Package, packages: Mapping[NormalizedName, Package], markers: Mapping[str, str]
) -> list[str]:
    """What ``package`` requires (markers evaluated, no extras) that ``packages`` lack."""
    unmet = []
    for requirement in _parse_requires(package.requires):
        if not _applies(requirement.marker, markers, set()):
            continue
        present = packages.get(canonicalize_name(requirement.name))
        if present is None or not _satisfies(present.version, requirement):
            unmet.append(str(requirement))
    return unmet


def lockstep_moves(
    package: Package, packages: Mapping[NormalizedName, Package], markers: Mapping[str, str]
) -> dict[NormalizedName, str] | None:
    """The companions ``package`` pins exactly (``core==2.0.1``) that ``packages`` hold at
    another version, as name → pinned version; None when another of its requirements is
    unmet (a range, a package not in the set): moving companions cannot meet it."""
    moves: dict[NormalizedName, str] = {}
    for requirement in _parse_requires(package.requires):
        if not _applies(requirement.marker, markers, set()):
            continue
        name = canonicalize_name(requirement.name)
        present = packages.get(name)
        if present is not None and _satisfies(present.version, requirement):
            continue
        exact = [
            spec.version
            for spec in requirement.specifier
            if spec.operator in ("==", "===") and "*" not in spec.version
        ]
        if present is None or len(exact) != 1:
            return None
        moves[name] = exact[0]
    return moves


def pins_exactly(package: Package, name: str, version: str, markers: Mapping[str, str]) -> bool:
    """Whether ``package`` requires exactly ``name==version`` (a lockstep companion)."""
    key = canonicalize_name(name)
    return any(
        canonicalize_name(requirement.name) == key
        and _applies(requirement.marker, markers, set())
        and [(s.operator, s.version) for s in requirement.specifier]
        in ([("==", version)], [("===", version)])
        for requirement in _parse_requires(package.requires)
    )


def all_unmet(
    packages: Mapping[NormalizedName, Package], markers: Mapping[str, str]
) -> set[tuple[NormalizedName, str]]:
    """Every requirement of every package of the set that the set does not meet."""
    return {
        (package.name, unmet)
        for package in packages.values()
        for unmet in unmet_requirements(package, packages, markers)
    }


def dependency_edges(
    packages: Mapping[NormalizedName, Package],
    markers: Mapping[str, str],
    root_extras: Mapping[NormalizedName, frozenset[str]],
) -> dict[NormalizedName, dict[NormalizedName, Requirement]]:
    """Which package requires which, markers evaluated, extras followed to a fixpoint."""
    extras: dict[NormalizedName, set[str]] = {
        name: set(root_extras.get(name, ())) for name in packages
    }
    parsed = {name: _parse_requires(package.requires) for name, package in packages.items()}
    while True:
        edges: dict[NormalizedName, dict[NormalizedName, Requirement]] = {}
        for name, requirements in parsed.items():
            active = edges[name] = {}
            for requirement in requirements:
                if _applies(requirement.marker, markers, extras[name]):
                    active[canonicalize_name(requirement.name)] = requirement
        wanted = {
            dep: {canonicalize_name(x) for x in requirement.extras}
            for deps in edges.values()
            for dep, requirement in deps.items()
            if requirement.extras and dep in extras
        }
        if all(wanted_extras <= extras[dep] for dep, wanted_extras in wanted.items()):
            return edges
        for dep, wanted_extras in wanted.items():
            extras[dep] |= wanted_extras


def _parse_requires(lines: Iterable[str]) -> list[Requirement]:
    parsed = []
    for line in lines:
        try:
            parsed.append(Requirement(line))
        except InvalidRequirement:
            continue  # a broken Requires-Dist line: the installer ignored it as well
    return parsed


def _applies(marker: Marker | None, markers: Mapping[str, str], extras: set[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({**markers, "extra": extra}) for extra in ("", *sorted(extras)))


def _satisfies(version: str, requirement: Requirement) -> bool:
    try:
        return requirement.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True  # a legacy version the specifier cannot judge: trust the installer


def _version_key(version: str) -> Version | str:
    try:
        return Version(version)
    except InvalidVersion:
        return version
