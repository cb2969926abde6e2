"""Time limits: what one probe may wait, and how the run adapts them.

A probe reads its :class:`Limits` on every wake-up. The run starts with the
user's limits; once the good set's healthy worker was measured, failing trials
wait only many times its latency (:func:`learn`); the confirmation waits far
longer than the search did (:func:`generous`), so a worker that merely needed
longer than the adapted limit is not named.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

# Adaptive limits: wait this many times the healthy latency, never less than the floor.
CONSUME_FACTOR, CONSUME_FLOOR = 10.0, 1.0
BOOT_FACTOR, BOOT_FLOOR = 10.0, 10.0
# The culprit set is confirmed with limits this much longer than the search's (at least
# CONFIRM_FLOOR s): a worker that merely needed longer than the adaptive limit passes here.
CONFIRM_FACTOR, CONFIRM_FLOOR = 4.0, 6.0


class Limits:
    """Time limits for one probe, which the runner may tighten while probes run.

    The consume-probe reads them on every wake-up, so the bad-set sanity probe,
    started together with the good one, picks up the adaptive limit as soon as
    the good probe has measured a healthy worker.
    """

    def __init__(
        self,
        *,
        boot: float = 60.0,
        consume: float = 30.0,
        grace: float = 0.5,
        command: float = 600.0,
        hard_deadline: float | None = None,
        stop_before_verdict: bool = True,
        take_stacks: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._boot, self._consume = boot, consume
        self.grace = grace  #: SIGTERM → SIGKILL
        #: Stop a failing worker before giving the verdict, so that the evidence says whether
        #: it ignored SIGTERM; else after it, off the critical path (the search's trials).
        self.stop_before_verdict = stop_before_verdict
        #: Take a stuck worker's stacks before stopping it: the evidence is worth the time
        #: (~0.1 s with py-spy, a few s when no tool works) where it is shown; not in the
        #: search's trials, which must stay fast.
        self.take_stacks = take_stacks
        self.command = command  #: a command probe's whole run
        self.hard_deadline = hard_deadline  #: time.monotonic() by which everything must end

    @property
    def boot(self) -> float:
        """Worker start → ready."""
        with self._lock:
            return self._boot

    @property
    def consume(self) -> float:
        """Worker ready → actor ran."""
        with self._lock:
            return self._consume

    def tighten(self, *, boot: float, consume: float) -> None:
        with self._lock:
            self._boot, self._consume = min(self._boot, boot), min(self._consume, consume)

    def left(self) -> float:
        """Seconds before the run's hard deadline (infinite without --max-time)."""
        if self.hard_deadline is None:
            return float("inf")
        return self.hard_deadline - time.monotonic()


def learn(limits: Limits, healthy: Mapping[str, float]) -> bool:
    """Tighten ``limits`` to many times a healthy worker's timings (``boot``, ``wait``);
    False when the timings do not say (a command probe's)."""
    boot, wait = healthy.get("boot"), healthy.get("wait")
    if boot is None or wait is None:
        return False
    limits.tighten(
        boot=max(BOOT_FLOOR, BOOT_FACTOR * boot),
        consume=max(CONSUME_FLOOR, CONSUME_FACTOR * wait),
    )
    return True


def generous(full: Limits, search: Limits) -> Limits:
    """The confirmation's limits: the user's ``full`` ones, or many times the ``search``'s
    adapted ones, within the same deadline."""
    full.hard_deadline = search.hard_deadline
    full.tighten(
        boot=max(CONFIRM_FLOOR, CONFIRM_FACTOR * search.boot),
        consume=max(CONFIRM_FLOOR, CONFIRM_FACTOR * search.consume),
    )
    return full
