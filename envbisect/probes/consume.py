"""The consume-probe: a real Dramatiq worker in the trial env must consume a real message.

The message is sent first (from envbisect, with envbisect's dramatiq), then the
worker starts with ``python -m dramatiq envbisect_probe`` inside the trial env.
The probe module reports ``ready`` and ``ran`` over a Unix datagram socket; the
wait is event-driven (the socket and a pidfd for the worker's exit), never a
sleep. A worker that never gets ready, dies, or never runs the actor fails the
probe; the queue state read from the broker while the worker is still alive
tells the ways apart. Whatever happens, the worker's process group is stopped
and the probe's queues are deleted.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envbisect.broker import BrokerClient, QueueState
from envbisect.probes.base import (
    Diagnosis,
    Later,
    Limits,
    Probe,
    ProbeResult,
    TrialEnv,
    log_lines,
    tail,
)
from envbisect.processes import Child, Stopped
from envbisect.search import Outcome

PROBE_MODULE = Path(__file__).with_name("probe_module.py")
_CONSUMER_ERROR = re.compile(r"Consumer encountered|Restarting consumer")


@dataclass(frozen=True)
class ConsumeProbe(Probe):
    """Start a Dramatiq worker in the trial env and require it to run one actor."""

    broker: BrokerClient
    asyncio: bool = False
    kind: str = "consume"

    def describe(self) -> str:
        flavour = "consume-async" if self.asyncio else "consume"
        return f"{flavour} on {self.broker.masked}"

    def settings(self) -> str:
        return f"{self.describe()} probe-module={_module_digest()}"

    def check(self) -> None:
        self.broker.check()

    def run(self, trial: TrialEnv, token: str, limits: Limits, later: Later) -> ProbeResult:
        queue = f"envbisect_{token}"
        module_dir = trial.scratch / "probe"
        module_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROBE_MODULE, module_dir / "envbisect_probe.py")
        log = trial.scratch / "worker.log"
        # Linux's abstract namespace: no file, so no path-length limit (a long TMPDIR
        # broke every trial) and nothing to remove; senders are checked by uid instead.
        address = f"envbisect-{token}"
        environ = trial.environ(
            token,
            {
                "PYTHONPATH": str(module_dir),
                "ENVBISECT_PROBE_SOCKET": f"@{address}",
                "ENVBISECT_PROBE_QUEUE": queue,
                "ENVBISECT_BROKER_URL": self.broker.url,
                "ENVBISECT_PROBE_ASYNC": "1" if self.asyncio else "0",
            },
        )
        argv = [str(trial.python), "-m", "dramatiq", "envbisect_probe", "-p", "1", "-t", "1"]
        worker: Child | None = None
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as events:
            events.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            events.bind(f"\0{address}")
            try:
                self.broker.send(queue, token)
                worker = Child(argv, env=environ, cwd=trial.scratch, output=log)
                watch = _Watch(worker, events, token, trial.path, limits)
                watch.until_ready()
                if watch.ready_at is not None and watch.ran_at is None and watch.exited is None:
                    watch.until_ran()
                # Read while the worker is still alive: its consumer count is evidence.
                state = self.broker.state(queue) if watch.ran_at is None else None
            except BaseException:
                self._teardown(worker, queue, limits.grace)
                raise
        if watch.ran_at is not None:
            # The verdict is in: stopping a healthy worker gracefully can wait.
            later.add(lambda: self._teardown(worker, queue, limits.grace))
            return _verdict(watch, None, log, watch.timings(), killed=False)
        stop_started = time.monotonic()
        stopped = self._teardown(worker, queue, limits.grace)
        timings = watch.timings() | {"stop": time.monotonic() - stop_started}
        return _verdict(watch, state, log, timings, stopped is not None and stopped.killed)

    def _teardown(self, worker: Child | None, queue: str, grace: float) -> Stopped | None:
        """Stop the worker's group, then delete its queues (a live consumer may redeclare them)."""
        try:
            return worker.stop(grace) if worker is not None else None
        finally:
            self.broker.delete(queue)


