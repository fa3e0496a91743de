"""The keep-alive pool: LIFO reuse of connections that ended their last exchange cleanly.

The pool has no cap (the gateway's own concurrency limits bound it) and no queue: a request
that finds no idle connection opens one. Reuse is last-in first-out, so traffic concentrates
on the warmest connections and the others reach their idle expiry and close; the idle stack
is then ordered oldest-first from the bottom, which lets one timer expire it.

A connection is parked only when :meth:`Connection.reusable` says so; anything else closes it
with the cause the connection recorded. Checking out re-checks it: the protocol must not have
seen a byte or an EOF while parked, and a zero-time ``poll`` on the socket catches bytes that
reached the kernel after the event loop last looked (a stray response sent just as the
connection was parked). The pool never resends anything: a request that fails on a reused
connection fails to its caller, whose retry policy knows whether it may be sent again.
"""

from __future__ import annotations

import asyncio
import select
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.http1.connection import CloseCause, Connection

_READABLE = select.POLLIN | select.POLLPRI
_PEER_SHUT = getattr(select, "POLLRDHUP", 0) | select.POLLHUP
# Expire connections this close to their deadline together, so the timer never spins on a
# handle the loop runs a hair before its time.
_SLACK = 0.001


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the pool: counts now, and totals since the client started."""

    idle: int
    active: int
    opened_total: int
    reused_total: int
    closed_total: Mapping[str, int]


class Pool:
    """Idle connections (a LIFO stack with one expiry timer) and the pool's counters."""

    def __init__(self, idle_timeout: float) -> None:
        self._idle_timeout = idle_timeout
        self._idle: deque[Connection] = deque()
        self._active = 0
        self._opened = 0
        self._reused = 0
        self._closed: Counter[str] = Counter()
        self._sweeper: asyncio.TimerHandle | None = None
        self._poller = select.poll()
        self._shut = False
        self._all: set[Connection] = set()

    @property
    def shut(self) -> bool:
        return self._shut

    def checkout(self) -> Connection | None:
        """The most recently parked connection that is still clean, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.parked = False
            if not conn.usable():
                continue  # already closing; counted when its connection_lost arrives
            pending = self._pending(conn.fd)
            if pending:
                conn.close(
                    CloseCause.PEER_CLOSE if pending & _PEER_SHUT else CloseCause.STRAY_BYTES
                )
                continue
            self._reused += 1
            self._active += 1
            return conn
        return None

    def _pending(self, fd: int) -> int:
        if fd < 0:
            return 0
        poller = self._poller
        poller.register(fd, _READABLE | _PEER_SHUT)
        try:
            events = poller.poll(0)
        finally:
            poller.unregister(fd)
        return events[0][1] if events else 0

    def opened(self, conn: Connection) -> None:
        """A new connection, checked out at once."""
        self._opened += 1
        self._active += 1
        self._all.add(conn)

    def release(self, conn: Connection) -> None:
        """The caller is done: park the connection if it may be reused, else close it."""
        self._active -= 1
        if self._shut:
            conn.close(CloseCause.SHUTDOWN)
        elif conn.reusable():
            conn.park()
            self._idle.append(conn)
            if self._sweeper is None:
                self._schedule(asyncio.get_running_loop())
        else:
            conn.close(conn.cause or CloseCause.UNREAD)

    def discard(self, conn: Connection, cause: CloseCause) -> None:
        """The caller gives up on the connection (abandoned, failed, cancelled)."""
        self._active -= 1
        conn.close(cause)

    def lost(self, conn: Connection) -> None:
        """Called by a connection once its transport is gone: count it, forget it."""
        self._closed[conn.cause or CloseCause.PEER_CLOSE] += 1
        self._all.discard(conn)
        if conn.parked:
            conn.parked = False
            self._idle.remove(conn)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._idle:
            when = self._idle[0].idle_since + self._idle_timeout
            self._sweeper = loop.call_at(when, self._sweep)
        else:
            self._sweeper = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        oldest_kept = loop.time() - self._idle_timeout + _SLACK
        idle = self._idle
        while idle and idle[0].idle_since <= oldest_kept:
            conn = idle.popleft()
            conn.parked = False
            conn.close(CloseCause.IDLE_EXPIRED)
        self._schedule(loop)

    async def close(self) -> None:
        """Close idle connections now and every other one when it is released."""
        self._shut = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            conn = self._idle.pop()
            conn.parked = False
            conn.close(CloseCause.SHUTDOWN)
        closing = [conn.wait_closed() for conn in self._all if conn.closing]
        if closing:
            await asyncio.gather(*closing)

    @property
    def stats(self) -> PoolStats:
        return PoolStats(
            idle=len(self._idle),
            active=self._active,
            opened_total=self._opened,
            reused_total=self._reused,
            closed_total={str(cause): n for cause, n in self._closed.items()},
        )
