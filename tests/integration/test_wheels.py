"""Repacking installed distributions: what comes back out is what was installed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from uv import find_uv_bin

from envbisect.records import INSTALLER_FILES
from envbisect.venvs import read_venv
from envbisect.wheels import WheelCache

pytestmark = pytest.mark.integration
UV = find_uv_bin()


def installed_files(env: Path, name: str) -> dict[str, bytes]:
    """The files of one distribution (per its RECORD), minus bytecode and installer files."""
    dist = read_venv(env).distributions[name]
    assert dist.dist_info is not None
    files = {}
    for line in (dist.dist_info / "RECORD").read_text().splitlines():
        path = line.split(",")[0]
        if path.endswith(".pyc") or path.startswith("../") or "__pycache__" in path:
            continue
        if path.rsplit("/", 1)[-1] in INSTALLER_FILES:
            continue
        files[path] = (dist.site_packages / path).read_bytes()
    return files


def reinstall(tmp_path: Path, python: str, wheel: Path) -> Path:
    env = tmp_path / "again"
    subprocess.run([UV, "venv", "-q", "--python", python, str(env)], check=True)
    subprocess.run(
        [
            UV,
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--python",
            str(env / "bin" / "python"),
            str(wheel),
        ],
        check=True,
    )
    return env


def test_repacked_wheel_installs_the_same_files(
    tmp_path: Path, fixture_env: Callable[[str], Path]
) -> None:
    env = fixture_env("stall")
    read = read_venv(env)
    cache = WheelCache(tmp_path / "cache")
    for name in ("telemetry-shim", "dramatiq"):
        wheel = cache.repack(read.distributions[name])
        again = reinstall(tmp_path / name, str(read.interpreter.executable), wheel.path)
        assert installed_files(again, name) == installed_files(env, name)
        # The .pth start-up hook and the console script come back too.
        if name == "telemetry-shim":
            assert (
                next((again / "lib").glob("python3*/site-packages")) / "telemetry_shim.pth"
            ).is_file()
        if name == "dramatiq":
            assert (again / "bin" / "dramatiq").is_file()
    assert cache.repack(read.distributions["dramatiq"]).path.stat().st_mtime_ns == (
        wheel.path.stat().st_mtime_ns
    ), "a second repack is served from the cache"


def test_editable_install_is_repacked_as_installed(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "src" / "ops_core").mkdir(parents=True)
    (project / "src" / "ops_core" / "__init__.py").write_text("VALUE = 'live source'\n")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "ops-core"\nversion = "0.1.0"\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["src/ops_core"]\n'
    )
    env = tmp_path / "env"
    subprocess.run([UV, "venv", "-q", str(env)], check=True)
    subprocess.run(
        [UV, "pip", "install", "-q", "--python", str(env / "bin" / "python"), "-e", str(project)],
        check=True,
    )
    read = read_venv(env)
    dist = read.distributions["ops-core"]
    assert dist.editable
    wheel = WheelCache(tmp_path / "cache").repack(dist)
    again = reinstall(tmp_path, str(read.interpreter.executable), wheel.path)
    (project / "src" / "ops_core" / "__init__.py").write_text("VALUE = 'edited later'\n")
    out = subprocess.run(
        [str(again / "bin" / "python"), "-c", "import ops_core; print(ops_core.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "edited later", "the repacked editable still points at the source"
