"""Read lock files, ``uv.lock`` and ``pylock.toml`` (PEP 751), for one target interpreter.

A lock names exact versions, and their files' hashes, for every platform it
was resolved for; which of them a given interpreter installs depends on
markers, evaluated here for that interpreter. The answer is a list of pins
(``name==version`` with every hash the lock records, or a direct reference
for VCS, URL and path sources) that the installer backends install as they
stand, with no resolution: a lock is materialised like a frozen requirements
file. The project a ``uv.lock`` belongs to (its workspace members, installed
editable or not at all by ``uv sync``) is not a dependency and is left out.

Both formats' readers stay in this one module (~380 lines): they share the
marker evaluation and the pin output of ``_Reader``, and differ only in layout.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name

from envbisect.errors import InputError

PYPI = "https://pypi.org/simple"
UV_DEFAULT_GROUPS = ("dev",)  #: what ``uv sync`` installs besides the project's dependencies


class InputKind(StrEnum):
    """What a ``--bad``/``--good``/``--baseline``/``--candidate`` file is."""

    REQUIREMENTS = "requirements"
    UV_LOCK = "uv.lock"
    PYLOCK = "pylock.toml"


@dataclass(frozen=True)
class LockedPackage:
    """One package a lock installs on the target interpreter."""

    name: NormalizedName
    version: str
    requirement: str  #: ``name==version`` or ``name @ url``
    hashes: tuple[str, ...] = ()  #: ``algorithm:digest``


@dataclass(frozen=True)
class Lock:
    """The packages a lock file installs on one interpreter, and where they come from."""

    path: Path
    kind: InputKind
    packages: tuple[LockedPackage, ...]
    index_urls: tuple[str, ...] = ()  #: indexes besides PyPI that the lock names
    find_links: tuple[str, ...] = ()  #: local registries (directories) the lock names
    left_out: tuple[str, ...] = ()  #: the project itself: ``name (editable)``
    extras: Mapping[NormalizedName, frozenset[str]] = field(default_factory=dict)

    def requirements(self) -> str:
        """A pinned requirements file installing exactly this lock (with ``--no-deps``)."""
        lines = [f"# materialised from {self.path} ({self.kind.value}) by envbisect"]
        lines += [f"--extra-index-url {url}" for url in self.index_urls]
        lines += [f"--find-links {path}" for path in self.find_links]
        # pip and uv check hashes only when every requirement has some.
        hashed = all(package.hashes for package in self.packages)
        for package in self.packages:
            hashes = [f"--hash={h}" for h in package.hashes] if hashed else []
            lines.append(" \\\n    ".join([package.requirement, *hashes]))
        return "\n".join(lines) + "\n"


def input_kind(path: Path) -> InputKind:
    """A lock by its standard name, else by content (``git show main:uv.lock > base.lock``)."""
    if path.name == "uv.lock":
        return InputKind.UV_LOCK
    if path.name == "pylock.toml" or fnmatch(path.name, "pylock.*.toml"):
        return InputKind.PYLOCK
    if path.suffix not in (".lock", ".toml") or not path.is_file():
        return InputKind.REQUIREMENTS
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return InputKind.REQUIREMENTS
    if "lock-version" in data:
        return InputKind.PYLOCK
    if isinstance(data.get("package"), list):
        return InputKind.UV_LOCK
    return InputKind.REQUIREMENTS


def read_lock(path: Path, kind: InputKind, markers: Mapping[str, str]) -> Lock:
    """The packages ``path`` installs where ``markers`` (the target's environment) hold."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file or directory") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from exc
    reader = _UvLock if kind is InputKind.UV_LOCK else _PyLock
    try:
        lock = reader(path, data, markers).read()
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # ValueError: a URL urllib cannot split, a path with a NUL byte, and the like.
        raise InputError(f"{path}: not a valid {kind.value} (unexpected {exc!r})") from exc
    if not lock.packages:
        raise InputError(f"{path}: installs no packages on Python {markers['python_full_version']}")
    return lock


class _Reader:
    """What both lock formats share: markers, Python requirements, sources."""

    kind: InputKind

    def __init__(self, path: Path, data: Mapping[str, Any], markers: Mapping[str, str]) -> None:
        self.path = path
        self.data = data
        self.markers = markers
        self.index_urls: dict[str, None] = {}
        self.find_links: dict[str, None] = {}

    def error(self, where: str, message: str) -> InputError:
        return InputError(f"{self.path}: {where}: {message}")

    def check_python(self, specifier: str | None, where: str) -> bool:
        """Whether the target interpreter satisfies ``requires-python``."""
        if not specifier:
            return True
        try:
            return SpecifierSet(specifier).contains(
                self.markers["python_full_version"], prereleases=True
            )
        except InvalidSpecifier as exc:
            raise self.error(where, f"invalid requires-python {specifier!r}") from exc

    def holds(self, marker: str | None, where: str, extra: Mapping[str, Any]) -> bool:
        """Whether ``marker`` holds on the target, with ``extra`` names (PEP 751's sets)."""
        if not marker:
            return True
        lock_file = "extras" in extra  # pylock.toml markers may test `'x' in extras`
        try:
            return Marker(marker).evaluate(
                {**self.markers, **extra}, context="lock_file" if lock_file else "metadata"
            )
        except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName) as exc:
            reason = str(exc).splitlines()[0]  # the rest draws a caret under the marker
            raise self.error(where, f"marker {marker!r}: {reason}") from exc

    def path_url(self, relative: str) -> str:
        return (self.path.parent / relative).resolve().as_uri()

    def lock(
        self,
        packages: Iterable[LockedPackage],
        left_out: Iterable[str] = (),
        extras: Mapping[NormalizedName, Iterable[str]] | None = None,
    ) -> Lock:
        return Lock(
            path=self.path,
            kind=self.kind,
            packages=tuple(sorted(packages, key=lambda p: p.name)),
            index_urls=tuple(self.index_urls),
            find_links=tuple(self.find_links),
            left_out=tuple(left_out),
            extras={
                name: frozenset(canonicalize_name(x) for x in wanted)
                for name, wanted in (extras or {}).items()
                if wanted
            },
        )