class _Watch:
    """Follows one worker: its events on the socket and its exit via pidfd."""

    def __init__(
        self, worker: Child, events: socket.socket, token: str, env: Path, limits: Limits
    ) -> None:
        self.worker = worker
        self.limits = limits
        self.events = events
        self.token = token
        self.env = env
        self.started = worker.started
        self.ready_at: float | None = None
        self.ran_at: float | None = None
        self.ran_in: str | None = None
        self.exited: int | None = None
        self.deadline_hit: str | None = None
        self.ended_at: float | None = None

    def until_ready(self) -> None:
        self._follow(
            lambda: self.ready_at is not None or self.ran_at is not None,
            lambda: self.limits.boot,
            "boot",
        )

    def until_ran(self) -> None:
        self._follow(lambda: self.ran_at is not None, lambda: self.limits.consume, "consume")

    def _follow(self, done: Callable[[], bool], limit: Callable[[], float], phase: str) -> None:
        started = time.monotonic()
        with selectors.DefaultSelector() as selector:
            selector.register(self.events, selectors.EVENT_READ, "event")
            pidfd = self.worker.pidfd()
            if pidfd is not None:
                selector.register(pidfd, selectors.EVENT_READ, "exit")
            while not done() and self.exited is None:
                left = min(started + limit() - time.monotonic(), self.limits.left())
                if left <= 0:
                    self.deadline_hit = phase
                    break
                # Wake up now and then: the limit may be tightened meanwhile, and
                # without a pidfd the worker's exit has to be polled.
                for key, _ in selector.select(min(left, 0.1)):
                    if key.data == "event":
                        self._read_event()
                if not done():
                    self._check_exit()
        self.ended_at = time.monotonic()

    def _read_event(self) -> None:
        payload, ancillary, _, _ = self.events.recvmsg(65536, _CREDENTIALS_SPACE)
        if not _from_our_user(ancillary):
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        now = time.monotonic()
        if event.get("event") == "ready" and self.ready_at is None:
            self.ready_at = now
        elif event.get("event") == "ran" and event.get("token") == self.token:
            self.ran_at = now
            self.ran_in = str(event.get("prefix"))
            if self.ready_at is None:
                self.ready_at = now

    def _check_exit(self) -> None:
        code = self.worker.poll()
        if code is not None:
            # Drain what the worker said before it died: a late "ran" still counts.
            self.events.setblocking(False)
            try:
                while True:
                    self._read_event()
            except BlockingIOError:
                pass
            finally:
                self.events.setblocking(True)
            if self.ran_at is None:
                self.exited = code

    def timings(self) -> dict[str, float]:
        end = self.ran_at or self.ended_at or time.monotonic()
        if self.ready_at is None:
            return {"boot": end - self.started, "wait": 0.0}
        return {"boot": self.ready_at - self.started, "wait": end - self.ready_at}


_UCRED = struct.Struct("3i")  # pid, uid, gid
_CREDENTIALS_SPACE = socket.CMSG_SPACE(_UCRED.size)


def _from_our_user(ancillary: list[tuple[int, int, bytes]]) -> bool:
    """Only processes of our own user may report (what a 0700 directory ensured before)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            _, uid, _ = _UCRED.unpack(data[: _UCRED.size])
            return bool(uid == os.getuid())
    return False


def _verdict(
    watch: _Watch,
    state: QueueState | None,
    log: Path,
    timings: dict[str, float],
    killed: bool,
) -> ProbeResult:
    evidence = tail(log)
    if watch.ran_at is not None:
        if watch.ran_in is not None and Path(watch.ran_in).resolve() != watch.env.resolve():
            return ProbeResult(
                Outcome.ERROR,
                Diagnosis.CONSUMED,
                f"the actor ran, but in {watch.ran_in}, not in the trial env",
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
    ignored = "; ignored SIGTERM (killed)" if killed else ""
    if watch.exited is not None:
        last = next((line for line in reversed(evidence) if line.strip()), "no output")
        return ProbeResult(
            Outcome.FAIL,
            Diagnosis.CRASHED,
            f"worker exited with status {watch.exited} before running the actor: {last.strip()}",
            evidence,
            timings,
            exit_status=watch.exited,
        )
    if watch.ready_at is None:
        return ProbeResult(
            Outcome.FAIL,
            Diagnosis.NEVER_READY,
            f"worker never got ready within {timings['boot']:.1f} s{ignored}",
            evidence,
            timings,
        )
    errors = [line for line in log_lines(log) if _CONSUMER_ERROR.search(line)]
    if errors:
        first = next((line for line in errors if "encountered" in line), errors[0])
        return ProbeResult(
            Outcome.FAIL,
            Diagnosis.CONSUMER_ERRORS,
            f"consumer error loop ({len(errors)} lines), first: {first.strip()[-200:]}{ignored}",
            evidence,
            timings,
        )
    waited = f"{timings['wait']:.1f} s"
    if state is not None and state.ready > 0:
        consumers = (
            "no consumer registered"
            if state.consumers == 0
            else f"{state.consumers} consumer(s) registered"
            if state.consumers > 0
            else "consumers unknown"
        )
        return ProbeResult(
            Outcome.FAIL,
            Diagnosis.NOT_DELIVERED,
            f"worker ready, {consumers}; message still ready on the broker after {waited}{ignored}",
            evidence,
            timings,
        )
    if state is not None:
        return ProbeResult(
            Outcome.FAIL,
            Diagnosis.DELIVERED_NOT_RUN,
            f"message delivered (unacked) but the actor never ran within {waited}{ignored}",
            evidence,
            timings,
        )
    return ProbeResult(
        Outcome.FAIL,
        Diagnosis.NOT_DELIVERED,
        f"worker ready, actor never ran within {waited}; queue state unavailable{ignored}",
        evidence,
        timings,
    )


def _module_digest() -> str:
    import hashlib

    return hashlib.sha256(PROBE_MODULE.read_bytes()).hexdigest()[:12]
