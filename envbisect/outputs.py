"""Where a report goes besides the terminal: JSON, Markdown, JUnit, the GitHub step summary."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envbisect.ci import junit, markdown
from envbisect.errors import InputError
from envbisect.options import Options


@dataclass(frozen=True)
class Outputs:
    """Where the report goes besides the terminal."""

    json: Path | None
    markdown: Path | None
    junit: Path | None
    step_summary: bool

    @classmethod
    def of(cls, options: Options) -> Outputs:
        """The outputs the options ask for."""
        return cls(
            options.json_path, options.markdown_path, options.junit_path, options.step_summary
        )

    def write(self, report: dict[str, Any]) -> None:
        if self.json is not None:
            _write("--json", self.json, json.dumps(report, indent=2) + "\n")
        if self.markdown is not None:
            _write("--markdown", self.markdown, markdown(report))
        if self.junit is not None:
            _write("--junit", self.junit, junit(report))
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if self.step_summary and summary:
            _write("GITHUB_STEP_SUMMARY", Path(summary), markdown(report) + "\n", append=True)


def _write(option: str, path: Path, text: str, *, append: bool = False) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if append else "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write it ({exc.strerror})") from exc
