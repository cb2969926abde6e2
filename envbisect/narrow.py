"""Version narrowing: which release between a culprit's good and bad version broke it.

When the culprit is a version change a → b of one package, its releases
strictly between a and b are listed by the run's installer, for the target
interpreter and with the user's configuration (the wheel source's
:meth:`~envbisect.wheelsource.WheelSource.versions`; yanked releases are left out, and
pre-releases unless an end is one), ordered from a towards b, and
binary-searched with the rest of the environment fixed (see
:func:`envbisect.search.first_failing`). The first release that fails is named.

A release that pins a companion exactly (a wrapper that needs ``its-core==X.Y.Z``,
released in lockstep with it) is tried with that companion version, fetched like
any other; only a release whose needs a companion move cannot meet, or whose
companions break what the rest of the set needs, stays untestable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from envbisect.delta import (
    Change,
    ChangeKind,
    Delta,
    Package,
    Packages,
    all_unmet,
    lockstep_moves,
    pins_exactly,
    unmet_requirements,
)
from envbisect.errors import EnvbisectError, TimeLimitError
from envbisect.installers.base import InstallerError
from envbisect.linesearch import first_failing
from envbisect.masking import mask_urls
from envbisect.model import Narrowing, Outcome, Trial, Tried
from envbisect.wheelsource import WheelSource


class Prober(Protocol):
    """How narrowing gets its trials (the procedure numbers, runs and records them)."""

    def earlier(self, changes: frozenset[str]) -> Trial | None:
        """A trial of exactly these changes that already ran, if any."""
        ...

    def narrowing(
        self, changes: frozenset[str], sets: Sequence[tuple[Packages, Package | None]]
    ) -> list[Trial]:
        """Probe these package sets (each with the version it tries) at once."""
        ...

    def unrun(
        self, changes: frozenset[str], outcome: Outcome, detail: str, tried: Package
    ) -> Trial:
        """A trial decided without a probe: the version cannot be fetched or installed."""
        ...


def narrow(
    change: Change,
    failing: frozenset[str],
    confirm: Trial,
    *,
    delta: Delta,
    wheels: WheelSource,
    prober: Prober,
    jobs: int,
    left: Callable[[], float],
    say: Callable[[str], None],
) -> Narrowing:
    """The first release from the good towards the bad version that fails, the rest of the
    culprit set (``failing``) fixed; ``confirm`` is the culprit set's confirmation trial.

    A culprit that another version change of the set pins exactly (a core its wrapper
    pins) is narrowed through that wrapper's releases, each with its core."""
    leader = lockstep_leader(change, failing, delta)
    if leader is None:
        return _narrow_line(change, failing, confirm, delta, wheels, prober, jobs, left, say)
    say(
        f"{change.display_name} moves in lockstep with {leader.display_name} (each "
        f"{leader.display_name} release pins it exactly): narrowing {leader.display_name}"
    )
    found = _narrow_line(leader, failing, confirm, delta, wheels, prober, jobs, left, say)
    return replace(found, culprit=change.name)


def lockstep_leader(change: Change, failing: frozenset[str], delta: Delta) -> Change | None:
    """Another version change of the failing set whose bad release pins ``change``'s bad
    version exactly (its wrapper), if there is one."""
    if change.bad is None:
        return None
    for name in sorted(failing - {change.name}):
        other = delta.change(name)
        if (
            other.kind is ChangeKind.VERSION
            and other.bad is not None
            and pins_exactly(other.bad, change.name, change.bad.version, delta.markers)
        ):
            return other
    return None


def _narrow_line(
    change: Change,
    failing: frozenset[str],
    confirm: Trial,
    delta: Delta,
    wheels: WheelSource,
    prober: Prober,
    jobs: int,
    left: Callable[[], float],
    say: Callable[[str], None],
) -> Narrowing:
    """:func:`narrow` of ``change`` itself."""
    assert change.good is not None and change.bad is not None
    good, bad = change.good.version, change.bad.version
    ends = (good, bad)
    try:
        line = versions_between(wheels.versions(change.display_name, ends), good, bad)
    except InvalidVersion:
        return Narrowing(
            change, ends, (), None, None, note=f"{good} or {bad} is not a PEP 440 version"
        )
    except TimeLimitError:
        note = "--max-time reached while listing its releases"
        return Narrowing(change, ends, (), None, None, note=note)
    except InstallerError as exc:
        # The reason may quote an index URL, with its credentials.
        note = mask_urls(f"{wheels.name} listed no release of {change.display_name}: {exc.reason}")
        return Narrowing(change, ends, (), None, None, note=note)
    say(
        f"narrowing {change.describe()}: {len(line) - 2} release(s) between, "
        "the rest of the culprit set fixed"
    )
    rest = failing - {change.name}
    # The good version with the companions it pins exactly at their good versions too.
    back = _good_companions(change, rest, delta)
    good_rest = rest - back
    good_end = (
        prober.earlier(good_rest)
        or prober.narrowing(good_rest, [(delta.trial(good_rest), None)])[0]
    )
    with_good = tuple(str(delta.good[canonicalize_name(name)]) for name in sorted(back))
    tried = [Tried(good, good_end.outcome, good_end.index, good_end.result.detail, with_good)]
    tried.append(Tried(bad, confirm.outcome, confirm.index, confirm.result.detail))
    if good_end.outcome is not Outcome.PASS:
        note = f"with {change.display_name} {good} the rest of the culprit set fails too"
        return Narrowing(change, tuple(line), tuple(tried), None, None, note=note)

    def test(indices: Sequence[int]) -> list[Outcome]:
        if left() <= 0:
            return [Outcome.ERROR for _ in indices]  # --max-time: leave the rest untested
        trials = _try_versions(change, failing, [line[i] for i in indices], delta, wheels, prober)
        for index, (trial, moved) in zip(indices, trials, strict=True):
            detail = trial.result.detail
            tried.append(Tried(line[index], trial.outcome, trial.index, detail, moved))
        return [trial.outcome for trial, _ in trials]

    boundary = first_failing(len(line), test, jobs=jobs)
    return Narrowing(
        change,
        tuple(line),
        tuple(sorted(tried, key=lambda t: line.index(t.version))),
        last_good=line[boundary.last_pass],
        first_bad=line[boundary.first_fail],
        untestable=tuple(line[i] for i in boundary.unresolved),
        note="--max-time reached while narrowing" if left() <= 0 else "",
    )