class _UvLock(_Reader):
    """``uv.lock``: a graph; what is installed is what the project reaches under the markers.

    Installed as ``uv sync`` would: the workspace members' dependencies, their
    ``dev`` group, and the optional dependencies of every extra that is asked for.
    """

    kind = InputKind.UV_LOCK

    def read(self) -> Lock:
        version = self.data.get("version")
        if version != 1:
            raise InputError(f"{self.path}: uv.lock version {version!r} is not supported (1 is)")
        if not self.check_python(self.data.get("requires-python"), "requires-python"):
            raise InputError(
                f"{self.path}: requires Python {self.data['requires-python']}, the target "
                f"interpreter is {self.markers['python_full_version']}"
            )
        entries = self.data.get("package", [])
        self.by_name: dict[NormalizedName, list[Mapping[str, Any]]] = {}
        for entry in entries:
            self.by_name.setdefault(canonicalize_name(entry["name"]), []).append(entry)
        members = {canonicalize_name(m) for m in self.data.get("manifest", {}).get("members", [])}
        roots = [
            entry
            for entry in entries
            if canonicalize_name(entry["name"]) in members or _is_project(entry.get("source", {}))
        ]
        top = [*self.data.get("manifest", {}).get("requirements", [])]  # `uv lock --script`
        if not roots and not top:
            raise InputError(f"{self.path}: no project and no requirements in the lock")
        reached: dict[NormalizedName, Mapping[str, Any]] = {}
        extras: dict[NormalizedName, set[str]] = {}
        todo: list[tuple[Mapping[str, Any], str]] = []
        for root in roots:
            name = root["name"]
            reached[canonicalize_name(name)] = root
            groups = root.get("dev-dependencies", {})
            for dep in [*root.get("dependencies", []), *_groups(groups, UV_DEFAULT_GROUPS)]:
                todo.append((dep, name))
        todo += [(dep, "manifest requirements") for dep in top]
        while todo:
            dep, parent = todo.pop()
            if not self.holds(dep.get("marker"), f"{parent} → {dep['name']}", {"extra": ""}):
                continue
            entry = self._entry(dep, parent)
            name = canonicalize_name(entry["name"])
            wanted = set(dep.get("extra", []))
            if name in reached and wanted <= extras.get(name, set()):
                continue
            new = wanted - extras.get(name, set())
            extras.setdefault(name, set()).update(wanted)
            following = [] if name in reached else [*entry.get("dependencies", [])]
            reached[name] = entry
            optional = entry.get("optional-dependencies", {})
            following += [d for extra in sorted(new) for d in optional.get(extra, [])]
            todo += [(d, entry["name"]) for d in following]
        packages, left_out = [], []
        for entry in reached.values():
            source = entry.get("source", {})
            if canonicalize_name(entry["name"]) in members or _is_project(source):
                kind = "editable" if "editable" in source else "virtual"
                left_out.append(f"{entry['name']} ({kind}, the project itself)")
            else:
                packages.append(self._package(entry))
        return self.lock(packages, left_out, extras)

    def _entry(self, dep: Mapping[str, Any], parent: str) -> Mapping[str, Any]:
        """The package entry a dependency means: by version/source, else by fork markers."""
        name = canonicalize_name(dep["name"])
        where = f"{parent} → {dep['name']}"
        entries = self.by_name.get(name, [])
        if len(entries) > 1 and "version" in dep:
            entries = [e for e in entries if e.get("version") == dep["version"]]
        if len(entries) > 1 and "source" in dep:
            entries = [e for e in entries if e.get("source") == dep["source"]]
        if len(entries) > 1:
            entries = [
                e
                for e in entries
                if any(
                    self.holds(m, where, {"extra": ""}) for m in e.get("resolution-markers", [""])
                )
            ]
        if len(entries) != 1:
            found = "no entry" if not entries else f"{len(entries)} entries"
            raise self.error(where, f"{found} for {dep['name']} in the lock")
        return entries[0]

    def _package(self, entry: Mapping[str, Any]) -> LockedPackage:
        name, version = entry["name"], str(entry.get("version", ""))
        source = entry.get("source", {})
        files = [entry.get("sdist"), *entry.get("wheels", [])]
        hashes = tuple(f["hash"] for f in files if f and f.get("hash"))
        if "registry" in source:
            registry = str(source["registry"])
            if registry.startswith(("http://", "https://", "file://")):
                if registry.rstrip("/") != PYPI:
                    self.index_urls[registry] = None
            else:  # a local directory of distributions: a find-links source
                self.find_links[str((self.path.parent / registry).resolve())] = None
            if not version:
                raise self.error(name, "a registry package without a version")
            return LockedPackage(canonicalize_name(name), version, f"{name}=={version}", hashes)
        if "git" in source:
            url = _git_url(str(source["git"]))
            return LockedPackage(canonicalize_name(name), version, f"{name} @ {url}")
        if "url" in source:
            return LockedPackage(canonicalize_name(name), version, f"{name} @ {source['url']}")
        for key in ("path", "directory"):
            if key in source:
                url = self.path_url(str(source[key]))
                return LockedPackage(canonicalize_name(name), version, f"{name} @ {url}", hashes)
        raise self.error(name, f"unsupported source {dict(source)!r}")


