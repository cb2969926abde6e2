"""What every probe shares: the trial it runs in, its result, and its interface."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from envbisect.broker import BrokerClient
from envbisect.masking import mask_urls
from envbisect.processes import RUN_TOKEN_VAR
from envbisect.search import Outcome
from envbisect.stacks import Stacks

if TYPE_CHECKING:
    from envbisect.broker import BrokerClient


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


#: Variables of the user's environment that no trial process and no installer command
#: inherits: each would put code, packages or settings other than the trial env's into
#: play, or make an installer resolve, install or create differently than envbisect
#: asked. The user's package configuration (indexes, find-links, credentials,
#: certificates, proxies) is kept. See README, "Isolation".
DROPPED_VARIABLES = frozenset(
    {
        # Python: what the interpreter imports, and from where.
        "PYTHONPATH",  # puts foreign code first on sys.path (a stray dramatiq.py)
        "PYTHONHOME",  # points the interpreter at another prefix's stdlib and packages
        "PYTHONSTARTUP",  # runs the user's file in every interactive interpreter
        "PYTHONUSERBASE",  # another user site: where --user installs go and come from
        "PYTHONPLATLIBDIR",  # another lib dir name: the env's site-packages is not found
        "VIRTUAL_ENV",  # another env counts as active (a trial sets its own)
        "CONDA_PREFIX",  # an active conda env, which uv would take as the target
        "__PYVENV_LAUNCHER__",  # macOS: the interpreter believes it runs another venv
        # uv: what gets resolved or installed, and where.
        "UV_CONSTRAINT",  # constraints beside the sides' own files
        "UV_OVERRIDE",
        "UV_EXCLUDE",
        "UV_BUILD_CONSTRAINT",
        "UV_PYTHON",  # another interpreter than the one envbisect names
        "UV_SYSTEM_PYTHON",
        "UV_REQUIRE_HASHES",  # refuses the repacked wheels (no hashes to check them by)
        "UV_NO_EDITABLE",  # an editable of the good file would be installed as a copy
        "UV_VENV_SEED",  # pip and setuptools in every trial env: packages neither side has
        # pip: the same, for pip and pip-tools.
        "PIP_CONSTRAINT",
        "PIP_PYTHON",
        "PIP_REQUIRE_HASHES",
        "PIP_REQUIRE_VIRTUALENV",  # refuses fetching into a directory with a base Python
        "PIP_TARGET",  # installs somewhere else than the env envbisect names
        "PIP_PREFIX",
        "PIP_ROOT",
        "PIP_USER",
    }
)
#: Every variable starting with one of these is dropped too: virtualenv's settings
#: (``VIRTUALENV_SYSTEM_SITE_PACKAGES`` shows the system's packages in a trial env).
DROPPED_PREFIXES = ("VIRTUALENV_",)


def isolated_environ() -> dict[str, str]:
    """The user's environment without :data:`DROPPED_VARIABLES` (and prefixes)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in DROPPED_VARIABLES and not key.startswith(DROPPED_PREFIXES)
    }


