"""A broker when none runs: envbisect's own RabbitMQ or Redis, started and stopped for real.

The private mode is forced (the machine's broker answers at the default URL, and must
go on answering: it is never stopped), or the default URL is pointed at a port where
nothing listens. After every run — a verdict, an error, --max-time, SIGINT, SIGTERM —
no process of the private broker is left (its epmd included), nor its files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envbisect import checks
from envbisect.brokers import connect
from envbisect.brokers import private as private_broker
from envbisect.brokers.private import PrivateBroker, executable
from envbisect.cli import main
from envbisect.errors import ExitCode
from envbisect.procfs import processes_with_token

from ..conftest import (
    NO_DEBRIS,
    ROOT,
    debris,
    envbisect_processes,
    envbisect_tempdirs,
    run_token_prefix,
)
from .test_no_debris import Run, groups_of, live, token_of, wait_for

MINIMAL = ROOT / "fixtures" / "minimal.txt"
SERVER = {"rabbitmq": "RabbitMQ", "redis": "Redis"}
PROGRAM = {"rabbitmq": "rabbitmq-server", "redis": "redis-server"}

pytestmark = pytest.mark.integration


def needs(kind: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(PROGRAM[kind]) is None,
        reason=f"{PROGRAM[kind]} is not on PATH: no private {SERVER[kind]} to start",
    )


KINDS = [pytest.param(kind, marks=needs(kind), id=kind) for kind in ("rabbitmq", "redis")]


def machine_brokers() -> dict[str, str]:
    """The machine's own brokers, as they answer (and the nodes on the machine's epmd)."""
    rabbit = connect("amqp://guest:guest@127.0.0.1:5672/")
    rabbit.check()
    redis = connect("redis://127.0.0.1:6379/0")
    redis.check()
    seen = {"5672": rabbit.server, "6379": redis.server}
    if shutil.which("epmd"):
        names = subprocess.run(["epmd", "-names"], capture_output=True, text=True, timeout=60)
        # rabbitmqctl calls (other tests') come and go as rabbitmqcli-* nodes.
        nodes = re.findall(r"^name (\S+) at port", names.stdout, re.MULTILINE)
        seen["epmd"] = " ".join(sorted(n for n in nodes if not n.startswith("rabbitmqcli")))
    return seen


def cookie() -> tuple[bool, float]:
    path = Path.home() / ".erlang.cookie"
    return (path.exists(), path.stat().st_mtime if path.exists() else 0.0)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# -- the module: start(kind, directory) → URL; stop() ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_start_serves_messages_and_stop_leaves_nothing(kind: str, tmp_path: Path) -> None:
    before, erlang_cookie = machine_brokers(), cookie()
    token = f"{run_token_prefix()}private-{kind}"
    directory = tmp_path / "run" / "broker"
    directory.parent.mkdir()
    broker = PrivateBroker(token)
    try:
        url = broker.start(kind, directory)
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "127.0.0.1"
        assert parts.port not in (5672, 6379)
        assert broker.address == f"127.0.0.1:{parts.port}"
        assert broker.server.startswith(f"{SERVER[kind]} ")
        # Its own credentials: another local user's client cannot log in as guest.
        assert parts.password and len(parts.password) >= 16
        client = connect(url)
        client.check()
        queue = f"envbisect_{token}-q"
        client.send(queue, "envbisect_probe", ("x",), {}, "m1")
        state = client.state(queue)
        assert state is not None and state.ready == 1
        client.delete(queue)
        running = processes_with_token(token)
        assert running, "the broker's processes carry the run's token"
        assert {"beam.smp" if kind == "rabbitmq" else "redis-server"} <= {
            comm(pid) for pid in running
        }
        assert any(directory.iterdir()), "its data and logs live in the run's directory"
    finally:
        broker.stop()
    assert processes_with_token(token) == []
    assert not directory.exists()
    assert list(directory.parent.iterdir()) == []
    broker.stop()  # idempotent
    assert machine_brokers() == before
    assert cookie() == erlang_cookie, "the user's ~/.erlang.cookie is untouched"


@pytest.mark.parametrize(
    ("kind", "which"),
    [
        pytest.param("redis", 0, marks=needs("redis"), id="redis"),
        pytest.param("rabbitmq", 1, marks=needs("rabbitmq"), id="rabbitmq-distribution"),
    ],
)
def test_a_port_taken_before_the_server_binds_it_is_given_up_for_another(
    kind: str, which: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ports are picked free, then bound by the server a moment (RabbitMQ: seconds)
    # later: someone may be quicker. Here someone is, on the first pick.
    holder = socket.create_server(("127.0.0.1", 0))
    taken = holder.getsockname()[1]
    picked: list[list[int]] = []
    free_ports = private_broker._free_ports

    def first_taken(count: int) -> list[int]:
        ports = free_ports(count)
        picked.append(ports)
        if len(picked) == 1:
            ports = [*ports[:which], taken, *ports[which + 1 :]]
        return ports

    monkeypatch.setattr(private_broker, "_free_ports", first_taken)
    token = f"{run_token_prefix()}taken"
    broker = PrivateBroker(token)
    try:
        url = broker.start(kind, tmp_path / "broker")
        assert len(picked) == 2
        assert urllib.parse.urlsplit(url).port == picked[1][0] != taken
    finally:
        broker.stop()
        holder.close()
    assert processes_with_token(token) == []
    assert list(tmp_path.iterdir()) == []


# -- runs --------------------------------------------------------------------------------------


@pytest.fixture
def launch(tmp_path: Path, cache_dir: Path) -> Iterator[Callable[..., Run]]:
    """``python -m envbisect run ARGS`` with the default broker URL (no --broker-url)."""
    runs: list[Run] = []

    def start(*args: str, name: str = "run") -> Run:
        out = tmp_path / name
        out.mkdir()
        argv = [sys.executable, "-m", "envbisect", "run", *args]
        argv += ["--cache-dir", str(cache_dir), "--no-cache", "--json", str(out / "report.json")]
        env = {k: v for k, v in os.environ.items() if k != "ENVBISECT_BROKER_URL"}
        with (out / "stdout").open("wb") as stdout, (out / "stderr").open("wb") as stderr:
            proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, cwd=ROOT, env=env)
        run = Run(proc, out / "stdout", out / "stderr", out / "report.json", time.monotonic())
        runs.append(run)
        return run

    try:
        yield start
    finally:
        for run in runs:
            run.kill_everything()


def broker_processes(run_pid: int) -> list[int]:
    """The run's private broker's processes (their token ends in ``-broker``)."""
    return [p for p in envbisect_processes(run_pid) if (token_of(p) or "").endswith("-broker")]


def watch(run: Run) -> tuple[set[int], set[str]]:
    """Until the run ends: the process groups of its processes, and its broker's programs."""
    groups: set[int] = set()
    programs: set[str] = set()
    while run.proc.poll() is None:
        groups |= groups_of(run.pid)
        programs |= {comm(pid) for pid in broker_processes(run.pid)}
        time.sleep(0.05)
    return groups, programs


