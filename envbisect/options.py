"""The settings of one run, as the command line gave them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envbisect.brokers.private import Mode
from envbisect.limits import Limits


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
