"""The CI formats, made from the JSON report: Markdown (pull-request comment, job summary)
and JUnit XML (the verdict as a test result).

Both read the documented JSON document only (see ``envbisect/schema``), so a
run that ended in an error is reported the same way as one that finished. Both
clean it first, whoever made it: no credential, no terminal escape, no control
character (XML 1.0 forbids most; a Markdown viewer or a terminal would act on them).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from envbisect.masking import scrub
from envbisect.stacks import short_path, thread_label

Report = Mapping[str, Any]

_ICON = {
    "pass": "✅",
    "culprit-found": "❌",
    "good-fails": "⚠️",
    "bad-passes": "⚠️",
    "inconsistent": "⚠️",
    "error": "⚠️",
}
_KINDS = {"added": "added", "removed": "removed", "modified": "locally modified"}


def markdown(report: Report) -> str:
    """A summary fit for a pull-request comment or ``$GITHUB_STEP_SUMMARY``."""
    report = scrub(report)
    verdict = report["verdict"]
    command = report.get("command", "run")
    lines = [f"### {_ICON[verdict]} envbisect: {_cell(_title(report))}", ""]
    if verdict == "error":
        lines += [f"`exit code {report['exit_code']}`: {_cell(report['error'])}", ""]
        return "\n".join(lines)
    good, bad = ("baseline", "candidate") if command == "gate" else ("good", "bad")
    lines += [
        f"- {bad}: `{report['bad']}`",
        f"- {good}: `{report['good']}`",
        f"- probe: `{report['probe']}`",
        "",
    ]
    for number, culprit in enumerate(report["culprits"]):
        lines.append(f"**Culprit:** `{culprit['summary']}`  ")
        if len(culprit["path"]) > 1:
            lines.append(f"path: {' → '.join(f'`{step}`' for step in culprit['path'])}  ")
        if culprit["path"]:
            lines += ["", *_mermaid(culprit, f"c{number}_"), ""]
        hooks = culprit.get("startup_hooks") or []
        if hooks:
            described = ", ".join(_code(f"{hook['file']}: {hook['line']}") for hook in hooks)
            lines.append(f"runs at start-up: {described}  ")
        narrowed = culprit.get("narrowed")
        if narrowed:
            lines.append(f"**Narrowed:** {_cell(narrowed['summary'])}  ")
    flakiness = report.get("flakiness")
    if flakiness:
        lines.append(f"**Intermittent:** {_cell(flakiness['summary'])}  ")
    if report["note"]:
        lines.append(f"_{_cell(report['note'])}_")
    lines.append("")
    evidence = report["evidence"]
    if evidence is not None and verdict != "pass":
        lines += [
            f"**Evidence** (trial {evidence['trial']}): `{evidence['diagnosis']}` — "
            f"{_cell(evidence['detail'])}",
            "",
        ]
        lines += _stacks(evidence)
        if evidence["output"]:
            lines += _details("worker / command output", _fenced(evidence["output"][-30:]))
    if report["trials"] and verdict != "pass":
        lines += _search_picture(report["trials"], report["changes"]["total"], (good, bad))
    changes = report["changed_packages"]
    if changes:
        table = [f"| package | {good} | {bad} | change |", "|---|---|---|---|"]
        table += [
            f"| {_cell(c['name'])} | {c['good_version'] or '—'} | {c['bad_version'] or '—'} "
            f"| {c['direction'] or _KINDS.get(c['change'], c['change'])} |"
            for c in changes
        ]
        lines += _details(f"{len(changes)} change(s) from {good} to {bad}", table)
    trials = report["trials"]
    if trials:
        table = ["| # | phase | changes | outcome | s | why |", "|---:|---|---:|---|---:|---|"]
        table += [
            f"| {t['index']} | {t['phase']} | {t['size']} | {t['outcome']} "
            f"| {t['seconds']:.1f} | {_cell(t['diagnosis'])}: {_cell(t['detail'])} |"
            for t in trials
        ]
        lines += _details(f"{len(trials)} trial(s) in {report['seconds']:.1f} s", table)
    lines += [
        f"<sub>envbisect {report['tool']['version']} · installer {report['installer']} · "
        f"exit code {report['exit_code']}</sub>",
        "",
    ]
    return "\n".join(lines)


def junit(report: Report) -> str:
    """One test case, "the candidate (bad side) passes the probe", as JUnit XML."""
    report = scrub(report)
    verdict = report["verdict"]
    command = report.get("command", "run")
    seconds = f"{report.get('seconds', 0.0):.3f}"
    subject = report.get("bad", "the environment")
    case_name = f"{subject} passes {report.get('probe', 'the probe')}"
    suites = ET.Element("testsuites", name="envbisect", tests="1", time=seconds)
    suite = ET.SubElement(suites, "testsuite", name=f"envbisect {command}", tests="1")
    suite.set("time", seconds)
    properties = ET.SubElement(suite, "properties")
    for key in ("verdict", "exit_code", "good", "bad", "probe", "installer"):
        if key in report:
            ET.SubElement(properties, "property", name=key, value=str(report[key]))
    case = ET.SubElement(suite, "testcase", classname=f"envbisect.{command}", name=case_name)
    case.set("time", seconds)
    kind = _junit_kind(verdict, command)
    if kind is not None:
        element = ET.SubElement(case, kind, message=_title(report))
        if kind != "skipped":
            element.set("type", verdict)
            element.text = report.get("error") or _body(report)
    counts = {"failures": "failure", "errors": "error", "skipped": "skipped"}
    for parent in (suites, suite):
        for attribute, counted in counts.items():
            parent.set(attribute, str(int(kind == counted)))
    if report.get("trials"):
        ET.SubElement(case, "system-out").text = "\n".join(
            f"trial {t['index']} {t['phase']} {t['outcome']} {t['seconds']:.1f}s "
            f"{' '.join(t['packages'])}: {t['diagnosis']}: {t['detail']}"
            for t in report["trials"]
        )
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _junit_kind(verdict: str, command: str) -> str | None:
    """How the verdict shows as a test result: passed (None), failure, error or skipped."""
    if verdict == "pass":
        return None
    if verdict == "bad-passes":
        return "skipped"  # the bad env works: nothing reproduced, nothing to blame
    if verdict == "culprit-found" or (command == "gate" and verdict == "good-fails"):
        return "failure"  # the candidate fails (a failing baseline does not excuse it)
    return "error"


def _title(report: Report) -> str:
    if report["verdict"] == "error":
        return f"{report.get('command', 'run')}: error: {report['error']}"
    return str(report["summary"])


def _body(report: Report) -> str:
    lines = [str(report["summary"])]
    lines += [f"culprit: {c['summary']}" for c in report.get("culprits", [])]
    evidence = report.get("evidence")
    if evidence:
        lines.append(f"evidence (trial {evidence['trial']}): {evidence['detail']}")
        lines += evidence.get("stacks_summary", [])
        lines += evidence["output"][-30:]
    return "\n".join(lines)


def _stacks(evidence: Report) -> list[str]:
    """A stuck worker's stacks: one line per thread, then (folded) every frame."""
    threads = evidence.get("stacks")
    if threads is None:
        return []
    lines = [f"**Stacks** ({_cell(evidence['stacks_note'])}):", ""]
    if evidence["stacks_summary"]:
        lines += [*_fenced(evidence["stacks_summary"]), ""]
    frames = []
    for thread in sorted(threads, key=lambda t: (t["process"] != "main", t["pid"])):
        name = thread_label(
            thread["pid"], thread["thread_name"], thread["thread_id"], thread["os_thread_id"]
        )
        frames.append(f"{thread['process']} process {thread['pid']}, {name} ({thread['tool']}):")
        frames += [
            f"    {short_path(f['file'])}:{f['line'] or '?'} in {f['function']}"
            for f in thread["frames"]
        ]
    if frames:
        lines += _details(f"every thread's stack ({len(threads)} threads)", _fenced(frames))
    return lines


