"""The run's policy, against a scripted trial runner: no broker, no envs, no installer.

As dramatiq's StubBroker and pip-tools' FakeRepository stand in for the real
thing, :class:`ScriptedRunner` implements the trial-runner seam from a script:
a function of the installed package set gives each probe's outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.utils import NormalizedName, canonicalize_name

from envbisect.delta import Delta, Package, Packages
from envbisect.errors import EnvironmentBuildError, InputError
from envbisect.flakiness import outcome_of
from envbisect.limits import Limits
from envbisect.model import Diagnosis, Outcome, Phase, ProbeResult, Trial, TrialEnv, Verdict
from envbisect.options import Options
from envbisect.probes.base import Later, Probe
from envbisect.procedure import Procedure
from envbisect.sides import Side
from envbisect.trials import TrialRequest
from envbisect.venvs import Interpreter
from envbisect.wheelsource import WheelSource

Script = Callable[[Packages, int], Outcome]  # (package set, its runs before) → a run's outcome


def pkg(name: str, version: str, *requires: str) -> Package:
    return Package(canonicalize_name(name), name, version, requires=requires)


GOOD = {p.name: p for p in [pkg("dramatiq", "1.17.0"), pkg("pika", "1.3.2")]}
BAD = {
    p.name: p
    for p in [
        pkg("dramatiq", "1.17.0"),
        pkg("pika", "1.3.2"),
        pkg("locust", "2.0", "gevent"),
        pkg("gevent", "24.2"),
        pkg("rich", "13.0"),
        pkg("six", "1.16"),
    ]
}


class ScriptedProbe(Probe):
    """Never run: the scripted runner decides instead."""

    def run(self, trial: TrialEnv, token: str, limits: Limits, later: Later) -> ProbeResult:
        raise AssertionError("the scripted runner probes nothing")

    def settings(self) -> str:
        return "scripted"

    def describe(self) -> str:
        return "scripted probe"

    def unusable(self, result: ProbeResult) -> str | None:
        return result.setup_error


class ScriptedRunner:
    """A :class:`~envbisect.trials.TrialRunner` whose outcomes come from a script."""

    def __init__(self, script: Script, timings: Mapping[str, float] | None = None) -> None:
        self.script = script
        self.timings = dict(timings or {"boot": 0.5, "wait": 0.01})
        self.requests: list[TrialRequest] = []
        self.seen: dict[frozenset[Package], int] = {}
        self.prepared: list[Sequence[Packages]] = []

    def submit(
        self, request: TrialRequest, then: Callable[[Trial], None] | None = None
    ) -> Future[Trial]:
        self.requests.append(request)
        key = frozenset(request.packages.values())
        results: list[ProbeResult] = []
        for _ in range(request.runs):
            outcome = self.script(request.packages, self.seen.get(key, 0))
            self.seen[key] = self.seen.get(key, 0) + 1
            diagnosis = {
                Outcome.PASS: Diagnosis.CONSUMED,
                Outcome.FAIL: Diagnosis.DELIVERED_NOT_RUN,
                Outcome.SKIP: Diagnosis.SKIPPED,
                Outcome.ERROR: Diagnosis.ENV_BUILD,
            }[outcome]
            results.append(
                ProbeResult(outcome, diagnosis, f"scripted {outcome}", timings=self.timings)
            )
            failed = sum(r.outcome is Outcome.FAIL for r in results)
            if request.stop_after is not None and failed >= request.stop_after:
                break
        trial = Trial(
            request.index,
            request.phase,
            request.changes,
            outcome_of([r.outcome for r in results]),
            tuple(results),
            substitute=request.substitute,
        )
        future: Future[Trial] = Future()
        try:
            if then is not None:
                then(trial)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(trial)
        return future

    def prepare(self, upcoming: Sequence[Packages]) -> None:
        self.prepared.append(upcoming)

    def close(self) -> list[str]:
        return []


class FakeWheels(WheelSource):
    """Releases of one package; fetching one of ``broken`` fails."""

    name = "fake"

    def __init__(self, releases: Sequence[str] = (), broken: Sequence[str] = ()) -> None:
        self.releases = list(releases)
        self.broken = set(broken)

    def wheel_for(self, package: Package) -> Path:
        return Path("/nonexistent") / f"{package.name}-{package.version}.whl"

    def fetch(self, pins: Sequence[str]) -> dict[NormalizedName, Package]:
        (pin,) = pins
        name, version = pin.split("==")
        if version in self.broken:
            raise EnvironmentBuildError(f"no wheel of {pin}")
        return {canonicalize_name(name): pkg(name, version)}

    def versions(self, name: str, ends: tuple[str, str]) -> list[str]:
        return self.releases


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.trials: list[Trial] = []
        self.plans: list[tuple[Phase, int, int]] = []

    def say(self, text: str) -> None:
        self.lines.append(text)

    def trial_finished(self, trial: Trial) -> None:
        self.trials.append(trial)

    def plan(self, phase: Phase, bound: int, in_play: int) -> None:
        self.plans.append((phase, bound, in_play))


def procedure(
    runner: ScriptedRunner,
    good: Packages = GOOD,
    bad: Packages = BAD,
    wheels: WheelSource | None = None,
    **settings: object,
) -> Procedure:
    markers = dict(default_environment())
    interpreter = Interpreter(Path("/usr/bin/python3"), "3.12.0", markers, "cp312", "linux")
    sides = (
        Side("good.txt", good, interpreter, {}),
        Side(".tox/py312", bad, interpreter, {}),
    )
    options = Options(bad=Path(".tox/py312"), good=Path("good.txt"), cache_dir=Path("/c"))
    options = Options(**{**options.__dict__, **settings})
    delta = Delta(good, bad, markers, {})
    return Procedure(
        options, ScriptedProbe(), runner, wheels or FakeWheels(), sides, delta, Said(), 0.0
    )


def fails_with(*names: str) -> Script:
    """Fails when every one of ``names`` is installed."""
    return lambda packages, _: (
        Outcome.FAIL if all(canonicalize_name(n) in packages for n in names) else Outcome.PASS
    )


def test_names_the_culprit_and_confirms_both_ends_afresh() -> None:
    runner = ScriptedRunner(fails_with("gevent"))
    finding = procedure(runner).run()
    assert finding.verdict is Verdict.CULPRIT_FOUND
    assert [c.name for c in finding.culprits] == ["gevent"]
    confirm = [r for r in runner.requests if r.phase is Phase.CONFIRM]
    assert sorted(len(r.changes) for r in confirm) == [0, 1]
    assert not any(r.use_cache for r in confirm)
    # The confirmation runs with generous limits, not the search's adapted ones.
    assert all(r.limits.consume >= 6.0 for r in confirm)
    assert [t.index for t in finding.trials] == list(range(1, len(finding.trials) + 1))


def test_an_interaction_is_named_as_one() -> None:
    finding = procedure(ScriptedRunner(fails_with("gevent", "rich"))).run()
    assert finding.verdict is Verdict.CULPRIT_FOUND
    assert sorted(c.name for c in finding.culprits) == ["gevent", "rich"]
    assert "fail only together" in finding.note


def test_the_observer_hears_the_phase_the_expected_trials_and_the_changes_in_play() -> None:
    run = procedure(ScriptedRunner(fails_with("gevent")), jobs=1)
    run.run()
    said = run.observer
    assert isinstance(said, Said)
    phases = [phase for phase, _, _ in said.plans]
    assert phases[0] is Phase.GOOD and phases[-1] is Phase.CONFIRM
    assert Phase.SEARCH in phases
    # The sanity pair, ⌈log2 4⌉ = 2 search trials, two confirmations.
    assert said.plans[0] == (Phase.GOOD, 6, 4)
    in_play = [n for phase, _, n in said.plans if phase is Phase.SEARCH]
    assert in_play == sorted(in_play, reverse=True) and in_play[-1] < 4


def test_good_fails() -> None:
    finding = procedure(ScriptedRunner(lambda packages, _: Outcome.FAIL)).run()
    assert finding.verdict is Verdict.GOOD_FAILS
    assert finding.evidence is not None and finding.evidence.changes == frozenset()


def test_bad_passes() -> None:
    finding = procedure(ScriptedRunner(lambda packages, _: Outcome.PASS)).run()
    assert finding.verdict is Verdict.BAD_PASSES
    assert len(finding.trials) == 2


def test_a_good_set_that_fails_when_probed_again_is_inconsistent_not_a_culprit() -> None:
    def script(packages: Packages, seen: int) -> Outcome:
        if "gevent" in packages:
            return Outcome.FAIL
        return Outcome.FAIL if len(packages) == len(GOOD) and seen > 0 else Outcome.PASS

    finding = procedure(ScriptedRunner(script)).run()
    assert finding.verdict is Verdict.INCONSISTENT
    assert finding.culprits == ()
    assert finding.disagreements == (frozenset(),)
    assert "good set did not pass when probed again" in finding.note


def test_a_culprit_that_passes_on_confirmation_is_inconsistent() -> None:
    def script(packages: Packages, seen: int) -> Outcome:
        return Outcome.FAIL if "gevent" in packages and seen == 0 else Outcome.PASS

    finding = procedure(ScriptedRunner(script)).run()
    assert finding.verdict is Verdict.INCONSISTENT
    assert "did not fail again" in finding.note


def test_a_non_monotone_probe_is_inconsistent() -> None:
    # Each of two changes fails alone, and both together pass: no minimal failing set.
    def script(packages: Packages, _: int) -> Outcome:
        return Outcome.FAIL if ("rich" in packages) != ("six" in packages) else Outcome.PASS

    finding = procedure(ScriptedRunner(script)).run()
    assert finding.verdict in (Verdict.INCONSISTENT, Verdict.BAD_PASSES)
    assert finding.culprits == ()


def test_an_untestable_bad_set_is_undecided() -> None:
    def script(packages: Packages, _: int) -> Outcome:
        return Outcome.SKIP if len(packages) == len(BAD) else Outcome.PASS

    finding = procedure(ScriptedRunner(script)).run()
    assert finding.verdict is Verdict.INCONSISTENT
    assert "bad set is untestable" in finding.note


def test_a_good_set_that_cannot_be_built_is_an_environment_error() -> None:
    def script(packages: Packages, _: int) -> Outcome:
        return Outcome.ERROR if len(packages) == len(GOOD) else Outcome.FAIL

    with pytest.raises(EnvironmentBuildError, match="the good set"):
        procedure(ScriptedRunner(script)).run()


def test_a_probe_that_cannot_run_in_the_good_set_is_bad_input() -> None:
    class Unusable(ScriptedRunner):
        def submit(
            self, request: TrialRequest, then: Callable[[Trial], None] | None = None
        ) -> Future[Trial]:
            result = ProbeResult(Outcome.FAIL, Diagnosis.CRASHED, "x", setup_error="no module")
            trial = Trial(request.index, request.phase, request.changes, Outcome.FAIL, (result,))
            future: Future[Trial] = Future()
            try:
                assert then is not None
                then(trial)
                future.set_result(trial)
            except InputError as exc:
                future.set_exception(exc)
            return future

    with pytest.raises(InputError, match="no module"):
        procedure(Unusable(fails_with("gevent"))).run()


def test_the_healthy_good_set_adapts_the_search_limits() -> None:
    runner = ScriptedRunner(fails_with("gevent"), timings={"boot": 0.4, "wait": 0.02})
    run = procedure(runner)
    run.run()
    assert run.limits.consume == pytest.approx(1.0)  # max(floor 1 s, 10 x 20 ms)
    assert run.limits.boot == pytest.approx(10.0)
    search = [r for r in runner.requests if r.phase is Phase.SEARCH]
    assert search and all(r.limits is run.limits for r in search)


def test_gate_passes_on_a_passing_candidate_probed_afresh() -> None:
    runner = ScriptedRunner(lambda packages, _: Outcome.PASS)
    finding = procedure(runner, command="gate").run()
    assert finding.verdict is Verdict.PASS
    assert [r.phase for r in runner.requests] == [Phase.GOOD, Phase.CANDIDATE]
    assert not any(r.use_cache for r in runner.requests)


def test_gate_fails_on_a_failing_candidate_and_does_not_probe_the_pair_twice() -> None:
    runner = ScriptedRunner(fails_with("gevent"))
    finding = procedure(runner, command="gate").run()
    assert finding.verdict is Verdict.CULPRIT_FOUND
    everything = frozenset(str(n) for n in ("locust", "gevent", "rich", "six"))
    assert [r.changes for r in runner.requests].count(everything) == 1
    assert [r.changes for r in runner.requests if r.phase is not Phase.CONFIRM].count(
        frozenset()
    ) == 1


def test_gate_with_a_flaky_candidate_is_inconsistent() -> None:
    def script(packages: Packages, _: int) -> Outcome:
        return Outcome.SKIP if len(packages) == len(BAD) else Outcome.PASS

    finding = procedure(ScriptedRunner(script), command="gate").run()
    assert finding.verdict is Verdict.INCONSISTENT
    assert "candidate .tox/py312" in finding.note


def test_narrowing_names_the_first_bad_release_around_an_untestable_one() -> None:
    good = {**GOOD}
    bad = {**GOOD, "pika": pkg("pika", "2.0")}
    releases = ["1.3.2", "1.4", "1.5", "1.6", "1.7", "2.0"]
    wheels = FakeWheels(releases, broken=["1.6"])

    def script(packages: Packages, _: int) -> Outcome:
        version = packages[canonicalize_name("pika")].version
        return Outcome.FAIL if version in ("1.6", "1.7", "2.0") else Outcome.PASS

    runner = ScriptedRunner(script)
    finding = procedure(runner, good, bad, wheels, narrow=True).run()
    assert finding.verdict is Verdict.CULPRIT_FOUND
    (narrowing,) = finding.narrowings
    assert narrowing.first_bad == "1.7"
    assert narrowing.last_good == "1.5"
    assert narrowing.untestable == ("1.6",)
    tried = {t.version: t.outcome for t in narrowing.tested}
    assert tried["1.6"] is Outcome.ERROR
    narrowed = [t for t in finding.trials if t.phase is Phase.NARROW]
    assert narrowed and all(t.substitute is not None for t in narrowed if t.changes)


def test_narrowing_skips_a_release_whose_requirements_the_set_lacks() -> None:
    good = {**GOOD}
    bad = {**GOOD, "pika": pkg("pika", "2.0")}

    class NeedsMore(FakeWheels):
        def fetch(self, pins: Sequence[str]) -> dict[NormalizedName, Package]:
            (pin,) = pins
            if pin.endswith("==1.5"):
                return {canonicalize_name("pika"): pkg("pika", "1.5", "missing-thing")}
            return super().fetch(pins)

    def script(packages: Packages, _: int) -> Outcome:
        version = packages[canonicalize_name("pika")].version
        return Outcome.FAIL if version in ("1.5", "2.0") else Outcome.PASS

    finding = procedure(
        ScriptedRunner(script), good, bad, NeedsMore(["1.3.2", "1.4", "1.5", "2.0"]), narrow=True
    ).run()
    (narrowing,) = finding.narrowings
    assert narrowing.first_bad == "2.0"
    assert narrowing.untestable == ("1.5",)
    skipped = [t for t in narrowing.tested if t.version == "1.5"]
    assert skipped and skipped[0].outcome is Outcome.SKIP
    assert "needs missing-thing" in skipped[0].detail


def test_the_finding_says_how_many_rounds_and_probes_at_once() -> None:
    finding = procedure(ScriptedRunner(fails_with("gevent")), jobs=3).run()
    assert finding.slots == 3
    # The sanity pair and at least the search's rounds; never more than its trials.
    search = [t for t in finding.trials if t.phase is not Phase.CONFIRM]
    assert 2 <= finding.rounds <= len(search)
    gate = procedure(ScriptedRunner(lambda packages, _: Outcome.PASS), command="gate").run()
    assert gate.rounds == 0


# Sets probed repeatedly (--repeat K, --flaky): any failed run fails a set.


def every_other_run_with(name: str, *, also_good_at: int | None = None) -> Script:
    """Sets with ``name`` fail every other run (the first included); the good set fails
    only at its run ``also_good_at``."""

    def script(packages: Packages, seen: int) -> Outcome:
        if canonicalize_name(name) in packages:
            return Outcome.FAIL if seen % 2 == 0 else Outcome.PASS
        if len(packages) == len(GOOD) and seen == also_good_at:
            return Outcome.FAIL
        return Outcome.PASS

    return script


def test_repeat_k_names_a_culprit_that_fails_one_run_in_three_and_says_how_sure() -> None:
    def script(packages: Packages, seen: int) -> Outcome:
        return Outcome.FAIL if "gevent" in packages and seen % 3 == 2 else Outcome.PASS

    run = procedure(ScriptedRunner(script), repeat=3)
    finding = run.run()
    said = run.observer
    assert isinstance(said, Said)
    assert finding.verdict is Verdict.CULPRIT_FOUND
    assert [c.name for c in finding.culprits] == ["gevent"]
    flakiness = finding.flakiness
    assert flakiness is not None and not flakiness.chosen
    assert flakiness.runs == 3
    assert (flakiness.bad.failed, flakiness.bad.runs) == (1, 3)
    assert flakiness.culprits is not None and flakiness.culprits.failed == 1
    assert flakiness.good.failed == 0
    # Three runs are too few for a failure seen once in three: the run says so.
    assert flakiness.confidence < 0.9
    assert any("--flaky would choose K" in line for line in said.lines)


def test_flaky_chooses_k_from_the_bad_sets_rate_and_names_the_culprit() -> None:
    runner = ScriptedRunner(every_other_run_with("gevent"))
    finding = procedure(runner, flaky=True).run()
    assert finding.verdict is Verdict.CULPRIT_FOUND
    assert [c.name for c in finding.culprits] == ["gevent"]
    flakiness = finding.flakiness
    assert flakiness is not None and flakiness.chosen
    bad = next(r for r in runner.requests if r.phase is Phase.BAD)
    assert bad.stop_after == 6 and bad.runs >= 6
    assert (flakiness.bad.failed, flakiness.bad.runs) == (6, 11)
    search = [r for r in runner.requests if r.phase is Phase.SEARCH]
    assert search and all(r.runs == flakiness.runs and r.stop_after == 1 for r in search)
    confirm = [r for r in runner.requests if r.phase is Phase.CONFIRM]
    assert confirm and all(r.runs == flakiness.runs and r.stop_after is None for r in confirm)
    assert flakiness.runs > 3 and flakiness.confidence >= 0.99
    assert flakiness.culprits is not None
    assert flakiness.culprits.failed == (flakiness.runs + 1) // 2


def test_a_good_set_that_also_fails_sometimes_is_inconsistent_with_its_rate() -> None:
    runner = ScriptedRunner(every_other_run_with("gevent", also_good_at=4))
    finding = procedure(runner, flaky=True).run()
    assert finding.verdict is Verdict.INCONSISTENT
    assert finding.culprits == ()
    assert "the good set also fails sometimes (1 of 10 runs failed)" in finding.note


def test_a_failure_too_rare_to_bisect_is_inconsistent_not_a_guess() -> None:
    def script(packages: Packages, seen: int) -> Outcome:
        return Outcome.FAIL if "gevent" in packages and seen == 30 else Outcome.PASS

    finding = procedure(ScriptedRunner(script), flaky=True).run()
    assert finding.verdict is Verdict.INCONSISTENT
    assert "the bad set failed only 1 of 50 runs: too rarely" in finding.note


def test_a_gate_whose_candidate_passes_every_run_says_what_that_rules_out() -> None:
    runner = ScriptedRunner(lambda packages, _: Outcome.PASS)
    finding = procedure(runner, command="gate", repeat=20).run()
    assert finding.verdict is Verdict.PASS
    assert "passed all 20 runs: a failure rate above 14 % would have shown" in finding.note


class LockstepWheels(FakeWheels):
    """Releases of a wrapper, each pinning its core at the same version, and of the core;
    ``ranged`` releases need a core range instead (no companion move meets it)."""

    def __init__(self, releases: Sequence[str], ranged: Sequence[str] = ()) -> None:
        super().__init__(releases)
        self.ranged = set(ranged)

    def fetch(self, pins: Sequence[str]) -> dict[NormalizedName, Package]:
        fetched = {}
        for pin in pins:
            name, version = pin.split("==")
            requires: tuple[str, ...] = ()
            if canonicalize_name(name) == "wrapper":
                need = ">=9" if version in self.ranged else f"=={version}"
                requires = (f"core{need}",)
            fetched[canonicalize_name(name)] = pkg(name, version, *requires)
        return fetched


def test_narrowing_moves_a_lockstep_companion_and_names_it() -> None:
    good = {**GOOD, **side_of(pkg("wrapper", "1.0", "core==1.0"), pkg("core", "1.0"))}
    bad = {**GOOD, **side_of(pkg("wrapper", "2.0", "core==2.0"), pkg("core", "2.0"))}
    wheels = LockstepWheels(["1.0", "1.1", "1.2", "1.3", "2.0"], ranged=["1.2"])

    def script(packages: Packages, _: int) -> Outcome:
        version = packages[canonicalize_name("wrapper")].version
        return Outcome.FAIL if version in ("1.3", "2.0") else Outcome.PASS

    runner = ScriptedRunner(script)
    finding = procedure(runner, good, bad, wheels, narrow=True).run()
    assert finding.verdict is Verdict.CULPRIT_FOUND
    (narrowing,) = finding.narrowings
    assert narrowing.change.name == "wrapper"
    assert (narrowing.last_good, narrowing.first_bad) == ("1.1", "1.3")
    assert narrowing.untestable == ("1.2",)
    tried = {t.version: t for t in narrowing.tested}
    assert tried["1.3"].companions == ("core 1.3",)
    assert tried["1.1"].outcome is Outcome.PASS and tried["1.1"].companions == ("core 1.1",)
    # 1.2 needs a core range: no companion move meets it, so it stays untestable.
    assert tried["1.2"].outcome is Outcome.SKIP and tried["1.2"].companions == ()
    assert narrowing.describe().startswith("first bad wrapper version: 1.3 (with core 1.3)")
    # Every probed set had the wrapper with the core it pins.
    for request in runner.requests:
        wrapper = request.packages[canonicalize_name("wrapper")]
        assert request.packages[canonicalize_name("core")].version == wrapper.version
    # The culprit is reported with it, whichever of the pair the search named.
    assert all(narrowing.answers(change) for change in finding.culprits[:1])


def side_of(*packages: Package) -> dict[NormalizedName, Package]:
    return {p.name: p for p in packages}
