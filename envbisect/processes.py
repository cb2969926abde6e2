"""The one way envbisect starts a child process.

Every child gets its own session (so its own process group) and carries a
run token in its environment. Stopping it means SIGTERM to the whole group, a
short grace, then SIGKILL to the group: a worker stalled inside gevent's hub
ignores SIGTERM, and only the group signal reaches the forked worker
processes. Descendants that escaped the group (``setsid`` and a double fork)
are found by the run token in ``/proc/<pid>/environ`` and killed by pid; with
envbisect registered as a child subreaper they are re-parented to us, so we can
reap them too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from envbisect.procfs import processes_with_token

# Seconds a stopped group's killed members get to be re-parented to us and reaped.
REAP_WAIT = 1.0
_PR_SET_CHILD_SUBREAPER = 36


def new_run_token() -> str:
    """A token naming one run: its processes, queues and temp dirs carry it.

    It starts with envbisect's pid, so an operator (or a test) can tell which
    run a stray worker or queue came from.
    """
    return f"{os.getpid()}x{secrets.token_hex(3)}"


def become_subreaper() -> bool:
    """Ask Linux to re-parent our orphaned descendants to us (best effort)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class Stopped:
    """How a child ended when we stopped it."""

    returncode: int | None
    killed: bool  #: True when SIGTERM was not enough and SIGKILL was needed


class ShuttingDown(RuntimeError):
    """No new child may start: the run is being interrupted."""


class Child:
    """A child process in its own process group, always stopped and reaped."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
        output: Path | None = None,
        stdin_devnull: bool = True,
        service: bool = False,
    ) -> None:
        if _STOPPING.is_set():
            raise ShuttingDown("envbisect is shutting down")
        self.argv = list(argv)
        #: A service (the private broker) outlives the trials and their clean-up, which
        #: still talks to it: its owner stops it, not :func:`stop_all` or :func:`shutdown`.
        self.service = service
        out = open(output, "ab") if output is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._popen = subprocess.Popen(
                self.argv,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL if stdin_devnull else None,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self.pid = self._popen.pid
        self.started = time.monotonic()
        self._pidfd: int | None = None
        # stop() may be called from two threads at once (a trial's own clean-up and an
        # interrupt's stop_all): one stops, the other waits for it; the pidfd is closed once.
        self._stopping = threading.Lock()
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(self.pid)
        _REGISTRY.add(self)

    def pidfd(self) -> int | None:
        """A file descriptor that becomes readable when the child exits (Linux)."""
        return self._pidfd

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds; the exit status, or None if still running."""
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 1.0) -> Stopped:
        """SIGTERM the group, wait ``grace`` seconds, SIGKILL the group, reap it all."""
        with self._stopping:
            return self._stop(grace)

    def _stop(self, grace: float) -> Stopped:
        killed = False
        if self._popen.poll() is None or _group_alive(self.pid):
            _signal_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if self._popen.poll() is not None:
                    _reap_group(self.pid)
                    if not _group_alive(self.pid):
                        break
                time.sleep(0.02)
            else:
                killed = True
            # Whatever is left of the group (forked workers, grandchildren) goes now.
            _signal_group(self.pid, signal.SIGKILL)
            self._popen.wait()
            _reap_group(self.pid, until_gone=REAP_WAIT)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        _REGISTRY.discard(self)
        return Stopped(self._popen.returncode, killed)


def _reap_group(pgid: int, until_gone: float = 0.0) -> None:
    """Reap the group's members that were re-parented to us (we are the subreaper).

    Only once the group's leader is reaped (by its Popen, which must get its status):
    a worker's forked processes whose parent died with them are ours to wait for, and
    left alone they stay zombies for good where PID 1 does not reap (containers).
    With ``until_gone``, keep at it that long while the group still exists.
    """
    deadline = time.monotonic() + until_gone
    while True:
        try:
            while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass  # none of the group's members are (or are yet) our children
        if not _group_alive(pgid) or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@dataclass(frozen=True)
