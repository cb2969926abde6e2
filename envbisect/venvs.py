"""Read a live virtualenv: its interpreter and its installed distributions.

A live virtualenv is read with :mod:`importlib.metadata` pointed at its
site-packages (never by importing its code); its interpreter is asked, with
``-I -S`` so no ``.pth`` hook of the env runs, for its version, paths and PEP
508 marker environment. Every file of a distribution is hashed as it is on disk (see
:mod:`envbisect.records`), so a package patched in place is seen as such.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from importlib.metadata import PackageMetadata
from pathlib import Path
from typing import Any

import packaging
from packaging.utils import NormalizedName, canonicalize_name

from envbisect.delta import LocalChange
from envbisect.errors import InputError
from envbisect.hashing import FileHashes
from envbisect.model import Venv
from envbisect.records import Contents, PackedFile, survey, text_digest

#: The oldest Python trial envs can run on: the interpreter query below runs envbisect's
#: own ``packaging`` there (3.9+), and virtualenv (``--installer pip``) creates envs of 3.9+.
MIN_PYTHON = (3, 9)
#: Asked first, of any interpreter (Python 2 included), before anything that needs 3.9.
_VERSION_QUERY = "import sys; sys.stdout.write('%d.%d.%d' % tuple(sys.version_info[:3]))"
_PACKAGING_ROOT = str(Path(packaging.__file__).parent.parent)
_INTERPRETER_QUERY = """
import json, sys, sysconfig
from packaging.markers import default_environment
from packaging.tags import sys_tags
# Without `site`, sys.prefix is the base interpreter's: name the venv's paths explicitly.
venv = {"base": sys.argv[1], "platbase": sys.argv[1]}
scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
print(json.dumps({
    "version": ".".join(map(str, sys.version_info[:3])),
    "base_executable": getattr(sys, "_base_executable", sys.executable),
    "purelib": sysconfig.get_path("purelib", scheme, venv),
    "platlib": sysconfig.get_path("platlib", scheme, venv),
    "markers": default_environment(),
    "tag": str(next(iter(sys_tags()))),
    "platform": sysconfig.get_platform(),
}))
"""


@dataclass(frozen=True)
class Interpreter:
    """The Python a side runs on: what trial environments are created from."""

    executable: Path  #: a base interpreter (not a venv's) to create trial envs from
    version: str
    markers: Mapping[str, str] = field(hash=False, compare=False)
    tag: str = ""  #: its most specific wheel tag, e.g. ``cp312-cp312-manylinux_2_36_x86_64``
    platform: str = ""  #: ``sysconfig.get_platform()``, e.g. ``linux-x86_64``

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


@dataclass(frozen=True)
class InstalledDistribution:
    """One distribution installed in a live environment."""

    name: NormalizedName
    display_name: str
    version: str
    requires: tuple[str, ...]  #: raw Requires-Dist lines, markers not yet evaluated
    dist_info: Path | None  #: the .dist-info directory; None when not repackable (egg-info)
    site_packages: Path
    editable: bool
    #: of the files as they are on disk (an editable's: of its source location and
    #: metadata); same digest, same content
    content_digest: str
    #: what a repacked wheel carries (read from disk when packed)
    files: tuple[PackedFile, ...] = field(default=(), compare=False, repr=False)
    local_changes: tuple[LocalChange, ...] = ()  #: files changed since it was installed
    left_out: tuple[str, ...] = ()  #: ``path (why)``: files a repack leaves out

    @property
    def pin(self) -> str:
        return f"{self.display_name}=={self.version}"


@dataclass(frozen=True)
class InstalledEnv:
    """A live virtualenv: its interpreter and what is installed in it."""

    path: Path
    interpreter: Interpreter
    site_packages: tuple[Path, ...]
    distributions: Mapping[NormalizedName, InstalledDistribution]


def is_virtualenv(path: Path) -> bool:
    return path.is_dir() and (path / "pyvenv.cfg").is_file()


def read_venv(path: Path, hashes: FileHashes | None = None) -> InstalledEnv:
    """Read a live virtualenv's interpreter and installed distributions.

    ``hashes``: where file digests are remembered across runs (default: nowhere).
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not is_virtualenv(path):
        raise InputError(f"{path}: not a virtualenv (no pyvenv.cfg)")
    python = Venv(path).python
    if not python.exists():
        raise InputError(f"{path}: the virtualenv's interpreter is gone ({python} does not exist)")
    info = query_interpreter(python, label=f"{path}: its interpreter {python}")
    site_packages = tuple(dict.fromkeys(Path(info[key]) for key in ("purelib", "platlib")))
    return InstalledEnv(
        path=path,
        interpreter=interpreter_from(info),
        site_packages=site_packages,
        distributions=read_distributions(site_packages, hashes),
    )


