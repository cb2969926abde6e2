"""Intermittent failures: what repeated runs mean, how many are enough, and whether the search,
fed by a random oracle, still names the right culprit (the pure parts: no probes)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from envbisect.flakiness import (
    ESTIMATE_FAILURES,
    ESTIMATE_RUNS,
    RISK,
    choose_runs,
    confidence,
    miss_chance,
    outcome_of,
    trials_at_risk,
)
from envbisect.model import Outcome, Rate, percent
from envbisect.search import SearchStatus, Subset, bisect

PASS, FAIL, SKIP, ERROR = Outcome.PASS, Outcome.FAIL, Outcome.SKIP, Outcome.ERROR


@pytest.mark.parametrize(
    ("runs", "outcome"),
    [
        ([PASS, PASS, PASS], PASS),
        ([PASS, FAIL, PASS], FAIL),  # the failure is possible with this set
        ([FAIL, ERROR], FAIL),
        ([SKIP, SKIP], SKIP),
        ([PASS, SKIP], Outcome.FLAKY),  # neither failed nor agreed: undecided
        ([PASS, ERROR], Outcome.FLAKY),
    ],
)
def test_any_failed_run_fails_the_set_and_only_all_passes_pass_it(
    runs: list[Outcome], outcome: Outcome
) -> None:
    assert outcome_of(runs) is outcome


def test_the_miss_chance_is_the_beta_posterior_mean_of_passing_every_run() -> None:
    # 1 failure in 1 run: Beta(2, 1), E[(1-p)^k] = 2 / ((k + 1)(k + 2)).
    for k in range(1, 10):
        assert miss_chance(Rate(1, 1), k) == pytest.approx(2 / ((k + 1) * (k + 2)))
    # Numerically, against the integral over the posterior density.
    rate, k = Rate(6, 11), 9
    a, b = rate.failed + 1, rate.runs - rate.failed + 1
    steps = 20000
    norm = math.gamma(a + b) / (math.gamma(a) * math.gamma(b))
    integral = sum(
        norm * x ** (a - 1) * (1 - x) ** (b - 1 + k) / steps
        for x in ((i + 0.5) / steps for i in range(steps))
    )
    assert miss_chance(rate, k) == pytest.approx(integral, rel=1e-3)


@given(st.integers(1, 40), st.integers(0, 40), st.integers(1, 60))
def test_more_runs_miss_less_and_more_failures_miss_less(failed: int, more: int, k: int) -> None:
    rate = Rate(failed, failed + more)
    assert miss_chance(rate, k + 1) < miss_chance(rate, k)
    if more:
        assert miss_chance(Rate(failed + 1, failed + more), k) < miss_chance(rate, k)


def test_the_chosen_runs_are_the_fewest_that_keep_the_search_within_its_risk() -> None:
    rate, changes = Rate(6, 11), 12
    runs = choose_runs(rate, changes)
    assert runs is not None
    target = RISK / trials_at_risk(changes)
    assert miss_chance(rate, runs) <= target < miss_chance(rate, runs - 1)


def test_nothing_is_chosen_for_a_set_that_never_failed_or_fails_too_rarely() -> None:
    assert choose_runs(Rate(0, 20), 10) is None
    assert choose_runs(Rate(1, 20), 10) is None  # would need hundreds of runs a set
    assert choose_runs(Rate(20, 20), 10) == 3


def test_confidence_multiplies_the_chance_that_each_pass_was_real() -> None:
    rate = Rate(9, 18)
    assert confidence(rate, []) == 1.0
    assert confidence(rate, [10, 10]) == pytest.approx((1 - miss_chance(rate, 10)) ** 2)


def test_percentages_never_round_to_certainty() -> None:
    assert percent(0.99999) == ">99.9 %"
    assert percent(0.00001) == "<0.1 %"
    assert percent(0.5) == "50.0 %"


# The search against a random oracle: a set holding every culprit fails each run with
# chance p; any other set always passes. The run as the procedure does it: the bad set's
# runs estimate the rate, K is chosen from it, each search trial fails at its first failed
# run, and the culprit set must fail again in K runs.


def triage(
    changes: Sequence[str],
    culprits: Subset,
    p: float,
    rng: random.Random,
    runs: int | None = None,
) -> Subset | None:
    """The named culprits, or None when the run does not name any (``runs``: K, forced)."""

    def run_once(subset: Subset) -> Outcome:
        return FAIL if culprits <= subset and rng.random() < p else PASS

    def probe(subset: Subset, runs: int, stop_after: int | None) -> Outcome:
        seen: list[Outcome] = []
        while len(seen) < runs and (stop_after is None or seen.count(FAIL) < stop_after):
            seen.append(run_once(subset))
        return outcome_of(seen)

    everything = frozenset(changes)
    estimate = []
    while len(estimate) < ESTIMATE_RUNS and estimate.count(FAIL) < ESTIMATE_FAILURES:
        estimate.append(run_once(everything))
    runs = runs or choose_runs(Rate.of(estimate), len(changes))
    if runs is None:
        return None
    known = {frozenset(): PASS, everything: FAIL}

    def oracle(batch: Sequence[Subset]) -> list[Outcome]:
        return [known.get(subset) or probe(subset, runs, 1) for subset in batch]

    result = bisect(changes, lambda subset: subset, oracle)
    if result.status is not SearchStatus.FOUND:
        return None
    if probe(result.failing_set, runs, None) is not FAIL:
        return None  # the confirmation refutes it: inconsistent, no name
    return result.culprits


@pytest.mark.parametrize("p", [0.3, 0.5, 0.8])
def test_a_flaky_culprit_is_named_right_in_99_percent_of_seeds(p: float) -> None:
    seeds = 300
    wrong = []
    for seed in range(seeds):
        rng = random.Random(seed)
        changes = [f"c{i:03d}" for i in range(rng.randint(2, 120))]
        culprits = frozenset(rng.sample(changes, rng.choice([1, 1, 1, 2])))
        named = triage(changes, culprits, p, rng)
        if named != culprits:
            wrong.append((seed, sorted(culprits), named))
    assert len(wrong) <= seeds // 100, wrong


def test_not_vacuous_one_run_a_set_often_misses_the_flaky_culprit() -> None:
    misses = 0
    for seed in range(100):
        rng = random.Random(seed)
        changes = [f"c{i:03d}" for i in range(rng.randint(2, 120))]
        culprits = frozenset(rng.sample(changes, 1))
        misses += triage(changes, culprits, 0.3, rng, runs=1) != culprits
    assert misses > 30
