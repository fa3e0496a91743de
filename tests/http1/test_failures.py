"""Failures are raised as the client's own errors, with ``sent`` telling whether the request
may have reached the upstream, and a failed connection is never parked."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.http1 import (
    BodyTimeout,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    ResponseTimeout,
)
from tests.http1.conftest import TIMEOUTS, get, read_request, response, wait_for


async def test_connection_closed_mid_body_raises_from_the_iteration(serve, clients):
    """The bytes that arrived are delivered, then ConnectionLost(sent=True) is raised from
    the iteration; the connection is counted as an error, not parked."""

    async def cut(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    peer = await serve(cut)
    client = clients(peer.url)
    resp = await client.request("GET", "/", [], **TIMEOUTS)
    assert await resp.__anext__() == b"abc"
    with pytest.raises(ConnectionLost) as caught:
        await resp.__anext__()
    assert caught.value.sent is True
    resp.release()
    await wait_for(lambda: client.stats.closed_total.get("error") == 1)
    assert client.stats.idle == 0


async def test_broken_chunk_framing_raises_bad_response_from_the_iteration(serve, clients):
    """A chunk-size line that is not hex fails the body with BadResponse."""

    async def broken(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n")
        await writer.drain()
        await reader.read()

    peer = await serve(broken)
    client = clients(peer.url)
    resp = await client.request("GET", "/", [], **TIMEOUTS)
    with pytest.raises(Exception, match="unparseable") as caught:
        await resp.read()
    assert caught.value.kind == "bad_response"  # type: ignore[attr-defined]
    resp.close()


async def test_peer_closing_an_idle_connection_costs_the_caller_nothing(serve, clients):
    """The upstream closes a parked connection: the next request opens a new one and
    succeeds; the close is counted as peer_close."""
    closed = asyncio.Event()

    async def closes_after_one(reader, writer, index):
        req = await read_request(reader)
        writer.write(response(req.target.encode()))
        await writer.drain()
        if index == 0:
            writer.close()
            await writer.wait_closed()
            closed.set()
            return
        await reader.read()

    peer = await serve(closes_after_one)
    client = clients(peer.url)
    assert await get(client, "/a") == (200, b"/a")
    await closed.wait()
    assert await get(client, "/b") == (200, b"/b")
    assert peer.accepted == 2
    await wait_for(lambda: client.stats.closed_total.get("peer_close") == 1)


async def test_request_lost_after_sending_is_not_resent(serve, clients):
    """The upstream reads the request and hangs up: ConnectionLost with sent=True, and the
    request was not sent again on another connection."""

    async def hangs_up(reader, writer, index):
        await read_request(reader)

    peer = await serve(hangs_up)
    client = clients(peer.url)
    with pytest.raises(ConnectionLost) as caught:
        await client.request("POST", "/orders", [], b"{}", **TIMEOUTS)
    assert caught.value.sent is True
    assert peer.accepted == 1


async def test_connect_refused_is_connect_failed(clients):
    """Nobody listening: ConnectFailed, sent=False (safe to retry any method)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = clients(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectFailed) as caught:
        await client.request("POST", "/", [], b"x", **TIMEOUTS)
    assert (caught.value.sent, caught.value.kind) == (False, "connect_failed")
    assert client.stats.opened_total == 0


async def test_connect_timeout_when_the_tls_handshake_never_answers(serve, clients):
    """TCP accepted but TLS never answered: ConnectTimeout, sent=False."""

    async def silent(reader, writer, index):
        await reader.read()

    peer = await serve(silent)
    client = clients(f"https://127.0.0.1:{peer.port}", connect_timeout=0.2)
    with pytest.raises(ConnectTimeout) as caught:
        await client.request("GET", "/", [], **TIMEOUTS)
    assert (caught.value.sent, caught.value.kind) == (False, "connect_timeout")


async def test_no_response_head_in_time_is_a_response_timeout(serve, clients):
    """The request was read but no head came: ResponseTimeout (sent=True), connection
    closed as an error."""

    async def mute(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")  # a head that never completes
        await reader.read()

    peer = await serve(mute)
    client = clients(peer.url)
    with pytest.raises(ResponseTimeout) as caught:
        await client.request("GET", "/", [], header_timeout=0.2, read_timeout=10)
    assert caught.value.sent is True
    await wait_for(lambda: client.stats.closed_total.get("error") == 1)


async def test_stalled_body_is_a_body_timeout(serve, clients):
    """Body bytes stop coming: what arrived is delivered, then BodyTimeout."""

    async def stalls(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    peer = await serve(stalls)
    client = clients(peer.url)
    resp = await client.request("GET", "/", [], header_timeout=10, read_timeout=0.2)
    assert await resp.__anext__() == b"abc"
    with pytest.raises(BodyTimeout) as caught:
        await resp.__anext__()
    assert caught.value.sent is True
    resp.release()
    await wait_for(lambda: client.stats.closed_total.get("error") == 1)


async def test_caller_cancelled_while_waiting_closes_the_connection(serve, clients):
    """A caller whose deadline cancels it mid-exchange leaves no connection behind."""
    arrived = asyncio.Event()

    async def slow(reader, writer, index):
        await read_request(reader)
        arrived.set()
        await reader.read()

    peer = await serve(slow)
    client = clients(peer.url)
    task = asyncio.ensure_future(client.request("GET", "/", [], **TIMEOUTS))
    await arrived.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: client.stats.closed_total.get("error") == 1)
    assert (client.stats.active, client.stats.idle) == (0, 0)
