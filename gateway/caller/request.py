"""What a request handler may ask of the caller's connection, and the request it is given.

The handler (the proxy) sees an aiohttp request; the connection under it
(:class:`~gateway.caller.connection.CallerConnection`) knows what the handler cannot: whether
the caller is waiting for ``100 Continue``, whether the connection was cut off for the
caller's slowness, and the last word on each response's headers (no version banner,
``Connection: close`` while draining). These functions are the only way the handler reaches
it, so the proxy never touches the protocol object, and each one is a no-op for a request
that did not come through a caller connection (the admin app, tests).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.web_protocol import RequestHandler

from gateway.caller.connection import CallerConnection
from gateway.caller.writer import CallerWriter


class CallerRequest(web.BaseRequest):
    """A proxy-port request whose response headers get the listener's last word."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        protocol = self.protocol
        if isinstance(protocol, CallerConnection):
            protocol.prepare_response(response)


def make_caller_request(
    message: Any,
    payload: StreamReader,
    protocol: RequestHandler,
    writer: Any,
    task: asyncio.Task[None],
    *,
    loop: asyncio.AbstractEventLoop,
) -> web.BaseRequest:
    """The request factory of the proxy port: a :class:`CallerRequest` whose answers are
    written by a :class:`~gateway.caller.writer.CallerWriter` (in place of aiohttp's
    ``writer``, which would drop obs-text bytes from the head)."""
    del writer
    return CallerRequest(message, payload, protocol, CallerWriter(protocol, loop), task, loop)


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """The same last word for an ``web.Application`` (the admin port): its signal handler."""
    protocol = request.protocol
    if isinstance(protocol, CallerConnection):
        protocol.prepare_response(response)
