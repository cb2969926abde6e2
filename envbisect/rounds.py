"""The run's trials: numbered in the order asked, run a round at a time, recorded.

A round is the sets one step of the procedure asks about at once (a search
round's split points, the sanity pair, the confirmation's two ends). Its
trials run as far as the :class:`~envbisect.trials.TrialRunner` allows; when
one fails hard (a full disk, an interrupt), the round's others are stopped and
that error, not what stopping them caused, ends the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait

from envbisect import processes
from envbisect.delta import Delta, Package, Packages
from envbisect.errors import EnvbisectError
from envbisect.limits import Limits
from envbisect.model import Diagnosis, Observer, Outcome, Phase, ProbeResult, Trial
from envbisect.trials import TrialRequest, TrialRunner

#: After one trial of a round failed hard, how long its stopped siblings may take to end.
STOP_PATIENCE = 30.0


class Rounds:
    """Every trial of one run, in order; also the narrowing step's prober."""

    def __init__(
        self,
        runner: TrialRunner,
        delta: Delta,
        limits: Limits,
        observer: Observer,
        finished: Callable[[Trial], None],
    ) -> None:
        self.runner = runner
        self.delta = delta
        self.limits = limits  #: the search's limits (narrowing trials run with them too)
        self.observer = observer
        self.finished = finished  #: called as soon as a trial ends, in the runner's thread
        self.trials: list[Trial] = []
        self.known: dict[frozenset[str], Trial] = {}  #: sets never probed again (the pair's)
        #: K: how often a set is probed (a search trial stops at its first failed run)
        self.runs = 1
        self._lock = threading.Lock()
        self._count = 0

    def request(
        self,
        changes: frozenset[str],
        phase: Phase,
        limits: Limits,
        packages: Packages | None = None,
        *,
        substitute: Package | None = None,
        cache: bool = True,
        runs: int | None = None,
        stop_after: int | None = 1,
    ) -> TrialRequest | Trial:
        """A request for a new trial of good + ``changes`` (or exactly ``packages``), or the
        known trial of this set. It is probed ``runs`` times (default: K), stopping once
        ``stop_after`` runs failed (None: every run, for a rate)."""
        known = self.known.get(changes) if cache and substitute is None else None
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
            runs=self.runs if runs is None else runs,
            stop_after=stop_after,
        )

    def run(self, requests: Sequence[TrialRequest | Trial]) -> list[Trial]:
        """One round: these trials at once, in the order given."""
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

    def flaky_note(self) -> str:
        """``; flaky trials: trial 4 (pass, fail)``, or nothing."""
        flaky = [t for t in self.trials if t.outcome is Outcome.FLAKY]
        if not flaky:
            return ""
        listed = "; ".join(
            f"trial {t.index} ({', '.join(r.outcome.value for r in t.results)})" for t in flaky
        )
        return f"; flaky trials: {listed}"

    # The narrowing step's prober (see envbisect.narrow.Prober).

    def earlier(self, changes: frozenset[str]) -> Trial | None:
        """A search trial of exactly this set, if one ran."""
        return next((t for t in self.trials if t.changes == changes and t.substitute is None), None)

    def narrowing(
        self, changes: frozenset[str], sets: Sequence[tuple[Packages, Package | None]]
    ) -> list[Trial]:
        """Probe these sets at once, each trying one version of a culprit."""
        return self.run(
            [
                self.request(changes, Phase.NARROW, self.limits, packages, substitute=tried)
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

    def _finished(self, trial: Trial) -> None:
        self.finished(trial)
        self._record(trial)

    def _record(self, trial: Trial) -> None:
        with self._lock:
            self.trials.append(trial)
        self.observer.trial_finished(trial)

    def _next_index(self) -> int:
        with self._lock:
            self._count += 1
            return self._count


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
