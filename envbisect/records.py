"""A distribution's files as they are on disk, checked against its RECORD.

A RECORD names every file an installer wrote and its hash at install time; what
counts is the disk. Every file is hashed as it is now: one whose bytes differ
from its RECORD hash, one the RECORD lists that is gone, and one added in a
directory the distribution owns (a directory its RECORD lists files in, or
below one; listed in no RECORD of the env; bytecode aside) is a *local change*.

Each file is also placed where a repacked wheel carries it: site-packages
files at the wheel's root, scripts in ``.data/scripts``, other files under the
env's prefix in ``.data/data``. What would land outside a wheel's proper scheme
(outside the env, the env's own ``pyvenv.cfg``, interpreter and activation
scripts, the standard library outside site-packages) and symlinks that point
outside the env are *left out*, with a note saying why. Console scripts are left
out silently: the installer writes them again from ``entry_points.txt``.

A distribution's content digest is made of what it packs (where each file goes,
and its bytes' sha256), so two sides compare by content and a repacked wheel's
cache slot is keyed by exactly what is in it.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import csv
import hashlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName

from envbisect.delta import FileChange, LocalChange
from envbisect.hashing import CHUNK, FileHashes, Hashed, chunks

# Files an installer writes into a dist-info: they differ between pip, uv and
# a repack of the same wheel, so they do not count towards a distribution's content.
INSTALLER_FILES = frozenset(
    {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json", "uv_cache.json"}
)

#: Files of the env itself in its ``bin``: a distribution's RECORD has no business there.
_ENV_SCRIPTS = re.compile(
    r"python(\d+(\.\d+)?)?[tw]?|activate(\.\w+)?|activate_this\.py|Activate\.ps1|deactivate\.nu"
)
_DIGEST_VERSION = "envbisect-content-2"


@dataclass(frozen=True)
class PackedFile:
    """One file a repacked wheel carries: where it comes from, where it goes, what it holds."""

    arcname: str  #: its path inside the wheel
    source: Path  #: the file to read (for a symlink inside the env: its target)
    sha256: str  #: hex sha256 of the bytes as packed (a script's with its portable shebang)
    size: int  #: bytes on disk
    mode: int  #: ``st_mode`` on disk
    script: bool = False  #: a script: its ``#!…python`` line becomes ``#!python`` when packed


@dataclass(frozen=True)
class Contents:
    """What a distribution holds on disk."""

    files: tuple[PackedFile, ...]  #: by arcname
    local_changes: tuple[LocalChange, ...]  #: by path
    left_out: tuple[str, ...]  #: ``path (why)`` for each file a repack leaves out
    digest: str  #: of what is packed: see :func:`packed_digest`


@dataclass(frozen=True)
class _Entry:
    relative: str  #: as the RECORD names it; for an added file, relative to site-packages
    source: str  #: absolute, normalised, symlinks not resolved
    arcname: str
    script: bool
    expected: str | None  #: hex sha256 from the RECORD (None: no sha256 there)
    added: bool = False  #: found on disk, listed in no RECORD


def packed_digest(files: Sequence[PackedFile]) -> str:
    """The digest of what a repacked wheel of these files holds."""
    return text_digest(_DIGEST_VERSION, *sorted(f"{f.arcname}\0{f.sha256}" for f in files))


def text_digest(*parts: str) -> str:
    """A short digest of some text (the identity of what is not read from files)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def packed_chunks(source: Path, *, script: bool) -> Iterator[bytes]:
    """A file's bytes as a wheel carries them, :data:`~envbisect.hashing.CHUNK` at a time.

    An installed script names the old env's interpreter; ``#!python`` lets the
    installer point it at the trial env's.
    """
    if not script:
        yield from chunks(source)
        return
    with source.open("rb") as handle:
        first = handle.readline(CHUNK)
        if first.startswith(b"#!") and b"python" in first:
            first = b"#!python\n"
        yield first
        while chunk := handle.read(CHUNK):
            yield chunk


