"""The consume-probe: a real Dramatiq worker in the trial env must consume a real message.

The worker starts with ``python -m dramatiq envbisect_probe`` inside the trial
env (or with the user's own worker module first, see ``probe_module``). The
message is sent from envbisect with envbisect's dramatiq, to a queue unique to
this probe run. The probe module reports ``ready`` and ``ran`` over a Unix
datagram socket; the wait is event-driven (the socket and a pidfd for the
worker's exit), never a sleep. A worker that never gets ready, dies, or never
runs the actor fails the probe; the queue state read from the broker while the
worker is still alive tells the ways apart, and where :attr:`Limits.take_stacks`
asks for them, the stacks of a worker alive but stuck say where (see
:mod:`envbisect.stacks`). Whatever happens, the worker's process group is stopped
and the probe's queues are deleted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from envbisect.brokers.base import BrokerClient, QueueState
from envbisect.limits import Limits
from envbisect.model import Diagnosis, LimitReached, Outcome, ProbeResult, TrialEnv
from envbisect.probes.base import Later, Probe, log_lines, tail
from envbisect.probes.watch import Watch
from envbisect.processes import Child, Stopped
from envbisect.procfs import RUN_TOKEN_VAR, group_members
from envbisect.stackdump import take
from envbisect.stacks import Stacks

PROBE_MODULE = Path(__file__).with_name("probe_module.py")
BUILTIN_ACTOR = "envbisect_probe"
_CONSUMER_ERROR = re.compile(r"Consumer encountered|Restarting consumer")
STACKS_SECONDS = 20.0  #: at most this long for a stuck worker's stacks (py-spy takes ~0.1 s)


@dataclass(frozen=True)
class UserWorker:
    """The user's own worker module and actor, probed instead of the built-in actor."""

    module: str  #: e.g. ``ops_core.tasks.worker`` (or ``module:broker``)
    actor: str = ""  #: empty: the module's only actor
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def package(self) -> str:
        return self.module.split(":")[0].split(".")[0]


