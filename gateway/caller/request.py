"""The admin port's last word on each response's headers, as its application's signal.

The connection under an admin request (:class:`~gateway.caller.connection.CallerConnection`)
knows what the application cannot: whether the listener is draining, whether the caller
still waits for ``100 Continue``, whether it was cut off for slowness. This signal handler
hands each response to it before the head is written (no version banner, ``Connection:
close`` when the connection is to end), and is a no-op for a request that did not come
through a caller connection (tests).
"""

from __future__ import annotations

from aiohttp import web

from gateway.caller.connection import CallerConnection


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """The same last word for an ``web.Application`` (the admin port): its signal handler."""
    protocol = request.protocol
    if isinstance(protocol, CallerConnection):
        protocol.prepare_response(response)
