"""Render a finished run: the terminal (rich) and JSON; live progress while it runs.

The JSON document (schema: ``envbisect/schema/report.schema.json``) is the one
source of the CI formats too (:mod:`envbisect.ci`: Markdown, JUnit XML). Every
text either shows is masked (:mod:`envbisect.masking`) and free of terminal escapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from packaging.utils import NormalizedName
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from envbisect import __version__
from envbisect.delta import Change, ChangeKind, Delta
from envbisect.masking import mask_urls, printable, scrub
from envbisect.model import Finding, Narrowing, Outcome, Trial, Verdict
from envbisect.stacks import Stacks, ThreadStack
from envbisect.startup import StartupHook

SCHEMA_VERSION = 1

_STYLE = {
    Outcome.PASS: "green",
    Outcome.FAIL: "red",
    Outcome.SKIP: "yellow",
    Outcome.FLAKY: "magenta",
    Outcome.ERROR: "yellow",
}
#: Off a terminal, lines are this wide at most: never, in practice.
UNWRAPPED = 1 << 16


def console(*, stderr: bool = False) -> Console:
    """A console for envbisect's output.

    On a terminal the report wraps to the window (progress lines on stderr never do).
    Off a terminal (a CI log, a pipe, a file) nothing wraps: paths, URLs and verdict
    lines stay whole, whatever their length, so a log can be grepped.
    """
    if Console(stderr=stderr).is_terminal:
        return Console(stderr=stderr, highlight=False, soft_wrap=stderr)
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=UNWRAPPED)


def shown(text: object) -> str:
    """``text`` as the terminal may show it: masked, printable, rich markup escaped."""
    return escape(printable(mask_urls(str(text))))


class ConsoleObserver:
    """Prints each step and each finished trial, as the search goes."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]·[/dim] {shown(text)}")

    def trial_started(self, index: int, phase: str, size: int) -> None:
        pass  # parallel trials would interleave "started" lines; report on finish only

    def trial_finished(self, trial: Trial) -> None:
        if self.quiet:
            return
        style = _STYLE[trial.outcome]
        cached = " [dim](cached)[/dim]" if trial.cached else ""
        self.console.print(
            f"  trial {trial.index:>2} {trial.phase:<7} {len(trial.changes):>3} change(s) "
            f"[{style}]{trial.outcome.value:<5}[/{style}] {trial.seconds:5.1f} s{cached}  "
            f"[dim]{shown(trial.result.detail)}[/dim]"
        )


def culprit_line(change: Change, delta: Delta) -> str:
    """``telemetry-shim 0.4.1 (added; needs gevent 26.9.0; pulled in by perfsuite 2.7.0)``,
    ``pika 1.4.4, locally modified: pika/__init__.py (pulled in by dramatiq 2.2.1)``."""
    local = change.bad.local_summary() if change.bad else ""
    facts = []
    if change.kind is ChangeKind.VERSION and change.good and change.bad:
        head = f"{change.display_name} {change.good.version} → {change.bad.version}"
        facts = [change.direction or "version"]
    elif change.kind is ChangeKind.REMOVED and change.good:
        head, facts = str(change.good), ["removed"]
    elif change.kind is ChangeKind.MODIFIED and change.bad:
        head = f"{change.bad}, {local}" if local else str(change.bad)
        facts = [] if local else ["same version, other files"]
        local = ""
    else:
        assert change.bad is not None
        head, facts = str(change.bad), ["added"]
    if local:
        facts.append(local)
    brings = [str(p) for p in delta.needs(change.name) if p.name in delta.by_name]
    if brings:
        facts.append("needs " + _some(brings))
    parents = [str(p) for p in delta.required_by(change.name)]
    if parents:
        facts.append("pulled in by " + _some(parents))
    elif change.bad is not None:
        facts.append("top-level")
    return f"{head} ({'; '.join(facts)})"


