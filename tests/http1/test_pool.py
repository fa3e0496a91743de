"""The keep-alive pool: reuse, LIFO order, idle expiry, shutdown."""

from __future__ import annotations

import pytest

from tests.http1.conftest import TIMEOUTS, get, read_request, wait_for


async def numbered(reader, writer, index):
    """Answers every request with the index of the connection it came on."""
    while True:
        await read_request(reader)
        body = str(index).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


async def test_healthy_connection_is_reused(serve, clients):
    """Sequential requests share one connection; the stats say so."""
    peer = await serve(numbered)
    client = clients(peer.url)
    for _ in range(3):
        assert await get(client) == (200, b"0")
    stats = client.stats
    assert (stats.opened_total, stats.reused_total, stats.idle, stats.active) == (1, 2, 1, 0)
    assert stats.closed_total == {}


async def test_reuse_is_last_in_first_out(serve, clients):
    """The connection parked last is the one taken next."""
    peer = await serve(numbered)
    client = clients(peer.url)
    first = await client.request("GET", "/", [], **TIMEOUTS)
    second = await client.request("GET", "/", [], **TIMEOUTS)
    assert (await first.read(), await second.read()) == (b"0", b"1")
    first.release()
    second.release()
    assert client.stats.idle == 2
    third = await client.request("GET", "/", [], **TIMEOUTS)
    fourth = await client.request("GET", "/", [], **TIMEOUTS)
    assert (await third.read(), await fourth.read()) == (b"1", b"0")
    assert client.stats.active == 2
    third.release()
    fourth.release()


async def test_idle_connections_expire(serve, clients):
    """A connection parked longer than idle_timeout is closed as idle_expired."""
    peer = await serve(numbered)
    client = clients(peer.url, idle_timeout=0.1)
    assert await get(client) == (200, b"0")
    await wait_for(lambda: client.stats.closed_total.get("idle_expired") == 1)
    assert client.stats.idle == 0
    assert await get(client) == (200, b"1")


async def test_close_shuts_idle_connections_and_busy_ones_on_release(serve, clients):
    """close() closes parked connections at once and busy ones when released; later
    requests are refused."""
    peer = await serve(numbered)
    client = clients(peer.url)
    busy = await client.request("GET", "/", [], **TIMEOUTS)
    assert await get(client) == (200, b"1")
    await client.close()
    assert client.stats.closed_total == {"shutdown": 1}
    assert await busy.read() == b"0"
    busy.release()
    await wait_for(lambda: client.stats.closed_total.get("shutdown") == 2)
    with pytest.raises(RuntimeError):
        await client.request("GET", "/", [], **TIMEOUTS)
