"""Version narrowing's pure parts: which releases lie between, and the line bisection."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envbisect.linesearch import first_failing
from envbisect.model import Outcome
from envbisect.narrow import versions_between

PIKA = ["1.5.0rc1", "1.4.4", "1.4.2", "1.3.0", "1.3.0rc5", "1.0.0", "1.0.0b2", "0.13.1", "0.12.0"]


def test_downgrade_runs_from_the_good_version_down() -> None:
    assert versions_between(PIKA, "1.4.4", "0.12.0") == [
        "1.4.4",
        "1.4.2",
        "1.3.0",
        "1.0.0",
        "0.13.1",
        "0.12.0",
    ]


def test_upgrade_runs_up_and_ends_are_kept_even_when_not_listed() -> None:
    # 1.4.3 was yanked (pip does not list it); the ends are what the two sides had.
    assert versions_between(PIKA, "1.0.0", "1.4.3") == ["1.0.0", "1.3.0", "1.4.2", "1.4.3"]


def test_pre_releases_only_when_an_end_is_one() -> None:
    assert "1.3.0rc5" not in versions_between(PIKA, "1.0.0", "1.4.4")
    assert versions_between(PIKA, "1.0.0", "1.3.0rc5") == ["1.0.0", "1.3.0rc5"]
    assert versions_between(PIKA, "0.13.1", "1.3.0rc5") == [
        "0.13.1",
        "1.0.0b2",
        "1.0.0",
        "1.3.0rc5",
    ]


def test_adjacent_versions_have_nothing_between() -> None:
    assert versions_between(PIKA, "1.4.2", "1.4.4") == ["1.4.2", "1.4.4"]


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 60), st.data())
def test_first_failing_finds_the_boundary_in_log_tests(count: int, data: st.DataObject) -> None:
    boundary = data.draw(st.integers(1, count - 1))
    tested: list[int] = []

    def test(points: list[int]) -> list[Outcome]:
        tested.extend(points)
        return [Outcome.FAIL if point >= boundary else Outcome.PASS for point in points]

    found = first_failing(count, test)
    assert (found.last_pass, found.first_fail) == (boundary - 1, boundary)
    assert found.unresolved == []
    assert len(tested) == len(set(tested)) <= math.ceil(math.log2(count - 1)) + 1
    assert 0 not in tested and count - 1 not in tested  # the ends are known


def test_first_failing_steps_around_untestable_points() -> None:
    verdicts = {1: Outcome.PASS, 2: Outcome.SKIP, 3: Outcome.FAIL, 4: Outcome.FAIL}
    found = first_failing(6, lambda points: [verdicts[point] for point in points])
    assert (found.last_pass, found.first_fail) == (1, 3)
    assert found.unresolved == [2]  # the first failure may be 2 or 3: not guessed


def test_first_failing_needs_both_ends() -> None:
    with pytest.raises(ValueError, match="its passing and its failing end"):
        first_failing(1, lambda points: [Outcome.PASS for _ in points])
