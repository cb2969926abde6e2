"""What a distribution makes every interpreter run at start-up, read from its files.

``site`` runs, at every start of an interpreter of the env (a Dramatiq worker's
included, before any of its own code):

- each line of a ``.pth`` file at the top of site-packages that starts with
  ``import`` followed by a space or tab (any code can follow on that line: ``import
  sys; exec(...)``); other lines only add paths. ``*-nspkg.pth`` files (setuptools'
  namespace packages) are such lines too, listed apart as mostly harmless;
- the module ``sitecustomize`` and, where user site-packages are enabled,
  ``usercustomize``.

Entry points are not among them: Dramatiq reads no entry-point group (its CLI, broker
and middleware load only the modules named on the command line; from 1.0 to 2.x its
only entry point is its own ``dramatiq`` console script), nor does the probe module.

:func:`hooks_in_files` is pure (paths relative to site-packages and their texts);
:func:`startup_hooks` reads them from a wheel, the file a trial installs.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath


class HookKind(StrEnum):
    PTH = "pth"  #: an ``import`` line of a .pth file
    NSPKG_PTH = "nspkg-pth"  #: an ``import`` line of a setuptools ``*-nspkg.pth`` file
    SITECUSTOMIZE = "sitecustomize"  #: the ``sitecustomize`` module
    USERCUSTOMIZE = "usercustomize"  #: the ``usercustomize`` module


@dataclass(frozen=True)
class StartupHook:
    """One thing a distribution makes ``site`` run at interpreter start-up."""

    file: str  #: relative to site-packages
    line: str  #: the line that runs (for a module: its first line of code)
    lineno: int
    kind: HookKind

    def describe(self) -> str:
        """``telemetry_shim.pth: import telemetry_shim._autopatch``."""
        return f"{self.file}: {self.line}"


_MODULES = {
    "sitecustomize.py": HookKind.SITECUSTOMIZE,
    "sitecustomize/__init__.py": HookKind.SITECUSTOMIZE,
    "usercustomize.py": HookKind.USERCUSTOMIZE,
    "usercustomize/__init__.py": HookKind.USERCUSTOMIZE,
}


def hooks_in_files(files: Mapping[str, str]) -> tuple[StartupHook, ...]:
    """The start-up hooks among these files (path relative to site-packages → text)."""
    hooks: list[StartupHook] = []
    for path, text in sorted(files.items()):
        text = text.removeprefix("\ufeff")  # site reads .pth files as utf-8-sig
        if path in _MODULES:
            hooks.append(_module_hook(path, text, _MODULES[path]))
        elif "/" not in path and path.endswith(".pth"):
            kind = HookKind.NSPKG_PTH if path.endswith("-nspkg.pth") else HookKind.PTH
            hooks += [
                StartupHook(path, line.rstrip(), number, kind)
                for number, line in enumerate(text.splitlines(), start=1)
                # exactly site.addpackage's test: no leading blanks, a space or tab after
                if line.startswith(("import ", "import\t"))
            ]
    return tuple(hooks)


def _module_hook(path: str, text: str, kind: HookKind) -> StartupHook:
    lines = enumerate(text.splitlines(), start=1)
    code = next(((n, line) for n, line in lines if line.strip() and not _comment(line)), None)
    number, line = code or (1, "")
    return StartupHook(path, line.rstrip(), number, kind)


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def startup_hooks(wheel: Path) -> tuple[StartupHook, ...]:
    """The start-up hooks a wheel installs (none when it cannot be read)."""
    try:
        return hooks_in_files(_site_files(wheel))
    except (OSError, zipfile.BadZipFile):
        return ()


def _site_files(wheel: Path) -> dict[str, str]:
    """The wheel's files that may be start-up hooks, by their path in site-packages.

    A wheel's top level installs into site-packages, and so do its ``.data/purelib``
    and ``.data/platlib`` directories (the wheel format, PEP 427).
    """
    found: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            parts = PurePosixPath(member).parts
            if len(parts) > 2 and parts[0].endswith(".data") and parts[1] in ("purelib", "platlib"):
                parts = parts[2:]
            path = "/".join(parts)
            if path in _MODULES or ("/" not in path and path.endswith(".pth")):
                found[path] = archive.read(member).decode("utf-8", errors="replace")
    return found