def _mermaid(culprit: Report, prefix: str) -> list[str]:
    """How the culprit got in, as a Mermaid graph: the chain from a top-level requirement
    to it, and what it needs (GitHub and GitLab draw it)."""
    path, needs = culprit["path"], culprit["requires"]
    lines = ["```mermaid", "graph LR"]
    ids = [f"{prefix}p{i}" for i in range(len(path))]
    lines += [f'  {node}["{_label(step)}"]' for node, step in zip(ids, path, strict=True)]
    lines += [f"  {a} -->|requires| {b}" for a, b in pairwise(ids)]
    for i, need in enumerate(needs):
        lines.append(f'  {ids[-1]} --> {prefix}n{i}["{_label(need)}"]')
    lines += [f"  class {ids[-1]} culprit", "  classDef culprit fill:#fdd,stroke:#c00", "```"]
    return lines


def _label(pin: str) -> str:
    """``gevent 26.9.0`` for ``gevent==26.9.0``, safe inside a quoted Mermaid label."""
    text = pin.replace("==", " ")
    return "".join(c if c.isalnum() or c in " .-_+!~" else f"#{ord(c)};" for c in text)


#: How wide the search picture's widest bar (every change) is.
_BAR = 40


def _search_picture(trials: Sequence[Report], total: int, sides: tuple[str, str]) -> list[str]:
    """Each trial as a row: the changes in play as a bar, and what the probe said."""
    marks = {"pass": "✓ pass", "fail": "✗ fail"}
    rows = []
    for trial in trials:
        size = trial["size"]
        bar = "█" * max(1 if size else 0, round(_BAR * size / total) if total else 0)
        label = {"good": sides[0], "bad": sides[1]}.get(trial["phase"], trial["phase"])
        if trial["phase"] == "narrow":
            label = "narrow"
        outcome = marks.get(trial["outcome"], f"? {trial['outcome']}")
        rows.append(f"{trial['index']:>3} {label:<9} {bar:<{_BAR}} {size:>4}  {outcome}")
    head = f"  # {'trial':<9} {'changes in play':<{_BAR}} {'n':>4}  outcome"
    return [
        f"**Search** ({len(trials)} trials over {total} changes):",
        "",
        *_fenced([head, *rows]),
        "",
    ]


def _details(summary: str, body: Sequence[str]) -> list[str]:
    return ["<details>", f"<summary>{_cell(summary)}</summary>", "", *body, "", "</details>", ""]


def _fenced(lines: Sequence[str]) -> list[str]:
    """A code block whose fence is longer than any run of backticks in ``lines``."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", *lines, fence]


def _code(text: str) -> str:
    """An inline code span whose fence is longer than any run of backticks in ``text``."""
    text = " ".join(text.split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell or line: no pipes, tags or line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
