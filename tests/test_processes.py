"""The one subprocess helper: own process group, SIGTERM then SIGKILL, stragglers found."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from envbisect import processes, procfs
from envbisect.processes import Child
from envbisect.procfs import RUN_TOKEN_VAR

IGNORES_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""

ESCAPES = """
import os, sys, time
if os.fork() == 0:
    os.setsid()  # leave the process group, as a daemonising grandchild would
    if os.fork() == 0:
        time.sleep(600)
    os._exit(0)
print("forked", flush=True)
time.sleep(600)
"""


def wait_for(path: Path, text: str) -> None:
    deadline = time.monotonic() + 60
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        time.sleep(0.02)


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    child = Child([sys.executable, "-c", IGNORES_SIGTERM], env=dict(os.environ), output=log)
    wait_for(log, "ready")
    stopped = child.stop(grace=0.3)
    # Killed, not waited for: the child would have slept for 10 minutes.
    assert stopped.killed
    assert stopped.returncode == -9
    assert child.poll() is not None


def test_stragglers_that_left_the_group_are_found_by_token(tmp_path: Path) -> None:
    processes.become_subreaper()
    log = tmp_path / "out.log"
    env = dict(os.environ, **{RUN_TOKEN_VAR: "testtok-t01"})
    child = Child([sys.executable, "-c", ESCAPES], env=env, output=log)
    wait_for(log, "forked")
    deadline = time.monotonic() + 60
    while len(procfs.processes_with_token("testtok")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.stop(grace=0.2)
    escaped = procfs.processes_with_token("testtok")
    assert escaped, "the setsid grandchild survives a group kill"
    assert processes.kill_stragglers("testtok") == escaped
    assert procfs.processes_with_token("testtok") == []


def test_run_reports_exit_status_and_output(tmp_path: Path) -> None:
    done = processes.run(
        [sys.executable, "-c", "print('hi'); raise SystemExit(3)"], log=tmp_path / "log"
    )
    assert done.returncode == 3
    assert done.output.strip() == "hi"


def test_an_interrupt_during_cleanup_is_raised_after_it() -> None:
    from envbisect.signals import signals_raise

    done = []
    try:
        with (
            signals_raise(),
            pytest.raises(processes.Interrupted) as caught,
            processes.cleaning_up(),
        ):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now
            done.append("the whole clean-up")
        assert caught.value.signum == signal.SIGTERM
        assert done == ["the whole clean-up"]
    finally:
        processes.reset()


def test_an_interrupt_outside_cleanup_is_raised_at_once() -> None:
    from envbisect.signals import signals_raise

    try:
        with signals_raise(), pytest.raises(processes.Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            pytest.fail("not interrupted")
    finally:
        processes.reset()


FORKS = """
import os, sys, time
if os.fork() == 0:
    time.sleep(600)  # a worker process, in its parent's group
print("forked", flush=True)
time.sleep(600)
"""


def test_stop_leaves_no_zombie_in_the_group(tmp_path: Path) -> None:
    # The killed grandchild is re-parented to us (subreaper), not to PID 1, which in a
    # container may never reap it: stop() must.
    processes.become_subreaper()
    log = tmp_path / "out.log"
    child = Child([sys.executable, "-c", FORKS], env=dict(os.environ), output=log)
    wait_for(log, "forked")
    child.stop(grace=0.2)
    with pytest.raises(ProcessLookupError):
        os.killpg(child.pid, 0)


def test_a_hangup_is_an_interrupt_like_sigterm() -> None:
    # A closed terminal or a dropped ssh session sends SIGHUP: the run must unwind through
    # its clean-up as for SIGTERM, not die on the spot and leave its workers behind.
    from envbisect.signals import signals_raise

    # Outside envbisect's handler a hang-up must not end the test session itself.
    outer = signal.signal(signal.SIGHUP, lambda signum, frame: None)
    try:
        with signals_raise(), pytest.raises(processes.Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
            pytest.fail("not interrupted")
        assert caught.value.signum == signal.SIGHUP
    finally:
        signal.signal(signal.SIGHUP, outer)
        processes.reset()


def test_two_threads_stopping_one_child_close_its_pidfd_once() -> None:
    # A trial's own clean-up and an interrupt's stop_all() may stop one child at once:
    # this raised EBADF (the second thread closed the pidfd the first had closed).
    errors: list[BaseException] = []
    for _ in range(300):
        child = Child(["true"], env=dict(os.environ))
        child.wait(60)
        barrier = threading.Barrier(2)

        def stop(child: Child = child, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                child.stop(grace=0.2)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=stop) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == []
