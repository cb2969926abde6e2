"""Installer commands: bounded in time, leave no logs, and say in one line what failed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envbisect.errors import TimeLimitError
from envbisect.installers.base import InstallerError, summary
from envbisect.installers.uv import UvInstaller
from envbisect.isolation import isolated_environ


def test_max_time_stops_an_installer_command(tmp_path: Path) -> None:
    uv = UvInstaller(tmp_path / "cache", tmp_path / "logs")
    uv.deadline = time.monotonic() + 0.5
    started = time.monotonic()
    with pytest.raises(TimeLimitError, match="--max-time reached while hanging"):
        uv._run("hanging", ["sleep", "600"])
    assert time.monotonic() - started < 60  # stopped, not waited for
    uv.deadline = time.monotonic() - 1
    with pytest.raises(TimeLimitError, match="--max-time reached before"):
        uv._run("never started", ["sleep", "600"])


def test_installer_logs_do_not_pile_up(tmp_path: Path) -> None:
    uv = UvInstaller(tmp_path / "cache", tmp_path / "logs")
    assert uv._run("saying hi", ["echo", "hi"]).strip() == "hi"
    with pytest.raises(InstallerError, match=r"^failing failed: it broke$"):
        uv._run("failing", ["sh", "-c", "echo 'error: it broke' >&2; exit 2"])
    assert list((tmp_path / "logs").iterdir()) == []


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            "error: No solution found when resolving dependencies\n"
            "  cause: Because there is no version of pika==9.9.9 and you require\n"
            "         pika==9.9.9, we can conclude that your requirements are unsatisfiable.\n"
            "\nhint: Packages were unavailable because index lookups were disabled\n",
            "Because there is no version of pika==9.9.9 and you require pika==9.9.9, "
            "we can conclude that your requirements are unsatisfiable.",
        ),
        (
            "  \u00d7 No solution found when resolving dependencies:\n"
            "  \u2570\u2500\u25b6 Because nosuchpkg was not found in the package registry\n",
            "Because nosuchpkg was not found in the package registry",
        ),
        ("ERROR: Could not find a version that satisfies the requirement zz\n", "Could not find"),
        ("error: Failed to install: No space left on device (os error 28)\n", "no space left"),
        ("", "no output"),
    ],
    ids=["uv", "old-uv", "pip", "disk-full", "silent"],
)
def test_summary_says_why(output: str, expected: str) -> None:
    assert summary(output).startswith(expected)


def test_the_dropped_variables_are_dropped_and_the_rest_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("PYTHONPATH", "UV_CONSTRAINT", "PIP_TARGET", "VIRTUALENV_SEEDER", "CONDA_PREFIX"):
        monkeypatch.setenv(key, "x")
    for key in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_CONFIG_FILE", "SSL_CERT_FILE", "HOME"):
        monkeypatch.setenv(key, "kept")
    env = isolated_environ()
    assert not {"PYTHONPATH", "UV_CONSTRAINT", "PIP_TARGET", "VIRTUALENV_SEEDER"} & set(env)
    assert "CONDA_PREFIX" not in env
    assert all(env[key] == "kept" for key in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_CONFIG_FILE"))


#: Root may write anywhere: drop the capabilities that let it, so read-only dirs stop it
#: as they stop any user (and the clean-up's error path is taken).
AS_A_USER = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    if os.geteuid() == 0
    else []
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def remove_as_a_user(path: Path) -> subprocess.CompletedProcess[str]:
    """``envs.remove_tree(path)`` in a process that read-only dirs stop."""
    script = (
        "import sys; from pathlib import Path; from envbisect.removal import remove_tree; "
        "remove_tree(Path(sys.argv[1]))"
    )
    return subprocess.run(
        [*AS_A_USER, sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_removal_never_follows_a_link_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target_file, target_dir = outside / "notes.txt", outside / "shared"
    target_file.write_text("mine")
    target_dir.mkdir()
    (target_dir / "keep.txt").write_text("mine")
    target_file.chmod(0o444)
    target_dir.chmod(0o555)
    outside.chmod(0o555)
    workspace = tmp_path / "workspace"
    env = workspace / "001-t01" / "env"
    links = env / "links"
    links.mkdir(parents=True)
    (links / "to-file").symlink_to(target_file)
    (links / "to-dir").symlink_to(target_dir)
    (links / "to-outside").symlink_to(outside)
    # A package may leave read-only directories behind.
    for directory in (links, env):
        directory.chmod(0o555)
    before = {path: mode(path) for path in (outside, target_file, target_dir)}
    try:
        done = remove_as_a_user(workspace)
        assert {path: mode(path) for path in before} == before, done.stderr
        assert done.returncode == 0, done.stderr
        assert not workspace.exists()
        assert sorted(p.name for p in outside.rglob("*")) == ["keep.txt", "notes.txt", "shared"]
    finally:
        outside.chmod(0o755)
        target_dir.chmod(0o755)


def test_removal_gets_into_unreadable_and_read_only_dirs(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    locked = workspace / "001-t01" / "env" / "locked"
    (locked / "deeper").mkdir(parents=True)
    (locked / "deeper" / "f").write_text("x")
    (locked / "deeper" / "f").chmod(0o444)
    (locked / "deeper").chmod(0o000)
    locked.chmod(0o000)
    done = remove_as_a_user(workspace)
    assert done.returncode == 0, done.stderr
    assert not workspace.exists()
