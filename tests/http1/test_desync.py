"""The desync attack and its relatives: no caller ever receives another request's answer.

A keep-alive connection that receives bytes nobody asked for (a stray response while idle,
more bytes than Content-Length, a body after HEAD or 204) must be closed, never reused:
otherwise the next caller reads the stray bytes as its answer, and every later caller on that
connection gets the answer to the request before it.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from tests.http1.conftest import TIMEOUTS, get, read_request, response, wait_for


async def test_stray_response_on_idle_connection_never_reaches_a_caller(serve, clients):
    """The issue's attack: after answering, the upstream writes a stray response on the idle
    connection. Every caller still gets the answer to its own request; the poisoned
    connection is closed and counted."""
    stray_now = asyncio.Event()

    async def hostile(reader, writer, index):
        while True:
            req = await read_request(reader)
            writer.write(response(req.target.encode()))
            await writer.drain()
            if index == 0:
                await stray_now.wait()
                writer.write(response(b"/stray-answer"))
                await writer.drain()

    peer = await serve(hostile)
    client = clients(peer.url)
    assert await get(client, "/v1/Practices/A/Patients/1") == (200, b"/v1/Practices/A/Patients/1")
    stray_now.set()
    await wait_for(lambda: client.stats.closed_total.get("stray_bytes") == 1)
    for n in range(2, 7):
        target = f"/v1/Practices/B/Patients/{n}"
        assert await get(client, target) == (200, target.encode())
    assert peer.accepted == 2
    assert client.stats.reused_total == 4


async def test_extra_bytes_after_content_length_in_a_later_segment(serve, clients):
    """Bytes beyond Content-Length that arrive after the response was read close the
    connection; the next request goes out on a fresh one."""
    more = asyncio.Event()

    async def surplus(reader, writer, index):
        req = await read_request(reader)
        writer.write(response(req.target.encode()))
        await writer.drain()
        if index == 0:
            await more.wait()
            writer.write(b"xx")
            await writer.drain()
        await reader.read()

    peer = await serve(surplus)
    client = clients(peer.url)
    assert await get(client, "/one") == (200, b"/one")
    more.set()
    await wait_for(lambda: client.stats.closed_total.get("stray_bytes") == 1)
    assert await get(client, "/two") == (200, b"/two")
    assert peer.accepted == 2


async def test_extra_bytes_in_the_same_segment_close_the_connection(serve, clients):
    """A smuggled second response glued to the first: the caller gets exactly the framed
    body, and the connection is closed instead of being parked."""

    async def glued(reader, writer, index):
        req = await read_request(reader)
        writer.write(response(req.target.encode()) + response(b"/smuggled"))
        await writer.drain()
        await reader.read()

    peer = await serve(glued)
    client = clients(peer.url)
    assert await get(client, "/one") == (200, b"/one")
    assert await get(client, "/two") == (200, b"/two")
    assert peer.accepted == 2
    assert client.stats.reused_total == 0
    await wait_for(lambda: client.stats.closed_total.get("stray_bytes") == 1)


async def test_body_after_head_closes_the_connection(serve, clients):
    """A HEAD answer carrying a body (in the same segment): the caller gets the head and an
    empty body; the body is treated as stray and the connection closed."""

    async def head_with_body(reader, writer, index):
        req = await read_request(reader)
        if req.method == "HEAD":
            writer.write(response(b"/smuggled"))  # head plus a body it must not have
        else:
            writer.write(response(req.target.encode()))
        await writer.drain()
        await reader.read()

    peer = await serve(head_with_body)
    client = clients(peer.url)
    resp = await client.request("HEAD", "/head", [], **TIMEOUTS)
    assert resp.status == 200
    assert resp.headers == [("Content-Length", "9")]
    assert await resp.read() == b""
    resp.release()
    assert await get(client, "/next") == (200, b"/next")
    assert peer.accepted == 2
    await wait_for(lambda: client.stats.closed_total.get("stray_bytes") == 1)


async def test_body_after_head_in_a_later_segment_closes_the_connection(serve, clients):
    """The same, with the HEAD response's body arriving after the caller released it."""
    more = asyncio.Event()

    async def late_body(reader, writer, index):
        req = await read_request(reader)
        writer.write(response(b"hello")[: -len(b"hello")] if req.method == "HEAD" else b"")
        if req.method != "HEAD":
            writer.write(response(req.target.encode()))
        await writer.drain()
        if req.method == "HEAD":
            await more.wait()
            writer.write(b"hello")
            await writer.drain()
        await reader.read()

    peer = await serve(late_body)
    client = clients(peer.url)
    assert await get(client, "/head", method="HEAD") == (200, b"")
    assert client.stats.idle == 1
    more.set()
    await wait_for(lambda: client.stats.closed_total.get("stray_bytes") == 1)
    assert await get(client, "/next") == (200, b"/next")
    assert peer.accepted == 2


async def test_smuggled_response_after_204_never_reaches_the_next_caller(serve, clients):
    """A 204 followed by a whole response: the 204 is the answer; the rest is stray."""

    async def no_content(reader, writer, index):
        req = await read_request(reader)
        if index == 0:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n" + response(b"/smuggled"))
        else:
            writer.write(response(req.target.encode()))
        await writer.drain()
        await reader.read()

    peer = await serve(no_content)
    client = clients(peer.url)
    assert await get(client, "/delete") == (204, b"")
    assert await get(client, "/next") == (200, b"/next")
    assert peer.accepted == 2
    await wait_for(lambda: client.stats.closed_total.get("stray_bytes") == 1)


async def test_stray_bytes_waiting_in_the_kernel_are_caught_at_checkout(clients):
    """Stray bytes that reached the socket after the loop last looked (the event loop is
    blocked while they arrive) are found by the check at checkout, before the next request
    is written: the next caller still gets its own answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    write_stray, stray_written = threading.Event(), threading.Event()
    served: list[socket.socket] = []

    def upstream() -> None:
        first, _ = listener.accept()
        served.append(first)
        first.recv(65536)
        first.sendall(response(b"/first"))
        write_stray.wait(10)
        first.sendall(response(b"/stray"))
        stray_written.set()
        second, _ = listener.accept()
        served.append(second)
        second.recv(65536)
        second.sendall(response(b"/second"))

    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    try:
        client = clients(f"http://127.0.0.1:{port}")
        assert await get(client, "/first") == (200, b"/first")
        write_stray.set()
        stray_written.wait(10)  # blocks the loop on purpose: the bytes sit in the kernel
        assert await get(client, "/second") == (200, b"/second")
        await wait_for(lambda: client.stats.closed_total.get("stray_bytes") == 1)
    finally:
        thread.join(10)
        for sock in served:
            sock.close()
        listener.close()


async def test_requests_are_never_pipelined(serve, clients):
    """Concurrent requests each get a connection of their own: one request outstanding per
    connection, so an answer can only belong to the request on its connection."""
    gate = asyncio.Event()
    arrived = 0

    async def slow(reader, writer, index):
        nonlocal arrived
        req = await read_request(reader)
        arrived += 1
        if arrived == 3:
            gate.set()
        await gate.wait()
        writer.write(response(req.target.encode()))
        await writer.drain()
        await reader.read()

    peer = await serve(slow)
    client = clients(peer.url)
    answers = await asyncio.gather(*(get(client, f"/{n}") for n in range(3)))
    assert answers == [(200, f"/{n}".encode()) for n in range(3)]
    assert peer.accepted == 3
    assert client.stats.idle == 3
