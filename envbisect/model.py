"""The shared types of a run: outcomes, probe results, trials, findings, verdicts.

Plain data, no I/O: every stage (probes, the trial runner, the procedure, the
report) speaks in these.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from envbisect.isolation import isolated_environ
from envbisect.masking import mask_urls
from envbisect.procfs import RUN_TOKEN_VAR

if TYPE_CHECKING:
    from packaging.utils import NormalizedName

    from envbisect.delta import Change, Delta, Package
    from envbisect.stacks import Stacks
    from envbisect.startup import StartupHook


class Outcome(StrEnum):
    """The result of probing one environment."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  #: untestable (git-bisect exit 125)
    FLAKY = "flaky"  #: repeated runs disagreed
    ERROR = "error"  #: the trial could not be run (e.g. the env build failed)


class Diagnosis(StrEnum):
    """Why a probe came out the way it did, told apart by evidence."""

    CONSUMED = "consumed"  #: the actor ran inside the trial env
    CRASHED = "crashed"  #: the worker exited (status and last stderr lines kept)
    NEVER_READY = "never-ready"  #: the worker process is up but never finished booting
    NOT_DELIVERED = "not-delivered"  #: worker ready, message still ready on the broker
    DELIVERED_NOT_RUN = "delivered-not-run"  #: delivered (unacked), the actor never ran
    CONSUMER_ERRORS = "consumer-errors"  #: the worker keeps restarting its consumer
    ACTOR_ERROR = "actor-error"  #: the actor ran and raised
    EXIT_STATUS = "exit-status"  #: a command probe's exit status decided
    TIMED_OUT = "timed-out"  #: a command probe ran past its time limit
    SKIPPED = "skipped"  #: a command probe said "untestable" (exit 125)
    ENV_BUILD = "env-build-failed"  #: the trial env could not be built


@dataclass(frozen=True)
class LimitReached:
    """A time limit ran out before the probe could pass: the result says "not within this"."""

    limit: str  #: which one: "boot", "consume" or "command" (see :class:`Limits`)
    waited: float  #: seconds the probe waited before it gave up


@dataclass(frozen=True)
class ProbeResult:
    """One probe run: the verdict, why, and what was seen."""

    outcome: Outcome
    diagnosis: Diagnosis
    detail: str  #: one line for humans
    evidence: tuple[str, ...] = ()  #: last lines of the worker/command output
    timings: Mapping[str, float] = field(default_factory=dict)  #: boot / wait / stop seconds
    exit_status: int | None = None
    #: The probe itself could not be set up in this env (a missing worker module, a
    #: command that does not exist): not a verdict on the packages.
    setup_error: str | None = None
    #: Set when a time limit decided a failure (a stall, a slow boot): with a longer limit
    #: the same run might have passed.
    limit_reached: LimitReached | None = None
    #: Every thread's stack of a worker that was alive but stuck, taken before it was
    #: stopped (only where :attr:`Limits.take_stacks` asked for them); None when not sought.
    stacks: Stacks | None = None

    def __post_init__(self) -> None:
        # Whatever probe made it, a result holds no credential: it goes to reports,
        # the terminal and the outcome cache.
        masked = {
            "detail": mask_urls(self.detail),
            "evidence": tuple(mask_urls(line) for line in self.evidence),
            "setup_error": None if self.setup_error is None else mask_urls(self.setup_error),
        }
        for name, value in masked.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Venv:
    """Where things are in a virtual environment (POSIX layout)."""

    path: Path

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"


