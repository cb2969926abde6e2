"""Properties of the pure search, against fake oracles (the search does no I/O)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envbisect.search import Outcome, SearchResult, SearchStatus, Subset, bisect

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


# -- properties ------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), n=st.integers(1, 200), jobs=st.integers(1, 4))
def test_monotone_culprits_are_found_exactly(data: st.DataObject, n: int, jobs: int) -> None:
    changes = data.draw(st.permutations(names(n)))
    culprits = data.draw(culprits_of(changes))
    result, _ = run(changes, needs(culprits), jobs=jobs)
    assert_one_minimal(result, needs(culprits), no_deps)
    assert result.culprits == culprits
    assert result.interaction == (len(culprits) > 1)
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
def test_parallel_jobs_never_cost_extra_trials(data: st.DataObject, n: int, jobs: int) -> None:
    culprit = data.draw(st.sampled_from(names(n)))
    prepared: list[Subset] = []
    oracle = FakeOracle(needs(frozenset({culprit})), no_deps)

    def prepare(subsets: Sequence[Subset]) -> None:
        assert all(no_deps(s) == s for s in subsets)
        prepared.extend(subsets)
        oracle.batches.append([])  # a marker: what was announced before the next batch

    result = bisect(names(n), no_deps, oracle, jobs=jobs, prepare=prepare)
    assert result.culprits == {culprit}
    calls = [s for batch in oracle.batches for s in batch]
    # Sanity pair + binary search + test({culprit}): the target of ceil(log2 N) + 4
    # trials including the sanity pair leaves one for the runner's confirmation.
    assert len(calls) <= math.ceil(math.log2(n)) + 3
    # Every binary-search step after the first was announced before it ran.
    searched = [s for s in calls[2:] if s != frozenset({culprit})]
    assert all(s in prepared for s in searched[1:])


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
    assert result.interaction


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
    assert not result.interaction
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
    assert not result.interaction


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
    assert result.interaction  # ddmin ran
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
