"""The command line: parse options, wire the stages, map errors to exit codes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from platformdirs import user_cache_dir
from rich.console import Console

from envbisect import processes
from envbisect.broker import DEFAULT_URL, connect, mask_urls
from envbisect.errors import EnvbisectError, ExitCode, InputError
from envbisect.probes.base import Probe
from envbisect.probes.command import CommandProbe, import_probe
from envbisect.probes.consume import ConsumeProbe
from envbisect.processes import Interrupted
from envbisect.report import ConsoleObserver, render, to_json, write_json
from envbisect.triage import Options, Verdict, triage

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find the package that silently breaks your environment (e.g. a Dramatiq worker).",
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Find the package that silently breaks your environment (e.g. a Dramatiq worker)."""


_VERDICT_CODES = {
    Verdict.CULPRIT_FOUND: ExitCode.OK,
    Verdict.GOOD_FAILS: ExitCode.GOOD_FAILS,
    Verdict.BAD_PASSES: ExitCode.BAD_PASSES,
    Verdict.INCONSISTENT: ExitCode.INCONSISTENT,
}


CACHE_DIR = Path(user_cache_dir("envbisect"))
CORES = os.cpu_count() or 1

ProbeOpt = Annotated[str, typer.Option(help="consume | consume-async | import:pkg.mod[,other]")]
ProbeCmdOpt = Annotated[
    str | None,
    typer.Option(help="Shell command run in each trial env: exit 0 good, 125 skip, else bad."),
]
CwdOpt = Annotated[Path | None, typer.Option(help="Working directory for --probe-cmd.")]
BrokerOpt = Annotated[
    str,
    typer.Option(envvar="ENVBISECT_BROKER_URL", help="amqp:// or redis:// URL of the broker."),
]
InstallerOpt = Annotated[str, typer.Option(help="uv (fast) or pip (virtualenv + pip).")]
CacheOpt = Annotated[
    Path,
    typer.Option(envvar="ENVBISECT_CACHE_DIR", help="Repacked wheels and trial outcomes."),
]
JobsOpt = Annotated[int, typer.Option(min=1, help="Trials at once (default: core count).")]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        min=0.1,
        help="Max seconds from worker ready to actor ran (adapted down once a healthy "
        "worker was measured, unless --fixed-timeout); for --probe-cmd the whole command.",
    ),
]
BootOpt = Annotated[float, typer.Option(min=0.1, help="Max seconds from worker start to ready.")]
FixedOpt = Annotated[bool, typer.Option(help="Always wait the full --timeout.")]
RepeatOpt = Annotated[
    int, typer.Option(min=1, help="Run each trial K times; disagreement is flaky, never pass.")
]
MaxTimeOpt = Annotated[float | None, typer.Option(min=1, help="Bound for the whole run, seconds.")]
PythonOpt = Annotated[
    Path | None, typer.Option(help="Interpreter for trial envs when no side is a virtualenv.")
]
OfflineOpt = Annotated[
    bool, typer.Option(help="Never reach a package index: the good set must come from the bad env.")
]
KeepOpt = Annotated[bool, typer.Option(help="Keep trial environments (their path is printed).")]
OutcomeCacheOpt = Annotated[
    Path | None, typer.Option(help="Where trial outcomes are cached [default: CACHE_DIR/outcomes].")
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Neither use nor store cached trial outcomes.")
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")]
QuietOpt = Annotated[bool, typer.Option(help="Only the final report.")]


@app.command()
def run(
    bad: Annotated[
        Path, typer.Option(help="Failing side: a virtualenv or pinned requirements (pip freeze).")
    ],
    good: Annotated[
        Path, typer.Option(help="Working side: requirements (pinned or not) or a virtualenv.")
    ],
    probe: ProbeOpt = "consume",
    probe_cmd: ProbeCmdOpt = None,
    cwd: CwdOpt = None,
    broker_url: BrokerOpt = DEFAULT_URL,
    installer: InstallerOpt = "uv",
    cache_dir: CacheOpt = CACHE_DIR,
    jobs: JobsOpt = CORES,
    timeout: TimeoutOpt = 30.0,
    boot_timeout: BootOpt = 60.0,
    fixed_timeout: FixedOpt = False,
    repeat: RepeatOpt = 1,
    max_time: MaxTimeOpt = None,
    python: PythonOpt = None,
    offline: OfflineOpt = False,
    keep_envs: KeepOpt = False,
    outcome_cache: OutcomeCacheOpt = None,
    no_cache: NoCacheOpt = False,
    json_path: JsonOpt = None,
    quiet: QuietOpt = False,
) -> int:
    """Bisect the changes between --good and --bad down to the culprit package(s)."""
    options = Options(
        bad=bad,
        good=good,
        cache_dir=_writable("--cache-dir", cache_dir),
        installer=installer,
        python=python,
        jobs=jobs,
        repeat=repeat,
        keep_envs=keep_envs,
        outcome_cache=not no_cache,
        outcome_cache_dir=(
            None
            if outcome_cache is None or no_cache
            else _writable("--outcome-cache", outcome_cache)
        ),
        adaptive=not fixed_timeout,
        timeout=timeout,
        boot_timeout=boot_timeout,
        max_time=max_time,
        offline=offline,
    )
    the_probe = _probe(probe, probe_cmd, cwd, broker_url)
    out = Console(highlight=False)
    # soft_wrap: a progress line stays one line, whatever the terminal width.
    progress = Console(stderr=True, highlight=False, soft_wrap=True)
    if not quiet:
        progress.print(
            f"envbisect: bad={bad} good={good} probe={the_probe.describe()}", markup=False
        )
    try:
        finding = triage(options, the_probe, ConsoleObserver(progress, quiet=quiet))
    except EnvbisectError as exc:
        if json_path is not None:
            _write_json(json_path, _error_json(exc))
        raise
    code = _VERDICT_CODES[finding.verdict]
    render(finding, out)
    if json_path is not None:
        _write_json(json_path, to_json(finding, int(code)))
    return int(code)


def _write_json(path: Path, data: dict[str, object]) -> None:
    try:
        write_json(path, data)
    except OSError as exc:
        raise InputError(f"--json {path}: cannot write it ({exc.strerror})") from exc


def _probe(kind: str, command: str | None, cwd: Path | None, broker_url: str) -> Probe:
    if command is not None:
        return CommandProbe(command=command, cwd=cwd)
    if kind.startswith("import:"):
        return import_probe(kind.removeprefix("import:"))
    if kind in ("consume", "consume-async"):
        return ConsumeProbe(broker=connect(broker_url), asyncio=kind == "consume-async")
    raise InputError(
        f"--probe must be consume, consume-async or import:pkg.mod, not {kind!r} "
        "(or give --probe-cmd)"
    )


def _writable(option: str, path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{option} {path}: not writable ({exc.strerror})") from exc
    # Absolute: the wheelhouse links to repacked wheels in it from another directory.
    return path.resolve()


def _error_json(exc: EnvbisectError) -> dict[str, object]:
    return {
        "schema_version": 1,
        "verdict": "error",
        "exit_code": int(exc.exit_code),
        "error": mask_urls(str(exc)),
    }


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into :class:`Interrupted`; ignore repeats while cleaning up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        processes.interrupt(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly)."""
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    command = typer.main.get_command(app)
    processes.become_subreaper()
    processes.reset()
    try:
        with _signals_raise():
            result = command.main(
                args=list(sys.argv[1:] if argv is None else argv),
                prog_name="envbisect",
                standalone_mode=False,
            )
    except Interrupted as exc:
        errors.print(f"envbisect: interrupted by {exc}; cleaned up")
        return int(ExitCode.INTERRUPTED if exc.signum == signal.SIGINT else ExitCode.TERMINATED)
    except EnvbisectError as exc:
        errors.print(f"envbisect: error: {mask_urls(str(exc))}", markup=False)
        return int(exc.exit_code)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return int(ExitCode.INTERRUPTED)
    except typer.TyperException as exc:
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
            errors.print(context.get_help(), markup=False)
        else:
            errors.print(f"envbisect: error: {exc.format_message()}", markup=False)
        return int(ExitCode.USAGE)
    return int(result) if isinstance(result, int) else int(ExitCode.OK)


def run_cli() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
