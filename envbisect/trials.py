"""Running trials: an exact package set and a probe in, a :class:`~envbisect.model.Trial` out.

This is the seam between the run's procedure and where trials run. The
procedure decides *which* sets to probe and what the outcomes mean; a
:class:`TrialRunner` only runs what it is asked, as far as its slots allow, and
says what it saw. :class:`LocalRunner` runs them on this machine: it builds
each trial env from the wheel source (ahead of time where the procedure says
which sets come next), probes it as often as asked, answers from the outcome
cache where that may stand in for a probe (see :mod:`envbisect.outcomes`), and
schedules the clean-up (stopping healthy workers, deleting queues and envs)
off the critical path.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from envbisect import processes
from envbisect.delta import Package, Packages
from envbisect.errors import EnvbisectError, EnvironmentBuildError
from envbisect.flakiness import outcome_of
from envbisect.leftovers import Ledger
from envbisect.limits import Limits
from envbisect.masking import mask_urls
from envbisect.model import Diagnosis, Outcome, Phase, ProbeResult, Trial, TrialEnv
from envbisect.outcomes import OutcomeCache
from envbisect.probes.base import Later, Probe
from envbisect.wheelsource import WheelSource
from envbisect.workspace import BuildTimings, Workspace


@dataclass(frozen=True)
class TrialRequest:
    """One trial to run: exactly these packages, probed within these limits."""

    index: int  #: the trial's number in the run (the report's order)
    phase: Phase
    changes: frozenset[str]  #: the changes applied to the good set (for the report)
    packages: Packages  #: the whole set to install
    limits: Limits
    #: False: probe afresh even if a cached outcome could stand in (the gate's and the
    #: confirmation's trials decide a verdict themselves).
    use_cache: bool = True
    substitute: Package | None = None  #: narrowing: the version tried instead of the bad one
    runs: int = 1  #: how many times to probe the set (--repeat K, --flaky)
    #: Stop probing once this many runs failed (None: all ``runs``): one failure already
    #: fails a search trial; the bad set's estimate of its failure rate wants a few.
    stop_after: int | None = None


class TrialRunner(Protocol):
    """Runs trials; the procedure's only way to probe."""

    def submit(
        self, request: TrialRequest, then: Callable[[Trial], None] | None = None
    ) -> Future[Trial]:
        """Run one trial. ``then`` is called with it before the future completes (an
        exception there is the future's)."""
        ...

    def prepare(self, upcoming: Sequence[Packages]) -> None:
        """A hint: these sets may come next (a runner may build their envs meanwhile)."""
        ...

    def close(self) -> list[str]:
        """Wait for running trials and every clean-up; one line per clean-up that failed."""
        ...


