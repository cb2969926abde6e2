"""envbisect's own side of the broker: check it, send the probe message, read
queue state, delete the probe's queues.

Messages are declared and sent with dramatiq's own broker classes, so the
queues carry exactly the arguments the worker's dramatiq declares. Every
connection has short socket/handshake timeouts: a broker that accepts the TCP
connection and then never answers must not hang envbisect.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envbisect.errors import BrokerError, BrokerUnreachable, InputError
from envbisect.masking import mask

if TYPE_CHECKING:
    from dramatiq import Message

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
_TIMEOUT = 5  # seconds: connect, handshake, and any single call
#: Seconds queue deletion keeps trying while the broker is away (a restart, a blip).
DELETE_PATIENCE = 20.0

# pika and dramatiq log every refused connection at ERROR; we report it ourselves.
for _noisy in ("pika", "dramatiq"):
    logging.getLogger(_noisy).setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class QueueState:
    """What the broker says about the probe queue, read while the worker is alive."""

    ready: int  #: messages waiting for a consumer
    consumers: int  #: consumers registered on the queue (-1 when the broker cannot tell)
    unacked: int = -1  #: delivered, not acknowledged (-1 when the broker cannot tell)


class BrokerClient(ABC):
    """The operations envbisect needs on a broker, whatever its kind."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: The server's kind and version, e.g. ``RabbitMQ 3.12.1`` (known after :meth:`check`).
        self.server = ""

    @property
    def masked(self) -> str:
        return mask(self.url)

    @abstractmethod
    def check(self) -> None:
        """Connect once and learn :attr:`server`; raise :class:`BrokerError` with one clear
        line if we cannot."""

    @abstractmethod
    def send(
        self,
        queue: str,
        actor: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        message_id: str,
    ) -> None:
        """Declare ``queue`` (and its delay/dead-letter queues) and enqueue one message."""

    @abstractmethod
    def state(self, queue: str) -> QueueState | None:
        """The queue's state, or None when it does not exist or cannot be read."""

    @abstractmethod
    def delete_once(self, queue: str, *, worker_id: str | None = None) -> int:
        """Delete the queue and everything dramatiq made for it (and for that worker);
        how many of the queue, its ``.DQ`` and its ``.XQ`` there were."""

    def delete(
        self, queue: str, *, worker_id: str | None = None, patience: float = DELETE_PATIENCE
    ) -> int:
        """:meth:`delete_once`, tried again while the broker is away, for up to ``patience`` s.

        A broker restarting, or a network blip, must not leave the probe's queues behind;
        deletion mostly runs after the verdict, off the critical path, so it can wait.
        """
        deadline = time.monotonic() + patience
        pause = 0.25
        while True:
            try:
                return self.delete_once(queue, worker_id=worker_id)
            except BrokerError:
                if time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


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
        return RabbitClient(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        from envbisect.broker_redis import RedisClient

        return RedisClient(url)
    raise InputError(
        f"--broker-url {mask(url)}: unsupported scheme {parts.scheme!r} (amqp://, redis://)"
    )


def message(
    queue: str, actor: str, args: Sequence[Any], kwargs: Mapping[str, Any], message_id: str
) -> Message[Any]:
    """A dramatiq message for ``actor`` on ``queue``, with a known id."""
    from dramatiq import Message

    return Message(
        queue_name=queue,
        actor_name=actor,
        args=tuple(args),
        kwargs=dict(kwargs),
        options={},
        message_id=message_id,
    )


class RabbitClient(BrokerClient):
    """RabbitMQ over AMQP 0-9-1 (pika), with dramatiq's queue layout."""

    def _url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        for key in ("socket_timeout", "stack_timeout", "blocked_connection_timeout"):
            query.setdefault(key, str(_TIMEOUT))
        query.setdefault("connection_attempts", "1")
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    @contextlib.contextmanager
    def _channel(self) -> Iterator[object]:
        import pika
        import pika.exceptions
        from pika.adapters.utils.connection_workflow import AMQPConnectorException

        try:
            connection = pika.BlockingConnection(pika.URLParameters(self._url()))
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise BrokerError(f"RabbitMQ at {self.masked} refused the credentials") from exc
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise BrokerError(f"RabbitMQ at {self.masked} denied access to the vhost") from exc
        # A peer that accepts the connection and never answers ends in a connector
        # (handshake) timeout, which is not an AMQPError.
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as exc:
            reason = _reason(exc)
            error = BrokerUnreachable if reason == "connection refused" else BrokerError
            raise error(
                f"cannot reach RabbitMQ at {self.masked}: {reason} (start it, e.g. "
                "`rabbitmq-server -detached`, or point --broker-url / ENVBISECT_BROKER_URL at one)"
            ) from exc
        try:
            try:
                channel = connection.channel()
            except (pika.exceptions.AMQPError, OSError) as exc:
                raise BrokerError(f"lost RabbitMQ at {self.masked}: {_reason(exc)}") from exc
            yield channel
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def check(self) -> None:
        with self._channel() as channel:
            # pika keeps the server's properties on the connection's implementation only.
            impl = getattr(channel.connection, "_impl", None)  # type: ignore[attr-defined]
            properties = getattr(impl, "server_properties", None) or {}
        version = properties.get("version", b"unknown")
        product = properties.get("product", b"RabbitMQ")
        self.server = f"{_text(product)} {_text(version)}"

    def send(
        self,
        queue: str,
        actor: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        message_id: str,
    ) -> None:
        import pika.exceptions
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
        from pika.adapters.utils.connection_workflow import AMQPConnectorException

        broker = RabbitmqBroker(url=self._url(), middleware=[])
        try:
            broker.declare_queue(queue)
            broker.enqueue(message(queue, actor, args, kwargs, message_id))
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as exc:
            raise BrokerError(f"cannot send to RabbitMQ at {self.masked}: {_reason(exc)}") from exc
        finally:
            with contextlib.suppress(Exception):
                broker.close()

    def state(self, queue: str) -> QueueState | None:
        import pika.exceptions

        try:
            with self._channel() as channel:
                frame = channel.queue_declare(queue, passive=True)  # type: ignore[attr-defined]
        except (pika.exceptions.AMQPError, BrokerError, OSError):
            return None
        return QueueState(ready=frame.method.message_count, consumers=frame.method.consumer_count)

    def delete_once(self, queue: str, *, worker_id: str | None = None) -> int:
        import pika.exceptions

        removed = 0
        try:
            with self._channel() as channel:
                for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                    try:
                        # Passive first: AMQP's delete does not say whether it existed.
                        channel.queue_declare(name, passive=True)  # type: ignore[attr-defined]
                        channel.queue_delete(name)  # type: ignore[attr-defined]
                        removed += 1
                    except pika.exceptions.ChannelClosedByBroker:
                        channel = _reopen(channel)  # no such queue (404)
        # The connection lost half-way (a broker restart): the caller tries again.
        except (pika.exceptions.AMQPConnectionError, OSError) as exc:
            raise BrokerError(
                f"lost RabbitMQ at {self.masked} while deleting {queue}: {_reason(exc)}"
            ) from exc
        return removed


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _reopen(channel: object) -> object:
    return channel.connection.channel()  # type: ignore[attr-defined]


def _reason(exc: BaseException) -> str:
    # pika's AMQPConnectionError has an empty str(); its repr names the cause.
    text = str(exc).strip() or repr(exc)
    if "ConnectionRefused" in text or "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower() or "Timeout" in text:
        return "no answer (timed out)"
    return " ".join(text.split())[:200]
