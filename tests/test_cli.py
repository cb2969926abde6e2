"""The command line's error path: one clean line, the documented code, every report written."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
import typer

from envbisect import __version__, cli
from envbisect.cli import main
from envbisect.errors import ExitCode
from envbisect.options import Options

from .conftest import ROOT, SCHEMA

LOCKS = ROOT / "fixtures" / "locks"


def test_a_garbled_lock_is_one_line_with_its_line_number_and_every_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "pr" / "uv.lock"
    broken.parent.mkdir()
    broken.write_text('version = 1\n[[package]]\nname = "pika"\nversion = 0.12.0\n')
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code = main(
        [
            "gate",
            "--baseline",
            str(LOCKS / "uv" / "baseline" / "uv.lock"),
            "--candidate",
            str(broken),
            "--probe",
            "import:json",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(tmp_path / "out" / "report.json"),
            "--markdown",
            str(tmp_path / "out" / "report.md"),
            "--junit",
            str(tmp_path / "out" / "junit.xml"),
        ]
    )
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("envbisect: error:")]
    assert line.startswith(f"envbisect: error: {broken}: not valid TOML")
    assert "line 4" in line
    assert "Traceback" not in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert (report["verdict"], report["exit_code"], report["command"]) == ("error", 2, "gate")
    assert "not valid TOML" in (tmp_path / "out" / "report.md").read_text()
    (error,) = ET.parse(tmp_path / "out" / "junit.xml").getroot().iter("error")
    assert "not valid TOML" in (error.get("message") or "")
    assert summary.read_text().startswith("earlier step\n### ⚠️ envbisect: gate: error:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--find-links", "/nonexistent-dir"], "--find-links /nonexistent-dir: not a directory"),
        (["--candidate", "/nonexistent.lock"], "/nonexistent.lock: no such file or directory"),
    ],
)
def test_bad_gate_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["gate", "--baseline", str(LOCKS / "requirements" / "baseline.txt")]
    if "--candidate" not in args:
        base += ["--candidate", str(LOCKS / "requirements" / "candidate.txt")]
    code = main([*base, *args, "--probe", "import:json", "--cache-dir", str(tmp_path)])
    assert code == ExitCode.USAGE
    assert f"envbisect: error: {message}" in capsys.readouterr().err


def on_requirements(command: str, tmp_path: Path, report: Path, *args: str) -> int:
    """``main`` on the requirements lock pair, as run (bad, good) or gate sides."""
    baseline, candidate = (
        str(LOCKS / "requirements" / f"{n}.txt") for n in ("baseline", "candidate")
    )
    sides = ["--baseline", baseline, "--candidate", candidate]
    if command == "run":
        sides = ["--bad", candidate, "--good", baseline]
    cache = ["--cache-dir", str(tmp_path / "cache"), "--json", str(report)]
    return main([command, *sides, *cache, *args])


def test_a_bug_is_one_line_exit_9_and_a_report_never_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gate that crashed must not read as "regression found" (exit 1) in CI.
    def crash(*_: object) -> None:
        raise RuntimeError("unexpected state\nsecond line")

    monkeypatch.setattr("envbisect.cli.triage", crash)
    monkeypatch.delenv("ENVBISECT_DEBUG", raising=False)
    out = tmp_path / "report.json"
    code = on_requirements("gate", tmp_path, out, "--probe", "import:json")
    assert code == ExitCode.INTERNAL == 9
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("envbisect: error:")]
    assert "internal error, a bug in envbisect: RuntimeError: unexpected state (" in line
    report = json.loads(out.read_text())
    jsonschema.validate(report, SCHEMA)
    assert (report["verdict"], report["exit_code"]) == ("error", 9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cwd", "."], "--cwd is the working directory of --probe-cmd, which is missing"),
        (["--args", "[1]"], "--args needs --worker-module"),
        (
            ["--probe-cmd", "true", "--probe", "import:json"],
            "--probe-cmd is a probe of its own: leave out --probe/--worker-module",
        ),
        (["--find-links", "/nonexistent-dir"], "--find-links /nonexistent-dir: not a directory"),
        (
            ["--flaky", "--repeat", "5"],
            "--flaky chooses how often to probe each set: drop --repeat",
        ),
    ],
)
def test_options_that_would_be_ignored_or_are_wrong_are_bad_input_with_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    report = tmp_path / "report.json"
    code = on_requirements("run", tmp_path, report, *args)
    assert code == ExitCode.USAGE
    assert f"envbisect: error: {message}" in capsys.readouterr().err
    written = json.loads(report.read_text())
    jsonschema.validate(written, SCHEMA)
    assert (written["verdict"], written["exit_code"], written["error"]) == ("error", 2, message)


def test_the_header_and_error_lines_hold_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An index URL in the environment, a token in the probe command, a password with a
    # raw "@" in an error line: each is a known secret from the start of the run.
    monkeypatch.setenv("PIP_INDEX_URL", "https://alice:idx-s3cret-1@pypi.corp/simple")
    command = "curl -H 'Authorization: Bearer tok-abcdef12' https://tok-ghijkl34@h/ $PIP_INDEX_URL"
    report = tmp_path / "report.json"
    missing = str(tmp_path / "missing")
    common = ["--cache-dir", str(tmp_path / "cache"), "--json", str(report)]
    code = main(["run", "--bad", missing, "--good", missing, "--probe-cmd", command, *common])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "probe=command \"curl -H 'Authorization: Bearer ***' https://***@h/" in err
    broker = "amqp://u:p@ssw0rd99@h:99999/"
    code = main(["run", "--bad", missing, "--good", missing, "--broker-url", broker, *common])
    assert code == ExitCode.USAGE
    err += capsys.readouterr().err
    assert "envbisect: error: --broker-url amqp://u:***@h:99999/: not a valid URL" in err
    written = report.read_text()
    for secret in ("tok-abcdef12", "tok-ghijkl34", "p@ssw0rd99", "ssw0rd99", "idx-s3cret-1"):
        assert secret not in err + written


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == ExitCode.OK
    assert capsys.readouterr().out.strip() == f"envbisect {__version__}"


def option_names(command: str) -> set[str]:
    """The option names a command's click parser knows."""
    sub = typer.main.get_command(cli.app).commands[command]  # type: ignore[attr-defined]
    return {name for param in sub.params for name in (*param.opts, *param.secondary_opts)}


def test_run_and_gate_take_the_same_options_besides_their_sides() -> None:
    run, gate = option_names("run"), option_names("gate")
    assert run - gate == {"--bad", "--good"}
    assert gate - run == {"--baseline", "--candidate"}
    assert {"--probe-cmd", "--json", "--no-cache", "--find-links", "--private-broker"} <= run


def test_help_groups_options_in_panels(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one line per option
    main(["run", "--help"])
    shown = capsys.readouterr().out
    for panel in ("Inputs", "Probe", "Broker", "Speed", "Reports"):
        assert f"─ {panel} " in shown
    # Help is markup: a bracketed default in the text is shown, not swallowed as a tag;
    # the default broker URL is shown without its password.
    assert "[default: its only actor]" in shown
    assert "guest:***@" in shown and "guest:guest" not in shown


def test_each_option_reaches_the_options_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Options] = []

    def record(options: Options, *_: object) -> None:
        seen.append(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr("envbisect.cli.triage", record)
    main(
        [
            "gate",
            "--baseline",
            str(tmp_path / "base.txt"),
            "--candidate",
            str(tmp_path / "pr.txt"),
            "--probe",
            "import:json",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--jobs",
            "3",
            "--fixed-timeout",
            "--no-cache",
            "--find-links",
            str(tmp_path),
            "--max-time",
            "99",
        ]
    )
    (options,) = seen
    assert (options.good, options.bad) == (tmp_path / "base.txt", tmp_path / "pr.txt")
    assert options.gate and options.jobs == 3 and options.max_time == 99
    assert not options.adaptive and options.outcomes is None
    assert options.find_links == (tmp_path.resolve(),)
