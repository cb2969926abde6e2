"""The GitHub Action's gate step (``action.yml``): ``python -m envbisect.action``.

Reads the action's inputs from ``INPUT_*`` variables, takes the baseline from the
pull request's base branch (the candidate file as it is there) unless one is
given, runs ``envbisect gate`` with the JSON and Markdown reports, comments the
Markdown summary on the pull request when the gate fails (``gh pr comment``),
and writes the step's outputs (``verdict``, ``exit-code``, ``report``,
``summary``) to ``$GITHUB_OUTPUT``. Its exit status is the gate's.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from envbisect.cli import main as envbisect
from envbisect.errors import ExitCode
from envbisect.masking import mask_urls

#: The step's outputs when the candidate file is the same as on the base branch.
UNCHANGED = "unchanged"


def main(environ: Mapping[str, str] = os.environ) -> int:
    """One gate of a pull request, as the action's step runs it."""
    workdir = Path(environ.get("RUNNER_TEMP") or ".") / f"envbisect-{secrets.token_hex(3)}"
    workdir.mkdir(parents=True, exist_ok=True)
    candidate = environ.get("INPUT_CANDIDATE") or "uv.lock"
    baseline = environ.get("INPUT_BASELINE") or ""
    if not baseline:
        base = environ.get("GITHUB_BASE_REF")
        if not base:
            return _fail(environ, "no baseline: set the baseline input, or run on a pull request")
        if not Path(candidate).is_file():
            return _fail(environ, f"candidate {candidate}: no such file in the checkout")
        try:
            baseline = str(_from_base_branch(candidate, base, workdir))
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or "").strip().splitlines()
            return _fail(environ, f"{candidate} on {base}: {detail[-1] if detail else exc}")
        except OSError as exc:
            return _fail(environ, f"{candidate} on {base}: {exc}")
        if Path(baseline).read_bytes() == Path(candidate).read_bytes():
            _outputs(environ, verdict=UNCHANGED, code=0, report="", summary="")
            print(f"envbisect: {candidate} is the same as on {base}: nothing to gate")
            return 0
    report, summary = workdir / "envbisect.json", workdir / "envbisect.md"
    argv = ["gate", "--baseline", baseline, "--candidate", candidate]
    argv += ["--json", str(report), "--markdown", str(summary)]
    if environ.get("INPUT_PROBE_CMD"):
        argv += ["--probe-cmd", environ["INPUT_PROBE_CMD"]]
    elif environ.get("INPUT_PROBE"):
        argv += ["--probe", environ["INPUT_PROBE"]]
    if environ.get("INPUT_BROKER_URL"):
        argv += ["--broker-url", environ["INPUT_BROKER_URL"]]
    argv += shlex.split(environ.get("INPUT_ARGS", ""))
    code = envbisect(argv)
    verdict, line = "error", ""
    if report.is_file():
        data = json.loads(report.read_text())
        verdict, line = data["verdict"], data.get("summary") or data.get("error", "")
    _outputs(environ, verdict=verdict, code=code, report=str(report), summary=line)
    if code != ExitCode.OK and environ.get("INPUT_COMMENT", "true") == "true":
        _comment(environ, summary)
    return code


def _from_base_branch(candidate: str, base: str, workdir: Path) -> Path:
    """The candidate file as it is on the base branch, written to ``workdir``."""
    subprocess.run(
        ["git", "fetch", "--quiet", "--depth=1", "origin", base],
        check=True,
        capture_output=True,
        text=True,
    )
    shown = subprocess.run(
        ["git", "show", f"FETCH_HEAD:./{candidate}"],
        check=True,
        capture_output=True,
    )
    baseline = workdir / f"baseline.{Path(candidate).name}"
    baseline.write_bytes(shown.stdout)
    return baseline


def _comment(environ: Mapping[str, str], summary: Path) -> None:
    """The Markdown summary as a pull-request comment (needs gh, a token and the number)."""
    number = environ.get("PR_NUMBER")
    if not (number and summary.is_file()):
        return
    try:
        posted = subprocess.run(
            ["gh", "pr", "comment", number, "--body-file", str(summary)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        print("envbisect: no comment posted: gh is not on PATH", file=sys.stderr)
        return
    if posted.returncode != 0:
        why = mask_urls(posted.stderr.strip().splitlines()[-1] if posted.stderr.strip() else "")
        print(
            f"envbisect: no comment posted: gh exited {posted.returncode}: {why}", file=sys.stderr
        )


def _outputs(
    environ: Mapping[str, str], *, verdict: str, code: int, report: str, summary: str
) -> None:
    """The step's outputs, one ``name=value`` line each (values are single lines)."""
    target = environ.get("GITHUB_OUTPUT")
    if not target:
        return
    values = {"verdict": verdict, "exit-code": str(code), "report": report, "summary": summary}
    with open(target, "a", encoding="utf-8") as handle:
        for name, value in values.items():
            handle.write(f"{name}={' '.join(value.split())}\n")


def _fail(environ: Mapping[str, str], message: str) -> int:
    """Bad input to the action: one line, the outputs, exit 2."""
    message = mask_urls(message)
    print(f"envbisect: error: {message}", file=sys.stderr)
    _outputs(environ, verdict="error", code=ExitCode.USAGE, report="", summary=message)
    return ExitCode.USAGE


if __name__ == "__main__":
    sys.exit(main())
