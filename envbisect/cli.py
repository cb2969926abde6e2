"""The command line: parse options, wire the stages, map errors to exit codes.

Every option of ``run`` and ``gate`` is declared once, in :data:`OPTIONS`, by
the name of its :class:`~envbisect.options.Options` field; both commands'
signatures are made from that table. The table's ~30 declarations are most of
this module's length; they stay together, in the order the help shows them.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from envbisect import __version__, processes
from envbisect.brokers.base import DEFAULT_URL
from envbisect.checks import checked
from envbisect.errors import EnvbisectError, ExitCode
from envbisect.masking import KNOWN_SECRETS, mask, mask_urls, printable
from envbisect.model import Verdict
from envbisect.options import CACHE_DIR, CORES, Options
from envbisect.outputs import Outputs
from envbisect.processes import Interrupted
from envbisect.report import ConsoleObserver, console, render
from envbisect.reportjson import error_json, to_json
from envbisect.repro import check as check_reproducer
from envbisect.repro import default_python, read_report, write
from envbisect.signals import SIGNAL_CODES, signals_raise
from envbisect.triage import triage

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    help="Find the package that silently breaks your environment (e.g. a Dramatiq worker).",
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        print(f"envbisect {__version__}")
        raise typer.Exit(0)


@app.callback()
def _group(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Find the package that silently breaks your environment (e.g. a Dramatiq worker)."""


@dataclass(frozen=True)
class Wording:
    """What differs between ``run`` and ``gate``: their words and their exit codes."""

    sides: str  #: how the header names the two sides
    prog: str
    codes: dict[Verdict, ExitCode]


_VERDICT_CODES = {
    Verdict.PASS: ExitCode.OK,
    Verdict.CULPRIT_FOUND: ExitCode.OK,
    Verdict.GOOD_FAILS: ExitCode.GOOD_FAILS,
    Verdict.BAD_PASSES: ExitCode.BAD_PASSES,
    Verdict.INCONSISTENT: ExitCode.INCONSISTENT,
}
WORDING = {
    "run": Wording("bad={bad} good={good}", "envbisect", _VERDICT_CODES),
    # The gate's codes differ in one place: a culprit means the candidate regressed.
    "gate": Wording(
        "candidate={bad} baseline={good}",
        "envbisect gate",
        {**_VERDICT_CODES, Verdict.CULPRIT_FOUND: ExitCode.REGRESSION},
    ),
}


@dataclass(frozen=True)
class Opt:
    """One command-line option: the :class:`Options` field it fills, and how it reads."""

    field: str
    type: Any
    default: Any
    option: Any  #: typer.Option(...)


def _opt(field: str, kind: Any, default: Any, panel: str, *names: str, **settings: Any) -> Opt:
    # Help is rich markup: "[default: …]" in it would vanish as an unknown tag.
    settings["help"] = escape(settings["help"])
    return Opt(field, kind, default, typer.Option(*names, rich_help_panel=panel, **settings))


INPUTS, PROBE, BROKER, SPEED, REPORTS = "Inputs", "Probe", "Broker", "Speed", "Reports"

#: The two sides, by command: ``gate`` names them for what a pull request changes.
SIDES = {
    "run": (
        _opt(
            "bad",
            Path,
            ...,
            INPUTS,
            "--bad",
            help="Failing side: a virtualenv, uv.lock, pylock.toml or pinned requirements.",
        ),
        _opt(
            "good",
            Path,
            ...,
            INPUTS,
            "--good",
            help="Working side: requirements (pinned or not), a lock file or a virtualenv.",
        ),
    ),
    "gate": (
        _opt(
            "good",
            Path,
            ...,
            INPUTS,
            "--baseline",
            help="What works today (e.g. the base "
            "branch's lock): a uv.lock, pylock.toml, requirements file or virtualenv.",
        ),
        _opt(
            "bad",
            Path,
            ...,
            INPUTS,
            "--candidate",
            help="The proposed set (e.g. a "
            "dependency-update pull request's lock), in any of the same forms.",
        ),
    ),
}