def _some(items: Sequence[str], most: int = 3) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def summary_line(finding: Finding) -> str:
    """The verdict in one line (a passing gate prints nothing else)."""
    command = "gate" if finding.gate else "run"
    if finding.verdict is Verdict.PASS:
        return (
            f"gate passed: the candidate {finding.bad} passes the probe "
            f"({len(finding.delta.changes)} change(s) from the baseline {finding.good})"
        )
    if finding.verdict is Verdict.CULPRIT_FOUND:
        head = "gate failed: regression" if finding.gate else "culprit found"
        culprits = "; ".join(change.describe() for change in finding.culprits)
        narrowed = "".join(
            f"; first bad {n.change.display_name} version {n.first_bad}"
            for n in finding.narrowings
            if n.first_bad is not None
        )
        return f"{head}: {culprits}{narrowed}"
    return f"{command}: {_headline(finding)}"


def render(finding: Finding, console: Console) -> None:
    """The human report: verdict and culprits first, then trials, then evidence.

    A passing gate is one line: CI logs show it as the step's result.
    """
    if finding.verdict is Verdict.PASS:
        line = f"[bold green]{shown(summary_line(finding))}[/bold green]"
        console.print(line, soft_wrap=True)
        if finding.note:
            console.print(f"[dim]note:[/dim] {shown(finding.note)}", soft_wrap=True)
        return
    console.print()
    if finding.verdict is Verdict.CULPRIT_FOUND:
        label = "culprit" if len(finding.culprits) == 1 else "culprits (fail only together)"
        for change in finding.culprits:
            console.print(
                f"[bold red]{label}:[/bold red] {shown(culprit_line(change, finding.delta))}"
            )
            chain = finding.delta.path_from_top(change.name)
            if len(chain) > 1:
                console.print("  [dim]path:[/dim] " + shown(" → ".join(str(p) for p in chain)))
            hooks = finding.startup_hooks.get(change.name, ())
            if hooks:
                console.print(
                    "  [dim]runs at start-up:[/dim] "
                    + shown("; ".join(hook.describe() for hook in hooks))
                )
            for narrowing in finding.narrowings:
                if narrowing.change == change:
                    console.print("  [dim]narrowed:[/dim] " + shown(narrowing.describe()))
    else:
        console.print(f"[bold yellow]{shown(_headline(finding))}[/bold yellow]")
    if finding.note:
        console.print(f"[dim]note:[/dim] {shown(finding.note)}")
    console.print(_trial_table(finding.trials))
    if finding.evidence is not None:
        result = finding.evidence.result
        console.print(
            f"[bold]evidence[/bold] (trial {finding.evidence.index}, {finding.evidence.phase}): "
            f"[{_STYLE[finding.evidence.outcome]}]{result.diagnosis.value}[/] — "
            f"{shown(result.detail)}"
        )
        if result.stacks is not None:
            console.print(f"[bold]stacks:[/bold] {shown(result.stacks.note)}")
            for line in result.stacks.summary():
                console.print(f"  {shown(line)}")
        for line in result.evidence[-12:]:
            console.print(f"  [dim]│[/dim] {shown(line)}", soft_wrap=True)
    cached = sum(1 for t in finding.trials if t.cached)
    console.print(
        f"[dim]{len(finding.trials)} trials ({cached} from cache) in {finding.seconds:.1f} s; "
        f"probe: {shown(finding.probe)}; installer: {finding.installer}; "
        f"jobs: {finding.jobs}[/dim]"
    )
    if finding.workspace is not None:
        console.print(f"[dim]envs kept in {shown(finding.workspace)}[/dim]")
    for problem in finding.cleanup_errors:
        console.print(f"[yellow]clean-up failed:[/yellow] {shown(problem)}")


def _headline(finding: Finding) -> str:
    good = "baseline" if finding.gate else "good set"
    bad = "candidate" if finding.gate else "bad set"
    inconsistent = finding.note or "no minimal failing set: the probe results disagree"
    return {
        Verdict.GOOD_FAILS: f"the {good} already fails the probe: {finding.good}",
        Verdict.BAD_PASSES: f"the {bad} passes the probe: nothing to bisect in {finding.bad}",
        Verdict.INCONSISTENT: inconsistent,
        Verdict.CULPRIT_FOUND: "culprit found",
        Verdict.PASS: f"the {bad} passes the probe",
    }[finding.verdict]


