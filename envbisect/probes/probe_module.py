"""The module a trial env's Dramatiq worker loads, as ``envbisect_probe``.

This file runs *inside the trial environment*, never in envbisect's process;
envbisect copies it into a private directory on the worker's PYTHONPATH. It
imports nothing but the standard library and the env's own dramatiq, so it
works with any dramatiq from 1.x on. It reports to envbisect over a Unix
datagram socket: ``ready`` when a worker has booted, ``ran`` (with
``sys.prefix``, and the actor's exception if it raised) when the probe
message was processed, ``error`` when the probe cannot be set up.

Where py-spy may not read a stuck worker (ptrace refused), envbisect falls
back on this module: at import it registers :mod:`faulthandler` on SIGUSR2,
writing every thread's stack to ``stacks-<pid>.txt`` in the directory
``ENVBISECT_PROBE_STACKS`` names (the file appears only once the handler is in
place, so envbisect never signals a process that SIGUSR2 would kill), and it
records the names of the process's threads in ``threads-<pid>.json`` (at
import and when the worker has booted): faulthandler prints thread ids only.

Two ways to run:

- ``python -m dramatiq envbisect_probe``: the built-in probe. It makes the
  broker (RabbitMQ or Redis, from the URL) and declares one actor on a queue
  unique to this probe run.
- ``python -m dramatiq USER.WORKER.MODULE envbisect_probe --queues Q``: the
  user's own worker. Imported after the user's module, it finds the user's
  broker and actor, moves that actor to the unique queue Q (so the worker
  consumes nothing else from a shared broker) and watches for the probe
  message by its id.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
import threading

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, default_middleware

# "@name" is a socket in Linux's abstract namespace: "\0name" to the kernel.
_SOCKET = os.environ["ENVBISECT_PROBE_SOCKET"]
if _SOCKET.startswith("@"):
    _SOCKET = "\0" + _SOCKET[1:]
_QUEUE = os.environ["ENVBISECT_PROBE_QUEUE"]
_URL = os.environ["ENVBISECT_BROKER_URL"]
_ASYNC = os.environ.get("ENVBISECT_PROBE_ASYNC") == "1"
_USER_ACTOR = os.environ.get("ENVBISECT_PROBE_ACTOR")  # set: probe the user's worker module
_MESSAGE_ID = os.environ.get("ENVBISECT_PROBE_MESSAGE_ID", "")
_BUILTIN_ACTOR = "envbisect_probe"
_STACKS_DIR = os.environ.get("ENVBISECT_PROBE_STACKS", "")
_stack_file = None  # kept open: faulthandler writes to its descriptor from the signal handler


def _emit(event: str, **fields: object) -> None:
    fields.update(event=event, pid=os.getpid())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.sendto(json.dumps(fields).encode(), _SOCKET)
    except OSError:
        pass  # envbisect went away; nothing useful to do from here
    finally:
        sock.close()


def _register_stack_dump() -> None:
    """Dump every thread's stack on SIGUSR2, unless the worker has a use for SIGUSR2."""
    global _stack_file
    if not _STACKS_DIR or not hasattr(signal, "SIGUSR2"):
        return
    if signal.getsignal(signal.SIGUSR2) not in (signal.SIG_DFL, None):
        return  # taken: replacing the worker's own handler would change what is probed
    final = os.path.join(_STACKS_DIR, f"stacks-{os.getpid()}.txt")
    partial = final + ".partial"
    try:
        _stack_file = open(partial, "a")  # noqa: SIM115 - open for the life of the process
        faulthandler.register(signal.SIGUSR2, file=_stack_file, all_threads=True, chain=False)
        # Only now may envbisect see it: SIGUSR2 would kill a process without the handler.
        os.rename(partial, final)
    except (OSError, RuntimeError, ValueError):
        _stack_file = None
    _record_thread_names()


def _record_thread_names() -> None:
    """Thread id -> name, for the faulthandler dump (which has ids only)."""
    if _stack_file is None:
        return
    names = {str(t.ident): t.name for t in threading.enumerate() if t.ident is not None}
    path = os.path.join(_STACKS_DIR, f"threads-{os.getpid()}.json")
    try:
        with open(path + ".partial", "w") as handle:
            json.dump(names, handle)
        os.replace(path + ".partial", path)
    except OSError:
        pass


class _Ready(Middleware):
    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        _record_thread_names()  # the worker's consumer and worker threads exist now
        _emit("ready", broker_id=getattr(broker, "broker_id", None))


class _Outcome(Middleware):
    """Reports when the user's actor has processed the probe message."""

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if message.message_id == _MESSAGE_ID:
            error = None if exception is None else f"{type(exception).__name__}: {exception}"
            _emit("ran", token=_MESSAGE_ID, prefix=sys.prefix, error=error)


def _ran(token: str) -> None:
    _emit("ran", token=token, prefix=sys.prefix, error=None)


def _builtin_broker() -> dramatiq.Broker:
    # Prometheus (on by default in dramatiq 1.x when prometheus_client is installed)
    # binds a fixed port, which parallel trials would fight over.
    middleware = [m() for m in default_middleware if m.__name__ != "Prometheus"]
    if _URL.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=_URL, middleware=middleware)  # type: ignore[no-untyped-call]
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=_URL, middleware=middleware)


def _adopt_user_actor(broker: dramatiq.Broker, name: str) -> None:
    declared = sorted(a for a in broker.get_declared_actors() if a != _BUILTIN_ACTOR)
    if not name:
        if len(declared) != 1:
            _fail(
                f"the worker module declares {len(declared)} actors; choose one with --actor: "
                + ", ".join(declared)
            )
        name = declared[0]
    if name not in declared:
        _fail(
            f"actor {name!r} is not declared by the worker module (declared: "
            + (", ".join(declared) or "none")
            + ")"
        )
    actor = broker.get_actor(name)
    actor.queue_name = _QUEUE
    broker.declare_queue(_QUEUE)
    broker.add_middleware(_Outcome())
    _emit("adopted", actor=name, broker=type(broker).__name__)


def _fail(message: str) -> None:
    _emit("error", message=message)
    sys.stderr.write(f"envbisect probe: {message}\n")
    sys.stderr.flush()
    os._exit(2)


_register_stack_dump()

if _USER_ACTOR is not None:
    broker = dramatiq.get_broker()
    broker.add_middleware(_Ready())
    _adopt_user_actor(broker, _USER_ACTOR)
else:
    broker = _builtin_broker()
    broker.add_middleware(_Ready())
    if _ASYNC:
        from dramatiq.middleware.asyncio import AsyncIO

        broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)

    if _ASYNC:

        @dramatiq.actor(actor_name=_BUILTIN_ACTOR, queue_name=_QUEUE, max_retries=0)
        async def envbisect_probe(token: str) -> None:
            _ran(token)

    else:

        @dramatiq.actor(actor_name=_BUILTIN_ACTOR, queue_name=_QUEUE, max_retries=0)
        def envbisect_probe(token: str) -> None:
            _ran(token)
