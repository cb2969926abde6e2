"""Delta debugging over the changes between a good and a bad environment.

The search is pure: it only calls the oracle it is given and returns what it learnt.

1. Sanity: the good set (no changes) must PASS and the bad set (all changes) must FAIL.
2. Fast path, optimistic halving: order the changes so dependencies come first, then
   repeatedly find the shortest failing prefix by binary search. Its last member is
   needed; keep it and search the prefix before it, until the kept members fail on
   their own. One test per round: a failing (hung) trial costs far more than a passing
   one, so testing several split points at once costs more wall time than it saves.
   Instead the caller is told which two sets may come next (``prepare``), so it can
   build their environments while the current probe runs.
3. When unresolved outcomes leave no split point to try, fall back to Zeller's ddmin.
4. Minimality check: drop any member whose removal still fails. FOUND is only reported
   when the recorded results prove the set failing and 1-minimal.

Every test is of a dependency-closed set, and no closed set is sent to the oracle twice.
:func:`first_failing` is the same binary search along a line (the released versions of
one culprit package, from its good version to its bad one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from typing import TypeVar


class Outcome(StrEnum):
    """The result of probing one environment."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  #: untestable (git-bisect exit 125)
    FLAKY = "flaky"  #: repeated runs disagreed
    ERROR = "error"  #: the trial could not be run (e.g. the env build failed)


_T = TypeVar("_T")

Subset = frozenset[str]
#: Gets a batch of dependency-closed subsets, returns one outcome per subset in the same order.
BatchOracle = Callable[[Sequence[Subset]], Sequence[Outcome]]
#: Told, before a batch, which closed subsets it tests and may test right after (a hint only).
Prepare = Callable[[Sequence[Subset]], None]


class SearchStatus(StrEnum):
    """How a search ended."""

    FOUND = "found"  #: culprits is a 1-minimal failing set
    GOOD_FAILS = "good-fails"  #: the empty set (good env alone) did not PASS
    BAD_PASSES = "bad-passes"  #: the full set (bad env) did not FAIL
    INCONSISTENT = "inconsistent"  #: results do not single out a minimal failing set


@dataclass(frozen=True)
class Test:
    """One subset sent to the oracle."""

    __test__ = False  # not a pytest test class

    subset: Subset  #: the closed subset that was tested
    outcome: Outcome
    round: int  #: which oracle batch (0 = sanity batch)


@dataclass(frozen=True)
class SearchResult:
    """What a search found, with every test it ran."""

    status: SearchStatus
    culprits: Subset  #: the chosen 1-minimal set (empty unless FOUND)
    failing_set: Subset  #: closure(culprits): what actually fails
    tests: tuple[Test, ...]  #: every oracle call, in order
    interaction: bool  #: the culprit set has more than one member, or ddmin ran
    #: Tested subsets that break monotonicity (a PASS superset of a FAIL set, and that FAIL
    #: set) and, when INCONSISTENT, the unresolved subsets that left minimality unproven.
    disagreements: tuple[Subset, ...]