@dataclass(frozen=True)
class ConsumeProbe(Probe):
    """Start a Dramatiq worker in the trial env and require it to run one actor."""

    broker: BrokerClient
    asyncio: bool = False
    worker: UserWorker | None = None
    kind: str = "consume"
    #: Its broker is (or, before the run starts it, will be) a private one: described by
    #: its server, not its URL, whose port changes from run to run.
    private: bool = False

    def describe(self) -> str:
        flavour = "consume-async" if self.asyncio else "consume"
        if self.worker is not None:
            actor = f":{self.worker.actor}" if self.worker.actor else ""
            flavour = f"consume via {self.worker.module}{actor}"
        if self.private:
            return f"{flavour} on a private {self.broker.server or 'broker'}"
        return f"{flavour} on {self.broker.masked}"

    def settings(self) -> str:
        worker = "" if self.worker is None else f" {self.worker.args!r} {self.worker.kwargs!r}"
        digest = hashlib.sha256(PROBE_MODULE.read_bytes()).hexdigest()[:12]
        return f"{self.describe()}{worker} server={self.broker.server} probe-module={digest}"

    def recipe(self) -> dict[str, Any]:
        worker = self.worker
        return {
            "kind": "consume-async" if self.asyncio else "consume",
            # A private broker is gone with its run: the reproducer needs one of its own.
            "broker": None if self.private else self.broker.masked,
            "worker_module": None if worker is None else worker.module,
            "actor": "" if worker is None else worker.actor,
            "args": [] if worker is None else list(worker.args),
            "kwargs": {} if worker is None else dict(worker.kwargs),
        }

    def check(self) -> None:
        self.broker.check()

    def on_broker(self, broker: BrokerClient) -> ConsumeProbe:
        return replace(self, broker=broker, private=True)

    def queues(self, token: str) -> tuple[str, ...]:
        return (f"envbisect_{token}",)

    def run(self, trial: TrialEnv, token: str, limits: Limits, later: Later) -> ProbeResult:
        (queue,) = self.queues(token)
        message_id = str(uuid.uuid4())
        run_dir = trial.run_dir()
        module_dir = run_dir / "probe"
        module_dir.mkdir()
        shutil.copyfile(PROBE_MODULE, module_dir / "envbisect_probe.py")
        log = run_dir / "worker.log"
        # Linux's abstract namespace: no file, so no path-length limit (a long TMPDIR
        # broke every trial) and nothing to remove; senders are checked by uid instead.
        address = f"envbisect-{token}"
        extra = {
            "PYTHONPATH": str(module_dir),
            "ENVBISECT_PROBE_SOCKET": f"@{address}",
            "ENVBISECT_PROBE_QUEUE": queue,
            "ENVBISECT_BROKER_URL": self.broker.url,
            "ENVBISECT_PROBE_ASYNC": "1" if self.asyncio else "0",
            "ENVBISECT_PROBE_MESSAGE_ID": message_id,
            # Where the probe module's faulthandler writes (the fallback when py-spy cannot).
            "ENVBISECT_PROBE_STACKS": str(run_dir),
        }
        argv = [str(trial.python), "-m", "dramatiq"]
        if self.worker is None:
            argv += ["envbisect_probe"]
        else:
            extra["ENVBISECT_PROBE_ACTOR"] = self.worker.actor
            argv += [self.worker.module, "envbisect_probe", "--queues", queue]
        argv += ["-p", "1", "-t", "1"]

        def send(actor: str) -> None:
            if self.worker is None:
                self.broker.send(queue, BUILTIN_ACTOR, (message_id,), {}, message_id)
            else:
                self.broker.send(queue, actor, self.worker.args, self.worker.kwargs, message_id)

        worker: Child | None = None
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as events:
            events.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            events.bind(f"\0{address}")
            try:
                if self.worker is None:
                    send(BUILTIN_ACTOR)  # the queue exists before the worker looks at it
                worker = Child(argv, env=trial.environ(token, extra), cwd=run_dir, output=log)
                # The user's actor is known once the worker has imported their module.
                on_adopt = send if self.worker is not None else None
                watch = Watch(worker, events, message_id, trial.path, limits, on_adopt)
                watch.until_ready()
                if watch.ready_at is not None and watch.ran_at is None and watch.exited is None:
                    watch.until_ran()
                # Read while the worker is still alive: its consumer count is evidence.
                state = self.broker.state(queue) if watch.ran_at is None else None
                stacks_started = time.monotonic()
                stacks = self._stacks(worker, watch, run_dir, limits, token)
            except BaseException:
                self._teardown(worker, queue, limits.grace, None)
                raise
        timings = watch.timings()
        if stacks is not None:
            timings["stacks"] = time.monotonic() - stacks_started
        healthy = watch.ran_at is not None and watch.error is None
        if healthy or not limits.stop_before_verdict:
            # The verdict is in: stopping the worker (a stalled one sits out the whole
            # SIGTERM grace) and deleting its queues can wait.
            later.add(lambda: self._teardown(worker, queue, limits.grace, watch.broker_id))
            return self._verdict(watch, state, log, timings, killed=False, stacks=stacks)
        stop_started = time.monotonic()
        stopped = self._teardown(worker, queue, limits.grace, watch.broker_id)
        timings["stop"] = time.monotonic() - stop_started
        killed = stopped is not None and stopped.killed
        return self._verdict(watch, state, log, timings, killed, stacks=stacks)

    def _stacks(
        self, worker: Child, watch: Watch, run_dir: Path, limits: Limits, token: str
    ) -> Stacks | None:
        """Every thread's stack of a worker alive but stuck, where the limits ask for them.

        A worker that ran the actor is not stuck, and one that exited has its traceback in
        its output: neither gets a dump.
        """
        stuck = watch.ran_at is None and watch.exited is None and watch.setup_error is None
        if not (stuck and limits.take_stacks and limits.left() > 0 and worker.poll() is None):
            return None
        seconds = min(STACKS_SECONDS, limits.left())
        environ = os.environ | {RUN_TOKEN_VAR: token}
        return take(
            group_members(worker.pid), worker.pid, run_dir, seconds=seconds, environ=environ
        )

    def _teardown(
        self, worker: Child | None, queue: str, grace: float, broker_id: str | None
    ) -> Stopped | None:
        """Stop the worker's group, then delete its queues (a live consumer may redeclare them)."""
        try:
            return worker.stop(grace) if worker is not None else None
        finally:
            self.broker.delete(queue, worker_id=broker_id)

    def _verdict(
        self,
        watch: Watch,
        state: QueueState | None,
        log: Path,
        timings: dict[str, float],
        killed: bool,
        stacks: Stacks | None,
    ) -> ProbeResult:
        return replace(self._diagnose(watch, state, log, timings, killed), stacks=stacks)

    def _diagnose(
        self,
        watch: Watch,
        state: QueueState | None,
        log: Path,
        timings: dict[str, float],
        killed: bool,
    ) -> ProbeResult:
        evidence = tail(log)
        if watch.ran_at is not None:
            return _ran(watch, evidence, timings)
        ignored = "; ignored SIGTERM (killed)" if killed else ""
        if watch.exited is not None or watch.setup_error is not None:
            return self._crashed(watch, evidence, timings)
        if watch.ready_at is None:
            return ProbeResult(
                Outcome.FAIL,
                Diagnosis.NEVER_READY,
                f"worker never got ready within {timings['boot']:.1f} s{ignored}",
                evidence,
                timings,
                limit_reached=LimitReached("boot", timings["boot"]),
            )
        errors = [line for line in log_lines(log) if _CONSUMER_ERROR.search(line)]
        if errors:
            first = next((line for line in errors if "encountered" in line), errors[0])
            return ProbeResult(
                Outcome.FAIL,
                Diagnosis.CONSUMER_ERRORS,
                f"consumer error loop ({len(errors)} lines), first: {_tail(first.strip())}"
                f"{ignored}",
                evidence,
                timings,
                limit_reached=LimitReached("consume", timings["wait"]),
            )
        return _silent(state, timings, evidence, ignored)

    def _crashed(
        self, watch: Watch, evidence: tuple[str, ...], timings: dict[str, float]
    ) -> ProbeResult:
        last = next((line for line in reversed(evidence) if line.strip()), "no output")
        detail = (
            f"worker exited with status {watch.exited} before running the actor: {last.strip()}"
        )
        setup = watch.setup_error
        if setup is None and self.worker is not None:
            missing = f"No module named '{self.worker.package}'"
            if any(missing in line for line in evidence):
                setup = (
                    f"the worker module {self.worker.module} is not installed in the trial env: "
                    f"put your project in both sets (e.g. `-e ./{self.worker.package}` in the "
                    "good requirements, an editable install in the bad env)"
                )
        if setup is not None:
            return ProbeResult(
                Outcome.ERROR,
                Diagnosis.CRASHED,
                setup,
                evidence,
                timings,
                exit_status=watch.exited,
                setup_error=setup,
            )
        return ProbeResult(
            Outcome.FAIL, Diagnosis.CRASHED, detail, evidence, timings, exit_status=watch.exited
        )


