"""What ``/proc`` says about processes: run tokens, start times, process groups (Linux)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

RUN_TOKEN_VAR = "ENVBISECT_RUN_TOKEN"


def processes_with_token(token: str) -> list[int]:
    """Pids of live processes whose run token is ``token`` or starts with ``token-``."""
    return [
        pid
        for pid, theirs in carried_tokens().items()
        if theirs == token or theirs.startswith(f"{token}-")
    ]


def carried_tokens() -> dict[int, str]:
    """Every live process (not a zombie) that carries a run token: pid → its token."""
    prefix = f"{RUN_TOKEN_VAR}=".encode()
    found = {}
    for pid in pids():
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            value = next((v for v in environ if v.startswith(prefix)), None)
            if value is not None and not is_zombie(pid):
                found[pid] = value[len(prefix) :].decode(errors="replace")
    return found


def started_at(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot); None when there is none,
    or it has exited and is only waiting to be reaped (a zombie).

    A pid is reused once its process is gone; the pid with its start time names one
    process for good (how a dead run is told from a live one that got its pid).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces and parentheses): the state
    # (3rd overall) and the start time (22nd).
    fields = stat.rsplit(")", 1)[-1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, its leader first."""
    members = []
    for pid in [pgid, *sorted(pids())]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid and pid not in members:
                members.append(pid)
    return members


def pids() -> Iterator[int]:
    """Every process's pid but our own."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            yield int(entry)


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited (or is gone) and only waits to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