class LocalRunner:
    """Runs trials on this machine, ``jobs`` at a time."""

    def __init__(
        self,
        probe: Probe,
        wheels: WheelSource,
        workspace: Workspace,
        outcomes: OutcomeCache,
        ledger: Ledger,
        run_token: str,
        *,
        jobs: int,
    ) -> None:
        self.probe = probe
        self.wheels = wheels
        self.workspace = workspace
        self.outcomes = outcomes
        self.ledger = ledger  #: the run's queues, recorded before they are declared
        self.run_token = run_token
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="envbisect-trial")
        # At most this many probes at once, counting a failing worker that is still being
        # stopped: one when asked (--jobs 1) or when probes share a directory (--cwd).
        self._slots = threading.BoundedSemaphore(1 if probe.exclusive else jobs)
        # Envs for the sets the search may test next, built while the current probe runs.
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envbisect-pre")
        self._prebuilt: dict[frozenset[Package], Future[tuple[TrialEnv, BuildTimings]]] = {}
        self._prebuilt_count = 0
        # Stopping healthy workers, deleting queues and envs: after the verdict, in order.
        self._cleaner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envbisect-clean")
        self._cleanups: list[Future[list[BaseException]]] = []

    def submit(
        self, request: TrialRequest, then: Callable[[Trial], None] | None = None
    ) -> Future[Trial]:
        def run() -> Trial:
            trial = self._run(request)
            if then is not None:
                then(trial)
            return trial

        return self._pool.submit(run)

    def prepare(self, upcoming: Sequence[Packages]) -> None:
        keys = [frozenset(packages.values()) for packages in upcoming]
        self._drop_prebuilt(keep=keys)
        for key, packages in zip(keys, upcoming, strict=True):
            if key not in self._prebuilt:
                self._prebuilt_count += 1
                self._prebuilt[key] = self._builder.submit(
                    self.workspace.build, self._wheels(packages), f"pre{self._prebuilt_count}"
                )

    def close(self) -> list[str]:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._builder.shutdown(wait=True, cancel_futures=True)
        self._drop_prebuilt(keep=())
        self._cleaner.shutdown(wait=True)
        return [str(failure) for future in self._cleanups for failure in future.result()]

    def _run(self, request: TrialRequest) -> Trial:
        """The cached outcome where it may stand in for a probe, else a fresh probe."""
        key = self.outcomes.key(request.packages, request.runs)
        # An outcome that files outside the env decide (an editable install's source tree,
        # what a --probe-cmd reads) can change without the set changing: never cached.
        cacheable = self.probe.cacheable and not any(
            package.editable for package in request.packages.values()
        )
        cached = self.outcomes.get(key, request.limits) if request.use_cache and cacheable else None
        if cached is not None:
            return Trial(
                request.index,
                request.phase,
                request.changes,
                cached.outcome,
                (cached,),
                cached=True,
                substitute=request.substitute,
            )
        trial = self._probe(request)
        if cacheable and trial.outcome is trial.result.outcome:  # not flaky
            self.outcomes.put(key, trial.result)
        return trial

    def _probe(self, request: TrialRequest) -> Trial:
        """Build (or take the prebuilt) env, probe it as often as asked, schedule its removal."""
        started = time.monotonic()
        label = f"t{request.index:02d}"
        prebuilt = self._prebuilt.pop(frozenset(request.packages.values()), None)
        try:
            if prebuilt is not None:
                env, build = prebuilt.result()
            else:
                env, build = self.workspace.build(self._wheels(request.packages), label)
        except EnvironmentBuildError as exc:
            if exc.disk_full:
                raise  # every later build would fail the same way
            # An installer's error may quote an index URL with its credentials.
            error = ProbeResult(
                Outcome.ERROR, Diagnosis.ENV_BUILD, mask_urls(f"env build failed: {exc}")
            )
            return Trial(
                request.index,
                request.phase,
                request.changes,
                Outcome.ERROR,
                (error,),
                seconds=time.monotonic() - started,
                substitute=request.substitute,
            )
        waited_for_env = time.monotonic() - started
        results: list[ProbeResult] = []
        try:
            for n in range(request.runs):
                results.append(self._run_probe(env, f"{label}r{n}", request.limits))
                failed = sum(result.outcome is Outcome.FAIL for result in results)
                if request.stop_after is not None and failed >= request.stop_after:
                    break
        finally:
            self._later(lambda: self.workspace.discard(env))
        return Trial(
            request.index,
            request.phase,
            request.changes,
            outcome_of([result.outcome for result in results]),
            tuple(results),
            env_seconds=waited_for_env,
            build_seconds=build.total,
            seconds=time.monotonic() - started,
            substitute=request.substitute,
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

    def _drop_prebuilt(self, keep: Sequence[frozenset[Package]]) -> None:
        for key in [k for k in self._prebuilt if k not in keep]:
            future = self._prebuilt.pop(key)
            if not future.cancel():
                # A failed build, or one cut short by an interrupt, left nothing to discard.
                with contextlib.suppress(EnvbisectError, processes.ShuttingDown):
                    self.workspace.discard(future.result()[0])

    def _wheels(self, packages: Packages) -> list[Path]:
        return [self.wheels.wheel_for(packages[name]) for name in sorted(packages)]
