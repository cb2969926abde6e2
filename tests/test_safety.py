"""Safety rules that a grep can check: no shell but --probe-cmd's, no os.system."""

from __future__ import annotations

import re
from pathlib import Path

SOURCES = sorted((Path(__file__).resolve().parent.parent / "envbisect").rglob("*.py"))


def test_no_shell_but_the_probe_commands() -> None:
    # --probe-cmd runs through /bin/sh -c by design (probes/command.py); nothing else may.
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|/bin/sh")
    hits = [
        f"{path.name}:{number}: {line.strip()}"
        for path in SOURCES
        if path.name != "command.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []
