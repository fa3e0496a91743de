"""The caller edge's outgoing side over real sockets: answers a caller never reads, and
response header bytes that are not UTF-8.

Raw sockets play a caller that stops reading once the kernel's buffers are full; a raw
asyncio peer plays an EXACT that sends obs-text header bytes no HTTP library would write.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.fakes import GatewayFactory, ScriptedUpstream, gateway_settings, wait_until
from tests.integration.test_caller_edge import FAST, PATIENCE, answered, read_answer


async def test_a_caller_that_stops_reading_a_small_answer_is_still_released(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """Answers of 32 KiB (under aiohttp's 64 KiB high-water mark) to a caller that reads
    nothing: once the kernel's buffers are full, the unsent bytes start the write-idle clock
    and the connection is aborted and released. Before, the last answer sat unsent below the
    mark, the keep-alive close waited for it to flush, and the connection was held for ever."""
    gateway = await start_gateway(gateway_settings(upstream.url, **FAST))
    answer = b"x" * 32768

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=answer)

    upstream.handler = sized
    upstream.record_bodies = False
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", gateway.proxy_port))
    request = b"GET /v1/Practices/UKTEST1/details HTTP/1.1\r\nHost: x\r\n\r\n"
    await loop.sock_sendall(sock, request)

    async def connected() -> bool:
        return len(gateway.listener.connections) == 1

    await wait_until(connected, PATIENCE)
    transport = next(iter(gateway.listener.connections)).transport
    assert transport is not None
    try:
        for sent in range(1, 2000):

            async def progressed(sent: int = sent) -> bool:
                return answered(gateway, 200) >= sent or transport.get_write_buffer_size() > 0

            await wait_until(progressed, PATIENCE)
            if transport.get_write_buffer_size() > 0:
                break  # the kernel holds no more: bytes wait in the gateway's own buffer
            await loop.sock_sendall(sock, request)
        else:
            pytest.fail("the kernel's buffers never filled")

        async def released() -> bool:
            return gateway.listener.open_connections == 0

        await wait_until(released, PATIENCE)
    finally:
        sock.close()


EXACT_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"X-Latin1: Caf\xe9 \xff\r\nX-Utf8: Zo\xc3\xab \xc3\x85ngstr\xc3\xb6m\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


@pytest.fixture
async def raw_exact() -> AsyncIterator[int]:
    """An EXACT that answers every request with EXACT_HEAD, keeping the connection open."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(EXACT_HEAD)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_obs_text_in_exacts_response_headers_reaches_the_caller_unchanged(
    raw_exact: int, upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """Header bytes from EXACT that are not UTF-8 (latin-1 obs-text) and UTF-8 ones reach
    the caller as sent: aiohttp's own writer would have dropped the undecodable bytes."""
    gateway = await start_gateway(
        gateway_settings(f"http://127.0.0.1:{raw_exact}", token_url=f"{upstream.url}/connect/token")
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
    writer.write(b"GET /v1/Practices/UKTEST1/details HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nX-Latin1: Caf\xe9 \xff\r\n" in head
    assert b"\r\nX-Utf8: Zo\xc3\xab \xc3\x85ngstr\xc3\xb6m\r\n" in head
    assert await asyncio.wait_for(reader.readexactly(2), PATIENCE) == b"{}"
    # The connection stays usable: the next answer comes out the same way.
    writer.write(b"GET /v1/Practices/UKTEST1/details HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_answer(reader)
    writer.close()
    assert (status, body) == (200, b"{}")
    assert headers["x-latin1"].encode("latin-1") == b"Caf\xe9 \xff"
