"""Streaming both ways with back-pressure, and the client owning the request's framing."""

from __future__ import annotations

import asyncio
import socket
import tracemalloc

import pytest

from gateway.http1 import InvalidRequest
from tests.http1.conftest import TIMEOUTS, read_request, response, wait_for

MIB = 1024 * 1024


async def chunks(*parts: bytes):
    for part in parts:
        yield part


def raw_recorder(received: list[bytes], answer: bytes = response()):
    """An upstream that keeps the raw bytes of the request (head and body)."""

    async def handler(reader, writer, index):
        req = await read_request(reader)
        received.append(req.body)
        writer.write(answer)
        await writer.drain()
        await reader.read()

    return handler


async def test_streamed_body_is_chunked_and_empty_chunks_are_skipped(serve, clients):
    """An iterator body without Content-Length goes chunked; an empty chunk from the caller
    is never written (it would end the body early and smuggle the rest)."""
    bodies: list[bytes] = []
    peer = await serve(raw_recorder(bodies))
    client = clients(peer.url)
    resp = await client.request("POST", "/", [], chunks(b"ab", b"", b"cd"), **TIMEOUTS)
    assert await resp.read() == b"ok"
    resp.release()
    assert bodies == [b"abcd"]
    assert client.stats.idle == 1


async def test_streamed_body_with_a_content_length_is_sent_as_declared(serve, clients):
    """A caller's Content-Length selects fixed-length streaming."""
    bodies: list[bytes] = []
    peer = await serve(raw_recorder(bodies))
    client = clients(peer.url)
    resp = await client.request(
        "PUT", "/", [("Content-Length", "4")], chunks(b"ab", b"cd"), **TIMEOUTS
    )
    assert await resp.read() == b"ok"
    resp.release()
    assert bodies == [b"abcd"]


@pytest.mark.parametrize(("declared", "parts"), [("3", (b"ab", b"cd")), ("5", (b"ab", b"cd"))])
async def test_streamed_body_that_breaks_its_length_fails(serve, clients, declared, parts):
    """More or fewer bytes than declared: InvalidRequest(sent=True), connection closed."""
    bodies: list[bytes] = []
    peer = await serve(raw_recorder(bodies))
    client = clients(peer.url)
    with pytest.raises(InvalidRequest) as caught:
        await client.request("PUT", "/", [("Content-Length", declared)], chunks(*parts), **TIMEOUTS)
    assert caught.value.sent is True
    await wait_for(lambda: client.stats.closed_total.get("error") == 1)


async def test_early_response_is_returned_and_the_connection_closed(serve, clients):
    """The upstream answers (413) before the body is all sent: the caller gets the answer
    at once, the rest of the body is not sent, the connection is not reused."""
    never = asyncio.Event()

    async def stalled_upload():
        yield b"first part"
        await never.wait()
        yield b"never sent"

    async def rejects(reader, writer, index):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response(b"too large", "413 Content Too Large"))
        await writer.drain()
        await reader.read()

    peer = await serve(rejects)
    client = clients(peer.url)
    resp = await client.request("POST", "/", [], stalled_upload(), **TIMEOUTS)
    assert (resp.status, await resp.read()) == (413, b"too large")
    resp.release()
    await wait_for(lambda: client.stats.closed_total.get("early_response") == 1)


async def test_early_response_to_a_bytes_body_still_queued_closes_the_connection(serve, clients):
    """An answer that arrives while part of a large bytes body is still queued in the
    transport: the caller gets it, and the connection is closed rather than letting the
    rest of that body reach the upstream as the start of the next request."""

    async def rejects(reader, writer, index):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response(b"too large", "413 Content Too Large"))
        await writer.drain()
        await reader.read()

    peer = await serve(rejects)
    assert peer.server is not None
    for sock in peer.server.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client = clients(peer.url)
    resp = await client.request("POST", "/", [], b"x" * (64 * MIB), **TIMEOUTS)
    assert (resp.status, await resp.read()) == (413, b"too large")
    resp.release()
    await wait_for(lambda: client.stats.closed_total.get("early_response") == 1)


async def test_request_body_streams_with_back_pressure(serve, clients):
    """The upstream reads slowly: the caller's iterator is only asked for more when the
    socket drains, so what has been produced but not received stays bounded (kernel
    buffers plus one transport buffer), far below the 32 MiB body."""
    produced = received = max_ahead = 0
    piece = b"x" * (64 * 1024)

    async def upload():
        nonlocal produced, max_ahead
        for _ in range(512):
            max_ahead = max(max_ahead, produced - received)
            produced += len(piece)
            yield piece

    async def slow_reader(reader, writer, index):
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        while received < 512 * len(piece):
            data = await reader.read(64 * 1024)
            received += len(data)
            await asyncio.sleep(0.001)  # a slow upstream: the point of the test
        writer.write(response())
        await writer.drain()
        await reader.read()

    peer = await serve(slow_reader)
    assert peer.server is not None
    for sock in peer.server.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client = clients(peer.url)
    resp = await client.request(
        "POST", "/", [("Content-Length", str(512 * len(piece)))], upload(), **TIMEOUTS
    )
    assert await resp.read() == b"ok"
    resp.release()
    assert received == 32 * MIB
    assert max_ahead < 12 * MIB


async def test_50_mib_response_streams_in_bounded_memory(serve, clients):
    """A 50 MiB body passes through chunk by chunk to a consumer slower than the upstream:
    reading pauses while the consumer is behind, so the client (and the test's upstream)
    allocate well under 20 MiB at peak (the product's bound)."""
    block = b"y" * MIB

    async def big(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (50 * MIB))
        for _ in range(50):
            writer.write(block)
            await writer.drain()
        await reader.read()

    peer = await serve(big)
    client = clients(peer.url)
    tracemalloc.start()
    try:
        resp = await client.request("GET", "/", [], **TIMEOUTS)
        total = 0
        async for chunk in resp:
            total += len(chunk)
            await asyncio.sleep(0.001)  # a consumer slower than the upstream: the point
        resp.release()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 50 * MIB
    assert peak < 20 * MIB
    assert client.stats.idle == 1
