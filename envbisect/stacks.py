"""Every thread's Python stack of a stuck worker: the types, the parsers, the summary.

Pure; :mod:`envbisect.stackdump` takes them from a live worker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Frame:
    """One frame of a Python stack."""

    function: str
    file: str
    line: int | None


@dataclass(frozen=True)
class ThreadStack:
    """One thread of one process, innermost frame first."""

    pid: int
    thread_name: str | None  #: None where the tool could not tell it
    thread_id: int | None  #: Python's thread ident (``threading.get_ident()``)
    os_thread_id: int | None  #: the kernel's thread id (py-spy only)
    active: bool | None  #: on the CPU (py-spy's heuristic); None: not known
    frames: tuple[Frame, ...]
    tool: str  #: "py-spy" or "faulthandler"


@dataclass(frozen=True)
class Stacks:
    """The stacks of a worker's process group, and how they were taken or why not."""

    threads: tuple[ThreadStack, ...]
    leader: int  #: dramatiq's main process (the group leader)
    note: str  #: "taken with py-spy", what is missing and why, or why none could be taken

    def summary(self) -> tuple[str, ...]:
        """One line per thread, the main process first (see :func:`describe`)."""
        ordered = sorted(self.threads, key=lambda t: (t.pid != self.leader, t.pid))
        return tuple(describe(thread, self.leader) for thread in ordered)


class StackError(Exception):
    """A tool could not take a process's stacks."""


def parse_py_spy(output: str) -> tuple[ThreadStack, ...]:
    """The threads of ``py-spy dump --json`` output (anything around the JSON is ignored)."""
    start = output.find("[")
    if start < 0:
        raise ValueError("no JSON list in py-spy's output")
    try:
        data, _ = json.JSONDecoder().raw_decode(output[start:])
        return tuple(_py_spy_thread(entry) for entry in data)
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a py-spy dump: {exc}") from exc


def _py_spy_thread(entry: Mapping[str, Any]) -> ThreadStack:
    frames = tuple(
        Frame(str(frame["name"]), str(frame["filename"]), _int_or_none(frame.get("line")))
        for frame in entry["frames"]
    )
    name = entry.get("thread_name")
    active = entry.get("active")
    return ThreadStack(
        pid=_int(entry["pid"]),
        thread_name=name if isinstance(name, str) else None,
        thread_id=_int_or_none(entry.get("thread_id")),
        os_thread_id=_int_or_none(entry.get("os_thread_id")),
        active=active if isinstance(active, bool) else None,
        frames=frames,
        tool="py-spy",
    )


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _int_or_none(value: object) -> int | None:
    return None if value is None else _int(value)


_FH_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+) \(most recent call first\):$")
_FH_STACK = "Stack (most recent call first):"  # all_threads=False: one thread, no id
_FH_FRAME = re.compile(r'^  File "(.*)", line (\d+|\?\?\?) in (.*)$')


def parse_faulthandler(text: str, pid: int, names: Mapping[int, str]) -> tuple[ThreadStack, ...]:
    """The threads of a faulthandler dump of process ``pid``; ``names`` maps ids to names."""
    threads: list[tuple[int | None, list[Frame]]] = []
    for line in text.splitlines():
        header = _FH_THREAD.match(line)
        if header:
            threads.append((int(header[1], 16), []))
        elif line == _FH_STACK:
            threads.append((None, []))
        elif threads:
            frame = _FH_FRAME.match(line)
            if frame:
                number = None if frame[2] == "???" else int(frame[2])
                threads[-1][1].append(Frame(frame[3], frame[1], number))
    return tuple(
        ThreadStack(
            pid=pid,
            thread_name=None if ident is None else names.get(ident),
            thread_id=ident,
            os_thread_id=None,
            active=None,
            frames=tuple(frames),
            tool="faulthandler",
        )
        for ident, frames in threads
    )


_STDLIB = re.compile(r"/lib/python\d+\.\d+t?/(.+)$")


def short_path(file: str) -> str:
    """A frame's file as a reader knows it: ``pika/adapters/select_connection.py``."""
    if "/site-packages/" in file:
        return file.rsplit("/site-packages/", 1)[1]
    stdlib = _STDLIB.search(file)
    return stdlib[1] if stdlib else file


# Frames that only carry the call (thread start-up, waiting, importing, forking): the
# summary shows the innermost frame whatever it is, and skips these among its callers.
_PLUMBING = (
    "threading.py",
    "selectors.py",
    "queue.py",
    "runpy.py",
    "multiprocessing/",
    "concurrent/futures/",
    "gevent/",
    "greenlet/",
    "<frozen importlib",
    "<frozen runpy>",
    "<string>",
)
_CALLERS = 2  #: callers shown after the innermost frame (then the outermost, if not shown)


def describe(thread: ThreadStack, leader: int) -> str:
    """One line for a thread: where it is stuck and what called it.

    ``worker process 4242: main thread blocked in PollPoller.poll
    (pika/adapters/select_connection.py:1240) ← IOLoop.poll (…:616) ← … ← ConsumerThread.run
    (dramatiq/worker.py:308)``; a thread whose innermost frame is gevent's hub loop is
    ``gevent hub running in main thread (gevent/hub.py:647)``.
    """
    process = "main process" if thread.pid == leader else "worker process"
    where = f"{process} {thread.pid}"
    name = thread_label(thread.pid, thread.thread_name, thread.thread_id, thread.os_thread_id)
    if not thread.frames:
        return f"{where}: {name} has no Python frame"
    innermost = thread.frames[0]
    short = short_path(innermost.file)
    if short.startswith("gevent/") and "hub" in short and innermost.function.endswith("run"):
        return f"{where}: gevent hub running in {name} ({_at(innermost)})"
    state = {True: "running", False: "blocked in", None: "in"}[thread.active]
    callers = [f for f in thread.frames[1:] if not _plumbing(f)]
    shown = [innermost, *callers[:_CALLERS]]
    chain = " ← ".join(f"{f.function} ({_at(f)})" for f in shown)
    if callers[_CALLERS:]:
        outermost = callers[-1]
        chain += f" ← … ← {outermost.function} ({_at(outermost)})"
    line = f"{where}: {name} {state} {chain}"
    if any(_pth_hook(f) for f in thread.frames):
        line += " (run by a .pth file at interpreter start-up)"
    return line


def thread_label(
    pid: int, thread_name: str | None, thread_id: int | None, os_thread_id: int | None
) -> str:
    """A thread as the summary names it: its name, else ``main thread``, else its id."""
    if thread_name:
        return thread_name
    if os_thread_id is not None and os_thread_id == pid:
        return "main thread"  # on Linux, the thread whose id is the process id
    if os_thread_id is not None:
        return f"thread {os_thread_id}"
    return "thread" if thread_id is None else f"thread {thread_id:#x}"


def _at(frame: Frame) -> str:
    line = "?" if frame.line is None else str(frame.line)
    return f"{short_path(frame.file)}:{line}"


def _plumbing(frame: Frame) -> bool:
    return short_path(frame.file).startswith(_PLUMBING)


def _pth_hook(frame: Frame) -> bool:
    """``site.addpackage`` executes a .pth file's import lines."""
    return frame.function == "addpackage" and frame.file in ("<frozen site>", "site.py")
