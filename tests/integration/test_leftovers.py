"""What a run leaves when it cannot clean up as usual: a removal that fails, a hard kill.

Each case runs ``python -m envbisect run …`` as a real subprocess against the real
RabbitMQ and real envs, and looks at what is left from outside (the run's token
names its processes, queues and temp dir).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envbisect.brokers import connect
from envbisect.errors import BrokerError, ExitCode

from ..conftest import ROOT, debris, envbisect_tempdirs

MINIMAL = ROOT / "fixtures" / "minimal.txt"

pytestmark = pytest.mark.integration


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == str(path) or point.startswith(f"{path}/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def test_a_clean_up_that_fails_is_said_and_the_verdict_stands(
    tmp_path: Path, cache_dir: Path, fixture_env: Callable[[str], Path]
) -> None:
    # Every trial's probe mounts a tmpfs in its scratch dir, inside the run's temp dir:
    # removing the temp dir then really fails (EBUSY), whatever removal code runs.
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    report = tmp_path / "report.json"
    probe = (
        "mkdir -p busy && mount -t tmpfs -o size=1m envbisect-test busy && python -c 'import pika'"
    )
    argv = [sys.executable, "-m", "envbisect", "run", "--bad", str(fixture_env("crash"))]
    argv += ["--good", str(MINIMAL), "--probe-cmd", probe, "--cache-dir", str(cache_dir)]
    argv += ["--json", str(report)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmpdir)},
    )
    try:
        stdout, stderr = proc.communicate(timeout=600)
        assert mounts_below(tmpdir), "no probe mounted anything: the test proves nothing"
        left = envbisect_tempdirs(proc.pid, tmpdir)
    finally:
        for point in mounts_below(tmpdir):
            subprocess.run(["umount", "-l", point], check=True)
    assert "Traceback" not in stderr
    assert proc.returncode == ExitCode.OK, stderr
    data = json.loads(report.read_text())
    assert data["verdict"] == "culprit-found"
    assert [c["name"] for c in data["culprits"]] == ["pika-autotrace"]
    (workspace,) = left
    said = [line for line in stderr.splitlines() if "clean-up failed" in line]
    assert len(said) == 1, stderr
    assert f"{tmpdir / workspace}" in said[0]
    assert "busy" in said[0].lower()
    assert data["cleanup_errors"] and str(tmpdir / workspace) in data["cleanup_errors"][0]
    assert "clean-up failed" in stdout, "the report says it too"
    assert debris(proc.pid)["processes"] == []


# -- the broker, briefly away ------------------------------------------------------------------


class FlakyProxy:
    """A TCP proxy to RabbitMQ that can drop every connection (new and open) for a while."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.away = threading.Event()
        self.accepted_while_away = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.away.is_set():
                self.accepted_while_away += 1
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def go_away(self) -> None:
        self.away.set()
        with self._lock:
            for end in self._open:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def come_back(self) -> None:
        self.away.clear()

    def close(self) -> None:
        self.go_away()
        self.listener.close()


@pytest.fixture
def proxy(broker_url: str) -> Iterator[FlakyProxy]:
    parts = urllib.parse.urlsplit(broker_url)
    flaky = FlakyProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    try:
        yield flaky
    finally:
        flaky.close()


def test_queue_deletion_waits_out_a_broker_that_is_briefly_away(
    broker_url: str, proxy: FlakyProxy
) -> None:
    direct = connect(broker_url)
    parts = urllib.parse.urlsplit(broker_url)
    via_proxy = connect(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}").geturl())
    queue = f"envbisect_test-{os.getpid()}x{secrets.token_hex(3)}"
    via_proxy.send(queue, "envbisect_probe", (), {}, "retry-test")
    try:
        assert direct.state(queue) is not None
        proxy.go_away()
        threading.Timer(3.0, proxy.come_back).start()
        removed = via_proxy.delete(queue)
        assert proxy.accepted_while_away, "the broker was never away: the test proves nothing"
        assert removed == 3  # the queue, its .DQ and its .XQ
        assert direct.state(queue) is None
    finally:
        direct.delete(queue)


def test_queue_deletion_gives_up_on_a_broker_that_stays_away(
    broker_url: str, proxy: FlakyProxy
) -> None:
    parts = urllib.parse.urlsplit(broker_url)
    via_proxy = connect(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}").geturl())
    proxy.go_away()
    with pytest.raises(BrokerError, match="cannot reach RabbitMQ"):
        via_proxy.delete("envbisect_never-declared", patience=2.0)
    assert proxy.accepted_while_away >= 2, "it tried more than once"
