"""Interpreters envbisect cannot use are one line and exit 2; the bad env's `site` (its
``.pth`` hooks) never runs outside a trial env.

The old interpreters come from pyenv (``~/.pyenv/versions/*``); a case whose
interpreter this machine lacks is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from uv import find_uv_bin

from envbisect.errors import ExitCode

from ..conftest import NO_DEBRIS, ROOT, debris

MINIMAL = ROOT / "fixtures" / "minimal.txt"
PYENV = Path.home() / ".pyenv" / "versions"

pytestmark = pytest.mark.integration


def pyenv_python(version: str) -> Path:
    """pyenv's interpreter of ``version`` (e.g. ``3.7``), or skip the test."""
    major_minor = ".".join(version.split(".")[:2])
    found = sorted(PYENV.glob(f"{version}*/bin/python{major_minor}"))
    if not found:
        pytest.skip(f"no Python {version} under {PYENV}")
    return found[-1]


def envbisect(
    *args: str, cache_dir: Path, broker_url: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``python -m envbisect run …`` as a subprocess: (exit code, stdout, stderr)."""
    argv = [sys.executable, "-m", "envbisect", "run", *args, "--no-cache"]
    argv += ["--cache-dir", str(cache_dir), "--broker-url", broker_url]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    stdout, stderr = proc.communicate(timeout=600)
    assert debris(proc.pid) == NO_DEBRIS
    return proc.returncode, stdout, stderr


def one_error_line(code: int, stdout: str, stderr: str) -> str:
    assert "Traceback" not in stdout + stderr
    assert code == ExitCode.USAGE, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def venv_of(python: Path, dest: Path, *options: str) -> Path:
    subprocess.run(
        [str(python), "-m", "venv", "--without-pip", *options, str(dest)],
        check=True,
        capture_output=True,
    )
    return dest


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.7", "3.8"])
def test_a_python_too_old_for_envbisect_is_one_line(
    version: str, tmp_path: Path, cache_dir: Path, broker_url: str
) -> None:
    python = pyenv_python(version)
    full = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pinned = tmp_path / "frozen.txt"
    pinned.write_text("pika==1.4.4\n")
    code, out, err = envbisect(
        "--bad", str(pinned), "--good", str(MINIMAL), "--python", str(python),
        "--quiet", cache_dir=cache_dir, broker_url=broker_url,
    )  # fmt: skip
    assert one_error_line(code, out, err) == (
        f"envbisect: error: --python {python} is Python {full}; envbisect needs Python 3.9 or newer"
    )
    # The same interpreter as a virtualenv's: Python 2 has no venv module, so a
    # virtualenv-like directory (pyvenv.cfg and bin/python) stands in for one.
    if version == "2.7":
        env = tmp_path / "env"
        (env / "bin").mkdir(parents=True)
        (env / "pyvenv.cfg").write_text(f"home = {python.parent}\n")
        (env / "bin" / "python").symlink_to(python)
    else:
        env = venv_of(python, tmp_path / "env")
    code, out, err = envbisect(
        "--bad", str(env), "--good", str(MINIMAL), "--quiet",
        cache_dir=cache_dir, broker_url=broker_url,
    )  # fmt: skip
    assert one_error_line(code, out, err) == (
        f"envbisect: error: {env}: its interpreter {env}/bin/python is Python {full}; "
        "envbisect needs Python 3.9 or newer"
    )


def test_a_copies_venv_whose_base_interpreter_is_gone(
    tmp_path: Path, cache_dir: Path, broker_url: str
) -> None:
    # `python -m venv --copies` on <= 3.10: the env's python is a copy, and its
    # sys._base_executable is that copy; the base is pyvenv.cfg's `home`. A home that
    # no longer holds the interpreter (it was upgraded or removed) cannot be used.
    env = venv_of(pyenv_python("3.10"), tmp_path / "env", "--copies")
    cfg = env / "pyvenv.cfg"
    gone = tmp_path / "removed-python" / "bin"
    cfg.write_text(
        "".join(
            f"home = {gone}\n" if line.startswith("home") else f"{line}\n"
            for line in cfg.read_text().splitlines()
        )
    )
    code, out, err = envbisect(
        "--bad", str(env), "--good", str(MINIMAL), "--quiet",
        cache_dir=cache_dir, broker_url=broker_url,
    )  # fmt: skip
    line = one_error_line(code, out, err)
    assert line == (
        f"envbisect: error: {env}: its base interpreter cannot be found: {env}/bin/python "
        f"is a copy (a virtualenv made with --copies) and pyvenv.cfg's home {gone} holds "
        "no python3.10; envbisect creates trial envs from the base interpreter"
    )


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_the_bad_envs_site_hooks_run_only_in_trial_envs(
    installer: str,
    tmp_path: Path,
    cache_dir: Path,
    broker_url: str,
    fixture_wheels: Path,
) -> None:
    # A --copies venv of Python 3.10: the case where the bad env's own python looked like
    # a base interpreter and was handed to uv/virtualenv, whose interpreter queries ran its
    # `site`. prefix-log's .pth hook records every environment whose `site` ran it.
    bad = venv_of(pyenv_python("3.10"), tmp_path / "bad", "--copies")
    subprocess.run(
        [
            find_uv_bin(), "pip", "install", "--quiet", "--python", str(bad / "bin" / "python"),
            "--find-links", str(fixture_wheels), "-r",
            str(ROOT / "fixtures" / "envs" / "site-hook.txt"),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "UV_CACHE_DIR": str(cache_dir / "uv")},
    )  # fmt: skip
    log = tmp_path / "prefixes.log"
    # The hook works: the bad env's own python, run with its site, says so.
    subprocess.run(
        [str(bad / "bin" / "python"), "-c", "pass"], check=True, env={"PREFIX_LOG": str(log)}
    )
    assert log.read_text().split() == [str(bad)]
    log.unlink()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    code, out, err = envbisect(
        "--bad", str(bad), "--good", str(MINIMAL), "--installer", installer,
        "--json", str(tmp_path / "report.json"),
        cache_dir=cache_dir, broker_url=broker_url,
        env={"PREFIX_LOG": str(log), "TMPDIR": str(tmpdir)},
    )  # fmt: skip
    assert code == ExitCode.OK, err
    assert "pika-autotrace" in out
    prefixes = set(log.read_text().split())
    assert str(bad) not in prefixes
    # Not vacuous: the trial envs with prefix-log ran the hook, each in the run's temp dir.
    assert prefixes, "no trial env ran the hook"
    assert all(Path(prefix).is_relative_to(tmpdir) for prefix in prefixes), prefixes
