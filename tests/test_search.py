"""Properties of the pure search, against fake oracles (the search does no I/O)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envbisect.linesearch import first_failing
from envbisect.model import Outcome
from envbisect.search import SearchResult, SearchStatus, Subset, bisect

PROPERTY = settings(max_examples=200, deadline=None)
FEW = settings(max_examples=60, deadline=None)

Verdict = Callable[[Subset], Outcome]


def names(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


def transitive(deps: dict[str, set[str]]) -> Callable[[Subset], Subset]:
    """The closure of a dependency graph: a subset plus everything it needs."""

    def closure(subset: Subset) -> Subset:
        seen = set(subset)
        todo = list(subset)
        while todo:
            for dep in deps.get(todo.pop(), ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return frozenset(seen)

    return closure


def no_deps(subset: Subset) -> Subset:
    return subset


def needs(culprits: Subset) -> Verdict:
    """Monotone truth: fails iff every culprit is present."""
    return lambda subset: Outcome.FAIL if culprits <= subset else Outcome.PASS


def stable_hash(*parts: object) -> int:
    text = "\x00".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class FakeOracle:
    """Answers from ``verdict``; records batches and checks the search's promises."""

    verdict: Verdict
    closure: Callable[[Subset], Subset]
    batches: list[list[Subset]] = field(default_factory=list)

    def __call__(self, batch: Sequence[Subset]) -> list[Outcome]:
        for subset in batch:
            assert self.closure(subset) == subset, f"not closed: {sorted(subset)}"
            assert all(subset not in seen for seen in self.batches), f"twice: {sorted(subset)}"
        self.batches.append(list(batch))
        return [self.verdict(subset) for subset in batch]

    @property
    def calls(self) -> list[Subset]:
        return [subset for batch in self.batches for subset in batch]


def run(
    changes: Sequence[str],
    verdict: Verdict,
    closure: Callable[[Subset], Subset] = no_deps,
    jobs: int = 1,
) -> tuple[SearchResult, FakeOracle]:
    oracle = FakeOracle(verdict, closure)
    result = bisect(changes, closure, oracle, jobs=jobs)
    assert [t.subset for t in result.tests] == oracle.calls
    assert result.rounds == len(oracle.batches)
    assert result.failing_set == closure(result.culprits)
    for batch in oracle.batches[1:]:
        assert len(batch) <= jobs
    if oracle.batches:
        assert len(oracle.batches[0]) <= 2
    return result, oracle


def assert_one_minimal(
    result: SearchResult, verdict: Verdict, closure: Callable[[Subset], Subset]
) -> None:
    """FOUND must be true of the oracle itself: failing, and failing without no member."""
    assert result.status is SearchStatus.FOUND
    assert result.culprits
    assert verdict(closure(result.culprits)) is Outcome.FAIL
    for culprit in result.culprits:
        assert verdict(closure(result.culprits - {culprit})) is Outcome.PASS


@st.composite
def graphs(draw: st.DrawFn, max_n: int = 200) -> tuple[list[str], dict[str, set[str]]]:
    """Changes in random order, each depending on a few earlier-numbered changes."""
    n = draw(st.integers(1, max_n))
    pool = names(n)
    deps: dict[str, set[str]] = {}
    if n > 1:
        edges = draw(st.lists(st.tuples(st.integers(1, n - 1), st.integers(0, n - 2)), max_size=n))
        for a, b in edges:
            if b < a:
                deps.setdefault(pool[a], set()).add(pool[b])
    return draw(st.permutations(pool)), deps


def culprits_of(changes: list[str], most: int = 3) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(changes), min_size=1, max_size=min(most, len(changes)))


def log_ceil(n: int, base: int) -> int:
    """⌈log_base n⌉ in integers (floats round 243 = 3**5 the wrong way)."""
    rounds, reach = 0, 1
    while reach < n:
        rounds, reach = rounds + 1, reach * base
    return rounds


# -- properties ------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), n=st.integers(1, 200), jobs=st.integers(1, 4))
def test_monotone_culprits_are_found_exactly(data: st.DataObject, n: int, jobs: int) -> None:
    changes = data.draw(st.permutations(names(n)))
    culprits = data.draw(culprits_of(changes))
    result, _ = run(changes, needs(culprits), jobs=jobs)
    assert_one_minimal(result, needs(culprits), no_deps)
    assert result.culprits == culprits
    assert result.disagreements == ()


