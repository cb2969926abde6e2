"""The sweep removes dead runs' leftovers and never a live run's: real processes, real dirs.

A run is dead when its process is gone, or when its pid now names another process
(one that started later): the pid and its start time are compared, never the pid alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from envbisect import procfs
from envbisect.leftovers import Ledger, Process, RunRecord, sweep

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, killed and reaped after it."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        child.kill()
        child.wait()


def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def workspace(tmp: Path, token: str, owner: Process, *, keep: bool = False) -> Path:
    """A run's temp dir as Workspace and triage leave it, with an env inside."""
    root = tmp / f"envbisect-{token}-abc123"
    (root / "001-t01" / "env" / "bin").mkdir(parents=True)
    Ledger(root).start(RunRecord(token, owner, None, None, keep))
    return root


def me() -> Process:
    found = Process.of(os.getpid())
    assert found is not None
    return found


def test_a_live_runs_temp_dir_is_never_touched(tmp_path: Path) -> None:
    root = workspace(tmp_path, f"{os.getpid()}xaaaaaa", me())
    assert sweep(tmp_path, None) == {}
    assert root.is_dir()


def test_a_dead_runs_temp_dir_is_removed(tmp_path: Path) -> None:
    pid = gone_pid()
    token = f"{pid}xbbbbbb"
    root = workspace(tmp_path, token, Process(pid, 1))
    swept = sweep(tmp_path, None)
    assert str(swept[token]) == "0 processes, 1 temp dir, 0 queues"
    assert not root.exists()


def test_a_reused_pid_does_not_keep_a_dead_run_alive(tmp_path: Path) -> None:
    # The run's pid is ours now, but the run's process started at another time.
    token = f"{os.getpid()}xcccccc"
    root = workspace(tmp_path, token, Process(os.getpid(), me().started - 1))
    assert str(sweep(tmp_path, None)[token]) == "0 processes, 1 temp dir, 0 queues"
    assert not root.exists()


def test_kept_envs_of_a_dead_run_stay(tmp_path: Path) -> None:
    pid = gone_pid()
    root = workspace(tmp_path, f"{pid}xdddddd", Process(pid, 1), keep=True)
    assert sweep(tmp_path, None) == {}
    assert (root / "001-t01" / "env" / "bin").is_dir()


def test_a_dead_runs_queues_on_another_broker_keep_its_temp_dir(tmp_path: Path) -> None:
    # The queue names are only in the temp dir: it stays until they can be deleted.
    pid = gone_pid()
    token = f"{pid}xeeeeee"
    root = workspace(tmp_path, token, Process(pid, 1))
    Ledger(root).add_queues([f"envbisect_{token}-t01r0"])
    swept = sweep(tmp_path, None)
    assert str(swept[token]) == "0 processes, 0 temp dirs, 0 queues"
    assert swept[token].problems == ["1 queue(s) left on its broker: not this run's broker"]
    assert root.is_dir()


def test_a_temp_dir_without_a_record_is_left_alone(tmp_path: Path) -> None:
    # A run between creating its temp dir and recording itself in it, or another tool's.
    root = tmp_path / f"envbisect-{gone_pid()}xffffff-abc123"
    root.mkdir()
    assert sweep(tmp_path, None) == {}
    assert root.is_dir()


def test_processes_of_dead_runs_are_killed_and_of_live_runs_not(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    def carrying(token: str) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(SLEEP, env={**os.environ, procfs.RUN_TOKEN_VAR: token})
        started.append(child)
        return child

    live = carrying(f"{os.getpid()}x111111-t01r0")  # this very process runs it
    gone = f"{gone_pid()}x222222"
    dead = carrying(f"{gone}-t01r0")
    # A worker of a run whose pid now names a younger process (another program got the
    # pid): exec keeps the worker's start time, so it can take a token naming a younger pid.
    worker = subprocess.Popen([sys.executable, "-c", TAKES_A_TOKEN, *SLEEP], stdin=subprocess.PIPE)
    started.append(worker)
    time.sleep(0.05)  # start times count in clock ticks (10 ms): one tick later at least
    younger = subprocess.Popen(SLEEP)
    started.append(younger)
    reused = f"{younger.pid}x333333"
    assert worker.stdin is not None
    worker.stdin.write(f"{reused}-t01r0\n".encode())
    worker.stdin.close()
    deadline = time.monotonic() + 60
    while procfs.processes_with_token(reused) != [worker.pid]:
        assert time.monotonic() < deadline, "the worker never took its token"
        time.sleep(0.02)
    swept = sweep(tmp_path, None)
    # Killed (and reaped by the sweep, as it reaps what it kills among its own children).
    dead.wait(60)
    worker.wait(60)
    assert procfs.processes_with_token(gone) == procfs.processes_with_token(reused) == []
    assert live.poll() is None
    assert younger.poll() is None
    # Other dead runs' processes on this machine may be swept too; ours are exactly these.
    ours = {token: str(removed) for token, removed in swept.items() if token in (gone, reused)}
    assert ours == {
        gone: "1 process, 0 temp dirs, 0 queues",
        reused: "1 process, 0 temp dirs, 0 queues",
    }
    assert f"{os.getpid()}x111111" not in swept


TAKES_A_TOKEN = """
import os, sys
token = sys.stdin.readline().strip()
os.execve(sys.argv[1], sys.argv[1:], {**os.environ, "ENVBISECT_RUN_TOKEN": token})
"""