def interpreter_from(info: Mapping[str, Any]) -> Interpreter:
    """The :class:`Interpreter` an answer of :func:`query_interpreter` describes."""
    return Interpreter(
        executable=Path(info["base_executable"]).resolve(),
        version=info["version"],
        markers=info["markers"],
        tag=info["tag"],
        platform=info["platform"],
    )


def query_interpreter(python: Path, *, label: str) -> dict[str, Any]:
    """Ask an interpreter (isolated, no site) for its version, paths and markers.

    ``label`` names it in errors (``"ENV: its interpreter PATH"``, ``"--python PATH"``).
    Its version comes first, from a line any Python runs: one too old for envbisect
    is one clear error. ``base_executable`` is the base interpreter trial envs are
    created from, never a virtualenv's own python (see :func:`base_interpreter`).
    """
    version = _ask(python, label, ["-E", "-s", "-S", "-c", _VERSION_QUERY]).strip()
    try:
        numbers = tuple(int(part) for part in version.split("."))
    except ValueError:
        raise InputError(f"{label} does not behave like a Python interpreter") from None
    if numbers < MIN_PYTHON:
        needed = ".".join(map(str, MIN_PYTHON))
        raise InputError(f"{label} is Python {version}; envbisect needs Python {needed} or newer")
    # -I -S: no PYTHONPATH, no site, so none of the env's .pth hooks run. envbisect's
    # own `packaging` is put on sys.path by hand; nothing of the env is imported.
    script = f"import sys; sys.path.insert(0, {_PACKAGING_ROOT!r})\n{_INTERPRETER_QUERY}"
    answer = _ask(python, label, ["-I", "-S", "-c", script, str(python.parent.parent)])
    try:
        result: dict[str, Any] = json.loads(answer)
    except ValueError as exc:
        raise InputError(f"{label} does not behave like a Python interpreter") from exc
    base = base_interpreter(python, Path(result["base_executable"]), version, label)
    result["base_executable"] = str(base)
    return result


