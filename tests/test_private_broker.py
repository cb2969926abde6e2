"""The private broker's policy: when one is started, which kind, and the option errors.

Pure logic against a fake broker client and fake server programs on PATH (files that
are never run); the real brokers are started in tests/integration/test_private_broker.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from envbisect import checks
from envbisect.brokers.base import BrokerClient, QueueState
from envbisect.brokers.private import Mode, PrivateBroker, check_client, executable, plan
from envbisect.cli import main
from envbisect.errors import BrokerError, BrokerUnreachable, ExitCode, InputError
from envbisect.limits import Limits
from envbisect.model import ProbeResult, TrialEnv
from envbisect.probes.base import Later, Probe
from envbisect.probes.consume import ConsumeProbe
from envbisect.procfs import processes_with_token

from .conftest import ROOT

URL = "amqp://guest:guest@127.0.0.1:5672/"


class FakeBroker(BrokerClient):
    """A broker client whose check() fails as told, and counts its calls."""

    def __init__(self, failure: BrokerError | None = None) -> None:
        super().__init__(URL)
        self.failure = failure
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if self.failure is not None:
            raise self.failure

    def send(
        self, queue: str, actor: str, args: Sequence[Any], kwargs: Mapping[str, Any], mid: str
    ) -> None:
        raise AssertionError("unreachable?")

    def state(self, queue: str) -> QueueState | None:
        raise AssertionError("unreachable?")

    def delete_once(self, queue: str, *, worker_id: str | None = None) -> int:
        raise AssertionError("unreachable?")


@dataclass(frozen=True)
class NoBrokerProbe(Probe):
    """A probe that needs no broker; its check() is counted."""

    checks: list[int] = field(default_factory=list)

    def run(self, trial: TrialEnv, token: str, limits: Limits, later: Later) -> ProbeResult:
        raise AssertionError("unreachable?")

    def settings(self) -> str:
        return "none"

    def check(self) -> None:
        self.checks.append(1)


def servers_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *programs: str
) -> dict[str, Path]:
    """PATH holds these server programs only (executable files, never run)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    paths = {}
    for program in programs:
        path = bin_dir / program
        path.write_text("#!/bin/sh\nexit 1\n")
        path.chmod(0o755)
        paths[program] = path
    monkeypatch.setenv("PATH", str(bin_dir))
    return paths


REFUSED = BrokerUnreachable(f"cannot reach RabbitMQ at {URL}: connection refused")


# -- plan: when a private broker is started ------------------------------------------------------


def test_standby_starts_one_when_nothing_answers_at_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    servers_on_path(monkeypatch, tmp_path, "rabbitmq-server", "redis-server")
    broker = FakeBroker(REFUSED)
    chosen = plan(Mode.STANDBY, ConsumeProbe(broker=broker), None)
    assert chosen is not None
    assert chosen.kind == "rabbitmq"
    assert chosen.reason == "no broker at amqp://guest:***@127.0.0.1:5672/"
    assert broker.checks == 1


def test_standby_uses_the_default_broker_when_it_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    servers_on_path(monkeypatch, tmp_path, "rabbitmq-server")
    broker = FakeBroker()
    assert plan(Mode.STANDBY, ConsumeProbe(broker=broker), None) is None
    assert broker.checks == 1


def test_standby_never_replaces_a_broker_that_answers_wrongly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Refused credentials or a silent peer: something is there, and it is not ours to shadow.
    servers_on_path(monkeypatch, tmp_path, "rabbitmq-server")
    refused = BrokerError(f"RabbitMQ at {URL} refused the credentials")
    with pytest.raises(BrokerError) as caught:
        plan(Mode.STANDBY, ConsumeProbe(broker=FakeBroker(refused)), None)
    assert caught.value is refused


def test_a_given_url_turns_it_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    servers_on_path(monkeypatch, tmp_path, "rabbitmq-server", "redis-server")
    with pytest.raises(BrokerUnreachable):
        plan(Mode.OFF, ConsumeProbe(broker=FakeBroker(REFUSED)), None)


def test_force_starts_one_without_asking_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    servers_on_path(monkeypatch, tmp_path, "rabbitmq-server", "redis-server")
    broker = FakeBroker()
    chosen = plan(Mode.FORCE, ConsumeProbe(broker=broker), "redis")
    assert chosen is not None
    assert (chosen.kind, chosen.reason) == ("redis", "--private-broker")
    assert broker.checks == 0