def bisect(
    changes: Sequence[str],
    closure: Callable[[Subset], Subset],
    oracle: BatchOracle,
    *,
    jobs: int = 1,
    prepare: Prepare | None = None,
) -> SearchResult:
    """Find a 1-minimal set of ``changes`` whose closure fails ``oracle``.

    ``closure`` maps a subset to its smallest dependency-closed superset within ``changes``.
    ``jobs`` bounds each batch of independent tests (the sanity batch is always two).
    ``prepare`` hears which sets may be tested next, so their trials can be readied.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    search = _Search(list(dict.fromkeys(changes)), closure, oracle, jobs, prepare)
    return search.run()


class _Search:
    """The state of one ``bisect`` call: memoised outcomes and the test log."""

    def __init__(
        self,
        changes: list[str],
        closure: Callable[[Subset], Subset],
        oracle: BatchOracle,
        jobs: int,
        prepare: Prepare | None,
    ) -> None:
        self._changes = changes
        self._closure_fn = closure
        self._oracle = oracle
        self._jobs = jobs
        self._prepare = prepare
        self._closures: dict[Subset, Subset] = {}
        self._outcomes: dict[Subset, Outcome] = {}
        self._fails: list[Subset] = []
        self._passes: list[Subset] = []
        self._disagreements: dict[Subset, None] = {}
        self._log: list[Test] = []
        self._round = 0
        self._ddmin_ran = False
        # Dependencies before dependents, so that prefixes are (nearly) closed.
        index = {change: i for i, change in enumerate(changes)}
        self._order = sorted(changes, key=lambda c: (len(self._close(frozenset({c}))), index[c]))
        self._rank = {change: i for i, change in enumerate(self._order)}

    def run(self) -> SearchResult:
        good, bad = self._test([frozenset(), frozenset(self._changes)])
        if good is not Outcome.PASS:
            return self._result(SearchStatus.GOOD_FAILS)
        if bad is not Outcome.FAIL:
            return self._result(SearchStatus.BAD_PASSES)
        failing, settled = self._fast_path()
        if not settled:
            failing = self._ddmin(failing)
        culprits, blockers = self._minimise(failing)
        if blockers:
            self._disagreements.update(dict.fromkeys(blockers))
            return self._result(SearchStatus.INCONSISTENT)
        return self._result(SearchStatus.FOUND, culprits)

    def _result(self, status: SearchStatus, culprits: Sequence[str] = ()) -> SearchResult:
        chosen = frozenset(culprits)
        return SearchResult(
            status=status,
            culprits=chosen,
            failing_set=self._close(chosen),
            tests=tuple(self._log),
            interaction=len(chosen) > 1 or self._ddmin_ran,
            disagreements=tuple(self._disagreements),
        )

    # -- the fast path ---------------------------------------------------------------

    def _fast_path(self) -> tuple[list[str], bool]:
        """A known failing set, and whether it was narrowed down without getting stuck.

        Stuck means only unresolved split points were left: ddmin has to take over.
        """
        found: list[str] = []
        candidates = self._order  # invariant: found + candidates is known to fail
        while True:
            (outcome,) = self._test([frozenset(found)])
            if outcome is Outcome.FAIL:
                return found, True
            k, settled = self._shortest_failing_prefix(found, candidates)
            if not settled:
                return self._sorted(found + candidates[:k]), False
            found = self._sorted([*found, candidates[k - 1]])
            candidates = candidates[: k - 1]

    def _shortest_failing_prefix(self, found: list[str], candidates: list[str]) -> tuple[int, bool]:
        """The k where found + candidates[:k] fails and found + candidates[:k-1] does not.

        Unresolved split points are skipped, as in ``git bisect skip``. When only unresolved
        points are left before the first failing prefix, returns that prefix and False.
        """
        results = {0: self._outcomes[self._close(frozenset(found))], len(candidates): Outcome.FAIL}
        lo, hi = 0, len(candidates)
        while hi - lo > 1:
            m = _split_point(lo, hi, results)
            if m is None:
                return hi, False
            if self._prepare is not None:
                # m now; then, whichever way m goes, one of the other two.
                points = [m, _split_point(lo, m, results), _split_point(m, hi, results)]
                self._prepare(
                    [
                        self._close(frozenset(found + candidates[:n]))
                        for n in points
                        if n is not None
                    ]
                )
            (results[m],) = self._test([frozenset(found + candidates[:m])])
            hi = min(m for m, outcome in results.items() if outcome is Outcome.FAIL)
            lo = max((m for m, o in results.items() if m < hi and o is Outcome.PASS), default=0)
        return hi, True

    # -- the fallback ------------------------------------------------------------------

    def _ddmin(self, items: list[str]) -> list[str]:
        """Zeller's ddmin from a failing set; unresolved outcomes count as not failing."""
        self._ddmin_ran = True
        n = 2
        while len(items) >= 2:
            n = min(n, len(items))
            chunks = _split(items, n)
            hit = self._first_failing(chunks)
            if hit is not None:
                items, n = hit, 2
                continue
            if n > 2:  # with two chunks, each complement is the other chunk
                complements = [[c for c in items if c not in chunk] for chunk in chunks]
                hit = self._first_failing(complements)
                if hit is not None:
                    items, n = hit, n - 1
                    continue
            if n == len(items):
                break
            n = min(2 * n, len(items))
        return items

    def _first_failing(self, sets: list[list[str]]) -> list[str] | None:
        for batch in _batches(sets, self._jobs):
            outcomes = self._test([frozenset(s) for s in batch])
            for candidate, outcome in zip(batch, outcomes, strict=True):
                if outcome is Outcome.FAIL:
                    return candidate
        return None

    # -- the minimality check ------------------------------------------------------------

    def _minimise(self, failing: list[str]) -> tuple[list[str], list[Subset]]:
        """Drop members whose removal still fails; also the unresolved removals, if any.

        With no unresolved removals left, the result is proven 1-minimal.
        """
        found = self._sorted(failing)
        while True:
            blockers: list[Subset] = []
            dropped: str | None = None
            for batch in _batches(found, self._jobs):
                rests = [frozenset(found) - {c} for c in batch]
                outcomes = self._test(rests)
                dropped = next(
                    (c for c, o in zip(batch, outcomes, strict=True) if o is Outcome.FAIL), None
                )
                if dropped is not None:
                    break
                blockers += [
                    self._close(rest)
                    for rest, o in zip(rests, outcomes, strict=True)
                    if o is not Outcome.PASS
                ]
            if dropped is None:
                return found, blockers
            found = [c for c in found if c != dropped]

    # -- testing -------------------------------------------------------------------------

    def _test(self, subsets: Sequence[Subset]) -> list[Outcome]:
        """Outcomes of the closures of ``subsets``; new closed sets go to the oracle at once."""
        closed = [self._close(s) for s in subsets]
        new = list(dict.fromkeys(c for c in closed if c not in self._outcomes))
        if new:
            outcomes = self._oracle(new)
            if len(outcomes) != len(new):
                raise ValueError(f"oracle returned {len(outcomes)} outcomes for {len(new)} sets")
            for subset, outcome in zip(new, outcomes, strict=True):
                self._record(subset, outcome)
            self._round += 1
        return [self._outcomes[c] for c in closed]

    def _record(self, subset: Subset, outcome: Outcome) -> None:
        self._outcomes[subset] = outcome
        self._log.append(Test(subset, outcome, self._round))
        if outcome is Outcome.FAIL:
            self._fails.append(subset)
            clashes = [p for p in self._passes if subset <= p]
        elif outcome is Outcome.PASS:
            self._passes.append(subset)
            clashes = [f for f in self._fails if f <= subset]
        else:
            return
        if clashes:
            self._disagreements.update(dict.fromkeys([*clashes, subset]))

    def _close(self, subset: Subset) -> Subset:
        closed = self._closures.get(subset)
        if closed is None:
            closed = self._closures[subset] = frozenset(self._closure_fn(subset))
        return closed

    def _sorted(self, members: Iterable[str]) -> list[str]:
        # Iterate sets in search order, never in hash order: the search must be deterministic.
        return sorted(members, key=self._rank.__getitem__)


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


