"""Where trial wheels come from: repacked from installed files, kept in a cache.

A live environment is the source of truth. Each of its distributions is
rebuilt ("repacked") into a wheel from the files its RECORD lists, as they are
on disk now, so that unpublished, local, patched and editable installs are
tried exactly as installed, offline. Console scripts are left out (the
installer regenerates them from ``entry_points.txt``); other scripts and data
files go into the wheel's ``.data`` directory. Wheels are cached by name,
version and content digest, so a second run does no work.
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from packaging.utils import canonicalize_name

from envbisect.errors import EnvironmentBuildError
from envbisect.inputs import INSTALLER_FILES, InstalledDistribution


@dataclass(frozen=True)
class Wheel:
    """A wheel file for one pinned distribution."""

    name: str
    version: str
    path: Path


class NotRepackable(Exception):
    """The installed distribution lacks what a repack needs (RECORD or WHEEL)."""


class WheelCache:
    """Repacked wheels under ``root``, keyed by name, version and content digest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def repack(self, dist: InstalledDistribution) -> Wheel:
        """The wheel for ``dist``, repacking it on first use."""
        if dist.dist_info is None:
            raise NotRepackable(f"{dist.pin}: no RECORD (not installed from a wheel)")
        slot = self.root / "repacked" / f"{dist.name}-{dist.version}-{dist.content_digest}"
        existing = sorted(slot.glob("*.whl")) if slot.is_dir() else []
        if existing:
            return Wheel(dist.name, dist.version, existing[0])
        filename = wheel_filename(dist)
        try:
            slot.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=slot, suffix=".partial")
            os.close(fd)
            try:
                _write_wheel(dist, Path(tmp))
                final = slot / filename
                os.replace(tmp, final)  # atomic: a concurrent run sees a whole wheel or none
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            raise EnvironmentBuildError.from_os_error(
                f"repacking {dist.pin} into {slot}", exc
            ) from exc
        return Wheel(dist.name, dist.version, final)


def wheel_filename(dist: InstalledDistribution) -> str:
    """``{name}-{version}-{tags}.whl`` with the tags the WHEEL file declares."""
    assert dist.dist_info is not None
    wheel_file = dist.dist_info / "WHEEL"
    if not wheel_file.is_file():
        raise NotRepackable(f"{dist.pin}: no WHEEL file in {dist.dist_info.name}")
    tags = HeaderParser().parsestr(wheel_file.read_text()).get_all("Tag") or ["py3-none-any"]
    parts = [t.split("-") for t in tags]
    compressed = "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))
    name = canonicalize_name(dist.display_name).replace("-", "_")
    version = dist.version.replace("-", "_")
    return f"{name}-{version}-{compressed}.whl"


def _write_wheel(dist: InstalledDistribution, target: Path) -> None:
    assert dist.dist_info is not None
    site = dist.site_packages
    prefix = _prefix_of(site)
    console_scripts = _console_scripts(dist.dist_info)
    data_dir = f"{dist.dist_info.name.removesuffix('.dist-info')}.data"
    record_name = f"{dist.dist_info.name}/RECORD"
    rows: list[tuple[str, str, str]] = []
    # ZIP_STORED: a local cache, where speed matters and size does not.
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for source, arcname in _wheel_members(dist, site, prefix, console_scripts, data_dir):
            data = source.read_bytes()
            if arcname.startswith(f"{data_dir}/scripts/"):
                data = _portable_shebang(data)
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (source.stat().st_mode & 0o777 | 0o100000) << 16
            archive.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append((arcname, f"sha256={digest.decode()}", str(len(data))))
        rows.append((record_name, "", ""))
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        archive.writestr(record_name, buffer.getvalue())


def _wheel_members(
    dist: InstalledDistribution,
    site: Path,
    prefix: Path,
    console_scripts: set[str],
    data_dir: str,
) -> Iterator[tuple[Path, str]]:
    assert dist.dist_info is not None
    seen: set[str] = set()
    for relative in _record_paths(dist.dist_info / "RECORD"):
        source = Path(os.path.normpath(site / relative))
        if relative.endswith(".pyc") or "__pycache__" in relative or not source.is_file():
            continue
        arcname = _arcname(source, site, prefix, console_scripts, data_dir, dist.dist_info.name)
        if arcname is None or arcname in seen:
            continue
        seen.add(arcname)
        yield source, arcname


def _arcname(
    source: Path,
    site: Path,
    prefix: Path,
    console_scripts: set[str],
    data_dir: str,
    dist_info_name: str,
) -> str | None:
    bin_dir = prefix / "bin"
    if source.parent == bin_dir:
        if source.name in console_scripts:
            return None  # regenerated by the installer from entry_points.txt
        return f"{data_dir}/scripts/{source.name}"
    if source.is_relative_to(site):
        arcname = source.relative_to(site).as_posix()
        if arcname.startswith(f"{dist_info_name}/") and source.name in INSTALLER_FILES:
            return None
        return arcname
    if source.is_relative_to(prefix):
        return f"{data_dir}/data/{source.relative_to(prefix).as_posix()}"
    return None  # outside the environment: not the distribution's to carry


def _record_paths(record: Path) -> Iterable[str]:
    with record.open(newline="") as handle:
        for row in csv.reader(handle):
            if row and row[0]:
                yield row[0]


def _console_scripts(dist_info: Path) -> set[str]:
    entry_points = dist_info / "entry_points.txt"
    if not entry_points.is_file():
        return set()
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(entry_points.read_text())
    except configparser.Error:
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


def _portable_shebang(data: bytes) -> bytes:
    # An installed script names the old env's interpreter; `#!python` lets the
    # installer point it at the trial env's.
    if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
        return b"#!python\n" + (data.split(b"\n", 1)[1] if b"\n" in data else b"")
    return data
