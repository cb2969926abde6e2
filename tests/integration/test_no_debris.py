"""Nothing lost, nothing leaked: envbisect runs leave no process, queue or temp dir.

Runs that must be interrupted, or watched from outside, run ``python -m envbisect``
as a real subprocess and are checked by that subprocess's pid (run tokens start with
it, see processes.new_run_token); the rest run in-process under ``no_debris``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from envbisect.cli import main
from envbisect.errors import ExitCode

from ..conftest import (
    NO_DEBRIS,
    ROOT,
    RUN_TOKEN_VAR,
    debris,
    envbisect_processes,
    envbisect_queues,
    envbisect_tempdirs,
    run_token_prefix,
)

MINIMAL = ROOT / "fixtures" / "minimal.txt"

pytestmark = pytest.mark.integration


@dataclass
class Run:
    """``python -m envbisect run …`` as a subprocess, output to files."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    report: Path
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout)

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.report.read_text())
        return data

    def culprits(self) -> list[str]:
        return sorted(c["name"] for c in self.json()["culprits"])

    def kill_everything(self) -> None:
        """After a failed test: leave nothing for the next one."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in envbisect_processes(self.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start(tmp_path: Path, cache_dir: Path, broker_url: str) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def launch(*args: str, name: str = "run", env: dict[str, str] | None = None) -> Run:
        out = tmp_path / name
        out.mkdir()
        argv = [sys.executable, "-m", "envbisect", "run", *args]
        argv += ["--cache-dir", str(cache_dir), "--broker-url", broker_url, "--no-cache"]
        argv += ["--json", str(out / "report.json")]
        with (out / "stdout").open("wb") as stdout, (out / "stderr").open("wb") as stderr:
            proc = subprocess.Popen(
                argv, stdout=stdout, stderr=stderr, cwd=ROOT, env={**os.environ, **(env or {})}
            )
        run = Run(proc, out / "stdout", out / "stderr", out / "report.json", time.monotonic())
        runs.append(run)
        return run

    try:
        yield launch
    finally:
        for run in runs:
            run.kill_everything()


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def token_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{RUN_TOKEN_VAR}=".encode()
    return next((v[len(prefix) :].decode() for v in environ if v.startswith(prefix)), None)


def has_package(pid: int, package: str) -> bool:
    """Whether the process runs the Python of an env that has ``package`` installed."""
    try:
        python = Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
    except (OSError, IndexError):
        return False
    return any(python.parent.parent.glob(f"lib/python*/site-packages/{package}"))


def worker_group_with(run_pid: int, package: str, first_trial: int) -> bool:
    """A trial's whole worker group (dramatiq's main process and its worker process) is up,
    in an env with ``package``, in trial ``first_trial`` or a later one."""
    groups: dict[str, int] = {}
    for pid in envbisect_processes(run_pid):
        token = token_of(pid)
        trial = re.search(r"-t(\d+)r\d+$", token or "")
        if token and trial and int(trial[1]) >= first_trial and has_package(pid, package):
            groups[token] = groups.get(token, 0) + 1
    return any(count >= 2 for count in groups.values())


def assert_clean(pid: int) -> None:
    assert debris(pid) == NO_DEBRIS


def groups_of(run_pid: int) -> set[int]:
    """Process groups of the run's live processes (to check later that none is left)."""
    groups = set()
    for pid in envbisect_processes(run_pid):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    return groups


def live(groups: set[int]) -> set[int]:
    """The groups that still have a member, a zombie included (the token checks miss those:
    a zombie's environment cannot be read)."""
    alive = set()
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, 0)
            alive.add(pgid)
    return alive


