"""envbisect's own side of the broker: check it, send the probe message, read queue
state, delete the probe's queues (RabbitMQ or Redis), and a private broker when none runs.

Messages are declared and sent with dramatiq's own broker classes, so the queues
carry exactly the arguments the worker's dramatiq declares.
"""

from __future__ import annotations

import urllib.parse

from envbisect.brokers.base import BrokerClient
from envbisect.errors import InputError
from envbisect.masking import mask


def connect(url: str) -> BrokerClient:
    """The client for this URL's scheme; a URL that cannot be one is bad input."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise InputError(f"--broker-url {mask(url)}: not a valid URL ({exc})") from exc
    if parts.scheme in ("amqp", "amqps"):
        if parts.username is not None and parts.password is None:
            # pika (here and in the worker) cannot take a lone user name or token.
            raise InputError(
                f"--broker-url {mask(url)}: a user without a password (amqp://user:password@host/)"
            )
        from envbisect.brokers.rabbitmq import RabbitClient

        return RabbitClient(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        from envbisect.brokers.redis import RedisClient

        return RedisClient(url)
    raise InputError(
        f"--broker-url {mask(url)}: unsupported scheme {parts.scheme!r} (amqp://, redis://)"
    )
