"""Version narrowing: which release between a culprit's good and bad version broke it.

When the culprit is a version change a → b of one package, its releases
strictly between a and b are listed by the run's installer, for the target
interpreter and with the user's configuration (see
:meth:`envbisect.envs.Installer.releases`; yanked releases are left out, and
pre-releases unless an end is one), ordered from a towards b, and
binary-searched with the rest of the environment fixed (see
:func:`envbisect.search.first_failing`). The first release that fails is named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from envbisect.delta import Change
from envbisect.search import Outcome


@dataclass(frozen=True)
class Tried:
    """One version of the culprit, tried in place of its bad version."""

    version: str
    outcome: Outcome
    trial: int  #: the trial that tried it (for the ends: the search's own trials)
    detail: str = ""


@dataclass(frozen=True)
class Narrowing:
    """The releases between a culprit's good and bad version, and which first fails."""

    change: Change
    versions: tuple[str, ...]  #: good version first, bad version last, releases between
    tested: tuple[Tried, ...]
    last_good: str | None  #: the last version (from the good end) that passes
    first_bad: str | None  #: the first that fails; None when it was not narrowed (see note)
    untestable: tuple[str, ...] = ()  #: between last_good and first_bad, could not be tried
    note: str = ""

    def describe(self) -> str:
        """E.g. ``first bad pika version: 0.13.1 (last good 1.0.0; 4 of 12 releases tried)``."""
        name = self.change.display_name
        if self.first_bad is None:
            return f"{name}: versions not narrowed: {self.note}"
        head = f"first bad {name} version: {self.first_bad}"
        between = len(self.versions) - 2
        if not between:
            return f"{head} (no release between it and {self.last_good})"
        text = (
            f"{head} (last good {self.last_good}; "
            f"{len(self.tested) - 2} of {between} releases between tried)"
        )
        if self.untestable:
            text += f"; or one of the untestable {', '.join(self.untestable)}"
        return text


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
