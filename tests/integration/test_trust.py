"""Never a confident wrong answer: what a cached, reused or concurrent result may decide.

Real runs (in-process ``main``) on tiny sides built here: ``trust-base`` imports
``trust-newsyntax`` when it is installed, and ``trust-newsyntax`` uses Python 3.12
syntax, so the same wheels pass on 3.12 and fail on 3.11.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from uv import find_uv_bin

from envbisect.cli import main
from envbisect.errors import ExitCode

from ..conftest import ROOT

MINIMAL = ROOT / "fixtures" / "minimal.txt"
PYTHON_312 = sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
OWN_PYTHON = str(Path(getattr(sys, "_base_executable", sys.executable)))

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]


def _package(root: Path, name: str, code: str) -> Path:
    module = name.replace("-", "_")
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(textwrap.dedent(code))
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "1.0"\n'
    )
    return root


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(good, bad) pinned requirement files over two wheels built here."""
    root = tmp_path_factory.mktemp("trust")
    wheels = root / "wheels"
    base = _package(
        root / "base",
        "trust-base",
        """
        try:
            import trust_newsyntax  # noqa: F401
        except ImportError:
            pass
        """,
    )
    newsyntax = _package(root / "newsyntax", "trust-newsyntax", "type Alias = int\n")
    for package in (base, newsyntax):
        subprocess.run(
            [find_uv_bin(), "build", "-q", "--wheel", "--out-dir", str(wheels), str(package)],
            check=True,
        )
    good = root / "good.txt"
    good.write_text(f"--find-links {wheels}\ntrust-base==1.0\n")
    bad = root / "bad.txt"
    bad.write_text(f"--find-links {wheels}\ntrust-base==1.0\ntrust-newsyntax==1.0\n")
    return good, bad


def envbisect(
    *args: str, cache_dir: Path, report: Path, outcomes: Path | None = None
) -> tuple[int, dict[str, Any]]:
    cache = ["--outcome-cache", str(outcomes)] if outcomes else ["--no-cache"]
    code = main([*args, "--cache-dir", str(cache_dir), *cache, "--json", str(report)])
    return code, json.loads(report.read_text())


@pytest.mark.skipif(not PYTHON_312, reason="needs a Python 3.12 (pyenv)")
def test_an_outcome_cached_on_one_interpreter_never_decides_another(
    sides: tuple[Path, Path], cache_dir: Path, tmp_path: Path
) -> None:
    good, bad = sides
    outcomes = tmp_path / "outcomes"
    common = ["run", "--bad", str(bad), "--good", str(good), "--probe", "import:trust_base"]
    on_312 = [*common, "--python", str(PYTHON_312[-1])]
    code, report = envbisect(
        *on_312, cache_dir=cache_dir, report=tmp_path / "312.json", outcomes=outcomes
    )
    assert code == ExitCode.BAD_PASSES, report  # the new syntax is fine on 3.12
    assert list(outcomes.glob("*.json")), "the 3.12 outcomes were cached"
    # The same wheels on 3.11: the bad set fails there, whatever 3.12 said.
    on_311 = [*common, "--python", OWN_PYTHON]
    code, report = envbisect(
        *on_311, cache_dir=cache_dir, report=tmp_path / "311.json", outcomes=outcomes
    )
    assert code == ExitCode.OK, report
    assert [c["name"] for c in report["culprits"]] == ["trust-newsyntax"]
    assert not any(t["cached"] for t in report["trials"])


def test_gate_probes_the_candidate_even_when_the_cache_says_it_passes(
    sides: tuple[Path, Path], cache_dir: Path, tmp_path: Path
) -> None:
    good, bad = sides
    outcomes = tmp_path / "outcomes"
    gate = ["gate", "--baseline", str(good), "--candidate", str(bad)]
    gate += ["--probe", "import:trust_base", "--python", OWN_PYTHON]
    code, _ = envbisect(*gate, cache_dir=cache_dir, report=tmp_path / "1.json", outcomes=outcomes)
    assert code == ExitCode.REGRESSION
    # Whatever the cache holds (an entry from a machine where it passed, a bug, a hand
    # edit): a gate's verdict on the candidate is always probed afresh.
    flipped = 0
    for entry in outcomes.glob("*.json"):
        data = json.loads(entry.read_text())
        if data["outcome"] == "fail":
            entry.write_text(json.dumps(data | {"outcome": "pass", "detail": "exit status 0"}))
            flipped += 1
    assert flipped, "not vacuous: failing outcomes were cached"
    code, report = envbisect(
        *gate, cache_dir=cache_dir, report=tmp_path / "2.json", outcomes=outcomes
    )
    assert code == ExitCode.REGRESSION, report["summary"]
    candidate = next(t for t in report["trials"] if t["phase"] == "candidate")
    assert (candidate["cached"], candidate["outcome"]) == (False, "fail")


