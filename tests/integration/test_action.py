"""The GitHub Action (action.yml) and its gate step, run here as GitHub would run them.

The step runs in a real git checkout of a pull request whose base branch is on
its ``origin``, with real installs. Only GitHub itself is not here: ``gh`` is a
stand-in on PATH that records the comment it was asked to post.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..conftest import ROOT

LOCKS = ROOT / "fixtures" / "locks" / "requirements"
#: Fails with pika older than 1.0: the candidate downgrades it to 0.12.0.
PROBE = "python -c \"import pika, sys; sys.exit(pika.__version__.startswith('0.'))\""

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]


def test_the_action_declares_every_input_its_steps_read() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    declared = set(action["inputs"])
    steps = action["runs"]["steps"]
    used = {
        name
        for step in steps
        for value in step.get("env", {}).values()
        for name in re.findall(r"\$\{\{ inputs\.([\w-]+) \}\}", str(value))
    }
    assert used == declared
    gate = next(step for step in steps if step.get("id") == "gate")
    assert "-m envbisect.action" in gate["run"]
    for name in declared:
        assert gate["env"].get(f"INPUT_{name.upper().replace('-', '_')}") or name == "python"
    outputs = {o["value"] for o in action["outputs"].values()}
    assert outputs == {f"${{{{ steps.gate.outputs.{name} }}}}" for name in action["outputs"]}


def pull_request(tmp_path: Path, candidate: Path) -> Path:
    """A checkout of a pull request changing requirements.txt; ``main`` is on origin."""
    origin, work = tmp_path / "origin.git", tmp_path / "work"

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=work, check=True, capture_output=True)

    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    work.mkdir()
    git("init", "-q", "-b", "main")
    git("config", "user.email", "ci@example.com")
    git("config", "user.name", "ci")
    shutil.copy(LOCKS / "baseline.txt", work / "requirements.txt")
    git("add", "requirements.txt")
    git("commit", "-q", "-m", "baseline")
    git("remote", "add", "origin", str(origin))
    git("push", "-q", "origin", "main")
    git("checkout", "-q", "-b", "upgrade")
    shutil.copy(candidate, work / "requirements.txt")
    git("commit", "-q", "--allow-empty", "-am", "upgrade")
    return work


def run_step(
    tmp_path: Path, work: Path, cache_dir: Path, comment: str = "true"
) -> tuple[int, dict[str, str], Path]:
    """The action's gate step: its exit status, its outputs, and what gh was asked."""
    bin_dir, runner_temp = tmp_path / "bin", tmp_path / "runner-temp"
    bin_dir.mkdir(exist_ok=True)
    runner_temp.mkdir(exist_ok=True)
    asked = tmp_path / "gh-asked"
    gh = bin_dir / "gh"
    gh.write_text(
        f'#!/bin/sh\necho "$@" >> {asked}\n[ "$4" = --body-file ] && cat "$5" >> {asked}.body\n'
    )
    gh.chmod(0o755)
    outputs = tmp_path / "github-output"
    outputs.write_text("")
    environ = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RUNNER_TEMP": str(runner_temp),
        "GITHUB_BASE_REF": "main",
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md"),
        "INPUT_CANDIDATE": "requirements.txt",
        "INPUT_BASELINE": "",
        "INPUT_PROBE": "consume",
        "INPUT_PROBE_CMD": PROBE,
        "INPUT_BROKER_URL": "",
        "INPUT_ARGS": f"--cache-dir '{cache_dir}' --no-cache",
        "INPUT_COMMENT": comment,
        "GH_TOKEN": "ghs-not-a-real-token",
        "PR_NUMBER": "7",
    }
    step = subprocess.run(
        [sys.executable, "-m", "envbisect.action"],
        cwd=work,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    return step.returncode, values, asked


def test_a_pull_request_that_breaks_the_probe_fails_and_gets_the_summary_as_a_comment(
    tmp_path: Path, cache_dir: Path
) -> None:
    work = pull_request(tmp_path, LOCKS / "candidate.txt")
    code, outputs, asked = run_step(tmp_path, work, cache_dir)
    assert code == 1, outputs
    assert outputs["verdict"] == "culprit-found"
    assert outputs["exit-code"] == "1"
    assert outputs["summary"].startswith("gate failed: regression: pika 1.4.4 → 0.12.0")
    assert Path(outputs["report"]).is_file()
    assert asked.read_text().splitlines()[0].startswith("pr comment 7 --body-file ")
    body = Path(f"{asked}.body").read_text()
    assert body.startswith("### ❌ envbisect: gate failed: regression: pika 1.4.4 → 0.12.0")
    assert (tmp_path / "step-summary.md").read_text().strip() == body.strip()


def test_a_passing_gate_posts_nothing_and_an_unchanged_file_is_not_gated(
    tmp_path: Path, cache_dir: Path
) -> None:
    work = pull_request(tmp_path, LOCKS / "upgrades.txt")
    code, outputs, asked = run_step(tmp_path, work, cache_dir)
    assert (code, outputs["verdict"], outputs["exit-code"]) == (0, "pass", "0")
    assert not asked.exists()
    unchanged = pull_request(tmp_path / "again", LOCKS / "baseline.txt")
    code, outputs, asked = run_step(tmp_path / "again", unchanged, cache_dir)
    assert (code, outputs["verdict"], outputs["exit-code"]) == (0, "unchanged", "0")
    assert not asked.exists()


def test_a_missing_candidate_is_one_line_and_an_error_output(tmp_path: Path) -> None:
    outputs = tmp_path / "github-output"
    environ = {
        **os.environ,
        "RUNNER_TEMP": str(tmp_path),
        "GITHUB_BASE_REF": "main",
        "GITHUB_OUTPUT": str(outputs),
        "INPUT_CANDIDATE": "no-such.lock",
    }
    step = subprocess.run(
        [sys.executable, "-m", "envbisect.action"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert step.returncode == 2
    assert step.stderr.strip() == (
        "envbisect: error: candidate no-such.lock: no such file in the checkout"
    )
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    assert (values["verdict"], values["exit-code"]) == ("error", "2")