def first_failing(count: int, test: Callable[[int], Outcome]) -> Boundary:
    """Binary search points ``0 .. count-1``: 0 is known to pass, ``count-1`` to fail.

    Unresolved points (skip, flaky, error) are stepped around as ``git bisect skip``
    does; if some are left between the last pass and the first failure, the boundary
    says so instead of guessing.
    """
    if count < 2:
        raise ValueError(f"a line needs its passing and its failing end, got {count} points")
    outcomes = {0: Outcome.PASS, count - 1: Outcome.FAIL}
    lo, hi = 0, count - 1
    while (m := _split_point(lo, hi, outcomes)) is not None:
        outcomes[m] = test(m)
        hi = min(i for i, outcome in outcomes.items() if outcome is Outcome.FAIL)
        lo = max(i for i, outcome in outcomes.items() if i < hi and outcome is Outcome.PASS)
    return Boundary(lo, hi, outcomes)


def _split_point(lo: int, hi: int, tried: dict[int, Outcome]) -> int | None:
    """The untried point in (lo, hi) nearest to the middle, if any."""
    free = [m for m in range(lo + 1, hi) if m not in tried]
    middle = (lo + hi) / 2
    return min(free, key=lambda m: (abs(m - middle), m)) if free else None


def _split(items: list[str], n: int) -> list[list[str]]:
    """``items`` cut into ``n`` contiguous, nearly equal chunks."""
    bounds = [len(items) * i // n for i in range(n + 1)]
    return [items[a:b] for a, b in pairwise(bounds)]


def _batches(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