CORRUPTIONS = [
    "not json {",
    "[]",
    "null",
    '{"outcome": "pass"}',
    '{"outcome": "maybe", "diagnosis": "exit-status", "detail": "", "evidence": [], "timings": {}}',
    '{"outcome": "pass", "diagnosis": "exit-status", "detail": "x", "evidence": 5, '
    '"timings": "fast"}',
    '{"outcome": "fail", "diagnosis": "exit-status", "detail": "x", "evidence": ["a"], '
    '"timings": {"wait": "slow"}}',
]


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_cache_entries_are_ignored_and_rewritten(
    sides: tuple[Path, Path], cache_dir: Path, tmp_path: Path, corruption: str
) -> None:
    good, bad = sides
    outcomes = tmp_path / "outcomes"
    run = ["run", "--bad", str(bad), "--good", str(good), "--probe", "import:trust_base"]
    run += ["--python", OWN_PYTHON]
    code, first = envbisect(
        *run, cache_dir=cache_dir, report=tmp_path / "1.json", outcomes=outcomes
    )
    assert code == ExitCode.OK
    entries = sorted(outcomes.glob("*.json"))
    assert len(entries) >= 2
    for entry in entries:
        entry.write_text(corruption)
    code, again = envbisect(
        *run, cache_dir=cache_dir, report=tmp_path / "2.json", outcomes=outcomes
    )
    assert code == ExitCode.OK, again
    assert again["culprits"] == first["culprits"]
    assert not any(t["cached"] for t in again["trials"]), "a corrupt entry decides nothing"
    for entry in entries:
        assert json.loads(entry.read_text())["outcome"] in ("pass", "fail"), "rewritten"


def counting_probe(tmp_path: Path) -> str:
    """A command that fails any exact set the second time it is probed (and the stall's
    sets always): only the confirmation probes a set twice."""
    counts = tmp_path / "counts"
    counts.mkdir()
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import hashlib, importlib.metadata as m, pathlib, sys
            names = sorted(f"{{d.metadata['Name']}}=={{d.version}}" for d in m.distributions())
            key = hashlib.sha256(",".join(names).encode()).hexdigest()
            seen = pathlib.Path({str(counts)!r}) / key
            count = int(seen.read_text()) + 1 if seen.exists() else 1
            seen.write_text(str(count))
            bad = any(n.startswith("telemetry-shim==") for n in names)
            sys.exit(1 if bad or count > 1 else 0)
            """
        )
    )
    return f"python {script}"


def test_the_confirmation_probes_the_good_set_again(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path]
) -> None:
    code, report = envbisect(
        "run", "--bad", str(fixture_env("stall")), "--good", str(MINIMAL),
        "--probe-cmd", counting_probe(tmp_path),
        cache_dir=cache_dir, report=tmp_path / "report.json",
    )  # fmt: skip
    assert code == ExitCode.INCONSISTENT, report["summary"]
    assert report["culprits"] == []
    assert "good set" in report["note"]
    confirms = sorted(
        (t["size"], t["outcome"]) for t in report["trials"] if t["phase"] == "confirm"
    )
    assert [outcome for _, outcome in confirms] == ["fail", "fail"]
    assert confirms[0][0] == 0 < confirms[1][0], "the good set and the culprit set, both again"
    assert report["evidence"]["trial"] == next(
        t["index"] for t in report["trials"] if t["phase"] == "confirm" and t["size"] == 0
    )


def timeline_probe(tmp_path: Path) -> tuple[str, Path]:
    """A command that logs when it starts and ends; the stall's sets fail."""
    log = tmp_path / "timeline"
    script = tmp_path / "timeline.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import importlib.util, os, sys, time
            log = {str(log)!r}
            with open(log, "a") as out:
                out.write(f"start {{time.monotonic_ns()}} {{os.getcwd()}}\\n")
            time.sleep(1.5)  # longer than building the bad set's env
            bad = importlib.util.find_spec("telemetry_shim") is not None
            with open(log, "a") as out:
                out.write(f"end {{time.monotonic_ns()}}\\n")
            sys.exit(1 if bad else 0)
            """
        )
    )
    return f"python {script}", log


def overlaps(log: Path) -> int:
    """How many probes ran while another was running."""
    running = worst = 0
    events = sorted(
        (int(stamp), kind)
        for kind, stamp, *_ in (line.split() for line in log.read_text().splitlines())
    )
    for _, kind in events:
        running += 1 if kind == "start" else -1
        worst = max(worst, running)
    return worst - 1


@pytest.mark.parametrize(
    "extra", [["--jobs", "1"], ["--jobs", "2", "--cwd", "."]], ids=["jobs-1", "shared-cwd"]
)
def test_one_probe_at_a_time_when_asked_or_sharing_a_directory(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path], extra: list[str]
) -> None:
    command, log = timeline_probe(tmp_path)
    if "--cwd" in extra:
        extra = [*extra[:-1], str(tmp_path)]
    code, report = envbisect(
        "run", "--bad", str(fixture_env("stall")), "--good", str(MINIMAL), "--probe-cmd", command,
        *extra, cache_dir=cache_dir, report=tmp_path / "report.json",
    )  # fmt: skip
    assert code == ExitCode.OK
    assert [c["name"] for c in report["culprits"]] == ["telemetry-shim"]
    starts = [line for line in log.read_text().splitlines() if line.startswith("start")]
    assert len(starts) == len(report["trials"]) >= 4
    assert overlaps(log) == 0


def test_probe_commands_never_share_a_working_directory_by_default(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path]
) -> None:
    command, log = timeline_probe(tmp_path)
    code, _ = envbisect(
        "run", "--bad", str(fixture_env("stall")), "--good", str(MINIMAL), "--probe-cmd", command,
        "--jobs", "2", cache_dir=cache_dir, report=tmp_path / "report.json",
    )  # fmt: skip
    assert code == ExitCode.OK
    directories = [
        line.split()[2] for line in log.read_text().splitlines() if line.startswith("start")
    ]
    assert len(set(directories)) == len(directories) >= 4
