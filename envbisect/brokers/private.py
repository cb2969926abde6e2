"""A broker of envbisect's own, for one run, when none is at hand.

With no broker URL given and nothing listening at the default one (or with
``--private-broker``), the run starts ``rabbitmq-server`` — else ``redis-server``
— the way pytest-rabbitmq does: free ports, a node name of its own, a password
of its own, and its config, data, logs and Erlang cookie (``HOME``) in the run's
private temp dir, so neither the machine's broker nor the system's or the user's
files are used or touched. RabbitMQ gets an epmd of its own, on a port of its
own: the machine's epmd is never used, so whose epmd to stop is never a question.

Every process of it carries the run's token (the sweep after a SIGKILLed
envbisect finds them by it) and runs under ``python -m envbisect.brokers.reaper``,
which reaps the orphans of its boot. :meth:`PrivateBroker.stop` kills its process
group, then the groups of those that left it (epmd, Erlang's port programs),
found by the token, and removes its directory. (Two server kinds, one life cycle:
a little over 350 lines, kept together.)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import Version

from envbisect import processes, procfs
from envbisect.brokers import connect
from envbisect.brokers.base import BrokerClient
from envbisect.errors import BrokerError, BrokerUnreachable, InputError
from envbisect.masking import KNOWN_SECRETS, mask_urls

if TYPE_CHECKING:
    from envbisect.probes.base import Probe

#: The kinds, in the order they are tried, and their server programs.
PROGRAMS = {"rabbitmq": "rabbitmq-server", "redis": "redis-server"}
#: The package a Dramatiq worker needs to reach each kind.
CLIENTS = {"rabbitmq": "pika", "redis": "redis"}
#: Seconds a private broker may take to answer (RabbitMQ boots in 5-14 s on 2 busy cores).
BOOT_LIMIT = 120.0
#: Attempts when a port picked as free was taken before the server could bind it.
_ATTEMPTS = 3
#: How the servers say so (lower case): the AMQP or Redis port; RabbitMQ's distribution
#: port; its epmd port, held by something that is not epmd.
_PORT_TAKEN = ("eaddrinuse", "address already in use", "dist_port_already_used", "nodistribution")
_USER = "envbisect"


class Mode(StrEnum):
    """When a run starts a private broker."""

    OFF = "off"  #: a broker URL was given (--broker-url, ENVBISECT_BROKER_URL): never
    STANDBY = "standby"  #: the default URL: only when nothing listens there
    FORCE = "force"  #: --private-broker: always


@dataclass(frozen=True)
class Plan:
    """A private broker to start, and why (the start of the line that announces it)."""

    kind: str  #: "rabbitmq" or "redis"
    reason: str  #: "--private-broker", or "no broker at <the default URL, masked>"


def executable(kind: str | None) -> tuple[str, Path]:
    """The kind to start and its server program: ``kind``'s, or else the first kind whose
    program is on PATH. Raises :class:`BrokerError` saying what it looked for.

    A distribution's wrapper (Debian's ``rabbitmq-script-wrapper``, which switches to
    the ``rabbitmq`` user and the system's directories) is stepped around: the real
    script sits next to it.
    """
    for name in (kind,) if kind else PROGRAMS:
        found = shutil.which(PROGRAMS[name])
        if found is None:
            continue
        program = Path(found)
        real = program.resolve()
        if real.name != PROGRAMS[name] and (real.parent / PROGRAMS[name]).is_file():
            program = real.parent / PROGRAMS[name]
        return name, program
    if kind:
        raise BrokerError(f"{PROGRAMS[kind]} is not on PATH")
    raise BrokerError(f"neither {' nor '.join(PROGRAMS.values())} is on PATH")


def plan(mode: Mode, probe: Probe, kind: str | None) -> Plan | None:
    """Whether this run needs a private broker, and which; checks the probe otherwise.

    Only a broker that is not there at all (connection refused) is replaced: one that
    refuses the credentials or never answers is reported, as before.
    """
    broker = probe.broker
    if broker is not None and mode is Mode.FORCE:
        try:
            return Plan(executable(kind)[0], "--private-broker")
        except BrokerError as exc:
            what = f"--private-broker-kind {kind}" if kind else "--private-broker"
            raise BrokerError(f"{what}: {exc}") from None
    try:
        probe.check()
    except BrokerUnreachable:
        if broker is None or mode is Mode.OFF:
            raise
    else:
        return None
    reason = f"no broker at {broker.masked}"
    try:
        return Plan(executable(kind)[0], reason)
    except BrokerError as exc:
        raise BrokerError(
            f"{reason} (connection refused), and no private one to start: {exc} (install "
            "one, or point --broker-url / ENVBISECT_BROKER_URL at a broker)"
        ) from None


def check_client(kind: str, good: Collection[str]) -> None:
    """Raise :class:`InputError` when the good set (in every trial env) lacks the package
    its worker needs to reach a private broker of this kind: every trial would crash."""
    client = CLIENTS[kind]
    if client not in good:
        others = " or ".join(k for k in PROGRAMS if k != kind)
        raise InputError(
            f"a private {kind} broker needs the {client} package in every trial env, and the "
            f"good set has none: add it (dramatiq[{kind}]), or choose --private-broker-kind "
            f"{others}"
        )


class PrivateBroker:
    """One private RabbitMQ or Redis: :meth:`start` it (or :meth:`start_soon` and
    :meth:`wait`), :meth:`stop` it — from any thread, at any time, as often as need be."""

    def __init__(self, token: str) -> None:
        self.token = token  #: its processes' run token
        self.server = ""  #: e.g. ``RabbitMQ 3.12.1``, once it answers
        self.address = ""  #: ``127.0.0.1:PORT``, once it answers
        self.client: BrokerClient | None = None  #: a client that reached it
        self._lock = threading.Lock()
        self._stopped = False
        self._child: processes.Child | None = None
        self._directory: Path | None = None
        self._booting: Future[str] | None = None
        self._booter: ThreadPoolExecutor | None = None

    def start(self, kind: str, directory: Path) -> str:
        """Start a broker of this kind with its files in ``directory`` (made here); its URL
        once it answers. Raises :class:`BrokerError` when it does not start."""
        name, program = executable(kind)
        try:
            for _ in range(_ATTEMPTS):
                try:
                    return self._start(name, program, directory)
                except _PortTaken:
                    self._halt()
            raise BrokerError(
                f"could not start a private {name}: the ports it was given were taken "
                f"{_ATTEMPTS} times"
            )
        except BaseException:
            self._remove()
            raise

    def start_soon(self, kind: str, directory: Path) -> None:
        """:meth:`start` on a thread of its own (RabbitMQ takes seconds to boot)."""
        self._booter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envbisect-broker")
        self._booting = self._booter.submit(self.start, kind, directory)

    def wait(self, timeout: float | None) -> BrokerClient:
        """A client of the broker :meth:`start_soon` started, once it answers. Raises
        :class:`BrokerError` when it did not start, :class:`TimeoutError` after ``timeout``."""
        assert self._booting is not None, "start_soon() first"
        self._booting.result(timeout)
        assert self.client is not None
        return self.client

    def stop(self) -> None:
        """Kill every process of it (by group, then by token) and remove its directory."""
        with self._lock:
            self._stopped = True
        self._remove()
        if self._booter is not None:
            self._booter.shutdown(wait=True)  # a start under way ends as soon as it sees

    def _start(self, kind: str, program: Path, directory: Path) -> str:
        password = secrets.token_hex(16)
        KNOWN_SECRETS.add(password)  # masked verbatim in whatever quotes it
        port, *more = _free_ports(3 if kind == "rabbitmq" else 1)
        with self._lock:
            if self._stopped:
                raise BrokerError("the private broker was stopped before it answered")
            shutil.rmtree(directory, ignore_errors=True)  # a previous attempt's
            directory.mkdir(mode=0o700)
            self._directory = directory
            env = _environ(self.token)
            if kind == "rabbitmq":
                argv = [str(program)]
                env |= _rabbitmq_files(directory, self.token, port, more, password)
                url = f"amqp://{_USER}:{password}@127.0.0.1:{port}/"
            else:
                config = _redis_config(directory, program, password)
                argv = [str(program), str(config), "--port", str(port), "--bind", "127.0.0.1"]
                argv += ["--dir", str(directory)]
                url = f"redis://:{password}@127.0.0.1:{port}/0"
            log = directory / "server.log"
            # Under a parent that reaps its orphans (see envbisect.brokers.reaper).
            argv = [sys.executable, "-I", "-m", "envbisect.brokers.reaper", *argv]
            child = processes.Child(argv, env=env, cwd=directory, output=log, service=True)
            self._child = child
        client = connect(url)
        deadline = time.monotonic() + BOOT_LIMIT
        while True:
            status = child.wait(0.1)
            if self._stopped:
                raise BrokerError("the private broker was stopped before it answered")
            if status is not None:
                output = log.read_text(errors="replace") if log.exists() else ""
                if any(sign in output.lower() for sign in _PORT_TAKEN):
                    raise _PortTaken
                raise BrokerError(
                    f"could not start a private {kind}: {program} exited with status {status}"
                    f": {_reason(output)}"
                )
            if _listening(port):
                with contextlib.suppress(BrokerError):
                    client.check()
                    break
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"could not start a private {kind}: it did not answer within {BOOT_LIMIT:.0f} s"
                )
        self.server, self.address, self.client = client.server, f"127.0.0.1:{port}", client
        return url

    def _remove(self) -> None:
        """Its processes and its directory."""
        self._halt()
        with self._lock:
            directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _halt(self) -> None:
        """Kill its process group, and the groups of its processes that left it (epmd,
        Erlang's port programs) as found by the token, before and after; reap them all."""
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return
        # Looked for first: once the server is gone they exit by themselves, and an exited
        # process no longer shows its token. Nothing of it is kept: no graceful shutdown.
        groups = self._groups()
        child.stop(grace=0.0)
        processes.kill_groups(groups | self._groups())
        deadline = time.monotonic() + 5.0  # one may still have been forking
        while processes.kill_stragglers(self.token) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _groups(self) -> set[int]:
        groups = set()
        for pid in procfs.processes_with_token(self.token):
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        return groups


class _PortTaken(Exception):
    """A port picked as free was taken before the server bound it."""


def _free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (all held at once, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _environ(token: str) -> dict[str, str]:
    """The user's environment without their RabbitMQ/Erlang settings, with the run's token."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("RABBITMQ_", "ERL_"))
    }
    env[procfs.RUN_TOKEN_VAR] = token
    return env


def _rabbitmq_files(
    directory: Path, token: str, port: int, more: list[int], password: str
) -> dict[str, str]:
    """Write the node's config files; the variables that point it at them and at its ports."""
    dist_port, epmd_port = more
    home = directory / "home"  # Erlang writes its cookie here, not in the user's home
    home.mkdir()
    (directory / "enabled_plugins").write_text("[].\n")
    (directory / "env.conf").write_text("")  # not the system's rabbitmq-env.conf
    (directory / "rabbitmq.conf").write_text(
        f"listeners.tcp.1 = 127.0.0.1:{port}\ndefault_user = {_USER}\ndefault_pass = {password}\n"
    )
    return {
        "HOME": str(home),
        "RABBITMQ_NODENAME": f"envbisect-{token}@localhost",
        "RABBITMQ_CONF_ENV_FILE": str(directory / "env.conf"),
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
        # Not the system's /etc/rabbitmq/conf.d/*.conf (a listener on 5672, say) nor its motd.
        "RABBITMQ_CONFIG_FILES": str(directory / "conf.d" / "*.conf"),
        "RABBITMQ_MOTD_FILE": str(directory / "motd"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }


def _redis_config(directory: Path, program: Path, password: str) -> Path:
    """The server's config: no persistence, the password (never on a command line, which
    every local user can read), and — where the server can — its environment left
    readable: a process title would overwrite it, and the run's token with it."""
    lines = [f"requirepass {password}", 'save ""', "appendonly no", "protected-mode yes"]
    version = processes.run([str(program), "--version"], log=directory / "version", timeout=60)
    found = re.search(r"\bv=(\d+\.\d+)", version.output)
    if found and Version(found[1]) >= Version("6.2"):
        lines.append("set-proc-title no")
    config = directory / "redis.conf"
    config.write_text("\n".join(lines) + "\n")
    return config


def _reason(output: str) -> str:
    """The last line of a server's output that says something (not Erlang's crash-dump
    notice), passwords masked."""
    lines = [line.strip() for line in mask_urls(output).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Crash dump is being written")]
    return said[-1][-300:] if said else "no output"
