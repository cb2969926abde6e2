"""`envbisect gate` end to end on real lock files: real installs, real workers, real RabbitMQ.

The candidate of each pair (fixtures/locks/) upgrades a dozen harmless packages,
drops one, adds one, and downgrades pika to 0.12.0, below what dramatiq 2.2.1
declares: its consumer calls ``collections.Callable`` (gone since Python 3.10),
so the worker restarts its consumer forever and never runs an actor.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from envbisect.cli import main
from envbisect.errors import ExitCode

from ..conftest import ROOT

LOCKS = ROOT / "fixtures" / "locks"
SCHEMA = json.loads((ROOT / "envbisect" / "schema" / "report.schema.json").read_text())
PAIRS = {
    "requirements": ("requirements/baseline.txt", "requirements/candidate.txt"),
    "uv.lock": ("uv/baseline/uv.lock", "uv/candidate/uv.lock"),
    "pylock.toml": ("pylock/pylock.baseline.toml", "pylock/pylock.candidate.toml"),
}

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]


def envbisect(
    tmp_path: Path, cache_dir: Path, broker_url: str, *args: str
) -> tuple[int, dict[str, Any]]:
    report = tmp_path / "report.json"
    code = main(
        [
            *args,
            "--cache-dir",
            str(cache_dir),
            "--broker-url",
            broker_url,
            "--no-cache",
            "--json",
            str(report),
            "--markdown",
            str(tmp_path / "report.md"),
            "--junit",
            str(tmp_path / "junit.xml"),
        ]
    )
    data = json.loads(report.read_text())
    jsonschema.validate(data, SCHEMA)
    return code, data


@pytest.mark.parametrize("kind", PAIRS)
def test_gate_names_the_pika_downgrade_and_its_first_bad_version(
    tmp_path: Path, cache_dir: Path, broker_url: str, kind: str
) -> None:
    baseline, candidate = (str(LOCKS / path) for path in PAIRS[kind])
    code, report = envbisect(
        tmp_path,
        cache_dir,
        broker_url,
        "gate",
        "--baseline",
        baseline,
        "--candidate",
        candidate,
        "--narrow",
    )
    assert code == ExitCode.REGRESSION
    assert (report["command"], report["verdict"], report["exit_code"]) == (
        "gate",
        "culprit-found",
        1,
    )
    assert report["changes"] == {"total": 16, "version": 14, "added": 1, "removed": 1}
    (culprit,) = report["culprits"]
    assert (culprit["name"], culprit["change"], culprit["direction"]) == (
        "pika",
        "version",
        "downgrade",
    )
    assert (culprit["good_version"], culprit["version"]) == ("1.4.4", "0.12.0")
    narrowed = culprit["narrowed"]
    assert (narrowed["first_bad"], narrowed["last_good"]) == ("0.13.1", "1.0.0")
    assert narrowed["untestable"] == []
    assert narrowed["versions"][0] == "1.4.4" and narrowed["versions"][-1] == "0.12.0"
    assert "1.3.0rc1" not in narrowed["versions"]  # pre-releases: only if an end is one
    assert report["evidence"]["diagnosis"] == "consumer-errors"
    assert "collections" in "\n".join(report["evidence"]["output"])
    phases = [t["phase"] for t in report["trials"]]
    assert phases.count("candidate") == 1 and "bad" not in phases  # not probed twice
    assert phases.count("narrow") == len(narrowed["tested"]) - 2
    text = (tmp_path / "report.md").read_text()
    assert "first bad pika version: 0.13.1" in text
    (failure,) = ET.parse(tmp_path / "junit.xml").getroot().iter("failure")
    assert "pika 1.4.4 → 0.12.0" in (failure.get("message") or "")


def test_gate_passes_a_harmless_update_with_one_line(
    tmp_path: Path,
    cache_dir: Path,
    broker_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, report = envbisect(
        tmp_path,
        cache_dir,
        broker_url,
        "gate",
        "--baseline",
        str(LOCKS / "uv" / "baseline" / "uv.lock"),
        "--candidate",
        str(LOCKS / "pylock" / "pylock.upgrades.toml"),  # formats may differ between sides
    )
    assert code == ExitCode.OK
    assert report["verdict"] == "pass"
    assert report["changes"]["total"] == 15
    assert [line for line in capsys.readouterr().out.splitlines() if line.strip()] == [
        report["summary"]
    ]
    assert report["summary"].startswith("gate passed: the candidate")
    assert summary.read_text().startswith("### ✅ envbisect: gate passed")
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert (root.get("failures"), root.get("errors")) == ("0", "0")


def test_run_takes_lock_files_on_both_sides(
    tmp_path: Path, cache_dir: Path, broker_url: str
) -> None:
    code, report = envbisect(
        tmp_path,
        cache_dir,
        broker_url,
        "run",
        "--bad",
        str(LOCKS / "uv" / "candidate" / "uv.lock"),
        "--good",
        str(LOCKS / "uv" / "baseline" / "uv.lock"),
    )
    assert code == ExitCode.OK
    assert report["command"] == "run"
    assert [c["summary"] for c in report["culprits"]] == [
        "pika 1.4.4 → 0.12.0 (downgrade; pulled in by dramatiq 2.2.1)"
    ]
    assert report["culprits"][0]["narrowed"] is None


@pytest.mark.parametrize(("command", "code"), [("run", ExitCode.BAD_PASSES), ("gate", ExitCode.OK)])
def test_no_changes_between_the_sides(
    tmp_path: Path, cache_dir: Path, broker_url: str, command: str, code: ExitCode
) -> None:
    lock = str(LOCKS / "pylock" / "pylock.baseline.toml")
    sides = ["--bad", lock, "--good", lock] if command == "run" else []
    sides = sides or ["--candidate", lock, "--baseline", lock]
    got, report = envbisect(
        tmp_path, cache_dir, broker_url, command, *sides, "--probe", "import:dramatiq"
    )
    assert got == code
    assert report["changes"] == {"total": 0}
    assert len(report["trials"]) == 1  # one set, probed once
