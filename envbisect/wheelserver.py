"""The coordinator's wheel server: a run's wheels over HTTP, for agents on other machines.

For the run's lifetime a thread serves the registered wheel files (and nothing else)
under a random per-run path token: ``/<token>/`` is a find-links page (PEP 503 anchors
with ``#sha256=`` fragments) and ``/<token>/<sha256>/<filename>`` each file; any other
path is 404. Requests are matched against the registered files, never mapped onto the
file system, so no path can reach another file. Files are streamed with ``sendfile``.

Where it listens and what it advertises are two things: bound to one address
(``10.0.0.5:0``), it advertises that address; bound to every address (``0.0.0.0`` or
``::``), it cannot know which of them the agents reach (a NAT, a container, a DNS
name), so the caller must name the host to advertise.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import os
import secrets
import socket
import socketserver
import sys
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from envbisect.errors import InputError
from envbisect.wheelset import WheelRef, WheelSet

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
# Seconds a connection may sit idle (a request not sent, a download not read) before the
# server drops it; stop() does not wait for it.
IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class ListenAddress:
    """Where the server listens: a host (an address, a name or a wildcard) and a port (0: any)."""

    host: str
    port: int


def parse_listen_address(text: str) -> ListenAddress:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a ListenAddress; InputError otherwise."""
    problem = f"not a HOST:PORT address to serve wheels on: {text!r}"
    try:
        parts = urllib.parse.urlsplit(f"//{text}")
        port = parts.port
    except ValueError:
        raise InputError(problem) from None
    if not parts.hostname or port is None or parts.netloc != text or "@" in text:
        raise InputError(problem)
    return ListenAddress(parts.hostname, port)


@dataclass(frozen=True)
class ServedStats:
    """What the server has done so far."""

    requests: int  #: every request, refused ones included
    files: int  #: wheel files sent in full
    bytes: int  #: bytes of wheel files sent


@dataclass(frozen=True)
class _Entry:
    ref: WheelRef
    path: Path


class _Catalog:
    """The served files, the token that guards them and the counts; shared by all threads."""

    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(24)
        self._entries: dict[str, _Entry] = {}  # by "<sha256>/<filename>"
        self._lock = threading.Lock()
        self._requests = self._files = self._bytes = 0

    def add(self, ref: WheelRef, path: Path) -> None:
        with self._lock:
            self._entries[f"{ref.sha256}/{ref.filename}"] = _Entry(ref, path)

    def has(self, ref: WheelRef) -> bool:
        with self._lock:
            return f"{ref.sha256}/{ref.filename}" in self._entries

    def under_token(self, request_path: str) -> str | None:
        """What follows ``/<token>/`` in a request path; None when it is not under the token."""
        token, slash, rest = request_path.removeprefix("/").partition("/")
        if not slash or not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        return rest

    def entry(self, relative_path: str) -> _Entry | None:
        """The file ``<sha256>/<filename>`` (percent-encoded or not) names, if it was added."""
        with self._lock:
            return self._entries.get(urllib.parse.unquote(relative_path))

    def index(self) -> bytes:
        """The find-links page: one anchor per file, with its digest as a fragment."""
        with self._lock:
            refs = sorted((e.ref for e in self._entries.values()), key=lambda r: r.filename)
        anchors = "".join(
            f'<a href="{html.escape(r.relative_url)}#sha256={r.sha256}">'
            f"{html.escape(r.filename)}</a><br>\n"
            for r in refs
        )
        return f"<!DOCTYPE html>\n<html><body>\n{anchors}</body></html>\n".encode()

    def count_request(self) -> None:
        with self._lock:
            self._requests += 1

    def count_file(self, size: int) -> None:
        with self._lock:
            self._files += 1
            self._bytes += size

    def stats(self) -> ServedStats:
        with self._lock:
            return ServedStats(self._requests, self._files, self._bytes)


class WheelServer:
    """Serves registered wheel files over HTTP under a per-run token, until stopped."""

    def __init__(self, listen: ListenAddress, *, advertise_host: str | None = None) -> None:
        if listen.host in WILDCARD_HOSTS and not advertise_host:
            raise InputError(
                f"serving wheels on {listen.host or '*'} binds every address of this machine: "
                "name the host agents reach it by"
            )
        self.listen = listen
        self.advertise_host = advertise_host or listen.host
        self._catalog = _Catalog()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> WheelRef:
        """Serve the wheel file at ``path`` (from now on, also while running); its reference."""
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        ref = WheelRef(path.name, digest)
        self._catalog.add(ref, path)
        return ref

    def wheel_set(self, refs: Iterable[WheelRef]) -> WheelSet:
        """The wire form of ``refs`` (each must have been added), for a trial job."""
        wheels = tuple(refs)
        strangers = [w.filename for w in wheels if not self._catalog.has(w)]
        if strangers:
            raise ValueError(f"not served: {', '.join(strangers)}")
        return WheelSet(self.base_url, wheels)

    @property
    def base_url(self) -> str:
        """The URL agents use: the find-links page, under which every file is (a secret)."""
        if self._httpd is None:
            raise RuntimeError("the wheel server is not running")
        host = self.advertise_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._httpd.server_address[1]}/{self._catalog.token}/"

    @property
    def stats(self) -> ServedStats:
        """Requests and files served so far."""
        return self._catalog.stats()

    def start(self) -> None:
        """Listen and serve in a thread; InputError when the address cannot be used."""
        family = socket.AF_INET6 if ":" in self.listen.host else socket.AF_INET
        try:
            httpd = _HTTPServer((self.listen.host, self.listen.port), family, self._catalog)
        except OSError as exc:
            where = f"{self.listen.host}:{self.listen.port}"
            raise InputError(f"cannot serve wheels on {where}: {exc.strerror or exc}") from None
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="envbisect-wheel-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: drop open connections, close every socket, join every thread."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        httpd.shutdown()  # the accept loop ends: no new connection
        httpd.drop_connections()  # downloads and idle connections end now, not at a timeout
        httpd.server_close()  # the listening socket; joins the request threads
        thread.join()
        self._thread = None

    def __enter__(self) -> WheelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _HTTPServer(ThreadingHTTPServer):
    # Request threads are joined by server_close(), and drop_connections() ends them first.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], family: int, catalog: _Catalog) -> None:
        self.address_family = family
        self.catalog = catalog
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN (a DNS query that may hang); unused.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Shut every open connection down, so the threads serving them return."""
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):  # already closed by the peer
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # An agent that goes away (or a connection stop() dropped) is no error of ours.
        if not isinstance(sys.exception(), OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = IDLE_TIMEOUT
    server_version = "envbisect-wheels"
    sys_version = ""

    def parse_request(self) -> bool:
        self.server.catalog.count_request()
        return super().parse_request()

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        catalog = self.server.catalog
        rest = catalog.under_token(urllib.parse.urlsplit(self.path).path)
        entry = catalog.entry(rest) if rest else None
        if rest == "":
            page = catalog.index()
            self._headers("text/html; charset=utf-8", len(page))
            if body:
                self.wfile.write(page)
        elif entry is not None:
            self._send_file(entry, body=body)
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _send_file(self, entry: _Entry, *, body: bool) -> None:
        try:
            handle = entry.path.open("rb")
        except OSError:  # gone since it was added
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self._headers("application/octet-stream", size)
            if body and self.connection.sendfile(handle) == size:
                self.server.catalog.count_file(size)

    def _headers(self, content_type: str, length: int) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a request line carries the run's token: never printed