def _trial_table(trials: Sequence[Trial]) -> Table:
    table = Table(title="trials", title_justify="left", show_edge=False, pad_edge=False)
    numeric = {"#", "changes", "s", "env s", "boot s", "wait s"}
    for column in ("#", "phase", "changes", "outcome", "s", "env s", "boot s", "wait s", "why"):
        if column in numeric:
            table.add_column(column, justify="right")
        else:
            table.add_column(column, overflow="fold")
    for trial in trials:
        timings = trial.result.timings
        table.add_row(
            str(trial.index),
            trial.phase,
            str(len(trial.changes)),
            f"[{_STYLE[trial.outcome]}]{trial.outcome.value}[/]"
            + (" (cached)" if trial.cached else ""),
            f"{trial.seconds:.1f}",
            f"{trial.env_seconds:.2f}",
            f"{timings.get('boot', 0.0):.2f}",
            f"{timings.get('wait', 0.0):.2f}",
            shown(trial.result.diagnosis.value),
        )
    return table


def to_json(finding: Finding, exit_code: int) -> dict[str, Any]:
    """The documented JSON report (schema in ``envbisect/schema/report.schema.json``),
    every string in it masked and printable."""
    delta = finding.delta
    kinds: dict[str, int] = {}
    for change in delta.changes:
        kinds[change.kind.value] = kinds.get(change.kind.value, 0) + 1
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "envbisect", "version": __version__},
        "command": "gate" if finding.gate else "run",
        "verdict": finding.verdict.value,
        "summary": summary_line(finding),
        "exit_code": exit_code,
        "note": finding.note,
        "probe": finding.probe,
        "good": finding.good,
        "bad": finding.bad,
        "installer": finding.installer,
        "jobs": finding.jobs,
        "seconds": round(finding.seconds, 3),
        "changes": {"total": len(delta.changes), **kinds},
        "changed_packages": [_change_json(change) for change in delta.changes],
        "culprits": [
            _culprit_json(change, delta, finding.narrowings, finding.startup_hooks)
            for change in finding.culprits
        ],
        "trials": [_trial_json(trial, delta) for trial in finding.trials],
        "evidence": None if finding.evidence is None else _evidence_json(finding.evidence),
        "disagreements": [sorted(subset) for subset in finding.disagreements],
        "cleanup_errors": list(finding.cleanup_errors),
    }
    return scrub(report)


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "name": change.display_name,
        "change": change.kind.value,
        "direction": change.direction or None,
        "good_version": change.good.version if change.good else None,
        "bad_version": change.bad.version if change.bad else None,
        "local_changes": _local_changes_json(change),
    }


def _local_changes_json(change: Change) -> list[dict[str, str]]:
    """The bad side's files that differ from its RECORD (patched, added, removed)."""
    changes = change.bad.local_changes if change.bad else ()
    return [{"path": local.path, "change": local.kind.value} for local in changes]


def _culprit_json(
    change: Change,
    delta: Delta,
    narrowings: Sequence[Narrowing],
    startup_hooks: Mapping[NormalizedName, Sequence[StartupHook]],
) -> dict[str, Any]:
    narrowing = next((n for n in narrowings if n.change == change), None)
    return {
        "name": change.display_name,
        "version": change.bad.version if change.bad else None,
        "change": change.kind.value,
        "direction": change.direction or None,
        "good_version": change.good.version if change.good else None,
        "required_by": [f"{p.display_name}=={p.version}" for p in delta.required_by(change.name)],
        "requires": [f"{p.display_name}=={p.version}" for p in delta.needs(change.name)],
        "brings": sorted(
            f"{c.display_name}=={c.bad.version}" if c.bad else f"-{c.display_name}"
            for c in map(delta.change, delta.closure([change.name]))
            if c.name != change.name
        ),
        "path": [f"{p.display_name}=={p.version}" for p in delta.path_from_top(change.name)],
        "summary": culprit_line(change, delta),
        "local_changes": _local_changes_json(change),
        "narrowed": None if narrowing is None else _narrowing_json(narrowing),
        "startup_hooks": [_hook_json(hook) for hook in startup_hooks.get(change.name, ())],
    }


