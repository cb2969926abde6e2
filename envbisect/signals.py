"""How a stop signal ends a run: SIGINT, SIGTERM and SIGHUP go through its clean-up."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from envbisect import processes
from envbisect.errors import ExitCode

#: Signals that end a run through its clean-up; SIGHUP (a closed terminal, a dropped ssh
#: session) is one, or a hang-up would leave every stalled worker behind.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SIGNAL_CODES = {
    signal.SIGINT: ExitCode.INTERRUPTED,
    signal.SIGTERM: ExitCode.TERMINATED,
    signal.SIGHUP: ExitCode.HANGUP,
}


@contextmanager
def signals_raise() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM/SIGHUP into :class:`Interrupted`; ignore repeats while
    cleaning up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        processes.interrupt(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