def _good_companions(change: Change, rest: frozenset[str], delta: Delta) -> frozenset[str]:
    """The changes of ``rest`` that ``change``'s good release pins exactly at their good
    versions: with it, they go back to those."""
    assert change.good is not None
    return frozenset(
        name
        for name in rest
        if (companion := delta.change(name).good) is not None
        and pins_exactly(change.good, name, companion.version, delta.markers)
    )


def _try_versions(
    change: Change,
    failing: frozenset[str],
    versions: Sequence[str],
    delta: Delta,
    wheels: WheelSource,
    prober: Prober,
) -> list[tuple[Trial, tuple[str, ...]]]:
    """The culprit set with each of these versions of the change instead of its bad one, and
    the companions each was tried with."""
    decided: dict[str, Trial] = {}
    sets: dict[str, tuple[Packages, Package | None]] = {}
    companions: dict[str, tuple[str, ...]] = {}
    culprit_set = delta.trial(failing)
    for version in versions:
        pin = f"{change.display_name}=={version}"
        try:
            package = wheels.fetch([pin])[change.name]
        except (EnvbisectError, KeyError) as exc:
            missing = Package(change.name, change.display_name, version)
            decided[version] = prober.unrun(
                failing, Outcome.ERROR, f"cannot fetch {pin}: {exc}", missing
            )
            continue
        packages: Packages = {**culprit_set, change.name: package}
        unmet = unmet_requirements(package, packages, delta.markers)
        if unmet:
            moved = _with_companions(package, packages, culprit_set, delta, wheels)
            if moved is None:
                detail = f"untestable: {pin} needs {', '.join(unmet)}"
                decided[version] = prober.unrun(failing, Outcome.SKIP, detail, package)
                continue
            packages, companions[version] = moved
        sets[version] = (packages, package)
    probed = dict(zip(sets, prober.narrowing(failing, list(sets.values())), strict=True))
    return [
        (decided.get(version) or probed[version], companions.get(version, ()))
        for version in versions
    ]


def _with_companions(
    package: Package,
    packages: Packages,
    culprit_set: Packages,
    delta: Delta,
    wheels: WheelSource,
) -> tuple[Packages, tuple[str, ...]] | None:
    """A release that pins companions exactly (a wrapper and its core, released in
    lockstep), tried with those companion versions: the set and the companions moved, or
    None when moving them cannot meet its needs, or breaks what the rest of the set needs."""
    moves = lockstep_moves(package, packages, delta.markers)
    if not moves:
        return None
    pins = [f"{packages[name].display_name}=={version}" for name, version in moves.items()]
    try:
        fetched = wheels.fetch(pins)
        moved = {**packages, **{name: fetched[name] for name in moves}}
    except (EnvbisectError, KeyError):
        return None
    if all_unmet(moved, delta.markers) - all_unmet(culprit_set, delta.markers):
        return None
    return moved, tuple(str(moved[name]) for name in sorted(moves))


def versions_between(available: Sequence[str], good: str, bad: str) -> list[str]:
    """``good``, the releases strictly between, ``bad``: ordered from ``good`` towards ``bad``.

    Pre-releases (and dev releases) only when ``good`` or ``bad`` is one.
    """
    low, high = sorted((Version(good), Version(bad)))
    pre = low.is_prerelease or high.is_prerelease
    inside: dict[Version, str] = {}
    for text in available:
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        if low < version < high and (pre or not version.is_prerelease):
            inside.setdefault(version, text)
    ordered = [inside[v] for v in sorted(inside, reverse=Version(good) > Version(bad))]
    return [good, *ordered, bad]
