"""`envbisect repro`: a reproducer written from a real run's report, checked from its files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from envbisect.cli import main
from envbisect.errors import ExitCode

from ..conftest import ROOT

MINIMAL = ROOT / "fixtures" / "minimal.txt"

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]


def run(tmp_path: Path, cache_dir: Path, fixture_wheels: Path, *args: str) -> Path:
    """A run whose fixture packages (on no index) come from --find-links, as a user's
    private wheels would."""
    report = tmp_path / "report.json"
    common = ["--cache-dir", str(cache_dir), "--no-cache", "--find-links", str(fixture_wheels)]
    main(["run", *args, *common, "--json", str(report)])
    return report


def test_the_stall_reproduces_from_the_written_files_alone(
    tmp_path: Path,
    cache_dir: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
    fixture_wheels: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = fixture_env("stall")
    report = run(tmp_path, cache_dir, fixture_wheels, "--bad", str(bad), "--good", str(MINIMAL))
    data = json.loads(report.read_text())
    assert [c["name"] for c in data["culprits"]] == ["telemetry-shim"]
    recipe = data["repro"]
    assert "telemetry-shim==0.4.1" in recipe["failing"]
    assert "telemetry-shim==0.4.1" not in recipe["good"]
    assert recipe["probe"]["kind"] == "consume"

    out = tmp_path / "repro"
    monkeypatch.setenv("BROKER_URL", broker_url)
    monkeypatch.setenv("PROBE_TIMEOUT", "8")  # the stalled worker is killed after it
    capsys.readouterr()
    assert main(["repro", str(report), "--dir", str(out), "--check"]) == ExitCode.OK
    err = capsys.readouterr().err
    assert "failing set (requirements.txt): fails (exit 1): fail: the actor did not run" in err
    assert "good set (requirements-good.txt): passes: pass: the actor ran" in err
    assert "reproduced" in err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "README.md",
        "probe.py",
        "requirements-good.txt",
        "requirements.txt",
        "tasks.py",
    ]
    pins = (out / "requirements.txt").read_text().splitlines()
    assert "telemetry-shim==0.4.1" in pins and "gevent==26.9.0" in pins
    readme = (out / "README.md").read_text()
    assert readme.startswith("# Reproducer: culprit found: telemetry-shim 0.4.1")
    assert "env/bin/python probe.py   # fails: not-delivered" in readme
    assert "gevent hub running in main thread" in readme  # the observed stacks


def test_a_command_probe_reproduces_too(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path], fixture_wheels: Path
) -> None:
    probe = "python -c 'import sys, importlib.util as u; sys.exit(bool(u.find_spec(\"gevent\")))'"
    report = run(
        tmp_path,
        cache_dir,
        fixture_wheels,
        "--bad",
        str(fixture_env("stall")),
        "--good",
        str(MINIMAL),
        "--probe-cmd",
        probe,
    )
    out = tmp_path / "repro"
    assert main(["repro", str(report), "--dir", str(out), "--check"]) == ExitCode.OK
    assert json.dumps(probe) in (out / "probe.py").read_text()
    assert not (out / "tasks.py").exists()


def test_a_report_without_a_culprit_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"verdict": "bad-passes", "repro": None}))
    assert main(["repro", str(report), "--dir", str(tmp_path / "out")]) == ExitCode.USAGE
    assert capsys.readouterr().err.strip() == (
        "envbisect: error: the report names no culprit: nothing to reproduce"
    )
    (tmp_path / "garbage.json").write_text("{")
    assert main(["repro", str(tmp_path / "garbage.json")]) == ExitCode.USAGE
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"verdict": "culprit-found", "repro": {"probe": {}}}))
    capsys.readouterr()
    assert main(["repro", str(incomplete), "--dir", str(tmp_path / "out")]) == ExitCode.USAGE
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("envbisect: error: not a complete envbisect report: KeyError")
