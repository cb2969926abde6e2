"""`envbisect run` end to end: real envs, real installs, real workers on the real RabbitMQ."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from envbisect.cli import main
from envbisect.errors import ExitCode

from ..conftest import ROOT

MINIMAL = ROOT / "fixtures" / "minimal.txt"
SCHEMA = json.loads((ROOT / "envbisect" / "schema" / "report.schema.json").read_text())

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]


def bisect(
    tmp_path: Path, cache_dir: Path, broker_url: str, *args: str
) -> tuple[int, dict[str, object]]:
    report = tmp_path / "report.json"
    code = main(
        [
            "run",
            *args,
            "--cache-dir",
            str(cache_dir),
            "--broker-url",
            broker_url,
            "--no-cache",
            "--json",
            str(report),
        ]
    )
    return code, json.loads(report.read_text())


def culprits(report: dict[str, object]) -> list[dict[str, object]]:
    found = report["culprits"]
    assert isinstance(found, list)
    return found


def test_finds_the_gevent_stall_and_how_it_got_in(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path, cache_dir, broker_url, "--bad", str(fixture_env("stall")), "--good", str(MINIMAL)
    )
    assert code == ExitCode.OK
    assert report["verdict"] == "culprit-found"
    (culprit,) = culprits(report)
    assert culprit["name"] == "telemetry-shim"
    assert culprit["version"] == "0.4.1"
    assert culprit["change"] == "added"
    assert culprit["required_by"] == ["perfsuite==2.7.0"]
    assert culprit["requires"] == ["gevent==26.9.0"]
    assert "gevent==26.9.0" in culprit["brings"]  # type: ignore[operator]
    evidence = report["evidence"]
    assert isinstance(evidence, dict)
    assert evidence["diagnosis"] == "not-delivered"
    assert "ignored SIGTERM" in str(evidence["detail"])
    assert "ready for action" in "\n".join(evidence["output"])
    trials = report["trials"]
    assert isinstance(trials, list)
    assert [t["phase"] for t in trials[:2]] == ["good", "bad"] or [
        t["phase"] for t in trials[:2]
    ] == ["bad", "good"]
    assert {t["outcome"] for t in trials} <= {"pass", "fail"}
    # Why it broke: what the culprit runs at start-up, and where the worker is stuck.
    assert culprit["startup_hooks"] == [
        {
            "file": "telemetry_shim.pth",
            "line": "import telemetry_shim._autopatch",
            "lineno": 1,
            "kind": "pth",
        }
    ]
    assert evidence["stacks_note"] == "taken with py-spy"
    summary = evidence["stacks_summary"]
    assert summary[0].startswith("main process ") and "gevent hub running in" in summary[0]
    assert any(
        "blocked in PollPoller.poll (pika/adapters/select_connection.py" in line for line in summary
    )
    assert {thread["process"] for thread in evidence["stacks"]} == {"main", "worker"}
    # Only the confirmation took stacks: the search's trials stay fast.
    assert [t["phase"] for t in trials if "stacks" in t["timings"]] == ["confirm"]
    jsonschema.validate(report, SCHEMA)


def test_finds_the_crash_with_its_import_error(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path, cache_dir, broker_url, "--bad", str(fixture_env("crash")), "--good", str(MINIMAL)
    )
    assert code == ExitCode.OK
    (culprit,) = culprits(report)
    assert culprit["name"] == "pika-autotrace"
    assert culprit["required_by"] == ["observability-bundle==1.2.0"]
    evidence = report["evidence"]
    assert isinstance(evidence, dict)
    assert evidence["diagnosis"] == "crashed"
    assert "ImportError" in "\n".join(evidence["output"])
    assert evidence["stacks"] is None  # a crash has its traceback
    assert [hook["line"] for hook in culprit["startup_hooks"]] == ["import pika_autotrace._hook"]
    jsonschema.validate(report, SCHEMA)


def test_finds_a_pair_that_fails_only_together(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path, cache_dir, broker_url, "--bad", str(fixture_env("pair")), "--good", str(MINIMAL)
    )
    assert code == ExitCode.OK
    assert sorted(c["name"] for c in culprits(report)) == ["codec-autoload", "fastcodec"]
    assert "only together" in str(report["note"])


def test_pip_installer_finds_the_same_culprit(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path,
        cache_dir,
        broker_url,
        "--bad",
        str(fixture_env("stall")),
        "--good",
        str(MINIMAL),
        "--installer",
        "pip",
    )
    assert code == ExitCode.OK
    assert [c["name"] for c in culprits(report)] == ["telemetry-shim"]
    assert report["installer"] == "pip"


def test_bad_side_as_frozen_requirements(
    tmp_path: Path,
    cache_dir: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
    fixture_wheels: Path,
) -> None:
    env = fixture_env("crash")
    frozen = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True
    ).stdout
    if not frozen.strip():  # uv-made envs carry no pip: freeze with envbisect's own
        frozen = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "freeze"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    requirements = tmp_path / "frozen.txt"
    requirements.write_text(f"--find-links {fixture_wheels}\n{frozen}")
    code, report = bisect(
        tmp_path,
        cache_dir,
        broker_url,
        "--bad",
        str(requirements),
        "--good",
        str(MINIMAL),
        "--python",
        str(env / "bin" / "python"),
    )
    assert code == ExitCode.OK
    assert [c["name"] for c in culprits(report)] == ["pika-autotrace"]


def test_good_env_that_already_fails(
    tmp_path: Path,
    cache_dir: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = str(fixture_env("crash"))
    code, report = bisect(tmp_path, cache_dir, broker_url, "--bad", env, "--good", env)
    assert code == ExitCode.GOOD_FAILS
    assert report["verdict"] == "good-fails"
    assert "the good set already fails" in capsys.readouterr().out


def test_bad_env_that_passes(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path,
        cache_dir,
        broker_url,
        "--bad",
        str(fixture_env("healthy")),
        "--good",
        str(MINIMAL),
    )
    assert code == ExitCode.BAD_PASSES
    assert report["verdict"] == "bad-passes"


def test_outcome_cache_makes_a_rerun_near_instant(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    outcomes = tmp_path / "cache"
    args = [
        "run",
        "--bad",
        str(fixture_env("crash")),
        "--good",
        str(MINIMAL),
        "--broker-url",
        broker_url,
        "--cache-dir",
        str(cache_dir),
    ]
    first, second = tmp_path / "1.json", tmp_path / "2.json"
    # A private outcome cache for this test: point the whole cache at a copy-free dir.
    assert main([*args, "--json", str(first), "--outcome-cache", str(outcomes)]) == 0
    assert main([*args, "--json", str(second), "--outcome-cache", str(outcomes)]) == 0
    one, two = json.loads(first.read_text()), json.loads(second.read_text())
    assert not any(t["cached"] for t in one["trials"])
    assert all(t["cached"] for t in two["trials"] if t["phase"] != "confirm")
    assert two["culprits"] == one["culprits"]
    # Near instant, measured by what ran rather than by the clock: a cached trial built
    # no env and ran no probe; only the confirmation probes again (both ends).
    cached = [t for t in two["trials"] if t["cached"]]
    assert cached and all(t["seconds"] == t["build_seconds"] == 0 for t in cached)
    assert [t["phase"] for t in two["trials"] if not t["cached"]] == ["confirm", "confirm"]