@dataclass(frozen=True)
class TrialEnv:
    """A materialised trial environment and a private scratch directory for its probe."""

    path: Path
    scratch: Path

    @property
    def venv(self) -> Venv:
        """The env's layout."""
        return Venv(self.path)

    @property
    def python(self) -> Path:
        return self.venv.python

    def run_dir(self) -> Path:
        """A fresh directory for one probe run (repeats of a trial share the env, not this)."""
        return Path(tempfile.mkdtemp(prefix="p", dir=self.scratch))

    def environ(self, token: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment a process in this trial runs with: the user's, isolated
        (see :data:`DROPPED_VARIABLES`) and pointed at the env."""
        env = isolated_environ()
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = f"{self.venv.bin}{os.pathsep}{env.get('PATH', os.defpath)}"
        env[RUN_TOKEN_VAR] = token
        env.update(extra or {})
        return env


class Phase(StrEnum):
    """Why a trial ran: the step of the procedure it belongs to."""

    CANDIDATE = "candidate"  #: gate: the candidate (the bad side) alone
    GOOD = "good"  #: the good set: it must pass
    BAD = "bad"  #: the bad set: it must fail
    SEARCH = "search"  #: a subset the delta debugging asked for
    CONFIRM = "confirm"  #: the culprit set and the good set again, with generous limits
    NARROW = "narrow"  #: a release between a version culprit's good and bad version


class Verdict(StrEnum):
    """What a run concludes."""

    PASS = "pass"  #: gate: the candidate passes the probe
    CULPRIT_FOUND = "culprit-found"
    GOOD_FAILS = "good-fails"
    BAD_PASSES = "bad-passes"
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True)
class Trial:
    """One probed package set."""

    index: int
    phase: Phase
    changes: frozenset[str]
    outcome: Outcome
    results: tuple[ProbeResult, ...]
    env_seconds: float = 0.0  #: waiting for the env on the critical path (0 when prebuilt)
    build_seconds: float = 0.0  #: building the env (create + install), wherever it happened
    seconds: float = 0.0
    cached: bool = False
    substitute: Package | None = None  #: narrowing: this version instead of the change's bad one

    @property
    def result(self) -> ProbeResult:
        """The result that decided: the first failing one, else the first."""
        failing = [r for r in self.results if r.outcome is Outcome.FAIL]
        return (failing or list(self.results))[0]


@dataclass(frozen=True)
class Tried:
    """One version of the culprit, tried in place of its bad version."""

    version: str
    outcome: Outcome
    trial: int  #: the trial that tried it (for the ends: the search's own trials)
    detail: str = ""
    #: Companions it pins exactly, tried at those versions with it (``lockstep-core 1.2``).
    companions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Narrowing:
    """The releases between a culprit's good and bad version, and which first fails."""

    change: Change
    versions: tuple[str, ...]  #: good version first, bad version last, releases between
    tested: tuple[Tried, ...]
    last_good: str | None  #: the last version (from the good end) that passes
    first_bad: str | None  #: the first that fails; None when it was not narrowed (see note)
    untestable: tuple[str, ...] = ()  #: between last_good and first_bad, could not be tried
    note: str = ""
    #: The culprit it answers for, when that is a lockstep companion of :attr:`change`
    #: (the wrapper's releases were narrowed for its core); None: :attr:`change` itself.
    culprit: str | None = None

    def answers(self, change: Change) -> bool:
        """Whether this narrowing is the one of culprit ``change``."""
        return change.name == (self.culprit or self.change.name)

    def describe(self) -> str:
        """E.g. ``first bad pika version: 0.13.1 (last good 1.0.0; 4 of 12 releases tried)``."""
        name = self.change.display_name
        if self.first_bad is None:
            return f"{name}: versions not narrowed: {self.note}"
        head = f"first bad {name} version: {self.first_bad}"
        first = next((t for t in self.tested if t.version == self.first_bad), None)
        if first is not None and first.companions:
            head += f" (with {', '.join(first.companions)})"
        between = len(self.versions) - 2
        if not between:
            return f"{head} (no release between it and {self.last_good})"
        text = (
            f"{head} (last good {self.last_good}; "
            f"{len(self.tested) - 2} of {between} releases between tried)"
        )
        if self.untestable:
            text += f"; or one of the untestable {', '.join(self.untestable)}"
        return text


@dataclass(frozen=True)
class Rate:
    """How often a set failed: ``failed`` of ``runs``."""

    failed: int
    runs: int

    @classmethod
    def of(cls, outcomes: Iterable[Outcome]) -> Rate:
        """The failures among these runs' outcomes."""
        seen = list(outcomes)
        return cls(sum(outcome is Outcome.FAIL for outcome in seen), len(seen))

    def describe(self) -> str:
        """``9 of 18 runs``."""
        return f"{self.failed} of {self.runs} run{'s' if self.runs != 1 else ''}"


@dataclass(frozen=True)
class Flakiness:
    """What the run's repeated runs showed, for the report."""

    runs: int  #: K: the runs a set gets (a search trial stops at its first failure)
    chosen: bool  #: True: --flaky chose K from the bad set's rate; False: --repeat K
    bad: Rate  #: the bad set's runs (the failure rate's estimate)
    good: Rate  #: the good set's runs, all of them
    culprits: Rate | None  #: the confirmation of the culprit set
    miss: float  #: the chance a set holding the culprit passes all K runs
    confidence: float  #: the chance that no passing trial of the run hid a failure

    def describe(self) -> str:
        """One line: the rates and how sure the run is."""
        parts = []
        if self.culprits is not None:
            parts.append(f"the culprit set fails {self.culprits.describe()}")
        parts.append(f"the good set {self.good.describe()}")
        parts.append(f"the bad set {self.bad.describe()}")
        how = "chosen by --flaky" if self.chosen else "--repeat"
        return (
            "; ".join(parts)
            + f"; K = {self.runs} runs a set ({how}): a set with the culprit passes them all "
            f"with chance {percent(self.miss)}; confidence {percent(self.confidence)}"
        )


def percent(chance: float) -> str:
    """``99.7 %``; never 100 % or 0 % for what is only nearly sure."""
    if 0.9995 <= chance < 1:
        return ">99.9 %"
    if 0 < chance < 0.0005:
        return "<0.1 %"
    return f"{chance * 100:.1f} %"


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
    slots: int = 1  #: P: how many probes could run at once
    rounds: int = 0  #: the search's rounds of trials (the sanity pair's included; 0: no search)
    flakiness: Flakiness | None = None  #: with --repeat K or --flaky: rates and confidence
    #: How to run the probe by hand (see :meth:`~envbisect.probes.base.Probe.recipe`).
    recipe: Mapping[str, Any] = field(default_factory=dict)
    index: str | None = None  #: the package index the sets came from (masked); None: PyPI
    find_links: tuple[str, ...] = ()  #: the run's --find-links directories
    python: str = ""  #: the trial envs' interpreter (its executable)


class Observer(Protocol):
    """Progress callbacks; the report module implements them for the terminal."""

    def say(self, text: str) -> None: ...

    def trial_finished(self, trial: Trial) -> None: ...

    def plan(self, phase: Phase, bound: int, in_play: int) -> None:
        """Where the run is: its phase, the trials it expects in all (a bound, not a
        promise), and how many changes are still in play."""
        ...
