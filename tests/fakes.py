"""Fakes shared by the tests and benchmarks: things that stand in for time.

A fake is a working implementation with a knob, never a mock of our own code. The clock here
is what the gateway's pure parts take as their ``clock`` (and ``sleep``), so schedules are
tested without waiting for real time to pass.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

# 2026-01-01T00:00:00Z: wall times in tests look like real ones.
WALL_EPOCH = 1767225600.0


@dataclass
class FakeClock:
    """A :class:`gateway.clock.Clock` that moves only when told, with a ``sleep`` that
    follows it.

    ``sleep(s)`` returns once :meth:`advance` has moved time past its end; until then it is
    an ordinary pending future, so cancelling it (as ``asyncio.wait`` does) is harmless.
    """

    now: float = 1000.0
    _sleepers: list[tuple[float, int, asyncio.Future[None]]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        """Wall time moves with the monotonic time, from a fixed epoch offset."""
        return WALL_EPOCH + self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), waiter))
        await waiter

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)

    @property
    def next_wake(self) -> float | None:
        """When the earliest pending sleeper wakes, if any."""
        pending = [at for at, _, waiter in self._sleepers if not waiter.done()]
        return min(pending) if pending else None


async def settle(turns: int = 10) -> None:
    """Let every task that can run do so (a few event-loop turns)."""
    for _ in range(turns):
        await asyncio.sleep(0)
