"""The JSON report: the documented document (``envbisect/schema/report.schema.json``).

It is the one source of the CI formats too (:mod:`envbisect.ci`: Markdown,
JUnit XML). Every string in it is masked (:mod:`envbisect.masking`) and printable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from packaging.utils import NormalizedName

from envbisect import __version__
from envbisect.delta import Change, Delta, Package
from envbisect.masking import mask_urls, scrub
from envbisect.model import Finding, Flakiness, Narrowing, Trial, Verdict
from envbisect.report import culprit_line, summary_line
from envbisect.stacks import Stacks, ThreadStack
from envbisect.startup import StartupHook

SCHEMA_VERSION = 1


def to_json(finding: Finding, exit_code: int) -> dict[str, Any]:
    """The documented JSON report (schema in ``envbisect/schema/report.schema.json``),
    every string in it masked and printable."""
    delta = finding.delta
    kinds = delta.counts()
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
        "slots": finding.slots,
        "rounds": finding.rounds,
        "flakiness": None if finding.flakiness is None else _flakiness_json(finding.flakiness),
        "repro": _repro_json(finding),
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


def _repro_json(finding: Finding) -> dict[str, Any] | None:
    """What ``envbisect repro`` needs: both sets as exact pins, the index, the probe."""
    confirm = finding.evidence
    if finding.verdict is not Verdict.CULPRIT_FOUND or confirm is None:
        return None
    delta = finding.delta
    failing = delta.trial(confirm.changes)

    def pins(packages: Mapping[NormalizedName, Package]) -> list[str]:
        return [f"{p.display_name}=={p.version}" for _, p in sorted(packages.items())]

    return {
        "python": delta.markers.get("python_full_version", ""),
        "python_executable": finding.python,
        "good": pins(delta.good),
        "failing": pins(failing),
        "local": sorted(p.display_name for p in failing.values() if p.editable or p.local_changes),
        "index": finding.index,
        "find_links": list(finding.find_links),
        "probe": dict(finding.recipe),
    }


def _flakiness_json(flakiness: Flakiness) -> dict[str, Any]:
    culprits = flakiness.culprits
    return {
        "runs": flakiness.runs,
        "chosen": flakiness.chosen,
        "bad": asdict(flakiness.bad),
        "good": asdict(flakiness.good),
        "culprits": None if culprits is None else asdict(culprits),
        "miss_chance": round(flakiness.miss, 6),
        "confidence": round(flakiness.confidence, 6),
        "summary": flakiness.describe(),
    }


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
    narrowing = next((n for n in narrowings if n.answers(change)), None)
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
            {
                "version": t.version,
                "outcome": t.outcome.value,
                "trial": t.trial,
                "detail": t.detail,
                "companions": list(t.companions),
            }
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
