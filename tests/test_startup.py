"""What a distribution runs at interpreter start-up: from file texts (pure) and real wheels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from envbisect.startup import HookKind, StartupHook, hooks_in_files, startup_hooks


def test_pth_lines_that_run_code() -> None:
    hooks = hooks_in_files(
        {
            "metrics_bootstrap.pth": (
                "# comment\n"
                "\n"
                "/some/extra/path\n"
                "import metrics_bootstrap._boot\n"
                "import\tsys; exec('print(1)')\n"
                "  import not_at_line_start\n"
            ),
            "pkg/nested.pth": "import never_read\n",  # not at the top of site-packages
            "pkg/__init__.py": "import os\n",
        }
    )
    assert hooks == (
        StartupHook("metrics_bootstrap.pth", "import metrics_bootstrap._boot", 4, HookKind.PTH),
        StartupHook("metrics_bootstrap.pth", "import\tsys; exec('print(1)')", 5, HookKind.PTH),
    )
    assert hooks[0].describe() == "metrics_bootstrap.pth: import metrics_bootstrap._boot"


def test_namespace_package_pth_and_customize_modules() -> None:
    nspkg = "import sys, types, os;has_mfs = sys.version_info > (3, 5)"
    hooks = hooks_in_files(
        {
            "zope.interface-6.0-py3.12-nspkg.pth": nspkg + "\n",
            "sitecustomize.py": '"""Patch things."""\n\nimport patcher\npatcher.go()\n',
            "usercustomize/__init__.py": "# nothing but a comment\nimport os\n",
            "bom.pth": "\ufeffimport bom_hook\n",
        }
    )
    assert hooks == (
        StartupHook("bom.pth", "import bom_hook", 1, HookKind.PTH),
        StartupHook("sitecustomize.py", '"""Patch things."""', 1, HookKind.SITECUSTOMIZE),
        StartupHook("usercustomize/__init__.py", "import os", 2, HookKind.USERCUSTOMIZE),
        StartupHook("zope.interface-6.0-py3.12-nspkg.pth", nspkg, 1, HookKind.NSPKG_PTH),
    )


def test_no_hooks() -> None:
    assert hooks_in_files({"pkg/__init__.py": "import os\n", "paths.pth": "/opt/lib\n"}) == ()


@pytest.mark.parametrize(
    ("name", "file", "line"),
    [
        ("telemetry_shim", "telemetry_shim.pth", "import telemetry_shim._autopatch"),
        ("metrics_agent", "metrics_agent.pth", "import metrics_agent._autostart"),
        ("amqp_retry_policy", "amqp_retry_policy.pth", "import amqp_retry_policy._hook"),
    ],
)
def test_hooks_of_the_fixture_wheels(name: str, file: str, line: str, fixture_wheels: Path) -> None:
    (wheel,) = fixture_wheels.glob(f"{name}-*.whl")
    assert startup_hooks(wheel) == (StartupHook(file, line, 1, HookKind.PTH),)


def test_a_wheel_without_hooks(fixture_wheels: Path) -> None:
    (wheel,) = fixture_wheels.glob("perfsuite-*.whl")
    assert startup_hooks(wheel) == ()


def test_hooks_in_a_wheels_data_directory(tmp_path: Path) -> None:
    # purelib/platlib under .data land at the top of site-packages too
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo/__init__.py", "")
        archive.writestr("demo-1.0.data/purelib/demo.pth", "import demo.hook\n")
        archive.writestr("demo-1.0.data/platlib/sitecustomize.py", "import demo\n")
        archive.writestr("demo-1.0.data/scripts/demo.pth", "import not_in_site_packages\n")
        archive.writestr("demo-1.0.dist-info/RECORD", "")
    assert startup_hooks(wheel) == (
        StartupHook("demo.pth", "import demo.hook", 1, HookKind.PTH),
        StartupHook("sitecustomize.py", "import demo", 1, HookKind.SITECUSTOMIZE),
    )


def test_a_wheel_that_cannot_be_read(tmp_path: Path) -> None:
    broken = tmp_path / "broken-1.0-py3-none-any.whl"
    broken.write_text("not a zip")
    assert startup_hooks(broken) == ()
