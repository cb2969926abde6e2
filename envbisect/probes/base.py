"""What every probe shares: its time limits, its deferred clean-up, and its interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envbisect.limits import Limits
from envbisect.masking import mask_urls
from envbisect.model import ProbeResult, TrialEnv

if TYPE_CHECKING:
    from envbisect.brokers.base import BrokerClient


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

    def recipe(self) -> dict[str, Any]:
        """How to run this probe by hand (``envbisect repro``), masked: no credential."""
        return {"kind": self.kind}

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
