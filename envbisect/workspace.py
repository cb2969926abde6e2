"""A run's private temp directory: its trial envs (built, reused, removed) and scratch dirs."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from envbisect.errors import EnvironmentBuildError
from envbisect.installers.base import Installer
from envbisect.model import TrialEnv
from envbisect.removal import remove_tree


@dataclass(frozen=True)
class BuildTimings:
    create: float
    install: float

    @property
    def total(self) -> float:
        return self.create + self.install


class Workspace:
    """A private temp directory holding every env and scratch dir of one run.

    A trial env is built afresh, or — when the installer can sync (uv) — made from
    an idle env of an earlier trial that differs least from it: a search's
    consecutive sets differ by a few packages, and syncing those is far cheaper
    than linking every file of every package again. Removing envs and scratch
    dirs happens on a background thread, off the search's critical path;
    :meth:`close` waits for it and removes the whole directory unless the user
    asked to keep the envs (then every trial has an env of its own).
    """

    #: Idle envs kept for reuse; more are removed.
    MAX_IDLE = 4

    def __init__(
        self,
        installer: Installer,
        run_token: str,
        *,
        python: Path | None = None,
        keep: bool = False,
    ) -> None:
        self.installer = installer
        self.python = python or Path(sys.executable)  #: the trial envs' interpreter
        self.keep = keep
        # mkdtemp makes it 0700: the envs and sockets are private to the user.
        self.root = Path(tempfile.mkdtemp(prefix=f"envbisect-{run_token}-"))
        self._remover = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envbisect-rm")
        self._lock = threading.Lock()
        self._count = 0
        self._contents: dict[Path, frozenset[Path]] = {}  #: env → the wheels it holds
        self._idle: list[Path] = []

    def _slot(self, label: str) -> Path:
        with self._lock:
            self._count += 1
            return self.root / f"{self._count:03d}-{label}"

    def build(self, wheels: Sequence[Path], label: str) -> tuple[TrialEnv, BuildTimings]:
        """An env with exactly these wheels, plus a fresh scratch dir for its probe."""
        slot = self._slot(label)
        scratch = slot / "s"
        wanted = frozenset(wheels)
        started = time.monotonic()
        try:
            scratch.mkdir(parents=True)
            idle = self._take_idle(wanted)
            if idle is not None:
                try:
                    self.installer.sync(idle, wheels, scratch / "wheels.txt")
                except EnvironmentBuildError as exc:
                    self._remove(idle.parent)  # and build afresh: that says what is wrong
                    if exc.disk_full:
                        raise
                else:
                    self._hold(idle, wanted)
                    return TrialEnv(path=idle, scratch=scratch), BuildTimings(
                        0.0, time.monotonic() - started
                    )
            path = slot / "env"
            self.installer.create(path, self.python)
            created = time.monotonic()
            self.installer.install(path, wheels)
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(
                f"building a trial env in {slot}", exc
            ) from exc
        self._hold(path, wanted)
        return TrialEnv(path=path, scratch=scratch), BuildTimings(
            created - started, time.monotonic() - created
        )

    def _hold(self, env: Path, wheels: frozenset[Path]) -> None:
        with self._lock:
            self._contents[env] = wheels

    def _take_idle(self, wanted: frozenset[Path]) -> Path | None:
        """The idle env closest to ``wanted``, if syncing it beats building afresh."""
        if self.keep or not self.installer.can_sync:
            return None
        with self._lock:
            if not self._idle:
                return None
            best = min(self._idle, key=lambda env: len(self._contents[env] ^ wanted))
            if len(self._contents[best] ^ wanted) >= max(len(wanted), 1):
                return None
            self._idle.remove(best)
            return best

    def discard(self, trial: TrialEnv) -> None:
        """Done with a trial: its scratch dir goes; its env is kept idle for reuse, or goes."""
        if self.keep:
            return
        self._remove(trial.scratch)
        with self._lock:
            if self.installer.can_sync and len(self._idle) < self.MAX_IDLE:
                self._idle.append(trial.path)
                return
        self._remove(trial.path.parent)

    def _remove(self, path: Path) -> None:
        with self._lock:
            self._contents = {
                env: held for env, held in self._contents.items() if not env.is_relative_to(path)
            }
            self._remover.submit(remove_tree, path)

    def scratch(self, name: str) -> Path:
        path = self.root / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(f"creating {path}", exc) from exc
        return path

    def close(self) -> str | None:
        """Wait for pending removals; remove the workspace unless keeping envs.

        A removal that fails is returned as one line (what is left, and why), not
        raised: the run's verdict must not be lost to its clean-up.
        """
        self._remover.shutdown(wait=True)
        if self.keep:
            return None
        try:
            remove_tree(self.root)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            return f"could not remove {self.root}: {exc.strerror or exc}{where}"
        return None
