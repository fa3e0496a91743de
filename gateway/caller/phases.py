"""The phase a caller connection is in, and the one deadline that goes with it.

Both listeners' connections (the proxy port's :class:`~gateway.caller.http11.ProxyConnection`
and the admin port's :class:`~gateway.caller.connection.CallerConnection`) wait on callers in
the same four phases, each with its own limit, and keep them on one :class:`PhaseClock`: a
single event-loop timer per connection, moved only when the deadline must come earlier. A
busy body costs one float store per chunk, and the requests of a keep-alive connection share
the timer (it re-arms itself when it fires early), instead of making and cancelling timers
per request.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from enum import Enum


class Phase(Enum):
    HEAD = "head"  # waiting for (the rest of) a request head
    BODY = "body"  # the head is in; body bytes are expected
    HANDLING = "handling"  # the whole request is in; the handler works or answers
    IDLE = "idle"  # keep-alive: between requests, nothing received yet


class PhaseClock:
    """The connection's phase and its deadline; ``on_expiry(phase)`` when the deadline passes."""

    __slots__ = ("_loop", "_on_expiry", "_timer", "_timer_at", "deadline", "phase")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[Phase], None]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.deadline = math.inf
        self.phase = Phase.HEAD

    @property
    def armed(self) -> bool:
        return self.deadline != math.inf

    def enter(self, phase: Phase, limit: float | None = None) -> None:
        """Now in ``phase``, with ``limit`` seconds from now (or no limit)."""
        self.phase = phase
        self.deadline = math.inf
        if limit is not None:
            self.push(limit)

    def push(self, limit: float) -> None:
        """The deadline is ``limit`` seconds from now."""
        self.deadline = self._loop.time() + limit
        if self._timer is not None and self._timer_at <= self.deadline:
            return  # it fires first and re-arms for the later deadline
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = self.deadline
        self._timer = self._loop.call_at(self.deadline, self._fire)

    def disarm(self) -> None:
        """No deadline for now. The timer stays: firing with no deadline does nothing, which
        is cheaper than cancelling it and making another for the next request."""
        self.deadline = math.inf

    def stop(self) -> None:
        """The connection is gone: the timer too."""
        self.deadline = math.inf
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if self.deadline == math.inf:
            return
        if self._loop.time() < self.deadline:
            self._timer_at = self.deadline
            self._timer = self._loop.call_at(self.deadline, self._fire)
            return
        self.deadline = math.inf
        self._on_expiry(self.phase)
