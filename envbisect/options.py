"""The settings of one run, as the command line gave them (one field per option).

The command line declares each option once (:data:`envbisect.cli.OPTIONS`), by
the name of its field here; ``run`` and ``gate`` fill the same object (the gate's
``--candidate`` is :attr:`Options.bad`, its ``--baseline`` :attr:`Options.good`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from envbisect.brokers.private import Mode
from envbisect.limits import Limits

CACHE_DIR = Path(user_cache_dir("envbisect"))
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Options:
    """Everything a run was asked to do."""

    # Inputs
    bad: Path  #: --bad (gate: --candidate)
    good: Path  #: --good (gate: --baseline)
    python: Path | None = None
    offline: bool = False  #: never reach a package index: the bad side's wheels only
    find_links: tuple[Path, ...] = ()  #: local wheel dirs, beside the index
    installer: str = "uv"
    # Probe
    probe: str = "consume"
    probe_cmd: str | None = None
    cwd: Path | None = None
    worker_module: str | None = None
    actor: str = ""
    args: str = "[]"
    timeout: float = 30.0  #: consume: ready → actor ran; command: the whole command
    boot_timeout: float = 60.0  #: consume: worker start → ready
    fixed_timeout: bool = False  #: never learn a shorter wait from the healthy good probe
    repeat: int = 1  #: K: a set fails if any of its K runs fails, passes if all pass
    flaky: bool = False  #: choose K from the bad set's failure rate
    narrow: bool = False  #: bisect the releases between a version culprit's two versions
    # Broker
    broker_url: str | None = None
    private_broker: bool = False
    private_broker_kind: str | None = None  #: "rabbitmq" or "redis"; None: whichever is there
    # Speed
    jobs: int = 1
    cache_dir: Path = CACHE_DIR
    outcome_cache: Path | None = None  #: default: <cache_dir>/outcomes
    no_cache: bool = False
    keep_envs: bool = False
    max_time: float | None = None
    # Reports
    json_path: Path | None = None
    markdown_path: Path | None = None
    junit_path: Path | None = None
    step_summary: bool = True
    quiet: bool = False
    # Not options: what the command and the checks of the options decided.
    command: str = "run"  #: "run" or "gate"
    private_mode: Mode = Mode.OFF  #: when the consume-probe gets a broker of the run's own
    grace: float = 0.5  #: SIGTERM → SIGKILL

    @property
    def gate(self) -> bool:
        """The candidate (the bad side) decides first; the search runs only if it fails."""
        return self.command == "gate"

    @property
    def repeated(self) -> bool:
        """Sets are probed more than once (--repeat K, --flaky): rates and a confidence."""
        return self.flaky or self.repeat > 1

    @property
    def adaptive(self) -> bool:
        """Learn the failing-trial wait from the healthy good probe."""
        return not self.fixed_timeout

    @property
    def outcomes(self) -> Path | None:
        """Where trial outcomes are cached; None with --no-cache."""
        return None if self.no_cache else (self.outcome_cache or self.cache_dir / "outcomes")

    def limits(self, started: float) -> Limits:
        """Fresh, full limits for this run."""
        return Limits(
            boot=self.boot_timeout,
            consume=self.timeout,
            grace=self.grace,
            command=self.timeout,
            hard_deadline=None if self.max_time is None else started + self.max_time,
        )
