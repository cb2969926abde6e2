"""The two baselines envbisect is measured against, as installer backends.

Both run the same search as envbisect (they are plugged into it through
``envbisect.installers.INSTALLERS``); what differs is how each trial's environment is
made — and the benchmark runs them with a fixed 30 s probe timeout, no
parallel trials and no prebuilt envs, as such tools do today:

- ``naive``: a fresh ``python -m venv`` (with pip) and ``pip install --no-index``
  of the trial's wheel files, resolving their dependencies among themselves;
- ``uv-per-trial``: a fresh ``uv venv`` and ``uv pip install --no-index`` of the
  same wheel files (with resolution, from uv's warm cache) — what the best
  current peer does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from envbisect.installers.pip import PipInstaller
from envbisect.installers.uv import UvInstaller


class NaiveInstaller(PipInstaller):
    """``python -m venv`` + ``pip install --no-index`` per trial."""

    name = "naive"

    def create(self, path: Path, python: Path) -> None:
        self._run("python -m venv", [str(python), "-m", "venv", str(path)])

    def install(self, env: Path, wheels: Sequence[Path]) -> None:
        self._run(
            "pip install",
            [
                str(env / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-index",
                *map(str, wheels),
            ],
        )


class UvPerTrialInstaller(UvInstaller):
    """``uv venv`` + ``uv pip install --no-index`` (with resolution) per trial."""

    name = "uv-per-trial"
    can_sync = False  # a fresh env for every trial

    def install(self, env: Path, wheels: Sequence[Path]) -> None:
        self._run(
            "uv pip install",
            [
                self.uv,
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--python",
                str(env / "bin" / "python"),
                *map(str, wheels),
            ],
            self._env(),
        )
