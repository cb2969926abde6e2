"""Packages patched in place: seen from the files on disk, tried as they are, named as such.

The bad envs here are copies of a fixture env (never the shared env itself) in
which an installed package's file is changed after installation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from uv import find_uv_bin

from envbisect import processes
from envbisect.errors import ExitCode
from envbisect.hashing import FileHashes
from envbisect.installers import installer
from envbisect.sides import SideReader, find_interpreter
from envbisect.venvs import read_distributions, read_venv
from envbisect.wheels import WheelCache
from envbisect.wheelsource import Wheels
from envbisect.workspace import Workspace

from ..test_records import PACKAGE, install
from .test_bad_input import envbisect as run_envbisect
from .test_bad_input import one_error_line
from .test_run import MINIMAL, bisect, culprits

pytestmark = pytest.mark.integration
UV = find_uv_bin()
BREAK_PIKA = "\nraise ImportError('patched in place: this pika is broken')\n"


def patched_copy(env: Path, dest: Path, relative: str, text: str) -> Path:
    """A copy of ``env`` whose installed file ``relative`` (in site-packages) gets ``text``."""
    shutil.copytree(env, dest, symlinks=True)
    target = next((dest / "lib").glob("python3*/site-packages")) / relative
    target.write_text(target.read_text() + text)
    return dest


@pytest.mark.usefixtures("no_debris")
def test_a_package_patched_in_place_is_found_and_named(
    tmp_path: Path,
    cache_dir: Path,
    broker_url: str,
    fixture_env: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The healthy env's worker consumes; with pika patched to fail at import it crashes.
    # The good set resolves to the same pika 1.4.4: it must get the clean release.
    bad = patched_copy(fixture_env("healthy"), tmp_path / "bad", "pika/__init__.py", BREAK_PIKA)
    code, report = bisect(
        tmp_path, cache_dir, broker_url, "--bad", str(bad), "--good", str(MINIMAL)
    )
    assert code == ExitCode.OK, report["summary"]
    (culprit,) = culprits(report)
    assert (culprit["name"], culprit["version"], culprit["change"]) == ("pika", "1.4.4", "modified")
    assert culprit["local_changes"] == [{"path": "pika/__init__.py", "change": "modified"}]
    assert str(culprit["summary"]).startswith("pika 1.4.4, locally modified: pika/__init__.py")
    assert "culprit: pika 1.4.4, locally modified: pika/__init__.py" in capsys.readouterr().out


@pytest.mark.usefixtures("no_debris")
def test_offline_a_patched_package_without_a_clean_copy_is_one_clear_error(
    tmp_path: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    bad = patched_copy(fixture_env("healthy"), tmp_path / "bad", "pika/__init__.py", BREAK_PIKA)
    # A cache dir of its own: uv's cache must not hold a clean pika from an earlier test.
    ran = run_envbisect(
        "--bad",
        str(bad),
        "--good",
        str(MINIMAL),
        "--offline",
        cache_dir=tmp_path / "cache",
        broker_url=broker_url,
    )
    line = one_error_line(ran, ExitCode.ENVIRONMENT)
    assert "pika 1.4.4: locally modified" in line
    assert "--offline" in line


def test_a_clean_and_a_patched_copy_never_share_a_wheel(
    tmp_path: Path, fixture_env: Callable[[str], Path]
) -> None:
    clean_env = fixture_env("healthy")
    patched_env = patched_copy(clean_env, tmp_path / "patched", "pika/__init__.py", "# patch\n")
    cache = WheelCache(tmp_path / "cache")
    # The patched copy first: a clean run after it must not be served the patched wheel.
    patched = cache.repack(read_venv(patched_env).distributions["pika"])
    clean = cache.repack(read_venv(clean_env).distributions["pika"])
    assert patched.path.parent != clean.path.parent, "one cache slot for both copies"
    with zipfile.ZipFile(patched.path) as one, zipfile.ZipFile(clean.path) as other:
        assert one.read("pika/__init__.py").endswith(b"# patch\n")
        assert not other.read("pika/__init__.py").endswith(b"# patch\n")


def test_what_would_land_outside_the_scheme_is_left_out_with_one_warning(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(bad)], check=True)
    with (bad / "pyvenv.cfg").open("a") as config:
        config.write("# the bad env's own\n")
    # A RECORD that claims the env's own files (as a broken installer could write it).
    claimed = {
        f"../../../{name}": (bad / name).read_bytes() for name in ("pyvenv.cfg", "bin/activate")
    }
    install(bad, PACKAGE, listed=claimed)
    backend = installer("uv", tmp_path / "cache", tmp_path / "logs")
    interpreter = find_interpreter(bad, None)
    workspace = Workspace(backend, processes.new_run_token(), python=interpreter.executable)
    said: list[str] = []
    try:
        wheels = Wheels(
            backend, WheelCache(tmp_path / "cache"), workspace, interpreter, said.append
        )
        hashes = FileHashes(tmp_path / "cache" / "file-hashes.sqlite3")
        side = SideReader(backend, wheels, workspace, hashes, said.append).read_bad(bad)
        trial, _ = workspace.build([wheels.wheel_for(side.packages["demo"])], "t")
        assert "the bad env's own" not in (trial.path / "pyvenv.cfg").read_text()
        assert str(bad) not in (trial.path / "bin" / "activate").read_text()
        done = subprocess.run(
            [str(trial.python), "-c", "import demo; print(demo.VALUE)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == "as released"
    finally:
        workspace.close()
    warnings = [line for line in said if "left out" in line]
    assert len(warnings) == 1, said
    assert "demo==1.0" in warnings[0]
    assert "../../../pyvenv.cfg (the env's own configuration)" in warnings[0]
    assert "../../../bin/activate" in warnings[0]


def test_an_editable_of_one_source_tree_compares_equal_whoever_installed_it(
    tmp_path: Path,
) -> None:
    project = tmp_path / "proj"
    (project / "src" / "ops_core").mkdir(parents=True)
    (project / "src" / "ops_core" / "__init__.py").write_text("VALUE = 1\n")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "ops-core"\nversion = "0.1.0"\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["src/ops_core"]\n'
    )
    digests = []
    for tool in ("uv", "pip"):
        env = tmp_path / tool
        subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(env)], check=True)
        python = str(env / "bin" / "python")
        if tool == "uv":
            argv = [UV, "pip", "install", "-q", "--python", python, "-e", str(project)]
        else:
            argv = [
                sys.executable,
                "-m",
                "pip",
                "--python",
                python,
                "install",
                "-q",
                "-e",
                str(project),
            ]
        subprocess.run(argv, check=True)
        dist = read_venv(env).distributions["ops-core"]
        assert dist.editable and dist.local_changes == ()
        digests.append(dist.content_digest)
    assert digests[0] == digests[1]


def test_one_release_has_one_digest_however_it_was_installed(
    tmp_path: Path, fixture_env: Callable[[str], Path]
) -> None:
    # dramatiq carries a plain script (dramatiq-gevent) besides its console script: pip
    # --target records it as ../../bin/…, uv as bin/…, a venv's RECORD as ../../../bin/….
    env = read_venv(fixture_env("healthy")).distributions["dramatiq"]
    pip_target, uv_target = tmp_path / "pip", tmp_path / "uv"
    pin = f"dramatiq=={env.version}"
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "--target", str(pip_target), pin], check=True)
    uv = [UV, "pip", "install", "-q", "--python", sys.executable]
    subprocess.run([*uv, "--no-deps", "--target", str(uv_target), pin], check=True)
    for target in (pip_target, uv_target):
        fetched = read_distributions((target,))["dramatiq"]
        assert (fetched.left_out, fetched.local_changes) == ((), ())
        assert fetched.content_digest == env.content_digest, target