def _hook_json(hook: StartupHook) -> dict[str, Any]:
    return {
        "file": hook.file,
        "line": mask_urls(hook.line),
        "lineno": hook.lineno,
        "kind": hook.kind.value,
    }


def _narrowing_json(narrowing: Narrowing) -> dict[str, Any]:
    return {
        "package": narrowing.change.display_name,
        "good_version": narrowing.versions[0],
        "bad_version": narrowing.versions[-1],
        "first_bad": narrowing.first_bad,
        "last_good": narrowing.last_good,
        "versions": list(narrowing.versions),
        "tested": [
            {"version": t.version, "outcome": t.outcome.value, "trial": t.trial, "detail": t.detail}
            for t in narrowing.tested
        ],
        "untestable": list(narrowing.untestable),
        "note": narrowing.note,
        "summary": narrowing.describe(),
    }


def _trial_json(trial: Trial, delta: Delta) -> dict[str, Any]:
    result = trial.result
    changes = [delta.change(name) for name in sorted(trial.changes)]
    return {
        "index": trial.index,
        "phase": trial.phase,
        "packages": [_applied(change, trial) for change in changes],
        "size": len(trial.changes),
        "outcome": trial.outcome.value,
        "seconds": round(trial.seconds, 3),
        "env_seconds": round(trial.env_seconds, 3),
        "build_seconds": round(trial.build_seconds, 3),
        "timings": {key: round(value, 3) for key, value in result.timings.items()},
        "cached": trial.cached,
        "runs": [r.outcome.value for r in trial.results],
        "diagnosis": result.diagnosis.value,
        "detail": result.detail,
    }


def _applied(change: Change, trial: Trial) -> str:
    """``name==version`` as the trial had it (``-name`` for a removal)."""
    if trial.substitute is not None and trial.substitute.name == change.name:
        return f"{change.display_name}=={trial.substitute.version}"
    return (
        f"{change.display_name}=={change.bad.version}" if change.bad else f"-{change.display_name}"
    )


def _evidence_json(trial: Trial) -> dict[str, Any]:
    result = trial.result
    return {
        "trial": trial.index,
        "diagnosis": result.diagnosis.value,
        "detail": result.detail,
        "exit_status": result.exit_status,
        "output": list(result.evidence),
        **_stacks_json(result.stacks),
    }


def _stacks_json(stacks: Stacks | None) -> dict[str, Any]:
    """``stacks`` (null when none were sought), ``stacks_note``, ``stacks_summary``."""
    if stacks is None:
        return {"stacks": None, "stacks_note": "", "stacks_summary": []}
    return {
        "stacks": [_thread_json(thread, stacks.leader) for thread in stacks.threads],
        "stacks_note": mask_urls(stacks.note),
        "stacks_summary": [mask_urls(line) for line in stacks.summary()],
    }


def _thread_json(thread: ThreadStack, leader: int) -> dict[str, Any]:
    return {
        "pid": thread.pid,
        "process": "main" if thread.pid == leader else "worker",
        "thread_name": None if thread.thread_name is None else mask_urls(thread.thread_name),
        "thread_id": thread.thread_id,
        "os_thread_id": thread.os_thread_id,
        "active": thread.active,
        "tool": thread.tool,
        "frames": [
            {"function": frame.function, "file": frame.file, "line": frame.line}
            for frame in thread.frames
        ],
    }


def error_json(message: str, exit_code: int, command: str) -> dict[str, Any]:
    """The JSON report of a run that ended in an error (bad input, broker, build, time)."""
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "envbisect", "version": __version__},
        "command": command,
        "verdict": "error",
        "exit_code": exit_code,
        "error": message,
    }
    return scrub(report)
