"""Redis updates sent in the background, never awaited by a request, and bounded.

A request must not wait on Redis for bookkeeping (a failure streak, an idempotency record's
completion), so such updates run as tasks. Past ``limit`` under way (Redis slow or away and
the link's time-out not yet reached), a new one is dropped and counted rather than queued:
what it would have recorded expires by its own TTL, and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class Backlog:
    """The background updates under way (module docstring)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pending: set[asyncio.Future[Any]] = set()
        self.dropped = 0  # updates not sent: too many under way

    def send(self, update: Coroutine[Any, Any, Any]) -> None:
        if len(self._pending) >= self._limit:
            update.close()
            self.dropped += 1
            return
        task = asyncio.ensure_future(update)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Let the updates under way finish (each is bounded by the link's time-out)."""
        pending = list(self._pending)
        if pending:
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)
