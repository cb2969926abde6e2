"""Narrowing through releases that pin a companion exactly (a wrapper and its core).

The fixture pair (fixtures/packages/lockstep-*) has releases 1.0 to 1.3, each
wrapper pinning its core at the same version; the wrapper stops importing in 1.2.
Offline: every release comes from the fixture wheels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from envbisect.cli import main
from envbisect.errors import ExitCode

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]


def test_a_wrapper_release_is_tried_with_the_core_it_pins(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path], fixture_wheels: Path
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("lockstep-wrapper==1.0\nlockstep-core==1.0\n")
    report = tmp_path / "report.json"
    code = main(
        [
            "run",
            "--bad",
            str(fixture_env("lockstep")),
            "--good",
            str(good),
            "--probe",
            "import:lockstep_wrapper",
            "--narrow",
            "--offline",
            "--find-links",
            str(fixture_wheels),
            "--cache-dir",
            str(cache_dir),
            "--no-cache",
            "--json",
            str(report),
        ]
    )
    assert code == ExitCode.OK
    data = json.loads(report.read_text())
    (culprit,) = data["culprits"]
    narrowed = culprit["narrowed"]
    assert narrowed["package"] == "lockstep-wrapper"
    assert (narrowed["last_good"], narrowed["first_bad"]) == ("1.1", "1.2")
    assert narrowed["untestable"] == []
    tested = {t["version"]: t for t in narrowed["tested"]}
    assert tested["1.1"]["outcome"] == "pass"
    assert tested["1.1"]["companions"] == ["lockstep-core 1.1"]
    assert tested["1.2"]["companions"] == ["lockstep-core 1.2"]
    assert narrowed["summary"].startswith(
        "first bad lockstep-wrapper version: 1.2 (with lockstep-core 1.2) (last good 1.1;"
    )
