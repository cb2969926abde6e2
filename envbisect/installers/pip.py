"""virtualenv + pip as the installer, and pip-tools to resolve for the target Python."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from envbisect.errors import EnvironmentBuildError
from envbisect.installers.base import Installer, InstallerError
from envbisect.isolation import isolated_environ
from envbisect.model import Venv
from envbisect.removal import remove_tree


class PipInstaller(Installer):
    """virtualenv + pip (run from envbisect's env with ``--python``), pip-tools to resolve.

    pip-tools resolves for the interpreter it runs on, and cannot be told another
    (pip-tools #1124): for a target other than envbisect's own Python, pip-compile runs
    in a tool env of the target Python, made once under the cache dir and reused.
    """

    name = "pip"

    def _pip(self, python: Path, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "--disable-pip-version-check",
            *args,
        ]

    def _env(self) -> dict[str, str]:
        env = isolated_environ()
        env["PIP_CACHE_DIR"] = str(self.cache_dir / "pip")
        if self.offline:
            env["PIP_NO_INDEX"] = "1"
        return env

    def create(self, path: Path, python: Path) -> None:
        create_virtualenv(path, python, seed=False)

    def install(self, env: Path, wheels: Sequence[Path]) -> None:
        if wheels:
            self._run(
                "installing wheels",
                self._pip(
                    Venv(env).python,
                    "install",
                    "--quiet",
                    "--no-deps",
                    "--no-index",
                    *map(str, wheels),
                ),
                self._env(),
            )

    def resolve(
        self, requirements: Path, output: Path, python: Path, find_links: Path, offline: bool
    ) -> None:
        argv = [
            str(self._compiler(python)),
            "-m",
            "piptools",
            "compile",
            "--quiet",
            "--no-header",
            "--no-annotate",
            "--strip-extras",
            *self._links(find_links),
            "--output-file",
            str(output),
            str(requirements),
        ]
        if offline:
            argv.insert(4, "--no-index")
        self._run(f"resolving {requirements}", argv, self._env())

    def _compiler(self, python: Path) -> Path:
        """The Python that runs pip-compile for ``python``: envbisect's own for its own
        interpreter, else the tool env of ``python`` (made on first use)."""
        target = python.resolve()
        if target == Path(getattr(sys, "_base_executable", sys.executable)).resolve():
            return Path(sys.executable)
        digest = hashlib.sha256(str(target).encode()).hexdigest()[:16]
        tool = self.cache_dir / "tools" / f"pip-tools-{digest}"
        ready = tool / TOOL_STAMP
        if ready.is_file():
            return Venv(tool).python
        if self.offline:
            raise EnvironmentBuildError(
                f"resolving the good set for {python} needs pip-tools installed for that "
                f"Python, and --offline keeps the index out: run once without --offline "
                f"(it is made once, in {tool}), or use --installer uv"
            )
        try:
            tool.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=tool.parent))
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(f"creating {tool}", exc) from exc
        try:
            create_virtualenv(staging / "env", python, seed=True)
            self._run(
                f"installing pip-tools for {python}",
                [
                    str(Venv(staging / "env").python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    PIP_TOOLS,
                ],
                self._env(),
            )
            (staging / "env" / TOOL_STAMP).write_text(f"{PIP_TOOLS}\n")
            if tool.exists() and not ready.is_file():
                remove_tree(tool)  # a leftover without its stamp
            try:
                (staging / "env").rename(tool)  # whole or not at all
            except OSError:
                if not ready.is_file():  # else another run made it meanwhile
                    raise
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(f"creating {tool}", exc) from exc
        finally:
            remove_tree(staging)
        return Venv(tool).python

    def releases(
        self, name: str, python: Path, within: tuple[str, str], scratch: Path
    ) -> list[str]:
        output = self._run(
            f"listing the releases of {name}",
            self._pip(python, "index", "versions", name, "--json", "--pre", *self._links()),
            self._env(),
        )
        # Warnings come first, one per line; the answer is one JSON object.
        for line in reversed(output.splitlines()):
            if line.startswith("{"):
                try:
                    return [str(v) for v in json.loads(line)["versions"]]
                except (ValueError, KeyError, TypeError):
                    break
        raise InstallerError(f"listing the releases of {name}", "pip gave no answer", output)

    def fetch(self, pins: Sequence[str], target: Path, python: Path, find_links: Path) -> None:
        self._run(
            f"fetching {', '.join(pins)}",
            self._pip(
                python,
                "install",
                "--quiet",
                "--no-deps",
                *self._links(find_links),
                "--target",
                str(target),
                *pins,
            ),
            self._env(),
        )

    def install_requirements(self, env: Path, requirements: Path) -> None:
        self._run(
            f"installing {requirements}",
            self._pip(
                Venv(env).python,
                "install",
                "--quiet",
                "--no-deps",
                *self._links(),
                "-r",
                str(requirements),
            ),
            self._env(),
        )


#: What the tool env that resolves for another Python holds, and the file that says it is whole.
PIP_TOOLS = "pip-tools>=7.4"
TOOL_STAMP = ".envbisect-tool"


def create_virtualenv(path: Path, python: Path, *, seed: bool) -> None:
    """A virtualenv from ``python``: empty, or (``seed``) with pip, for a tool env."""
    from virtualenv import cli_run

    # virtualenv reads settings from the environment and from its own config file:
    # neither may give a trial env the system's packages or a seeded pip.
    env = isolated_environ() | {"VIRTUALENV_CONFIG_FILE": os.devnull}
    try:
        cli_run(
            [
                str(path),
                "--python",
                str(python),
                *([] if seed else ["--no-seed"]),
                "--no-periodic-update",
                "--quiet",
            ],
            setup_logging=False,
            env=env,
        )
    except (RuntimeError, OSError, SystemExit) as exc:
        raise EnvironmentBuildError(f"creating a virtualenv at {path} failed: {exc}") from exc
