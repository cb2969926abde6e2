"""Line search: where a line of points turns from passing to failing, P points a round.

The delta debugging's first phase (the ordered changes, prefixes tested) and
``--narrow`` (a culprit's releases, in order) are both this search. Pure: the
points' outcomes come from the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envbisect.model import Outcome

#: Gets a batch of points of a line, returns one outcome per point in the same order.
LineOracle = Callable[[Sequence[int]], Sequence[Outcome]]


@dataclass(frozen=True)
class Boundary:
    """Where a line of points turns from passing to failing."""

    last_pass: int
    first_fail: int
    outcomes: dict[int, Outcome]  #: every point tested, ends included

    @property
    def unresolved(self) -> list[int]:
        """Points between the two that could not be tested: the first failure may be one."""
        return list(range(self.last_pass + 1, self.first_fail))


def first_failing(count: int, test: LineOracle, *, jobs: int = 1) -> Boundary:
    """Search points ``0 .. count-1`` P-ary: 0 is known to pass, ``count-1`` to fail.

    ``test`` gets up to ``jobs`` (P) points a round. Unresolved points (skip, flaky,
    error) are stepped around as ``git bisect skip`` does; if some are left between the
    last pass and the first failure, the boundary says so instead of guessing.
    """
    if count < 2:
        raise ValueError(f"a line needs its passing and its failing end, got {count} points")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    outcomes = {0: Outcome.PASS, count - 1: Outcome.FAIL}
    lo, hi = boundary(outcomes, jobs, test)
    return Boundary(lo, hi, outcomes)


#: Told the points a round tests and, for each way it can end (the likeliest first), the
#: upper end of the interval then left and the points the next round tests in it.
Announce = Callable[[Sequence[int], Sequence[tuple[int, Sequence[int]]]], None]


def boundary(
    outcomes: dict[int, Outcome], width: int, test: LineOracle, announce: Announce | None = None
) -> tuple[int, int]:
    """Where a line turns from PASS to FAIL: the last pass before the first failure.

    ``outcomes`` holds the known points (a FAIL among them) and gets every point tested.
    Each round tests ``width`` untried points of the interval left, until none is left
    in it: then the two ends are adjacent, or only unresolved points lie between.
    """
    lo, hi = ends(outcomes)
    while points := split_points(lo, hi, outcomes, width):
        if announce is not None:
            after = []
            for cut in range(len(points) + 1):  # the first ``cut`` points pass, the rest fail
                then = outcomes | {
                    p: Outcome.PASS if i < cut else Outcome.FAIL for i, p in enumerate(points)
                }
                nlo, nhi = ends(then)
                after.append((nhi - nlo, nhi, split_points(nlo, nhi, then, width)))
            # The likeliest first: the part with the most boundaries, the upper one on a tie.
            announce(points, [(nhi, next_) for _, nhi, next_ in sorted(after, reverse=True)])
        for point, outcome in zip(points, test(points), strict=True):
            outcomes[point] = outcome
        lo, hi = ends(outcomes)
    return lo, hi


def ends(outcomes: dict[int, Outcome]) -> tuple[int, int]:
    """The last passing point before the first failing one (else the lowest point), and
    that first failing point."""
    hi = min(point for point, outcome in outcomes.items() if outcome is Outcome.FAIL)
    passes = [
        point for point, outcome in outcomes.items() if point < hi and outcome is Outcome.PASS
    ]
    return max(passes, default=min(outcomes)), hi


def split_points(lo: int, hi: int, tried: dict[int, Outcome], width: int) -> list[int]:
    """Up to ``width`` untried points in (lo, hi), each the nearest to its cut.

    The top cut is the middle, as in a binary search: a round is cheap only when every
    trial passes, and the upper part is what it leaves. The other cuts split the lower
    part equally: where a binary search would go when the middle fails. The upper part
    holds less than half when it would otherwise take more than ⌈log_(width+1) n⌉ rounds
    in all (n = hi - lo), and the lower ones stay within that bound too.
    """
    free = [m for m in range(lo + 1, hi) if m not in tried]
    if len(free) <= width:
        return free
    n = hi - lo
    most = (width + 1) ** (rounds_needed(n, width + 1) - 1)  # boundaries a part may hold
    lower = n - max(n - width * most, min(most, n / 2))
    points: list[int] = []
    for i in range(width, 0, -1):  # the top cut first: it has the exact middle
        cut = lo + lower * i / width
        points.append(min((m for m in free if m not in points), key=lambda m: (abs(m - cut), m)))
    return sorted(points)


def rounds_needed(n: int, base: int) -> int:
    """⌈log_base n⌉, in integers."""
    rounds, reach = 0, 1
    while reach < n:
        rounds, reach = rounds + 1, reach * base
    return rounds
