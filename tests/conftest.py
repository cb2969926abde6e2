"""Shared test set-up: fixture wheels and envs built once per session, debris checks.

Integration tests use the machine's real RabbitMQ (and Redis), real virtualenvs
and real installs. Expensive things are cached under ``build/``: the fixture
wheels, the fixture envs (rebuilt only when their spec changes), and one
envbisect cache dir (repacked wheels, uv's cache) shared by every test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
RUN_TOKEN_VAR = "ENVBISECT_RUN_TOKEN"
SCHEMA = json.loads((ROOT / "envbisect" / "schema" / "report.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
_VALIDATED: list[Path] = []


@pytest.fixture(autouse=True)
def reports_are_valid(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every JSON report a test leaves in its tmp_path is checked against the shipped schema."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    tmp_path: Path = request.getfixturevalue("tmp_path")  # now, so it outlives this check
    yield
    for path in tmp_path.rglob("*.json"):
        if "site-packages" in path.parts or not path.is_file():
            continue
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and "schema_version" in report:
            errors = [
                f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(report)
            ]
            assert errors == [], f"{path} does not match the report schema"
            _VALIDATED.append(path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many reports were validated, so a run shows the check was not vacuous."""
    if _VALIDATED:
        terminalreporter.write_line(
            f"envbisect: {len(_VALIDATED)} JSON report(s) validated against the schema"
        )


@pytest.fixture(scope="session")
def fixture_wheels() -> Path:
    """Every package under fixtures/packages/, built into a wheel."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "fixtures" / "build.py"), "wheels"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def fixture_env(fixture_wheels: Path) -> Callable[[str], Path]:
    """Build (once per spec change) the env of fixtures/envs/NAME.txt; return its path."""

    def build(name: str) -> Path:
        dest = BUILD / "fixtures" / "envs" / name
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "fixtures" / "build.py"),
                "env",
                name,
                str(dest),
            ],
            check=True,
            capture_output=True,
        )
        return dest

    return build


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """One envbisect --cache-dir for the whole session (and the next: it is only a cache)."""
    path = BUILD / "test-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def broker_url() -> str:
    url = os.environ.get("ENVBISECT_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    _require_listening(5672, "RabbitMQ (start it with `rabbitmq-server -detached`)")
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    _require_listening(6379, "Redis")
    return "redis://127.0.0.1:6379/0"


def _require_listening(port: int, what: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.fail(f"{what} is not listening on 127.0.0.1:{port}; integration tests need it")


def run_token_prefix(pid: int | None = None) -> str:
    """Run tokens of envbisect runs started by process ``pid`` (default: this test process).

    See processes.new_run_token: a run's token starts with envbisect's pid, so an
    envbisect run as a subprocess is told apart by that subprocess's pid.
    """
    return f"{os.getpid() if pid is None else pid}x"


def envbisect_processes(pid: int | None = None) -> list[int]:
    """Live processes started by envbisect runs of ``pid`` (they carry its token)."""
    needle = f"{RUN_TOKEN_VAR}={run_token_prefix(pid)}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(v.startswith(needle) for v in environ):
            found.append(int(entry))
    return found


def envbisect_queues(pid: int | None = None) -> list[str]:
    """Queues on the local RabbitMQ that belong to envbisect runs of ``pid``."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True, timeout=60
    )
    prefix = f"envbisect_{run_token_prefix(pid)}"
    return sorted(line for line in done.stdout.split() if line.startswith(prefix))


def envbisect_tempdirs(pid: int | None = None, tmp: Path | None = None) -> set[str]:
    """Temp dirs of envbisect runs of ``pid`` (in ``tmp``, default: the temp dir)."""
    where = tmp or Path(tempfile.gettempdir())
    return {p.name for p in where.glob(f"envbisect-{run_token_prefix(pid)}*")}


def debris(pid: int | None = None) -> dict[str, object]:
    """What envbisect runs of ``pid`` left: processes, queues, temp dirs (all empty if clean)."""
    return {
        "processes": envbisect_processes(pid),
        "queues": envbisect_queues(pid),
        "temp dirs": envbisect_tempdirs(pid),
    }


NO_DEBRIS = {"processes": [], "queues": [], "temp dirs": set()}


@pytest.fixture
def no_debris() -> Iterator[None]:
    """Fail the test if it leaves envbisect processes, queues or temp dirs behind."""
    assert debris() == NO_DEBRIS, "left over from an earlier test"
    yield
    assert debris() == NO_DEBRIS, "envbisect left debris"
