"""Delta debugging over the changes between a good and a bad environment.

The search is pure: it only calls the oracle it is given and returns what it learnt.
The oracle takes a batch of up to P sets (P = ``jobs``, the trials that can run at
once) and the search counts its rounds: one round is one batch.

1. Sanity: the good set (no changes) must PASS and the bad set (all changes) must FAIL.
2. Fast path, optimistic P-ary search: order the changes so dependencies come first,
   then repeatedly find the shortest failing prefix. Each round tests P split points of
   the interval left, so a single culprit among N changes takes ⌈log_(P+1) N⌉ rounds
   (with P = 1, the binary search: one test a round). The prefix's last member is
   needed; keep it and search the prefix before it, until the kept members fail on
   their own. When the last round has fewer points to test than P, the spare trials
   test the kept members plus each possible last member, lowest first: one of them is
   the next set to test.
3. When unresolved outcomes leave no split point to try, fall back to Zeller's ddmin.
   Its subsets, then its complements, are tested P at a time in this fixed order (as
   picire does); the first failing one wins, so the answer does not depend on P.
4. Minimality check: drop any member whose removal still fails, again P removals at a
   time, the first in order winning. FOUND is only reported when the recorded results
   prove the set failing and 1-minimal.

Which split points: a round lasts as long as its slowest trial, and a failing (hung)
trial costs several times a passing one, so only a round whose every trial passes is
cheap. The top point is the middle, as in the binary search: half the interval is left
to that cheap outcome. The other P - 1 points cut the lower half into P equal parts,
where the binary search would go next if the middle fails (for P = 2: the middle and
the quarter below it). The upper part shrinks below half only where it would take more
than ⌈log_(P+1) N⌉ rounds in all, so the worst case is that of P + 1 equal parts. With
a failing trial twice the cost of a passing one (measured 1.9 s against 0.8 s) a half
is the upper share that minimises the expected cost for P = 2 (w in P·w² + w = 1), and
a model of rounds at those costs gives 0-14 % less time than equal parts (6 % for
121 changes). When failing and passing trials cost the same (an import probe), equal
parts can be up to 8 % cheaper for P = 2; the worst case is the same.

Every test is of a dependency-closed set, and no closed set is sent to the oracle twice.
On a deterministic oracle that only passes or fails, whose failing sets are closed
upwards, every P gives the same answer. :func:`first_failing` is the same P-ary search
along a line (the released versions of one culprit package, from its good version to
its bad one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

from envbisect.linesearch import boundary, ends, split_points
from envbisect.model import Outcome

Subset = frozenset[str]
#: Gets a batch of dependency-closed subsets, returns one outcome per subset in the same order.
BatchOracle = Callable[[Sequence[Subset]], Sequence[Outcome]]
#: Told, before a batch, which closed subsets it tests and may test right after, the likeliest
#: first; before the sanity pair, the first round's (a hint only).
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
    rounds: int  #: oracle batches (the sanity batch included)
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
    ``jobs`` (P) bounds each batch (the sanity batch is always two): the P-ary search tests
    P split points a round. ``prepare`` hears which sets a round tests and which the next
    round may test, so their trials can be readied.
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
        # Dependencies before dependents, so that prefixes are (nearly) closed.
        index = {change: i for i, change in enumerate(changes)}
        self._order = sorted(changes, key=lambda c: (len(self._close(frozenset({c}))), index[c]))
        self._rank = {change: i for i, change in enumerate(self._order)}

    def run(self) -> SearchResult:
        if self._prepare is not None:
            # The first round's envs are built while the sanity pair builds its own.
            line = {0: Outcome.PASS, len(self._order): Outcome.FAIL}
            first = split_points(0, len(self._order), line, self._jobs)
            if first:
                self._prepare([self._close(frozenset(self._order[:m])) for m in first])
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
            rounds=self._round,
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

        def batch(points: Sequence[int], hi: int) -> list[Subset]:
            """The prefixes at ``points``; in spare trials, what follows each possible k."""
            prefixes = [self._close(frozenset(found + candidates[:m])) for m in points]
            follow = [self._kept(found, candidates, k) for k in [*points, hi]]
            spare = [s for s in self._unknown(follow) if s not in prefixes]
            return prefixes + spare[: self._jobs - len(prefixes)]

        def test(points: Sequence[int]) -> Sequence[Outcome]:
            return self._test(batch(points, ends(results)[1]))[: len(points)]

        def announce(now: Sequence[int], after: Sequence[tuple[int, Sequence[int]]]) -> None:
            assert self._prepare is not None
            upcoming = batch(now, ends(results)[1])
            for hi, points in after:  # no points left: the search is over at k = hi
                upcoming += batch(points, hi) if points else [self._kept(found, candidates, hi)]
            self._prepare(self._unknown(upcoming))

        lo, hi = boundary(results, self._jobs, test, announce if self._prepare else None)
        return hi, hi - lo == 1

    def _kept(self, found: list[str], candidates: list[str], k: int) -> Subset:
        """What the fast path tests after a search that ends at k: found + the k-th candidate."""
        return self._close(frozenset([*found, candidates[k - 1]]))

    def _unknown(self, subsets: Iterable[Subset]) -> list[Subset]:
        """The sets among ``subsets`` with no outcome yet, once each, in order."""
        return [s for s in dict.fromkeys(subsets) if s not in self._outcomes]

    # -- the fallback ------------------------------------------------------------------

    def _ddmin(self, items: list[str]) -> list[str]:
        """Zeller's ddmin from a failing set; unresolved outcomes count as not failing."""
        n = 2
        while len(items) >= 2:
            n = min(n, len(items))
            chunks = _split(items, n)
            # With two chunks, each complement is the other chunk.
            complements = (
                [[c for c in items if c not in chunk] for chunk in chunks] if n > 2 else []
            )
            hit = self._first_failing([frozenset(s) for s in chunks + complements])
            if hit is not None:
                items, n = (chunks + complements)[hit], 2 if hit < len(chunks) else n - 1
                continue
            if n == len(items):
                break
            n = min(2 * n, len(items))
        return items

    def _first_failing(self, sets: Sequence[Subset]) -> int | None:
        """The index of the first of ``sets`` that fails, in their order.

        New sets go to the oracle P at a time (those after the first failing one of a
        batch are tested in vain): the answer is the same for every P.
        """
        start = 0
        while start < len(sets):
            stop, new = start, set[Subset]()
            while stop < len(sets):
                closed = self._close(sets[stop])
                known = self._outcomes.get(closed)
                if known is None and closed not in new:
                    if len(new) == self._jobs:
                        break
                    new.add(closed)
                stop += 1
                if known is Outcome.FAIL:  # the sets after it need no test
                    break
            outcomes = self._test(sets[start:stop])
            hit = next((i for i, o in enumerate(outcomes) if o is Outcome.FAIL), None)
            if hit is not None:
                return start + hit
            start = stop
        return None

    # -- the minimality check ------------------------------------------------------------

    def _minimise(self, failing: list[str]) -> tuple[list[str], list[Subset]]:
        """Drop members whose removal still fails; also the unresolved removals, if any.

        With no unresolved removals left, the result is proven 1-minimal.
        """
        found = self._sorted(failing)
        while True:
            rests = [self._close(frozenset(found) - {c}) for c in found]
            hit = self._first_failing(rests)
            if hit is None:
                return found, [rest for rest in rests if self._outcomes[rest] is not Outcome.PASS]
            found = found[:hit] + found[hit + 1 :]

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


def _split(items: list[str], n: int) -> list[list[str]]:
    """``items`` cut into ``n`` contiguous, nearly equal chunks."""
    bounds = [len(items) * i // n for i in range(n + 1)]
    return [items[a:b] for a, b in pairwise(bounds)]
