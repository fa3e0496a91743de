"""Fixtures of the proxy port's raw-socket tests (helpers in :mod:`tests.integration.wire`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.fakes import ScriptedUpstream
from tests.integration.wire import Connect, connections, echo, pieces


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open caller connections to a gateway's proxy port; all are closed after the test."""
    async with connections() as open_one:
        yield open_one


@pytest.fixture
def streaming(upstream: ScriptedUpstream) -> asyncio.Event:
    """EXACT answers without Content-Length (chunked to the gateway): one piece, then the
    rest once the returned event is set, so the gateway must stream the answer (it cannot
    have the whole body when it writes the head). The pieces come from the X-Pieces header,
    ``count:size``."""
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        if "X-Pieces" not in request.headers:
            return await echo(request)
        count, size = map(int, request.headers["X-Pieces"].split(":"))
        response = web.StreamResponse()
        await response.prepare(request)
        for index, piece in enumerate(pieces(count, size)):
            await response.write(piece)
            if index == 0:
                await release.wait()
        await response.write_eof()
        return response

    upstream.handler = stream
    upstream.record_bodies = False
    return release
