"""Render a finished run on the terminal (rich); live progress while it runs.

The JSON document is :mod:`envbisect.reportjson`'s. Every text shown is masked
(:mod:`envbisect.masking`) and free of terminal escapes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.tree import Tree

from envbisect.delta import Change, ChangeKind, Delta, Package
from envbisect.masking import mask_urls, printable
from envbisect.model import Finding, Outcome, Phase, Trial, Verdict, percent

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
    """Prints each step and each finished trial, as the search goes; on a terminal, a live
    line below them: the phase, trial i of the expected bound, the changes still in play,
    elapsed and an estimate of what remains. Off a terminal (CI), plain lines only.

    Use it as a context manager: leaving it takes the live line down.
    """

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._live: Progress | None = None
        self._task = TaskID(0)
        self._planned = 0.0  #: when the first plan came (the estimate's clock)
        self._bound = 0
        self._done = 0
        self._lock = threading.Lock()  #: trials finish in the runner's threads

    def __enter__(self) -> ConsoleObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]·[/dim] {shown(text)}")

    def trial_finished(self, trial: Trial) -> None:
        if self.quiet:
            return
        style = _STYLE[trial.outcome]
        cached = " [dim](cached)[/dim]" if trial.cached else ""
        if len(trial.results) > 1:
            cached += f" [dim]({_failed_runs(trial)} runs failed)[/dim]"
        self.console.print(
            f"  trial {trial.index:>2} {trial.phase:<7} {len(trial.changes):>3} change(s) "
            f"[{style}]{trial.outcome.value:<5}[/{style}] {trial.seconds:5.1f} s{cached}  "
            f"[dim]{shown(trial.result.detail)}[/dim]"
        )
        with self._lock:
            self._done += 1
            if self._live is not None:
                self._bound = max(self._bound, self._done)
                self._live.update(
                    self._task, completed=self._done, total=self._bound, left=self._left()
                )

    def plan(self, phase: Phase, bound: int, in_play: int) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        with self._lock:
            self._plan(phase, bound, in_play)

    def _plan(self, phase: Phase, bound: int, in_play: int) -> None:
        if self._live is None:
            self._planned = time.monotonic()
            self._live = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<9}"),
                BarColumn(bar_width=24),
                TextColumn("trial {task.completed} of ~{task.total}"),
                TextColumn("· {task.fields[in_play]} change(s) in play ·"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[left]}"),
                console=self.console,
                transient=True,
            )
            self._task = self._live.add_task("", total=bound, in_play=in_play, left="")
            self._live.start()
        self._bound = max(bound, self._done)
        self._live.update(
            self._task,
            description=str(phase),
            total=self._bound,
            completed=self._done,
            in_play=in_play,
            left=self._left(),
        )

    def _left(self) -> str:
        """``~40 s left``: the trials still expected at the pace so far (rounds included)."""
        if not self._done:
            return ""
        pace = (time.monotonic() - self._planned) / self._done
        return f"~{pace * max(self._bound - self._done, 0):.0f} s left"


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
        rates = ""
        flakiness = finding.flakiness
        if flakiness is not None and flakiness.culprits is not None:
            rates = (
                f" (fails {flakiness.culprits.describe()}; good set {flakiness.good.describe()}; "
                f"confidence {percent(flakiness.confidence)})"
            )
        return f"{head}: {culprits}{rates}{narrowed}"
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
            if chain:
                tree = _path_tree(chain, finding.delta.needs(change.name))
                console.print(Padding(tree, (0, 0, 0, 2), expand=False))
            hooks = finding.startup_hooks.get(change.name, ())
            if hooks:
                console.print(
                    "  [dim]runs at start-up:[/dim] "
                    + shown("; ".join(hook.describe() for hook in hooks))
                )
            for narrowing in finding.narrowings:
                if narrowing.answers(change):
                    console.print("  [dim]narrowed:[/dim] " + shown(narrowing.describe()))
    else:
        console.print(f"[bold yellow]{shown(_headline(finding))}[/bold yellow]")
    if finding.flakiness is not None:
        console.print(f"[dim]intermittent:[/dim] {shown(finding.flakiness.describe())}")
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
        f"jobs: {finding.jobs}; {finding.rounds} search rounds, "
        f"{finding.slots} probes at once[/dim]"
    )
    if finding.workspace is not None:
        console.print(f"[dim]envs kept in {shown(finding.workspace)}[/dim]")
    for problem in finding.cleanup_errors:
        console.print(f"[yellow]clean-up failed:[/yellow] {shown(problem)}")


def _path_tree(chain: Sequence[Package], needs: Sequence[Package]) -> Tree:
    """How a culprit got in: top-level requirement → … → the culprit → what it needs."""
    tree = Tree("[dim]how it got in[/dim]", guide_style="dim")
    node = tree
    for step in chain[:-1]:
        node = node.add(shown(step))
    culprit = node.add(f"[bold red]{shown(chain[-1])}[/bold red]")
    for need in needs:
        culprit.add(f"[dim]needs[/dim] {shown(need)}")
    return tree


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


def _failed_runs(trial: Trial) -> str:
    """``2/15``: how many of a repeated trial's runs failed."""
    return f"{sum(r.outcome is Outcome.FAIL for r in trial.results)}/{len(trial.results)}"


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
            + (" (cached)" if trial.cached else "")
            + (f" {_failed_runs(trial)}" if len(trial.results) > 1 else ""),
            f"{trial.seconds:.1f}",
            f"{trial.env_seconds:.2f}",
            f"{timings.get('boot', 0.0):.2f}",
            f"{timings.get('wait', 0.0):.2f}",
            shown(trial.result.diagnosis.value),
        )
    return table
