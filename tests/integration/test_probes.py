"""Each probe against a real env and the real broker: verdicts and their evidence."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from envbisect.brokers import connect
from envbisect.limits import Limits
from envbisect.model import Diagnosis, Outcome, ProbeResult, TrialEnv
from envbisect.probes.base import Later
from envbisect.probes.consume import ConsumeProbe, UserWorker
from envbisect.processes import new_run_token
from envbisect.stackdump import PY_SPY_VAR
from envbisect.stacks import short_path

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]


def generous() -> Limits:
    """Limits a healthy worker meets on a busy machine too (it ends the wait when it runs)."""
    return Limits(boot=60, consume=60, grace=0.5)


def waiting(outcome: Outcome) -> Limits | None:
    """A probe expected to fail waits out the whole limit: keep that one short."""
    return None if outcome is Outcome.PASS else Limits(boot=60, consume=3, grace=0.5)


def probe_env(
    env: Path, tmp_path: Path, url: str, *, asyncio: bool = False, limits: Limits | None = None
) -> ProbeResult:
    probe = ConsumeProbe(broker=connect(url), asyncio=asyncio)
    scratch = tmp_path / "s"
    scratch.mkdir()
    later = Later()
    try:
        return probe.run(
            TrialEnv(path=env, scratch=scratch),
            new_run_token(),
            limits or generous(),
            later,
        )
    finally:
        assert later.run() == []


@pytest.mark.parametrize(
    ("name", "outcome", "diagnosis", "evidence"),
    [
        ("healthy", Outcome.PASS, Diagnosis.CONSUMED, "actor ran"),
        ("slow", Outcome.PASS, Diagnosis.CONSUMED, "actor ran"),
        ("crash", Outcome.FAIL, Diagnosis.CRASHED, "ImportError"),
        ("stall", Outcome.FAIL, Diagnosis.NOT_DELIVERED, "no consumer registered"),
        ("unacked", Outcome.FAIL, Diagnosis.DELIVERED_NOT_RUN, "delivered (unacked)"),
        ("consumer-errors", Outcome.FAIL, Diagnosis.CONSUMER_ERRORS, "prefetch refused"),
    ],
)
def test_consume_probe_tells_failures_apart(
    name: str,
    outcome: Outcome,
    diagnosis: Diagnosis,
    evidence: str,
    tmp_path: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
) -> None:
    result = probe_env(fixture_env(name), tmp_path, broker_url, limits=waiting(outcome))
    assert (result.outcome, result.diagnosis) == (outcome, diagnosis), result.detail
    assert evidence in result.detail + "\n".join(result.evidence)


def test_worker_that_never_gets_ready(
    tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    limits = Limits(boot=3, consume=3, grace=0.5)
    result = probe_env(fixture_env("never-ready"), tmp_path, broker_url, limits=limits)
    assert (result.outcome, result.diagnosis) == (Outcome.FAIL, Diagnosis.NEVER_READY)
    assert "never got ready within 3" in result.detail


def test_stalled_worker_ignores_sigterm_and_is_killed(
    tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    result = probe_env(fixture_env("stall"), tmp_path, broker_url, limits=waiting(Outcome.FAIL))
    assert "ignored SIGTERM (killed)" in result.detail
    assert result.timings["stop"] >= 0.5


@pytest.mark.parametrize(("name", "outcome"), [("healthy", Outcome.PASS), ("stall", Outcome.FAIL)])
def test_consume_async_probe(
    name: str,
    outcome: Outcome,
    tmp_path: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
) -> None:
    result = probe_env(
        fixture_env(name), tmp_path, broker_url, asyncio=True, limits=waiting(outcome)
    )
    assert result.outcome is outcome, result.detail


def user_worker_probe(url: str, actor: str = "", args: tuple[object, ...] = ()) -> ConsumeProbe:
    return ConsumeProbe(
        broker=connect(url), worker=UserWorker("ops_core.tasks.worker", actor, args)
    )


def run_probe(probe: ConsumeProbe, env: Path, tmp_path: Path) -> ProbeResult:
    scratch = tmp_path / "s"
    scratch.mkdir()
    later = Later()
    try:
        return probe.run(TrialEnv(path=env, scratch=scratch), new_run_token(), generous(), later)
    finally:
        assert later.run() == []


@pytest.mark.parametrize(
    ("args", "outcome", "diagnosis"),
    [
        (("t-1", "probe", {}), Outcome.PASS, Diagnosis.CONSUMED),
        (("t-1", "probe", "not a mapping"), Outcome.FAIL, Diagnosis.ACTOR_ERROR),
    ],
)
def test_user_worker_module_runs_the_users_actor(
    args: tuple[object, ...],
    outcome: Outcome,
    diagnosis: Diagnosis,
    tmp_path: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
    fixture_wheels: Path,
) -> None:
    env = fixture_env("ops-healthy")
    probe = user_worker_probe(broker_url, "execute_agent_task_actor", args)
    result = run_probe(probe, env, tmp_path)
    assert (result.outcome, result.diagnosis) == (outcome, diagnosis), result.detail
    if outcome is Outcome.FAIL:
        assert "TypeError: input_data must be a mapping" in result.detail


def test_user_worker_module_needs_a_choice_of_actor(
    tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    result = run_probe(user_worker_probe(broker_url), fixture_env("ops-healthy"), tmp_path)
    assert result.outcome is Outcome.ERROR
    assert result.setup_error is not None
    assert "choose one with --actor" in result.setup_error
    assert "execute_agent_task_actor" in result.setup_error


def test_user_worker_module_missing_from_the_env(
    tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    result = run_probe(user_worker_probe(broker_url), fixture_env("healthy"), tmp_path)
    assert result.outcome is Outcome.ERROR
    assert result.setup_error is not None
    assert "not installed in the trial env" in result.setup_error


@pytest.mark.parametrize(
    ("name", "outcome"),
    [("healthy", Outcome.PASS), ("crash", Outcome.PASS), ("never-ready", Outcome.FAIL)],
)
def test_consume_probe_on_redis(
    name: str,
    outcome: Outcome,
    tmp_path: Path,
    redis_url: str,
    fixture_env: Callable[[str], Path],
) -> None:
    # The crash culprit breaks `import pika` only: a Redis worker never imports it.
    limits = Limits(boot=3, consume=3) if name == "never-ready" else None
    result = probe_env(fixture_env(name), tmp_path, redis_url, limits=limits)
    assert result.outcome is outcome, result.detail
    assert redis_keys(redis_url) == []


def redis_keys(url: str) -> list[str]:
    """Keys this test process's probe runs left in Redis (queues, acks, heartbeats)."""
    import redis

    client = redis.Redis.from_url(url)
    prefix = f"dramatiq:envbisect_{os.getpid()}x"
    keys = [k.decode() for k in client.scan_iter(match="dramatiq:*")]
    return sorted(k for k in keys if k.startswith(prefix) or f".envbisect_{os.getpid()}x" in k)


