"""The good side as the user writes it: direct references, and the bad side's Python.

An unpinned good file may name packages by editable install, URL, VCS or path; they
are kept, resolved with their dependencies, installed as they are and tried like any
other distribution. The good set is resolved for the interpreter the trial envs run
(the bad side's), by either installer, not for envbisect's own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from envbisect.cli import main
from envbisect.errors import ExitCode

from ..conftest import BUILD, ROOT
from .package_index import LocalIndex
from .test_bad_input import envbisect, one_error_line

OPS_CORE = ROOT / "fixtures" / "packages" / "ops-core"

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]


def bisect(tmp_path: Path, cache_dir: Path, *args: str) -> tuple[int, dict[str, object]]:
    report = tmp_path / "report.json"
    code = main(["run", *args, "--cache-dir", str(cache_dir), "--no-cache", "--json", str(report)])
    return code, json.loads(report.read_text())


def changes(report: dict[str, object]) -> dict[str, str]:
    changed = report["changed_packages"]
    assert isinstance(changed, list)
    return {c["name"]: c["change"] for c in changed}


def culprit_names(report: dict[str, object]) -> list[str]:
    culprits = report["culprits"]
    assert isinstance(culprits, list)
    return sorted(c["name"] for c in culprits)


def git_repo(source: Path, where: Path) -> str:
    """A git repository of ``source`` at ``where``; its commit."""
    shutil.copytree(source, where)
    git = ["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "ops-core"], check=True)
    return subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.parametrize("installer", ["uv", "pip"])
@pytest.mark.parametrize("form", ["editable", "path", "url", "git"])
def test_direct_references_in_the_good_file_are_kept(
    form: str,
    installer: str,
    tmp_path: Path,
    cache_dir: Path,
    fixture_env: Callable[[str], Path],
    fixture_wheels: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = fixture_env("ops-crash")
    shutil.copytree(OPS_CORE, tmp_path / "ops-core")
    commit = git_repo(OPS_CORE, tmp_path / "repo")
    monkeypatch.chdir(tmp_path)  # relative paths mean what they mean to pip and uv: from here
    served = LocalIndex(tmp_path / "served")
    served.publish([next(fixture_wheels.glob("ops_core-0.3.0-*.whl"))])
    with served.serving():
        line = {
            "editable": "-e ./ops-core",
            "path": "./ops-core",
            "url": f"ops-core @ {served.url('files/ops_core-0.3.0-py3-none-any.whl')}",
            "git": f"ops-core @ git+file://{tmp_path / 'repo'}@{commit}",
        }[form]
        good = tmp_path / "good.txt"
        good.write_text(f"dramatiq[rabbitmq]\npika\n{line}\n")
        code, report = bisect(
            tmp_path,
            cache_dir,
            "--bad",
            str(bad),
            "--good",
            str(good),
            "--installer",
            installer,
            "--probe",
            "import:ops_core.tasks.worker",
        )
    assert code == ExitCode.OK, report.get("error")
    assert culprit_names(report) == ["pika-autotrace"]
    # ops-core is in the good set: at most modified (an editable's files differ), never added.
    assert changes(report).get("ops-core") in (None, "modified")
    trials = report["trials"]
    assert isinstance(trials, list)
    assert next(t for t in trials if t["phase"] == "good")["outcome"] == "pass"


def test_the_readme_advice_your_project_editable_in_both_sets(
    tmp_path: Path,
    cache_dir: Path,
    broker_url: str,
    fixture_wheels: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bad env is the seeds' service with the project installed editable, as in a
    # developer's checkout; the good file names the same checkout with `-e`.
    source = tmp_path / "ops-core"
    shutil.copytree(OPS_CORE, source)
    spec = (ROOT / "fixtures" / "envs" / "ops-stall.txt").read_text()
    (tmp_path / "bad.txt").write_text(spec.replace("ops-core==0.3.0", f"-e {source}"))
    bad = tmp_path / "bad"
    subprocess.run(
        [sys.executable, str(ROOT / "fixtures" / "build.py"), "env", "bad.txt", str(bad)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.txt"
    good.write_text("dramatiq[rabbitmq]\npika\n-e ./ops-core\n")
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(bad),
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
    assert code == ExitCode.OK, report.get("error")
    assert culprit_names(report) == ["telemetry-shim"]
    assert changes(report).get("ops-core") in (None, "modified")
    trials = report["trials"]
    assert isinstance(trials, list)
    assert next(t for t in trials if t["phase"] == "good")["diagnosis"] == "consumed"


def python310() -> str:
    """A working Python 3.10 (pyenv's first: a shim may name one that is not selected)."""
    candidates = [*map(str, sorted(Path.home().glob(".pyenv/versions/3.10*/bin/python3.10")))]
    candidates += filter(None, [shutil.which("python3.10")])
    for candidate in candidates:
        done = subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False)
        if done.returncode == 0:
            return candidate
    pytest.skip("needs a Python 3.10 (pyenv has one on the project's machines)")


@pytest.fixture(scope="module")
def bad_env_py310(fixture_wheels: Path) -> Path:
    """The crash env on Python 3.10, with the tomli its marker brings there."""
    dest = BUILD / "fixtures" / "envs" / "crash-tomli-py310"
    spec = ROOT / "fixtures" / "envs" / "crash-tomli.txt"
    build = [sys.executable, str(ROOT / "fixtures" / "build.py"), "env", str(spec), str(dest)]
    subprocess.run([*build, "--python", python310()], check=True, capture_output=True)
    return dest


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_the_good_set_is_resolved_for_the_bad_sides_python(
    installer: str, tmp_path: Path, cache_dir: Path, bad_env_py310: Path
) -> None:
    # On 3.10 the marker holds: tomli is in the good set too, so it is no change.
    good = tmp_path / "good.txt"
    good.write_text('dramatiq[rabbitmq]\npika\ntomli ; python_version < "3.11"\n')
    code, report = bisect(
        tmp_path,
        cache_dir,
        "--bad",
        str(bad_env_py310),
        "--good",
        str(good),
        "--installer",
        installer,
        "--probe",
        "import:dramatiq,pika",
    )
    assert code == ExitCode.OK, report.get("error")
    assert culprit_names(report) == ["pika-autotrace"]
    assert changes(report) == {"observability-bundle": "added", "pika-autotrace": "added"}


def test_offline_pip_without_a_resolver_for_the_target_python(
    tmp_path: Path, broker_url: str, bad_env_py310: Path
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("dramatiq[rabbitmq]\npika\n")
    ran = envbisect(
        "--bad",
        str(bad_env_py310),
        "--good",
        str(good),
        "--installer",
        "pip",
        "--offline",
        "--probe",
        "import:dramatiq",
        cache_dir=tmp_path / "fresh-cache",
        broker_url=broker_url,
    )
    line = one_error_line(ran, ExitCode.ENVIRONMENT)
    assert "pip-tools" in line and "3.10" in line and "--offline" in line
