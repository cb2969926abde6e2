"""uv as the installer: fast creation, hardlinks from its cache, ``uv pip sync``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from packaging.version import Version

from envbisect.errors import EnvironmentBuildError
from envbisect.installers.base import Installer, InstallerError, pinned_version
from envbisect.isolation import isolated_environ
from envbisect.model import Venv


class UvInstaller(Installer):
    """uv: fast creation, hardlinks from its cache, a real resolver, ``uv pip sync``."""

    name = "uv"
    can_sync = True

    def __init__(
        self,
        cache_dir: Path,
        logs: Path,
        find_links: Sequence[Path] = (),
        *,
        offline: bool = False,
    ) -> None:
        super().__init__(cache_dir, logs, find_links, offline=offline)
        from uv import find_uv_bin

        self.uv = find_uv_bin()

    def _env(self) -> dict[str, str]:
        env = isolated_environ()
        env.update(
            UV_CACHE_DIR=str(self.cache_dir / "uv"),
            UV_PYTHON_DOWNLOADS="never",
            UV_NO_PROGRESS="1",
        )
        if self.offline:
            env["UV_OFFLINE"] = "1"
        return env

    def create(self, path: Path, python: Path) -> None:
        self._run(
            "creating a virtualenv",
            [self.uv, "venv", "--quiet", "--no-config", "--python", str(python), str(path)],
            self._env(),
        )

    def install(self, env: Path, wheels: Sequence[Path]) -> None:
        if not wheels:
            return
        self._run(
            "installing wheels",
            [
                self.uv,
                "pip",
                "install",
                "--quiet",
                "--no-config",
                "--no-deps",
                "--offline",
                "--link-mode",
                "hardlink",
                "--python",
                str(Venv(env).python),
                *map(str, wheels),
            ],
            self._env(),
        )

    def resolve(
        self, requirements: Path, output: Path, python: Path, find_links: Path, offline: bool
    ) -> None:
        argv = [
            self.uv,
            "pip",
            "compile",
            "--quiet",
            "--no-header",
            "--no-annotate",
            "--python",
            str(python),
            *self._links(find_links),
            "--output-file",
            str(output),
            str(requirements),
        ]
        if offline:
            argv[4:4] = ["--no-index", "--offline"]
        self._run(f"resolving {requirements}", argv, self._env())

    def releases(
        self, name: str, python: Path, within: tuple[str, str], scratch: Path
    ) -> list[str]:
        # uv lists no versions, but resolves one with the user's indexes, index strategy
        # and credentials: ask for the highest release in range, then again without it,
        # until none is left (~50 ms a query once uv's cache holds the index page).
        low, high = sorted(within, key=Version)
        pre = Version(low).is_prerelease or Version(high).is_prerelease
        query, answer = scratch / "release-query.in", scratch / "release-answer.txt"
        found: list[str] = []
        while True:
            spec = f"{name}>={low},<={high}{''.join(f',!={v}' for v in found)}\n"
            try:
                scratch.mkdir(parents=True, exist_ok=True)
                query.write_text(spec)
                answer.unlink(missing_ok=True)
            except OSError as exc:
                raise EnvironmentBuildError.from_os_error(f"writing {query}", exc) from exc
            argv = [
                self.uv,
                "pip",
                "compile",
                "--quiet",
                "--no-header",
                "--no-annotate",
                "--no-deps",
                "--resolution",
                "highest",
                "--prerelease",
                "allow" if pre else "disallow",
                "--python",
                str(python),
                *self._links(),
                *(["--no-index"] if self.offline else []),
                "--output-file",
                str(answer),
                str(query),
            ]
            try:
                output = self._run(f"listing the releases of {name}", argv, self._env())
            except InstallerError as exc:
                if found and "No solution found" in exc.output:
                    return found  # every release in range is listed
                raise
            version = pinned_version(answer)
            if version is None or version in found:
                raise InstallerError(
                    f"listing the releases of {name}", "uv named no new version", output
                )
            found.append(version)

    def fetch(self, pins: Sequence[str], target: Path, python: Path, find_links: Path) -> None:
        self._run(
            f"fetching {', '.join(pins)}",
            [
                self.uv,
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--python",
                str(python),
                *self._links(find_links),
                "--target",
                str(target),
                *pins,
            ],
            self._env(),
        )

    def sync(self, env: Path, wheels: Sequence[Path], listing: Path) -> None:
        # `uv pip sync` uninstalls what is not listed (with the bytecode and scripts its
        # RECORD names) and installs what is missing: the env ends as if built afresh.
        listing.write_text("".join(f"{wheel.resolve().as_uri()}\n" for wheel in wheels))
        self._run(
            "syncing a trial env",
            [
                self.uv,
                "pip",
                "sync",
                "--quiet",
                "--no-config",
                "--offline",
                "--allow-empty-requirements",
                "--link-mode",
                "hardlink",
                "--python",
                str(Venv(env).python),
                str(listing),
            ],
            self._env(),
        )

    def install_requirements(self, env: Path, requirements: Path) -> None:
        self._run(
            f"installing {requirements}",
            [
                self.uv,
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--python",
                str(Venv(env).python),
                *self._links(),
                "-r",
                str(requirements),
            ],
            self._env(),
        )
