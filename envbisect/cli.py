"""The command line: parse options, wire the stages, map errors to exit codes."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from platformdirs import user_cache_dir

from envbisect import processes
from envbisect.brokers import connect
from envbisect.brokers.base import DEFAULT_URL
from envbisect.brokers.private import PROGRAMS, Mode
from envbisect.ci import junit, markdown
from envbisect.errors import EnvbisectError, ExitCode, InputError
from envbisect.masking import KNOWN_SECRETS, mask_urls, printable
from envbisect.model import Finding, Verdict
from envbisect.options import Options
from envbisect.probes.base import Probe
from envbisect.probes.command import CommandProbe, import_probe
from envbisect.probes.consume import ConsumeProbe, UserWorker
from envbisect.processes import Interrupted
from envbisect.report import ConsoleObserver, console, render
from envbisect.reportjson import error_json, to_json
from envbisect.triage import triage

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
    Verdict.PASS: ExitCode.OK,
    Verdict.CULPRIT_FOUND: ExitCode.OK,
    Verdict.GOOD_FAILS: ExitCode.GOOD_FAILS,
    Verdict.BAD_PASSES: ExitCode.BAD_PASSES,
    Verdict.INCONSISTENT: ExitCode.INCONSISTENT,
}
#: The gate's codes differ in one place: a culprit means the candidate regressed.
_GATE_CODES = {**_VERDICT_CODES, Verdict.CULPRIT_FOUND: ExitCode.REGRESSION}


CACHE_DIR = Path(user_cache_dir("envbisect"))
CORES = os.cpu_count() or 1

ProbeOpt = Annotated[str, typer.Option(help="consume | consume-async | import:pkg.mod[,other]")]
ProbeCmdOpt = Annotated[
    str | None,
    typer.Option(help="Shell command run in each trial env: exit 0 good, 125 skip, else bad."),
]
CwdOpt = Annotated[Path | None, typer.Option(help="Working directory for --probe-cmd.")]
WorkerModuleOpt = Annotated[
    str | None,
    typer.Option(help="Probe your own Dramatiq worker module (e.g. ops_core.tasks.worker)."),
]
ActorOpt = Annotated[
    str, typer.Option(help="The actor of --worker-module to run [default: its only actor].")
]
ArgsOpt = Annotated[
    str, typer.Option(help="JSON arguments for --actor: a list (args) or an object (kwargs).")
]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        envvar="ENVBISECT_BROKER_URL",
        help=f"amqp:// or redis:// URL of the broker [default: {DEFAULT_URL}, or a private "
        "broker when nothing answers there].",
        show_default=False,
    ),
]
PrivateBrokerOpt = Annotated[
    bool,
    typer.Option(
        "--private-broker",
        help="Start a broker of the run's own (rabbitmq-server, else redis-server) and stop "
        "it at the end, even when one answers at the default URL.",
    ),
]
PrivateBrokerKindOpt = Annotated[
    str | None,
    typer.Option(
        help="rabbitmq or redis: the kind of private broker [default: rabbitmq-server if on "
        "PATH, else redis-server].",
        show_default=False,
    ),
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
MarkdownOpt = Annotated[
    Path | None,
    typer.Option("--markdown", help="Write a Markdown summary here (a pull-request comment)."),
]
JunitOpt = Annotated[
    Path | None, typer.Option("--junit", help="Write the verdict as a JUnit XML test result.")
]
StepSummaryOpt = Annotated[
    bool, typer.Option(help="Append the Markdown summary to $GITHUB_STEP_SUMMARY when it is set.")
]
NarrowOpt = Annotated[
    bool,
    typer.Option(
        help="When a culprit is a version change a → b, bisect the releases between a and b "
        "and name the first bad one."
    ),
]
FindLinksOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--find-links", help="A directory of wheels/sdists used beside the index (repeatable)."
    ),
]
QuietOpt = Annotated[bool, typer.Option(help="Only the final report.")]


@app.command()
def run(
    bad: Annotated[
        Path,
        typer.Option(
            help="Failing side: a virtualenv, uv.lock, pylock.toml or pinned requirements."
        ),
    ],
    good: Annotated[
        Path,
        typer.Option(
            help="Working side: requirements (pinned or not), a lock file or a virtualenv."
        ),
    ],
    probe: ProbeOpt = "consume",
    probe_cmd: ProbeCmdOpt = None,
    cwd: CwdOpt = None,
    worker_module: WorkerModuleOpt = None,
    actor: ActorOpt = "",
    args: ArgsOpt = "[]",
    broker_url: BrokerOpt = None,
    private_broker: PrivateBrokerOpt = False,
    private_broker_kind: PrivateBrokerKindOpt = None,
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
    narrow: NarrowOpt = False,
    find_links: FindLinksOpt = None,
    json_path: JsonOpt = None,
    markdown_path: MarkdownOpt = None,
    junit_path: JunitOpt = None,
    step_summary: StepSummaryOpt = True,
    quiet: QuietOpt = False,
) -> int:
    """Bisect the changes between --good and --bad down to the culprit package(s)."""
    return _execute("run", **locals())


@app.command()
def gate(
    baseline: Annotated[
        Path,
        typer.Option(
            help="What works today (e.g. the base branch's lock): a uv.lock, pylock.toml, "
            "requirements file or virtualenv."
        ),
    ],
    candidate: Annotated[
        Path,
        typer.Option(
            help="The proposed set (e.g. a dependency-update pull request's lock), "
            "in any of the same forms."
        ),
    ],
    probe: ProbeOpt = "consume",
    probe_cmd: ProbeCmdOpt = None,
    cwd: CwdOpt = None,
    worker_module: WorkerModuleOpt = None,
    actor: ActorOpt = "",
    args: ArgsOpt = "[]",
    broker_url: BrokerOpt = None,
    private_broker: PrivateBrokerOpt = False,
    private_broker_kind: PrivateBrokerKindOpt = None,
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
    narrow: NarrowOpt = False,
    find_links: FindLinksOpt = None,
    json_path: JsonOpt = None,
    markdown_path: MarkdownOpt = None,
    junit_path: JunitOpt = None,
    step_summary: StepSummaryOpt = True,
    quiet: QuietOpt = False,
) -> int:
    """Probe --candidate; if it fails, name the change from --baseline that broke it (exit 1)."""
    rest = {k: v for k, v in locals().items() if k not in ("candidate", "baseline")}
    return _execute("gate", bad=candidate, good=baseline, **rest)


def _execute(
    command: str,
    *,
    bad: Path,
    good: Path,
    probe: str,
    probe_cmd: str | None,
    cwd: Path | None,
    worker_module: str | None,
    actor: str,
    args: str,
    broker_url: str | None,
    private_broker: bool,
    private_broker_kind: str | None,
    installer: str,
    cache_dir: Path,
    jobs: int,
    timeout: float,
    boot_timeout: float,
    fixed_timeout: bool,
    repeat: int,
    max_time: float | None,
    python: Path | None,
    offline: bool,
    keep_envs: bool,
    outcome_cache: Path | None,
    no_cache: bool,
    narrow: bool,
    find_links: list[Path] | None,
    json_path: Path | None,
    markdown_path: Path | None,
    junit_path: Path | None,
    step_summary: bool,
    quiet: bool,
) -> int:
    """What ``run`` and ``gate`` share: check the options, wire the probe, triage, report."""
    outputs = _Outputs(json_path, markdown_path, junit_path, step_summary)
    try:
        worker = _user_worker(worker_module, actor, args)
        private = "--private-broker" if private_broker else None
        if private_broker_kind is not None:
            private = private or "--private-broker-kind"
        the_probe = _probe(probe, probe_cmd, cwd, broker_url, worker, private)
        mode = _private_mode(private_broker, private_broker_kind, broker_url)
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
            gate=command == "gate",
            narrow=narrow,
            find_links=_directories(find_links),
            offline=offline,
            # The user's worker module connects to the broker it names, never to ours.
            private_broker=Mode.OFF if worker is not None else mode,
            private_broker_kind=private_broker_kind,
        )
        sides = (
            f"candidate={bad} baseline={good}" if command == "gate" else f"bad={bad} good={good}"
        )
        prog = "envbisect gate" if command == "gate" else "envbisect"
        header = f"{prog}: {sides} probe={the_probe.describe()}"
        finding = _triage(options, the_probe, header, quiet)
    # CI reads the reports: they say what went wrong too, the command line included.
    except EnvbisectError as exc:
        outputs.write(error_json(str(exc), int(exc.exit_code), command))
        raise
    except Exception as exc:
        outputs.write(error_json(_internal(exc), int(ExitCode.INTERNAL), command))
        raise
    code = (_GATE_CODES if command == "gate" else _VERDICT_CODES)[finding.verdict]
    render(finding, console())
    outputs.write(to_json(finding, int(code)))
    return int(code)


@dataclass(frozen=True)
class _Outputs:
    """Where the report goes besides the terminal."""

    json: Path | None
    markdown: Path | None
    junit: Path | None
    step_summary: bool

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


def _triage(options: Options, probe: Probe, header: str, quiet: bool) -> Finding:
    """The run itself, its progress on stderr."""
    progress = console(stderr=True)
    if not quiet:
        progress.print(_line(header), markup=False)
    return triage(options, probe, ConsoleObserver(progress, quiet=quiet))


def _write(option: str, path: Path, text: str, *, append: bool = False) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if append else "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write it ({exc.strerror})") from exc


def _directories(paths: list[Path] | None) -> tuple[Path, ...]:
    for path in paths or ():
        if not path.is_dir():
            raise InputError(f"--find-links {path}: not a directory")
    return tuple(path.resolve() for path in paths or ())


def _private_mode(forced: bool, kind: str | None, broker_url: str | None) -> Mode:
    if kind is not None and kind not in PROGRAMS:
        raise InputError(f"--private-broker-kind must be {' or '.join(PROGRAMS)}, not {kind!r}")
    if broker_url is None:
        return Mode.FORCE if forced else Mode.STANDBY
    if forced:
        raise InputError(
            "--private-broker starts a broker of its own: leave out --broker-url "
            "(and ENVBISECT_BROKER_URL)"
        )
    if kind is not None:
        raise InputError(
            "--private-broker-kind is the kind of private broker, which --broker-url "
            "(or ENVBISECT_BROKER_URL) turns off"
        )
    return Mode.OFF


def _probe(
    kind: str,
    command: str | None,
    cwd: Path | None,
    broker_url: str | None,
    worker: UserWorker | None,
    private: str | None,
) -> Probe:
    """The probe; ``private`` names the private-broker option given, if one was."""
    if private and (command is not None or kind not in ("consume", "consume-async")):
        raise InputError(f"{private} serves --probe consume or consume-async")
    if private and worker is not None:
        raise InputError(
            f"{private} serves the built-in probe actor: --worker-module connects to the "
            "broker your module names (give its URL as --broker-url)"
        )
    if command is not None:
        if kind != "consume" or worker is not None:
            raise InputError("--probe-cmd is a probe of its own: leave out --probe/--worker-module")
        return CommandProbe(command=command, cwd=cwd)
    if cwd is not None:
        raise InputError("--cwd is the working directory of --probe-cmd, which is missing")
    if kind.startswith("import:"):
        if worker is not None:
            raise InputError("--worker-module is probed by --probe consume or consume-async")
        return import_probe(kind.removeprefix("import:"))
    if kind in ("consume", "consume-async"):
        return ConsumeProbe(
            broker=connect(broker_url or DEFAULT_URL),
            asyncio=kind == "consume-async",
            worker=worker,
            private=private == "--private-broker",
        )
    raise InputError(
        f"--probe must be consume, consume-async or import:pkg.mod, not {kind!r} "
        "(or give --probe-cmd)"
    )


def _user_worker(module: str | None, actor: str, args: str) -> UserWorker | None:
    if module is None:
        if actor or args != "[]":
            raise InputError(f"{'--actor' if actor else '--args'} needs --worker-module")
        return None
    if not all(part.isidentifier() for part in module.replace(":", ".").split(".")):
        raise InputError(
            f"--worker-module {module!r}: expected a module path like pkg.tasks.worker"
        )
    try:
        parsed = json.loads(args)
    except ValueError as exc:
        raise InputError(f"--args {args!r}: not JSON ({exc})") from exc
    if isinstance(parsed, list):
        return UserWorker(module, actor, tuple(parsed), {})
    if isinstance(parsed, dict):
        return UserWorker(module, actor, (), parsed)
    raise InputError(f"--args {args!r}: expected a JSON list (args) or object (kwargs)")


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


#: Signals that end a run through its clean-up; SIGHUP (a closed terminal, a dropped ssh
#: session) is one, or a hang-up would leave every stalled worker behind.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SIGNAL_CODES = {
    signal.SIGINT: ExitCode.INTERRUPTED,
    signal.SIGTERM: ExitCode.TERMINATED,
    signal.SIGHUP: ExitCode.HANGUP,
}


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM/SIGHUP into :class:`Interrupted`; ignore repeats while
    cleaning up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        processes.interrupt(signum)

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Before anything is printed: the credentials of the broker and index URLs and of
    # the command line are masked verbatim wherever they turn up.
    KNOWN_SECRETS.add_environment(os.environ)
    KNOWN_SECRETS.add_text(" ".join(args))
    errors = console(stderr=True)
    command = typer.main.get_command(app)
    processes.become_subreaper()
    processes.reset()
    try:
        with _signals_raise():
            result = command.main(
                args=args,
                prog_name="envbisect",
                standalone_mode=False,
            )
    except Interrupted as exc:
        errors.print(f"envbisect: interrupted by {exc}; cleaned up")
        return int(_SIGNAL_CODES[signal.Signals(exc.signum)])
    except EnvbisectError as exc:
        errors.print(f"envbisect: error: {_line(str(exc))}", markup=False)
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
            errors.print(f"envbisect: error: {_line(exc.format_message())}", markup=False)
        return int(ExitCode.USAGE)
    except Exception as exc:
        if os.environ.get("ENVBISECT_DEBUG"):
            raise
        errors.print(f"envbisect: error: {_line(_internal(exc))}", markup=False)
        return int(ExitCode.INTERNAL)
    return int(result) if isinstance(result, int) else int(ExitCode.OK)


def _line(text: str) -> str:
    """Text for the terminal: no credential, no terminal escape."""
    return printable(mask_urls(text))


def _internal(exc: Exception) -> str:
    first = (str(exc).splitlines() or [""])[0]
    return (
        f"internal error, a bug in envbisect: {type(exc).__name__}: {first} "
        "(ENVBISECT_DEBUG=1 shows the traceback; please report it)"
    )


def run_cli() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
