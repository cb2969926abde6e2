"""What a run leaves when it cannot clean up as usual: a removal that fails, a hard kill.

Each case runs ``python -m envbisect run …`` as a real subprocess against the real
RabbitMQ and real envs, and looks at what is left from outside (the run's token
names its processes, queues and temp dir).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from envbisect.errors import ExitCode

from ..conftest import ROOT, debris, envbisect_tempdirs

MINIMAL = ROOT / "fixtures" / "minimal.txt"

pytestmark = pytest.mark.integration


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == str(path) or point.startswith(f"{path}/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def test_a_clean_up_that_fails_is_said_and_the_verdict_stands(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path]
) -> None:
    # Every trial's probe mounts a tmpfs in its scratch dir, inside the run's temp dir:
    # removing the temp dir then really fails (EBUSY), whatever removal code runs.
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    report = tmp_path / "report.json"
    probe = (
        "mkdir -p busy && mount -t tmpfs -o size=1m envbisect-test busy && python -c 'import pika'"
    )
    argv = [sys.executable, "-m", "envbisect", "run", "--bad", str(fixture_env("crash"))]
    argv += ["--good", str(MINIMAL), "--probe-cmd", probe, "--cache-dir", str(cache_dir)]
    argv += ["--json", str(report)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmpdir)},
    )
    try:
        stdout, stderr = proc.communicate(timeout=600)
        assert mounts_below(tmpdir), "no probe mounted anything: the test proves nothing"
        left = envbisect_tempdirs(proc.pid, tmpdir)
    finally:
        for point in mounts_below(tmpdir):
            subprocess.run(["umount", "-l", point], check=True)
    assert "Traceback" not in stderr
    assert proc.returncode == ExitCode.OK, stderr
    data = json.loads(report.read_text())
    assert data["verdict"] == "culprit-found"
    assert [c["name"] for c in data["culprits"]] == ["pika-autotrace"]
    (workspace,) = left
    said = [line for line in stderr.splitlines() if "clean-up failed" in line]
    assert len(said) == 1, stderr
    assert f"{tmpdir / workspace}" in said[0]
    assert "busy" in said[0].lower()
    assert data["cleanup_errors"] and str(tmpdir / workspace) in data["cleanup_errors"][0]
    assert "clean-up failed" in stdout, "the report says it too"
    assert debris(proc.pid)["processes"] == []
