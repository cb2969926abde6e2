"""The JSON report against its shipped schema, and the CI formats made from it (no I/O)."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from packaging.utils import canonicalize_name
from rich.console import Console

from envbisect.ci import junit, markdown
from envbisect.delta import ChangeKind, Delta, FileChange, LocalChange, Package
from envbisect.model import (
    Diagnosis,
    Finding,
    Flakiness,
    Narrowing,
    Outcome,
    Phase,
    ProbeResult,
    Rate,
    Trial,
    Tried,
    Verdict,
)
from envbisect.report import ConsoleObserver, console, render, summary_line
from envbisect.reportjson import error_json, to_json
from envbisect.stacks import Frame, Stacks, ThreadStack
from envbisect.startup import HookKind, StartupHook

from .conftest import SCHEMA, VALIDATOR
from .test_delta import BAD as STALL_BAD
from .test_delta import GOOD as STALL_GOOD
from .test_delta import MARKERS, pkg, side

GOOD = side(pkg("pika", "1.4.4"), pkg("colorama", "0.4.6"), pkg("six", "1.16.0"))
BAD = side(pkg("pika", "0.12.0"), pkg("six", "1.17.0"), pkg("humanize", "4.17.0"))
DELTA = Delta(GOOD, BAD, MARKERS, {})
PASSED = ProbeResult(Outcome.PASS, Diagnosis.CONSUMED, "actor ran 17 ms after ready", (), {})
FAILED = ProbeResult(
    Outcome.FAIL,
    Diagnosis.CONSUMER_ERRORS,
    "consumer error loop | first: AttributeError",
    ("```", "AttributeError: module 'collections' has no attribute 'Callable'", "<b>"),
    {"boot": 0.2, "wait": 1.5},
)
EVERYTHING = frozenset(c.name for c in DELTA.changes)


RECIPE = {
    "kind": "consume",
    "broker": "amqp://guest:***@127.0.0.1:5672/",
    "worker_module": None,
    "actor": "",
    "args": [],
    "kwargs": {},
}


def trial(index: int, phase: str, changes: set[str], result: ProbeResult, **kw: Any) -> Trial:
    return Trial(index, phase, frozenset(changes), result.outcome, (result,), 0.1, 0.1, 1.0, **kw)


def finding(verdict: Verdict, *, gate: bool, narrow: bool = False) -> Finding:
    pika = DELTA.change("pika")
    trials = [
        trial(1, "candidate" if gate else "bad", set(EVERYTHING), FAILED),
        trial(2, "good", set(), PASSED),
        trial(3, "confirm", {"pika"}, FAILED),
        trial(4, "narrow", {"pika"}, FAILED, substitute=pkg("pika", "0.13.1")),
    ]
    narrowing = Narrowing(
        pika,
        ("1.4.4", "1.0.0", "0.13.1", "0.12.0"),
        (
            Tried("1.4.4", Outcome.PASS, 2),
            Tried("0.13.1", Outcome.FAIL, 4, "consumer error loop"),
            Tried("0.12.0", Outcome.FAIL, 3),
        ),
        last_good="1.4.4",
        first_bad="0.13.1",
        untestable=("1.0.0",),
    )
    found = verdict is Verdict.CULPRIT_FOUND
    return Finding(
        verdict=verdict,
        delta=DELTA,
        culprits=(pika,) if found else (),
        trials=tuple(trials if found else trials[:2]),
        evidence=trials[2] if found else trials[0],
        seconds=12.5,
        probe="consume on amqp://guest:***@127.0.0.1:5672/",
        good="base/uv.lock",
        bad="pr/uv.lock",
        installer="uv",
        jobs=2,
        workspace=None,
        narrowings=(narrowing,) if narrow else (),
        gate=gate,
        recipe=RECIPE,
    )


def valid(report: dict[str, Any]) -> dict[str, Any]:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(report)]
    assert errors == []
    return report


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_schema_knows_every_value_the_code_can_write() -> None:
    defs = SCHEMA["$defs"]
    assert set(defs["diagnosis"]["enum"]) == {d.value for d in Diagnosis}
    assert set(defs["outcome"]["enum"]) == {o.value for o in Outcome}
    assert set(defs["change_kind"]["enum"]) == {k.value for k in ChangeKind}
    assert set(defs["startup_hook"]["properties"]["kind"]["enum"]) == {k.value for k in HookKind}
    assert set(SCHEMA["properties"]["verdict"]["enum"]) == {v.value for v in Verdict} | {"error"}


def test_gate_regression_with_narrowing_validates_and_names_the_first_bad_version() -> None:
    report = valid(to_json(finding(Verdict.CULPRIT_FOUND, gate=True, narrow=True), 1))
    assert report["command"] == "gate"
    (culprit,) = report["culprits"]
    assert culprit["narrowed"]["first_bad"] == "0.13.1"
    assert culprit["narrowed"]["untestable"] == ["1.0.0"]
    assert report["trials"][3]["packages"] == ["pika==0.13.1"]  # the version it tried
    assert {c["name"]: c["change"] for c in report["changed_packages"]} == {
        "colorama": "removed",
        "humanize": "added",
        "pika": "version",
        "six": "version",
    }
    assert report["summary"].startswith("gate failed: regression: pika 1.4.4 → 0.12.0")


@pytest.mark.parametrize(
    ("verdict", "gate"),
    [(Verdict.PASS, True), (Verdict.BAD_PASSES, False), (Verdict.INCONSISTENT, True)],
)
def test_other_verdicts_validate(verdict: Verdict, gate: bool) -> None:
    report = valid(to_json(finding(verdict, gate=gate), 0 if verdict is Verdict.PASS else 4))
    assert report["culprits"] == []


def test_an_error_report_validates_and_a_broken_one_does_not() -> None:
    valid(error_json("uv.lock: not valid TOML (at line 2)", 2, "gate"))
    assert list(VALIDATOR.iter_errors({"schema_version": 1, "verdict": "error", "exit_code": 2}))
    wrong = to_json(finding(Verdict.PASS, gate=True), 0) | {"verdict": "passed"}
    assert list(VALIDATOR.iter_errors(wrong))


def test_markdown_for_a_pull_request_comment() -> None:
    text = markdown(to_json(finding(Verdict.CULPRIT_FOUND, gate=True, narrow=True), 1))
    assert text.startswith("### ❌ envbisect: gate failed: regression: pika 1.4.4 → 0.12.0")
    assert "**Narrowed:** first bad pika version: 0.13.1" in text
    assert "| colorama | 0.4.6 | — | removed |" in text
    assert "| pika | 1.4.4 | 0.12.0 | downgrade |" in text
    assert "consumer error loop \\| first" in text  # a pipe cannot break the table
    # The worker's own ``` cannot end the code block early; its HTML stays text.
    assert "````text" in text
    assert "<b>" not in text.split("````text")[0]


def test_markdown_of_a_passing_gate_and_of_an_error() -> None:
    passed = markdown(to_json(finding(Verdict.PASS, gate=True), 0))
    assert passed.startswith("### ✅ envbisect: gate passed: the candidate pr/uv.lock passes")
    assert "4 change(s) from baseline to candidate" in passed
    error = markdown(error_json("broker unreachable", 5, "gate"))
    assert "exit code 5" in error
    assert "broker unreachable" in error


@pytest.mark.parametrize(
    ("verdict", "gate", "kind"),
    [
        (Verdict.PASS, True, None),
        (Verdict.CULPRIT_FOUND, True, "failure"),
        (Verdict.CULPRIT_FOUND, False, "failure"),
        (Verdict.GOOD_FAILS, True, "failure"),
        (Verdict.GOOD_FAILS, False, "error"),
        (Verdict.BAD_PASSES, False, "skipped"),
        (Verdict.INCONSISTENT, True, "error"),
    ],
)
def test_junit_shows_the_verdict_as_one_test_result(
    verdict: Verdict, gate: bool, kind: str | None
) -> None:
    root = ET.fromstring(junit(to_json(finding(verdict, gate=gate), 0)))
    (case,) = root.iter("testcase")
    results = [child.tag for child in case if child.tag != "system-out"]
    assert results == ([kind] if kind else [])
    for counted, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
        assert root.get(counted) == str(int(kind == tag))
    assert case.get("name", "").startswith("pr/uv.lock passes consume")


def test_junit_of_an_error(tmp_path: Path) -> None:
    root = ET.fromstring(junit(error_json("--find-links x: not a directory", 2, "run")))
    (error,) = root.iter("error")
    assert error.get("message") == "run: error: --find-links x: not a directory"
    assert root.get("errors") == "1"


def test_summary_line_of_a_run_culprit() -> None:
    found = finding(Verdict.CULPRIT_FOUND, gate=False, narrow=True)
    assert summary_line(found) == (
        "culprit found: pika 1.4.4 → 0.12.0 (downgrade); first bad pika version 0.13.1"
    )


def test_a_locally_modified_culprit_names_its_files_in_every_output() -> None:
    clean = pkg("pika", "1.4.4", digest="clean")
    patched = Package(
        clean.name,
        "pika",
        "1.4.4",
        digest="patched",
        local_changes=(
            LocalChange("pika/adapters/blocking_connection.py", FileChange.MODIFIED),
            LocalChange("pika/hotfix.py", FileChange.ADDED),
        ),
    )
    dramatiq = pkg("dramatiq", "2.2.1", "pika>=1.0")
    delta = Delta(side(clean, dramatiq), side(patched, dramatiq), MARKERS, {})
    (change,) = delta.changes
    found = replace(
        finding(Verdict.CULPRIT_FOUND, gate=False),
        delta=delta,
        culprits=(change,),
        trials=(trial(1, "confirm", {"pika"}, FAILED),),
    )
    report = valid(to_json(found, 0))
    files = [
        {"path": "pika/adapters/blocking_connection.py", "change": "modified"},
        {"path": "pika/hotfix.py", "change": "added"},
    ]
    (culprit,) = report["culprits"]
    assert culprit["local_changes"] == files
    assert report["changed_packages"][0]["local_changes"] == files
    assert culprit["summary"] == (
        "pika 1.4.4, locally modified: pika/adapters/blocking_connection.py, "
        "pika/hotfix.py (added) (pulled in by dramatiq 2.2.1)"
    )
    assert report["summary"] == (
        "culprit found: pika 1.4.4, locally modified: pika/adapters/blocking_connection.py, "
        "pika/hotfix.py (added)"
    )


HUB = ThreadStack(
    4242,
    None,
    1,
    4242,
    False,
    (Frame("Hub.run", "/e/lib/python3.12/site-packages/gevent/hub.py", 647),),
    "py-spy",
)
POLL = ThreadStack(
    4243,
    "MainThread",
    2,
    4243,
    False,
    (
        Frame("PollPoller.poll", "/e/lib/python3.12/site-packages/pika/select_connection.py", 1240),
        Frame("<module>", "/e/lib/python3.12/site-packages/dramatiq/__main__.py", 25),
    ),
    "py-spy",
)
STUCK = replace(FAILED, stacks=Stacks((POLL, HUB), 4242, "taken with py-spy"))
HOOK = StartupHook("telemetry_shim.pth", "import telemetry_shim._autopatch", 1, HookKind.PTH)


def stuck_finding() -> Finding:
    found = finding(Verdict.CULPRIT_FOUND, gate=False)
    confirm = replace(found.trials[2], results=(STUCK,))
    return replace(
        found,
        trials=(*found.trials[:2], confirm),
        evidence=confirm,
        startup_hooks={canonicalize_name("pika"): (HOOK,)},
    )


def test_json_carries_the_stacks_and_the_start_up_hooks() -> None:
    report = valid(to_json(stuck_finding(), 0))
    (culprit,) = report["culprits"]
    assert culprit["startup_hooks"] == [
        {
            "file": "telemetry_shim.pth",
            "line": "import telemetry_shim._autopatch",
            "lineno": 1,
            "kind": "pth",
        }
    ]
    evidence = report["evidence"]
    assert evidence["stacks_note"] == "taken with py-spy"
    assert evidence["stacks_summary"] == [
        "main process 4242: gevent hub running in main thread (gevent/hub.py:647)",
        "worker process 4243: MainThread blocked in PollPoller.poll "
        "(pika/select_connection.py:1240) ← <module> (dramatiq/__main__.py:25)",
    ]
    assert evidence["stacks"][0] == {
        "pid": 4243,
        "process": "worker",
        "thread_name": "MainThread",
        "thread_id": 2,
        "os_thread_id": 4243,
        "active": False,
        "tool": "py-spy",
        "frames": [
            {
                "function": "PollPoller.poll",
                "file": "/e/lib/python3.12/site-packages/pika/select_connection.py",
                "line": 1240,
            },
            {
                "function": "<module>",
                "file": "/e/lib/python3.12/site-packages/dramatiq/__main__.py",
                "line": 25,
            },
        ],
    }
    assert evidence["stacks"][1]["process"] == "main"


def test_json_says_when_no_stacks_were_sought() -> None:
    report = valid(to_json(finding(Verdict.CULPRIT_FOUND, gate=False), 0))
    assert report["evidence"]["stacks"] is None
    assert report["evidence"]["stacks_note"] == ""
    assert report["evidence"]["stacks_summary"] == []
    assert report["culprits"][0]["startup_hooks"] == []
    none_taken = replace(STUCK, stacks=Stacks((), 4242, "no stack could be taken: py-spy: x"))
    found = stuck_finding()
    confirm = replace(found.trials[2], results=(none_taken,))
    report = valid(to_json(replace(found, evidence=confirm), 0))
    assert report["evidence"]["stacks"] == []
    assert report["evidence"]["stacks_note"] == "no stack could be taken: py-spy: x"


def test_markdown_shows_the_stacks_and_the_start_up_hooks() -> None:
    text = markdown(to_json(stuck_finding(), 0))
    assert "runs at start-up: `telemetry_shim.pth: import telemetry_shim._autopatch`" in text
    assert "**Stacks** (taken with py-spy):" in text
    assert "main process 4242: gevent hub running in main thread (gevent/hub.py:647)\n" in text
    assert "every thread's stack (2 threads)" in text
    assert "    pika/select_connection.py:1240 in PollPoller.poll" in text
    assert "main process 4242, main thread (py-spy):\n    gevent/hub.py:647 in Hub.run" in text
    plain = markdown(to_json(finding(Verdict.CULPRIT_FOUND, gate=False), 0))
    assert "runs at start-up" not in plain
    assert "**Stacks**" not in plain


def test_terminal_shows_the_stacks_and_the_start_up_hooks() -> None:
    console = Console(record=True, width=300)
    render(stuck_finding(), console)
    text = console.export_text()
    assert "  runs at start-up: telemetry_shim.pth: import telemetry_shim._autopatch" in text
    assert "stacks: taken with py-spy" in text
    assert "main process 4242: gevent hub running in main thread (gevent/hub.py:647)" in text
    assert "worker process 4243: MainThread blocked in PollPoller.poll" in text


def test_junit_shows_the_stack_summary() -> None:
    root = ET.fromstring(junit(to_json(stuck_finding(), 0)))
    (failure,) = root.iter("failure")
    assert "main process 4242: gevent hub running" in (failure.text or "")


# -- what leaves the machine ----------------------------------------------------------------

SECRETS = ("s3cr3t-pass", "ghp_tok3n123", "api-key-4567")
NASTY = (
    "\x1b[31mred\x1b[0m line \x00with\x07 bell \x1b]0;title\x07and\x1b[2K\r\n"
    "amqp://u:s3cr3t-pass@h/ https://ghp_tok3n123@h/ API_KEY=api-key-4567\x0b\x1b"
)


def leaky_finding(verdict: Verdict = Verdict.GOOD_FAILS, label: str = "base/uv.lock") -> Finding:
    """A finding whose probe, note, detail and evidence carry secrets and terminal escapes."""
    result = ProbeResult(Outcome.FAIL, Diagnosis.EXIT_STATUS, NASTY, tuple(NASTY.split("\n")), {})
    failing = trial(1, "good", set(), result)
    return replace(
        finding(verdict, gate=False),
        trials=(failing,),
        evidence=failing,
        probe=f"command 'curl {NASTY}'",
        note=NASTY,
        good=label,
    )


def assert_clean(text: str) -> None:
    assert not [s for s in SECRETS if s in text]
    assert not [c for c in text if ord(c) < 32 and c not in "\n\t"], repr(text)
    assert "red line with bell" in text  # still readable


def test_json_markdown_and_junit_hold_no_secret_and_no_control_character() -> None:
    report = valid(to_json(leaky_finding(), 3))
    assert_clean(json.dumps(report, ensure_ascii=False))
    assert_clean(markdown(report))
    xml = junit(report)
    assert_clean(xml)
    error = ET.fromstring(xml).find(".//error")  # XML 1.0 forbids most C0 characters
    assert error is not None and "red line with bell" in (error.text or "")


def test_ci_formats_clean_whatever_report_they_get() -> None:
    # Markdown and JUnit are public: a report from elsewhere gets the same treatment.
    report = error_json("placeholder", 2, "run") | {"error": NASTY}
    assert_clean(markdown(report))
    assert_clean(junit(report))
    ET.fromstring(junit(report))


def test_terminal_report_masks_and_never_wraps_off_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    label = "/tmp/" + "a-very-long-checkout-directory/" * 8 + "minimal.txt"
    render(leaky_finding(label=label), console())
    out = capsys.readouterr().out
    assert_clean(out)
    assert f"the good set already fails the probe: {label}" in out.splitlines()


def test_terminal_report_wraps_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: a terminal, whatever stdout is
    monkeypatch.setenv("COLUMNS", "80")
    label = "/tmp/" + "a-very-long-checkout-directory/" * 8 + "minimal.txt"
    render(leaky_finding(label=label), console())
    (headline,) = [x for x in capsys.readouterr().out.splitlines() if "already fails" in x]
    assert len(headline) <= 80  # today's look: the report wraps to the window


def stall_finding() -> Finding:
    """The stall of tests/test_delta: perfsuite → telemetry-shim (the culprit) → gevent."""
    delta = Delta(STALL_GOOD, STALL_BAD, MARKERS, {})
    everything = {c.name for c in delta.changes}
    shim = delta.change("telemetry-shim")
    closed = set(delta.closure([shim.name]))
    trials = (
        trial(1, "good", set(), PASSED),
        trial(2, "bad", everything, FAILED),
        trial(3, "search", closed, FAILED),
        trial(4, "confirm", closed, FAILED),
        trial(5, "confirm", set(), PASSED),
    )
    return replace(
        finding(Verdict.CULPRIT_FOUND, gate=False),
        delta=delta,
        culprits=(shim,),
        trials=trials,
        evidence=trials[3],
    )


def test_markdown_draws_how_the_culprit_got_in_and_the_search() -> None:
    text = markdown(valid(to_json(stall_finding(), 0)))
    mermaid = text.split("```mermaid\n")[1].split("```")[0]
    assert 'c0_p0["perfsuite 2.7.0"]' in mermaid
    assert 'c0_p1["telemetry-shim 0.4.1"]' in mermaid
    assert "c0_p0 -->|requires| c0_p1" in mermaid
    assert 'c0_p1 --> c0_n0["gevent 26.9.0"]' in mermaid
    assert "class c0_p1 culprit" in mermaid
    picture = text.split("**Search** (5 trials over ")[1].split("```text\n")[1]
    rows = picture.split("```")[0].splitlines()
    total = len(stall_finding().delta.changes)
    assert rows[1].startswith("  1 good ") and rows[1].endswith("   0  ✓ pass")
    assert rows[2].startswith("  2 bad       " + "█" * 40)
    assert rows[2].endswith(f"{total:>4}  ✗ fail")
    assert rows[3].startswith("  3 search    █") and "█" * 40 not in rows[3]
    assert len(text.splitlines()) < 120


def test_a_mermaid_label_cannot_break_out_of_its_quotes() -> None:
    report = to_json(stall_finding(), 0)
    report["culprits"][0]["path"][0] = 'evil"]; click x==1'
    assert '  c0_p0["evil#34;#93;#59; click x 1"]' in markdown(report)


def test_terminal_shows_how_the_culprit_got_in_as_a_tree() -> None:
    console = Console(record=True, width=120)
    render(stall_finding(), console)
    text = console.export_text()
    tree = [line.rstrip() for line in text.split("how it got in")[1].splitlines()[1:4]]
    assert tree[0].endswith("── perfsuite 2.7.0")
    assert tree[1].endswith("── telemetry-shim 0.4.1")
    assert tree[2].endswith("── needs gevent 26.9.0")


def test_reports_carry_a_flaky_culprits_rate_and_the_runs_confidence() -> None:
    flakiness = Flakiness(
        runs=14,
        chosen=True,
        bad=Rate(6, 11),
        good=Rate(0, 24),
        culprits=Rate(7, 14),
        miss=0.0012,
        confidence=0.995,
    )
    flaky = replace(stall_finding(), flakiness=flakiness)
    report = valid(to_json(flaky, 0))
    assert report["flakiness"]["culprits"] == {"failed": 7, "runs": 14}
    assert report["flakiness"]["confidence"] == 0.995
    assert "(fails 7 of 14 runs; good set 0 of 24 runs; confidence 99.5 %)" in report["summary"]
    assert "**Intermittent:** the culprit set fails 7 of 14 runs" in markdown(report)
    console = Console(record=True, width=300)
    render(flaky, console)
    assert "intermittent: the culprit set fails 7 of 14 runs" in console.export_text()
    assert valid(to_json(stall_finding(), 0))["flakiness"] is None


def test_a_121_change_summary_shows_under_60_lines_outside_its_folds() -> None:
    bad = {**STALL_BAD, **side(*(pkg(f"extra-{i:03d}", "1.0") for i in range(113)))}
    delta = Delta(STALL_GOOD, bad, MARKERS, {})
    assert len(delta.changes) == 121
    everything = {c.name for c in delta.changes}
    closed = set(delta.closure([canonicalize_name("telemetry-shim")]))
    names = sorted(everything - closed)
    trials = [trial(1, "good", set(), PASSED), trial(2, "bad", everything, FAILED)]
    for n, size in enumerate((60, 30, 15, 8, 4, 2, 1, 0, 0, 0, 0), start=3):
        trials.append(trial(n, "search", closed | set(names[:size]), FAILED))
    trials += [trial(14, "confirm", closed, FAILED), trial(15, "confirm", set(), PASSED)]
    found = replace(stall_finding(), delta=delta, trials=tuple(trials), evidence=trials[-2])
    text = markdown(valid(to_json(found, 0)))
    shown, folded = [], 0
    for line in text.splitlines():
        folded += line == "<details>"
        folded -= line == "</details>"
        if not folded and line != "</details>":
            shown.append(line)
    assert "**Search** (15 trials over 121 changes):" in text
    assert len(shown) < 60, "\n".join(shown)


def observe(console: Console) -> None:
    with ConsoleObserver(console) as observer:
        observer.plan(Phase.GOOD, 11, 121)
        observer.trial_finished(trial(1, "good", set(), PASSED))
        observer.plan(Phase.SEARCH, 11, 60)
        observer.trial_finished(trial(2, "search", {"pika"}, FAILED))


def test_a_terminal_gets_a_live_line_with_the_phase_the_trials_and_the_changes_in_play() -> None:
    out = io.StringIO()
    observe(Console(file=out, force_terminal=True, width=140, highlight=False))
    text = out.getvalue()
    assert "trial  1 good" in text  # the lines a log keeps are printed as ever
    assert "search" in text
    assert "trial 2 of ~11 · 60 change(s) in play ·" in text
    assert "s left" in text


def test_off_a_terminal_only_plain_lines_are_printed() -> None:
    out = io.StringIO()
    observe(Console(file=out, force_terminal=False, width=140, highlight=False))
    lines = out.getvalue().splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["trial", "1", "good"],
        ["trial", "2", "search"],
    ]
    assert "in play" not in out.getvalue()
