"""Run one benchmark variant in this process and record its peak RSS.

    python bench/variant.py RSS_FILE -- <envbisect run arguments>

The baselines are registered as installer backends first (see baselines.py);
then envbisect's own ``main`` runs, exactly as the console script would.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import NaiveInstaller, UvPerTrialInstaller

from envbisect import installers
from envbisect.cli import main

installers.INSTALLERS["naive"] = NaiveInstaller
installers.INSTALLERS["uv-per-trial"] = UvPerTrialInstaller


if __name__ == "__main__":
    rss_file, separator, *argv = sys.argv[1:]
    assert separator == "--", __doc__
    code = main(argv)
    # ru_maxrss is in KiB on Linux: this process only, not its workers or installers.
    Path(rss_file).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    raise SystemExit(code)