@dataclass(frozen=True)
class TrialEnv:
    """A materialised trial environment and a private scratch directory for its probe."""

    path: Path
    scratch: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run_dir(self) -> Path:
        """A fresh directory for one probe run (repeats of a trial share the env, not this)."""
        return Path(tempfile.mkdtemp(prefix="p", dir=self.scratch))

    def environ(self, token: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment a process in this trial runs with: the user's, isolated
        (see :data:`DROPPED_VARIABLES`) and pointed at the env."""
        env = isolated_environ()
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        env[RUN_TOKEN_VAR] = token
        env.update(extra or {})
        return env


class Limits:
    """Time limits for one probe, which the runner may tighten while probes run.

    The consume-probe reads them on every wake-up, so the bad-set sanity probe,
    started together with the good one, picks up the adaptive limit as soon as
    the good probe has measured a healthy worker.
    """

    def __init__(
        self,
        *,
        boot: float = 60.0,
        consume: float = 30.0,
        grace: float = 0.5,
        command: float = 600.0,
        hard_deadline: float | None = None,
        stop_before_verdict: bool = True,
        take_stacks: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._boot, self._consume = boot, consume
        self.grace = grace  #: SIGTERM → SIGKILL
        #: Stop a failing worker before giving the verdict, so that the evidence says whether
        #: it ignored SIGTERM; else after it, off the critical path (the search's trials).
        self.stop_before_verdict = stop_before_verdict
        #: Take a stuck worker's stacks before stopping it: the evidence is worth the time
        #: (~0.1 s with py-spy, a few s when no tool works) where it is shown; not in the
        #: search's trials, which must stay fast.
        self.take_stacks = take_stacks
        self.command = command  #: a command probe's whole run
        self.hard_deadline = hard_deadline  #: time.monotonic() by which everything must end

    @property
    def boot(self) -> float:
        """Worker start → ready."""
        with self._lock:
            return self._boot

    @property
    def consume(self) -> float:
        """Worker ready → actor ran."""
        with self._lock:
            return self._consume

    def tighten(self, *, boot: float, consume: float) -> None:
        with self._lock:
            self._boot, self._consume = min(self._boot, boot), min(self._consume, consume)

    def left(self) -> float:
        """Seconds before the run's hard deadline (infinite without --max-time)."""
        if self.hard_deadline is None:
            return float("inf")
        return self.hard_deadline - time.monotonic()


class Later:
    """Clean-up a probe leaves for after its verdict, run in order off the critical path.

    The runner runs the steps on a background thread (and waits for all of them
    before the run ends); a step that fails does not stop the ones after it.
    """

    def __init__(self) -> None:
        self._steps: list[Callable[[], object]] = []

    def add(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    def run(self) -> list[BaseException]:
        """Run every step; the exceptions raised, if any."""
        failures: list[BaseException] = []
        for step in self._steps:
            try:
                step()
            except Exception as exc:  # each step must get its turn
                failures.append(exc)
        self._steps.clear()
        return failures


class Probe(ABC):
    """Runs in a trial environment and says pass or fail, with evidence."""

    #: short name shown in reports ("consume", "command", "import")
    kind: str = ""
    #: Whether the package set and :meth:`settings` decide the outcome, so it may be
    #: cached; not for a probe that reads files outside the env (a user's command).
    cacheable: bool = True
    #: The broker its queues live on, if it has any.
    broker: BrokerClient | None = None

    def queues(self, token: str) -> tuple[str, ...]:
        """The queues a probe run with ``token`` may declare on :attr:`broker` (recorded
        before it runs, so that a run killed meanwhile can have them deleted)."""
        return ()

    @abstractmethod
    def run(self, trial: TrialEnv, token: str, limits: Limits, later: Later) -> ProbeResult:
        """Probe the trial env. ``token`` is unique to this probe run: it names its
        broker queues and marks its processes (see :mod:`envbisect.processes`). Clean-up
        that need not delay the verdict goes to ``later``."""

    @abstractmethod
    def settings(self) -> str:
        """What, besides the package set, decides the outcome (for the outcome cache)."""

    @property
    def exclusive(self) -> bool:
        """Whether its runs share state outside their envs (a working directory), so that
        they must run one at a time."""
        return False

    def check(self) -> None:  # noqa: B027 - most probes have nothing to check
        """Fail early, with one clear line, when the probe cannot run at all."""

    def on_broker(self, broker: BrokerClient) -> Probe:
        """This probe, sending through ``broker`` (a private one started for the run)
        instead; a probe without a broker is unaffected."""
        return self

    def unusable(self, result: ProbeResult) -> str | None:
        """Why this result of the good set shows the probe itself cannot work, if it does."""
        return result.setup_error

    def describe(self) -> str:
        return self.kind


def log_lines(path: Path) -> list[str]:
    """A log file's lines, URL passwords masked: they end up in reports and the cache."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return mask_urls(text).splitlines()


def tail(path: Path, lines: int = 20) -> tuple[str, ...]:
    """The last lines of a log file, for evidence."""
    return tuple(log_lines(path)[-lines:])
