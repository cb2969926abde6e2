"""The outcome cache: what goes into a key, and when a stored result may stand in (no I/O
beyond a temp dir)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from envbisect.limits import Limits
from envbisect.model import Diagnosis, LimitReached, Outcome, ProbeResult
from envbisect.outcomes import OutcomeCache, probe_variables, run_context
from envbisect.stacks import Frame, Stacks, ThreadStack
from envbisect.venvs import Interpreter

from .test_delta import MARKERS, pkg

PACKAGES = {"pika": pkg("pika", "1.3.2", digest="abc")}
PY311 = Interpreter(Path("/usr/bin/python3.11"), "3.11.7", MARKERS, "cp311-cp311-linux_x86_64", "l")
PY312 = Interpreter(Path("/usr/bin/python3.12"), "3.12.1", MARKERS, "cp312-cp312-linux_x86_64", "l")
LIMITS = {"timeout": 30.0, "boot_timeout": 60.0, "adaptive": True, "grace": 0.5}


def cache(tmp_path: Path, **context: Any) -> OutcomeCache:
    parts: dict[str, Any] = {
        "interpreter": PY311,
        "probe_settings": "consume on amqp://guest:***@h/ server=RabbitMQ 3.12.1",
        "limits": LIMITS,
        "environ": {},
    } | context
    return OutcomeCache(tmp_path, run_context(**parts), enabled=True)


@pytest.mark.parametrize(
    "change",
    [
        {"interpreter": PY312},
        {"probe_settings": "consume on amqp://guest:***@h/ server=RabbitMQ 4.0.0"},
        {"limits": LIMITS | {"timeout": 10.0}},
        {"limits": LIMITS | {"grace": 2.0}},
        {"environ": {"PYTHONHASHSEED": "1"}},
        {"environ": {"dramatiq_queue_prefetch": "1"}},
        {"environ": {"GEVENT_LOOP": "libuv"}},
    ],
    ids=["interpreter", "broker", "timeout", "grace", "hashseed", "dramatiq", "gevent"],
)
def test_anything_that_can_change_an_outcome_changes_the_key(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    assert cache(tmp_path).key(PACKAGES) != cache(tmp_path, **change).key(PACKAGES)


def test_the_number_of_runs_changes_the_key(tmp_path: Path) -> None:
    # A set passes only if all its runs pass: three passing runs say more than one.
    outcomes = cache(tmp_path)
    assert outcomes.key(PACKAGES) == outcomes.key(PACKAGES, 1)
    assert outcomes.key(PACKAGES, 3) != outcomes.key(PACKAGES, 1)


def test_unrelated_variables_do_not_change_the_key(tmp_path: Path) -> None:
    unrelated = {"HOME": "/elsewhere", "OLDPWD": "/tmp", "TERM": "dumb"}
    assert cache(tmp_path).key(PACKAGES) == cache(tmp_path, environ=unrelated).key(PACKAGES)
    assert probe_variables({"PYTHONDONTWRITEBYTECODE": "1", "Dramatiq_Restart_Delay": "1"}) == {
        "Dramatiq_Restart_Delay": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def test_a_variables_value_is_never_written(tmp_path: Path) -> None:
    outcomes = cache(tmp_path, environ={"PYTHONSECRETISH": "s3cr3t-value-xyz"})
    key = outcomes.key(PACKAGES)
    outcomes.put(key, ProbeResult(Outcome.PASS, Diagnosis.CONSUMED, "ok", (), {"boot": 1.0}))
    assert "s3cr3t-value-xyz" not in "".join(p.read_text() for p in tmp_path.iterdir())


STALL = ProbeResult(
    Outcome.FAIL,
    Diagnosis.NOT_DELIVERED,
    "worker ready, no consumer registered",
    (),
    {"boot": 0.4, "wait": 2.0},
    limit_reached=LimitReached("consume", 2.0),
)
HEALTHY = ProbeResult(Outcome.PASS, Diagnosis.CONSUMED, "ran", (), {"boot": 0.5, "wait": 0.2})
CRASH = ProbeResult(Outcome.FAIL, Diagnosis.CRASHED, "ImportError", (), {"boot": 0.3, "wait": 0})


@pytest.mark.parametrize(
    ("stored", "limits", "replayed"),
    [
        (STALL, Limits(consume=2.0), True),  # the limit it waited
        (STALL, Limits(consume=1.0), True),  # not within 2 s, so not within 1 s either
        (STALL, Limits(consume=30.0), False),  # it might have run in 30 s
        (HEALTHY, Limits(boot=60, consume=1.0), True),
        (HEALTHY, Limits(boot=60, consume=0.1), False),  # it needed 0.2 s to consume
        (HEALTHY, Limits(boot=0.2, consume=1.0), False),  # and 0.5 s to boot
        (CRASH, Limits(boot=0.1, consume=0.1), True),  # an exit decided it, not a limit
    ],
    ids=["same", "shorter", "longer", "pass-fits", "pass-slow", "pass-slow-boot", "crash"],
)
def test_a_stored_result_stands_in_only_under_limits_that_give_it_too(
    tmp_path: Path, stored: ProbeResult, limits: Limits, replayed: bool
) -> None:
    outcomes = cache(tmp_path)
    key = outcomes.key(PACKAGES)
    outcomes.put(key, stored)
    assert (outcomes.get(key, limits) == stored) is replayed


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"format": 2, "outcome": "flaky"}',
        '{"format": 1, "outcome": "pass", "diagnosis": "consumed", "detail": "", '
        '"evidence": [], "timings": {}, "exit_status": null}',
        '{"format": 2, "outcome": "pass", "diagnosis": "consumed", "detail": "", '
        '"evidence": [], "timings": {"wait": "slow"}, "exit_status": null, '
        '"setup_error": null, "limit_reached": null}',
        '{"format": 2, "outcome": "fail", "diagnosis": "consumed", "detail": "", '
        '"evidence": [], "timings": {}, "exit_status": null, "setup_error": null, '
        '"limit_reached": {"limit": "forever", "waited": 1}}',
    ],
)
def test_a_malformed_entry_is_a_miss(tmp_path: Path, text: str) -> None:
    outcomes = cache(tmp_path)
    key = outcomes.key(PACKAGES)
    (tmp_path / f"{key}.json").write_text(text)
    assert outcomes.get(key, Limits()) is None
    outcomes.put(key, HEALTHY)
    assert json.loads((tmp_path / f"{key}.json").read_text())["outcome"] == "pass"
    assert outcomes.get(key, Limits()) == HEALTHY


def test_stacks_are_not_stored(tmp_path: Path) -> None:
    # A stack is one moment of processes long gone, not a property of the package set:
    # the cache keeps the verdict and the output, never the stacks (they are taken afresh
    # by the confirmation, whose result is the evidence).
    frames = (Frame("poll", "/e/lib/python3.12/site-packages/pika/select_connection.py", 1240),)
    stacks = Stacks((ThreadStack(42, "MainThread", 1, 42, False, frames, "py-spy"),), 42, "ok")
    outcomes = cache(tmp_path)
    key = outcomes.key(PACKAGES)
    outcomes.put(key, replace(STALL, stacks=stacks))
    stored = json.loads((tmp_path / f"{key}.json").read_text())
    assert "stacks" not in stored
    assert "select_connection" not in json.dumps(stored)
    assert outcomes.get(key, Limits(consume=2.0)) == STALL
