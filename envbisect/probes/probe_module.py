"""The module a trial env's Dramatiq worker loads: ``python -m dramatiq envbisect_probe``.

This file runs *inside the trial environment*, never in envbisect's process;
envbisect copies it into a private directory on the worker's PYTHONPATH as
``envbisect_probe``. It imports nothing but the standard library and the
env's own dramatiq, so it works with any dramatiq from 1.x on.

It declares one actor on a queue unique to this probe run and reports to
envbisect over a Unix datagram socket: ``ready`` when a worker has booted,
``ran`` (with ``sys.prefix``) when the actor ran. The evidence comes from the
worker side, not from the sender.
"""

import json
import os
import socket
import sys

import dramatiq
from dramatiq.middleware import Middleware, default_middleware

# "@name" is a socket in Linux's abstract namespace: "\0name" to the kernel.
_SOCKET = os.environ["ENVBISECT_PROBE_SOCKET"]
if _SOCKET.startswith("@"):
    _SOCKET = "\0" + _SOCKET[1:]
_QUEUE = os.environ["ENVBISECT_PROBE_QUEUE"]
_URL = os.environ["ENVBISECT_BROKER_URL"]
_ASYNC = os.environ.get("ENVBISECT_PROBE_ASYNC") == "1"


def _emit(event: str, **fields: object) -> None:
    fields.update(event=event, pid=os.getpid())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.sendto(json.dumps(fields).encode(), _SOCKET)
    except OSError:
        pass  # envbisect went away; nothing useful to do from here
    finally:
        sock.close()


class _Ready(Middleware):
    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        _emit("ready")


# Prometheus (on by default in dramatiq 1.x when prometheus_client is installed)
# binds a fixed port, which parallel trials would fight over.
_middleware = [m() for m in default_middleware if m.__name__ != "Prometheus"]
broker: dramatiq.Broker
if _URL.startswith(("redis://", "rediss://", "unix://")):
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=_URL, middleware=_middleware)  # type: ignore[no-untyped-call]
else:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=_URL, middleware=_middleware)
broker.add_middleware(_Ready())
if _ASYNC:
    from dramatiq.middleware.asyncio import AsyncIO

    broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)
_emit("imported", python=sys.executable)


def _ran(token: str) -> None:
    _emit("ran", token=token, prefix=sys.prefix)


if _ASYNC:

    @dramatiq.actor(actor_name="envbisect_probe", queue_name=_QUEUE, max_retries=0)
    async def envbisect_probe(token: str) -> None:
        _ran(token)

else:

    @dramatiq.actor(actor_name="envbisect_probe", queue_name=_QUEUE, max_retries=0)
    def envbisect_probe(token: str) -> None:
        _ran(token)
