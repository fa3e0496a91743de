"""Time, as every part of the gateway sees it: passed in from the composition root.

Nothing in the gateway reads the system clock directly. Each part gets a :class:`Clock`
(monotonic time for durations and schedules, wall time for timestamps and HTTP dates, and a
``sleep`` that follows the same clock), so tests drive time with a fake instead of sleeping,
and a schedule can be checked to the millisecond without waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (durations, deadlines, schedules)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (timestamps people read, HTTP dates)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# Stateless, so one instance can serve as the default everywhere.
SYSTEM_CLOCK = SystemClock()
