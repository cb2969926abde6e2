"""Where trial wheels come from: repacked from installed files, kept in a cache.

A live environment is the source of truth. Each of its distributions is
rebuilt ("repacked") into a wheel from its files as they are on disk now (what
:mod:`envbisect.records` found: the RECORD's files, patched or not, and files
added beside them), so that unpublished, local, patched and editable installs
are tried exactly as installed, offline. Console scripts are left out (the
installer regenerates them from ``entry_points.txt``); other scripts and data
files go into the wheel's ``.data`` directory. Files are streamed into the
archive (ZIP64 when large) and hashed on the way; a wheel is cached under the
digest of exactly what it holds, so a clean and a patched copy of a release
never share a slot, and a second run does no work.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from packaging.utils import canonicalize_name

from envbisect.errors import EnvironmentBuildError
from envbisect.records import packed_chunks, packed_digest
from envbisect.venvs import InstalledDistribution


@dataclass(frozen=True)
class Wheel:
    """A wheel file for one pinned distribution."""

    name: str
    version: str
    path: Path


class NotRepackable(Exception):
    """The installed distribution lacks what a repack needs (RECORD or WHEEL)."""


class ChangedWhileReading(EnvironmentBuildError):
    """A file's bytes changed between hashing and packing: the wheel would lie."""


class WheelCache:
    """Repacked wheels under ``root``, keyed by name, version and content digest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def repack(self, dist: InstalledDistribution) -> Wheel:
        """The wheel for ``dist``, repacking it on first use."""
        if dist.dist_info is None:
            raise NotRepackable(f"{dist.pin}: no RECORD (not installed from a wheel)")
        # Keyed by what is packed, not by the comparison digest (an editable's is
        # its source location): no two contents ever share a slot.
        digest = packed_digest(dist.files)
        slot = self.root / "repacked" / f"{dist.name}-{dist.version}-{digest}"
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
    record_name = f"{dist.dist_info.name}/RECORD"
    rows: list[tuple[str, str, str]] = []
    changed: list[str] = []
    # ZIP_STORED: a local cache, where speed matters and size does not.
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for file in dist.files:
            info = zipfile.ZipInfo(file.arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (file.mode & 0o777 | 0o100000) << 16
            info.file_size = file.size  # lets zipfile choose ZIP64 for a large file up front
            digest = hashlib.sha256()
            size = 0
            with archive.open(info, "w") as member:
                for chunk in packed_chunks(file.source, script=file.script):
                    member.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            if digest.hexdigest() != file.sha256:
                changed.append(file.arcname)
            encoded = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
            rows.append((file.arcname, f"sha256={encoded}", str(size)))
        if changed:
            # Its cache slot is named after the bytes hashed when the env was read.
            raise ChangedWhileReading(
                f"{dist.pin}: {', '.join(changed[:3])} changed while envbisect read the env; "
                "run again once nothing writes to it"
            )
        rows.append((record_name, "", ""))
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        archive.writestr(record_name, buffer.getvalue())
