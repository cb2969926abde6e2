"""`envbisect run` with each kind of probe: async, the user's worker, commands, Redis, flaky."""

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


def bisect(tmp_path: Path, cache_dir: Path, *args: str) -> tuple[int, dict[str, object]]:
    report = tmp_path / "report.json"
    code = main(["run", *args, "--cache-dir", str(cache_dir), "--no-cache", "--json", str(report)])
    return code, json.loads(report.read_text())


def names(report: dict[str, object]) -> list[str]:
    culprits = report["culprits"]
    assert isinstance(culprits, list)
    return sorted(c["name"] for c in culprits)


def test_consume_async_probe_finds_the_stall(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(fixture_env("stall")),
        "--good",
        str(MINIMAL),
        "--probe",
        "consume-async",
        "--broker-url",
        broker_url,
    )
    assert code == ExitCode.OK
    assert names(report) == ["telemetry-shim"]
    assert str(report["probe"]).startswith("consume-async")


def test_users_own_worker_module(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("dramatiq[rabbitmq]\npika\nops-core\n")
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(fixture_env("ops-stall")),
        "--good",
        str(good),
        "--broker-url",
        broker_url,
        "--worker-module",
        "ops_core.tasks.worker",
        "--actor",
        "execute_agent_task_actor",
        "--args",
        '["t-1", "probe", {}]',
    )
    assert code == ExitCode.OK
    assert names(report) == ["telemetry-shim"]
    trials = report["trials"]
    assert isinstance(trials, list)
    assert trials[0]["diagnosis"] == "consumed"


def test_users_worker_module_missing_from_the_good_set(
    tmp_path: Path,
    cache_dir: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "run",
            "--bad",
            str(fixture_env("ops-stall")),
            "--good",
            str(MINIMAL),
            "--broker-url",
            broker_url,
            "--cache-dir",
            str(cache_dir),
            "--no-cache",
            "--worker-module",
            "ops_core.tasks.worker",
            "--actor",
            "execute_agent_task_actor",
        ]
    )
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("envbisect: error: the worker module ops_core.tasks.worker is not")
    assert "Traceback" not in "\n".join(err)


def test_command_probe_works_around_untestable_trials(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path]
) -> None:
    # Untestable (125) when structlog is there without requests; bad when telemetry_shim imports.
    script = (
        "import importlib.util as u, sys; has = lambda m: u.find_spec(m) is not None; "
        "sys.exit(125 if has('structlog') and not has('requests') "
        "else 1 if has('telemetry_shim') else 0)"
    )
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(fixture_env("stall")),
        "--good",
        str(MINIMAL),
        "--probe-cmd",
        f'python -c "{script}"',
    )
    assert code == ExitCode.OK
    assert names(report) == ["telemetry-shim"]
    trials = report["trials"]
    assert isinstance(trials, list)
    assert "skip" in {t["outcome"] for t in trials}, "the search met an untestable set"


def test_command_probe_names_the_signal(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(fixture_env("crash")),
        "--good",
        str(MINIMAL),
        "--probe-cmd",
        "python -c 'import pika' || kill -SEGV $$",
    )
    assert code == ExitCode.OK
    assert names(report) == ["pika-autotrace"]
    evidence = report["evidence"]
    assert isinstance(evidence, dict)
    assert "SIGSEGV" in str(evidence["detail"])


def test_import_probe(tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path]) -> None:
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(fixture_env("crash")),
        "--good",
        str(MINIMAL),
        "--probe",
        "import:dramatiq,pika",
    )
    assert code == ExitCode.OK
    assert names(report) == ["pika-autotrace"]


def test_redis_broker_finds_the_pair(
    tmp_path: Path, cache_dir: Path, redis_url: str, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(fixture_env("pair")),
        "--good",
        str(ROOT / "fixtures" / "minimal-redis.txt"),
        "--broker-url",
        redis_url,
    )
    assert code == ExitCode.OK
    assert names(report) == ["codec-autoload", "fastcodec"]
    assert str(report["probe"]).endswith("redis://127.0.0.1:6379/0")


def test_flaky_bad_set_is_reported_not_bisected(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(fixture_env("flaky")),
        "--good",
        str(MINIMAL),
        "--broker-url",
        broker_url,
        "--repeat",
        "3",
    )
    assert code == ExitCode.INCONSISTENT
    assert report["culprits"] == []
    assert "the bad set is flaky" in str(report["note"])
    trials = report["trials"]
    assert isinstance(trials, list)
    bad = next(t for t in trials if t["phase"] == "bad")
    assert bad["outcome"] == "flaky"
    assert sorted(bad["runs"]) == ["fail", "pass", "pass"]


def test_search_works_around_a_flaky_package(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(fixture_env("stall-flaky")),
        "--good",
        str(MINIMAL),
        "--broker-url",
        broker_url,
        "--repeat",
        "3",
    )
    assert code == ExitCode.OK
    assert names(report) == ["telemetry-shim"]
    trials = report["trials"]
    assert isinstance(trials, list)
    confirm = next(t for t in trials if t["phase"] == "confirm")
    assert confirm["runs"] == ["fail", "fail", "fail"]
    good = next(t for t in trials if t["phase"] == "good")
    assert good["runs"] == ["pass", "pass", "pass"]


def test_a_command_probes_outcomes_are_never_cached(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path]
) -> None:
    # A user's command may read files outside the env (their tests): the same set can
    # pass tomorrow. An import probe depends on the env alone, so its outcomes are kept.
    outcomes = tmp_path / "outcomes"
    common = ["--bad", str(fixture_env("crash")), "--good", str(MINIMAL)]
    common += ["--cache-dir", str(cache_dir), "--outcome-cache", str(outcomes)]
    assert main(["run", *common, "--probe-cmd", "python -c 'import pika'"]) == ExitCode.OK
    assert list(outcomes.glob("*.json")) == []
    assert main(["run", *common, "--probe", "import:pika"]) == ExitCode.OK
    assert list(outcomes.glob("*.json")), "not vacuous: the same run with an import probe caches"
