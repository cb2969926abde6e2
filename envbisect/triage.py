"""The procedure of one run, top to bottom.

read both sides → work out the changes → confirm good passes and bad fails →
delta-debug the changes → confirm the culprit set fails again with full time
limits → (``--narrow``) bisect a version culprit's releases → hand a
:class:`Finding` to the report. Each trial is a fresh env built from wheels
and probed; trials of one search round run in parallel.

A gate lets the candidate (the bad side) decide first: when it passes there
is nothing more to do; when it fails, the search starts with the candidate's
and the baseline's results known.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from packaging.utils import NormalizedName
from packaging.version import InvalidVersion

from envbisect import processes
from envbisect.broker import BrokerClient
from envbisect.delta import Change, ChangeKind, Delta, Package, unmet_requirements
from envbisect.envs import BuildTimings, InstallerError, Workspace, installer
from envbisect.errors import EnvbisectError, EnvironmentBuildError, InputError, TimeLimitError
from envbisect.leftovers import Ledger, Process, RunRecord, sweep
from envbisect.masking import mask_urls
from envbisect.narrow import Narrowing, Tried, versions_between
from envbisect.outcomes import OutcomeCache, run_context
from envbisect.private_broker import Mode, PrivateBroker, check_client, plan
from envbisect.probes.base import Diagnosis, Later, Limits, Probe, ProbeResult, TrialEnv
from envbisect.search import Outcome, SearchResult, SearchStatus, bisect, first_failing
from envbisect.sources import Side, Sources
from envbisect.startup import StartupHook, startup_hooks
from envbisect.watchdog import Watchdog
from envbisect.wheels import WheelCache

# Adaptive limits: wait this many times the healthy latency, never less than the floor.
CONSUME_FACTOR, CONSUME_FLOOR = 10.0, 1.0
BOOT_FACTOR, BOOT_FLOOR = 10.0, 10.0
# The culprit set is confirmed with limits this much longer than the search's (at least
# CONFIRM_FLOOR s): a worker that merely needed longer than the adaptive limit passes here.
CONFIRM_FACTOR, CONFIRM_FLOOR = 4.0, 6.0


class Verdict(StrEnum):
    PASS = "pass"  #: gate: the candidate passes the probe
    CULPRIT_FOUND = "culprit-found"
    GOOD_FAILS = "good-fails"
    BAD_PASSES = "bad-passes"
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True)
class Options:
    """Everything a run needs besides the probe."""

    bad: Path
    good: Path
    cache_dir: Path
    installer: str = "uv"
    python: Path | None = None
    jobs: int = 1
    repeat: int = 1
    keep_envs: bool = False
    outcome_cache: bool = True
    outcome_cache_dir: Path | None = None  #: default: <cache_dir>/outcomes
    adaptive: bool = True  #: learn the failing-trial wait from the healthy good probe
    timeout: float = 30.0  #: consume: ready → actor ran; command: the whole command
    boot_timeout: float = 60.0  #: consume: worker start → ready
    grace: float = 0.5  #: SIGTERM → SIGKILL
    max_time: float | None = None
    gate: bool = False  #: probe the bad side (the candidate) alone first; stop if it passes
    narrow: bool = False  #: bisect the releases between a version culprit's two versions
    find_links: tuple[Path, ...] = ()  #: local wheel dirs, beside the index
    offline: bool = False  #: never reach a package index: the bad side's wheels only
    private_broker: Mode = Mode.OFF  #: when the consume-probe gets a broker of the run's own
    private_broker_kind: str | None = None  #: "rabbitmq" or "redis"; None: whichever is there

    def limits(self, started: float) -> Limits:
        """Fresh, full limits for this run."""
        return Limits(
            boot=self.boot_timeout,
            consume=self.timeout,
            grace=self.grace,
            command=self.timeout,
            hard_deadline=None if self.max_time is None else started + self.max_time,
        )


@dataclass(frozen=True)
class Trial:
    """One probed package set."""

    index: int
    phase: str  #: "candidate", "good", "bad", "search", "confirm" or "narrow"
    changes: frozenset[str]
    outcome: Outcome
    results: tuple[ProbeResult, ...]
    env_seconds: float  #: waiting for the env on the critical path (0 when prebuilt in time)
    build_seconds: float  #: building the env (create + install), wherever it happened
    seconds: float
    cached: bool = False
    substitute: Package | None = None  #: narrowing: this version instead of the change's bad one

    @property
    def result(self) -> ProbeResult:
        """The result that decided: the first failing one, else the first."""
        failing = [r for r in self.results if r.outcome is Outcome.FAIL]
        return (failing or list(self.results))[0]


@dataclass(frozen=True)
class Finding:
    """What a run found, ready to report."""

    verdict: Verdict
    delta: Delta
    culprits: tuple[Change, ...]
    trials: tuple[Trial, ...]
    evidence: Trial | None  #: the trial whose output explains the verdict
    seconds: float
    probe: str
    good: str
    bad: str
    installer: str
    jobs: int
    workspace: Path | None  #: kept envs live here (with --keep-envs)
    note: str = ""
    disagreements: tuple[frozenset[str], ...] = ()
    narrowings: tuple[Narrowing, ...] = ()
    gate: bool = False
    #: What each culprit makes every interpreter run at start-up (read from the bad side's
    #: wheel of it, the file the trials installed); a removed culprit runs nothing.
    startup_hooks: Mapping[NormalizedName, tuple[StartupHook, ...]] = field(default_factory=dict)
    cleanup_errors: tuple[str, ...] = ()  #: what the run's clean-up could not do (one line each)


class Observer(Protocol):
    """Progress callbacks; the report module implements them for the terminal."""

    def say(self, text: str) -> None: ...

    def trial_started(self, index: int, phase: str, size: int) -> None: ...

    def trial_finished(self, trial: Trial) -> None: ...


def triage(options: Options, probe: Probe, observer: Observer) -> Finding:
    """Run the whole procedure; raises :class:`EnvbisectError` on bad input."""
    started = time.monotonic()
    private = plan(options.private_broker, probe, options.private_broker_kind)
    for token, removed in sweep(Path(tempfile.gettempdir()), probe.broker).items():
        problems = "".join(f"; {problem}" for problem in removed.problems)
        observer.say(f"swept leftovers of dead run {token}: {removed}{problems}")
    run_token = processes.new_run_token()
    backend = installer(
        options.installer,
        options.cache_dir,
        options.cache_dir / "logs",
        options.find_links,
        offline=options.offline,
    )
    if options.max_time is not None:
        backend.deadline = started + options.max_time
    workspace = Workspace(backend, run_token, keep=options.keep_envs)
    broker = PrivateBroker(f"{run_token}-broker")
    ledger = Ledger(workspace.root)
    watchdog: Watchdog | None = None
    failed: list[str] = []
    try:
        watchdog = _watch(run_token, workspace, probe, ledger, observer)
        if private is not None:
            # RabbitMQ boots in seconds: while the sides are read.
            broker.start_soon(private.kind, workspace.root / "broker")
        sources = Sources(backend, WheelCache(options.cache_dir), workspace, observer.say)
        bad = sources.bad(options.bad, options.python)
        good = sources.good(options.good, bad)
        if private is not None:
            check_client(private.kind, good.packages)
            probe = probe.on_broker(_await(broker, options, started))
            observer.say(
                f"{private.reason}: started a private {broker.server} on {broker.address} "
                "for this run"
            )
        workspace.python = bad.interpreter.executable
        extras = {
            name: good.root_extras.get(name, frozenset()) | bad.root_extras.get(name, frozenset())
            for name in {*good.root_extras, *bad.root_extras}
        }
        delta = Delta(good.packages, bad.packages, bad.interpreter.markers, extras)
        observer.say(_summary(delta))
        runner = _Runner(
            options, probe, sources, workspace, ledger, good, bad, delta, run_token, observer
        )
        try:
            finding = runner.run(started)
        finally:
            with processes.cleaning_up():
                failed += runner.close()
    finally:
        # A clean-up that fails is said, and never takes the place of the verdict (or error).
        with processes.cleaning_up():
            broker.stop()
            processes.stop_all()
            processes.kill_stragglers(run_token)
            left = workspace.close()
            if left is not None:
                failed.append(left)
            for problem in failed:
                observer.say(f"clean-up failed: {problem}")
            if watchdog is not None:
                watchdog.done()
    return replace(finding, cleanup_errors=tuple(mask_urls(problem) for problem in failed))


def _watch(
    token: str, workspace: Workspace, probe: Probe, ledger: Ledger, observer: Observer
) -> Watchdog | None:
    """Start the run's watchdog and record the run in its temp dir (see envbisect.leftovers)."""
    broker = probe.broker
    keep = workspace.keep
    try:
        watchdog = Watchdog.start(token, workspace.root, broker.url if broker else None, keep=keep)
    except OSError as exc:
        observer.say(f"no watchdog for this run ({exc.strerror or exc}): a SIGKILL leaves debris")
        watchdog = None
    me = Process.of(os.getpid())
    assert me is not None, "unreachable: this very process is alive"
    record = RunRecord(
        token=token,
        owner=me,
        watchdog=watchdog.process if watchdog else None,
        broker=broker.masked if broker else None,
        keep=keep,
    )
    try:
        ledger.start(record)
    except OSError as exc:
        raise EnvironmentBuildError.from_os_error(
            f"recording the run in {ledger.root}", exc
        ) from exc
    return watchdog


