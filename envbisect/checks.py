"""The options checked before anything runs, and the probe they ask for.

Every option that cannot be used, or is silently meaningless with the others
(``--cwd`` without ``--probe-cmd``, ``--actor`` without ``--worker-module``…),
is one clear line (exit 2) here, before a broker is reached or an env built.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from envbisect.brokers import connect
from envbisect.brokers.base import DEFAULT_URL
from envbisect.brokers.private import PROGRAMS, Mode
from envbisect.errors import InputError
from envbisect.options import Options
from envbisect.probes.base import Probe
from envbisect.probes.command import CommandProbe, import_probe
from envbisect.probes.consume import ConsumeProbe, UserWorker


def checked(options: Options) -> tuple[Options, Probe]:
    """The options made ready to run (directories made and resolved, the private-broker
    mode decided), and the probe; :class:`InputError` for options that cannot be used."""
    if options.flaky and options.repeat > 1:
        raise InputError("--flaky chooses how often to probe each set: drop --repeat")
    worker = _user_worker(options.worker_module, options.actor, options.args)
    private = "--private-broker" if options.private_broker else None
    if options.private_broker_kind is not None:
        private = private or "--private-broker-kind"
    probe = _probe(
        options.probe, options.probe_cmd, options.cwd, options.broker_url, worker, private
    )
    mode = _private_mode(options.private_broker, options.private_broker_kind, options.broker_url)
    ready = replace(
        options,
        cache_dir=_writable("--cache-dir", options.cache_dir),
        outcome_cache=(
            None
            if options.outcome_cache is None or options.no_cache
            else _writable("--outcome-cache", options.outcome_cache)
        ),
        find_links=_directories(options.find_links),
        # The user's worker module connects to the broker it names, never to ours.
        private_mode=Mode.OFF if worker is not None else mode,
    )
    return ready, probe


def _directories(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    for path in paths:
        if not path.is_dir():
            raise InputError(f"--find-links {path}: not a directory")
    return tuple(path.resolve() for path in paths)


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