def frames_of(result: ProbeResult) -> list[str]:
    assert result.stacks is not None, result.detail
    return [
        f"{short_path(frame.file)}:{frame.function}"
        for thread in result.stacks.threads
        for frame in thread.frames
    ]


def test_stalled_worker_stacks_show_where_it_is_stuck(
    tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    result = probe_env(fixture_env("stall"), tmp_path, broker_url)
    assert result.diagnosis is Diagnosis.NOT_DELIVERED
    assert result.stacks is not None
    assert result.stacks.note == "taken with py-spy"
    # dramatiq's main process (the group leader) and its worker process
    pids = {thread.pid for thread in result.stacks.threads}
    assert result.stacks.leader in pids and len(pids) == 2
    frames = frames_of(result)
    assert "gevent/hub.py:Hub.run" in frames  # the main process waits in gevent's hub
    assert any(f.startswith("pika/adapters/select_connection.py:") for f in frames)
    summary = result.stacks.summary()
    assert summary[0].startswith(f"main process {result.stacks.leader}: gevent hub running in")
    # Blocked in poll, almost always; on a busy machine py-spy may catch the thread in
    # the instant it is awake (then "running"): where it is stuck is the same.
    assert re.search(
        r"(blocked in|running) PollPoller\.poll \(pika/adapters/select_connection\.py:", summary[1]
    )
    assert result.timings["stacks"] > 0


def test_worker_stacks_carry_thread_names(
    tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    result = probe_env(fixture_env("unacked"), tmp_path, broker_url)
    assert result.diagnosis is Diagnosis.DELIVERED_NOT_RUN
    assert result.stacks is not None
    names = {thread.thread_name for thread in result.stacks.threads}
    assert "MainThread" in names
    assert len(names - {None}) >= 3  # the worker's consumer and worker threads too
    # the held message: a worker thread waits inside the auto-registered middleware
    assert any(f.startswith("dramatiq_throttle_auto/_hook.py:") for f in frames_of(result))


def test_never_ready_worker_stacks_name_the_start_up_hook(
    tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    limits = Limits(boot=3, consume=3, grace=0.5)
    result = probe_env(fixture_env("never-ready"), tmp_path, broker_url, limits=limits)
    assert result.diagnosis is Diagnosis.NEVER_READY
    assert result.stacks is not None
    assert "config_bootstrap/_wait.py:<module>" in frames_of(result)
    assert result.stacks.summary()[0].endswith("(run by a .pth file at interpreter start-up)")


@pytest.mark.parametrize("name", ["crash", "healthy"])
def test_no_stacks_for_a_crash_or_a_pass(
    name: str, tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    # A crash has its traceback in the output; a healthy worker is not stuck.
    result = probe_env(fixture_env(name), tmp_path, broker_url)
    assert result.diagnosis in (Diagnosis.CRASHED, Diagnosis.CONSUMED)
    assert result.stacks is None
    assert "stacks" not in result.timings


def test_search_trials_take_no_stacks(
    tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    limits = Limits(boot=20, consume=3, grace=0.5, take_stacks=False)
    result = probe_env(fixture_env("stall"), tmp_path, broker_url, limits=limits)
    assert result.diagnosis is Diagnosis.NOT_DELIVERED
    assert result.stacks is None


def test_faulthandler_takes_the_stacks_without_py_spy(
    tmp_path: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PY_SPY_VAR, "off")
    result = probe_env(fixture_env("stall"), tmp_path, broker_url)
    assert result.diagnosis is Diagnosis.NOT_DELIVERED
    stacks = result.stacks
    assert stacks is not None
    assert {thread.tool for thread in stacks.threads} == {"faulthandler"}
    # only the worker process: the main process never loads the probe module
    assert stacks.leader not in {thread.pid for thread in stacks.threads}
    assert stacks.note.startswith("taken with faulthandler; py-spy: turned off")
    assert f"main process {stacks.leader} never loads the probe module" in stacks.note
    assert "pika/adapters/select_connection.py:poll" in frames_of(result)
    # and the worker still ignored SIGTERM: the dump's signal did not stop it
    assert "ignored SIGTERM (killed)" in result.detail


def test_no_stack_at_all_is_said_plainly(
    tmp_path: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PY_SPY_VAR, "off")
    limits = Limits(boot=3, consume=3, grace=0.5)
    result = probe_env(fixture_env("never-ready"), tmp_path, broker_url, limits=limits)
    assert result.stacks is not None
    assert result.stacks.threads == ()
    assert result.stacks.note == (
        f"no stack could be taken: py-spy: turned off ({PY_SPY_VAR}=off); "
        f"faulthandler: main process {result.stacks.leader} never loads the probe module"
    )