class _PyLock(_Reader):
    """``pylock.toml``: a flat list; each package applies where its marker holds."""

    kind = InputKind.PYLOCK

    def read(self) -> Lock:
        version = str(self.data.get("lock-version", ""))
        if version.split(".")[0] != "1":
            raise InputError(f"{self.path}: lock-version {version!r} is not supported (1.x is)")
        if not self.check_python(self.data.get("requires-python"), "requires-python"):
            raise InputError(
                f"{self.path}: requires Python {self.data['requires-python']}, the target "
                f"interpreter is {self.markers['python_full_version']}"
            )
        context = {
            "extras": frozenset(),
            "dependency_groups": frozenset(self.data.get("default-groups", [])),
        }
        chosen: dict[NormalizedName, LockedPackage] = {}
        for number, entry in enumerate(self.data.get("packages", []), start=1):
            where = f"package {entry.get('name', '?')!r} (entry {number})"
            if not self.holds(entry.get("marker"), where, context):
                continue
            if not self.check_python(entry.get("requires-python"), where):
                continue
            package = self._package(entry, where)
            if package.name in chosen:
                raise self.error(where, "a second entry applies to the target interpreter")
            chosen[package.name] = package
        return self.lock(chosen.values())

    def _package(self, entry: Mapping[str, Any], where: str) -> LockedPackage:
        name = entry["name"]
        version = str(entry.get("version", ""))
        key = canonicalize_name(name)
        if "vcs" in entry:
            vcs = entry["vcs"]
            base = vcs.get("url") or self.path_url(vcs["path"])
            url = f"{vcs.get('type', 'git')}+{base}@{vcs['commit-id']}"
            if vcs.get("subdirectory"):
                url += f"#subdirectory={vcs['subdirectory']}"
            return LockedPackage(key, version, f"{name} @ {url}")
        if "directory" in entry:
            directory = entry["directory"]
            url = self.path_url(directory["path"])
            if directory.get("subdirectory"):
                url += f"#subdirectory={directory['subdirectory']}"
            return LockedPackage(key, version, f"{name} @ {url}")
        if "archive" in entry:
            archive = entry["archive"]
            url = archive.get("url") or self.path_url(archive["path"])
            return LockedPackage(key, version, f"{name} @ {url}", _hashes([archive]))
        files = [entry["sdist"]] if "sdist" in entry else []
        files += entry.get("wheels", [])
        if not files:
            raise self.error(where, "no source: none of vcs, directory, archive, sdist, wheels")
        if not version:
            raise self.error(where, "no version")
        if entry.get("index") and entry["index"].rstrip("/") != PYPI:
            self.index_urls[entry["index"]] = None
        return LockedPackage(key, version, f"{name}=={version}", _hashes(files))


def _is_project(source: Mapping[str, Any]) -> bool:
    """Workspace members are locked as editable (packages) or virtual (plain projects)."""
    return "editable" in source or "virtual" in source


def _groups(groups: Mapping[str, list[Any]], names: Iterable[str]) -> list[Any]:
    return [dep for name in names for dep in groups.get(name, [])]


def _hashes(files: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    return tuple(
        f"{algorithm}:{digest}"
        for file in files
        for algorithm, digest in sorted(file.get("hashes", {}).items())
    )


def _git_url(source: str) -> str:
    """``https://host/repo?rev=x#<commit>`` (uv.lock) → ``git+https://host/repo@<commit>``."""
    parts = urlsplit(source)
    query = parse_qs(parts.query)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    url = f"git+{base}@{parts.fragment}" if parts.fragment else f"git+{base}"
    if "subdirectory" in query:
        url += f"#subdirectory={query['subdirectory'][0]}"
    return url