@PROPERTY
@given(data=st.data(), n=st.integers(1, 200))
def test_single_culprit_costs_a_binary_search(data: st.DataObject, n: int) -> None:
    culprit = data.draw(st.sampled_from(names(n)))
    result, oracle = run(names(n), needs(frozenset({culprit})))
    assert result.culprits == {culprit}
    assert len(oracle.calls) - 2 <= math.ceil(math.log2(n)) + 3


@PROPERTY
@given(data=st.data(), n=st.integers(2, 200), jobs=st.integers(2, 8))
def test_parallel_rounds_are_announced(data: st.DataObject, n: int, jobs: int) -> None:
    culprit = data.draw(st.sampled_from(names(n)))
    prepared: list[Subset] = []
    oracle = FakeOracle(needs(frozenset({culprit})), no_deps)

    def prepare(subsets: Sequence[Subset]) -> None:
        assert all(no_deps(s) == s for s in subsets)
        assert not any(s in batch for batch in oracle.batches for s in subsets), "known set"
        prepared.extend(subsets)
        oracle.batches.append([])  # a marker: what was announced before the next batch

    result = bisect(names(n), no_deps, oracle, jobs=jobs, prepare=prepare)
    assert result.culprits == {culprit}
    calls = [s for batch in oracle.batches for s in batch]
    # Sanity pair + at most P split points a round + test({culprit}).
    assert len(calls) <= 2 + jobs * log_ceil(n, jobs + 1) + 1
    # Every search round was announced before it ran, the first before the sanity round.
    assert oracle.batches[0] == [] and oracle.batches[1] == [frozenset(), frozenset(names(n))]
    searched = [s for batch in oracle.batches[2:] for s in batch]
    assert all(s in prepared for s in searched)


def test_the_likeliest_next_round_is_announced_first() -> None:
    announced: list[list[Subset]] = []
    prefix = [frozenset(names(121)[:m]) for m in range(122)]
    bisect(
        names(121),
        no_deps,
        FakeOracle(needs(frozenset({"p0"})), no_deps),
        jobs=2,
        prepare=lambda subsets: announced.append(list(subsets)),
    )
    # Before the sanity pair: the first round, which splits 121 changes at the middle
    # and the quarter (the ⌈log_3 121⌉ = 5 rounds allow the upper half: 61 ≤ 81).
    assert announced[0][:2] == [prefix[30], prefix[60]]
    # Before it runs: that round, then the next round if both pass (the upper part
    # holds 61 of the 121 boundaries): its top part may hold 27 (four rounds left).
    assert announced[1][:4] == [prefix[30], prefix[60], prefix[77], prefix[94]]


@PROPERTY
@given(data=st.data(), n=st.integers(1, 300), jobs=st.integers(1, 8))
def test_one_culprit_costs_log_p_plus_one_rounds(data: st.DataObject, n: int, jobs: int) -> None:
    changes = data.draw(st.permutations(names(n)))
    culprit = data.draw(st.sampled_from(changes))
    result, _ = run(changes, needs(frozenset({culprit})), jobs=jobs)
    assert result.culprits == {culprit}
    # The sanity round, ⌈log_(P+1) N⌉ rounds of P split points (the N prefixes hold N
    # boundaries; each round leaves one of P+1 nearly equal parts), and the culprit alone.
    # Its minimality check is free: without it the set is the good set, known to pass.
    assert result.rounds <= 1 + log_ceil(n, jobs + 1) + 1


@PROPERTY
@given(data=st.data(), n=st.integers(1, 200))
def test_one_at_a_time_is_one_split_point_a_round(data: st.DataObject, n: int) -> None:
    culprits = data.draw(culprits_of(names(n)))
    result, oracle = run(names(n), needs(culprits))
    assert [len(batch) for batch in oracle.batches[1:]] == [1] * (result.rounds - 1)


@PROPERTY
@given(graph=graphs(), data=st.data(), jobs=st.integers(2, 6))
def test_parallel_search_finds_what_one_at_a_time_finds(
    graph: tuple[list[str], dict[str, set[str]]], data: st.DataObject, jobs: int
) -> None:
    changes, deps = graph
    closure = transitive(deps)
    truth = needs(data.draw(culprits_of(changes)))
    alone, _ = run(changes, truth, closure)
    parallel, _ = run(changes, truth, closure, jobs=jobs)
    assert (parallel.status, parallel.culprits) == (alone.status, alone.culprits)
    assert parallel.rounds <= alone.rounds


