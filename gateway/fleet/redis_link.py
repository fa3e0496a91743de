"""The link to the fleet's Redis: useful when it is there, never in the way when it is not.

Replicas share verdicts, replica counts and idempotency records through Redis, but Redis is
an optional helper, not a dependency of a request: a request must never be slowed or failed
because Redis is down, slow or answering nonsense. So every call goes through
:meth:`RedisLink.call`, which

* gives the call a short time-out (``REDIS_TIMEOUT_SECONDS``, 50 ms by default: Redis
  answers in well under a millisecond on a healthy network) and never retries inside it;
* turns any failure into the caller's *fallback* value (local-only behaviour), never an
  exception;
* after a failure that says the link is broken (connection refused or lost, time-out,
  protocol nonsense), marks the link *down*: from then on calls return their fallback at
  once, without touching the network, until a background task's ``PING`` succeeds again
  (retried with capped, jittered backoff);
* logs each transition once (``redis_down``, ``redis_up``), counts failed calls in
  ``exact_gateway_redis_errors_total{operation}``, shows ``exact_gateway_redis_up`` and
  reports itself in :meth:`status` for the admin port.

An error *reply* (``WRONGTYPE``, an unknown command) is one call's failure: the server is
answering, so the link stays up. Subscriptions run in their own tasks (:meth:`subscribe`),
resubscribing after every reconnection.

The URL may hold a password: only its redacted form (scheme, host, port, database) is logged
or shown, and exceptions are logged by type only (their messages can quote the address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.fleet.redis_url import redacted

log = logging.getLogger("gateway.fleet.redis")

T = TypeVar("T")

# Failures that say the link itself is broken, as opposed to one command refused.
_LINK_FAILURES: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    InvalidResponse,
    TimeoutError,
    OSError,
    EOFError,
)


class Operation(StrEnum):
    """What a call was for: the ``operation`` label of the error counter (a closed set)."""

    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    VERDICT_PUBLISH = "verdict_publish"
    VERDICT_READ = "verdict_read"
    HEARTBEAT = "heartbeat"
    IDEMPOTENCY_CLAIM = "idempotency_claim"
    IDEMPOTENCY_UPDATE = "idempotency_update"
    FAILURE_COUNT = "failure_count"
    PAUSES = "pauses"


class LinkState(StrEnum):
    CONNECTING = "connecting"  # started, no answer yet
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    timeout: float = 0.05  # each call, and each connect
    reconnect_base: float = 0.1  # first wait before a reconnect PING
    reconnect_max: float = 5.0  # longest wait between reconnect PINGs
    max_connections: int = 16  # pool size; callers wait (within their time-out) beyond it
    subscriber_poll: float = 1.0  # how often a subscriber checks that the link is still up


@dataclass(frozen=True, slots=True)
class RedisMetrics:
    up: Gauge
    errors: Counter


def build_redis_metrics(registry: CollectorRegistry) -> RedisMetrics:
    """The link's metric families, in the registry the app owns (never the global one)."""
    up = Gauge(
        "redis_up",
        "1 while the link to the fleet's Redis works, 0 while the gateway runs local-only.",
        namespace="exact_gateway",
        registry=registry,
    )
    errors = Counter(
        "redis_errors",
        "Redis calls that failed or timed out and fell back to local-only behaviour.",
        ["operation"],
        namespace="exact_gateway",
        registry=registry,
    )
    for operation in Operation:
        errors.labels(operation.value)  # every series exists from the start, at 0
    return RedisMetrics(up, errors)