def survey(
    dist_infos: Mapping[NormalizedName, Path], hashes: FileHashes
) -> dict[NormalizedName, Contents]:
    """The contents of each distribution (by its ``.dist-info``, with a RECORD) of one env.

    All distributions of the env are surveyed together: a file beside them is an
    addition only if no RECORD of the env lists it. One whose RECORD cannot be
    read is left out of the answer (like a distribution without one).
    """
    # Plain strings, not Path: ~10k files, and pathlib's parsing would be most of the time.
    entries: dict[NormalizedName, list[_Entry]] = {}
    left_out: dict[NormalizedName, list[str]] = {}
    listed: set[str] = set()
    owners: dict[str, set[NormalizedName]] = {}
    for name, dist_info in dist_infos.items():
        rows = _record_rows(dist_info / "RECORD")
        if rows is None:
            continue
        placer = _Placer(str(dist_info))
        entries[name], left_out[name] = [], []
        for relative, hash_field in rows:
            source = placer.locate(relative)
            listed.add(source)
            if relative.endswith(".pyc") or "__pycache__" in relative.split("/"):
                continue  # bytecode: installers compile it again
            arcname, why = placer.place(source)
            if why is not None:
                left_out[name].append(f"{relative} ({why})")
            if arcname is None:
                continue
            parent = os.path.dirname(source)
            if parent != placer.site and parent.startswith(placer.site_slash):
                owners.setdefault(parent, set()).add(name)
            script = arcname.startswith(placer.scripts)
            entries[name].append(_Entry(relative, source, arcname, script, _sha256_hex(hash_field)))
    for path, names in _added_files(owners, listed):
        for name in names:
            relative = os.path.relpath(path, dist_infos[name].parent)
            entries[name].append(_Entry(relative, path, relative, False, None, added=True))
    real_dirs: dict[str, str] = {}
    readable: dict[str, Path] = {}
    for name, found in entries.items():
        root = _real(str(_prefix_of(dist_infos[name].parent)), real_dirs) + os.sep
        kept = []
        for entry in found:
            real = _real(entry.source, real_dirs)
            if not real.startswith(root):
                left_out[name].append(f"{entry.relative} (a symlink to {real}, outside the env)")
                continue
            readable[entry.source] = Path(real)
            kept.append(entry)
        entries[name] = kept
    hashed = hashes.hash_files(readable.values())
    return {
        name: _contents(found, readable, hashed, left_out[name]) for name, found in entries.items()
    }


def _contents(
    entries: list[_Entry],
    readable: Mapping[str, Path],
    hashed: Mapping[Path, Hashed],
    left_out: list[str],
) -> Contents:
    files: dict[str, PackedFile] = {}
    changes: set[LocalChange] = set()
    for entry in entries:
        source = readable[entry.source]
        found = hashed.get(source)
        if found is None:
            changes.add(LocalChange(entry.relative, FileChange.REMOVED))
            continue
        if entry.added:
            changes.add(LocalChange(entry.relative, FileChange.ADDED))
        elif entry.expected is not None and entry.expected != found.sha256:
            changes.add(LocalChange(entry.relative, FileChange.MODIFIED))
        sha256 = found.sha256
        if entry.script:
            digest = hashlib.sha256()
            for chunk in packed_chunks(source, script=True):
                digest.update(chunk)
            sha256 = digest.hexdigest()
        packed = PackedFile(entry.arcname, source, sha256, found.size, found.mode, entry.script)
        files.setdefault(entry.arcname, packed)
    ordered = tuple(sorted(files.values(), key=lambda f: f.arcname))
    return Contents(
        files=ordered,
        local_changes=tuple(sorted(changes, key=lambda c: c.path)),
        left_out=tuple(left_out),
        digest=packed_digest(ordered),
    )


