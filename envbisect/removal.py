"""Removing a tree without ever changing anything outside it (no link is followed)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything in it, and never change anything outside it.

    :func:`shutil.rmtree` never follows a symlink. When it cannot remove an entry
    (a package left a read-only or unreadable directory behind), the *directory*
    in the way is made accessible to us, and only when ``lstat`` says it is a real
    directory inside ``path``: a link's target is never chmod-ed.
    """
    if not os.path.lexists(path):
        return
    _rmtree(str(path), os.path.abspath(path))


def _rmtree(path: str, root: str) -> None:
    def retry(func: Callable[..., object], name: str, problem: object) -> None:
        # onexc (3.12+) passes the exception, onerror (3.11) an exc_info tuple.
        error = problem[1] if isinstance(problem, tuple) else problem
        assert isinstance(error, OSError)
        if isinstance(error, FileNotFoundError):
            return  # gone already (an unreadable directory removed on its own, below)
        if func in (os.open, os.scandir, os.listdir):
            # A directory we may not list: open it up and remove it as a tree of its own.
            if not _open_up(name, root):
                raise error
            _rmtree(name, root)
        else:
            # Removing an entry needs write access to the directory holding it.
            _open_up(os.path.dirname(name), root)
            func(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _open_up(directory: str, root: str) -> bool:
    """Give us rwx on ``directory`` if it is a real dir inside ``root``; whether that changed."""
    if os.path.commonpath([os.path.abspath(directory), root]) != root:
        return False
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode) or mode & stat.S_IRWXU == stat.S_IRWXU:
        return False
    os.chmod(directory, mode | stat.S_IRWXU)
    return True