# -- interrupts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "first_trial"),
    [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGHUP, 1), (signal.SIGINT, 3)],
    ids=["SIGINT-sanity", "SIGTERM-sanity", "SIGHUP-sanity", "SIGINT-search"],
)
def test_interrupt_while_a_stalled_worker_runs(
    start: Callable[..., Run],
    fixture_env: Callable[[str], Path],
    sig: signal.Signals,
    first_trial: int,
) -> None:
    # The stall: gevent-patched workers that ignore SIGTERM. Interrupt envbisect while
    # a failing trial's worker group is up and stalling: in the sanity pair (the bad
    # set), or in the search (while the next sets' envs are being prebuilt).
    # In the sanity pair, the full --timeout keeps the bad set's worker stalling long
    # enough to be caught (and would hold the run for 10 minutes if the signal were not
    # acted on at once); in the search, adaptive limits get there sooner.
    fixed = ["--fixed-timeout", "--timeout", "600"] if first_trial == 1 else []
    run = start("--bad", str(fixture_env("stall")), "--good", str(MINIMAL), *fixed)
    wait_for(lambda: worker_group_with(run.pid, "telemetry_shim", first_trial), "a stalled worker")
    if fixed:  # the worker stalls for 600 s: time enough to ask the broker
        assert envbisect_queues(run.pid), "the trial's queue exists while its worker runs"
    groups = groups_of(run.pid)
    sent = time.monotonic()
    run.proc.send_signal(sig)
    code = run.wait(300)
    took = time.monotonic() - sent
    assert code == 128 + sig
    lines = run.stderr.read_text().splitlines()
    assert lines[-1] == f"envbisect: interrupted by {sig.name}; cleaned up"
    assert "Traceback" not in run.stderr.read_text()
    assert_clean(run.pid)
    assert groups and live(groups) == set(), "the worker process groups are gone, zombies too"
    assert took < 60, f"clean-up took {took:.1f} s"


# -- hard kills ------------------------------------------------------------------------------


def watchdog_of(run_pid: int) -> int | None:
    """The pid of the run's watchdog: the child of envbisect that runs envbisect.watchdog."""
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[-1].split()[1]) == run_pid and b"envbisect.watchdog" in cmdline:
            return int(entry)
    return None


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def test_sigkill_while_a_stalled_worker_runs(
    start: Callable[..., Run], fixture_env: Callable[[str], Path]
) -> None:
    # SIGKILL gives envbisect no clean-up at all; the stalled worker ignores SIGTERM and
    # would run for good. The run's watchdog sees envbisect go and removes it all.
    run = start("--bad", str(fixture_env("stall")), "--good", str(MINIMAL), "--fixed-timeout")
    wait_for(lambda: worker_group_with(run.pid, "telemetry_shim", 1), "a stalled worker")
    wait_for(lambda: envbisect_queues(run.pid), "the stalled trial's queue")
    processes = envbisect_processes(run.pid)
    run.proc.kill()
    run.wait(60)
    wait_for(lambda: debris(run.pid) == NO_DEBRIS, "the watchdog's clean-up", timeout=120)
    last = run.stderr.read_text().splitlines()[-1]
    assert re.fullmatch(
        rf"envbisect: watchdog: run {run.pid}x[0-9a-f]+ ended without its clean-up; "
        r"removed \d+ process(es)?, 1 temp dir, [1-9]\d* queues?",
        last,
    ), last
    assert processes and not any(running(pid) for pid in processes), "every worker is gone"


def test_the_next_run_sweeps_what_a_dead_run_left(
    start: Callable[..., Run], fixture_env: Callable[[str], Path], tmp_path: Path
) -> None:
    # Debris for real: envbisect and its watchdog both SIGKILL-ed while a worker stalls.
    # Both runs use a TMPDIR of their own, so no other run on this machine sweeps it first.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stall, healthy = str(fixture_env("stall")), str(fixture_env("healthy"))
    dead = start(
        "--bad", stall, "--good", str(MINIMAL), "--fixed-timeout",
        name="dead", env={"TMPDIR": str(tmp)},
    )  # fmt: skip
    wait_for(lambda: worker_group_with(dead.pid, "telemetry_shim", 1), "a stalled worker")
    wait_for(lambda: len(envbisect_queues(dead.pid)) >= 3, "the stalled trial's queues")
    watchdog = watchdog_of(dead.pid)
    assert watchdog is not None, "the run has a watchdog"
    os.kill(watchdog, signal.SIGKILL)
    dead.proc.kill()
    dead.wait(60)
    left = {
        "processes": envbisect_processes(dead.pid),
        "queues": envbisect_queues(dead.pid),
        "temp dirs": envbisect_tempdirs(dead.pid, tmp),
    }
    assert all(left.values()), f"a dead run's debris, for real: {left}"
    (workspace,) = left["temp dirs"]
    token = workspace.removeprefix("envbisect-").rsplit("-", 1)[0]
    later = start("--bad", healthy, "--good", str(MINIMAL), name="later", env={"TMPDIR": str(tmp)})
    assert later.wait() == ExitCode.BAD_PASSES
    said = (
        f"swept leftovers of dead run {token}: "
        f"{counted(len(left['processes']), 'process', 'processes')}, 1 temp dir, "
        f"{counted(len(left['queues']), 'queue', 'queues')}"
    )
    assert said in later.stderr.read_text()
    assert envbisect_processes(dead.pid) == []
    assert envbisect_queues(dead.pid) == []
    assert envbisect_tempdirs(dead.pid, tmp) == set()
    assert debris(later.pid) == NO_DEBRIS


