"""Reading requirement files and virtualenvs: real files, real interpreters."""

from __future__ import annotations

import sys
import venv
from pathlib import Path

import pytest

from envbisect.errors import InputError
from envbisect.requirements import read_requirement_file
from envbisect.venvs import read_venv


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_pinned_and_unpinned_lines_with_includes_and_hashes(tmp_path: Path) -> None:
    write(tmp_path / "base.txt", "pika==1.4.4 --hash=sha256:abcd\n")
    req = write(
        tmp_path / "req.txt",
        "-r base.txt\n# a comment\ndramatiq[rabbitmq]>=1.17 ; python_version >= '3.9'\n",
    )
    parsed = read_requirement_file(req)
    assert [line.name for line in parsed.lines] == ["pika", "dramatiq"]
    pika, dramatiq = parsed.lines
    assert pika.pinned_version == "1.4.4"
    assert pika.hashes == ("sha256:abcd",)
    assert dramatiq.pinned_version is None
    assert dramatiq.requirement is not None and dramatiq.requirement.extras == {"rabbitmq"}
    assert not parsed.pinned


def test_direct_references_are_kept_as_an_installer_takes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for project in ("ops-core", "local"):
        write(tmp_path / project / "pyproject.toml", "")
    req = write(
        tmp_path / "good.txt",
        "-e ./ops-core\n"
        "./local\n"
        "ops-core @ https://example.invalid/ops_core-0.3.0-py3-none-any.whl\n"
        "-e git+https://example.invalid/ops-core.git@v1#egg=ops-core\n"
        "pika>=1\n",
    )
    assert [line.direct_reference for line in read_requirement_file(req).lines] == [
        "-e ./ops-core",  # relative: what pip and uv make of it, from the working directory
        (tmp_path / "local").as_uri(),
        "ops-core @ https://example.invalid/ops_core-0.3.0-py3-none-any.whl",
        "-e git+https://example.invalid/ops-core.git@v1#egg=ops-core",
        None,
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "pika==1.4.4\nthis is not a requirement\n",
            "(line 2): Invalid requirement: 'this is not a requirement': Expected semicolon",
        ),
        ("pika==1.4.4\n\n--no-such-option\n", "(line 3): Invalid requirement: --no-such-option; "),
        ("pika==1.4.4\n\xff\n", "(line 2): not text (utf-8 cannot decode byte 0xff"),
    ],
)
def test_garbled_requirement_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    req = tmp_path / "req.txt"
    req.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError) as caught:
        read_requirement_file(req)
    assert str(caught.value).startswith(f"{req} {message}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_requirement_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(InputError, match="no requirements"):
        read_requirement_file(write(tmp_path / "req.txt", text))


def test_missing_paths_and_directories(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_requirement_file(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="not a virtualenv"):
        read_venv(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        read_venv(tmp_path / "nope")


def test_reads_a_live_venv_without_running_its_site(tmp_path: Path) -> None:
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    site = next((env / "lib").glob("python3*/site-packages"))
    # A .pth hook that would break anything that ran it: reading must not.
    (site / "boom.pth").write_text("import os; os._exit(99)\n")
    info = site / "demo_pkg-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: Demo_Pkg\nVersion: 1.2.3\nRequires-Dist: pika>=1.0\n"
    )
    (info / "RECORD").write_text("demo_pkg-1.2.3.dist-info/METADATA,,\n")
    read = read_venv(env)
    assert read.interpreter.version.startswith(f"{sys.version_info.major}.")
    assert read.interpreter.markers["sys_platform"] == sys.platform
    dist = read.distributions["demo-pkg"]
    assert (dist.display_name, dist.version, dist.requires) == ("Demo_Pkg", "1.2.3", ("pika>=1.0",))
    assert read.site_packages == (site,)


def test_venv_whose_interpreter_is_gone(tmp_path: Path) -> None:
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    (env / "bin" / "python").unlink()
    with pytest.raises(InputError, match="interpreter is gone"):
        read_venv(env)


def test_what_pip_asserts_on_is_an_input_error(tmp_path: Path) -> None:
    # Found by the fuzzer: pip's url_to_path asserts on a NUL before `file:`.
    with pytest.raises(InputError, match=r"req\.txt"):
        read_requirement_file(write(tmp_path / "req.txt", "\x00file:"))
