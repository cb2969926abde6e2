"""The run's procedure: which sets to probe, and what their outcomes mean.

:meth:`Procedure.run` reads as the run: (gate) → sanity pair and search →
confirm both ends → narrow → verdict. Trials are run by a
:class:`~envbisect.trials.TrialRunner`; this module decides, numbers and
records them, and turns them into a :class:`~envbisect.model.Finding`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, wait

from envbisect import processes
from envbisect.delta import Change, ChangeKind, Delta, Package
from envbisect.errors import EnvbisectError, EnvironmentBuildError, InputError, TimeLimitError
from envbisect.model import (
    Diagnosis,
    Finding,
    Narrowing,
    Observer,
    Outcome,
    Phase,
    ProbeResult,
    Trial,
    Verdict,
)
from envbisect.narrow import Packages, narrow
from envbisect.options import Options
from envbisect.probes.base import Limits, Probe
from envbisect.search import SearchResult, SearchStatus, bisect
from envbisect.sides import Side
from envbisect.startup import startup_hooks
from envbisect.trials import TrialRequest, TrialRunner
from envbisect.wheelsource import WheelSource

# Adaptive limits: wait this many times the healthy latency, never less than the floor.
CONSUME_FACTOR, CONSUME_FLOOR = 10.0, 1.0
BOOT_FACTOR, BOOT_FLOOR = 10.0, 10.0
# The culprit set is confirmed with limits this much longer than the search's (at least
# CONFIRM_FLOOR s): a worker that merely needed longer than the adaptive limit passes here.
CONFIRM_FACTOR, CONFIRM_FLOOR = 4.0, 6.0
#: After one trial of a round failed hard, how long its stopped siblings may take to end.
STOP_PATIENCE = 30.0


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
        self.runner = runner
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
        self.trials: list[Trial] = []
        self._everything = frozenset(change.name for change in delta.changes)
        self._known: dict[frozenset[str], Trial] = {}  #: the gate's sanity pair, not probed twice
        self._lock = threading.Lock()
        self._count = 0

    def run(self) -> Finding:
        """The whole bisection, to a finding."""
        # Step 1 (gate): the candidate decides first; when it fails, the search goes on
        # with the candidate's and the baseline's results known.
        if self.options.gate:
            decided = self._gate()
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
        # Step 3: a search that singled out no set says why.
        if result.status is SearchStatus.INCONSISTENT:
            return self._finding(
                Verdict.INCONSISTENT,
                None,
                note="the results do not single out a minimal failing set" + self._flaky_note(),
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
        flaky = self._flaky_note().removeprefix("; ")
        note = "; ".join(part for part in (note, flaky and f"worked around {flaky}") if part)
        return self._finding(
            Verdict.CULPRIT_FOUND,
            confirm,
            culprits=culprits,
            note=note,
            narrowings=[n for n in narrowings if n is not None],
        )

    def _gate(self) -> Finding | None:
        """The candidate decides: a verdict when it does not fail, else None (search on).

        Both are probed afresh, never taken from the outcome cache: the gate's verdict is
        theirs. The baseline is probed alongside (first, when one probe runs at a time), as
        the search's sanity pair would be: a failing candidate then waits only as long as
        the baseline's healthy worker suggests.
        """
        sets = [frozenset(), self._everything] if self.delta.changes else [frozenset()]
        phases = {frozenset(): Phase.GOOD, self._everything: Phase.CANDIDATE}
        trials = self._run([self._request(s, phases[s], self.limits, cache=False) for s in sets])
        candidate, baseline = trials[-1], trials[0]
        if candidate.outcome is Outcome.PASS:
            note = ""
            if baseline.outcome is not Outcome.PASS:
                note = f"the baseline fails the probe ({baseline.outcome}): the candidate fixes it"
            return self._finding(Verdict.PASS, candidate, note=note)
        if candidate.outcome is not Outcome.FAIL:
            return self._undecided(candidate, f"candidate {self.bad.label}")
        # The search's sanity pair is done: it must not probe either set again.
        self._known.update({trial.changes: trial for trial in trials})
        return None

    def _oracle(self, batch: Sequence[frozenset[str]]) -> list[Outcome]:
        """The search's question: the outcome of each set of changes (good set + changes)."""
        if self.limits.left() <= 0:
            raise TimeLimitError(f"--max-time {self.options.max_time:g} s reached")
        trials = self._run([self._request(s, self._phase(s), self.limits) for s in batch])
        if self.limits.left() <= 0:
            raise TimeLimitError(f"--max-time {self.options.max_time:g} s reached")
        return [trial.outcome for trial in trials]

    def _sanity_failed(self, status: SearchStatus) -> Finding:
        """The good set did not pass, or the bad set did not fail: say exactly how."""
        subset, expected, verdict = {
            SearchStatus.GOOD_FAILS: (frozenset(), Outcome.FAIL, Verdict.GOOD_FAILS),
            SearchStatus.BAD_PASSES: (self._everything, Outcome.PASS, Verdict.BAD_PASSES),
        }[status]
        # By set, not phase: with no changes both are one trial; a gate's is "candidate".
        trial = next(t for t in self.trials if t.changes == subset)
        if trial.outcome is expected:
            return self._finding(verdict, trial)
        return self._undecided(
            trial, "good set" if status is SearchStatus.GOOD_FAILS else "bad set"
        )

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
        confirm, good = self._run(
            [
                self._request(result.failing_set, Phase.CONFIRM, limits, cache=False),
                self._request(frozenset(), Phase.CONFIRM, limits, cache=False),
            ]
        )
        for trial, side in ((confirm, "the culprit set"), (good, "the good set")):
            if trial.result.diagnosis is Diagnosis.ENV_BUILD:
                raise EnvironmentBuildError(f"{side}: {trial.result.detail}")
        if good.outcome is not Outcome.PASS:
            runs = ", ".join(r.outcome.value for r in good.results)
            note = (
                f"the good set did not pass when probed again ({runs}), so no culprit is "
                "named: the probe is flaky, or something outside the package sets decides it"
            )
            refuted = self._finding(
                Verdict.INCONSISTENT,
                good,
                note=note + self._flaky_note(),
                disagreements=(frozenset(),),
            )
            return confirm, refuted
        if confirm.outcome is not Outcome.FAIL:
            suspects = ", ".join(change.describe() for change in culprits)
            runs = ", ".join(r.outcome.value for r in confirm.results)
            note = (
                f"the suspected set ({suspects}) did not fail again with generous time "
                f"limits ({runs}): the probe is flaky, or --timeout is too tight"
            )
            refuted = self._finding(
                Verdict.INCONSISTENT,
                confirm,
                note=note + self._flaky_note(),
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
        return narrow(
            change,
            result.failing_set,
            confirm,
            delta=self.delta,
            wheels=self.wheels,
            prober=self,
            jobs=self.options.jobs,
            left=self.limits.left,
            say=self.observer.say,
        )

    # The narrowing step's prober (see envbisect.narrow.Prober).

    def earlier(self, changes: frozenset[str]) -> Trial | None:
        """A search trial of exactly this set, if one ran."""
        return next((t for t in self.trials if t.changes == changes and t.substitute is None), None)

    def narrowing(
        self, changes: frozenset[str], sets: Sequence[tuple[Packages, Package | None]]
    ) -> list[Trial]:
        """Probe these sets at once, each trying one version of a culprit."""
        return self._run(
            [
                self._request(changes, Phase.NARROW, self.limits, packages, substitute=tried)
                for packages, tried in sets
            ]
        )

    def unrun(
        self, changes: frozenset[str], outcome: Outcome, detail: str, tried: Package
    ) -> Trial:
        """A narrowing trial decided without a probe: the version cannot be fetched or tried."""
        diagnosis = Diagnosis.SKIPPED if outcome is Outcome.SKIP else Diagnosis.ENV_BUILD
        result = ProbeResult(outcome, diagnosis, detail)
        trial = Trial(
            self._next_index(), Phase.NARROW, changes, outcome, (result,), substitute=tried
        )
        self._record(trial)
        return trial

    # Trials: numbered in the order asked, run at once as far as --jobs allows, recorded.

    def _request(
        self,
        changes: frozenset[str],
        phase: Phase,
        limits: Limits,
        packages: Packages | None = None,
        *,
        substitute: Package | None = None,
        cache: bool = True,
    ) -> TrialRequest | Trial:
        """A request for a new trial, or the known trial of this set (the gate's pair)."""
        known = self._known.get(changes) if cache and substitute is None else None
        if known is not None:
            return known
        return TrialRequest(
            index=self._next_index(),
            phase=phase,
            changes=changes,
            packages=self.delta.trial(changes) if packages is None else packages,
            limits=limits,
            use_cache=cache,
            substitute=substitute,
        )

    def _run(self, requests: Sequence[TrialRequest | Trial]) -> list[Trial]:
        futures = [
            _done(r) if isinstance(r, Trial) else self.runner.submit(r, then=self._finished)
            for r in requests
        ]
        try:
            return [future.result() for future in futures]
        except BaseException as first:
            # This run is over: its other trials need not run to their time limits.
            processes.stop_all()
            raise _cause(first, futures) from None

    def _finished(self, trial: Trial) -> None:
        """As soon as a trial ends (its round's others may still run)."""
        if trial.phase is Phase.GOOD:
            problem = self.probe.unusable(trial.result)
            if problem is not None:
                raise InputError(problem)
            if trial.outcome is Outcome.PASS and self.options.adaptive:
                self._learn(trial.result)
        self._record(trial)

    def _record(self, trial: Trial) -> None:
        with self._lock:
            self.trials.append(trial)
        self.observer.trial_finished(trial)

    def _next_index(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def _phase(self, subset: frozenset[str]) -> Phase:
        if not subset:
            return Phase.GOOD
        if len(subset) == len(self.delta.changes) and not self.trials:
            return Phase.BAD
        return Phase.SEARCH

    def _prepare(self, upcoming: Sequence[frozenset[str]]) -> None:
        """Let the runner build the envs of the sets the search may test next."""
        self.runner.prepare([self.delta.trial(subset) for subset in upcoming])

    # Limits: learnt from the healthy good set, generous for the confirmation.

    def _learn(self, healthy: ProbeResult) -> None:
        boot = healthy.timings.get("boot")
        wait = healthy.timings.get("wait")
        if boot is None or wait is None:
            return
        self.limits.tighten(
            boot=max(BOOT_FLOOR, BOOT_FACTOR * boot),
            consume=max(CONSUME_FLOOR, CONSUME_FACTOR * wait),
        )
        self.observer.say(
            f"healthy worker: ready in {boot:.2f} s, consumed {wait * 1000:.0f} ms later; "
            f"failing trials now wait {self.limits.consume:.1f} s"
        )

    def _confirm_limits(self) -> Limits:
        """Generous limits: the user's full ones, or many times the adaptive ones."""
        limits = self.options.limits(time.monotonic())
        limits.hard_deadline = self.limits.hard_deadline
        limits.tighten(
            boot=max(CONFIRM_FLOOR, CONFIRM_FACTOR * self.limits.boot),
            consume=max(CONFIRM_FLOOR, CONFIRM_FACTOR * self.limits.consume),
        )
        return limits

    # The finding.

    def _flaky_note(self) -> str:
        flaky = [t for t in self.trials if t.outcome is Outcome.FLAKY]
        if not flaky:
            return ""
        listed = "; ".join(
            f"trial {t.index} ({', '.join(r.outcome.value for r in t.results)})" for t in flaky
        )
        return f"; flaky trials: {listed}"

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
            trials=tuple(sorted(self.trials, key=lambda trial: trial.index)),
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
            startup_hooks={
                change.name: startup_hooks(self.wheels.wheel_for(change.bad))
                for change in culprits
                if change.bad is not None
            },
        )


def _done(trial: Trial) -> Future[Trial]:
    """A trial already known, as a finished future."""
    future: Future[Trial] = Future()
    future.set_result(trial)
    return future


def _cause(first: BaseException, futures: Sequence[Future[Trial]]) -> BaseException:
    """The error that ended a round: a reported one (a full disk, an interrupt) outranks
    what stopping the round's other trials caused in them."""
    if isinstance(first, EnvbisectError | processes.Interrupted | KeyboardInterrupt):
        return first
    wait(futures, timeout=STOP_PATIENCE)
    for future in futures:
        if future.done() and not future.cancelled():
            error = future.exception()
            if isinstance(error, EnvbisectError):
                return error
    return first
