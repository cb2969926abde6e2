"""What a run leaves behind when it cannot clean up, and removing it once the run is dead.

A run records itself in its temp dir as it goes (:class:`Ledger`): ``run.json``
(its token, the pid and start time of its own process and of its watchdog, the
broker's URL with the password masked, whether its envs are kept) and ``queues``
(each probe queue's name, written before the queue is declared: AMQP cannot list
queues). The run's watchdog (:mod:`envbisect.watchdog`) and the next run's
:func:`sweep` go by that record. A run is dead when its process is gone — the same
pid with another start time is another process — and one whose watchdog is still
at work is left to it: a live run's things are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from envbisect import processes, procfs
from envbisect.brokers.base import BrokerClient
from envbisect.errors import BrokerError
from envbisect.removal import remove_tree

RECORD = "run.json"
QUEUES = "queues"
#: ``envbisect-<token>-<random>``, the token being ``<pid>x<hex>`` (processes.new_run_token).
_TEMP_DIR = re.compile(r"envbisect-((\d+)x[0-9a-f]+)-[^/]+")
_TOKEN = re.compile(r"((\d+)x[0-9a-f]+)(?:-.*)?")


@dataclass(frozen=True)
class Process:
    """One process for good: its pid and when it started (a pid alone is reused)."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Process | None:
        started = procfs.started_at(pid)
        return None if started is None else cls(pid, started)

    def alive(self) -> bool:
        return procfs.started_at(self.pid) == self.started


@dataclass(frozen=True)
class RunRecord:
    """Who a run's temp dir belongs to (``run.json``)."""

    token: str
    owner: Process  #: envbisect's own process
    watchdog: Process | None
    broker: str | None  #: the masked URL of the broker its queues live on
    keep: bool  #: --keep-envs: the envs are the user's, never removed

    def dead(self) -> bool:
        """Its process is gone and no watchdog of it is at work."""
        return not self.owner.alive() and not (self.watchdog and self.watchdog.alive())


class Ledger:
    """A run's record of itself in its temp dir, written as the run goes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def start(self, record: RunRecord) -> None:
        """Write ``run.json`` (whole or not at all: a sweep may read it any time)."""
        data = {
            "token": record.token,
            "owner": [record.owner.pid, record.owner.started],
            "watchdog": None
            if record.watchdog is None
            else [record.watchdog.pid, record.watchdog.started],
            "broker": record.broker,
            "keep": record.keep,
        }
        partial = self.root / f".{RECORD}.tmp"
        partial.write_text(json.dumps(data))
        partial.replace(self.root / RECORD)

    def add_queues(self, names: Iterable[str]) -> None:
        """Record queue names before they are declared."""
        with self._lock, (self.root / QUEUES).open("a") as ledger:
            ledger.writelines(f"{name}\n" for name in names)

    def record(self) -> RunRecord | None:
        try:
            data = json.loads((self.root / RECORD).read_text())
            watchdog = data["watchdog"]
            return RunRecord(
                token=str(data["token"]),
                owner=Process(*map(int, data["owner"])),
                watchdog=None if watchdog is None else Process(*map(int, watchdog)),
                broker=data["broker"],
                keep=bool(data["keep"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def queues(self) -> list[str]:
        try:
            text = (self.root / QUEUES).read_text()
        except FileNotFoundError:
            return []
        return list(dict.fromkeys(text.split()))

    def forget_queues(self) -> None:
        (self.root / QUEUES).unlink(missing_ok=True)


@dataclass
class Removed:
    """What was removed of a dead run, and what could not be."""

    processes: int = 0
    temp_dirs: int = 0
    queues: int = 0
    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.processes or self.temp_dirs or self.queues or self.problems)

    def __str__(self) -> str:
        counts = (
            (self.processes, "process", "processes"),
            (self.temp_dirs, "temp dir", "temp dirs"),
            (self.queues, "queue", "queues"),
        )
        return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts)


def remove_run(
    token: str, root: Path | None, broker: BrokerClient | None, *, keep: bool = False
) -> Removed:
    """Remove what run ``token`` left: its processes, then the queues its ledger in
    ``root`` names (on ``broker``), then ``root`` itself unless its envs are ``keep``-t.

    The temp dir goes last, and only when its queues are gone: it holds their names.
    """
    removed = Removed()
    # Processes first: a live worker would declare its queue again. A worker that was
    # forking while we looked is caught by the next look (and one not yet dead of the
    # last SIGKILL is seen again: counted once).
    killed: set[int] = set()
    for _ in range(20):
        found = processes.kill_stragglers(token)
        if not found:
            break
        killed.update(found)
    removed.processes = len(killed)
    if root is None:
        return removed
    ledger = Ledger(root)
    record = ledger.record()
    queues = ledger.queues()
    if queues and broker is None:
        where = record.broker if record and record.broker else "its broker"
        removed.problems.append(f"{len(queues)} queue(s) left on {where}: not this run's broker")
    elif queues and broker is not None:
        for index, queue in enumerate(queues):
            try:
                removed.queues += broker.delete(queue)
            except BrokerError as exc:  # it waited for the broker already: not for each queue
                removed.problems.append(f"{len(queues) - index} queue(s) not deleted: {exc}")
                break
    if removed.problems:
        return removed
    if keep:
        with contextlib.suppress(OSError):
            ledger.forget_queues()
        return removed
    try:
        remove_tree(root)
    except OSError as exc:
        removed.problems.append(f"could not remove {root}: {exc.strerror or exc}")
    else:
        removed.temp_dirs += 1
    return removed


def sweep(tmpdir: Path, broker: BrokerClient | None) -> dict[str, Removed]:
    """Remove the leftovers of dead runs (of this user): their temp dirs in ``tmpdir``
    (with the queues their ledgers name, when they live on ``broker``) and every
    process that carries a dead run's token. What was removed, by run token."""
    swept: dict[str, Removed] = {}
    live: set[str] = set()
    for root in sorted(tmpdir.glob("envbisect-*")):
        named = _TEMP_DIR.fullmatch(root.name)
        if named is None or not _ours(root):
            continue
        record = Ledger(root).record()
        if record is None or record.token != named[1]:
            continue  # not a run's temp dir, or not yet recorded (a run starting)
        if not record.dead():
            live.add(record.token)
            continue
        same_broker = broker is not None and broker.masked == record.broker
        swept[record.token] = remove_run(
            record.token, root, broker if same_broker else None, keep=record.keep
        )
    for pid, carried in procfs.carried_tokens().items():
        token = _TOKEN.fullmatch(carried)
        if (
            token is None
            or token[1] in swept
            or token[1] in live
            or not _ours(Path(f"/proc/{pid}"))
        ):
            continue
        owner, started = int(token[2]), procfs.started_at(pid)
        owner_started = procfs.started_at(owner)
        # A process cannot start before the run that started it: an owner pid that is
        # younger than the process is another program that got the pid.
        if owner_started is not None and (started is None or owner_started <= started):
            continue
        swept[token[1]] = remove_run(token[1], None, None)
    return {token: removed for token, removed in swept.items() if removed}


def _ours(path: Path) -> bool:
    try:
        return path.lstat().st_uid == os.getuid() and not path.is_symlink()
    except OSError:
        return False
