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


def test_repeat_names_a_package_that_fails_one_run_in_three(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    # flaky-shim makes every third worker start of an env exit: a set with it fails one
    # of its three runs, and one failed run fails a set.
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
    assert code == ExitCode.OK
    assert names(report) == ["flaky-shim"]
    trials = report["trials"]
    assert isinstance(trials, list)
    bad = next(t for t in trials if t["phase"] == "bad")
    assert (bad["outcome"], bad["runs"]) == ("fail", ["pass", "pass", "fail"])
    flakiness = report["flakiness"]
    assert isinstance(flakiness, dict)
    assert (flakiness["runs"], flakiness["chosen"]) == (3, False)
    assert flakiness["bad"] == {"failed": 1, "runs": 3}
    assert flakiness["culprits"] == {"failed": 1, "runs": 3}
    assert flakiness["good"]["failed"] == 0
    # Three runs are few for a failure seen once in three: the confidence says so.
    assert flakiness["confidence"] < 0.99
    assert "(fails 1 of 3 runs; good set 0 of" in str(report["summary"])


def test_flaky_names_an_intermittent_stall_with_its_rate_and_confidence(
    tmp_path: Path, cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    # trace-sampler stalls about half the worker starts: --flaky estimates the rate from
    # the bad set's runs, chooses K, and names it.
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(fixture_env("stall-sometimes")),
        "--good",
        str(MINIMAL),
        "--broker-url",
        broker_url,
        "--flaky",
    )
    assert code == ExitCode.OK, report["note"]
    assert names(report) == ["trace-sampler"]
    flakiness = report["flakiness"]
    assert isinstance(flakiness, dict)
    assert flakiness["chosen"] is True
    assert flakiness["bad"] == {"failed": 6, "runs": 11}  # starts 1, 2, 4, 7, 8, 11 stall
    k = flakiness["runs"]
    assert 6 < k <= 40
    assert flakiness["culprits"]["runs"] == k
    assert 0 < flakiness["culprits"]["failed"] < k
    assert flakiness["good"] == {"failed": 0, "runs": 10 + k}
    assert flakiness["confidence"] >= 0.99
    evidence = report["evidence"]
    assert isinstance(evidence, dict)
    assert evidence["diagnosis"] == "not-delivered"


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