# -- what escapes the process group ----------------------------------------------------------


def test_a_daemon_that_escaped_the_worker_is_killed(
    start: Callable[..., Run], fixture_env: Callable[[str], Path], tmp_path: Path
) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    run = start(
        "--bad",
        str(fixture_env("agent")),
        "--good",
        str(MINIMAL),
        env={"METRICS_AGENT_RUN_DIR": str(agents)},
    )
    groups: set[int] = set()
    while run.proc.poll() is None:
        groups |= groups_of(run.pid)
        time.sleep(0.02)
    assert run.wait() == ExitCode.OK
    assert live(groups) == set()
    assert run.culprits() == ["metrics-agent"]
    pids = [int(p.read_text()) for p in agents.glob("agent-*.pid")]
    assert pids, "the fixture daemonised no agent: the test proves nothing"
    alive = [pid for pid in pids if _comm(pid) == "metrics-agent"]
    assert alive == []
    assert_clean(run.pid)


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


# -- a normal run, seen from outside ---------------------------------------------------------


def test_normal_run_with_a_long_tmpdir(
    start: Callable[..., Run], fixture_env: Callable[[str], Path], tmp_path: Path
) -> None:
    # Longer than a Unix socket path may be: nothing of a run may depend on short paths.
    tmpdir = tmp_path / ("deep-" * 24)
    tmpdir.mkdir()
    run = start(
        "--bad", str(fixture_env("crash")), "--good", str(MINIMAL), env={"TMPDIR": str(tmpdir)}
    )
    wait_for(lambda: envbisect_tempdirs(run.pid, tmpdir), "the run's workspace")
    workspace = tmpdir / envbisect_tempdirs(run.pid, tmpdir).pop()
    assert stat.S_IMODE(workspace.stat().st_mode) == 0o700
    assert run.wait() == ExitCode.OK
    assert run.culprits() == ["pika-autotrace"]
    assert list(tmpdir.iterdir()) == []
    assert_clean(run.pid)


# -- two runs at once ------------------------------------------------------------------------


def test_two_runs_at_once_on_one_broker(
    start: Callable[..., Run], fixture_env: Callable[[str], Path]
) -> None:
    stall = start("--bad", str(fixture_env("stall")), "--good", str(MINIMAL), name="stall")
    pair = start("--bad", str(fixture_env("pair")), "--good", str(MINIMAL), name="pair")
    seen: dict[int, set[str]] = {stall.pid: set(), pair.pid: set()}
    groups: set[int] = set()
    while stall.proc.poll() is None or pair.proc.poll() is None:
        for pid, queues in seen.items():
            queues.update(envbisect_queues(pid))
            groups |= groups_of(pid)
        time.sleep(0.2)
    assert stall.wait() == ExitCode.OK
    assert pair.wait() == ExitCode.OK
    assert stall.culprits() == ["telemetry-shim"]
    assert pair.culprits() == ["codec-autoload", "fastcodec"]
    for run in (stall, pair):
        trials = run.json()["trials"]
        # A good trial's actor ran on its own message, in its own env: nothing crossed over.
        good = [t for t in trials if t["phase"] == "good"]
        assert [t["outcome"] for t in good] == ["pass"]
        assert {t["outcome"] for t in trials} <= {"pass", "fail"}
    # Each run's queues are named by its own token (so neither can see the other's).
    assert seen[stall.pid] and seen[pair.pid], seen
    for pid, queues in seen.items():
        assert all(q.startswith(f"envbisect_{run_token_prefix(pid)}") for q in queues)
    assert not seen[stall.pid] & seen[pair.pid]
    assert groups and live(groups) == set()
    assert_clean(stall.pid)
    assert_clean(pair.pid)


