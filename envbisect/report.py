"""Render a finished run: the terminal (rich) and JSON; live progress while it runs.

The JSON document (schema: ``envbisect/schema/report.schema.json``) is the one
source of the CI formats too (:mod:`envbisect.ci`: Markdown, JUnit XML).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from envbisect import __version__
from envbisect.delta import Change, ChangeKind, Delta
from envbisect.masking import mask_urls
from envbisect.narrow import Narrowing
from envbisect.search import Outcome
from envbisect.triage import Finding, Trial, Verdict

SCHEMA_VERSION = 1

_STYLE = {
    Outcome.PASS: "green",
    Outcome.FAIL: "red",
    Outcome.SKIP: "yellow",
    Outcome.FLAKY: "magenta",
    Outcome.ERROR: "yellow",
}


class ConsoleObserver:
    """Prints each step and each finished trial, as the search goes."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]·[/dim] {escape(mask_urls(text))}")

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
            f"[dim]{escape(trial.result.detail)}[/dim]"
        )


def culprit_line(change: Change, delta: Delta) -> str:
    """``telemetry-shim 0.4.1 (added; needs gevent 26.9.0; pulled in by perfsuite 2.7.0)``."""
    if change.kind is ChangeKind.VERSION and change.good and change.bad:
        head = f"{change.display_name} {change.good.version} → {change.bad.version}"
        facts = [change.direction or "version"]
    elif change.kind is ChangeKind.REMOVED and change.good:
        head, facts = str(change.good), ["removed"]
    else:
        assert change.bad is not None
        head = str(change.bad)
        facts = ["added" if change.kind is ChangeKind.ADDED else "locally modified"]
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
        line = f"[bold green]{escape(summary_line(finding))}[/bold green]"
        console.print(line, soft_wrap=True)
        if finding.note:
            console.print(f"[dim]note:[/dim] {escape(finding.note)}", soft_wrap=True)
        return
    console.print()
    if finding.verdict is Verdict.CULPRIT_FOUND:
        label = "culprit" if len(finding.culprits) == 1 else "culprits (fail only together)"
        for change in finding.culprits:
            console.print(
                f"[bold red]{label}:[/bold red] {escape(culprit_line(change, finding.delta))}"
            )
            chain = finding.delta.path_from_top(change.name)
            if len(chain) > 1:
                console.print("  [dim]path:[/dim] " + escape(" → ".join(str(p) for p in chain)))
            for narrowing in finding.narrowings:
                if narrowing.change == change:
                    console.print("  [dim]narrowed:[/dim] " + escape(narrowing.describe()))
    else:
        console.print(f"[bold yellow]{_headline(finding)}[/bold yellow]")
    if finding.note:
        console.print(f"[dim]note:[/dim] {escape(finding.note)}")
    console.print(_trial_table(finding.trials))
    if finding.evidence is not None:
        result = finding.evidence.result
        console.print(
            f"[bold]evidence[/bold] (trial {finding.evidence.index}, {finding.evidence.phase}): "
            f"[{_STYLE[finding.evidence.outcome]}]{result.diagnosis.value}[/] — "
            f"{escape(result.detail)}"
        )
        for line in result.evidence[-12:]:
            console.print(f"  [dim]│[/dim] {escape(line)}", soft_wrap=True)
    cached = sum(1 for t in finding.trials if t.cached)
    console.print(
        f"[dim]{len(finding.trials)} trials ({cached} from cache) in {finding.seconds:.1f} s; "
        f"probe: {escape(finding.probe)}; installer: {finding.installer}; "
        f"jobs: {finding.jobs}[/dim]"
    )
    if finding.workspace is not None:
        console.print(f"[dim]envs kept in {finding.workspace}[/dim]")
    for problem in finding.cleanup_errors:
        console.print(f"[yellow]clean-up failed:[/yellow] {escape(problem)}", soft_wrap=True)


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
            escape(trial.result.diagnosis.value),
        )
    return table


def to_json(finding: Finding, exit_code: int) -> dict[str, Any]:
    """The documented JSON report (schema in ``envbisect/schema/report.schema.json``)."""
    delta = finding.delta
    kinds: dict[str, int] = {}
    for change in delta.changes:
        kinds[change.kind.value] = kinds.get(change.kind.value, 0) + 1
    return {
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
            _culprit_json(change, delta, finding.narrowings) for change in finding.culprits
        ],
        "trials": [_trial_json(trial, delta) for trial in finding.trials],
        "evidence": None if finding.evidence is None else _evidence_json(finding.evidence),
        "disagreements": [sorted(subset) for subset in finding.disagreements],
        "cleanup_errors": list(finding.cleanup_errors),
    }


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "name": change.display_name,
        "change": change.kind.value,
        "direction": change.direction or None,
        "good_version": change.good.version if change.good else None,
        "bad_version": change.bad.version if change.bad else None,
    }


def _culprit_json(change: Change, delta: Delta, narrowings: Sequence[Narrowing]) -> dict[str, Any]:
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
        "narrowed": None if narrowing is None else _narrowing_json(narrowing),
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
    }


def error_json(message: str, exit_code: int, command: str) -> dict[str, Any]:
    """The JSON report of a run that ended in an error (bad input, broker, build, time)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "envbisect", "version": __version__},
        "command": command,
        "verdict": "error",
        "exit_code": exit_code,
        "error": message,
    }
