"""Trial outcomes kept across runs, replayed only where nothing that could change them differs.

An outcome is stored under the SHA-256 of everything that can change it (see
:func:`run_context`): the exact distributions (name, version, content digest);
the interpreter (executable, version, implementation, wheel tag, platform, the
whole PEP 508 marker environment); the probe's settings (its kind and command or
module, the broker's kind and server version, the probe module's digest) with
its configured time limits and grace; how many times the set is probed; envbisect's version; and the
values of the environment variables a probe is known to read
(:data:`PROBE_VARIABLES`). Values enter the key only through the hash; an entry
holds the probe's (masked) result and nothing else: not a stuck worker's stacks,
which are one moment of processes long gone.

Time limits decide some results, so a stored result is replayed only when the
current limits would have given it too: a failure that a limit decided (a
worker never ready, a message never consumed, a command cut off) only under the
same or a shorter limit than the one it waited; a pass only when its measured
times fit within the current limits. An entry that cannot be read as such is
ignored (and overwritten by the fresh result).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName

from envbisect import __version__
from envbisect.delta import Package
from envbisect.limits import Limits
from envbisect.masking import scrub
from envbisect.model import Diagnosis, LimitReached, Outcome, ProbeResult
from envbisect.venvs import Interpreter

#: Environment variables whose values a probe is known to read (matched without regard to
#: case): the interpreter's own (``PYTHON*``), Dramatiq's (``dramatiq_*``), gevent's, pika's,
#: and the locale and time zone.
PROBE_VARIABLES = ("PYTHON*", "DRAMATIQ*", "GEVENT*", "PIKA*", "LANG", "LANGUAGE", "LC_*", "TZ")

_FORMAT = 2  #: bumped whenever an entry's meaning changes: older entries are ignored
_STORED = (Outcome.PASS, Outcome.FAIL, Outcome.SKIP)


def probe_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that :data:`PROBE_VARIABLES` names."""
    return {
        name: value
        for name, value in sorted(environ.items())
        if any(fnmatch.fnmatchcase(name.upper(), pattern) for pattern in PROBE_VARIABLES)
    }


def run_context(
    interpreter: Interpreter,
    probe_settings: str,
    limits: Mapping[str, object],
    environ: Mapping[str, str],
) -> dict[str, Any]:
    """What, besides the package set, decides a trial's outcome in this run."""
    return {
        "envbisect": __version__,
        "interpreter": {
            "executable": str(interpreter.executable),
            "version": interpreter.version,
            "tag": interpreter.tag,
            "platform": interpreter.platform,
            "markers": dict(sorted(interpreter.markers.items())),
        },
        "probe": probe_settings,
        "limits": dict(limits),
        "variables": probe_variables(environ),
    }


class OutcomeCache:
    """Outcomes on disk, one JSON file per key, written atomically."""

    def __init__(self, root: Path, context: Mapping[str, Any], *, enabled: bool) -> None:
        self.root = root
        self.enabled = enabled
        self._context = json.dumps(context, sort_keys=True, default=str)

    def key(self, packages: Mapping[NormalizedName, Package], runs: int = 1) -> str:
        """The key of a trial of exactly these distributions, probed ``runs`` times (a
        set passes only if all its runs pass), in this run's context."""
        ident = [f"{p.name}=={p.version}#{p.digest}" for _, p in sorted(packages.items())]
        blob = json.dumps({"context": self._context, "packages": ident, "runs": runs})
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str, limits: Limits) -> ProbeResult | None:
        """The stored result, if there is a well-formed one that these limits would give too."""
        if not self.enabled:
            return None
        try:
            data = json.loads((self.root / f"{key}.json").read_text())
            result = _result(data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return result if _would_repeat(result, limits) else None

    def put(self, key: str, result: ProbeResult) -> None:
        """Store a pass, fail or skip (best effort: a full disk must not cost the verdict)."""
        if not self.enabled or result.outcome not in _STORED:
            return
        # Stacks are a moment of processes long gone, not a property of the package set;
        # a replayed result is never the evidence (the confirmation probes afresh).
        # An output file like any report: no credential, whatever the result holds.
        data = scrub(asdict(result) | {"format": _FORMAT})
        del data["stacks"]
        tmp = self.root / f".{key}.{secrets.token_hex(3)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, default=str))
            tmp.replace(self.root / f"{key}.json")
        except OSError:
            tmp.unlink(missing_ok=True)


def _result(data: Any) -> ProbeResult:
    """A stored entry read back; any deviation from the format raises."""
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("not an entry of this format")
    outcome = Outcome(data["outcome"])
    if outcome not in _STORED:
        raise ValueError(f"outcome {outcome} is never stored")
    timings = data["timings"]
    evidence = data["evidence"]
    exit_status = data["exit_status"]
    if not (
        isinstance(data["detail"], str)
        and isinstance(evidence, list)
        and all(isinstance(line, str) for line in evidence)
        and isinstance(timings, dict)
        and all(isinstance(k, str) and _number(v) for k, v in timings.items())
        and (exit_status is None or isinstance(exit_status, int))
        and (data["setup_error"] is None or isinstance(data["setup_error"], str))
    ):
        raise TypeError("a field of the wrong type")
    reached = data["limit_reached"]
    return ProbeResult(
        outcome=outcome,
        diagnosis=Diagnosis(data["diagnosis"]),
        detail=data["detail"],
        evidence=tuple(evidence),
        timings={k: float(v) for k, v in timings.items()},
        exit_status=exit_status,
        setup_error=data["setup_error"],
        limit_reached=None if reached is None else _limit(reached),
    )


def _limit(data: Any) -> LimitReached:
    if not (isinstance(data, dict) and data["limit"] in _LIMITS and _number(data["waited"])):
        raise TypeError("not a time limit")
    return LimitReached(data["limit"], float(data["waited"]))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_LIMITS = ("boot", "consume", "command")


def _would_repeat(result: ProbeResult, limits: Limits) -> bool:
    """Whether a probe run under ``limits`` would have given ``result`` as well."""
    reached = result.limit_reached
    if reached is not None:
        # It waited this long and saw nothing: under a limit no longer, it sees nothing either.
        return float(getattr(limits, reached.limit)) <= reached.waited
    if result.outcome is not Outcome.PASS:
        return True  # decided by an event (an exit, a traceback), not by a limit
    boot, wait = result.timings.get("boot", 0.0), result.timings.get("wait", 0.0)
    if result.diagnosis is Diagnosis.CONSUMED:
        return boot <= limits.boot and wait <= limits.consume
    return boot + wait <= limits.command
