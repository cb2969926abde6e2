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

The parsers and the summary are :mod:`envbisect.stacks`; this module does the I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

from envbisect import processes
from envbisect.stacks import StackError, Stacks, ThreadStack, parse_faulthandler, parse_py_spy

#: ``off`` never uses py-spy (faulthandler only); a path uses that py-spy executable.
PY_SPY_VAR = "ENVBISECT_PY_SPY"
#: The signal the probe module's faulthandler answers with a dump of every thread.
DUMP_SIGNAL = signal.SIGUSR2
PY_SPY_SECONDS = 10.0  #: one ``py-spy dump`` (it takes ~30 ms; a busy machine may need more)
FAULTHANDLER_SECONDS = 3.0  #: for every signalled process to finish writing its dump
_STEADY = 0.05  #: a dump that did not grow for this long is complete


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