def _ran(watch: Watch, evidence: tuple[str, ...], timings: dict[str, float]) -> ProbeResult:
    if watch.ran_in is not None and Path(watch.ran_in).resolve() != watch.env.resolve():
        return ProbeResult(
            Outcome.ERROR,
            Diagnosis.CONSUMED,
            f"the actor ran, but in {watch.ran_in}, not in the trial env",
            evidence,
            timings,
        )
    if watch.error is not None:
        return ProbeResult(
            Outcome.FAIL,
            Diagnosis.ACTOR_ERROR,
            f"the actor ran and raised {watch.error[:300]}",
            evidence,
            timings,
        )
    return ProbeResult(
        Outcome.PASS,
        Diagnosis.CONSUMED,
        f"actor ran {timings['wait'] * 1000:.0f} ms after the worker was ready",
        evidence,
        timings,
    )


def _silent(
    state: QueueState | None, timings: dict[str, float], evidence: tuple[str, ...], ignored: str
) -> ProbeResult:
    """Ready, no errors, no actor run: the broker's view of the queue says which way."""
    waited = f"{timings['wait']:.1f} s"
    limit = LimitReached("consume", timings["wait"])
    if state is not None and state.ready > 0:
        consumers = (
            "no consumer registered"
            if state.consumers == 0
            else f"{state.consumers} consumer(s) registered"
            if state.consumers > 0
            else "consumers unknown"
        )
        detail = f"worker ready, {consumers}; message still ready on the broker after {waited}"
        return ProbeResult(
            Outcome.FAIL,
            Diagnosis.NOT_DELIVERED,
            detail + ignored,
            evidence,
            timings,
            limit_reached=limit,
        )
    if state is not None:
        detail = f"message delivered (unacked) but the actor never ran within {waited}"
        return ProbeResult(
            Outcome.FAIL,
            Diagnosis.DELIVERED_NOT_RUN,
            detail + ignored,
            evidence,
            timings,
            limit_reached=limit,
        )
    detail = f"worker ready, actor never ran within {waited}; queue state unavailable"
    return ProbeResult(
        Outcome.FAIL,
        Diagnosis.NOT_DELIVERED,
        detail + ignored,
        evidence,
        timings,
        limit_reached=limit,
    )


def _tail(line: str, width: int = 200) -> str:
    """The end of a long line, marked as cut."""
    return line if len(line) <= width else "…" + line[-(width - 1) :]
