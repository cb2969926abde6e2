"""Probes that run a command in the trial env, with ``git bisect run`` semantics.

Exit 0 is good, 125 is "cannot test this one" (skip), 1-127 otherwise is bad;
death by a signal (or an exit status of 128 and up) and running past the time
limit are bad too, with the signal named. ``--probe import:a.b,c`` is the
same with ``python -c "import a.b; import c"`` as the command.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envbisect.errors import InputError
from envbisect.limits import Limits
from envbisect.masking import mask_urls
from envbisect.model import Diagnosis, LimitReached, Outcome, ProbeResult, TrialEnv
from envbisect.probes.base import Later, Probe, tail
from envbisect.processes import Child

SKIP_STATUS = 125
NOT_FOUND_STATUS = 127


@dataclass(frozen=True)
class CommandProbe(Probe):
    """Run ``command`` through ``/bin/sh -c`` in the trial env (its bin/ first on PATH)."""

    command: str
    cwd: Path | None = None
    kind: str = "command"
    cacheable: bool = False  # the command may read anything: tests, data, the project

    def describe(self) -> str:
        return f"command {mask_urls(self.command)!r}"

    def settings(self) -> str:
        return f"{self.describe()} cwd={self.cwd}"

    def recipe(self) -> dict[str, Any]:
        return {"kind": self.kind, "command": mask_urls(self.command)}

    @property
    def exclusive(self) -> bool:
        return self.cwd is not None  # the user's directory: probes there see each other

    def check(self) -> None:
        if self.cwd is not None and not self.cwd.is_dir():
            raise InputError(f"--cwd {self.cwd}: not a directory")

    def argv(self, trial: TrialEnv) -> Sequence[str]:
        # A shell command by design: the user's probe may use pipes, &&, globs.
        return ["/bin/sh", "-c", self.command]

    def run(self, trial: TrialEnv, token: str, limits: Limits, later: Later) -> ProbeResult:
        run_dir = trial.run_dir()
        log = run_dir / "command.log"
        child = Child(
            self.argv(trial), env=trial.environ(token), cwd=self.cwd or run_dir, output=log
        )
        code = child.wait(min(limits.command, max(limits.left(), 0.0)))
        stopped = child.stop(limits.grace)
        seconds = time.monotonic() - child.started
        if code is None:
            signal_used = "SIGKILL (it ignored SIGTERM)" if stopped.killed else "SIGTERM"
            return ProbeResult(
                Outcome.FAIL,
                Diagnosis.TIMED_OUT,
                f"still running after {limits.command:g} s; stopped with {signal_used}",
                tail(log),
                {"boot": 0.0, "wait": seconds},
                exit_status=stopped.returncode,
                limit_reached=LimitReached("command", seconds),
            )
        return self._verdict(code, tail(log), seconds)

    def _verdict(self, code: int, evidence: tuple[str, ...], seconds: float) -> ProbeResult:
        timings = {"boot": 0.0, "wait": seconds}
        if code == 0:
            return ProbeResult(
                Outcome.PASS,
                Diagnosis.EXIT_STATUS,
                "exit status 0",
                evidence,
                timings,
                exit_status=0,
            )
        if code == NOT_FOUND_STATUS:
            # Bad, as git bisect has it; but in the good set it means the probe cannot work.
            problem = f"--probe-cmd {mask_urls(self.command)!r}: command not found in the trial env"
            return ProbeResult(
                Outcome.FAIL,
                Diagnosis.EXIT_STATUS,
                "exit status 127 (command not found)",
                evidence,
                timings,
                exit_status=code,
                setup_error=problem,
            )
        if code == SKIP_STATUS:
            return ProbeResult(
                Outcome.SKIP,
                Diagnosis.SKIPPED,
                "exit status 125: cannot test this set (skip)",
                evidence,
                timings,
                exit_status=code,
            )
        if code < 0 or code >= 128:
            number = -code if code < 0 else code - 128
            name = _signal_name(number)
            return ProbeResult(
                Outcome.FAIL,
                Diagnosis.EXIT_STATUS,
                f"killed by {name} (status {code})",
                evidence,
                timings,
                exit_status=code,
            )
        last = next((line.strip() for line in reversed(evidence) if line.strip()), "")
        if len(last) > 200:
            last = "…" + last[-199:]  # its end says most; the mark says it was cut
        detail = f"exit status {code}" + (f": {last}" if last else "")
        return ProbeResult(
            Outcome.FAIL, Diagnosis.EXIT_STATUS, detail, evidence, timings, exit_status=code
        )


@dataclass(frozen=True)
class ImportProbe(CommandProbe):
    """Import modules in the trial env's interpreter; any exception fails the probe."""

    modules: tuple[str, ...] = ()
    kind: str = "import"
    cacheable: bool = True

    def describe(self) -> str:
        return f"import {', '.join(self.modules)}"

    def recipe(self) -> dict[str, Any]:
        return {"kind": self.kind, "modules": list(self.modules)}

    def argv(self, trial: TrialEnv) -> Sequence[str]:
        code = "; ".join(f"import {module}" for module in self.modules)
        return [str(trial.python), "-c", code]


def import_probe(spec: str) -> ImportProbe:
    """``pkg.mod[,other]`` → an :class:`ImportProbe`."""
    modules = tuple(m.strip() for m in spec.split(",") if m.strip())
    if not modules or not all(p.isidentifier() for m in modules for p in m.split(".")):
        raise InputError(f"--probe import:{spec}: expected import:pkg.mod[,other]")
    return ImportProbe(command="", modules=modules)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
