"""Every thread's Python stack of a stuck worker, taken without its cooperation.

A worker that is alive but stuck (never ready, ready but not consuming, consuming
but never running the actor) says nothing about where it is stuck; its stacks do.
They are taken from outside with ``py-spy dump`` (it reads the process's memory
through ptrace), one process at a time, each call bounded in time and run like every
child of envbisect (own process group, always reaped). Where ptrace is refused (or
py-spy is unavailable: ``ENVBISECT_PY_SPY=off``), the probe module's own handler is
the fallback: at import it registered :mod:`faulthandler` on SIGUSR2, so envbisect
signals the processes that have it and reads their dumps (faulthandler prints thread
ids, not names; the probe records the names threading knew at worker boot). A
process that has neither (dramatiq's main process never loads the probe module) is
said to be missing, and why.

The parsers and the summary are pure; :func:`take` does the I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from envbisect import processes

#: ``off`` never uses py-spy (faulthandler only); a path uses that py-spy executable.
PY_SPY_VAR = "ENVBISECT_PY_SPY"
#: The signal the probe module's faulthandler answers with a dump of every thread.
DUMP_SIGNAL = signal.SIGUSR2
PY_SPY_SECONDS = 10.0  #: one ``py-spy dump`` (it takes ~30 ms; a busy machine may need more)
FAULTHANDLER_SECONDS = 3.0  #: for every signalled process to finish writing its dump
_STEADY = 0.05  #: a dump that did not grow for this long is complete


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


# --- pure: parsing and describing -------------------------------------------------------


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


# --- I/O: taking them ----------------------------------------------------------------------


def py_spy_binary() -> tuple[Path | None, str]:
    """py-spy's executable (``ENVBISECT_PY_SPY``, else the installed py-spy's), or why none."""
    setting = os.environ.get(PY_SPY_VAR, "").strip()
    if setting.lower() in ("off", "0", "no", "false"):
        return None, f"turned off ({PY_SPY_VAR}={setting})"
    if setting:
        return (Path(setting), "") if Path(setting).is_file() else (None, f"{setting}: not found")
    try:
        dist = metadata.distribution("py-spy")
    except metadata.PackageNotFoundError:
        return None, "not installed"
    for file in dist.files or ():
        if file.name == "py-spy" and file.parent.name == "bin":
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path, ""
    return None, "the py-spy package has no executable"


def take(
    pids: Sequence[int],
    leader: int,
    dump_dir: Path,
    *,
    seconds: float,
    environ: Mapping[str, str] | None = None,
) -> Stacks:
    """The stacks of these processes (``leader`` first), within about ``seconds``.

    py-spy for each process (run with ``environ``: the probe's run token marks it as
    the probe's child); faulthandler for those py-spy could not read; a note that says
    which tool was used and, for whatever is missing, why.
    """
    deadline = time.monotonic() + seconds
    threads: list[ThreadStack] = []
    problems: list[str] = []
    left = list(pids)
    binary, why = py_spy_binary()
    if binary is None:
        problems.append(f"py-spy: {why}")
    else:
        failed: dict[str, list[int]] = {}
        for pid in pids:
            budget = min(PY_SPY_SECONDS, deadline - time.monotonic())
            try:
                if budget <= 0:
                    raise StackError("out of time")
                threads += _py_spy(binary, pid, dump_dir, budget, environ)
                left.remove(pid)
            except StackError as exc:
                failed.setdefault(str(exc), []).append(pid)
        problems += [f"py-spy: {reason} ({_pids(who)})" for reason, who in failed.items()]
    if left:
        budget = max(0.0, min(FAULTHANDLER_SECONDS, deadline - time.monotonic()))
        found, trouble = _faulthandler(left, leader, dump_dir, budget)
        threads += found
        problems += [f"faulthandler: {problem}" for problem in trouble]
        if any(t.thread_name is None for t in found):
            problems.append(
                "faulthandler: thread names only for threads the probe saw at worker boot"
            )
    tools = list(dict.fromkeys(t.tool for t in threads))
    if not threads:
        note = "no stack could be taken: " + "; ".join(problems or ["no process left"])
    else:
        note = "; ".join([f"taken with {' and '.join(tools)}", *problems])
    return Stacks(tuple(threads), leader, note)


def _pids(pids: Iterable[int]) -> str:
    listed = list(pids)
    return ("pid " if len(listed) == 1 else "pids ") + ", ".join(map(str, listed))


def _py_spy(
    binary: Path, pid: int, dump_dir: Path, timeout: float, environ: Mapping[str, str] | None
) -> tuple[ThreadStack, ...]:
    argv = [str(binary), "dump", "--json", "--pid", str(pid)]
    done = processes.run(argv, env=environ, timeout=timeout, log=dump_dir / f"py-spy-{pid}.out")
    if done.returncode is None:
        raise StackError(f"no answer within {timeout:.0f} s")
    if done.returncode != 0:
        lines = [line.strip() for line in done.output.splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith("Error:")), None)
        reason = reason or (lines[0] if lines else f"exit status {done.returncode}")
        raise StackError(reason.removeprefix("Error:").strip())
    try:
        return parse_py_spy(done.output)
    except ValueError as exc:
        raise StackError(str(exc)) from exc


def _faulthandler(
    pids: Sequence[int], leader: int, dump_dir: Path, seconds: float
) -> tuple[list[ThreadStack], list[str]]:
    """Signal the processes whose probe module registered a dump handler; read their dumps."""
    problems: list[str] = []
    dumps: dict[int, tuple[Path, int]] = {}
    for pid in pids:
        dump = dump_dir / f"stacks-{pid}.txt"
        if dump.is_file():
            dumps[pid] = (dump, dump.stat().st_size)
        elif pid == leader:
            problems.append(f"main process {pid} never loads the probe module")
        else:
            problems.append(
                f"worker process {pid} has no dump handler (stuck before it loaded the probe "
                "module, or SIGUSR2 is its own)"
            )
    for pid in list(dumps):
        try:
            os.kill(pid, DUMP_SIGNAL)
        except ProcessLookupError:
            problems.append(f"pid {pid} is gone")
            del dumps[pid]
    texts: dict[int, str] = {}
    sizes: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    while len(texts) < len(dumps) and time.monotonic() < deadline:
        time.sleep(_STEADY)
        for pid, (dump, start) in dumps.items():
            size = dump.stat().st_size
            if pid not in texts and size > start and sizes.get(pid) == size:
                with dump.open("rb") as handle:
                    handle.seek(start)
                    texts[pid] = handle.read().decode(errors="replace")
            sizes[pid] = size
    late = [pid for pid in dumps if pid not in texts]
    problems += [f"no dump from pid {pid} within {seconds:g} s" for pid in late]
    threads = [
        thread
        for pid, text in texts.items()
        for thread in parse_faulthandler(text, pid, _thread_names(dump_dir, pid))
    ]
    return threads, problems


def _thread_names(dump_dir: Path, pid: int) -> dict[int, str]:
    """What the probe module recorded: thread ident → name."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads((dump_dir / f"threads-{pid}.json").read_text())
        return {int(ident): str(name) for ident, name in recorded.items()}
    return {}
