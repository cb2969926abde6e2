"""The wire format that names a trial's exact wheels: (filename, sha256) pairs and a base URL.

A trial job carries its wheel set as JSON::

    {"base_url": "http://10.0.0.5:41234/<token>/",
     "wheels": [{"filename": "pika-1.3.2-py3-none-any.whl", "sha256": "<64 hex digits>"}]}

Each wheel is at ``<base_url><sha256>/<filename>`` (the file name percent-encoded), and
``base_url`` itself is a find-links page listing them all with ``#sha256=`` fragments.
Files are addressed by content, so two wheels with one file name and other content (a
locally modified package and its release) are both in one set, and an agent that has a
digest already never fetches it again.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class WheelRef:
    """One wheel of a set: its file name and the SHA-256 of its content (lowercase hex)."""

    filename: str
    sha256: str

    def __post_init__(self) -> None:
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(
                f"{self.filename}: not a wheel's sha256 (64 hex digits): {self.sha256!r}"
            )
        if any(c in self.filename for c in "/\\\0"):
            raise ValueError(f"not a wheel file name (it has a path in it): {self.filename!r}")
        try:
            parse_wheel_filename(self.filename)
        except InvalidWheelFilename as exc:
            raise ValueError(f"not a wheel file name: {exc}") from None

    @property
    def relative_url(self) -> str:
        """Where the wheel is, relative to a wheel set's base URL."""
        return f"{self.sha256}/{urllib.parse.quote(self.filename)}"


@dataclass(frozen=True)
class WheelSet:
    """The exact wheels of a trial and the base URL they are served under."""

    base_url: str
    wheels: tuple[WheelRef, ...]

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"wheel set: base_url must be an http(s) URL: {self.base_url!r}")
        if not parts.path.endswith("/"):
            raise ValueError(f"wheel set: base_url must end with '/': {self.base_url!r}")

    def url(self, wheel: WheelRef) -> str:
        """The URL of one wheel of the set."""
        return self.base_url + wheel.relative_url

    def to_json(self) -> dict[str, Any]:
        """The set as JSON-ready data (see the module docstring)."""
        return {
            "base_url": self.base_url,
            "wheels": [{"filename": w.filename, "sha256": w.sha256} for w in self.wheels],
        }

    @classmethod
    def from_json(cls, data: object) -> WheelSet:
        """The set ``to_json`` gave; ``ValueError`` (starting "wheel set") for anything else."""
        try:
            if not isinstance(data, Mapping) or not isinstance(data["wheels"], list):
                raise TypeError("not an object with a list of wheels")
            wheels = tuple(WheelRef(w["filename"], w["sha256"]) for w in data["wheels"])
            return cls(data["base_url"], wheels)
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"wheel set: {reason.removeprefix('wheel set: ')}") from None
