"""An agent's wheels: fetched over HTTP once, checked by SHA-256, kept by content.

A wheel named by (filename, sha256) lives at ``<root>/<sha256[:2]>/<sha256>/<filename>``.
The first fetch downloads it into a hidden partial file beside it, hashing as it
writes; only a file whose digest matches is renamed into place (atomically), so a
file under its final name is always whole and verified. A lock per digest makes
concurrent agents on one machine wait for the first download instead of repeating
it; a partial file found under the lock is a dead download's and is removed.
URLs are printed with their password, path token and query masked.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from envbisect.errors import EnvironmentBuildError
from envbisect.masking import mask_url_path, mask_urls
from envbisect.wheelset import WheelRef, WheelSet

CHUNK = 1024 * 1024
# Downloads of one set at once: small wheels cost a connection and an fsync each, not bandwidth.
FETCHES_AT_ONCE = 4
PARTIAL_SUFFIX = ".partial"


class WheelStore:
    """Content-addressed wheels under ``root`` (e.g. the agent's ``--cache-dir``/wheels).

    ``timeout`` bounds each network operation (connect, every read), ``max_seconds`` a
    whole download.
    """

    def __init__(self, root: Path, *, timeout: float = 30.0, max_seconds: float = 1800.0) -> None:
        self.root = root
        self.timeout = timeout
        self.max_seconds = max_seconds

    def path_of(self, wheel: WheelRef) -> Path:
        """Where ``wheel`` is (or will be) kept."""
        return self.root / wheel.sha256[:2] / wheel.sha256 / wheel.filename

    def fetch(self, wheel: WheelRef, url: str) -> Path:
        """The local, verified copy of ``wheel``, downloaded from ``url`` unless kept already."""
        final = self.path_of(wheel)
        if final.is_file():
            return final
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with _locked(final.parent / ".lock"):
                if final.is_file():  # another agent fetched it while we waited
                    return final
                for stale in final.parent.glob(f".*{PARTIAL_SUFFIX}"):
                    stale.unlink()
                self._download(wheel, url, final)
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(f"{wheel.filename}: storing", exc) from exc
        return final

    def fetch_set(self, wheels: WheelSet) -> list[Path]:
        """The local copies of every wheel of the set, in its order (a few fetched at once)."""
        with ThreadPoolExecutor(max_workers=FETCHES_AT_ONCE) as pool:
            return list(pool.map(lambda wheel: self.fetch(wheel, wheels.url(wheel)), wheels.wheels))

    def _download(self, wheel: WheelRef, url: str, final: Path) -> None:
        shown = mask_url_path(url)
        fd, partial = tempfile.mkstemp(dir=final.parent, prefix=".", suffix=PARTIAL_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    digest = self._copy(url, out, deadline=time.monotonic() + self.max_seconds)
                except _Overdue:
                    reason = f"not done after {self.max_seconds:g} s"
                    raise self._error(wheel, shown, reason) from None
                except urllib.error.HTTPError as exc:
                    raise self._error(wheel, shown, f"HTTP {exc.code} {exc.reason}") from None
                except (
                    urllib.error.URLError,
                    http.client.HTTPException,
                    ConnectionError,
                    TimeoutError,
                ) as exc:  # any other OSError is the disk's: reported by fetch as storing
                    raise self._error(wheel, shown, self._reason(exc)) from None
                out.flush()
                os.fsync(out.fileno())
            if digest != wheel.sha256:
                raise EnvironmentBuildError(
                    f"{wheel.filename}: sha256 mismatch: expected {wheel.sha256}, "
                    f"got {digest} from {shown}; not kept"
                )
            os.replace(partial, final)
        finally:
            Path(partial).unlink(missing_ok=True)

    def _copy(self, url: str, out: BinaryIO, *, deadline: float) -> str:
        """Download ``url`` into ``out``; the SHA-256 of what came."""
        digest = hashlib.sha256()
        received = 0
        with urllib.request.urlopen(_request(url), timeout=self.timeout) as response:
            # read1: one read of the socket at most, so a trickle cannot outlast the deadline
            while chunk := response.read1(CHUNK):
                if time.monotonic() > deadline:
                    raise _Overdue
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
            if response.length:  # what the Content-Length promised and never came
                total = received + response.length
                raise ConnectionError(f"connection closed after {received} of {total} bytes")
        if time.monotonic() > deadline:
            raise _Overdue
        return digest.hexdigest()

    def _error(self, wheel: WheelRef, shown: str, reason: str) -> EnvironmentBuildError:
        return EnvironmentBuildError(f"{wheel.filename}: cannot fetch {shown}: {mask_urls(reason)}")

    def _reason(self, exc: Exception) -> str:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            return f"timed out (no answer within {self.timeout:g} s)"
        if isinstance(reason, OSError) and reason.strerror:
            return reason.strerror
        return str(reason) or type(reason).__name__


class _Overdue(Exception):
    """A download went past ``max_seconds``."""


def _request(url: str) -> urllib.request.Request:
    """A GET of ``url`` with its ``user:password@`` sent as Basic auth (urllib sends none)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return urllib.request.Request(url)
    netloc = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    return request


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (released when the holder dies, too)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
