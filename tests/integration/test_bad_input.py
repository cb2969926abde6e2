"""Every bad input gets one line on stderr, a documented exit code, and no traceback.

Each case runs ``python -m envbisect run … --quiet`` as a real subprocess, so what
is checked is exactly what a user (or CI log) sees; each leaves no debris.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from envbisect.errors import ExitCode

from ..conftest import NO_DEBRIS, ROOT, debris

MINIMAL = ROOT / "fixtures" / "minimal.txt"

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str
    seconds: float
    pid: int


def envbisect(
    *args: str, cache_dir: Path, broker_url: str, env: dict[str, str] | None = None
) -> Ran:
    """Run envbisect as a subprocess; check it left nothing behind."""
    argv = [sys.executable, "-m", "envbisect", "run", *args, "--quiet"]
    if "--outcome-cache" not in args:
        argv.append("--no-cache")
    if "--cache-dir" not in args:
        argv += ["--cache-dir", str(cache_dir)]
    if "--broker-url" not in args:
        argv += ["--broker-url", broker_url]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    stdout, stderr = proc.communicate(timeout=300)
    ran = Ran(proc.returncode, stdout, stderr, time.monotonic() - started, proc.pid)
    assert debris(ran.pid) == NO_DEBRIS
    return ran


def one_error_line(ran: Ran, code: ExitCode) -> str:
    """The run failed with ``code`` and said why in exactly one line."""
    assert "Traceback" not in ran.stderr + ran.stdout
    assert ran.code == code, ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("envbisect: error: ")
    assert ran.stdout == ""
    return lines[0]


@pytest.fixture
def run(cache_dir: Path, broker_url: str, fixture_env: Callable[[str], Path]) -> Callable[..., Ran]:
    """``run(*args)``: envbisect with the healthy env as --bad unless args name one."""
    healthy = fixture_env("healthy")

    def call(*args: str, env: dict[str, str] | None = None) -> Ran:
        if "--bad" not in args:
            args = ("--bad", str(healthy), *args)
        if "--good" not in args:
            args = (*args, "--good", str(MINIMAL))
        return envbisect(*args, cache_dir=cache_dir, broker_url=broker_url, env=env)

    return call


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# -- paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["--bad", "--good"])
def test_missing_path(run: Callable[..., Ran], tmp_path: Path, side: str) -> None:
    missing = tmp_path / "nope"
    line = one_error_line(run(side, str(missing)), ExitCode.USAGE)
    assert line == f"envbisect: error: {missing}: no such file or directory"


@pytest.mark.parametrize("side", ["--bad", "--good"])
def test_directory_that_is_not_a_virtualenv(
    run: Callable[..., Ran], tmp_path: Path, side: str
) -> None:
    line = one_error_line(run(side, str(tmp_path)), ExitCode.USAGE)
    assert line.startswith(f"envbisect: error: {tmp_path}: ")
    assert "not a virtualenv" in line


def test_virtualenv_whose_interpreter_is_gone(run: Callable[..., Ran], tmp_path: Path) -> None:
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    for python in (env / "bin").glob("python*"):
        python.unlink()
    line = one_error_line(run("--bad", str(env)), ExitCode.USAGE)
    assert line == (
        f"envbisect: error: {env}: the virtualenv's interpreter is gone "
        f"({env}/bin/python does not exist)"
    )


# -- requirement files ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# nothing pinned yet\n\n"])
def test_empty_requirements(run: Callable[..., Ran], tmp_path: Path, text: str) -> None:
    good = write(tmp_path / "good.txt", text)
    line = one_error_line(run("--good", str(good)), ExitCode.USAGE)
    assert line == f"envbisect: error: {good}: no requirements in the file"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("dramatiq[rabbitmq]\npika >= 1.3 and not 2\n", "(line 2): Invalid requirement: "),
        ("dramatiq[rabbitmq]\n\n--frobnicate pika\n", "(line 3): Invalid requirement: "),
        (b"dramatiq[rabbitmq]\npika\xff\xfe\n", "(line 2): not text (utf-8 cannot decode"),
        ("dramatiq[rabbitmq]\n-r missing.txt\n", "Could not open requirements file"),
    ],
    ids=["syntax", "option", "binary", "include"],
)
def test_garbled_requirements(
    run: Callable[..., Ran], tmp_path: Path, text: str | bytes, says: str
) -> None:
    good = write(tmp_path / "good.txt", text)
    line = one_error_line(run("--good", str(good)), ExitCode.USAGE)
    assert line.startswith(f"envbisect: error: {good}")
    assert says in line


def test_unpinned_frozen_bad_set(run: Callable[..., Ran], tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.txt", "pika==1.4.4\ndramatiq\n")
    line = one_error_line(run("--bad", str(bad)), ExitCode.USAGE)
    assert line.startswith(f"envbisect: error: {bad} (line 2): a failing side in requirements form")
    assert "must be pinned like `pip freeze` output" in line


# -- resolving the good set (exit 7: the good env cannot be built) ------------------------


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("dramatiq[rabbitmq]\nenvbisect-no-such-package-zz\n", "(line 2)", "not found"),
        ("dramatiq[rabbitmq]\npika==9.9.9\n", "(line 2)", "no version of pika==9.9.9"),
        ("dramatiq[rabbitmq]==2.2.1\npika<1.0\n", "(lines 1, 2)", "unsatisfiable"),
    ],
    ids=["unknown-package", "unknown-version", "unresolvable"],
)
def test_good_set_that_cannot_be_resolved(
    run: Callable[..., Ran], tmp_path: Path, text: str, where: str, says: str
) -> None:
    good = write(tmp_path / "good.txt", text)
    line = one_error_line(run("--good", str(good)), ExitCode.ENVIRONMENT)
    assert line.startswith(f"envbisect: error: {good} {where}: the good set cannot be resolved")
    assert says in line


def test_needed_but_neither_in_the_bad_env_nor_on_the_index(
    run: Callable[..., Ran], tmp_path: Path
) -> None:
    # pika 1.3.0 exists on PyPI, but --offline keeps the index out: only the bad env's
    # own pika 1.4.4 is at hand. Deterministic, whatever the network or uv's cache.
    good = write(tmp_path / "good.txt", "dramatiq[rabbitmq]\npika==1.3.0\n")
    line = one_error_line(run("--good", str(good), "--offline"), ExitCode.ENVIRONMENT)
    assert line.startswith(
        f"envbisect: error: {good} (line 2): the good set needs what the bad env does not have, "
        "and --offline keeps the index out: "
    )
    assert "pika==1.3.0" in line


# -- the broker ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_unreachable_broker(run: Callable[..., Ran], scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}/"
    ran = run("--broker-url", url)
    line = one_error_line(ran, ExitCode.BROKER)
    assert "cannot reach" in line and url in line
    if scheme == "amqp":
        assert "connection refused" in line


def test_wrong_broker_credentials(run: Callable[..., Ran]) -> None:
    ran = run("--broker-url", "amqp://guest:not-the-password@127.0.0.1:5672/")
    line = one_error_line(ran, ExitCode.BROKER)
    assert line == (
        "envbisect: error: RabbitMQ at amqp://guest:***@127.0.0.1:5672/ refused the credentials"
    )
    assert "not-the-password" not in ran.stderr + ran.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("amqp://guest:sekrit@127.0.0.1:notaport/", "not a valid URL"),
        ("http://guest:sekrit@127.0.0.1:5672/", "unsupported scheme 'http'"),
    ],
)
def test_broker_url_that_cannot_be_one(run: Callable[..., Ran], url: str, says: str) -> None:
    ran = run("--broker-url", url)
    line = one_error_line(ran, ExitCode.USAGE)
    assert says in line and "guest:***@" in line
    assert "sekrit" not in ran.stderr


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP peer that accepts connections and never says a word: a broken broker."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_broker_that_accepts_and_never_answers(run: Callable[..., Ran], scheme: str) -> None:
    with silent_server() as port:
        ran = run("--broker-url", f"{scheme}://127.0.0.1:{port}/")
    line = one_error_line(ran, ExitCode.BROKER)
    assert "cannot reach" in line
    # Given up (a hang would run into communicate's 300 s), on a busy machine too.
    assert ran.seconds < 120, f"took {ran.seconds:.1f} s"


# -- the probe and the sides -----------------------------------------------------------------


def test_probe_cmd_that_does_not_exist(run: Callable[..., Ran]) -> None:
    ran = run("--probe-cmd", "envbisect-no-such-command --flag")
    line = one_error_line(ran, ExitCode.USAGE)
    assert line == (
        "envbisect: error: --probe-cmd 'envbisect-no-such-command --flag': "
        "command not found in the trial env"
    )


def test_good_set_that_already_fails(
    run: Callable[..., Ran], fixture_env: Callable[[str], Path]
) -> None:
    crash = str(fixture_env("crash"))
    ran = run("--bad", crash, "--good", crash)
    assert ran.code == ExitCode.GOOD_FAILS
    assert ran.stderr == ""  # --quiet: the verdict is the report, on stdout
    assert f"the good set already fails the probe: {crash}" in ran.stdout
    assert "Traceback" not in ran.stdout


def test_a_long_path_stays_on_one_line_in_a_log(
    run: Callable[..., Ran], fixture_env: Callable[[str], Path], tmp_path: Path
) -> None:
    # Off a terminal (CI logs, pipes) nothing is wrapped: whatever the checkout's path,
    # the verdict line with its path can be grepped.
    deep = tmp_path / ("a-checkout-in-a-long-directory-" * 8)
    deep.mkdir()
    crash = deep / "crash-env"
    crash.symlink_to(fixture_env("crash"), target_is_directory=True)
    assert len(str(crash)) > 200
    ran = run("--bad", str(crash), "--good", str(crash))
    assert ran.code == ExitCode.GOOD_FAILS
    assert f"the good set already fails the probe: {crash}" in ran.stdout.splitlines()


def test_bad_set_that_passes(run: Callable[..., Ran]) -> None:
    ran = run()  # the healthy env against the minimal set
    assert ran.code == ExitCode.BAD_PASSES
    assert ran.stderr == ""
    assert "the bad set passes the probe: nothing to bisect" in ran.stdout
    assert "Traceback" not in ran.stdout


# -- the machine -----------------------------------------------------------------------------


def mount_tmpfs(where: Path, options: str) -> bool:
    """Mount a tmpfs (root only); False if this machine does not allow it."""
    where.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "envbisect-test", str(where)],
        capture_output=True,
    )
    return done.returncode == 0


def test_cache_dir_below_a_file(run: Callable[..., Ran], tmp_path: Path) -> None:
    cache = write(tmp_path / "a-file", "") / "cache"
    line = one_error_line(run("--cache-dir", str(cache)), ExitCode.USAGE)
    assert line == f"envbisect: error: --cache-dir {cache}: not writable (Not a directory)"


def test_outcome_cache_below_a_file(run: Callable[..., Ran], tmp_path: Path) -> None:
    outcomes = write(tmp_path / "a-file", "") / "outcomes"
    ran = run("--outcome-cache", str(outcomes))
    line = one_error_line(ran, ExitCode.USAGE)
    assert line == f"envbisect: error: --outcome-cache {outcomes}: not writable (Not a directory)"


def test_cache_dir_that_is_read_only(run: Callable[..., Ran], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # root writes through file modes: a read-only file system is the honest test then.
    mounted = mount_tmpfs(cache, "ro,size=1m")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("cannot mount a read-only tmpfs here, and root ignores file modes")
        cache.chmod(0o500)
    try:
        line = one_error_line(run("--cache-dir", str(cache)), ExitCode.USAGE)
    finally:
        if mounted:
            subprocess.run(["umount", str(cache)], check=True)
    assert line.startswith(f"envbisect: error: --cache-dir {cache}: not writable (")


@pytest.mark.parametrize("size", ["1m", "8m"], ids=["no-env-fits", "fills-mid-run"])
def test_full_disk(
    run: Callable[..., Ran], tmp_path: Path, fixture_env: Callable[[str], Path], size: str
) -> None:
    # TMPDIR on a small tmpfs. Hard links cannot cross into it, so trial envs are
    # copies: with 1 MB not even the good env fits; with 8 MB the good env does and
    # the bad one (37 MB) does not, so the disk fills in whichever build, or probe,
    # comes next. Every way must end in one line, exit 7, and an empty TMPDIR.
    small = tmp_path / "small"
    if not mount_tmpfs(small, f"size={size}"):
        pytest.skip("cannot mount a tmpfs here (needs root); see README 'What envbisect leaves'")
    try:
        ran = run("--bad", str(fixture_env("stall")), env={"TMPDIR": str(small)})
        leftovers = sorted(p.name for p in small.iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=True)
    line = one_error_line(ran, ExitCode.ENVIRONMENT)
    assert "no space left on device" in line.lower()
    assert leftovers == []
