"""Reading uv.lock and pylock.toml for one target interpreter: real files, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from envbisect.errors import InputError
from envbisect.locks import InputKind, Lock, input_kind, read_lock
from envbisect.requirements import read_requirement_file

from .conftest import ROOT

LOCKS = ROOT / "fixtures" / "locks"
LINUX_311 = {
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_version": "",
    "implementation_version": "3.11.7",
}
WINDOWS_312 = {
    **LINUX_311,
    "python_version": "3.12",
    "python_full_version": "3.12.1",
    "sys_platform": "win32",
    "platform_system": "Windows",
    "os_name": "nt",
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pins(lock: Lock) -> dict[str, str]:
    return {package.name: package.version for package in lock.packages}


def test_kind_by_name_then_by_content(tmp_path: Path) -> None:
    assert input_kind(Path("x/uv.lock")) is InputKind.UV_LOCK
    assert input_kind(Path("pylock.toml")) is InputKind.PYLOCK
    assert input_kind(Path("pylock.dev.toml")) is InputKind.PYLOCK
    assert input_kind(Path("requirements.txt")) is InputKind.REQUIREMENTS
    # As CI writes them: `git show main:uv.lock > base.lock`.
    uv = write(tmp_path / "base.lock", (LOCKS / "uv" / "baseline" / "uv.lock").read_text())
    assert input_kind(uv) is InputKind.UV_LOCK
    pylock = write(tmp_path / "base.toml", 'lock-version = "1.0"\n[[packages]]\nname = "a"\n')
    assert input_kind(pylock) is InputKind.PYLOCK
    assert input_kind(write(tmp_path / "odd.toml", "pika==1.4.4\n")) is InputKind.REQUIREMENTS


@pytest.mark.parametrize(
    "path", ["uv/candidate/uv.lock", "pylock/pylock.candidate.toml"], ids=["uv.lock", "pylock"]
)
def test_fixture_locks_evaluate_markers_for_the_target(path: str) -> None:
    lock_path = LOCKS / path
    kind = input_kind(lock_path)
    linux = read_lock(lock_path, kind, LINUX_311)
    assert pins(linux)["pika"] == "0.12.0"
    assert pins(linux)["dramatiq"] == "2.2.1"
    assert "pywin32-ctypes" not in pins(linux)
    assert all(len(package.hashes) == 2 for package in linux.packages)  # sdist + wheel
    windows = read_lock(lock_path, kind, WINDOWS_312)
    assert pins(windows)["pywin32-ctypes"] == "0.2.3"


def test_uv_lock_leaves_the_project_out_and_follows_extras() -> None:
    lock = read_lock(LOCKS / "uv" / "baseline" / "uv.lock", InputKind.UV_LOCK, LINUX_311)
    assert lock.left_out == ("worker (virtual, the project itself)",)
    assert lock.extras == {"dramatiq": frozenset({"rabbitmq"})}
    assert pins(lock)["pika"] == "1.4.4"  # reached through dramatiq[rabbitmq] as well


def test_materialised_requirements_are_pip_readable_with_hashes(tmp_path: Path) -> None:
    lock = read_lock(LOCKS / "pylock" / "pylock.baseline.toml", InputKind.PYLOCK, LINUX_311)
    parsed = read_requirement_file(write(tmp_path / "req.txt", lock.requirements()))
    assert {line.name: line.pinned_version for line in parsed.lines} == pins(lock)
    assert all(line.hashes for line in parsed.lines)


UV_LOCK = """\
version = 1
revision = 3
requires-python = ">=3.10"
resolution-markers = ["python_full_version >= '3.12'", "python_full_version < '3.12'"]

[[package]]
name = "app"
version = "0.1.0"
source = { editable = "." }
dependencies = [
    { name = "colorama", marker = "sys_platform == 'win32'" },
    { name = "numpy", version = "1.26.4", source = { registry = "https://pypi.org/simple" }, \
marker = "python_full_version < '3.12'" },
    { name = "numpy", version = "2.1.0", source = { registry = "https://pypi.org/simple" }, \
marker = "python_full_version >= '3.12'" },
    { name = "client", extra = ["fast"] },
    { name = "tool" },
]

[package.dev-dependencies]
dev = [{ name = "pytest-ish" }]
docs = [{ name = "sphinx-ish" }]

[[package]]
name = "client"
version = "2.0"
source = { registry = "https://mirror.example/simple" }
sdist = { url = "https://mirror.example/client-2.0.tar.gz", hash = "sha256:aa" }
dependencies = [{ name = "tomli", marker = "python_full_version < '3.11'" }]

[package.optional-dependencies]
fast = [{ name = "speedups" }]
slow = [{ name = "never" }]

[[package]]
name = "colorama"
version = "0.4.6"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "numpy"
version = "1.26.4"
source = { registry = "https://pypi.org/simple" }
resolution-markers = ["python_full_version < '3.12'"]

[[package]]
name = "numpy"
version = "2.1.0"
source = { registry = "https://pypi.org/simple" }
resolution-markers = ["python_full_version >= '3.12'"]

[[package]]
name = "speedups"
version = "1.0"
source = { git = "https://github.com/org/speedups?rev=main#0123abcd" }

[[package]]
name = "tool"
version = "3.1"
source = { directory = "../tool" }

[[package]]
name = "pytest-ish"
version = "8.0"
source = { url = "https://example.org/pytest_ish-8.0-py3-none-any.whl" }

