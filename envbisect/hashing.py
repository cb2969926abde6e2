"""Hash files as they are on disk: streamed, in parallel, remembered across runs.

Reading a live env means hashing every file of every distribution (~10k in a
service's tox env). Files are streamed through sha256 on a thread pool (hashlib
and file reads release the GIL), and each digest is remembered in a small SQLite
database under the cache dir, keyed by what ``stat`` says of the file (path,
size, mtime_ns, inode, ctime_ns): a later run reads only what changed. A file
written in the last few seconds is not remembered: another write within the
clock's resolution could leave its stat unchanged (git's "racy" problem).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20  #: bytes read at a time: memory stays flat whatever a file's size
THREADS = 8
RACY_NS = 2_000_000_000  #: files modified this recently are hashed but not remembered

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Stamp:
    """What ``stat`` says of a file: when it is unchanged, so is its content."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, result: os.stat_result) -> Stamp:
        return cls(result.st_size, result.st_mtime_ns, result.st_ino, result.st_ctime_ns)


@dataclass(frozen=True)
class Hashed:
    """A regular file's sha256 (hex) and its mode, as of one ``stat``."""

    sha256: str
    size: int
    mode: int


def chunks(path: Path) -> Iterator[bytes]:
    """The bytes of a file, :data:`CHUNK` at a time."""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    for chunk in chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


class FileHashes:
    """sha256 of files on disk, with a persistent cache (``database``; None: this run only)."""

    def __init__(self, database: Path | None) -> None:
        self.database = database
        self.read = 0  #: files read and hashed (not served from the cache)
        self.reused = 0  #: files whose digest the cache had
        self._lock = threading.Lock()

    def hash_files(self, paths: Iterable[Path]) -> dict[Path, Hashed]:
        """The digest of every path that is a regular file (symlinks followed); others absent."""
        wanted = list(dict.fromkeys(paths))
        known = self._load(wanted)
        fresh: dict[str, tuple[Stamp, str]] = {}
        now = time.time_ns()

        def one(path: Path) -> tuple[Path, Hashed] | None:
            try:
                result = path.stat()
            except OSError:
                return None
            if not stat.S_ISREG(result.st_mode):
                return None
            stamp = Stamp.of(result)
            cached = known.get(str(path))
            if cached is not None and cached[0] == stamp:
                with self._lock:
                    self.reused += 1
                return path, Hashed(cached[1], stamp.size, result.st_mode)
            try:
                digest = sha256_of(path)
            except OSError:
                return None
            with self._lock:
                self.read += 1
                if now - max(stamp.mtime_ns, stamp.ctime_ns) > RACY_NS:
                    fresh[str(path)] = (stamp, digest)
            return path, Hashed(digest, stamp.size, result.st_mode)

        def some(batch: list[Path]) -> list[tuple[Path, Hashed] | None]:
            return [one(path) for path in batch]

        # In batches: a task per file would cost more than stat-ing an unchanged one.
        size = max(1, len(wanted) // (THREADS * 4))
        batches = [wanted[at : at + size] for at in range(0, len(wanted), size)]
        with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="envbisect-hash") as pool:
            found = dict(item for done in pool.map(some, batches) for item in done if item)
        self._store(fresh)
        return found

    def _connect(self) -> sqlite3.Connection | None:
        if self.database is None:
            return None
        try:
            self.database.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.database, timeout=10)
            connection.execute(_SCHEMA)
        except (OSError, sqlite3.Error):
            return None  # only a cache: without it, everything is hashed
        return connection

    def _load(self, paths: list[Path]) -> dict[str, tuple[Stamp, str]]:
        connection = self._connect()
        if connection is None:
            return {}
        known: dict[str, tuple[Stamp, str]] = {}
        names = [str(path) for path in paths]
        try:
            with contextlib.closing(connection):
                for start in range(0, len(names), 500):
                    batch = names[start : start + 500]
                    rows = connection.execute(
                        "SELECT path, size, mtime_ns, inode, ctime_ns, sha256 FROM files "
                        f"WHERE path IN ({','.join('?' * len(batch))})",
                        batch,
                    )
                    for path, size, mtime_ns, inode, ctime_ns, sha256 in rows:
                        known[path] = (Stamp(size, mtime_ns, inode, ctime_ns), sha256)
        except sqlite3.Error:
            return {}
        return known

    def _store(self, fresh: dict[str, tuple[Stamp, str]]) -> None:
        if not fresh:
            return
        connection = self._connect()
        if connection is None:
            return
        rows = [
            (path, s.size, s.mtime_ns, s.inode, s.ctime_ns, digest)
            for path, (s, digest) in fresh.items()
        ]
        # A concurrent run holding the lock, a full disk: the next run hashes again.
        with contextlib.suppress(sqlite3.Error), contextlib.closing(connection), connection:
            connection.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