def _ask(python: Path, label: str, arguments: list[str]) -> str:
    """What ``python ARGUMENTS`` prints; a failure is one line naming ``label``."""
    try:
        done = subprocess.run(
            [str(python), *arguments],
            env={"PATH": os.defpath},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as exc:
        raise InputError(f"{label} cannot be run: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InputError(f"{label} did not answer in 60 s") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"{label} failed: {last}")
    return done.stdout


def base_interpreter(python: Path, reported: Path, version: str, label: str) -> Path:
    """The interpreter outside any virtualenv that ``python`` runs as.

    ``reported`` is its ``sys._base_executable``. A virtualenv's python is a link to
    its base, or — made with ``--copies`` — a copy, whose ``sys._base_executable``
    (before 3.11) is the copy itself. Handing that to uv or virtualenv would run the
    env's ``site`` and its ``.pth`` hooks, so the base is then looked up in the env's
    ``pyvenv.cfg`` ``home``.
    """
    resolved = reported.resolve()
    if resolved.is_file() and _venv_of(resolved) is None:
        return resolved
    venv = _venv_of(resolved) or _venv_of(python.absolute())
    if venv is None:
        raise InputError(f"{label}: its base interpreter {reported} does not exist")
    from virtualenv.create.pyenv_cfg import PyEnvCfg

    home = PyEnvCfg.from_folder(venv).content.get("home", "")
    minor = ".".join(version.split(".")[:2])
    for name in (f"python{minor}", f"python{version.split('.')[0]}", "python"):
        candidate = Path(home, name)
        if home and candidate.is_file() and _venv_of(candidate.resolve()) is None:
            with contextlib.suppress(InputError):
                found = _ask(candidate, str(candidate), ["-E", "-s", "-S", "-c", _VERSION_QUERY])
                if found.startswith(f"{minor}."):
                    return candidate.resolve()
    raise InputError(
        f"{venv}: its base interpreter cannot be found: {python} is a copy (a virtualenv "
        f"made with --copies) and pyvenv.cfg's home {home or '(none)'} holds no "
        f"python{minor}; envbisect creates trial envs from the base interpreter"
    )


def _venv_of(executable: Path) -> Path | None:
    """The virtualenv whose interpreter ``executable`` is (pyvenv.cfg beside it or above)."""
    return next((d for d in executable.parents[:2] if (d / "pyvenv.cfg").is_file()), None)


def read_distributions(
    site_packages: tuple[Path, ...], hashes: FileHashes | None = None
) -> dict[NormalizedName, InstalledDistribution]:
    """Installed distributions under these directories, first one wins as on sys.path.

    Their files are hashed as they are on disk (``hashes``: a persistent cache).
    """
    found: dict[NormalizedName, tuple[metadata.Distribution, PackageMetadata]] = {}
    for dist in metadata.distributions(path=[str(p) for p in site_packages]):
        meta = dist.metadata  # parsed anew on each access: once is enough
        if meta["Name"]:
            found.setdefault(canonicalize_name(meta["Name"]), (dist, meta))
    dist_infos = {
        key: dist_info
        for key, (dist, _) in found.items()
        if (dist_info := _dist_info_dir(dist)) is not None and (dist_info / "RECORD").is_file()
    }
    contents = survey(dist_infos, hashes or FileHashes(None))
    return {
        key: _installed(dist, meta, key, dist_infos.get(key), contents.get(key))
        for key, (dist, meta) in found.items()
    }


def _installed(
    dist: metadata.Distribution,
    meta: PackageMetadata,
    key: NormalizedName,
    dist_info: Path | None,
    contents: Contents | None,
) -> InstalledDistribution:
    name, version = meta["Name"], meta["Version"]
    direct_url = dist.read_text("direct_url.json")
    source: dict[str, Any] = {}
    if direct_url:
        with contextlib.suppress(ValueError, TypeError):
            source = dict(json.loads(direct_url))
    editable = bool(isinstance(source.get("dir_info"), dict) and source["dir_info"].get("editable"))
    if contents is None:
        digest = text_digest(f"{name}=={version}")
    elif editable:
        # Its code lives in the source tree: the same tree, version and metadata in
        # good and bad is the same package, whichever installer linked it in.
        digest = text_digest(
            "editable", str(source.get("url")), version, dist.read_text("METADATA") or ""
        )
    else:
        digest = contents.digest
    return InstalledDistribution(
        name=key,
        display_name=name,
        version=version,
        requires=tuple(meta.get_all("Requires-Dist") or dist.requires or ()),
        dist_info=dist_info if contents is not None else None,
        site_packages=Path(str(dist.locate_file(""))),
        editable=editable,
        content_digest=digest,
        files=contents.files if contents else (),
        local_changes=contents.local_changes if contents and not editable else (),
        left_out=contents.left_out if contents else (),
    )


def _dist_info_dir(dist: metadata.Distribution) -> Path | None:
    try:
        files = dist.files or ()
    except csv.Error:
        return None  # a garbled RECORD: not repackable, like none at all
    for entry in files:
        parent = entry.parent
        if parent.name.endswith(".dist-info") and entry.name == "METADATA":
            return Path(str(dist.locate_file(parent)))
    return None
