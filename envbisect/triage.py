"""One run, top to bottom: from two sides and a probe to a :class:`~envbisect.model.Finding`.

sweep dead runs → find the interpreter → set up the run's resources (temp dir,
installer, watchdog, private broker) → read both sides → work out the changes →
the procedure (gate, search, confirmation, narrowing; see
:mod:`envbisect.procedure`) → clean up everything, whatever happened.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from envbisect import processes
from envbisect.brokers.base import BrokerClient
from envbisect.brokers.private import PrivateBroker, check_client, plan
from envbisect.delta import Delta
from envbisect.errors import EnvironmentBuildError, TimeLimitError
from envbisect.hashing import FileHashes
from envbisect.installers import installer
from envbisect.installers.base import Installer
from envbisect.leftovers import Ledger, Process, RunRecord, sweep
from envbisect.masking import mask_urls
from envbisect.model import Finding, Observer
from envbisect.options import Options
from envbisect.outcomes import OutcomeCache, run_context
from envbisect.probes.base import Probe
from envbisect.procedure import Procedure
from envbisect.sides import SideReader, find_interpreter
from envbisect.trials import LocalRunner
from envbisect.venvs import Interpreter
from envbisect.watchdog import Watchdog
from envbisect.wheels import WheelCache
from envbisect.wheelsource import Wheels
from envbisect.workspace import Workspace


def triage(options: Options, probe: Probe, observer: Observer) -> Finding:
    """Run the whole procedure; raises :class:`EnvbisectError` on bad input."""
    started = time.monotonic()
    private = plan(options.private_mode, probe, options.private_broker_kind)
    # Step 1: what dead runs left behind goes first.
    for token, removed in sweep(Path(tempfile.gettempdir()), probe.broker).items():
        problems = "".join(f"; {problem}" for problem in removed.problems)
        observer.say(f"swept leftovers of dead run {token}: {removed}{problems}")
    # Step 2: the trial envs' interpreter, before anything is built for it.
    interpreter = find_interpreter(options.bad, options.python)
    with Resources(options, probe, interpreter, observer, started) as run:
        if private is not None:
            # RabbitMQ boots in seconds: while the sides are read.
            run.broker.start_soon(private.kind, run.workspace.root / "broker")
        # Step 3: both sides, their wheels repacked or fetched.
        wheels = Wheels(
            run.installer, WheelCache(options.cache_dir), run.workspace, interpreter, observer.say
        )
        hashes = FileHashes(options.cache_dir / "file-hashes.sqlite3")
        reader = SideReader(run.installer, wheels, run.workspace, hashes, observer.say)
        bad = reader.read_bad(options.bad)
        good = reader.read_good(options.good, bad)
        if private is not None:
            check_client(private.kind, good.packages)
            probe = probe.on_broker(_await(run.broker, options, started))
            observer.say(
                f"{private.reason}: started a private {run.broker.server} on "
                f"{run.broker.address} for this run"
            )
        # Step 4: the changes between them.
        extras = {
            name: good.root_extras.get(name, frozenset()) | bad.root_extras.get(name, frozenset())
            for name in {*good.root_extras, *bad.root_extras}
        }
        delta = Delta(good.packages, bad.packages, bad.interpreter.markers, extras)
        observer.say(summary(delta))
        # Step 5: the procedure, its trials run on this machine.
        outcomes = OutcomeCache(
            options.outcomes or options.cache_dir / "outcomes",
            run_context(bad.interpreter, probe.settings(), _limit_settings(options), os.environ),
            enabled=options.outcomes is not None,
        )
        run.runner = LocalRunner(
            probe,
            wheels,
            run.workspace,
            outcomes,
            run.ledger,
            run.token,
            jobs=options.jobs,
        )
        procedure = Procedure(
            options, probe, run.runner, wheels, (good, bad), delta, observer, started
        )
        finding = procedure.run()
    kept = run.workspace.root if options.keep_envs else None
    return replace(
        finding,
        workspace=kept,
        cleanup_errors=tuple(run.cleanup_errors),
        index=package_index(os.environ),
        find_links=tuple(str(path) for path in options.find_links),
        python=str(interpreter.executable),
    )


class Resources:
    """What one run holds and must give back: its temp dir, processes, broker, watchdog.

    Leaving the ``with`` block cleans up everything, whatever happened; a clean-up
    that fails is said (and listed in :attr:`cleanup_errors`), never in place of the
    verdict or the error.
    """

    def __init__(
        self,
        options: Options,
        probe: Probe,
        interpreter: Interpreter,
        observer: Observer,
        started: float,
    ) -> None:
        self.token = processes.new_run_token()
        self.installer: Installer = installer(
            options.installer,
            options.cache_dir,
            options.cache_dir / "logs",
            options.find_links,
            offline=options.offline,
        )
        if options.max_time is not None:
            self.installer.deadline = started + options.max_time
        self.workspace = Workspace(
            self.installer, self.token, python=interpreter.executable, keep=options.keep_envs
        )
        self.broker = PrivateBroker(f"{self.token}-broker")
        self.ledger = Ledger(self.workspace.root)
        self.probe = probe
        self.observer = observer
        self.runner: LocalRunner | None = None
        self.watchdog: Watchdog | None = None
        self.cleanup_errors: list[str] = []

    def __enter__(self) -> Resources:
        try:
            self.watchdog = self._watch()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        with processes.cleaning_up():
            failed = self.runner.close() if self.runner is not None else []
            self.broker.stop()
            processes.stop_all()
            processes.kill_stragglers(self.token)
            left = self.workspace.close()
            if left is not None:
                failed.append(left)
            for problem in failed:
                self.observer.say(f"clean-up failed: {problem}")
            if self.watchdog is not None:
                self.watchdog.done()
        self.cleanup_errors = [mask_urls(problem) for problem in failed]

    def _watch(self) -> Watchdog | None:
        """Start the run's watchdog; record the run in its temp dir (see envbisect.leftovers)."""
        broker, keep = self.probe.broker, self.workspace.keep
        try:
            watchdog = Watchdog.start(
                self.token, self.workspace.root, broker.url if broker else None, keep=keep
            )
        except OSError as exc:
            reason = exc.strerror or exc
            self.observer.say(f"no watchdog for this run ({reason}): a SIGKILL leaves debris")
            watchdog = None
        me = Process.of(os.getpid())
        assert me is not None, "unreachable: this very process is alive"
        record = RunRecord(
            token=self.token,
            owner=me,
            watchdog=watchdog.process if watchdog else None,
            broker=broker.masked if broker else None,
            keep=keep,
        )
        try:
            self.ledger.start(record)
        except OSError as exc:
            if watchdog is not None:
                self.watchdog = watchdog  # let go in the clean-up
            raise EnvironmentBuildError.from_os_error(
                f"recording the run in {self.ledger.root}", exc
            ) from exc
        return watchdog


def summary(delta: Delta) -> str:
    """``78 changes between good and bad (40 added, 38 version)``."""
    counts = delta.counts()
    parts = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    return f"{len(delta.changes)} changes between good and bad ({parts or 'none'})"


def package_index(environ: Mapping[str, str]) -> str | None:
    """The index the user's installer configuration names (masked), or None for PyPI."""
    for name in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"):
        if environ.get(name):
            return mask_urls(environ[name])
    return None


def _limit_settings(options: Options) -> dict[str, object]:
    """The configured limits, part of the outcome cache's key."""
    return {
        "timeout": options.timeout,
        "boot_timeout": options.boot_timeout,
        "adaptive": options.adaptive,
        "grace": options.grace,
    }


def _await(broker: PrivateBroker, options: Options, started: float) -> BrokerClient:
    """The private broker, once it answers (within --max-time)."""
    left = None if options.max_time is None else started + options.max_time - time.monotonic()
    try:
        return broker.wait(None if left is None else max(left, 0.0))
    except TimeoutError:
        raise TimeLimitError(
            f"--max-time {options.max_time:g} s reached while the private broker booted"
        ) from None