@PROPERTY
@given(graph=graphs(), data=st.data(), jobs=st.integers(1, 3))
def test_dependencies_give_a_minimal_chosen_set(
    graph: tuple[list[str], dict[str, set[str]]], data: st.DataObject, jobs: int
) -> None:
    changes, deps = graph
    closure = transitive(deps)
    truth = needs(data.draw(culprits_of(changes)))
    result, _ = run(changes, truth, closure, jobs=jobs)
    assert_one_minimal(result, truth, closure)


@PROPERTY
@given(data=st.data(), n=st.integers(2, 120), jobs=st.integers(1, 3))
def test_pair_interaction(data: st.DataObject, n: int, jobs: int) -> None:
    changes = data.draw(st.permutations(names(n)))
    pair = data.draw(st.frozensets(st.sampled_from(changes), min_size=2, max_size=2))
    result, _ = run(changes, needs(pair), jobs=jobs)
    assert result.status is SearchStatus.FOUND
    assert result.culprits == pair


@PROPERTY
@given(graph=graphs(max_n=40), seed=st.integers(0, 2**32), jobs=st.integers(1, 3))
def test_arbitrary_oracles_never_get_a_wrong_answer(
    graph: tuple[list[str], dict[str, set[str]]], seed: int, jobs: int
) -> None:
    changes, deps = graph
    closure = transitive(deps)
    full = closure(frozenset(changes))

    def truth(subset: Subset) -> Outcome:
        if not subset:
            return Outcome.PASS
        if subset == full or stable_hash(seed, sorted(subset)) % 2:
            return Outcome.FAIL
        return Outcome.PASS

    result, _ = run(changes, truth, closure, jobs=jobs)
    assert result.status in (SearchStatus.FOUND, SearchStatus.INCONSISTENT)
    if result.status is SearchStatus.FOUND:
        assert_one_minimal(result, truth, closure)
    else:
        assert result.culprits == frozenset()


@PROPERTY
@given(
    graph=graphs(max_n=80),
    data=st.data(),
    seed=st.integers(0, 2**32),
    percent=st.integers(0, 90),
    unresolved=st.sampled_from([Outcome.SKIP, Outcome.FLAKY, Outcome.ERROR]),
    jobs=st.integers(1, 3),
)
def test_unresolved_outcomes_never_give_a_wrong_answer(
    graph: tuple[list[str], dict[str, set[str]]],
    data: st.DataObject,
    seed: int,
    percent: int,
    unresolved: Outcome,
    jobs: int,
) -> None:
    changes, deps = graph
    closure = transitive(deps)
    culprits = data.draw(culprits_of(changes))
    truth = needs(culprits)
    sure = {frozenset(), closure(frozenset(changes)), closure(culprits)}

    def flaky(subset: Subset) -> Outcome:
        if subset not in sure and stable_hash(seed, sorted(subset)) % 100 < percent:
            return unresolved
        return truth(subset)

    result, _ = run(changes, flaky, closure, jobs=jobs)
    assert result.status in (SearchStatus.FOUND, SearchStatus.INCONSISTENT)
    if result.status is SearchStatus.FOUND:
        assert_one_minimal(result, truth, closure)
    else:
        assert result.disagreements
    if len(culprits) == 1 and not deps:
        assert result.culprits == culprits  # ∅ is a sure PASS, so {x} is provably minimal


@FEW
@given(n=st.integers(0, 50), jobs=st.integers(1, 3))
def test_good_fails(n: int, jobs: int) -> None:
    result, oracle = run(names(n), lambda _: Outcome.FAIL, jobs=jobs)
    assert result.status is SearchStatus.GOOD_FAILS
    assert result.culprits == frozenset()
    assert len(oracle.batches) == 1


@FEW
@given(
    n=st.integers(1, 50),
    bad=st.sampled_from([Outcome.PASS, Outcome.SKIP, Outcome.ERROR, Outcome.FLAKY]),
)
def test_bad_passes(n: int, bad: Outcome) -> None:
    result, oracle = run(names(n), lambda s: bad if s else Outcome.PASS)
    assert result.status is SearchStatus.BAD_PASSES
    assert [t.round for t in result.tests] == [0, 0]
    assert len(oracle.batches) == 1


# -- examples --------------------------------------------------------------------------


def test_no_changes_calls_the_oracle_once() -> None:
    result, oracle = run([], lambda _: Outcome.PASS)
    assert result.status is SearchStatus.BAD_PASSES
    assert oracle.batches == [[frozenset()]]


def test_unresolved_good_set_is_good_fails() -> None:
    result, _ = run(["a"], lambda s: Outcome.FAIL if s else Outcome.SKIP)
    assert result.status is SearchStatus.GOOD_FAILS