ANNOUNCED = re.compile(
    r"^· (?P<why>.+): started a private (?P<server>(RabbitMQ|Redis) \S+) "
    r"on 127\.0\.0\.1:(?P<port>\d+) for this run$",
    re.MULTILINE,
)


#: A bad env and good set per kind: the crash culprit breaks `import pika`, which a worker
#: on Redis never imports; on Redis, the pair that cannot decode dramatiq's messages.
CASES = {
    "rabbitmq": ("crash", MINIMAL, ["pika-autotrace"]),
    "redis": ("pair", ROOT / "fixtures" / "minimal-redis.txt", ["codec-autoload", "fastcodec"]),
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_forced_run_finds_the_culprit_through_a_private_broker(
    kind: str, launch: Callable[..., Run], fixture_env: Callable[[str], Path]
) -> None:
    before = machine_brokers()
    bad, good, culprits = CASES[kind]
    run = launch(
        "--private-broker", "--private-broker-kind", kind,
        "--bad", str(fixture_env(bad)), "--good", str(good),
    )  # fmt: skip
    groups, programs = watch(run)
    assert run.wait() == ExitCode.OK, run.stderr.read_text()
    assert run.culprits() == culprits
    err = run.stderr.read_text()
    (announced,) = ANNOUNCED.finditer(err)
    assert announced["why"] == "--private-broker"
    assert announced["server"].startswith(SERVER[kind])
    assert int(announced["port"]) not in (5672, 6379)
    assert run.json()["probe"] == f"consume on a private {announced['server']}"
    assert ("beam.smp" if kind == "rabbitmq" else "redis-server") in programs
    assert groups and live(groups) == set()
    assert debris(run.pid) == NO_DEBRIS
    assert machine_brokers() == before


@pytest.mark.usefixtures("no_debris")
def test_nothing_at_the_default_url_starts_a_private_broker(
    cache_dir: Path,
    fixture_env: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    if not (shutil.which("rabbitmq-server") or shutil.which("redis-server")):
        pytest.skip("neither rabbitmq-server nor redis-server is on PATH: no private broker")
    kind = executable(None)[0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(checks, "DEFAULT_URL", f"amqp://guest:guest@127.0.0.1:{port}/")
    monkeypatch.delenv("ENVBISECT_BROKER_URL", raising=False)
    report = tmp_path / "report.json"
    sides = ["--bad", str(fixture_env("crash")), "--good", str(MINIMAL)]
    code = main(["run", *sides, "--cache-dir", str(cache_dir), "--no-cache", "--json", str(report)])
    err = capfd.readouterr().err
    assert code == ExitCode.OK, err
    assert [c["name"] for c in json.loads(report.read_text())["culprits"]] == ["pika-autotrace"]
    (announced,) = ANNOUNCED.finditer(err)
    assert announced["why"] == f"no broker at amqp://guest:***@127.0.0.1:{port}/"
    assert announced["server"].startswith(SERVER[kind])


# -- every other way a run ends --------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "when"),
    [(signal.SIGINT, "booting"), (signal.SIGINT, "running"), (signal.SIGTERM, "running")],
    ids=["SIGINT-booting", "SIGINT-running", "SIGTERM-running"],
)
@needs("rabbitmq")
def test_an_interrupted_run_leaves_no_broker_behind(
    sig: signal.Signals, when: str, launch: Callable[..., Run], fixture_env: Callable[[str], Path]
) -> None:
    before = machine_brokers()
    run = launch(
        "--private-broker", "--private-broker-kind", "rabbitmq", "--fixed-timeout",
        "--bad", str(fixture_env("stall")), "--good", str(MINIMAL),
    )  # fmt: skip
    if when == "booting":
        wait_for(
            lambda: "beam.smp" in {comm(p) for p in broker_processes(run.pid)}, "RabbitMQ booting"
        )
        assert not ANNOUNCED.search(run.stderr.read_text()), "booted already: not the case tested"
    else:
        wait_for(lambda: ANNOUNCED.search(run.stderr.read_text()), "the private broker")
    assert broker_processes(run.pid)
    groups = groups_of(run.pid)
    run.proc.send_signal(sig)
    assert run.wait(120) == 128 + sig
    err = run.stderr.read_text()
    assert err.splitlines()[-1] == f"envbisect: interrupted by {sig.name}; cleaned up"
    assert "Traceback" not in err
    assert live(groups) == set(), "the broker's process groups are gone"
    assert debris(run.pid) == NO_DEBRIS
    assert machine_brokers() == before


@needs("redis")
def test_a_good_set_that_cannot_reach_the_private_broker_is_one_line(
    launch: Callable[..., Run], fixture_env: Callable[[str], Path]
) -> None:
    # minimal.txt has pika, not redis: every trial's worker would crash on a private Redis.
    run = launch(
        "--private-broker", "--private-broker-kind", "redis", "--quiet",
        "--bad", str(fixture_env("crash")), "--good", str(MINIMAL),
    )  # fmt: skip
    groups, programs = watch(run)
    assert run.wait() == ExitCode.USAGE
    assert run.stderr.read_text().splitlines() == [
        "envbisect: error: a private redis broker needs the redis package in every trial env, "
        "and the good set has none: add it (dramatiq[redis]), or choose --private-broker-kind "
        "rabbitmq"
    ]
    assert "redis-server" in programs, "Redis was started: the test proves something"
    assert live(groups) == set()
    assert debris(run.pid) == NO_DEBRIS


@pytest.mark.parametrize("ending", ["bad-input", "max-time"])
@needs("rabbitmq")
def test_a_run_that_fails_leaves_no_broker_behind(
    ending: str, launch: Callable[..., Run], fixture_env: Callable[[str], Path], tmp_path: Path
) -> None:
    # Both end while RabbitMQ is still booting, beside the reading of the sides.
    if ending == "bad-input":
        good = tmp_path / "good.txt"
        good.write_text("pika==1.3.2\n???\n")
        args, code = ["--good", str(good)], ExitCode.USAGE
    else:
        args, code = ["--good", str(MINIMAL), "--max-time", "1"], ExitCode.TIME_LIMIT
    run = launch(
        "--private-broker", "--private-broker-kind", "rabbitmq",
        "--bad", str(fixture_env("crash")), *args,
    )  # fmt: skip
    groups, programs = watch(run)
    assert run.wait() == code, run.stderr.read_text()
    assert "beam.smp" in programs, "RabbitMQ was started: the test proves something"
    assert live(groups) == set()
    assert debris(run.pid) == NO_DEBRIS
    assert envbisect_tempdirs(run.pid) == set()
