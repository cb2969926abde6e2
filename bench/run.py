"""`make bench`: envbisect against two baselines, same scenarios, same broker, one run.

For each scenario (a bad env with ~40 or ~120 changes, one culprit or a pair,
built from the fixture packages plus real PyPI packages) it runs, in this one
process tree and against the same RabbitMQ:

1. envbisect as shipped;
2. ``uv-per-trial``: the same search, each trial a fresh ``uv venv`` +
   ``uv pip install`` from the same wheels, a fixed 30 s probe timeout;
3. ``naive``: the same search, each trial a fresh ``python -m venv`` +
   ``pip install --no-index``, a fixed 30 s probe timeout.

Every variant runs ``--runs`` times (default 3) on the headline scenario
(~120 changes, one culprit); elsewhere envbisect runs ``--runs`` times and the
baselines ``--baseline-runs`` times (default 1: a naive run costs ~7 minutes).
One warm-up run of envbisect per scenario comes first (so every variant finds
warm wheel and uv caches); the outcome cache is off. Results go to
``bench/RESULTS.md`` and the headline into the README between the
``bench:headline`` markers.

    python bench/run.py [--runs N] [--baseline-runs N] [--scenarios s40-single,...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = ROOT / "build" / "bench"
MINIMAL = ROOT / "fixtures" / "minimal.txt"
SCENARIOS = {
    "s40-single": "~40 changes, one culprit (telemetry-shim, the gevent/epoll stall)",
    "s40-pair": "~40 changes, a pair (fastcodec + codec-autoload)",
    "s120-single": "~120 changes, one culprit (telemetry-shim)",
    "s120-pair": "~120 changes, a pair (fastcodec + codec-autoload)",
}
HEADLINE = "s120-single"
BASELINE_ARGS = ["--fixed-timeout", "--timeout", "30", "--jobs", "1"]
VARIANTS = {
    "envbisect": [],
    "uv-per-trial": ["--installer", "uv-per-trial", *BASELINE_ARGS],
    "naive": ["--installer", "naive", *BASELINE_ARGS],
}
# Targets from the issue, for the headline scenario with a warm cache.
TARGET_VS_NAIVE, TARGET_VS_UV = 10.0, 3.0
TARGET_ENV_S, TARGET_FAILING_S = 0.3, 3.0


@dataclass
class Run:
    wall: float
    rss_mib: float
    report: dict[str, Any]

    @property
    def trials(self) -> list[dict[str, Any]]:
        return [t for t in self.report["trials"] if not t["cached"]]


@dataclass
class Variant:
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    @property
    def wall(self) -> float:
        return self.median([r.wall for r in self.runs])

    def per_trial(self, pick: Any, outcome: str | None = None) -> float:
        values = [
            pick(t)
            for r in self.runs
            for t in r.trials
            if outcome is None or t["outcome"] == outcome
        ]
        return self.median([v for v in values if v is not None])


def build_env(scenario: str) -> Path:
    dest = BUILD / "envs" / scenario
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "fixtures" / "build.py"),
            "env",
            str(HERE / "scenarios" / f"{scenario}.txt"),
            str(dest),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return dest


def run_variant(scenario: str, env: Path, args: list[str], label: str) -> Run:
    report = BUILD / "reports" / f"{label}.json"
    rss = BUILD / "reports" / f"{label}.rss"
    report.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(HERE / "variant.py"),
        str(rss),
        "--",
        "run",
        "--bad",
        str(env),
        "--good",
        str(MINIMAL),
        "--no-cache",
        "--quiet",
        "--cache-dir",
        str(BUILD / "cache"),
        "--json",
        str(report),
        *args,
    ]
    started = time.monotonic()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{label}: exit {done.returncode}\n{done.stderr[-2000:]}")
    data = json.loads(report.read_text())
    return Run(wall, int(rss.read_text()) / 1024, data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    parser.add_argument(
        "--baseline-runs", type=int, default=int(os.environ.get("BENCH_BASELINE_RUNS", "1"))
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    variants = args.variants.split(",")
    started = time.monotonic()
    results: dict[str, dict[str, Variant]] = {}
    for scenario in scenarios:
        env = build_env(scenario)
        print(f"[bench] {scenario}: warm-up", flush=True)
        run_variant(scenario, env, [], f"{scenario}-warmup")
        results[scenario] = {name: Variant(name) for name in variants}
        for n in range(args.runs):
            for name in variants:  # interleaved, so slow drifts hit every variant alike
                baseline = name != "envbisect" and scenario != HEADLINE
                if baseline and n >= args.baseline_runs:
                    continue
                run = run_variant(scenario, env, VARIANTS[name], f"{scenario}-{name}-{n}")
                results[scenario][name].runs.append(run)
                print(
                    f"[bench] {scenario} {name} #{n + 1}: {run.wall:.1f} s, "
                    f"{len(run.trials)} trials",
                    flush=True,
                )
    text = render(results, args, time.monotonic() - started)
    (HERE / "RESULTS.md").write_text(text)
    update_readme(results)
    print(text)
    return 0


def ratio(a: Variant | None, b: Variant | None) -> str:
    if a is None or b is None or not a.runs or not b.runs:
        return "n/a"
    return f"{b.wall / a.wall:.1f}x"


def render(results: dict[str, dict[str, Variant]], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` on {datetime.date.today().isoformat()}: "
        f"{os.cpu_count()} cores, {platform.machine()}, {cpu_model()}, Python "
        f"{platform.python_version()} (envbisect), {tool_versions()}. Medians of {args.runs} runs "
        f"per variant on {HEADLINE}; elsewhere {args.runs} runs of envbisect and "
        f"{args.baseline_runs} of each baseline (the n column); one warm-up per scenario. "
        f"The whole benchmark took {seconds / 60:.0f} min.",
        "",
        "Variants: **envbisect** as shipped (uv, prebuilt envs, parallel sanity probes, "
        "adaptive timeout); **uv-per-trial**: fresh `uv venv` + `uv pip install` per trial, "
        "fixed 30 s timeout; **naive**: fresh `python -m venv` + `pip install --no-index` per "
        "trial, fixed 30 s timeout. Same search, same scenario, same broker, same warm caches.",
        "",
        "Columns: wall = median wall time of the whole run; trials = probed sets (sanity and "
        "confirmation included); env build = median time to build a trial env; env wait = "
        "median time a trial waited for its env (0 when prebuilt); boot = worker start → ready; "
        "consume = ready → actor ran (passing trials); failing trial = median cost of a "
        "failing trial; RSS = peak resident memory of the envbisect process itself.",
        "",
    ]
    for scenario, variants in results.items():
        n_changes = next(iter(variants.values())).runs[0].report["changes"]["total"]
        lines += [f"## {scenario}: {SCENARIOS[scenario]} — {n_changes} changes", ""]
        lines += [
            "| variant | n | wall s (min-max) | trials | env build s | env wait s | boot s | "
            "consume s | failing trial s | RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for variant in variants.values():
            walls = [r.wall for r in variant.runs]
            trials = statistics.median([len(r.trials) for r in variant.runs])
            lines.append(
                f"| {variant.name} | {len(variant.runs)} "
                f"| {variant.wall:.1f} ({min(walls):.1f}-{max(walls):.1f}) "
                f"| {trials:g} "
                f"| {variant.per_trial(lambda t: t['build_seconds']):.2f} "
                f"| {variant.per_trial(lambda t: t['env_seconds']):.2f} "
                f"| {variant.per_trial(lambda t: t['timings'].get('boot')):.2f} "
                f"| {variant.per_trial(lambda t: t['timings'].get('wait'), 'pass'):.3f} "
                f"| {variant.per_trial(lambda t: t['seconds'], 'fail'):.2f} "
                f"| {statistics.median([r.rss_mib for r in variant.runs]):.0f} |"
            )
        eb = variants.get("envbisect")
        lines += [
            "",
            f"envbisect : naive = **1 : {ratio(eb, variants.get('naive'))}** faster; "
            f"envbisect : uv-per-trial = **1 : {ratio(eb, variants.get('uv-per-trial'))}** faster.",
            "",
        ]
    lines += targets(results)
    return "\n".join(lines) + "\n"


def targets(results: dict[str, dict[str, Variant]]) -> list[str]:
    variants = results.get(HEADLINE)
    if not variants or "envbisect" not in variants:
        return []
    eb = variants["envbisect"]
    n = eb.runs[0].report["changes"]["total"]
    trials = max(len(r.trials) for r in eb.runs)
    checks = []
    if "naive" in variants:
        got = variants["naive"].wall / eb.wall
        checks.append(
            (f"≥ {TARGET_VS_NAIVE:g}x faster than naive", f"{got:.1f}x", got >= TARGET_VS_NAIVE)
        )
    if "uv-per-trial" in variants:
        got = variants["uv-per-trial"].wall / eb.wall
        checks.append(
            (f"≥ {TARGET_VS_UV:g}x faster than uv-per-trial", f"{got:.1f}x", got >= TARGET_VS_UV)
        )
    env = eb.per_trial(lambda t: t["build_seconds"])
    checks.append(
        (f"env materialisation ≤ {TARGET_ENV_S} s median", f"{env:.2f} s", env <= TARGET_ENV_S)
    )
    failing = eb.per_trial(lambda t: t["seconds"], "fail")
    checks.append(
        (
            f"a failing (hung) trial ≤ {TARGET_FAILING_S:g} s",
            f"{failing:.2f} s",
            failing <= TARGET_FAILING_S,
        )
    )
    bound = math.ceil(math.log2(n)) + 4
    checks.append((f"trials ≤ ⌈log2 {n}⌉ + 4 = {bound}", str(trials), trials <= bound))
    lines = [
        f"## Targets ({HEADLINE}, warm cache)",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {got} | {'yes' if ok else '**no**'} |" for what, got, ok in checks]
    return [*lines, ""]


def update_readme(results: dict[str, dict[str, Variant]]) -> None:
    variants = results.get(HEADLINE)
    if not variants or not {"envbisect", "naive", "uv-per-trial"} <= set(variants):
        return
    eb = variants["envbisect"]
    n = eb.runs[0].report["changes"]["total"]
    headline = (
        f"On a {os.cpu_count()}-core machine, finding the culprit among {n} changes took "
        f"envbisect **{eb.wall:.1f} s** (median) against {variants['uv-per-trial'].wall:.0f} s "
        f"for a fresh uv env per trial and {variants['naive'].wall:.0f} s for venv + pip per "
        f"trial: **{ratio(eb, variants['naive'])}** and **{ratio(eb, variants['uv-per-trial'])}** "
        f"faster; a trial env takes {eb.per_trial(lambda t: t['build_seconds']):.2f} s to build, "
        f"a hung trial costs {eb.per_trial(lambda t: t['seconds'], 'fail'):.1f} s. "
        "Details: [bench/RESULTS.md](bench/RESULTS.md)."
    )
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:headline -->", "<!-- /bench:headline -->"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        readme.write_text(f"{before}{start}\n{headline}\n{end}{after}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tool_versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("uv", "dramatiq", "pika", "pip"))


if __name__ == "__main__":
    raise SystemExit(main())