class _Placer:
    """Where one distribution's files go in its repacked wheel (or why they do not)."""

    def __init__(self, dist_info: str) -> None:
        self.dist_info = dist_info
        self.site = os.path.dirname(dist_info)
        self.site_slash = self.site + os.sep
        self.prefix = str(_prefix_of(Path(self.site)))
        self.prefix_slash = self.prefix + os.sep
        self.bin = os.path.join(self.prefix, "bin")
        self.console_scripts = _console_scripts(Path(dist_info))
        data = f"{os.path.basename(dist_info).removesuffix('.dist-info')}.data"
        self.scripts = f"{data}/scripts/"
        self.data = f"{data}/data/"

    def locate(self, relative: str) -> str:
        """The file a RECORD path names (absolute, normalised)."""
        if self.prefix == self.site and relative.startswith("../../bin/"):
            # pip --target records scripts relative to the home scheme it installed into
            # first (<home>/lib/python, <home>/bin); they end up in <target>/bin.
            relative = relative.removeprefix("../../")
        return os.path.normpath(os.path.join(self.site, relative))

    def place(self, source: str) -> tuple[str | None, str | None]:
        """``(arcname, None)``; ``(None, why)`` when left out; ``(None, None)``: not packed."""
        parent, base = os.path.split(source)
        if parent == self.bin:
            if base in self.console_scripts:
                return None, None  # written again by the installer from entry_points.txt
            if _ENV_SCRIPTS.fullmatch(base):
                return None, "the env's own interpreter or activation script"
            return self.scripts + base, None
        if source.startswith(self.site_slash):
            if parent == self.dist_info and base in INSTALLER_FILES:
                return None, None
            return source[len(self.site_slash) :].replace(os.sep, "/"), None
        if not source.startswith(self.prefix_slash):
            return None, "outside the env"
        parts = source[len(self.prefix_slash) :].split(os.sep)
        if parts == ["pyvenv.cfg"]:
            return None, "the env's own configuration"
        if len(parts) > 2 and parts[0] in ("lib", "lib64") and parts[1].startswith("python"):
            return None, "in the interpreter's library, outside site-packages"
        return self.data + "/".join(parts), None


def _added_files(
    owners: Mapping[str, set[NormalizedName]], listed: set[str]
) -> Iterator[tuple[str, set[NormalizedName]]]:
    """Files in (or below) directories distributions own that no RECORD lists."""
    for directory, names in owners.items():
        pending = [directory]
        while pending:
            current = pending.pop()
            try:
                with os.scandir(current) as found:
                    children = list(found)
            except OSError:
                continue
            for child in children:
                if child.is_dir(follow_symlinks=False):
                    # An owned subdirectory is looked at on its own, for its own owners.
                    if child.name != "__pycache__" and child.path not in owners:
                        pending.append(child.path)
                elif child.path not in listed and not child.name.endswith((".pyc", ".pyo")):
                    if current.endswith(".dist-info") and child.name in INSTALLER_FILES:
                        continue
                    yield child.path, names


def _record_rows(record: Path) -> list[tuple[str, str]] | None:
    """``(path, hash)`` of each RECORD row; None for a RECORD that cannot be read."""
    try:
        with record.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
            return [
                (row[0], row[1] if len(row) > 1 else "")
                for row in csv.reader(handle)
                if row and row[0]
            ]
    except (OSError, csv.Error):
        return None


def _sha256_hex(field: str) -> str | None:
    """The hex digest of a RECORD's ``sha256=<urlsafe-b64>`` (None for others or none)."""
    algorithm, _, value = field.partition("=")
    if algorithm != "sha256" or not value:
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    except (binascii.Error, ValueError):
        return None


def _real(path: str, real_dirs: dict[str, str]) -> str:
    """``path`` with symlinks resolved; each directory's resolution remembered (~10k files)."""
    parent, base = os.path.split(path)
    real_parent = real_dirs.get(parent)
    if real_parent is None:
        real_parent = real_dirs[parent] = os.path.realpath(parent)
    if os.path.islink(path):
        return os.path.realpath(path)
    return os.path.join(real_parent, base)


def _console_scripts(dist_info: Path) -> set[str]:
    entry_points = dist_info / "entry_points.txt"
    if not entry_points.is_file():
        return set()
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(entry_points.read_text())
    except (configparser.Error, UnicodeDecodeError):
        return set()
    return {
        name
        for section in ("console_scripts", "gui_scripts")
        if parser.has_section(section)
        for name in parser.options(section)
    }


def _prefix_of(site: Path) -> Path:
    # <prefix>/lib/pythonX.Y/site-packages in a venv; a --target dir is its own prefix.
    if site.parent.name.startswith("python") and site.parent.parent.name in ("lib", "lib64"):
        return site.parents[2]
    return site
