"""The run's procedure: which sets to probe, and what their outcomes mean.

:meth:`Procedure.run` reads as the run: (gate) → sanity pair and search →
confirm both ends → narrow → verdict. Trials are run by a
:class:`~envbisect.trials.TrialRunner` a round at a time (see
:mod:`envbisect.rounds`); this module decides which, and turns their outcomes into
a :class:`~envbisect.model.Finding`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from envbisect.delta import Change, ChangeKind, Delta, Package
from envbisect.errors import EnvironmentBuildError, InputError, TimeLimitError
from envbisect.flakiness import (
    ESTIMATE_FAILURES,
    ESTIMATE_RUNS,
    GOOD_RUNS,
    MOST_RUNS,
    choose_runs,
    confidence,
    miss_chance,
)
from envbisect.limits import Limits, generous, learn
from envbisect.linesearch import rounds_needed
from envbisect.model import (
    Diagnosis,
    Finding,
    Flakiness,
    Narrowing,
    Observer,
    Outcome,
    Phase,
    ProbeResult,
    Rate,
    Trial,
    Verdict,
    percent,
)
from envbisect.narrow import lockstep_leader, narrow
from envbisect.options import Options
from envbisect.probes.base import Probe
from envbisect.rounds import Rounds
from envbisect.search import SearchResult, SearchStatus, bisect
from envbisect.sides import Side
from envbisect.startup import startup_hooks
from envbisect.trials import TrialRunner
from envbisect.wheelsource import WheelSource


class Procedure:
    """One bisection of the changes between ``good`` and ``bad``."""

    def __init__(
        self,
        options: Options,
        probe: Probe,
        runner: TrialRunner,
        wheels: WheelSource,
        sides: tuple[Side, Side],
        delta: Delta,
        observer: Observer,
        started: float,
    ) -> None:
        self.options = options
        self.probe = probe
        self.wheels = wheels
        self.good, self.bad = sides
        self.delta = delta
        self.observer = observer
        self.started = started
        self.limits = options.limits(started)
        # Search trials stop a failing worker after the verdict and take no stacks; the
        # confirmation, whose result is the report's evidence, takes a stuck worker's stacks
        # and stops it first (see _confirm_limits).
        self.limits.stop_before_verdict = False
        self.limits.take_stacks = False
        self.rounds = Rounds(runner, delta, self.limits, observer, self._finished)
        self._everything = frozenset(change.name for change in delta.changes)
        self._search_rounds = 0

    def run(self) -> Finding:
        """The whole bisection, to a finding."""
        self._plan(Phase.CANDIDATE if self.options.gate else Phase.GOOD)
        # Step 1 (gate, or sets probed repeatedly): the pair first, every run of each. A
        # gate's candidate decides here unless it fails; --flaky chooses K from the bad
        # set's failure rate. The search then knows both ends.
        if self.options.gate or self.options.repeated:
            decided = self._pair()
            if decided is not None:
                return decided
        # Step 2: the sanity pair (good passes, bad fails), then delta debugging.
        result = bisect(
            [change.name for change in self.delta.changes],
            self.delta.closure,
            self._oracle,
            jobs=self.options.jobs,
            prepare=self._prepare if self.options.jobs > 1 else None,
        )
        self._search_rounds = result.rounds
        # Step 3: a search that singled out no set says why.
        if result.status is SearchStatus.INCONSISTENT:
            return self._finding(
                Verdict.INCONSISTENT,
                None,
                note="the results do not single out a minimal failing set"
                + self.rounds.flaky_note(),
                disagreements=result.disagreements,
            )
        if result.status is not SearchStatus.FOUND:
            return self._sanity_failed(result.status)
        # Step 4: both ends again, afresh and with generous limits.
        culprits = tuple(self.delta.change(name) for name in sorted(result.culprits))
        confirm, refuted = self._confirm(result, culprits)
        if refuted is not None:
            return refuted
        # Step 5 (--narrow): which release of a version culprit first fails.
        narrowings = [self._narrow(change, result, confirm) for change in culprits]
        # Step 6: the verdict.
        note = "interaction: these fail only together" if len(culprits) > 1 else ""
        flaky = self.rounds.flaky_note().removeprefix("; ")
        note = "; ".join(part for part in (note, flaky and f"worked around {flaky}") if part)
        return self._finding(
            Verdict.CULPRIT_FOUND,
            confirm,
            culprits=culprits,
            note=note,
            narrowings=[n for n in narrowings if n is not None],
        )

    def _pair(self) -> Finding | None:
        """Probe the good and the bad set (a gate's baseline and candidate) with every run;
        a verdict when they settle the run, else None (search on).

        Both are probed afresh, never taken from the outcome cache: their runs are the
        run's rates, and a gate's verdict is theirs. The good set is probed alongside
        (first, when one probe runs at a time): a failing bad set then waits only as
        long as the good set's healthy worker suggests.
        """
        sets = [frozenset(), self._everything] if self.delta.changes else [frozenset()]
        bad_phase = Phase.CANDIDATE if self.options.gate else Phase.BAD
        phases = {frozenset(): Phase.GOOD, self._everything: bad_phase}
        runs = {frozenset(): self.options.repeat, self._everything: self.options.repeat}
        stops = None
        if self.options.flaky:
            runs = {frozenset(): GOOD_RUNS, self._everything: ESTIMATE_RUNS}
            stops = ESTIMATE_FAILURES
        trials = self.rounds.run(
            [
                self.rounds.request(
                    s,
                    phases[s],
                    self.limits,
                    cache=False,
                    runs=runs[s],
                    stop_after=stops if s else None,
                )
                for s in sets
            ]
        )
        bad, good = trials[-1], trials[0]
        if self.options.gate:
            if bad.outcome is Outcome.PASS:
                notes = [_never_failed(bad)] if len(bad.results) > 1 else []
                if good.outcome is not Outcome.PASS:
                    notes.append(
                        f"the baseline fails the probe ({good.outcome}): the candidate fixes it"
                    )
                return self._finding(Verdict.PASS, bad, note="; ".join(notes))
            if bad.outcome is not Outcome.FAIL:
                return self._undecided(bad, f"candidate {self.bad.label}")
        good_rate = Rate.of(r.outcome for r in good.results)
        if 0 < good_rate.failed < good_rate.runs:
            return self._finding(
                Verdict.INCONSISTENT,
                good,
                note=f"the good set also fails sometimes ({good_rate.describe()} failed): "
                "no set of changes can be told apart from it",
                disagreements=(frozenset(),),
            )
        if bad.outcome is Outcome.FAIL and good.outcome is Outcome.PASS:
            refused = self._choose_runs(Rate.of(r.outcome for r in bad.results))
            if refused is not None:
                return refused
        # The search's sanity pair is done: it must not probe either set again.
        self.rounds.known.update({trial.changes: trial for trial in trials})
        return None

    def _choose_runs(self, bad: Rate) -> Finding | None:
        """K, the runs each set gets: --flaky's choice from the bad set's rate, else
        --repeat's; an inconsistent finding when the failure is too rare to bisect."""
        runs: int | None = self.options.repeat
        if self.options.flaky:
            runs = choose_runs(bad, len(self.delta.changes))
        if runs is None:
            return self._finding(
                Verdict.INCONSISTENT,
                self._trial_of(self._everything),
                note=f"the bad set failed only {bad.describe()}: too rarely to tell sets "
                f"apart within {MOST_RUNS} runs each (--repeat K chooses K, at its risk)",
                disagreements=(self._everything,),
            )
        self.rounds.runs = runs
        miss = miss_chance(bad, runs)
        line = (
            f"intermittent: the bad set failed {bad.describe()}; each set gets up to {runs} "
            f"runs, and fails at its first failed run (a set with the culprit passes all "
            f"{runs} with chance {percent(miss)})"
        )
        enough = choose_runs(bad, len(self.delta.changes))
        if not self.options.flaky and enough is not None and enough > runs:
            line += f"; too few to be sure: --flaky would choose K = {enough}"
        self.observer.say(line)
        return None

    def _oracle(self, batch: Sequence[frozenset[str]]) -> list[Outcome]:
        """The search's question: the outcome of each set of changes (good set + changes)."""
        if self.limits.left() <= 0:
            raise TimeLimitError(f"--max-time {self.options.max_time:g} s reached")
        trials = self.rounds.run(
            [self.rounds.request(s, self._phase(s), self.limits) for s in batch]
        )
        self._plan(Phase.SEARCH)
        if self.limits.left() <= 0:
            raise TimeLimitError(f"--max-time {self.options.max_time:g} s reached")
        return [trial.outcome for trial in trials]

    def _sanity_failed(self, status: SearchStatus) -> Finding:
        """The good set did not pass, or the bad set did not fail: say exactly how."""
        subset, expected, verdict = {
            SearchStatus.GOOD_FAILS: (frozenset(), Outcome.FAIL, Verdict.GOOD_FAILS),
            SearchStatus.BAD_PASSES: (self._everything, Outcome.PASS, Verdict.BAD_PASSES),
        }[status]
        trial = self._trial_of(subset)
        if trial.outcome is expected:
            return self._finding(verdict, trial)
        return self._undecided(
            trial, "good set" if status is SearchStatus.GOOD_FAILS else "bad set"
        )

    def _trial_of(self, subset: frozenset[str]) -> Trial:
        """The first trial of this set (the sanity pair's)."""
        # By set, not phase: with no changes both are one trial; a gate's is "candidate".
        return next(t for t in self.rounds.trials if t.changes == subset)

    def _undecided(self, trial: Trial, side: str) -> Finding:
        """A sanity probe that neither passed nor failed: flaky, skipped, or not run at all."""
        if trial.result.diagnosis is Diagnosis.ENV_BUILD:
            raise EnvironmentBuildError(f"the {side}: {trial.result.detail}")
        runs = ", ".join(r.outcome.value for r in trial.results)
        what = {
            Outcome.FLAKY: f"is flaky: its {len(trial.results)} runs disagree ({runs})",
            Outcome.SKIP: "is untestable: the probe skipped it (exit 125)",
            Outcome.ERROR: f"could not be probed: {trial.result.detail}",
        }[trial.outcome]
        return self._finding(
            Verdict.INCONSISTENT, trial, note=f"the {side} {what}", disagreements=(trial.changes,)
        )

    def _confirm(
        self, result: SearchResult, culprits: tuple[Change, ...]
    ) -> tuple[Trial, Finding | None]:
        """The culprit set must fail again and the good set pass again, both afresh and with
        generous limits (else something besides the packages decides): the confirmation
        trial, and an inconsistent finding when either end disagrees."""
        self.observer.say(
            "confirming: "
            + ", ".join(change.describe() for change in culprits)
            + "; and that the good set still passes"
        )
        limits = self._confirm_limits()
        self._plan(Phase.CONFIRM)
        confirm, good = self.rounds.run(
            [
                self.rounds.request(s, Phase.CONFIRM, limits, cache=False, stop_after=None)
                for s in (result.failing_set, frozenset())
            ]
        )
        for trial, side in ((confirm, "the culprit set"), (good, "the good set")):
            if trial.result.diagnosis is Diagnosis.ENV_BUILD:
                raise EnvironmentBuildError(f"{side}: {trial.result.detail}")
        if good.outcome is not Outcome.PASS:
            runs = _runs(good)
            note = (
                f"the good set did not pass when probed again ({runs}), so no culprit is "
                "named: the probe is flaky, or something outside the package sets decides it"
            )
            refuted = self._finding(
                Verdict.INCONSISTENT,
                good,
                note=note + self.rounds.flaky_note(),
                disagreements=(frozenset(),),
            )
            return confirm, refuted
        if confirm.outcome is not Outcome.FAIL:
            suspects = ", ".join(change.describe() for change in culprits)
            runs = _runs(confirm)
            note = (
                f"the suspected set ({suspects}) did not fail again with generous time "
                f"limits ({runs}): the probe is flaky, or --timeout is too tight"
            )
            refuted = self._finding(
                Verdict.INCONSISTENT,
                confirm,
                note=note + self.rounds.flaky_note(),
                disagreements=(result.failing_set,),
            )
            return confirm, refuted
        return confirm, None

    def _narrow(self, change: Change, result: SearchResult, confirm: Trial) -> Narrowing | None:
        if not self.options.narrow:
            return None
        if change.kind is not ChangeKind.VERSION:
            self.observer.say(f"not narrowed: {change.describe()} is not a version change")
            return None
        leader = lockstep_leader(change, result.failing_set, self.delta)
        if leader is not None and leader.name in result.culprits:
            return None  # the leader's own narrowing moves this companion with it
        return narrow(
            change,
            result.failing_set,
            confirm,
            delta=self.delta,
            wheels=self.wheels,
            prober=self.rounds,
            jobs=self.options.jobs,
            left=self.limits.left,
            say=self.observer.say,
        )

    # Trials: how a finished one informs the run, and which phase a set is in.

    def _finished(self, trial: Trial) -> None:
        """As soon as a trial ends (its round's others may still run)."""
        if trial.phase is Phase.GOOD:
            problem = self.probe.unusable(trial.result)
            if problem is not None:
                raise InputError(problem)
            if trial.outcome is Outcome.PASS and self.options.adaptive:
                self._learn(trial.result)

    def _plan(self, phase: Phase) -> None:
        """Tell the observer the phase, the expected trials and the changes in play: the
        sanity pair, ⌈log_(P+1) N⌉ rounds of P trials, the two confirmations; in play,
        the smallest set of changes seen failing so far."""
        slots = 1 if self.probe.exclusive else self.options.jobs
        changes = len(self.delta.changes)
        bound = 2 + rounds_needed(changes, slots + 1) * slots + 2
        failing = [
            len(t.changes) for t in self.rounds.trials if t.outcome is Outcome.FAIL and t.changes
        ]
        self.observer.plan(
            phase, max(bound, len(self.rounds.trials)), min(failing, default=changes)
        )

    def _phase(self, subset: frozenset[str]) -> Phase:
        if not subset:
            return Phase.GOOD
        if len(subset) == len(self.delta.changes) and not self.rounds.trials:
            return Phase.BAD
        return Phase.SEARCH

    def _prepare(self, upcoming: Sequence[frozenset[str]]) -> None:
        """Let the runner build the envs of the sets the search may test next."""
        self.rounds.runner.prepare([self.delta.trial(subset) for subset in upcoming])

    # Limits: learnt from the healthy good set, generous for the confirmation.

    def _learn(self, healthy: ProbeResult) -> None:
        if learn(self.limits, healthy.timings):
            boot, wait = healthy.timings["boot"], healthy.timings["wait"]
            self.observer.say(
                f"healthy worker: ready in {boot:.2f} s, consumed {wait * 1000:.0f} ms later; "
                f"failing trials now wait {self.limits.consume:.1f} s"
            )

    def _confirm_limits(self) -> Limits:
        """Generous limits: the user's full ones, or many times the adaptive ones."""
        return generous(self.options.limits(time.monotonic()), self.limits)

    # The finding.

    def _flakiness(self, confirm: Trial | None) -> Flakiness | None:
        """With sets probed repeatedly: the rates seen and how sure the run is."""
        bad = next((t for t in self.rounds.trials if t.changes == self._everything), None)
        if not self.options.repeated or bad is None or not self.delta.changes:
            return None
        rate = Rate.of(r.outcome for r in bad.results)
        good = [r.outcome for t in self.rounds.trials if not t.changes for r in t.results]
        runs = self.rounds.runs
        # Each set that passed, with all its runs (the good set's, sanity and confirmation,
        # count together): any of them could have hidden a failure.
        passing: dict[tuple[frozenset[str], Package | None], int] = {}
        for trial in self.rounds.trials:
            if trial.outcome is Outcome.PASS:
                key = (trial.changes, trial.substitute)
                passing[key] = passing.get(key, 0) + (runs if trial.cached else len(trial.results))
        return Flakiness(
            runs=runs,
            chosen=self.options.flaky,
            bad=rate,
            good=Rate.of(good),
            culprits=None if confirm is None else Rate.of(r.outcome for r in confirm.results),
            miss=miss_chance(rate, runs),
            confidence=confidence(rate, passing.values()),
        )

    def _finding(
        self,
        verdict: Verdict,
        evidence: Trial | None,
        *,
        culprits: tuple[Change, ...] = (),
        note: str = "",
        disagreements: Sequence[frozenset[str]] = (),
        narrowings: Sequence[Narrowing] = (),
    ) -> Finding:
        return Finding(
            verdict=verdict,
            delta=self.delta,
            culprits=culprits,
            trials=tuple(sorted(self.rounds.trials, key=lambda trial: trial.index)),
            evidence=evidence,
            seconds=time.monotonic() - self.started,
            probe=self.probe.describe(),
            good=self.good.label,
            bad=self.bad.label,
            installer=self.options.installer,
            jobs=self.options.jobs,
            workspace=None,
            note=note,
            disagreements=tuple(disagreements),
            narrowings=tuple(narrowings),
            gate=self.options.gate,
            slots=1 if self.probe.exclusive else self.options.jobs,
            rounds=self._search_rounds,
            flakiness=self._flakiness(evidence if culprits else None),
            recipe=self.probe.recipe(),
            startup_hooks={
                change.name: startup_hooks(self.wheels.wheel_for(change.bad))
                for change in culprits
                if change.bad is not None
            },
        )


def _runs(trial: Trial) -> str:
    """``pass, fail`` for a few runs; ``2 of 15 runs failed`` for many."""
    if len(trial.results) <= 3:
        return ", ".join(r.outcome.value for r in trial.results)
    return f"{Rate.of(r.outcome for r in trial.results).describe()} failed"


def _never_failed(trial: Trial) -> str:
    """What a set that passed all its runs rules out (95 %: 1 - 0.05^(1/n))."""
    runs = len(trial.results)
    bound = 1 - 0.05 ** (1 / runs)
    return (
        f"passed all {runs} runs: a failure rate above {bound * 100:.0f} % would have shown "
        "with 95 % chance"
    )