def test_a_probe_without_a_broker_is_only_checked() -> None:
    probe = NoBrokerProbe()
    assert plan(Mode.STANDBY, probe, None) is None
    assert probe.checks == [1]


# -- which kind ----------------------------------------------------------------------------------


def test_rabbitmq_first_then_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    programs = servers_on_path(monkeypatch, tmp_path, "redis-server")
    assert executable(None) == ("redis", programs["redis-server"])
    programs = servers_on_path(monkeypatch, tmp_path, "rabbitmq-server", "redis-server")
    assert executable(None) == ("rabbitmq", programs["rabbitmq-server"])
    assert executable("redis") == ("redis", programs["redis-server"])


def test_a_distribution_wrapper_is_stepped_around(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Debian's /usr/sbin/rabbitmq-server links to a wrapper that switches to the rabbitmq
    # user and its system directories; the real script sits next to the wrapper.
    lib = tmp_path / "usr" / "lib" / "rabbitmq" / "bin"
    lib.mkdir(parents=True)
    for name in ("rabbitmq-script-wrapper", "rabbitmq-server"):
        (lib / name).write_text("#!/bin/sh\nexit 1\n")
        (lib / name).chmod(0o755)
    sbin = tmp_path / "usr" / "sbin"
    sbin.mkdir()
    (sbin / "rabbitmq-server").symlink_to(lib / "rabbitmq-script-wrapper")
    monkeypatch.setenv("PATH", str(sbin))
    assert executable("rabbitmq") == ("rabbitmq", lib / "rabbitmq-server")


def test_no_server_program_says_what_it_looked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    servers_on_path(monkeypatch, tmp_path)
    with pytest.raises(BrokerError, match=r"^neither rabbitmq-server nor redis-server is on PATH"):
        executable(None)
    servers_on_path(monkeypatch, tmp_path, "rabbitmq-server")
    with pytest.raises(BrokerError, match=r"^redis-server is not on PATH"):
        executable("redis")
    with pytest.raises(BrokerError) as caught:
        plan(Mode.STANDBY, ConsumeProbe(broker=FakeBroker(REFUSED)), "redis")
    assert str(caught.value).startswith(
        "no broker at amqp://guest:***@127.0.0.1:5672/ (connection refused), and no private "
        "one to start: redis-server is not on PATH"
    )


def test_the_good_set_must_hold_the_client_of_the_private_broker() -> None:
    check_client("rabbitmq", {"dramatiq", "pika"})
    check_client("redis", {"dramatiq", "redis"})
    with pytest.raises(InputError) as caught:
        check_client("redis", {"dramatiq", "pika"})
    assert str(caught.value) == (
        "a private redis broker needs the redis package in every trial env, and the good set "
        "has none: add it (dramatiq[redis]), or choose --private-broker-kind rabbitmq"
    )


def test_a_server_that_will_not_start_is_one_line_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    program = servers_on_path(monkeypatch, tmp_path, "redis-server")["redis-server"]
    program.write_text("#!/bin/sh\necho 'FATAL: cannot open redis://:s3cret@host/0' >&2\nexit 3\n")
    directory = tmp_path / "run" / "broker"
    directory.parent.mkdir()
    token = f"{os.getpid()}x-will-not-start"
    broker = PrivateBroker(token)
    with pytest.raises(BrokerError) as caught:
        broker.start("redis", directory)
    assert str(caught.value) == (
        f"could not start a private redis: {program} exited with status 3: "
        "FATAL: cannot open redis://:***@host/0"
    )
    assert list(directory.parent.iterdir()) == []
    assert processes_with_token(token) == []
    broker.stop()


# -- the command line ----------------------------------------------------------------------------


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def envbisect(tmp_path: Path, *args: str) -> int:
    """envbisect run on paths that are never read: these errors come first."""
    bad, good = tmp_path / "bad", ROOT / "fixtures" / "minimal.txt"
    sides = ["--bad", str(bad), "--good", str(good)]
    return main(["run", *sides, "--cache-dir", str(tmp_path / "cache"), "--quiet", *args])


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.splitlines()
    return line


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (
            ["--private-broker", "--broker-url", URL],
            {},
            "--private-broker starts a broker of its own: leave out --broker-url "
            "(and ENVBISECT_BROKER_URL)",
        ),
        (
            ["--private-broker"],
            {"ENVBISECT_BROKER_URL": URL},
            "--private-broker starts a broker of its own: leave out --broker-url "
            "(and ENVBISECT_BROKER_URL)",
        ),
        (
            ["--private-broker-kind", "redis", "--broker-url", URL],
            {},
            "--private-broker-kind is the kind of private broker, which --broker-url "
            "(or ENVBISECT_BROKER_URL) turns off",
        ),
        (
            ["--private-broker", "--probe", "import:json"],
            {},
            "--private-broker serves --probe consume or consume-async",
        ),
        (
            ["--private-broker", "--probe-cmd", "true"],
            {},
            "--private-broker serves --probe consume or consume-async",
        ),
        (
            ["--private-broker-kind", "redis", "--probe", "import:json"],
            {},
            "--private-broker-kind serves --probe consume or consume-async",
        ),
        (
            ["--private-broker", "--worker-module", "ops_core.tasks.worker"],
            {},
            "--private-broker serves the built-in probe actor: --worker-module connects to "
            "the broker your module names (give its URL as --broker-url)",
        ),
        (
            ["--private-broker-kind", "mqtt"],
            {},
            "--private-broker-kind must be rabbitmq or redis, not 'mqtt'",
        ),
    ],
    ids=[
        "with-url",
        "with-env-url",
        "kind-with-url",
        "import",
        "probe-cmd",
        "kind-with-import",
        "worker-module",
        "unknown-kind",
    ],
)
def test_private_broker_option_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    says: str,
) -> None:
    monkeypatch.delenv("ENVBISECT_BROKER_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert envbisect(tmp_path, *args) == ExitCode.USAGE
    assert error_line(capsys) == f"envbisect: error: {says}"


def test_forced_without_a_server_program_is_exit_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVBISECT_BROKER_URL", raising=False)
    servers_on_path(monkeypatch, tmp_path)
    assert envbisect(tmp_path, "--private-broker") == ExitCode.BROKER
    assert error_line(capsys) == (
        "envbisect: error: --private-broker: neither rabbitmq-server nor redis-server is on PATH"
    )


def test_nothing_at_the_default_and_no_server_program_is_exit_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVBISECT_BROKER_URL", raising=False)
    default = f"amqp://guest:guest@127.0.0.1:{dead_port()}/"
    monkeypatch.setattr(checks, "DEFAULT_URL", default)
    servers_on_path(monkeypatch, tmp_path)
    assert envbisect(tmp_path) == ExitCode.BROKER
    assert error_line(capsys) == (
        f"envbisect: error: no broker at {default.replace(':guest@', ':***@')} "
        "(connection refused), and no private one to start: neither rabbitmq-server nor "
        "redis-server is on PATH (install one, or point --broker-url / "
        "ENVBISECT_BROKER_URL at a broker)"
    )


def test_the_env_url_turns_the_private_broker_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing at the default either: only the variable keeps envbisect from starting one.
    given = f"amqp://guest:guest@127.0.0.1:{dead_port()}/"
    monkeypatch.setattr(checks, "DEFAULT_URL", f"amqp://guest:guest@127.0.0.1:{dead_port()}/")
    monkeypatch.setenv("ENVBISECT_BROKER_URL", given)
    servers_on_path(monkeypatch, tmp_path)
    assert envbisect(tmp_path) == ExitCode.BROKER
    line = error_line(capsys)
    assert line.startswith(
        f"envbisect: error: cannot reach RabbitMQ at {given.replace(':guest@', ':***@')}"
    )
    assert "private" not in line


def test_a_worker_module_never_gets_a_private_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user's module connects to its own broker: one of envbisect's would never be used.
    monkeypatch.delenv("ENVBISECT_BROKER_URL", raising=False)
    default = f"amqp://guest:guest@127.0.0.1:{dead_port()}/"
    monkeypatch.setattr(checks, "DEFAULT_URL", default)
    servers_on_path(monkeypatch, tmp_path, "rabbitmq-server", "redis-server")
    assert envbisect(tmp_path, "--worker-module", "ops_core.tasks.worker") == ExitCode.BROKER
    line = error_line(capsys)
    assert line.startswith(
        f"envbisect: error: cannot reach RabbitMQ at {default.replace(':guest@', ':***@')}"
    )
