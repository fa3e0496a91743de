"""The proxy port's listener: an asyncio server of :class:`ProxyConnection` with drain manners.

It keeps the port's :class:`~gateway.caller.door.Door` (connection cap, refusals) and the
set of open connections. While draining, every answer says ``Connection: close`` and idle
keep-alive connections close, so a caller never loses a request sent just as the listener
closes; :meth:`ProxyListener.close` then waits for the requests under way, up to the drain
time, and cuts what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate

from gateway.caller.door import Door, Refusal
from gateway.caller.http11 import Handler, ProxyConnection
from gateway.caller.limits import CallerLimits


class ProxyListener(Door):
    """Serves the proxy port (module docstring)."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: CallerLimits,
        on_refusal: Refusal | None = None,
        on_connections: Callable[[int], None] | None = None,
        on_refused_connection: Callable[[], None] | None = None,
        name: str = "proxy",
    ) -> None:
        super().__init__(
            limits,
            name=name,
            on_refusal=on_refusal,
            on_connections=on_connections,
            on_refused_connection=on_refused_connection,
        )
        self._handler = handler
        self.connections: set[ProxyConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._settled: asyncio.Event | None = None
        self._date_second = -1
        self._date_field = ""
        self.loop = asyncio.get_running_loop()

    async def start(self, sock: socket.socket) -> None:
        self._server = await self.loop.create_server(
            lambda: ProxyConnection(self, self._handler), sock=sock
        )

    def date_field(self) -> str:
        """The ``Date`` field for answers made now (formatted once a second, not per answer)."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_field = f"Date: {formatdate(now, usegmt=True)}\r\n"
        return self._date_field

    def settled(self) -> None:
        """A connection went idle: the drain may be over."""
        if self._settled is not None and not any(c.busy for c in self.connections):
            self._settled.set()

    def released(self) -> None:
        super().released()
        self.settled()

    def drainable(self) -> Iterable[ProxyConnection]:
        return self.connections

    def now(self) -> float:
        return self.loop.time()

    async def close(self, drain_seconds: float) -> None:
        """Stop accepting, let the requests under way finish (up to ``drain_seconds``), then
        cut whatever is left."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        if any(c.busy for c in self.connections):
            self._settled = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_seconds):
                    await self._settled.wait()
        for connection in list(self.connections):
            connection.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
