"""RabbitMQ as the probe's broker (AMQP 0-9-1 with pika), with dramatiq's queue layout."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from envbisect.brokers.base import TIMEOUT, BrokerClient, QueueState, message
from envbisect.errors import BrokerError, BrokerUnreachable


class RabbitClient(BrokerClient):
    """RabbitMQ over AMQP 0-9-1 (pika), with dramatiq's queue layout."""

    def _url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        for key in ("socket_timeout", "stack_timeout", "blocked_connection_timeout"):
            query.setdefault(key, str(TIMEOUT))
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
