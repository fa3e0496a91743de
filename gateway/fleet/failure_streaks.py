"""EXACT's 503/504 for a practice, counted across the fleet: the breaker opens on the
fleet's count, not on each replica's own.

A verdict (:mod:`gateway.fleet.verdicts`) is shared once a breaker opens. Under round-robin
no replica opens first for a while: each sees one failure in N, so N replicas together would
spend up to N times ``BREAKER_CONSECUTIVE_FAILURES`` attempts on an offline practice before
the first breaker opens. So each of EXACT's own 503/504 answers for a practice (its relay's
verdict, the same for every replica; never our time-outs, connection errors or a caller's
fault) also increments a per-practice counter in Redis, and the replica that sees the count
reach the threshold opens its breaker and announces the usual verdict. A success after
failures, and a breaker closing, delete the counter (the streak is broken). The counter
lives at most one breaker window (its TTL, refreshed by each increment), so a streak that
stopped long ago is forgotten.

Off the hot path: :meth:`FailureStreaks.failed` and :meth:`FailureStreaks.broken` are
synchronous, never raise and never wait; each schedules one bounded Redis call in the
background (past ``pending_max`` calls under way, new ones are dropped and counted). Redis
down, slow or wrong: nothing is counted and each replica's own breaker decides, as without
Redis. A success is only reported by the replica that saw failures itself, so a streak that
a replica without failures breaks is forgotten at the TTL (the count errs towards opening
early for a practice failing most of its requests, never towards more attempts).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from redis.asyncio import Redis

from gateway.exact_api import PRACTICE_ID
from gateway.fleet.backlog import Backlog
from gateway.fleet.redis_link import Operation, RedisLink

log = logging.getLogger("gateway.fleet.failure_streaks")

# (practice id, EXACT's status): the fleet's count for the practice reached the threshold.
OnThreshold = Callable[[str, int], None]


class FailureStreaks:
    """Counts EXACT's 503/504 per practice in Redis; see the module docstring."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        threshold: int,
        window: float,
        on_threshold: OnThreshold,
        pending_max: int = 1000,
    ) -> None:
        self._link = link
        self._key_prefix = f"{prefix}:failures:"
        self.threshold = threshold
        self._ttl_ms = max(1, math.ceil(window * 1000))
        self._on_threshold = on_threshold
        self._backlog = Backlog(pending_max)
        self.counted = 0  # increments Redis answered

    def failed(self, practice_id: str, status: int) -> None:
        """EXACT answered ``status`` (503/504) for the practice: count it fleet-wide."""
        if PRACTICE_ID.fullmatch(practice_id):
            self._backlog.send(self._count(practice_id.upper(), status))

    def broken(self, practice_id: str) -> None:
        """The practice answered (or its breaker closed): the streak starts again."""
        if PRACTICE_ID.fullmatch(practice_id):
            self._backlog.send(self._reset(practice_id.upper()))

    async def count(self, practice_id: str) -> int | None:
        """The fleet's count now (for ``/status`` and tests); None if Redis is away."""

        async def read(client: Redis) -> int | None:
            value = await client.get(self._key_prefix + practice_id.upper())
            return None if value is None else int(value)

        return await self._link.call(Operation.FAILURE_COUNT, read, None)

    async def _count(self, practice_id: str, status: int) -> None:
        key = self._key_prefix + practice_id

        async def incr(client: Redis) -> int | None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.pexpire(key, self._ttl_ms)
                value, _ = await pipe.execute()
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        value = await self._link.call(Operation.FAILURE_COUNT, incr, None)
        if value is None:
            return
        self.counted += 1
        if value >= self.threshold:
            try:
                self._on_threshold(practice_id, status)
            except Exception as exc:  # a bug in the receiver must not kill the task silently
                log.exception(
                    "failure_streak_failed",
                    extra={
                        "fields": {"event": "failure_streak_failed", "error": type(exc).__name__}
                    },
                )

    async def _reset(self, practice_id: str) -> None:
        async def delete(client: Redis) -> None:
            await client.delete(self._key_prefix + practice_id)

        await self._link.call(Operation.FAILURE_COUNT, delete, None)

    @property
    def dropped(self) -> int:
        """Updates not sent: too many under way."""
        return self._backlog.dropped

    async def close(self) -> None:
        """Let the updates under way finish (each is bounded by the link's time-out)."""
        await self._backlog.close()
