"""Read requirement files with pip's own parser (through pip-tools).

``-r``/``-c`` includes, ``--hash`` options and line continuations mean what
they mean to pip; a file pip rejects is one clear line naming the file and line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name

from envbisect.errors import InputError


@dataclass(frozen=True)
class RequirementLine:
    """One requirement from a requirements file, with where it came from."""

    requirement: Requirement | None  #: None for an editable/URL line without a name
    text: str
    origin: str  #: "file (line N)", as pip reports it
    hashes: tuple[str, ...] = ()
    editable: bool = False
    link: str | None = None  #: what pip installs, for an editable, URL, VCS or path line

    @property
    def name(self) -> NormalizedName | None:
        return canonicalize_name(self.requirement.name) if self.requirement else None

    @property
    def pinned_version(self) -> str | None:
        """The exact version for ``name==X`` (or ``===X``), else None."""
        if self.requirement is None or self.requirement.url:
            return None
        specs = list(self.requirement.specifier)
        if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
            return specs[0].version
        return None

    @property
    def direct_reference(self) -> str | None:
        """The line as an installer takes it, for an editable, URL, VCS or path requirement
        (a relative path means what it means to pip and uv: from the working directory)."""
        if self.editable and self.link:
            return f"-e {self.link}"
        if self.requirement is not None and self.requirement.url:
            return str(self.requirement)
        if self.requirement is None and self.link:
            return self.link
        return None


@dataclass(frozen=True)
class RequirementFile:
    """A parsed requirements file (``pip freeze`` output or a hand-written set)."""

    path: Path
    lines: tuple[RequirementLine, ...]

    @property
    def pinned(self) -> bool:
        return all(line.pinned_version is not None for line in self.lines)


def read_requirement_file(path: Path) -> RequirementFile:
    """Parse a requirements file with pip's parser; errors name the file and line."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        raise InputError(f"{path}: a directory, but not a virtualenv (no pyvenv.cfg)")
    # pip's parser is heavy to import; only pay for it when a file is read.
    from pip._internal.exceptions import PipError
    from pip._internal.network.session import PipSession
    from piptools._compat import parse_requirements

    lines: list[RequirementLine] = []
    try:
        with _quiet_pip():
            for parsed in parse_requirements(str(path), session=PipSession()):
                lines.append(_requirement_line(parsed))
    except UnicodeDecodeError as exc:
        where = _line_of(exc.object[: exc.start]) if isinstance(exc.object, bytes) else None
        raise InputError(
            f"{path}{where or ''}: not text ({exc.encoding} cannot decode byte "
            f"{exc.object[exc.start]:#04x}: {exc.reason})"
        ) from exc
    # OSError: an include (-r URL) that cannot be fetched. AssertionError: pip checks
    # some of what it reads with assert (a NUL before `file:` fails one).
    except (PipError, InvalidRequirement, ValueError, LookupError, OSError, AssertionError) as exc:
        raise InputError(_parse_error(path, str(exc) or type(exc).__name__)) from exc
    if not lines:
        raise InputError(f"{path}: no requirements in the file")
    return RequirementFile(path=path, lines=tuple(lines))


@contextlib.contextmanager
def _quiet_pip() -> Iterator[None]:
    """Keep pip's parser off the terminal: what it would print is in the error we raise.

    optparse prints a usage line before pip turns its error into an exception, and
    pip logs warnings (through the root logger, which would configure logging for
    the whole process).
    """
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeHandler(handler)


_FROM_LINE = re.compile(r"\s*\(from line (\d+) of (.+?)\)")
_OPTPARSE_PREFIX = re.compile(r"^\S+: error: ")
_UNNAMED = re.compile(r"^Invalid requirement: (.+)$|^(\S+) is not a valid editable requirement")


def _parse_error(path: Path, text: str) -> str:
    """pip's parse error as ``file (line N): what is wrong``, on one line."""
    where = _FROM_LINE.search(text)
    origin = f"{where[2]} (line {where[1]})" if where else str(path)
    lines = [line.strip() for line in _FROM_LINE.sub("", text).splitlines() if line.strip()]
    # The first line says what is wrong; packaging's echo of the line and its caret
    # marker follow, then optparse's "prog: error: …" and pip's hints.
    kept = lines[:1] + [
        _OPTPARSE_PREFIX.sub("", line)
        for line in lines[1:]
        if _OPTPARSE_PREFIX.match(line) or line.startswith("Hint:")
    ]
    if where is None and lines:
        unnamed = _UNNAMED.match(lines[0])
        if unnamed:
            origin += _line_containing(path, unnamed[1] or unnamed[2]) or ""
    return f"{origin}: {'; '.join(kept)}"


def _line_of(before: bytes) -> str:
    number = before.count(b"\n") + 1
    return f" (line {number})"


def _line_containing(path: Path, token: str) -> str | None:
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        at = data.find(token.encode(errors="replace"))
        if at >= 0:
            return _line_of(data[:at])
    return None


def _requirement_line(parsed: object) -> RequirementLine:
    req = getattr(parsed, "req", None)
    origin = str(getattr(parsed, "comes_from", "") or "").removeprefix("-r ")
    link = getattr(parsed, "link", None)
    text = str(req) if req is not None else str(getattr(link, "url", ""))
    requirement = None
    if req is not None:
        try:
            requirement = Requirement(str(req))
        except InvalidRequirement as exc:
            raise InputError(f"{origin}: {exc}") from exc
    hashes = tuple(
        f"{algo}:{digest}"
        for algo, digests in sorted(getattr(parsed, "hash_options", {}).items())
        for digest in digests
    )
    return RequirementLine(
        requirement=requirement,
        text=text,
        origin=origin,
        hashes=hashes,
        editable=bool(getattr(parsed, "editable", False)),
        link=str(link.url) if link is not None else None,
    )
