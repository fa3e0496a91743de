"""The writing side of a proxy-port connection: bytes out, and a caller that stops reading.

The transport's high-water mark is 0, so any byte the kernel will not take pauses writing
and starts the write-idle clock: no answer sits unsent and unwatched after its handler
finished (with aiohttp's 64 KiB mark one could, and the connection's close would then wait
for ever on a caller that never reads). A streamed answer's writes wait while the caller is
not reading; a caller that reads nothing for ``write_idle`` seconds is cut off by the
connection (``on_stalled``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Outbox:
    """One connection's writes (module docstring)."""

    __slots__ = ("_drain", "_loop", "_on_stalled", "_paused", "_timer", "_transport", "_write_idle")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        write_idle: float,
        on_stalled: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = transport
        self._write_idle = write_idle
        self._on_stalled = on_stalled
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        transport.set_write_buffer_limits(high=0)

    def write(self, data: bytes) -> None:
        """Write without waiting (a whole answer: the write-idle clock watches what is left)."""
        if self._transport is not None:
            self._transport.write(data)

    async def send(self, data: bytes) -> None:
        """Write, then wait while the caller is not reading; raises once the caller is gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the caller's connection is closed")
        transport.write(data)
        if self._paused:
            self._drain = self._loop.create_future()
            await self._drain

    def pause(self) -> None:
        self._paused = True
        if self._timer is None:
            self._timer = self._loop.call_later(self._write_idle, self._stalled)

    def resume(self) -> None:
        self._paused = False
        self._stop_timer()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def lost(self, error: BaseException) -> None:
        """The connection is gone: a waiting write hears ``error``."""
        self._transport = None
        self._stop_timer()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(error)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        self._on_stalled()