# -- in-process runs ---------------------------------------------------------------------------


def run_in_process(cache_dir: Path, broker_url: str, *args: str) -> int:
    return main(["run", *args, "--cache-dir", str(cache_dir), "--broker-url", broker_url])


@pytest.mark.usefixtures("no_debris")
def test_max_time_bounds_a_stalled_run(
    cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path], tmp_path: Path
) -> None:
    started = time.monotonic()
    code = run_in_process(
        cache_dir,
        broker_url,
        "--bad",
        str(fixture_env("stall")),
        "--good",
        str(MINIMAL),
        "--no-cache",
        "--fixed-timeout",
        "--timeout",
        "600",
        "--max-time",
        "8",
        "--json",
        str(tmp_path / "report.json"),
    )
    took = time.monotonic() - started
    assert code == ExitCode.TIME_LIMIT
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "error"
    assert report["error"].startswith("--max-time 8 s reached")
    assert took < 8 + 60, f"took {took:.1f} s"  # not the stalled worker's 600 s


def test_keep_envs_is_the_only_way_envs_survive(
    cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]
) -> None:
    assert debris() == NO_DEBRIS
    code = run_in_process(
        cache_dir, broker_url, "--bad", str(fixture_env("crash")), "--good", str(MINIMAL),
        "--no-cache", "--keep-envs", "--quiet",
    )  # fmt: skip
    assert code == ExitCode.OK
    (kept,) = envbisect_tempdirs()
    workspace = Path(os.environ.get("TMPDIR", "/tmp")) / kept
    try:
        assert stat.S_IMODE(workspace.stat().st_mode) == 0o700
        assert list(workspace.glob("*-t*/env/bin/python")), "the trial envs are kept"
        assert envbisect_processes() == []
        assert envbisect_queues() == []
    finally:
        shutil.rmtree(workspace)


@pytest.fixture
def rabbit_user(broker_url: str) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user with a long random password, for this test only."""
    user, password = f"envbisect-test-{os.getpid()}", secrets.token_urlsafe(18)

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    ctl("add_user", user, password)
    try:
        ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield user, password
    finally:
        ctl("delete_user", user)


@pytest.mark.usefixtures("no_debris")
def test_the_broker_password_is_never_printed_or_written(
    cache_dir: Path,
    fixture_env: Callable[[str], Path],
    tmp_path: Path,
    rabbit_user: tuple[str, str],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user, password = rabbit_user
    url = f"amqp://{user}:{password}@127.0.0.1:5672/"
    # metrics-agent prints the *_URL variables it sees, the broker URL among them.
    monkeypatch.setenv("METRICS_AGENT_RUN_DIR", str(tmp_path))
    outcomes = tmp_path / "outcomes"
    code = run_in_process(
        cache_dir, url, "--bad", str(fixture_env("agent")), "--good", str(MINIMAL),
        "--outcome-cache", str(outcomes), "--json", str(tmp_path / "report.json"),
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert code == ExitCode.OK
    written = [p.read_text() for p in outcomes.glob("*.json")]
    report = (tmp_path / "report.json").read_text()
    assert written, "trial outcomes were cached"
    for text in [out, err, report, *written]:
        assert password not in text
    # Not vacuous: the worker did print the URL, and it arrived masked.
    assert f"ENVBISECT_BROKER_URL=amqp://{user}:***@127.0.0.1:5672/" in report
    assert f"consume on amqp://{user}:***@127.0.0.1:5672/" in err
    # And the env's code never ran inside envbisect.
    assert "metrics_agent" not in sys.modules
