"""Redis as the probe's broker, with dramatiq's RedisBroker key layout."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from envbisect.brokers.base import TIMEOUT, BrokerClient, QueueState, message
from envbisect.errors import BrokerError

if TYPE_CHECKING:
    from redis import Redis

T = TypeVar("T")

_NAMESPACE = "dramatiq"


class RedisClient(BrokerClient):
    """Redis: messages in ``dramatiq:<queue>`` (ids) and ``…msgs`` (bodies)."""

    def _client(self) -> Redis:
        import redis

        return redis.Redis.from_url(
            self.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )

    def _call(self, what: str, action: Callable[[], T]) -> T:
        import redis

        try:
            return action()
        except redis.AuthenticationError as exc:
            raise BrokerError(f"Redis at {self.masked} refused the credentials") from exc
        except (redis.RedisError, OSError) as exc:
            raise BrokerError(f"cannot {what} Redis at {self.masked}: {exc}") from exc

    def check(self) -> None:
        client = self._client()
        info = self._call("reach", lambda: client.info("server"))
        version = info.get("redis_version", "unknown") if isinstance(info, dict) else "unknown"
        self.server = f"Redis {version}"

    def send(
        self,
        queue: str,
        actor: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        message_id: str,
    ) -> None:
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=self.url, middleware=[], socket_timeout=TIMEOUT)  # type: ignore[no-untyped-call]
        try:
            broker.declare_queue(queue)
            probe = message(queue, actor, args, kwargs, message_id)
            self._call("send to", lambda: broker.enqueue(probe))
            # Enqueueing registered the sender as a "worker" (a heartbeat): unregister it.
            client = self._client()
            self._call(
                "clean up",
                lambda: client.zrem(f"{_NAMESPACE}:__heartbeats__", broker.broker_id),
            )
        finally:
            with contextlib.suppress(Exception):
                broker.close()

    def state(self, queue: str) -> QueueState | None:
        client = self._client()
        try:
            ready = int(self._call("read", lambda: client.llen(f"{_NAMESPACE}:{queue}")))
            ack_keys = self._ack_keys(client, queue)
            unacked = sum(int(self._call("read", partial(client.scard, key))) for key in ack_keys)
        except BrokerError:
            return None
        return QueueState(ready=ready, consumers=-1, unacked=unacked)

    def delete_once(self, queue: str, *, worker_id: str | None = None) -> int:
        client = self._client()
        if worker_id is not None:
            # A killed worker could not remove its own heartbeat.
            self._call(
                "clean up",
                lambda: client.zrem(f"{_NAMESPACE}:__heartbeats__", worker_id),
            )
        keys = [
            f"{_NAMESPACE}:{queue}{suffix}"
            for suffix in ("", ".msgs", ".DQ", ".DQ.msgs", ".XQ", ".XQ.msgs")
        ]
        # A queue is a list of message ids plus a hash of the messages: either counts.
        removed = sum(
            bool(self._call("read", partial(client.exists, key, f"{key}.msgs")))
            for key in keys[::2]
        )
        keys += self._ack_keys(client, queue)
        self._call("clean up", lambda: client.delete(*keys))
        return removed

    def _ack_keys(self, client: Redis, queue: str) -> list[str]:
        pattern = f"{_NAMESPACE}:__acks__.*.{queue}"
        found = self._call("read", lambda: list(client.scan_iter(match=pattern)))
        return [key.decode() if isinstance(key, bytes) else str(key) for key in found]