def test_one_change() -> None:
    result, oracle = run(["a"], needs(frozenset({"a"})))
    assert result.status is SearchStatus.FOUND
    assert result.culprits == {"a"}
    assert len(oracle.calls) == 2


@pytest.mark.parametrize("culprit", ["a", "b"])
def test_two_changes(culprit: str) -> None:
    result, _ = run(["a", "b"], needs(frozenset({culprit})))
    assert result.culprits == {culprit}
    assert [t.round for t in result.tests[:2]] == [0, 0]


@pytest.mark.parametrize("position", [0, 99])
@pytest.mark.parametrize("jobs", [1, 4])
def test_culprit_at_either_end(position: int, jobs: int) -> None:
    changes = names(100)
    result, _ = run(changes, needs(frozenset({changes[position]})), jobs=jobs)
    assert result.culprits == {changes[position]}


def test_telemetry_shim_needs_gevent() -> None:
    deps = {"telemetry-shim": {"gevent"}, "gevent": {"greenlet"}}
    closure = transitive(deps)
    truth = needs(frozenset({"telemetry-shim", "gevent"}))
    result, _ = run(["gevent", "greenlet", "telemetry-shim", "locust"], truth, closure)
    assert result.status is SearchStatus.FOUND
    assert result.culprits == {"telemetry-shim"}
    assert result.failing_set == {"telemetry-shim", "gevent", "greenlet"}


def test_dependencies_are_searched_first() -> None:
    # p{i} needs p{i-1}: any set holding a dependent of p10 also fails, and is also 1-minimal;
    # searching dependencies first blames p10 itself, whatever order the changes come in
    changes = names(64)
    closure = transitive({changes[i]: {changes[i - 1]} for i in range(1, 64)})
    result, oracle = run(changes[::-1], needs(frozenset({"p10"})), closure)
    assert result.culprits == {"p10"}
    assert len(oracle.calls) <= 2 + 6 + 1


def test_all_smaller_sets_unresolved_is_inconsistent() -> None:
    changes = names(6)
    full = frozenset(changes)

    def verdict(subset: Subset) -> Outcome:
        return Outcome.PASS if not subset else Outcome.FAIL if subset == full else Outcome.SKIP

    result, _ = run(changes, verdict)
    assert result.status is SearchStatus.INCONSISTENT
    assert result.culprits == frozenset()
    assert result.disagreements


def test_non_monotone_results_are_reported() -> None:
    # p1 hides p0's failure, except in the full set
    def verdict(subset: Subset) -> Outcome:
        fail = "p0" in subset and ("p1" not in subset or len(subset) == 4)
        return Outcome.FAIL if fail else Outcome.PASS

    result, _ = run(names(4), verdict)
    assert_one_minimal(result, verdict, no_deps)
    assert result.culprits == {"p0"}
    assert frozenset({"p0"}) in result.disagreements


def test_ddmin_tests_subsets_and_complements_in_one_batch() -> None:
    # The prefixes are untestable, so ddmin must find the pair {p0, p2}: a complement.
    verdicts = {
        frozenset(): Outcome.PASS,
        frozenset({"p0", "p1", "p2"}): Outcome.FAIL,
        frozenset({"p0", "p2"}): Outcome.FAIL,
        frozenset({"p0"}): Outcome.PASS,
        frozenset({"p2"}): Outcome.PASS,
    }
    result, oracle = run(names(3), lambda s: verdicts.get(s, Outcome.SKIP), jobs=3)
    assert result.culprits == {"p0", "p2"}
    assert oracle.batches == [
        [frozenset(), frozenset({"p0", "p1", "p2"})],
        # both split points, and the spare trial speculates on {p1} being the culprit
        [frozenset({"p0"}), frozenset({"p0", "p1"}), frozenset({"p1"})],
        [frozenset({"p1", "p2"})],  # ddmin, two chunks: {p0} is known
        # three chunks: subsets {p1} and {p0} are known; {p2}, then complements
        [frozenset({"p2"}), frozenset({"p0", "p2"})],
    ]


