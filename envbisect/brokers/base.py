"""What envbisect needs of a broker, whatever its kind: the client interface and its data.

Every connection has short socket/handshake timeouts (:data:`TIMEOUT`): a broker
that accepts the TCP connection and then never answers must not hang envbisect.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envbisect.errors import BrokerError
from envbisect.masking import mask

if TYPE_CHECKING:
    from dramatiq import Message

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
TIMEOUT = 5  # seconds: connect, handshake, and any single call
#: Seconds queue deletion keeps trying while the broker is away (a restart, a blip).
DELETE_PATIENCE = 20.0
#: Loggers quietened once a client exists (never at import: envbisect as a library).
NOISY_LOGGERS = ("pika", "dramatiq")


@dataclass(frozen=True)
class QueueState:
    """What the broker says about the probe queue, read while the worker is alive."""

    ready: int  #: messages waiting for a consumer
    consumers: int  #: consumers registered on the queue (-1 when the broker cannot tell)
    unacked: int = -1  #: delivered, not acknowledged (-1 when the broker cannot tell)


class BrokerClient(ABC):
    """The operations envbisect needs on a broker, whatever its kind."""

    def __init__(self, url: str) -> None:
        # pika and dramatiq log every refused connection at ERROR; envbisect says it itself.
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
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
