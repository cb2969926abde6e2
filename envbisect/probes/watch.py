"""Following one consume-probe worker: its events on a datagram socket, its exit via pidfd.

The probe module inside the trial env reports ``ready``, ``adopted``, ``error``
and ``ran`` as JSON datagrams, accepted only from the user's own processes
(``SO_PASSCRED``); the wait is event-driven, never a sleep, and re-reads the
limits on every wake-up (they may be tightened meanwhile).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from envbisect.limits import Limits
from envbisect.masking import mask_urls
from envbisect.processes import Child


class Watch:
    """Follows one worker: its events on the socket and its exit via pidfd."""

    def __init__(
        self,
        worker: Child,
        events: socket.socket,
        message_id: str,
        env: Path,
        limits: Limits,
        on_adopt: Callable[[str], None] | None,
    ) -> None:
        self.worker = worker
        self.events = events
        self.message_id = message_id
        self.env = env
        self.limits = limits
        self.on_adopt = on_adopt
        self.started = worker.started
        self.ready_at: float | None = None
        self.ran_at: float | None = None
        self.ran_in: str | None = None
        self.error: str | None = None  #: the actor's exception, if it raised
        self.setup_error: str | None = None  #: why the probe could not be set up
        self.broker_id: str | None = None
        self.exited: int | None = None
        self.ended_at: float | None = None

    def until_ready(self) -> None:
        self._follow(
            lambda: self.ready_at is not None or self.ran_at is not None,
            lambda: self.limits.boot,
        )

    def until_ran(self) -> None:
        self._follow(lambda: self.ran_at is not None, lambda: self.limits.consume)

    def _follow(self, done: Callable[[], bool], limit: Callable[[], float]) -> None:
        started = time.monotonic()
        with selectors.DefaultSelector() as selector:
            selector.register(self.events, selectors.EVENT_READ, "event")
            pidfd = self.worker.pidfd()
            if pidfd is not None:
                # Stopped (and its pidfd closed) meanwhile: the exit is polled.
                with contextlib.suppress(OSError, ValueError):
                    selector.register(pidfd, selectors.EVENT_READ, "exit")
            while not done() and self.exited is None and self.setup_error is None:
                left = min(started + limit() - time.monotonic(), self.limits.left())
                if left <= 0:
                    break
                # Wake up now and then: the limit may be tightened meanwhile, and
                # without a pidfd the worker's exit has to be polled.
                for key, _ in selector.select(min(left, 0.1)):
                    if key.data == "event":
                        self._read_event()
                if not done():
                    self._check_exit()
        self.ended_at = time.monotonic()

    def _read_event(self) -> None:
        payload, ancillary, _, _ = self.events.recvmsg(65536, _CREDENTIALS_SPACE)
        if not _from_our_user(ancillary):
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        now = time.monotonic()
        kind = event.get("event")
        if kind == "ready" and self.ready_at is None:
            self.ready_at = now
            self.broker_id = event.get("broker_id")
        elif kind == "adopted" and self.on_adopt is not None:
            self.on_adopt(str(event.get("actor")))
        elif kind == "error":
            self.setup_error = mask_urls(str(event.get("message")))
        elif kind == "ran" and event.get("token") == self.message_id:
            self.ran_at = now
            self.ran_in = str(event.get("prefix"))
            # Masked before anything cuts it short: a cut URL is no longer recognised.
            error = event.get("error")
            self.error = None if error is None else mask_urls(str(error))
            if self.ready_at is None:
                self.ready_at = now

    def _check_exit(self) -> None:
        code = self.worker.poll()
        if code is not None:
            # Drain what the worker said before it died: a late "ran" still counts.
            self.events.setblocking(False)
            try:
                while True:
                    self._read_event()
            except BlockingIOError:
                pass
            finally:
                self.events.setblocking(True)
            if self.ran_at is None:
                self.exited = code

    def timings(self) -> dict[str, float]:
        end = self.ran_at or self.ended_at or time.monotonic()
        if self.ready_at is None:
            return {"boot": end - self.started, "wait": 0.0}
        return {"boot": self.ready_at - self.started, "wait": end - self.ready_at}


_UCRED = struct.Struct("3i")  # pid, uid, gid
_CREDENTIALS_SPACE = socket.CMSG_SPACE(_UCRED.size)


def _from_our_user(ancillary: list[tuple[int, int, bytes]]) -> bool:
    """Only processes of our own user may report (what a 0700 directory ensured before)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            _, uid, _ = _UCRED.unpack(data[: _UCRED.size])
            return bool(uid == os.getuid())
    return False