def test_a_known_failure_ends_the_order_before_new_sets() -> None:
    # The prefixes are left unresolved, so ddmin runs; at three chunks the complement of
    # the middle one closes to the whole failing set (known to fail): the complement after
    # it must not be tested, whatever P is.
    deps = {"p4": {"p2"}, "p1": {"p0"}, "p7": {"p4"}, "p8": {"p0"}}
    order = ["p5", "p10", "p6", "p9", "p3", "p2", "p0", "p4", "p1", "p8", "p7"]
    skip = {
        frozenset({"p0", "p1", "p10", "p2", "p3", "p4", "p5", "p6", "p8", "p9"}),
        frozenset({"p0", "p1", "p2", "p4", "p7", "p8"}),
        frozenset({"p0", "p2", "p4"}),
    }
    truth = needs(frozenset({"p8"}))
    closure = transitive(deps)
    for jobs in (1, 2, 3):
        result, oracle = run(
            order, lambda s: Outcome.SKIP if s in skip else truth(s), closure, jobs
        )
        assert result.culprits == {"p8"}
        assert frozenset({"p0", "p2", "p3", "p4", "p6", "p9"}) not in oracle.calls


def test_rounds_number_the_batches() -> None:
    result, oracle = run(names(30), needs(frozenset({"p17"})), jobs=3)
    assert [t.round for t in result.tests] == [
        i for i, batch in enumerate(oracle.batches) for _ in batch
    ]


def test_jobs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="jobs"):
        bisect(["a"], no_deps, FakeOracle(needs(frozenset({"a"})), no_deps), jobs=0)


def test_oracle_must_answer_every_subset() -> None:
    with pytest.raises(ValueError, match="outcomes"):
        bisect(["a"], no_deps, lambda batch: [Outcome.PASS])


# -- the line search -------------------------------------------------------------------


@PROPERTY
@given(count=st.integers(2, 300), jobs=st.integers(1, 8), data=st.data())
def test_line_search_takes_log_p_plus_one_rounds(
    count: int, jobs: int, data: st.DataObject
) -> None:
    boundary = data.draw(st.integers(1, count - 1))
    batches: list[list[int]] = []

    def test(points: Sequence[int]) -> list[Outcome]:
        assert 1 <= len(points) <= jobs
        batches.append(list(points))
        return [Outcome.FAIL if point >= boundary else Outcome.PASS for point in points]

    found = first_failing(count, test, jobs=jobs)
    assert (found.last_pass, found.first_fail) == (boundary - 1, boundary)
    tested = [point for batch in batches for point in batch]
    assert len(tested) == len(set(tested))
    assert 0 not in tested and count - 1 not in tested  # the ends are known
    assert len(batches) <= log_ceil(count - 1, jobs + 1)


@PROPERTY
@given(
    count=st.integers(3, 120), jobs=st.integers(2, 6), seed=st.integers(0, 2**32), data=st.data()
)
def test_line_search_steps_around_unresolved_points_whatever_p(
    count: int, jobs: int, seed: int, data: st.DataObject
) -> None:
    boundary = data.draw(st.integers(1, count - 1))

    def verdict(point: int) -> Outcome:
        if 0 < point < count - 1 and stable_hash(seed, point) % 3 == 0:
            return Outcome.SKIP
        return Outcome.FAIL if point >= boundary else Outcome.PASS

    def batch(points: Sequence[int]) -> list[Outcome]:
        return [verdict(point) for point in points]

    alone = first_failing(count, batch)
    parallel = first_failing(count, batch, jobs=jobs)
    assert alone.last_pass < boundary <= alone.first_fail
    assert all(verdict(point) is Outcome.SKIP for point in alone.unresolved)
    # The boundary, and the untestable points that hide it, do not depend on P.
    assert (parallel.last_pass, parallel.first_fail) == (alone.last_pass, alone.first_fail)


@PROPERTY
@given(count=st.integers(2, 300), jobs=st.integers(1, 8))
def test_a_round_leaves_the_cheap_outcome_half_the_line(count: int, jobs: int) -> None:
    # Only a round whose every trial passes is cheap (a failing trial waits out its time
    # limit): the top part, which that round leaves, is the binary search's upper half,
    # as far as the ⌈log_(P+1) n⌉ round bound allows.
    batches: list[list[int]] = []

    def test(points: Sequence[int]) -> list[Outcome]:
        batches.append(list(points))
        return [Outcome.FAIL for _ in points]

    first_failing(count, test, jobs=jobs)
    n = count - 1  # boundaries on the line
    if n - 1 <= jobs:  # every point fits in one round
        assert batches == ([list(range(1, n))] if n > 1 else [])
        return
    cap = (jobs + 1) ** (log_ceil(n, jobs + 1) - 1)  # what a part may hold
    parts = [b - a for a, b in pairwise([0, *batches[0], n])]
    assert max(parts) <= cap
    assert parts[-1] == max(parts)
    assert parts[-1] >= min(cap, n // 2, n - jobs)  # the points need room below it
