"""Installer commands: bounded in time, leave no logs, and say in one line what failed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from envbisect.envs import InstallerError, UvInstaller, _summary
from envbisect.errors import TimeLimitError
from envbisect.probes.base import isolated_environ


def test_max_time_stops_an_installer_command(tmp_path: Path) -> None:
    uv = UvInstaller(tmp_path / "cache", tmp_path / "logs")
    uv.deadline = time.monotonic() + 0.5
    started = time.monotonic()
    with pytest.raises(TimeLimitError, match="--max-time reached while hanging"):
        uv._run("hanging", ["sleep", "600"])
    assert time.monotonic() - started < 60  # stopped, not waited for
    uv.deadline = time.monotonic() - 1
    with pytest.raises(TimeLimitError, match="--max-time reached before"):
        uv._run("never started", ["sleep", "600"])


def test_installer_logs_do_not_pile_up(tmp_path: Path) -> None:
    uv = UvInstaller(tmp_path / "cache", tmp_path / "logs")
    assert uv._run("saying hi", ["echo", "hi"]).strip() == "hi"
    with pytest.raises(InstallerError, match=r"^failing failed: it broke$"):
        uv._run("failing", ["sh", "-c", "echo 'error: it broke' >&2; exit 2"])
    assert list((tmp_path / "logs").iterdir()) == []


@pytest.mark.parametrize(
    ("output", "summary"),
    [
        (
            "error: No solution found when resolving dependencies\n"
            "  cause: Because there is no version of pika==9.9.9 and you require\n"
            "         pika==9.9.9, we can conclude that your requirements are unsatisfiable.\n"
            "\nhint: Packages were unavailable because index lookups were disabled\n",
            "Because there is no version of pika==9.9.9 and you require pika==9.9.9, "
            "we can conclude that your requirements are unsatisfiable.",
        ),
        (
            "  \u00d7 No solution found when resolving dependencies:\n"
            "  \u2570\u2500\u25b6 Because nosuchpkg was not found in the package registry\n",
            "Because nosuchpkg was not found in the package registry",
        ),
        ("ERROR: Could not find a version that satisfies the requirement zz\n", "Could not find"),
        ("error: Failed to install: No space left on device (os error 28)\n", "no space left"),
        ("", "no output"),
    ],
    ids=["uv", "old-uv", "pip", "disk-full", "silent"],
)
def test_summary_says_why(output: str, summary: str) -> None:
    assert _summary(output).startswith(summary)


def test_the_dropped_variables_are_dropped_and_the_rest_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("PYTHONPATH", "UV_CONSTRAINT", "PIP_TARGET", "VIRTUALENV_SEEDER", "CONDA_PREFIX"):
        monkeypatch.setenv(key, "x")
    for key in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_CONFIG_FILE", "SSL_CERT_FILE", "HOME"):
        monkeypatch.setenv(key, "kept")
    env = isolated_environ()
    assert not {"PYTHONPATH", "UV_CONSTRAINT", "PIP_TARGET", "VIRTUALENV_SEEDER"} & set(env)
    assert "CONDA_PREFIX" not in env
    assert all(env[key] == "kept" for key in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_CONFIG_FILE"))
