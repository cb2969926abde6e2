"""Wheels over the network: the coordinator's wheel server and an agent's wheel store.

Real HTTP, real files. "Another machine" is a network namespace joined to this one
by a veth pair only (as root), else this machine reached through a non-loopback
address; either way the agent is a separate process with its own HOME and cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from urllib.request import urlopen

import pytest
from packaging.utils import parse_wheel_filename

from envbisect.errors import EnvironmentBuildError, InputError
from envbisect.wheelcache import WheelStore
from envbisect.wheelserver import ListenAddress, WheelServer
from envbisect.wheelset import WheelRef, WheelSet

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
LOOPBACK = ListenAddress("127.0.0.1", 0)

# An agent: reads a wheel set (JSON) on stdin, fetches it into its store, prints what it got.
AGENT = """
import json, re, sys
from pathlib import Path
from envbisect.errors import EnvironmentBuildError
from envbisect.wheelcache import WheelStore
from envbisect.wheelset import WheelSet

wheels = WheelSet.from_json(json.load(sys.stdin))
try:
    paths = WheelStore(Path(sys.argv[1])).fetch_set(wheels)
except EnvironmentBuildError as exc:
    sys.exit(f"agent: {exc}")
# VmHWM, not ru_maxrss: that one keeps the forking parent's resident size across exec.
rss = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1])
print(json.dumps({"paths": [str(p) for p in paths], "max_rss_kib": rss}))
"""


@dataclass(frozen=True)
class Machine:
    """Where an agent runs: ``argv`` prefixes its command, ``our_address`` reaches us from there."""

    argv: tuple[str, ...]
    our_address: str


@pytest.fixture(scope="module")
def other_machine() -> Iterator[Machine]:
    """A network namespace whose only link to this machine is a veth pair (needs root)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        address = non_loopback_address()
        if address is None:
            pytest.skip("no network namespace (needs root) and no non-loopback address")
        yield Machine((), address)
        return
    name = f"ebw{os.getpid()}"
    block = os.getpid() % (256 * 64)  # a /30 of 10.251.0.0/16 of our own
    ours = f"10.251.{block // 64}.{block % 64 * 4 + 1}"
    theirs = f"10.251.{block // 64}.{block % 64 * 4 + 2}"
    steps = [
        ["netns", "add", name],
        ["link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b"],
        ["link", "set", f"{name}b", "netns", name],
        ["addr", "add", f"{ours}/30", "dev", f"{name}a"],
        ["link", "set", f"{name}a", "up"],
        ["-n", name, "addr", "add", f"{theirs}/30", "dev", f"{name}b"],
        ["-n", name, "link", "set", f"{name}b", "up"],
        ["-n", name, "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            subprocess.run(["ip", *step], check=True, capture_output=True)
        yield Machine(("ip", "netns", "exec", name), ours)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{name}a"], capture_output=True)


def non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


THIS_MACHINE = Machine((), "127.0.0.1")


def wheel_file(folder: Path, filename: str, size: int = 64 * 1024) -> Path:
    """A file named like a wheel, of random content (the transfer does not look inside)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    block = os.urandom(min(size, MiB))
    with path.open("wb") as out:
        for start in range(0, size, len(block)):
            out.write(block[: size - start])
    return path


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def token_of(server: WheelServer) -> str:
    return urlsplit(server.base_url).path.strip("/")


def start_agent(machine: Machine, cache: Path) -> subprocess.Popen[str]:
    home = cache.parent / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    return subprocess.Popen(
        [*machine.argv, sys.executable, "-c", AGENT, str(cache)],
        env=env,
        cwd=home,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_agent(agent: subprocess.Popen[str], wheels: WheelSet | None = None) -> dict[str, Any]:
    sent = json.dumps(wheels.to_json()) if wheels is not None else None
    out, err = agent.communicate(sent, timeout=300)
    assert agent.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    result["output"] = out + err
    return result


def run_agent(machine: Machine, wheels: WheelSet, cache: Path) -> dict[str, Any]:
    return finish_agent(start_agent(machine, cache), wheels)


def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """Send ``GET target`` byte for byte (no client-side normalization); status and body."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as conn:
        conn.sendall(f"GET {target} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Anchors(HTMLParser):
    """The (href, text) of every anchor of a page."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self._href: str | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.found.append((self._href, data))
            self._href = None


def stored_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.mark.parametrize("bind", ["its-address", "every-address"])
def test_a_wheel_set_reaches_another_machine_and_only_once(
    tmp_path: Path, other_machine: Machine, bind: str
) -> None:
    files = [
        wheel_file(tmp_path / "release", "pika-1.3.2-py3-none-any.whl"),
        # the bad env's locally modified pika: same file name, other content
        wheel_file(tmp_path / "repacked", "pika-1.3.2-py3-none-any.whl"),
        wheel_file(tmp_path / "release", "dramatiq-2.2.1-py3-none-any.whl", size=3 * MiB),
    ]
    if bind == "its-address":
        server = WheelServer(ListenAddress(other_machine.our_address, 0))
    else:
        server = WheelServer(ListenAddress("0.0.0.0", 0), advertise_host=other_machine.our_address)
    cache = tmp_path / "agent" / "cache"
    with server:
        wheels = server.wheel_set([server.add(path) for path in files])
        assert urlsplit(wheels.base_url).hostname == other_machine.our_address
        first = run_agent(other_machine, wheels, cache)
        assert [Path(p).read_bytes() for p in first["paths"]] == [p.read_bytes() for p in files]
        assert [Path(p).name for p in first["paths"]] == [p.name for p in files]
        assert server.stats.files == 3
        requests = server.stats.requests

        second = run_agent(other_machine, wheels, cache)
        assert second["paths"] == first["paths"]
        assert server.stats.requests == requests, "the second run downloaded again"
    assert token_of(server) not in first["output"] + second["output"]


def test_a_server_on_loopback_is_not_reachable_from_another_machine(
    tmp_path: Path, other_machine: Machine
) -> None:
    if not other_machine.argv:
        pytest.skip("needs a network namespace")
    with WheelServer(ListenAddress("127.0.0.1", 0)) as server:
        wheels = server.wheel_set([server.add(wheel_file(tmp_path, "a-1-py3-none-any.whl"))])
        agent = start_agent(other_machine, tmp_path / "cache")
        _, err = agent.communicate(json.dumps(wheels.to_json()), timeout=300)
    assert agent.returncode == 1
    assert "agent: a-1-py3-none-any.whl" in err and "Connection refused" in err
    assert token_of(server) not in err


def test_the_index_is_a_find_links_page_that_grows(tmp_path: Path, fixture_wheels: Path) -> None:
    some, other = sorted(fixture_wheels.glob("*.whl"))[:2]
    with WheelServer(LOOPBACK) as server:
        first = server.add(some)
        with urlopen(server.base_url, timeout=60) as response:
            assert response.headers.get_content_type() == "text/html"
            page = response.read().decode()
        expected = [(f"{first.sha256}/{quote(first.filename)}#sha256={first.sha256}", some.name)]
        assert Anchors(page).found == expected

        second = server.add(other)  # mid-run: a wheel fetched or repacked later
        with urlopen(server.base_url, timeout=60) as response:
            assert len(Anchors(response.read().decode()).found) == 2
        # pip, a real find-links client, reads the page and checks the hash fragment.
        name, version, *_ = parse_wheel_filename(second.filename)
        dest = tmp_path / "pip"
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-index"]
        subprocess.run(
            [*pip, "--find-links", server.base_url, "--dest", str(dest), f"{name}=={version}"],
            check=True,
            timeout=300,
        )
        assert (dest / other.name).read_bytes() == other.read_bytes()


def test_a_tampered_file_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    path = wheel_file(tmp_path / "served", "pika-1.3.2-py3-none-any.whl")
    cache = tmp_path / "cache"
    with WheelServer(LOOPBACK) as server:
        ref = server.add(path)
        tampered = bytearray(path.read_bytes())
        tampered[1000] ^= 0xFF
        path.write_bytes(tampered)
        wheels = server.wheel_set([ref])
        with pytest.raises(EnvironmentBuildError) as caught:
            WheelStore(cache).fetch(ref, wheels.url(ref))
    message = str(caught.value)
    assert ref.filename in message
    assert ref.sha256 in message
    assert hashlib.sha256(tampered).hexdigest() in message
    assert token_of(server) not in message
    assert stored_files(cache) == []


def test_a_wheel_in_the_store_is_not_fetched_again(tmp_path: Path) -> None:
    path = wheel_file(tmp_path / "served", "pika-1.3.2-py3-none-any.whl")
    store = WheelStore(tmp_path / "cache")
    with WheelServer(LOOPBACK) as server:
        ref = server.add(path)
        url = server.wheel_set([ref]).url(ref)
        got = store.fetch(ref, url)
        requests = server.stats.requests
        assert store.fetch(ref, url) == got
        assert server.stats.requests == requests
    assert got.name == ref.filename and sha256_of(got) == ref.sha256
    assert got.is_relative_to(tmp_path / "cache")


def test_a_dead_downloads_partial_file_is_removed(tmp_path: Path) -> None:
    path = wheel_file(tmp_path / "served", "pika-1.3.2-py3-none-any.whl")
    store = WheelStore(tmp_path / "cache")
    with WheelServer(LOOPBACK) as server:
        ref = server.add(path)
        slot = store.path_of(ref).parent
        slot.mkdir(parents=True)
        (slot / ".pika-1.3.2-py3-none-any.whl.x7k2.partial").write_bytes(b"half a whe")
        got = store.fetch(ref, server.wheel_set([ref]).url(ref))
    assert stored_files(tmp_path / "cache") == [ref.filename]
    assert got.read_bytes() == path.read_bytes()


def test_an_ipv6_address_is_served_and_advertised(tmp_path: Path) -> None:
    path = wheel_file(tmp_path / "served", "pika-1.3.2-py3-none-any.whl")
    with WheelServer(ListenAddress("::1", 0)) as server:
        ref = server.add(path)
        assert server.base_url.startswith("http://[::1]:")
        got = WheelStore(tmp_path / "cache").fetch(ref, server.wheel_set([ref]).url(ref))
    assert got.read_bytes() == path.read_bytes()


def test_only_paths_under_the_run_token_are_served(tmp_path: Path) -> None:
    path = wheel_file(tmp_path / "served", "pika-1.3.2-py3-none-any.whl")
    with WheelServer(LOOPBACK) as server:
        ref = server.add(path)
        token = token_of(server)
        other = secrets.token_urlsafe(len(token))[: len(token)]
        good = f"/{token}/{ref.sha256}/{ref.filename}"
        assert raw_get(server.base_url, good) == (200, path.read_bytes())
        for target in [
            "/",
            f"/{token}",
            f"/{other}/",
            f"/{other}/{ref.sha256}/{ref.filename}",
            f"/{token[:-1]}/{ref.sha256}/{ref.filename}",
            f"/{token}/{ref.filename}",
            f"/{token}/{'b' * 64}/{ref.filename}",
            f"/{token}/{ref.sha256}/",
            "/favicon.ico",
        ]:
            status, body = raw_get(server.base_url, target)
            assert status == 404, target
            assert ref.filename.encode() not in body, target
        wrong = WheelSet(f"{server.base_url.removesuffix(f'{token}/')}{other}/", (ref,))
        with pytest.raises(EnvironmentBuildError, match="404") as caught:
            WheelStore(tmp_path / "cache").fetch(ref, wrong.url(ref))
        assert other not in str(caught.value)


def test_traversal_attempts_are_refused(tmp_path: Path) -> None:
    served = tmp_path / "served"
    path = wheel_file(served, "pika-1.3.2-py3-none-any.whl")
    secret = b"not-for-agents " + secrets.token_hex(8).encode()
    (served / "secret.txt").write_bytes(secret)
    with WheelServer(LOOPBACK) as server:
        ref = server.add(path)
        token, sha, name = token_of(server), ref.sha256, ref.filename
        for target in [
            f"/{token}/../{token}/{sha}/{name}",
            f"/{token}/{sha}/../{sha}/{name}",
            f"/{token}/{sha}/secret.txt",
            f"/{token}/{sha}/./secret.txt",
            f"/{token}/{sha}/{name}/../secret.txt",
            f"/{token}/{sha}/%2e%2e/secret.txt",
            f"/{token}/{sha}/..%2fsecret.txt",
            f"/{token}/{sha}/..%5csecret.txt",
            f"/{token}/{served / 'secret.txt'}",
            f"/{token}/{quote(str(served / 'secret.txt'), safe='')}",
            f"/{token}/{sha}/{name}%00secret.txt",
            f"/{token}/../../../../../../etc/passwd",
            f"/{token}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            f"//{token}/{sha}/{quote(str(served), safe='')}%2fsecret.txt",
            f"http://evil.example/{token}/{sha}/secret.txt",
        ]:
            status, body = raw_get(server.base_url, target)
            assert status in (400, 404), target
            assert secret not in body and b"root:" not in body, target


def test_a_large_file_streams_with_bounded_memory(tmp_path: Path) -> None:
    size = 192 * MiB
    big = wheel_file(tmp_path / "served", "big_pkg-1.0-cp311-cp311-linux_x86_64.whl", size)
    cache = tmp_path / "agent" / "cache"
    with WheelServer(LOOPBACK) as server:
        wheels = server.wheel_set([server.add(big)])
        tracemalloc.start()
        try:
            result = run_agent(THIS_MACHINE, wheels, cache)
            _, server_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    (got,) = result["paths"]
    assert sha256_of(Path(got)) == sha256_of(big)
    assert server_peak < 16 * MiB, f"the server held {server_peak / MiB:.0f} MiB"
    assert result["max_rss_kib"] * 1024 < 96 * MiB, (
        f"the agent peaked at {result['max_rss_kib']} KiB"
    )


def open_sockets() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                found.add(target)
    return found


def test_stopping_leaves_no_thread_and_no_socket(tmp_path: Path) -> None:
    big = wheel_file(tmp_path / "served", "big_pkg-1.0-py3-none-any.whl", 64 * MiB)
    threads, sockets = set(threading.enumerate()), open_sockets()
    server = WheelServer(LOOPBACK)
    ref = server.add(big)
    server.start()
    parts = urlsplit(server.base_url)
    address = (parts.hostname, parts.port)
    idle = socket.create_connection(address, timeout=60)  # connected, never asks
    stalled = socket.create_connection(address, timeout=60)  # asks, then stops reading
    stalled.sendall(
        f"GET /{token_of(server)}/{ref.sha256}/{ref.filename} HTTP/1.0\r\n\r\n".encode()
    )
    assert stalled.recv(4096).startswith(b"HTTP/1.0 200")
    server.stop()
    assert set(threading.enumerate()) == threads
    idle.close()
    stalled.close()
    assert open_sockets() == sockets
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=60)
    server.stop()  # a second stop is harmless


def test_agents_sharing_a_cache_download_each_file_once(tmp_path: Path) -> None:
    files = [
        wheel_file(tmp_path / "served", f"pkg{i}-1.0-py3-none-any.whl", 32 * MiB) for i in range(3)
    ]
    cache = tmp_path / "shared-cache"
    with WheelServer(LOOPBACK) as server:
        wheels = server.wheel_set([server.add(path) for path in files])
        # All agents are up before any gets its job, so their downloads overlap.
        agents = [start_agent(THIS_MACHINE, cache) for _ in range(4)]
        job = json.dumps(wheels.to_json())
        for agent in agents:
            assert agent.stdin is not None
            agent.stdin.write(job)
            agent.stdin.close()
            agent.stdin = None
        results = [finish_agent(agent) for agent in agents]
        assert server.stats.files == 3
    assert all(result["paths"] == results[0]["paths"] for result in results)
    assert [sha256_of(Path(p)) for p in results[0]["paths"]] == [sha256_of(p) for p in files]
    assert stored_files(cache) == sorted(p.name for p in files), "a partial file was left"


def test_a_server_that_never_answers_is_given_up(tmp_path: Path) -> None:
    ref = WheelRef("pika-1.3.2-py3-none-any.whl", "a" * 64)
    # Listening, never accepting: the kernel completes the handshake, nobody answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/t0ken/{ref.sha256}/{ref.filename}"
        with pytest.raises(EnvironmentBuildError, match="timed out") as caught:
            WheelStore(tmp_path / "cache", timeout=1.0).fetch(ref, url)
    assert "t0ken" not in str(caught.value)
    assert stored_files(tmp_path / "cache") == []


@contextlib.contextmanager
def one_answer_server(body: bytes, *, trickle: bool = False) -> Iterator[str]:
    """A server that answers one request saying 100 MB come, then sends ``body`` and closes;
    or, with ``trickle``, sends one byte a tenth of a second until the client gives up.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000000\r\n\r\n" + body)
            while trickle and not stop.wait(0.1):
                conn.sendall(b"x")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=60)
        listener.close()


def test_a_download_cut_short_is_refused(tmp_path: Path) -> None:
    ref = WheelRef("pika-1.3.2-py3-none-any.whl", "a" * 64)
    body = b"PK\x03\x04 and then nothing"
    cut = f"closed after {len(body)} of 100000000"
    with one_answer_server(body) as base, pytest.raises(EnvironmentBuildError, match=cut):
        WheelStore(tmp_path / "cache").fetch(ref, f"{base}/t0ken/{ref.sha256}/{ref.filename}")
    assert stored_files(tmp_path / "cache") == []


def test_a_download_that_never_ends_is_given_up(tmp_path: Path) -> None:
    ref = WheelRef("pika-1.3.2-py3-none-any.whl", "a" * 64)
    store = WheelStore(tmp_path / "cache", timeout=30.0, max_seconds=1.0)
    with one_answer_server(b"", trickle=True) as base:
        started = time.monotonic()
        with pytest.raises(EnvironmentBuildError, match="not done after 1 s"):
            store.fetch(ref, f"{base}/t0ken/{ref.sha256}/{ref.filename}")
    assert time.monotonic() - started < 60  # bounded, far below the per-read timeout's reach
    assert stored_files(tmp_path / "cache") == []


class BasicAuthHandler(BaseHTTPRequestHandler):
    """Serves ``payload`` to ``agent:s3cret`` only (a coordinator behind a proxy with a login)."""

    payload = b""
    expected = "Basic YWdlbnQ6czNjcmV0"  # agent:s3cret

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_error(401)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_credentials_in_the_url_are_sent_and_never_printed(tmp_path: Path) -> None:
    BasicAuthHandler.payload = os.urandom(4096)
    ref = WheelRef(
        "pika-1.3.2-py3-none-any.whl", hashlib.sha256(BasicAuthHandler.payload).hexdigest()
    )
    with ThreadingHTTPServer(("127.0.0.1", 0), BasicAuthHandler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever)
        thread.start()
        try:
            base = f"127.0.0.1:{httpd.server_address[1]}/t0ken/"
            good = WheelSet(f"http://agent:s3cret@{base}", (ref,))
            got = WheelStore(tmp_path / "cache").fetch(ref, good.url(ref))
            assert got.read_bytes() == BasicAuthHandler.payload
            bad = WheelSet(f"http://agent:wr0ng-pw@{base}", (ref,))
            with pytest.raises(EnvironmentBuildError, match="401") as caught:
                WheelStore(tmp_path / "other-cache").fetch(ref, bad.url(ref))
        finally:
            httpd.shutdown()
            thread.join(timeout=60)
    message = str(caught.value)
    assert "wr0ng-pw" not in message and "t0ken" not in message
    assert "agent:***@127.0.0.1" in message


def test_an_address_in_use_is_one_clear_error() -> None:
    with WheelServer(LOOPBACK) as first:
        port = urlsplit(first.base_url).port
        assert port is not None
        with pytest.raises(InputError, match=f"127.0.0.1:{port}.*in use"):
            WheelServer(ListenAddress("127.0.0.1", port)).start()


def test_a_wheel_set_names_only_registered_wheels(tmp_path: Path) -> None:
    path = wheel_file(tmp_path, "pika-1.3.2-py3-none-any.whl")
    with WheelServer(LOOPBACK) as server:
        ref = server.add(path)
        assert server.add(path) == ref  # registering again is harmless
        stranger = WheelRef("pika-1.3.2-py3-none-any.whl", "c" * 64)
        with pytest.raises(ValueError, match="not served"):
            server.wheel_set([ref, stranger])