def _await(broker: PrivateBroker, options: Options, started: float) -> BrokerClient:
    """The private broker, once it answers (within --max-time)."""
    left = None if options.max_time is None else started + options.max_time - time.monotonic()
    try:
        return broker.wait(None if left is None else max(left, 0.0))
    except TimeoutError:
        raise TimeLimitError(
            f"--max-time {options.max_time:g} s reached while the private broker booted"
        ) from None


def _summary(delta: Delta) -> str:
    kinds: dict[str, int] = {}
    for change in delta.changes:
        kinds[change.kind.value] = kinds.get(change.kind.value, 0) + 1
    parts = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    return f"{len(delta.changes)} changes between good and bad ({parts or 'none'})"


class _Runner:
    """Runs trials for the search: builds, probes, caches, times, reports progress."""

    def __init__(
        self,
        options: Options,
        probe: Probe,
        sources: Sources,
        workspace: Workspace,
        ledger: Ledger,
        good: Side,
        bad: Side,
        delta: Delta,
        run_token: str,
        observer: Observer,
    ) -> None:
        self.options = options
        self.probe = probe
        self.sources = sources
        self.ledger = ledger  #: the run's queues, recorded before they are declared
        self.limits = options.limits(time.monotonic())
        # Search trials stop a failing worker after the verdict and take no stacks; the
        # confirmation, whose result is the report's evidence, takes a stuck worker's stacks
        # and stops it first (see _confirm_limits).
        self.limits.stop_before_verdict = False
        self.limits.take_stacks = False
        self.workspace = workspace
        self.good = good
        self.bad = bad
        self.delta = delta
        self.run_token = run_token
        self.observer = observer
        self.trials: list[Trial] = []
        self._everything = frozenset(change.name for change in delta.changes)
        self._known: dict[frozenset[str], Trial] = {}  #: the gate's sanity pair, not probed twice
        self._lock = threading.Lock()
        self._count = 0
        self._pool = ThreadPoolExecutor(max_workers=options.jobs)
        # At most this many probes at once, counting a failing worker that is still being
        # stopped: one when asked (--jobs 1) or when probes share a directory (--cwd).
        self._slots = threading.BoundedSemaphore(1 if probe.exclusive else options.jobs)
        # Envs for the sets the search may test next, built while the current probe runs.
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envbisect-pre")
        self._prebuilt: dict[frozenset[str], Future[tuple[TrialEnv, BuildTimings]]] = {}
        # Stopping healthy workers, deleting queues and envs: after the verdict, in order.
        self._cleaner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envbisect-clean")
        self._cleanups: list[Future[list[BaseException]]] = []
        limits = {
            "timeout": options.timeout,
            "boot_timeout": options.boot_timeout,
            "adaptive": options.adaptive,
            "grace": options.grace,
            "repeat": options.repeat,
        }
        self._outcomes = OutcomeCache(
            options.outcome_cache_dir or options.cache_dir / "outcomes",
            run_context(bad.interpreter, probe.settings(), limits, os.environ),
            enabled=options.outcome_cache,
        )

    def close(self) -> list[str]:
        """Wait for running trials and every clean-up; what failed in the clean-up."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._builder.shutdown(wait=True, cancel_futures=True)
        self._drop_prebuilt(keep=())
        self._cleaner.shutdown(wait=True)
        return [str(failure) for future in self._cleanups for failure in future.result()]

    def run(self, started: float) -> Finding:
        names = [change.name for change in self.delta.changes]
        if self.options.gate:
            decided = self._gate(started)
            if decided is not None:
                return decided
        result = bisect(
            names,
            self.delta.closure,
            self._oracle,
            jobs=self.options.jobs,
            prepare=self._prepare if self.options.jobs > 1 else None,
        )
        if result.status is SearchStatus.FOUND:
            return self._confirm(result, started)
        if result.status is SearchStatus.INCONSISTENT:
            return self._finding(
                Verdict.INCONSISTENT,
                (),
                None,
                started,
                note="the results do not single out a minimal failing set" + self._flaky_note(),
                disagreements=result.disagreements,
            )
        return self._sanity_failed(result.status, started)

    def _sanity_failed(self, status: SearchStatus, started: float) -> Finding:
        """The good set did not pass, or the bad set did not fail: say exactly how."""
        subset, expected, verdict = {
            SearchStatus.GOOD_FAILS: (frozenset(), Outcome.FAIL, Verdict.GOOD_FAILS),
            SearchStatus.BAD_PASSES: (self._everything, Outcome.PASS, Verdict.BAD_PASSES),
        }[status]
        # By set, not phase: with no changes both are one trial; a gate's is "candidate".
        trial = next(t for t in self.trials if t.changes == subset)
        if trial.outcome is expected:
            return self._finding(verdict, (), trial, started)
        side = "good set" if status is SearchStatus.GOOD_FAILS else "bad set"
        return self._undecided(trial, side, started)

    def _undecided(self, trial: Trial, side: str, started: float) -> Finding:
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
            Verdict.INCONSISTENT,
            (),
            trial,
            started,
            note=f"the {side} {what}",
            disagreements=(trial.changes,),
        )

    def _flaky_note(self) -> str:
        flaky = [t for t in self.trials if t.outcome is Outcome.FLAKY]
        if not flaky:
            return ""
        listed = "; ".join(
            f"trial {t.index} ({', '.join(r.outcome.value for r in t.results)})" for t in flaky
        )
        return f"; flaky trials: {listed}"

    def _gate(self, started: float) -> Finding | None:
        """The candidate decides: a verdict when it does not fail, else None (search on).

        Both are probed afresh, never taken from the outcome cache: the gate's verdict is
        theirs. The baseline is probed alongside (first, when one probe runs at a time), as
        the search's sanity pair would be: a failing candidate then waits only as long as
        the baseline's healthy worker suggests.
        """
        sets = [frozenset(), self._everything] if self.delta.changes else [frozenset()]
        trials = self._trials(
            [(s, "candidate" if s == self._everything else "good", self.limits) for s in sets],
            use_cache=False,
        )
        candidate, baseline = trials[-1], trials[0]
        if candidate.outcome is Outcome.PASS:
            note = ""
            if baseline.outcome is not Outcome.PASS:
                note = f"the baseline fails the probe ({baseline.outcome}): the candidate fixes it"
            return self._finding(Verdict.PASS, (), candidate, started, note=note)
        if candidate.outcome is not Outcome.FAIL:
            return self._undecided(candidate, f"candidate {self.bad.label}", started)
        # The search's sanity pair is done: it must not probe either set again.
        self._known.update({trial.changes: trial for trial in trials})
        return None

    def _confirm(self, result: SearchResult, started: float) -> Finding:
        """Re-run good + culprits with the full limits: a wrong culprit is worse than none."""
        culprits = tuple(self.delta.change(n) for n in sorted(result.culprits))
        self.observer.say(
            "confirming: "
            + ", ".join(change.describe() for change in culprits)
            + "; and that the good set still passes"
        )
        # Both ends, afresh and with generous limits: the culprit set must fail again, and
        # the good set pass again (else something besides the packages decides).
        limits = self._confirm_limits()
        confirm, good = self._trials(
            [(result.failing_set, "confirm", limits), (frozenset(), "confirm", limits)],
            use_cache=False,
        )
        for trial, side in ((confirm, "the culprit set"), (good, "the good set")):
            if trial.result.diagnosis is Diagnosis.ENV_BUILD:
                raise EnvironmentBuildError(f"{side}: {trial.result.detail}")
        if good.outcome is not Outcome.PASS:
            runs = ", ".join(r.outcome.value for r in good.results)
            return self._finding(
                Verdict.INCONSISTENT,
                (),
                good,
                started,
                note=(
                    f"the good set did not pass when probed again ({runs}), so no culprit is "
                    "named: the probe is flaky, or something outside the package sets decides it"
                    + self._flaky_note()
                ),
                disagreements=(frozenset(),),
            )
        if confirm.outcome is not Outcome.FAIL:
            suspects = ", ".join(change.describe() for change in culprits)
            runs = ", ".join(r.outcome.value for r in confirm.results)
            return self._finding(
                Verdict.INCONSISTENT,
                (),
                confirm,
                started,
                note=(
                    f"the suspected set ({suspects}) did not fail again with generous time "
                    f"limits ({runs}): the probe is flaky, or --timeout is too tight"
                    + self._flaky_note()
                ),
                disagreements=(result.failing_set,),
            )
        note = "interaction: these fail only together" if len(culprits) > 1 else ""
        flaky = self._flaky_note().removeprefix("; ")
        note = "; ".join(part for part in (note, flaky and f"worked around {flaky}") if part)
        narrowings = []
        for change in culprits if self.options.narrow else ():
            if change.kind is ChangeKind.VERSION:
                narrowings.append(self._narrow(change, result.failing_set, confirm))
            else:
                self.observer.say(f"not narrowed: {change.describe()} is not a version change")
        return self._finding(
            Verdict.CULPRIT_FOUND, culprits, confirm, started, note=note, narrowings=narrowings
        )

    def _narrow(self, change: Change, failing: frozenset[str], confirm: Trial) -> Narrowing:
        """The first release from the good towards the bad version that fails, rest fixed."""
        assert change.good is not None and change.bad is not None
        good, bad = change.good.version, change.bad.version
        ends = (good, bad)
        backend = self.sources.installer
        try:
            available = backend.releases(
                change.display_name,
                self.bad.interpreter.executable,
                ends,
                self.workspace.scratch(f"releases-{change.name}"),
            )
            line = versions_between(available, good, bad)
        except InvalidVersion:
            note = f"{good} or {bad} is not a PEP 440 version"
            return Narrowing(change, ends, (), None, None, note=note)
        except TimeLimitError:
            note = "--max-time reached while listing its releases"
            return Narrowing(change, ends, (), None, None, note=note)
        except InstallerError as exc:
            # The reason may quote an index URL, with its credentials.
            note = mask_urls(
                f"{backend.name} listed no release of {change.display_name}: {exc.reason}"
            )
            return Narrowing(change, ends, (), None, None, note=note)
        self.observer.say(
            f"narrowing {change.describe()}: {len(line) - 2} release(s) between, "
            "the rest of the culprit set fixed"
        )
        rest = failing - {change.name}
        good_end = self._earlier(rest) or self._trial(
            self._next_index(), rest, "narrow", self.limits
        )
        tried = [Tried(good, good_end.outcome, good_end.index, good_end.result.detail)]
        tried.append(Tried(bad, confirm.outcome, confirm.index, confirm.result.detail))
        if good_end.outcome is not Outcome.PASS:
            note = f"with {change.display_name} {good} the rest of the culprit set fails too"
            return Narrowing(change, tuple(line), tuple(tried), None, None, note=note)

        def test(indices: Sequence[int]) -> list[Outcome]:
            if self.limits.left() <= 0:
                # --max-time: leave the rest untested, keep the culprit
                return [Outcome.ERROR for _ in indices]
            trials = self._gather(
                [
                    self._pool.submit(
                        self._trial,
                        self._next_index(),
                        failing,
                        "narrow",
                        self.limits,
                        swap=(change, line[index]),
                    )
                    for index in indices
                ]
            )
            for index, trial in zip(indices, trials, strict=True):
                tried.append(Tried(line[index], trial.outcome, trial.index, trial.result.detail))
            return [trial.outcome for trial in trials]

        boundary = first_failing(len(line), test, jobs=self.options.jobs)
        untestable = tuple(line[i] for i in boundary.unresolved)
        note = "--max-time reached while narrowing" if self.limits.left() <= 0 else ""
        return Narrowing(
            change,
            tuple(line),
            tuple(sorted(tried, key=lambda t: line.index(t.version))),
            last_good=line[boundary.last_pass],
            first_bad=line[boundary.first_fail],
            untestable=untestable,
            note=note,
        )

    def _earlier(self, subset: frozenset[str]) -> Trial | None:
        """A search trial of exactly this set, if one ran."""
        return next((t for t in self.trials if t.changes == subset and t.substitute is None), None)

    def _finding(
        self,
        verdict: Verdict,
        culprits: tuple[Change, ...],
        evidence: Trial | None,
        started: float,
        *,
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
            seconds=time.monotonic() - started,
            probe=self.probe.describe(),
            good=self.good.label,
            bad=self.bad.label,
            installer=self.options.installer,
            jobs=self.options.jobs,
            workspace=self.workspace.root if self.options.keep_envs else None,
            note=note,
            disagreements=tuple(disagreements),
            narrowings=tuple(narrowings),
            gate=self.options.gate,
            startup_hooks={
                change.name: startup_hooks(self.bad.wheels[change.name])
                for change in culprits
                if change.bad is not None and change.name in self.bad.wheels
            },
        )

    def _oracle(self, batch: Sequence[frozenset[str]]) -> list[Outcome]:
        if self.limits.left() <= 0:
            raise TimeLimitError(f"--max-time {self.options.max_time:g} s reached")
        trials = self._trials([(subset, self._phase(subset), self.limits) for subset in batch])
        if self.limits.left() <= 0:
            raise TimeLimitError(f"--max-time {self.options.max_time:g} s reached")
        return [trial.outcome for trial in trials]

    def _trials(
        self, requests: Sequence[tuple[frozenset[str], str, Limits]], *, use_cache: bool = True
    ) -> list[Trial]:
        """Run these trials (set, phase, limits) at once, as far as --jobs allows, numbered
        in the order given."""
        futures = []
        for subset, phase, limits in requests:
            known = self._known.get(subset) if use_cache else None
            if known is not None:
                futures.append(_done(known))
                continue
            index = self._next_index()
            futures.append(
                self._pool.submit(self._trial, index, subset, phase, limits, use_cache=use_cache)
            )
        return self._gather(futures)

    def _gather(self, futures: Sequence[Future[Trial]]) -> list[Trial]:
        """The trials of these futures, in order."""
        try:
            return [future.result() for future in futures]
        except BaseException as first:
            # This run is over: its other trials need not run to their time limits.
            processes.stop_all()
            raise _cause(first, futures) from None

    def _next_index(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def _prepare(self, upcoming: Sequence[frozenset[str]]) -> None:
        """Start building the envs of the sets the search may test next."""
        self._drop_prebuilt(keep=upcoming)
        for subset in upcoming:
            if subset not in self._prebuilt:
                wheels = self._wheels(self.delta.trial(subset), {})
                label = f"pre{len(self._prebuilt) + self._count}"
                self._prebuilt[subset] = self._builder.submit(self.workspace.build, wheels, label)

    def _drop_prebuilt(self, keep: Sequence[frozenset[str]]) -> None:
        for subset in [s for s in self._prebuilt if s not in keep]:
            future = self._prebuilt.pop(subset)
            if not future.cancel():
                # A failed build, or one cut short by an interrupt, left nothing to discard.
                with contextlib.suppress(EnvbisectError, processes.ShuttingDown):
                    self.workspace.discard(future.result()[0])

    def _phase(self, subset: frozenset[str]) -> str:
        if not subset:
            return "good"
        if len(subset) == len(self.delta.changes) and not self.trials:
            return "bad"
        return "search"

    def _trial(
        self,
        index: int,
        subset: frozenset[str],
        phase: str,
        limits: Limits,
        *,
        use_cache: bool = True,
        swap: tuple[Change, str] | None = None,
    ) -> Trial:
        """Probe good + ``subset``; with ``swap``, that version of a culprit instead of its bad."""
        self.observer.trial_started(index, phase, len(subset))
        trial = self._outcome(index, phase, subset, limits, use_cache, swap)
        if phase == "good":
            problem = self.probe.unusable(trial.result)
            if problem is not None:
                raise InputError(problem)
            if trial.outcome is Outcome.PASS and self.options.adaptive:
                self._learn(trial.result)
        with self._lock:
            self.trials.append(trial)
        self.observer.trial_finished(trial)
        return trial

    def _outcome(
        self,
        index: int,
        phase: str,
        subset: frozenset[str],
        limits: Limits,
        use_cache: bool,
        swap: tuple[Change, str] | None,
    ) -> Trial:
        packages = self.delta.trial(subset)
        fetched: dict[NormalizedName, Path] = {}
        if swap is not None:
            change, version = swap
            pin = f"{change.display_name}=={version}"
            try:
                package, wheel = self.sources.fetch([pin], self.bad.interpreter)[change.name]
            except (EnvbisectError, KeyError) as exc:
                detail = f"cannot fetch {pin}: {exc}"
                missing = Package(change.name, change.display_name, version)
                return _unrun(index, phase, subset, Outcome.ERROR, detail, missing)
            packages[change.name], fetched[change.name] = package, wheel
            unmet = unmet_requirements(package, packages, self.delta.markers)
            if unmet:
                detail = f"untestable: {pin} needs {', '.join(unmet)}"
                return _unrun(index, phase, subset, Outcome.SKIP, detail, package)
        key = self._outcomes.key(packages)
        # An outcome that files outside the env decide (an editable install's source tree,
        # what a --probe-cmd reads) can change without the set changing: never cached.
        cacheable = self.probe.cacheable and not any(p.editable for p in packages.values())
        cached = self._outcomes.get(key, limits) if use_cache and cacheable else None
        if cached is not None:
            trial = Trial(
                index, phase, subset, cached.outcome, (cached,), 0.0, 0.0, 0.0, cached=True
            )
        else:
            prebuilt = self._prebuilt.pop(subset, None) if swap is None else None
            wheels = self._wheels(packages, fetched)
            trial = self._probe(index, phase, subset, wheels, prebuilt, limits)
            if cacheable and trial.outcome is trial.result.outcome:  # not flaky
                self._outcomes.put(key, trial.result)
        return replace(trial, substitute=packages[swap[0].name]) if swap else trial

    def _probe(
        self,
        index: int,
        phase: str,
        subset: frozenset[str],
        wheels: list[Path],
        prebuilt: Future[tuple[TrialEnv, BuildTimings]] | None,
        limits: Limits,
    ) -> Trial:
        started = time.monotonic()
        label = f"t{index:02d}"
        try:
            if prebuilt is not None:
                env, build = prebuilt.result()
            else:
                env, build = self.workspace.build(wheels, label)
        except EnvironmentBuildError as exc:
            if exc.disk_full:
                raise  # every later build would fail the same way
            # An installer's error may quote an index URL with its credentials.
            detail = mask_urls(f"env build failed: {exc}")
            error = ProbeResult(Outcome.ERROR, Diagnosis.ENV_BUILD, detail)
            return Trial(
                index, phase, subset, Outcome.ERROR, (error,), 0.0, 0.0, time.monotonic() - started
            )
        waited_for_env = time.monotonic() - started
        try:
            results = tuple(
                self._run_probe(env, f"{label}r{n}", limits) for n in range(self.options.repeat)
            )
        finally:
            self._later(lambda: self.workspace.discard(env))
        outcomes = {result.outcome for result in results}
        outcome = outcomes.pop() if len(outcomes) == 1 else Outcome.FLAKY
        return Trial(
            index,
            phase,
            subset,
            outcome,
            results,
            waited_for_env,
            build.total,
            time.monotonic() - started,
        )

    def _run_probe(self, env: TrialEnv, label: str, limits: Limits) -> ProbeResult:
        """One probe run in a slot of its own; the slot is free once its processes are gone."""
        token = f"{self.run_token}-{label}"
        later = Later()
        self._slots.acquire()
        try:
            queues = self.probe.queues(token)
            if queues:
                self.ledger.add_queues(queues)
            return self.probe.run(env, token, limits, later)
        except OSError as exc:
            # The probe's own files in the trial's scratch dir (module, socket, log):
            # a full disk, almost always, and then every later trial fails too.
            raise EnvironmentBuildError.from_os_error(f"probing in {env.scratch}", exc) from exc
        finally:
            # After the worker is stopped: whatever it started that escaped its group.
            later.add(lambda: processes.kill_stragglers(token))
            later.add(self._slots.release)
            self._cleanups.append(self._cleaner.submit(later.run))

    def _later(self, step: Callable[[], object]) -> None:
        """Clean-up off the critical path: in order, on the cleaner thread."""
        steps = Later()
        steps.add(step)
        self._cleanups.append(self._cleaner.submit(steps.run))

    def _wheels(
        self, packages: Mapping[NormalizedName, Package], fetched: Mapping[NormalizedName, Path]
    ) -> list[Path]:
        return [
            fetched.get(name)
            or (
                self.bad.wheels[name]
                if self.bad.packages.get(name) == package
                else self.good.wheels[name]
            )
            for name, package in sorted(packages.items())
        ]

    def _confirm_limits(self) -> Limits:
        """Generous limits: the user's full ones, or many times the adaptive ones."""
        limits = self.options.limits(time.monotonic())
        limits.hard_deadline = self.limits.hard_deadline
        limits.tighten(
            boot=max(CONFIRM_FLOOR, CONFIRM_FACTOR * self.limits.boot),
            consume=max(CONFIRM_FLOOR, CONFIRM_FACTOR * self.limits.consume),
        )
        return limits

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


def _done(trial: Trial) -> Future[Trial]:
    """A trial already known, as a finished future."""
    future: Future[Trial] = Future()
    future.set_result(trial)
    return future


def _unrun(
    index: int,
    phase: str,
    subset: frozenset[str],
    outcome: Outcome,
    detail: str,
    substitute: Package,
) -> Trial:
    """A narrowing trial decided without a probe: the version cannot be fetched or tried."""
    diagnosis = Diagnosis.SKIPPED if outcome is Outcome.SKIP else Diagnosis.ENV_BUILD
    result = ProbeResult(outcome, diagnosis, detail)
    return Trial(index, phase, subset, outcome, (result,), 0.0, 0.0, 0.0, substitute=substitute)


def _cause(first: BaseException, futures: Sequence[Future[Trial]]) -> BaseException:
    """The error that ended a round: a reported one (a full disk, an interrupt)
    outranks what stopping the round's other trials caused in them."""
    if isinstance(first, EnvbisectError | processes.Interrupted | KeyboardInterrupt):
        return first
    wait(futures, timeout=30)  # stopped trials end in a second or two
    for future in futures:
        if future.done() and not future.cancelled():
            error = future.exception()
            if isinstance(error, EnvbisectError):
                return error
    return first
