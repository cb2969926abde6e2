"""Variables of the user's shell that would break a trial's isolation are not passed on.

A fake ``dramatiq`` on ``PYTHONPATH``, a ``PYTHONHOME`` that is no Python, pip that
insists on a virtualenv, constraint files pinning an impossible version, uv seeding pip
into every venv and virtualenv giving envs the system's packages: with all of them set,
the run still finds the culprit (see envbisect.probes.base.DROPPED_VARIABLES).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from envbisect.cli import main
from envbisect.errors import ExitCode

from ..conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]

# Passes when dramatiq and pika import and the env holds no pip (nothing seeded it and
# no system site-packages show through); pika-autotrace breaks `import pika`.
PROBE = (
    "python -c \"import importlib.util as u; assert u.find_spec('pip') is None, 'pip is there'; "
    'import dramatiq, pika"'
)


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_hostile_shell_does_not_leak_into_trials_or_installs(
    installer: str,
    tmp_path: Path,
    cache_dir: Path,
    fixture_env: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = fixture_env("crash")  # built before the shell turns hostile
    fake = tmp_path / "path"
    fake.mkdir()
    (fake / "dramatiq.py").write_text("raise ImportError('the fake dramatiq on PYTHONPATH')\n")
    impossible = tmp_path / "constraints.txt"
    impossible.write_text("pika==0.0.1\ndramatiq==0.0.1\n")
    hostile = {
        "PYTHONPATH": str(fake),
        "PYTHONHOME": str(tmp_path / "no-python-here"),
        "PIP_REQUIRE_VIRTUALENV": "1",
        "PIP_CONSTRAINT": str(impossible),
        "UV_CONSTRAINT": str(impossible),
        "UV_VENV_SEED": "1",
        "VIRTUALENV_SYSTEM_SITE_PACKAGES": "1",
    }
    for key, value in hostile.items():
        monkeypatch.setenv(key, value)
    report = tmp_path / "report.json"
    code = main(
        [
            "run",
            "--bad",
            str(bad),
            "--good",
            str(ROOT / "fixtures" / "minimal.txt"),
            "--installer",
            installer,
            "--probe-cmd",
            PROBE,
            "--cache-dir",
            str(cache_dir),
            "--json",
            str(report),
        ]
    )
    data = json.loads(report.read_text())
    assert code == ExitCode.OK, data.get("error")
    assert [c["name"] for c in data["culprits"]] == ["pika-autotrace"]
