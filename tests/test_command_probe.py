"""The command probe's verdicts, git-bisect style, on real child processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from envbisect.limits import Limits
from envbisect.model import Diagnosis, Outcome, ProbeResult, TrialEnv
from envbisect.probes.base import Later
from envbisect.probes.command import CommandProbe
from envbisect.processes import new_run_token


def probe(tmp_path: Path, command: str, seconds: float = 30.0) -> ProbeResult:
    # Any env serves: these commands do not use its Python.
    trial = TrialEnv(path=Path(sys.prefix), scratch=tmp_path)
    return CommandProbe(command).run(
        trial, new_run_token(), Limits(command=seconds, grace=0.3), Later()
    )


@pytest.mark.parametrize(
    ("command", "outcome", "detail"),
    [
        ("exit 0", Outcome.PASS, "exit status 0"),
        ("exit 125", Outcome.SKIP, "exit status 125: cannot test this set (skip)"),
        ("echo boom; exit 3", Outcome.FAIL, "exit status 3: boom"),
        ("kill -SEGV $$", Outcome.FAIL, "killed by SIGSEGV (status -11)"),
        ("exit 130", Outcome.FAIL, "killed by SIGINT (status 130)"),
    ],
)
def test_exit_statuses(tmp_path: Path, command: str, outcome: Outcome, detail: str) -> None:
    result = probe(tmp_path, command)
    assert (result.outcome, result.detail) == (outcome, detail)


def test_127_is_bad_and_flags_a_probe_that_cannot_work(tmp_path: Path) -> None:
    # Bad in a search trial; in the good set the runner turns the flag into exit 2.
    result = probe(tmp_path, "no-such-command-envbisect")
    assert (result.outcome, result.detail) == (Outcome.FAIL, "exit status 127 (command not found)")
    assert result.setup_error is not None and "command not found" in result.setup_error


def test_a_timeout_is_bad_with_the_signal_named(tmp_path: Path) -> None:
    stubborn = probe(tmp_path, "trap '' TERM; sleep 30", seconds=0.5)
    assert (stubborn.outcome, stubborn.diagnosis) == (Outcome.FAIL, Diagnosis.TIMED_OUT)
    assert stubborn.detail == "still running after 0.5 s; stopped with SIGKILL (it ignored SIGTERM)"
    polite = probe(tmp_path, "exec sleep 30", seconds=0.5)
    assert polite.detail == "still running after 0.5 s; stopped with SIGTERM"


def test_the_command_and_its_output_hold_no_secret(tmp_path: Path) -> None:
    command = (
        "API_TOKEN=tok-abcdef12 true; echo connecting to https://u:p@ssw0rd99@h/; "
        "python3 -c 'raise RuntimeError(\"https://tok-ghijkl34@h/ refused\")'; "
        "no-such-command-envbisect https://tok-mnopqr56@h/"
    )
    result = probe(tmp_path, command)
    probe_text = CommandProbe(command).describe()
    text = "\n".join([probe_text, result.detail, str(result.setup_error), *result.evidence])
    for secret in ("tok-abcdef12", "p@ssw0rd99", "ssw0rd99", "tok-ghijkl34", "tok-mnopqr56"):
        assert secret not in text
    assert "connecting to https://u:***@h/" in result.evidence
    assert "RuntimeError: https://***@h/ refused" in result.evidence
    assert "API_TOKEN=***" in probe_text
