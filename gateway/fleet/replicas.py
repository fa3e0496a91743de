"""Replica-aware limits: how many replicas are alive, and this one's share of a limit.

``PRACTICE_CONCURRENCY`` protects a small on-premises server from floods, but it is counted
per process: six replicas would let six times the limit through. Each replica therefore
announces itself with a heartbeat in a sorted set of the fleet (member: its replica id,
score: the wall-clock time of its last heartbeat), removes members whose heartbeat is older
than ``ttl`` and counts the rest. Its share of a limit is ``max(1, limit // live)``, so the
fleet as a whole keeps the limit (rounding down; at least one each, so with more replicas
than the limit the fleet may exceed it by design rather than starve a replica).

The count is read from memory (:meth:`Replicas.share` never touches Redis on a request's
path) and refreshed by the heartbeat every ``heartbeat`` seconds. When Redis is down, or the
last good heartbeat is older than ``ttl``, the count falls back to 1: each replica applies
the full limit, as a gateway without Redis does. A stopping replica removes itself at once;
a crashed one drops out after ``ttl``.

Scores are each replica's wall clock: clocks of a cluster's nodes agree to well under a
second (NTP), far inside ``ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from gateway.fleet.redis_link import Operation, RedisLink


class Replicas:
    """This replica's heartbeat and its view of the fleet's size."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        replica_id: str,
        heartbeat: float = 1.0,
        ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._replica = replica_id
        self._key = f"{prefix}:replicas"
        self.heartbeat = heartbeat
        # Three missed heartbeats before a replica counts as gone: one late beat on a busy
        # node must not halve everyone's limits and double them again a second later.
        self.ttl = ttl if ttl is not None else 3 * heartbeat + 1.0
        self._clock = clock
        self._monotonic = monotonic
        self._live = 1
        self._counted_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._beat_loop(), name="replica-heartbeat")

    async def close(self) -> None:
        """Stop beating and leave the set at once, so the others' shares grow now."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

        async def leave(client: Redis) -> None:
            await client.zrem(self._key, self._replica)

        await self._link.call(Operation.HEARTBEAT, leave, None)
        self._live, self._counted_at = 1, None

    async def beat(self) -> int:
        """One heartbeat: announce, drop the dead, count. Returns the live count (1 when
        Redis did not answer)."""
        now = self._clock()

        async def announce(client: Redis) -> int:
            async with client.pipeline(transaction=True) as pipe:
                pipe.zadd(self._key, {self._replica: now})
                pipe.zremrangebyscore(self._key, "-inf", now - self.ttl)
                pipe.zcard(self._key)
                # The set vanishes by itself when the whole fleet is gone.
                pipe.pexpire(self._key, math.ceil(self.ttl * 2000))
                results = await pipe.execute()
            count = results[2]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError("ZCARD did not answer a positive count")
            return count

        count = await self._link.call(Operation.HEARTBEAT, announce, 0)
        if count >= 1:
            self._live, self._counted_at = count, self._monotonic()
        else:
            self._live, self._counted_at = 1, None
        return self.live_replicas()

    def live_replicas(self) -> int:
        """Replicas alive at the last heartbeat; 1 when that is unknown or too old."""
        if self._counted_at is None or self._monotonic() - self._counted_at > self.ttl:
            return 1
        return self._live

    def share(self, limit: int) -> int:
        """This replica's part of a fleet-wide ``limit``: at least 1."""
        return max(1, limit // self.live_replicas())

    def status(self) -> dict[str, Any]:
        return {
            "live_replicas": self.live_replicas(),
            "heartbeat_seconds": self.heartbeat,
            "ttl_seconds": self.ttl,
        }

    async def _beat_loop(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.heartbeat)