class RedisLink:
    """One gateway's connection pool to Redis, with the fall-back rules above."""

    def __init__(
        self,
        url: str,
        *,
        registry: CollectorRegistry,
        policy: LinkPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy or LinkPolicy()
        self._url = url
        self._shown_url = redacted(url)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrecy)
        self._metrics = build_redis_metrics(registry)
        timeout = self.policy.timeout
        # No retries inside a call (redis-py retries three times by default): the link's
        # own reconnect loop is the only retry, so a call costs at most one time-out.
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=self.policy.max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            # RESP2 on every redis-py version (8.x defaults to RESP3 and then asks for
            # maintenance notifications on each new connection: a round trip for nothing).
            protocol=2,
        )
        self.client: Redis = Redis(connection_pool=self._pool, retry=Retry(NoBackoff(), 0))
        self._state = LinkState.CONNECTING
        self._since = clock()
        self._last_error: str | None = None
        self._failures = 0  # reconnect PINGs failed in a row
        self._next_attempt: float | None = None
        self._up_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; returns at once (Redis may be away)."""
        self._metrics.up.set(0)
        self._tasks.append(asyncio.create_task(self._keep_connected(), name="redis-link"))

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.client.aclose()
        with contextlib.suppress(Exception):
            await self._pool.disconnect()

    # -- calls ------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._state is LinkState.UP

    @property
    def state(self) -> LinkState:
        return self._state

    async def call(
        self, operation: Operation, command: Callable[[Redis], Awaitable[T]], fallback: T
    ) -> T:
        """``command(client)`` within the time-out, or ``fallback``; never raises (but
        cancellation of the caller passes through)."""
        if self._state is not LinkState.UP or self._closed:
            return fallback
        try:
            async with asyncio.timeout(self.policy.timeout):
                return await command(self.client)
        except _LINK_FAILURES as exc:
            self._link_failed(operation, exc)
        except Exception as exc:  # noqa: BLE001 (an error reply or a bad value: fall back)
            self._metrics.errors.labels(operation.value).inc()
            self._last_error = type(exc).__name__
        return fallback

    def failed(self, operation: Operation, exc: BaseException) -> None:
        """A failure seen outside :meth:`call` (a subscriber's connection): same rules."""
        if isinstance(exc, _LINK_FAILURES):
            self._link_failed(operation, exc)
        else:
            self._metrics.errors.labels(operation.value).inc()
            self._last_error = type(exc).__name__

    async def wait_up(self) -> None:
        await self._up_event.wait()

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Deliver every message on ``channel`` to ``on_message`` while the link is up;
        ``on_subscribed`` runs after each (re)subscription, to catch up on what was missed."""
        task = asyncio.create_task(
            self._subscriber(channel, on_message, on_subscribed), name="redis-subscriber"
        )
        self._tasks.append(task)

    async def _subscriber(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], Awaitable[None]] | None,
    ) -> None:
        while not self._closed:
            await self.wait_up()
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.policy.timeout):
                    await pubsub.subscribe(channel)
                if on_subscribed is not None:
                    await on_subscribed()
                # A frozen server never closes the socket: leave when the link's other
                # calls have marked it down, and subscribe again once it is back.
                while self.up:
                    message = await pubsub.get_message(timeout=self.policy.subscriber_poll)
                    if message is not None and message.get("type") == "message":
                        data = message.get("data")
                        if isinstance(data, bytes):
                            on_message(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (any failure: resubscribe after reconnect)
                self.failed(Operation.SUBSCRIBE, exc)
                if self.up:  # an error reply: do not spin
                    await asyncio.sleep(self.policy.subscriber_poll)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.reset(), self.policy.timeout)

    # -- state ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """JSON-ready facts for ``/status``: never the password, never an error message."""
        now = self._clock()
        return {
            "url": self._shown_url,
            "state": self._state.value,
            "since_seconds": round(now - self._since, 3),
            "timeout_seconds": self.policy.timeout,
            "last_error": self._last_error,
            "next_attempt_seconds": None
            if self._next_attempt is None or self._state is LinkState.UP
            else round(max(0.0, self._next_attempt - now), 3),
        }

    def _link_failed(self, operation: Operation, exc: BaseException) -> None:
        self._metrics.errors.labels(operation.value).inc()
        self._last_error = type(exc).__name__
        if self._state is LinkState.DOWN:
            return
        previous, self._state, self._since = self._state, LinkState.DOWN, self._clock()
        self._up_event.clear()
        self._metrics.up.set(0)
        log.warning(
            "redis_down",
            extra={
                "fields": {
                    "event": "redis_down",
                    "url": self._shown_url,
                    "operation": operation.value,
                    "error": self._last_error,
                    "was": previous.value,
                }
            },
        )
        self._wake.set()

    def _link_up(self) -> None:
        self._failures = 0
        self._next_attempt = None
        if self._state is LinkState.UP:
            return
        down_for = self._clock() - self._since
        self._state, self._since = LinkState.UP, self._clock()
        self._metrics.up.set(1)
        self._up_event.set()
        log.info(
            "redis_up",
            extra={
                "fields": {
                    "event": "redis_up",
                    "url": self._shown_url,
                    "after_seconds": round(down_for, 3),
                }
            },
        )

    async def _keep_connected(self) -> None:
        """PING until it answers; then sleep until a call reports the link broken."""
        while not self._closed:
            if self._state is LinkState.UP:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Fresh connections after a failure: pooled ones may point at a dead server.
            with contextlib.suppress(Exception):
                await self._pool.disconnect()
            try:
                async with asyncio.timeout(self.policy.timeout):
                    await self._ping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (any failure: try again later)
                # Whatever the cause (refused, time-out, a password refused), no PONG means
                # the link is not usable: down, and logged once if it was not already.
                self._link_failed(Operation.CONNECT, exc)
                self._failures += 1
                nominal = min(
                    self.policy.reconnect_max,
                    self.policy.reconnect_base * 2.0 ** min(self._failures - 1, 30),
                )
                # Equal jitter: never zero, and replicas that lost Redis together spread out.
                delay = nominal / 2 + self._rng.random() * nominal / 2
                self._next_attempt = self._clock() + delay
                await asyncio.sleep(delay)
                continue
            self._link_up()

    async def _ping(self) -> None:
        if await self.client.ping() is not True:
            raise InvalidResponse("PING did not answer PONG")
