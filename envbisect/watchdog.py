"""A watchdog per run: when envbisect dies without its clean-up, it removes what the run left.

SIGKILL (or the OOM killer) gives envbisect no chance to stop its workers — a stalled
gevent worker ignores SIGTERM, and nothing would ever stop it — nor to delete its
queues and temp dir. ``PR_SET_PDEATHSIG`` cannot help: it fires when the *thread*
that forked a child ends, and envbisect starts children from pool threads.

So envbisect starts this process at the start of a run (:meth:`Watchdog.start`), in
a session of its own, with the read end of a pipe as its stdin; only envbisect holds
the write end (non-inheritable: no child of the run has it). The watchdog reads one
line describing the run — its token, temp dir and broker URL (the password crosses
the pipe only, never a file or a command line) — then waits. ``done`` at the end of a
run lets it go; the end of the pipe without ``done`` means envbisect died, and it
kills every process carrying the run's token, deletes the run's queues (see
:class:`envbisect.leftovers.Ledger`), removes the temp dir and says so on the
stderr it shares with envbisect.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import envbisect
from envbisect import processes, procfs
from envbisect.leftovers import Process, remove_run
from envbisect.masking import mask_urls

_DONE = b"done\n"
#: Seconds envbisect waits at the end of a run for its watchdog to go.
_EXIT_WAIT = 30.0


class Watchdog:
    """envbisect's end of a run's watchdog process."""

    def __init__(self, process: subprocess.Popen[bytes], pipe: int) -> None:
        self._process = process
        self._pipe: int | None = pipe
        self.process = Process.of(process.pid)  #: None if it is gone already

    @classmethod
    def start(cls, token: str, root: Path, broker_url: str | None, *, keep: bool) -> Watchdog:
        """Start the watchdog of run ``token`` (temp dir ``root``, queues on ``broker_url``)."""
        read, write = os.pipe()  # both ends non-inheritable; the watchdog gets `read` as stdin
        env = {k: v for k, v in os.environ.items() if k != procfs.RUN_TOKEN_VAR}
        # Its working directory is /: make sure it imports this very envbisect.
        package_root = str(Path(envbisect.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        try:
            process = processes.start_detached(
                [sys.executable, "-m", "envbisect.watchdog"], stdin=read, env=env
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        watchdog = cls(process, write)
        run = {"token": token, "root": str(root), "broker": broker_url, "keep": keep}
        watchdog._send(json.dumps(run).encode() + b"\n")
        return watchdog

    def done(self) -> None:
        """The run cleaned up after itself: let the watchdog go, and reap it."""
        self._send(_DONE)
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        try:
            self._process.wait(_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _send(self, data: bytes) -> None:
        if self._pipe is None:
            return
        # A watchdog that died already cannot read: the run goes on without one.
        with contextlib.suppress(OSError):
            os.write(self._pipe, data)


def main() -> int:
    """``python -m envbisect.watchdog``: watch one run (see the module's docstring)."""
    # Its own session keeps terminal signals away; a signal sent to it by name is not
    # the run ending either.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    try:
        run = json.loads(stdin.readline())
    except ValueError:
        return 2
    if stdin.read() == _DONE:
        return 0
    broker = None
    if run["broker"]:
        from envbisect.brokers import connect

        broker = connect(run["broker"])
    root = Path(run["root"])
    removed = remove_run(
        run["token"], root if root.is_dir() else None, broker, keep=bool(run["keep"])
    )
    said = f"envbisect: watchdog: run {run['token']} ended without its clean-up; removed {removed}"
    problems = "".join(f"; {problem}" for problem in removed.problems)
    print(mask_urls(said + problems), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