#: Every option of ``run`` and ``gate`` besides the sides, once.
OPTIONS = (
    _opt("probe", str, "consume", PROBE, help="consume | consume-async | import:pkg.mod[,other]"),
    _opt(
        "probe_cmd",
        str | None,
        None,
        PROBE,
        help="Shell command run in each trial env: exit 0 good, 125 skip, else bad.",
    ),
    _opt("cwd", Path | None, None, PROBE, help="Working directory for --probe-cmd."),
    _opt(
        "worker_module",
        str | None,
        None,
        PROBE,
        help="Probe your own Dramatiq worker module (e.g. ops_core.tasks.worker).",
    ),
    _opt(
        "actor",
        str,
        "",
        PROBE,
        help="The actor of --worker-module to run [default: its only actor].",
    ),
    _opt(
        "args",
        str,
        "[]",
        PROBE,
        help="JSON arguments for --actor: a list (args) or an object (kwargs).",
    ),
    _opt(
        "broker_url",
        str | None,
        None,
        BROKER,
        envvar="ENVBISECT_BROKER_URL",
        help=f"amqp:// or redis:// URL of the broker [default: {mask(DEFAULT_URL)}, or a private "
        "broker when nothing answers there].",
        show_default=False,
    ),
    _opt(
        "private_broker",
        bool,
        False,
        BROKER,
        "--private-broker",
        help="Start a broker of the run's own (rabbitmq-server, else redis-server) and stop "
        "it at the end, even when one answers at the default URL.",
    ),
    _opt(
        "private_broker_kind",
        str | None,
        None,
        BROKER,
        help="rabbitmq or redis: the kind of private broker [default: rabbitmq-server if on "
        "PATH, else redis-server].",
        show_default=False,
    ),
    _opt("installer", str, "uv", INPUTS, help="uv (fast) or pip (virtualenv + pip)."),
    _opt(
        "cache_dir",
        Path,
        CACHE_DIR,
        SPEED,
        envvar="ENVBISECT_CACHE_DIR",
        help="Repacked wheels and trial outcomes.",
    ),
    _opt("jobs", int, CORES, SPEED, min=1, help="Trials at once (default: core count)."),
    _opt(
        "timeout",
        float,
        30.0,
        PROBE,
        min=0.1,
        help="Max seconds from worker ready to actor ran (adapted down once a healthy "
        "worker was measured, unless --fixed-timeout); for --probe-cmd the whole command.",
    ),
    _opt(
        "boot_timeout", float, 60.0, PROBE, min=0.1, help="Max seconds from worker start to ready."
    ),
    _opt("fixed_timeout", bool, False, PROBE, help="Always wait the full --timeout."),
    _opt(
        "repeat",
        int,
        1,
        PROBE,
        min=1,
        help="Probe each set K times: it fails if any run fails, passes if all pass.",
    ),
    _opt(
        "flaky",
        bool,
        False,
        PROBE,
        help="An intermittent failure: choose K from the bad set's failure rate.",
    ),
    _opt("max_time", float | None, None, SPEED, min=1, help="Bound for the whole run, seconds."),
    _opt(
        "python",
        Path | None,
        None,
        INPUTS,
        help="Interpreter for trial envs when no side is a virtualenv.",
    ),
    _opt(
        "offline",
        bool,
        False,
        INPUTS,
        help="Never reach a package index: the good set must come from the bad env.",
    ),
    _opt("keep_envs", bool, False, SPEED, help="Keep trial environments (their path is printed)."),
    _opt(
        "outcome_cache",
        Path | None,
        None,
        SPEED,
        help="Where trial outcomes are cached [default: CACHE_DIR/outcomes].",
    ),
    _opt(
        "no_cache",
        bool,
        False,
        SPEED,
        "--no-cache",
        help="Neither use nor store cached trial outcomes.",
    ),
    _opt(
        "narrow",
        bool,
        False,
        PROBE,
        help="When a culprit is a version change a → b, bisect the releases between a and b "
        "and name the first bad one.",
    ),
    _opt(
        "find_links",
        list[Path] | None,
        None,
        INPUTS,
        "--find-links",
        help="A directory of wheels/sdists used beside the index (repeatable).",
    ),
    _opt("json_path", Path | None, None, REPORTS, "--json", help="Write the report as JSON here."),
    _opt(
        "markdown_path",
        Path | None,
        None,
        REPORTS,
        "--markdown",
        help="Write a Markdown summary here (a pull-request comment).",
    ),
    _opt(
        "junit_path",
        Path | None,
        None,
        REPORTS,
        "--junit",
        help="Write the verdict as a JUnit XML test result.",
    ),
    _opt(
        "step_summary",
        bool,
        True,
        REPORTS,
        help="Append the Markdown summary to $GITHUB_STEP_SUMMARY when it is set.",
    ),
    _opt("quiet", bool, False, REPORTS, help="Only the final report."),
)


def _command(name: str, doc: str) -> Callable[..., int]:
    """The ``run`` or ``gate`` command: its signature made from :data:`SIDES` and
    :data:`OPTIONS`, its body :func:`execute`."""
    table = (*SIDES[name], *OPTIONS)

    def command(**given: Any) -> int:
        if given.get("find_links") is not None:
            given["find_links"] = tuple(given["find_links"])
        else:
            given.pop("find_links", None)
        return execute(Options(command=name, **given))

    parameters = [
        inspect.Parameter(
            opt.field,
            inspect.Parameter.KEYWORD_ONLY,
            default=opt.default,
            annotation=Annotated[opt.type, opt.option],
        )
        for opt in table
    ]
    command.__signature__ = inspect.Signature(parameters, return_annotation=int)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": int}
    command.__name__ = command.__qualname__ = name
    command.__doc__ = doc
    return command


run = app.command()(
    _command("run", "Bisect the changes between --good and --bad down to the culprit package(s).")
)
gate = app.command()(
    _command(
        "gate",
        "Probe --candidate; if it fails, name the change from --baseline that broke it (exit 1).",
    )
)


@app.command()
def repro(
    report: Annotated[
        Path, typer.Argument(help="A JSON report (--json) of a run that named a culprit.")
    ],
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the reproducer.")] = Path(
        "envbisect-repro"
    ),
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Rebuild both envs from the written files alone and run the probe: the "
            "failing set must fail, the good set pass (else exit 6).",
        ),
    ] = False,
    python: Annotated[
        str | None,
        typer.Option("--python", help="Python for --check's envs (default: the report's X.Y)."),
    ] = None,
) -> int:
    """Write a minimal, self-contained reproducer of a finished run (for a bug report)."""
    data = read_report(report)
    written = write(data, directory)
    say = console(stderr=True)
    say.print(f"envbisect: wrote {', '.join(p.name for p in written)} to {directory}", markup=False)
    if not check:
        return int(ExitCode.OK)

    def line(text: str) -> None:
        say.print(text, markup=False)

    if check_reproducer(directory, python or default_python(data["repro"]), line):
        say.print("envbisect: reproduced: the failing set fails and the good set passes")
        return int(ExitCode.OK)
    say.print("envbisect: not reproduced from the written files alone (see above)")
    return int(ExitCode.INCONSISTENT)


def execute(options: Options) -> int:
    """What ``run`` and ``gate`` share: check the options, wire the probe, triage, report."""
    outputs = Outputs.of(options)
    wording = WORDING[options.command]
    try:
        options, probe = checked(options)
        sides = wording.sides.format(bad=options.bad, good=options.good)
        header = f"{wording.prog}: {sides} probe={probe.describe()}"
        progress = console(stderr=True)
        if not options.quiet:
            progress.print(_line(header), markup=False)
        with ConsoleObserver(progress, quiet=options.quiet) as observer:
            finding = triage(options, probe, observer)
    # CI reads the reports: they say what went wrong too, the command line included.
    except EnvbisectError as exc:
        outputs.write(error_json(str(exc), int(exc.exit_code), options.command))
        raise
    except Exception as exc:
        outputs.write(error_json(_internal(exc), int(ExitCode.INTERNAL), options.command))
        raise
    code = wording.codes[finding.verdict]
    render(finding, console())
    outputs.write(to_json(finding, int(code)))
    return int(code)


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
        with signals_raise():
            result = command.main(
                args=args,
                prog_name="envbisect",
                standalone_mode=False,
            )
    except Interrupted as exc:
        errors.print(f"envbisect: interrupted by {exc}; cleaned up")
        return int(SIGNAL_CODES[signal.Signals(exc.signum)])
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
