"""A reproducer of a finished run (``envbisect repro``): what one attaches to an upstream bug.

From a JSON report's ``repro`` section it writes, into one directory:
``requirements.txt`` (the failing set: the good set plus the culprit set, exact
pins, and the index they came from), ``requirements-good.txt`` (the good set),
``probe.py`` (the probe, runnable by the env's own Python: exit 0 passes,
anything else fails), for a consume-probe ``tasks.py`` (a tiny Dramatiq worker
module), and a ``README.md`` with the commands and the evidence observed.
:func:`check` rebuilds both envs from those files alone and runs the probe in
each: the failing set must fail and the good set pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from uv import find_uv_bin

from envbisect import __version__
from envbisect.errors import EnvironmentBuildError, InputError
from envbisect.masking import mask_urls

#: The broker a consume-probe reproducer uses when BROKER_URL is not set and the report's
#: URL is masked or gone (a private broker).
LOCAL_BROKER = "amqp://guest:guest@127.0.0.1:5672/"
#: A probe run of the check longer than this (seconds) has hung: it fails.
CHECK_SECONDS = 180
#: The reproducer's scripts, filled in by :func:`write`.
FILES = Path(__file__).with_name("reprofiles")


def _template(name: str) -> str:
    return (FILES / f"{name}.txt").read_text()


def write(report: Mapping[str, Any], directory: Path) -> list[Path]:
    """Write the reproducer of ``report`` into ``directory``; the files written."""
    try:
        return _write(report, directory)
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"not a complete envbisect report: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise InputError(f"--dir {directory}: {exc.strerror or exc}") from exc


def _write(report: Mapping[str, Any], directory: Path) -> list[Path]:
    recipe = report.get("repro")
    if report.get("verdict") != "culprit-found" or not isinstance(recipe, dict):
        raise InputError("the report names no culprit: nothing to reproduce")
    probe = recipe["probe"]
    if probe.get("worker_module"):
        raise InputError(
            "repro cannot reproduce a --worker-module probe yet: only the built-in actor"
        )
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "requirements.txt": _requirements(recipe, recipe["failing"], "good set + culprit set"),
        "requirements-good.txt": _requirements(recipe, recipe["good"], "the good set"),
        "probe.py": _probe_script(probe),
        "README.md": _readme(report, recipe),
    }
    if probe["kind"] in ("consume", "consume-async"):
        files["tasks.py"] = _template("tasks.py").replace(
            "ASYNC = False", f"ASYNC = {probe['kind'] == 'consume-async'}"
        )
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def check(directory: Path, python: str, say: Callable[[str], None]) -> bool:
    """Build the failing and the good env from ``directory``'s files alone (uv) and run the
    probe in each: True when the failing set fails and the good set passes."""
    uv = find_uv_bin()
    outcomes = {}
    with tempfile.TemporaryDirectory(prefix="envbisect-repro-") as scratch:
        for side, requirements in (
            ("failing", "requirements.txt"),
            ("good", "requirements-good.txt"),
        ):
            env = Path(scratch) / side
            for step in (
                [uv, "venv", "--quiet", "--python", python, str(env)],
                [
                    uv,
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    str(env / "bin" / "python"),
                    "-r",
                    str(directory / requirements),
                ],
            ):
                built = subprocess.run(
                    step,
                    capture_output=True,
                    text=True,
                    check=False,
                    env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
                )
                if built.returncode != 0:
                    lines = built.stderr.strip().splitlines() or ["(no output)"]
                    raise EnvironmentBuildError(
                        f"{side} env from {requirements}: {mask_urls(lines[-1])}"
                    )
            try:
                ran = subprocess.run(
                    [str(env / "bin" / "python"), str(directory / "probe.py")],
                    capture_output=True,
                    text=True,
                    timeout=CHECK_SECONDS,
                    cwd=directory,
                    check=False,
                )
                last = ran.stdout.strip().splitlines() or ran.stderr.strip().splitlines()
                code = ran.returncode
            except subprocess.TimeoutExpired:
                code, last = None, [f"hung for {CHECK_SECONDS} s"]
            outcomes[side] = code
            verdict = "passes" if code == 0 else f"fails (exit {code})" if code else "fails (hung)"
            say(f"{side} set ({requirements}): {verdict}: {mask_urls(last[-1]) if last else ''}")
    return outcomes["good"] == 0 and outcomes["failing"] not in (0, 125)


def _requirements(recipe: Mapping[str, Any], pins: list[str], what: str) -> str:
    lines = [f"# {what}: exact pins, written by envbisect {__version__} (envbisect repro)"]
    index = recipe.get("index")
    if index:
        lines.append(
            f"# the index they came from (credentials masked: put yours back)\n--index-url {index}"
        )
    lines += [f"--find-links {directory}" for directory in recipe.get("find_links", ())]
    lines += pins
    return "\n".join(lines) + "\n"


def _probe_script(probe: Mapping[str, Any]) -> str:
    kind = probe["kind"]
    if kind == "command":
        return _template("probe_command.py").replace(
            "COMMAND = None", f"COMMAND = {json.dumps(probe['command'])}"
        )
    if kind == "import":
        return _template("probe_import.py").replace(
            "MODULES = None", f"MODULES = {json.dumps(probe['modules'])}"
        )
    url = json.dumps(_broker_url(probe))
    return _template("probe_consume.py").replace("DEFAULT_URL = None", f"DEFAULT_URL = {url}")


def _broker_url(probe: Mapping[str, Any]) -> str:
    """The report's broker URL, unless masked or private (then a local RabbitMQ's)."""
    broker = probe.get("broker")
    return str(broker) if broker and "***" not in broker else LOCAL_BROKER


def _readme(report: Mapping[str, Any], recipe: Mapping[str, Any]) -> str:
    python = ".".join(str(recipe["python"]).split(".")[:2]) or "3"
    evidence = report.get("evidence") or {}
    probe = recipe["probe"]
    lines = [
        f"# Reproducer: {report['summary']}",
        "",
        f"Written by envbisect {__version__} from a `{report['command']}` run "
        f"(Python {recipe['python']}; probe: {report['probe']}).",
        "",
        "```sh",
        f"python{python} -m venv env",
        "env/bin/pip install -r requirements.txt",
        f"env/bin/python probe.py   # fails: {evidence.get('diagnosis', '')}",
        "```",
        "",
        "The good set passes the same probe:",
        "",
        "```sh",
        f"python{python} -m venv good",
        "good/bin/pip install -r requirements-good.txt",
        "good/bin/python probe.py   # passes",
        "```",
        "",
        "`envbisect repro REPORT.json --check` runs both for you.",
        "",
    ]
    for culprit in report.get("culprits", []):
        lines.append(f"**Culprit:** `{culprit['summary']}`  ")
    if probe["kind"] in ("consume", "consume-async"):
        lines += [
            "",
            "`probe.py` sends one message to a queue of its own, starts a Dramatiq worker "
            "(`tasks.py`, one actor) and waits up to `PROBE_TIMEOUT` seconds (30) for the "
            "actor to run; it stops the worker and deletes the queue. Set `BROKER_URL` "
            f"(default `{_broker_url(probe)}`).",
        ]
        if probe.get("broker") and "***" in probe["broker"]:
            lines.append(
                f"The run used `{probe['broker']}`: its password is not written here; set "
                "`BROKER_URL` with it to use the same broker."
            )
    if probe["kind"] == "command":
        lines += [
            "",
            "`probe.py` runs your command with the env's `bin/` first on `PATH`; it "
            "may need your project's files (run it where envbisect ran it).",
        ]
    if recipe["local"]:
        lines += [
            "",
            "Locally modified or editable in the failing env (an index has not "
            f"their bytes; the pins install the released ones): {', '.join(recipe['local'])}.",
        ]
    lines += [
        "",
        "## Observed",
        "",
        f"`{evidence.get('diagnosis', '')}`: {evidence.get('detail', '')}",
        "",
    ]
    observed = list(evidence.get("stacks_summary") or []) + list(evidence.get("output") or [])[-20:]
    if observed:
        fence = "````" if any("```" in line for line in observed) else "```"
        lines += [fence + "text", *observed, fence, ""]
    return mask_urls("\n".join(lines)) + "\n"


def read_report(path: Path) -> dict[str, Any]:
    """A JSON report from disk; :class:`InputError` for anything else."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON report ({exc})") from exc
    if not isinstance(data, dict) or "verdict" not in data:
        raise InputError(f"{path}: not an envbisect JSON report")
    if "repro" not in data:
        raise InputError(f"{path}: written by an envbisect without repro support: run it again")
    return data


def default_python(recipe: Mapping[str, Any]) -> str:
    """An interpreter of the report's major.minor that runs: the run's own, ``pythonX.Y``
    on PATH, or this one."""
    version = ".".join(str(recipe.get("python", "")).split(".")[:2])
    candidates = [recipe.get("python_executable") or "", shutil.which(f"python{version}") or ""]
    candidates.append(sys.executable)
    for candidate in filter(None, candidates):
        try:
            ran = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if ran.returncode == 0 and ran.stdout.strip() == version:
            return str(candidate)
    raise InputError(f"no Python {version} found for --check: give one with --python")