class Finished:
    """The result of a command run to completion (or to its time limit)."""

    argv: tuple[str, ...]
    returncode: int | None  #: None when it hit the time limit and was stopped
    output: str
    seconds: float


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    log: Path,
) -> Finished:
    """Run a command to completion in its own process group, output to ``log``."""
    started = time.monotonic()
    child = Child(argv, env=dict(os.environ if env is None else env), cwd=cwd, output=log)
    try:
        code = child.wait(timeout)
    finally:
        stopped = child.stop(grace=0.5)
    if code is None and stopped.returncode is not None and timeout is None:
        code = stopped.returncode
    text = log.read_text(errors="replace") if log.exists() else ""
    return Finished(tuple(argv), code, text, time.monotonic() - started)


class _Registry:
    """Every live child of this process, so an interrupt can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: set[Child] = set()

    def add(self, child: Child) -> None:
        with self._lock:
            self._children.add(child)

    def discard(self, child: Child) -> None:
        with self._lock:
            self._children.discard(child)

    def snapshot(self) -> list[Child]:
        with self._lock:
            return list(self._children)


_REGISTRY = _Registry()
_STOPPING = threading.Event()


def stop_all(grace: float = 0.5) -> None:
    """Stop every child still running but the services (used on interrupt and at exit)."""
    for child in _REGISTRY.snapshot():
        if not child.service:
            child.stop(grace)


def shutdown() -> None:
    """Refuse new children from now on and kill the running ones but the services (on
    SIGINT/SIGTERM/SIGHUP; the run's clean-up stops those)."""
    _STOPPING.set()
    for child in _REGISTRY.snapshot():
        if not child.service:
            _signal_group(child.pid, signal.SIGKILL)


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: unwind through every cleanup, then exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_CLEANING = [0]  #: depth of cleaning_up() blocks (signal handlers run in the main thread)
_DEFERRED: list[int] = []


def interrupt(signum: int) -> None:
    """Act on SIGINT/SIGTERM/SIGHUP (the signal handler): stop every child, then raise
    :class:`Interrupted` — at the end of the clean-up under way, if there is one."""
    shutdown()
    if _CLEANING[0]:
        _DEFERRED.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def cleaning_up() -> Iterator[None]:
    """A clean-up that an interrupt must not cut short (half a removed temp dir is debris).

    A signal that arrives meanwhile stops the children at once, as always, but is
    raised as :class:`Interrupted` only when the block is done.
    """
    _CLEANING[0] += 1
    try:
        yield
    finally:
        _CLEANING[0] -= 1
        if not _CLEANING[0] and _DEFERRED:
            raise Interrupted(_DEFERRED.pop())


def reset() -> None:
    """Allow children again (a new run in the same process, e.g. in tests)."""
    _STOPPING.clear()
    _DEFERRED.clear()


def start_detached(
    argv: Sequence[str], *, stdin: int, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """A process that must outlive envbisect (the watchdog): its own session, so no
    terminal signal reaches it; not one of the run's children (an interrupt does not
    stop it); no run token; its working directory ``/`` (it keeps no directory busy)."""
    return subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        env=dict(env),
        cwd="/",
        start_new_session=True,
        close_fds=True,
    )


def kill_stragglers(token: str) -> list[int]:
    """SIGKILL every process that still carries ``token`` and reap ours; return their pids."""
    found = processes_with_token(token)
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in found:
        # Re-parented to us (subreaper): reap so no zombie stays behind.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
    return found


def kill_groups(pgids: Collection[int], within: float = REAP_WAIT) -> None:
    """SIGKILL every process of these groups, and reap their members that are ours.

    Members re-parented to us (we are the subreaper) are reaped for up to ``within``
    seconds a group: their zombies would otherwise go to a PID 1 that may never reap.
    """
    for pgid in pgids:
        _signal_group(pgid, signal.SIGKILL)
    for pgid in pgids:
        _reap_group(pgid, until_gone=within)
