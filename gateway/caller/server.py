"""The caller listener: aiohttp's low-level server with a connection cap and shutdown manners.

:class:`Listener` owns what is shared by a port's connections: the limits, the count of open
connections, whether it is draining, and how refusals are reported. Beyond
``max_connections`` a new connection is answered ``503 gateway_busy`` and closed at once,
with one warning when the limit is reached and one line when it is left, never a line per
connection (a flood must not become a log storm). While draining, every answer says
``Connection: close`` and idle keep-alive connections close, so a caller never loses a
request sent just as the listener closes. Each connection is a
:class:`~gateway.caller.connection.CallerConnection`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.caller.connection import CallerConnection
from gateway.caller.door import Door, Refusal
from gateway.caller.limits import (
    LINGER_SECONDS,
    MAX_FIELD_BYTES,
    MAX_HEADERS,
    CallerLimits,
)
from gateway.caller.refusals import new_request_id, render_problem
from gateway.errors import RequestHeaderFieldsTooLarge

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Listener(web.Server, Door):
    """aiohttp's low-level server with :class:`CallerConnection` and a connection cap."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: CallerLimits,
        on_refusal: Refusal | None = None,
        on_connections: Callable[[int], None] | None = None,
        on_refused_connection: Callable[[], None] | None = None,
        request_factory: Any,
        name: str = "admin",
    ) -> None:
        web.Server.__init__(
            self,
            self._bounded(handler),
            # The application's own (its router needs its request class).
            request_factory=request_factory,
            keepalive_timeout=limits.keepalive_idle,
            max_line_size=limits.max_target_bytes,
            max_field_size=MAX_FIELD_BYTES,
            max_headers=MAX_HEADERS,
            # Bodies pass byte for byte: the caller's Content-Encoding and Content-Length
            # reach EXACT with the bytes they describe (and no gzip bomb is inflated here).
            auto_decompress=False,
            lingering_time=LINGER_SECONDS,
            access_log=None,
        )
        Door.__init__(
            self,
            limits,
            name=name,
            on_refusal=on_refusal,
            on_connections=on_connections,
            on_refused_connection=on_refused_connection,
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def __call__(self) -> RequestHandler:
        return CallerConnection(self, **self._kwargs)

    def _bounded(self, handler: Handler) -> Handler:
        async def bounded(request: web.BaseRequest) -> web.StreamResponse:
            # A head that arrived in one piece was not counted while it arrived; its size is
            # checked here, before anything else sees it.
            size = len(request.raw_path) + sum(
                len(name) + len(value) + 4 for name, value in request.raw_headers
            )
            if size > self.limits.max_head_bytes:
                error = RequestHeaderFieldsTooLarge(
                    f"the request head is larger than {self.limits.max_head_bytes} bytes"
                )
                request_id = new_request_id()
                self.refusal(error, request_id, request.method)
                response = render_problem(error, request_id)
                response.force_close()
                return response
            protocol = request.protocol
            if isinstance(protocol, CallerConnection) and request.headers.get("Expect"):
                # The aiohttp application answers Expect: 100-continue the moment it starts.
                protocol.continue_sent_by_application()
            return await handler(request)

        return bounded

    # -- shutdown ----------------------------------------------------------------------------

    def drainable(self) -> Iterable[CallerConnection]:
        return [c for c in self.connections if isinstance(c, CallerConnection)]

    def now(self) -> float:
        return self._loop.time()

    def pre_shutdown(self) -> None:
        # aiohttp closes every connection here, dropping a request still arriving; only idle
        # ones are closed, the others finish (CallerConnection.shutdown waits for them).
        self.draining = True
        for connection in self.connections:
            if isinstance(connection, CallerConnection):
                connection.close_if_idle()
            else:  # pragma: no cover - every connection is a CallerConnection
                connection.close()
