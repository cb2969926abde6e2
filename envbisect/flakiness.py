"""Repeated runs of one set: what they mean, how many are enough, and how sure a run is.

A probe that fails only some of the times it runs (a worker that stalls on about
half its starts) still decides sets, if each set is probed often enough:

* A set **fails** when any of its runs fails (the failure is possible with it) and
  **passes** only when all its runs pass (:func:`outcome_of`).
* The bad set's runs give its failure rate; with the uniform prior, ``f`` failures in
  ``n`` runs give the posterior Beta(f + 1, n - f + 1) for the rate of any set that
  holds the culprit. :func:`miss_chance` is the chance, under that posterior, that
  such a set passes all ``k`` of its runs — the one way a failing set is misjudged.
* :func:`choose_runs` takes the smallest ``k`` that keeps this chance within the
  run's risk (1 %) spread over every trial of the search that could be misjudged
  (:func:`trials_at_risk`).
* :func:`confidence` is the chance that none of the sets the run saw pass hid a
  failure: the product of ``1 - miss_chance`` over the passing trials.

Pure arithmetic: no probes, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from envbisect.model import Outcome, Rate

#: The chance, over a whole search, that some failing set passes all its runs.
RISK = 0.01
#: ``--flaky``: the bad set's runs that estimate its failure rate: at most this many …
ESTIMATE_RUNS = 50
#: … stopping early once this many have failed (enough to know the rate roughly).
ESTIMATE_FAILURES = 6
#: ``--flaky``: the good set's runs beside them (its confirmation adds K more).
GOOD_RUNS = 10
#: The most runs a set gets: a rarer failure cannot be told apart within a useful time.
MOST_RUNS = 100


def outcome_of(outcomes: Sequence[Outcome]) -> Outcome:
    """A set's outcome from its runs: any failure fails it, all passes pass it.

    Runs that neither fail nor agree (a pass and a skip, a pass and an error) leave it
    :attr:`~envbisect.model.Outcome.FLAKY`: undecided.
    """
    if Outcome.FAIL in outcomes:
        return Outcome.FAIL
    kinds = set(outcomes)
    return kinds.pop() if len(kinds) == 1 else Outcome.FLAKY


def miss_chance(rate: Rate, runs: int) -> float:
    """The chance that a set failing as often as the bad set passes all ``runs`` runs.

    Under the posterior Beta(a, b) of the rate (a = failed + 1, b = passed + 1), it is
    E[(1 - p)^k] = B(a, b + k) / B(a, b).
    """
    a, b = rate.failed + 1, rate.runs - rate.failed + 1
    return math.exp(
        math.lgamma(b + runs) - math.lgamma(b) + math.lgamma(a + b) - math.lgamma(a + b + runs)
    )


def trials_at_risk(changes: int) -> int:
    """A bound on the trials of a search over ``changes`` whose pass could be a miss.

    The binary search and its check that the kept members fail on their own (two
    passes of ⌈log₂(N + 1)⌉ each), and the confirmation.
    """
    return 2 * math.ceil(math.log2(changes + 1)) + 2


def choose_runs(rate: Rate, changes: int, risk: float = RISK) -> int | None:
    """The fewest runs a set needs so that the search misjudges no failing set, within
    ``risk``; None when more than :data:`MOST_RUNS` would be needed (or nothing failed)."""
    if rate.failed == 0:
        return None
    target = risk / trials_at_risk(changes)
    for runs in range(1, MOST_RUNS + 1):
        if miss_chance(rate, runs) <= target:
            return runs
    return None


def confidence(rate: Rate, passing: Iterable[int]) -> float:
    """The chance that none of the passing trials (given by their run counts) hid a failure."""
    sure = 1.0
    for runs in passing:
        sure *= 1.0 - miss_chance(rate, runs)
    return sure
