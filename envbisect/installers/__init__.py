"""The installer backends, by ``--installer`` name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from envbisect.errors import InputError
from envbisect.installers.base import Installer
from envbisect.installers.pip import PipInstaller
from envbisect.installers.uv import UvInstaller

#: The installer backends by ``--installer`` name (the benchmark registers its baselines).
INSTALLERS: dict[str, type[Installer]] = {"uv": UvInstaller, "pip": PipInstaller}


def installer(
    kind: str,
    cache_dir: Path,
    logs: Path,
    find_links: Sequence[Path] = (),
    *,
    offline: bool = False,
) -> Installer:
    """The installer backend by name (see :data:`INSTALLERS`)."""
    if kind not in INSTALLERS:
        raise InputError(f"--installer must be one of {', '.join(INSTALLERS)}, not {kind!r}")
    return INSTALLERS[kind](cache_dir, logs, find_links, offline=offline)
