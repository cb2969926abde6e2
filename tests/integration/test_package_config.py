"""The user's package configuration decides where packages come from, for every step.

A private index (a real PEP 503 index over HTTP on 127.0.0.1, behind Basic auth) holds
``envbisect-private``, which is not on PyPI, and versions of ``tomli`` that PyPI does
not have (PyPI has other tomli versions between them). It is configured only the way a
user would: a config file or an environment variable, for pip or for uv. Resolving the
good set, materialising the bad one, fetching and ``--narrow`` must all use it, with
the run's own installer, and never fall back to PyPI; its password is never printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from envbisect.cli import main
from envbisect.errors import ExitCode
from envbisect.installers import installer
from envbisect.installers.base import InstallerError
from envbisect.narrow import versions_between

from .package_index import LocalIndex, build_wheels

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]

SECRET = "s3cr3t-index-pw"
BROKEN = "raise ImportError('tomli {version} is broken')\n"
# tomli from 2.0.77 on fails to import; PyPI's tomli has none of these versions.
TOMLI = ["1.0.77", "1.1.77", "1.2.77", "2.0.77", "2.1.77"]


@pytest.fixture(scope="module")
def private_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    root = tmp_path_factory.mktemp("index")
    projects = {
        ("tomli", v): BROKEN.format(version=v) if v >= "2" else f"VERSION = {v!r}\n" for v in TOMLI
    }
    projects |= {("envbisect-private", v): f"VERSION = {v!r}\n" for v in ("1.0", "1.1")}
    index = LocalIndex(root, credentials=("envbisect", SECRET))
    index.publish(build_wheels(root / "build", projects))
    with index.serving():
        yield index


def configure(mode: str, index: LocalIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the user's pip or uv configuration at the index; the installer to use."""
    config = tmp_path / "config"  # XDG_CONFIG_HOME: nothing of the machine's own configs
    config.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    url = index.url()
    if mode == "uv-config-file":
        # An extra index, searched before PyPI: uv takes a name from the first index that
        # has it, so tomli must come from here alone.
        (config / "uv").mkdir()
        (config / "uv" / "uv.toml").write_text(f'[[index]]\nname = "private"\nurl = "{url}"\n')
    elif mode == "uv-env":
        monkeypatch.setenv("UV_INDEX_URL", url)
    elif mode == "pip-config-file":
        (tmp_path / "pip.conf").write_text(f"[global]\nindex-url = {url}\n")
        monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "pip.conf"))
    else:
        monkeypatch.setenv("PIP_INDEX_URL", url)
    return mode.split("-", 1)[0]


@pytest.mark.parametrize("mode", ["uv-config-file", "uv-env", "pip-config-file", "pip-env"])
def test_the_users_index_serves_every_step(
    mode: str,
    private_index: LocalIndex,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kind = configure(mode, private_index, tmp_path, monkeypatch)
    bad = tmp_path / "bad.txt"  # frozen: materialised from the index
    bad.write_text("tomli==2.1.77\nenvbisect-private==1.1\n")
    good = tmp_path / "good.txt"  # resolved, then fetched from the index
    good.write_text("tomli==1.0.77\nenvbisect-private==1.0\n")
    report, markdown = tmp_path / "report.json", tmp_path / "report.md"
    before = private_index.authorized
    code = main(
        [
            "run",
            "--bad",
            str(bad),
            "--good",
            str(good),
            "--installer",
            kind,
            "--probe",
            "import:tomli,envbisect_private",
            "--narrow",
            "--cache-dir",
            str(tmp_path / "cache"),  # nothing from an earlier test's uv or pip cache
            "--no-cache",
            "--json",
            str(report),
            "--markdown",
            str(markdown),
        ]
    )
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    data = json.loads(report.read_text())
    (culprit,) = data["culprits"]
    assert culprit["name"] == "tomli"
    narrowed = culprit["narrowed"]
    assert narrowed["versions"] == TOMLI, "the private index's releases, none of PyPI's"
    assert (narrowed["last_good"], narrowed["first_bad"]) == ("1.2.77", "2.0.77")
    assert private_index.authorized > before, "the index was asked, with the credentials"
    for text in (out, err, report.read_text(), markdown.read_text()):
        assert SECRET not in text


@pytest.mark.parametrize("kind", ["uv", "pip"])
def test_releases_are_listed_by_the_runs_installer(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # PyPI alone
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in ("1.0.0", "1.1.0", "1.2.0rc1", "1.2.0"):
        (wheels / f"envbisect_line_fixture-{version}-py3-none-any.whl").touch()
    python = Path(getattr(sys, "_base_executable", sys.executable))
    online = installer(kind, tmp_path / "cache", tmp_path / "logs", [wheels])
    scratch = tmp_path / "scratch"
    local = online.releases("envbisect-line-fixture", python, ("1.0.0", "1.2.0"), scratch)
    assert {"1.0.0", "1.1.0", "1.2.0"} <= set(local) <= {"1.0.0", "1.1.0", "1.2.0", "1.2.0rc1"}
    assert versions_between(local, "1.2.0", "1.0.0") == ["1.2.0", "1.1.0", "1.0.0"]
    pika = online.releases("pika", python, ("0.13.1", "1.4.4"), scratch)
    assert {"1.0.0", "0.13.1", "1.4.4", "1.4.2"} <= set(pika)
    assert "1.4.3" not in pika, "yanked"
    assert versions_between(pika, "1.4.4", "1.3.1")[1:-1] == ["1.4.2", "1.4.1", "1.4.0", "1.3.2"]
    # --offline: the find-links dirs only, never the index.
    offline = installer(kind, tmp_path / "cache", tmp_path / "logs", [wheels], offline=True)
    with pytest.raises(InstallerError):
        offline.releases("pika", python, ("0.13.1", "1.4.4"), scratch)
    here = offline.releases("envbisect-line-fixture", python, ("1.0.0", "1.2.0"), scratch)
    assert sorted(here) == sorted(local)