[[package]]
name = "sphinx-ish"
version = "7.0"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "tomli"
version = "2.0.1"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "never"
version = "1.0"
source = { registry = "https://pypi.org/simple" }
"""


def test_uv_lock_graph_markers_forks_extras_groups_and_sources(tmp_path: Path) -> None:
    path = write(tmp_path / "proj" / "uv.lock", UV_LOCK)
    lock = read_lock(path, InputKind.UV_LOCK, LINUX_311)
    assert pins(lock) == {
        "client": "2.0",
        "numpy": "1.26.4",
        "pytest-ish": "8.0",
        "speedups": "1.0",
        "tool": "3.1",
    }
    assert pins(read_lock(path, InputKind.UV_LOCK, WINDOWS_312))["numpy"] == "2.1.0"
    requirement = {package.name: package.requirement for package in lock.packages}
    assert requirement["speedups"] == "speedups @ git+https://github.com/org/speedups@0123abcd"
    assert requirement["tool"] == f"tool @ {(tmp_path / 'tool').as_uri()}"
    assert requirement["pytest-ish"].startswith("pytest-ish @ https://example.org/")
    assert lock.index_urls == ("https://mirror.example/simple",)
    assert lock.left_out == ("app (editable, the project itself)",)
    assert lock.extras == {"client": frozenset({"fast"})}
    # Not every package has hashes: none are written, or pip would refuse the rest.
    assert "--hash" not in lock.requirements()
    assert "--extra-index-url https://mirror.example/simple" in lock.requirements()


PYLOCK = """\
lock-version = "1.0"
requires-python = ">=3.10"
default-groups = ["dev"]
created-by = "hand"

[[packages]]
name = "attrs"
version = "25.1.0"
wheels = [{ url = "https://files/attrs-25.1.0-py3-none-any.whl", hashes = { sha256 = "ab" } }]

[[packages]]
name = "numpy"
version = "1.26.4"
marker = "python_version < '3.12'"
sdist = { url = "https://files/numpy-1.26.4.tar.gz", hashes = { sha256 = "cd" } }

[[packages]]
name = "numpy"
version = "2.1.0"
marker = "python_version >= '3.12'"
sdist = { url = "https://files/numpy-2.1.0.tar.gz", hashes = { sha256 = "ef" } }

[[packages]]
name = "pytest"
version = "8.3.0"
marker = "'dev' in dependency_groups"
wheels = [{ url = "https://files/pytest-8.3.0-py3-none-any.whl", hashes = { sha256 = "01" } }]

[[packages]]
name = "sphinx"
version = "8.0.0"
marker = "'docs' in dependency_groups"
wheels = [{ url = "https://files/sphinx-8.0.0-py3-none-any.whl", hashes = { sha256 = "02" } }]

[[packages]]
name = "newer-only"
version = "1.0"
requires-python = ">=3.12"
wheels = [{ url = "https://files/newer_only-1.0-py3-none-any.whl", hashes = { sha256 = "03" } }]
"""


def test_pylock_markers_groups_and_requires_python(tmp_path: Path) -> None:
    path = write(tmp_path / "pylock.toml", PYLOCK)
    linux = read_lock(path, InputKind.PYLOCK, LINUX_311)
    assert pins(linux) == {"attrs": "25.1.0", "numpy": "1.26.4", "pytest": "8.3.0"}
    windows = read_lock(path, InputKind.PYLOCK, WINDOWS_312)
    assert pins(windows)["numpy"] == "2.1.0"
    assert pins(windows)["newer-only"] == "1.0"
    assert "--hash=sha256:cd" in linux.requirements()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("uv.lock", 'version = 1\n[[package]\nname = "x"\n', r"not valid TOML.*line 2"),
        ("uv.lock", "version = 2\n", "uv.lock version 2 is not supported"),
        ("uv.lock", 'version = 1\nrequires-python = ">=3.13"\n', "requires Python >=3.13"),
        ("uv.lock", "version = 1\npackage = []\n", "no project and no requirements"),
        ("pylock.toml", 'lock-version = "2.0"\n', "lock-version '2.0' is not supported"),
        (
            "pylock.toml",
            'lock-version = "1.0"\n[[packages]]\nname = "a"\nversion = "1"\nmarker = "nonsense"\n',
            r"package 'a' \(entry 1\): marker 'nonsense'",
        ),
        (
            "pylock.toml",
            'lock-version = "1.0"\n[[packages]]\nname = "a"\nversion = "1"\n',
            "no source",
        ),
        (
            "pylock.toml",
            'lock-version = "1.0"\n'
            + '[[packages]]\nname = "a"\nversion = "1"\nsdist = { url = "u" }\n' * 2,
            "a second entry applies",
        ),
        ("pylock.toml", 'lock-version = "1.0"\n', "installs no packages on Python 3.11.7"),
    ],
)
def test_bad_locks_get_one_clean_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(InputError, match=message) as caught:
        read_lock(path, input_kind(path), LINUX_311)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (  # urllib cannot split it: an unclosed IPv6 bracket
            InputKind.UV_LOCK,
            'version = 1\n[[package]]\nname = "svc"\nversion = "0.1"\nsource = { editable = "." }\n'
            'dependencies = [{ name = "tool" }]\n[[package]]\nname = "tool"\nversion = "1.0"\n'
            'source = { git = "https://[broken.invalid/tool?rev=main#0123abc" }\n',
        ),
        (  # a path with a NUL byte
            InputKind.PYLOCK,
            'lock-version = "1.0"\n[[packages]]\nname = "local"\n'
            'directory = { path = "src/\\u0000local" }\n',
        ),
    ],
)
def test_a_source_urllib_or_the_os_rejects_is_an_input_error(
    tmp_path: Path, kind: InputKind, text: str
) -> None:
    name = "uv.lock" if kind is InputKind.UV_LOCK else "pylock.toml"
    path = write(tmp_path / name, text)
    with pytest.raises(InputError, match="not a valid"):
        read_lock(path, kind, LINUX_311)
