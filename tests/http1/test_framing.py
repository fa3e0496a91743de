"""Correct HTTP/1.1 framing, and which endings let a connection be reused.

Each test scripts the upstream's exact bytes and checks both what the caller receives and
what the pool does with the connection afterwards (parked or closed, and why).
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.http1 import BadResponse
from tests.http1.conftest import TIMEOUTS, get, read_request, response, wait_for


def scripted(*answers: bytes, close_after: bool = False):
    """An upstream that answers the n-th request on each connection with ``answers[n]``."""

    async def handler(reader, writer, index):
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        if close_after:
            return
        await reader.read()

    return handler


async def test_chunked_body_with_trailers_is_read_and_the_connection_reused(serve, clients):
    """Chunks are joined, trailers dropped (not headers), and the connection parked."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    peer = await serve(scripted(chunked, response(b"again")))
    client = clients(peer.url)
    resp = await client.request("GET", "/", [], **TIMEOUTS)
    assert resp.headers == [("Transfer-Encoding", "chunked")]
    assert await resp.read() == b"hello world"
    resp.release()
    assert client.stats.idle == 1
    assert await get(client) == (200, b"again")
    assert client.stats.reused_total == 1


async def test_head_response_has_no_body_and_the_connection_is_reused(serve, clients):
    """A HEAD answer announcing a length is complete at its head; the parser that still
    expects that body is replaced, so the next answer on the connection parses cleanly."""
    peer = await serve(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 512\r\n\r\n", response()))
    client = clients(peer.url)
    resp = await client.request("HEAD", "/", [], **TIMEOUTS)
    assert (resp.status, resp.headers) == (200, [("Content-Length", "512")])
    assert await resp.read() == b""
    resp.release()
    assert await get(client) == (200, b"ok")
    assert (peer.accepted, client.stats.reused_total) == (1, 1)


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
async def test_bodiless_statuses_end_at_their_head(serve, clients, status):
    """204 and 304 have no body whatever their headers say; the connection is reused."""
    head = f"HTTP/1.1 {status}\r\nContent-Length: 7\r\n\r\n".encode()
    if status.startswith("204"):
        head = f"HTTP/1.1 {status}\r\n\r\n".encode()
    peer = await serve(scripted(head, response()))
    client = clients(peer.url)
    assert await get(client) == (int(status[:3]), b"")
    assert await get(client) == (200, b"ok")
    assert client.stats.reused_total == 1


async def test_read_until_close_delivers_the_body_then_closes(serve, clients):
    """No length and not chunked: the body ends with the connection, which is not reused."""
    peer = await serve(scripted(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close_after=True))
    client = clients(peer.url)
    assert await get(client) == (200, b"until the end")
    await wait_for(lambda: client.stats.closed_total.get("framing") == 1)
    assert client.stats.idle == 0


async def test_a_coding_other_than_chunked_is_read_until_close(serve, clients):
    """Transfer-Encoding without a final chunked: framed by the close, never reused."""
    peer = await serve(
        scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", close_after=True)
    )
    client = clients(peer.url)
    assert await get(client) == (200, b"zz")
    await wait_for(lambda: client.stats.closed_total.get("framing") == 1)


@pytest.mark.parametrize(
    "answer",
    [
        response(b"ok", "200 OK", "Connection: close"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0", "http-1.0-keep-alive"],
)
async def test_upstream_that_will_close_is_not_reused(serve, clients, answer):
    """Connection: close from the upstream, or an HTTP/1.0 answer: closed after the body."""
    peer = await serve(scripted(answer, response()))
    client = clients(peer.url)
    assert await get(client) == (200, b"ok")
    assert await get(client) == (200, b"ok")
    assert peer.accepted == 2
    await wait_for(lambda: client.stats.closed_total.get("connection_close") == 1)


async def test_connection_close_from_the_request_is_sent_and_honoured(serve, clients):
    """A caller's Connection: close goes out once (ours) and the connection is not reused."""
    seen = []

    async def record(reader, writer, index):
        req = await read_request(reader)
        seen.append(req.headers)
        writer.write(response())
        await writer.drain()
        await reader.read()

    peer = await serve(record)
    client = clients(peer.url)
    resp = await client.request("GET", "/", [("Connection", "close"), ("X-A", "1")], **TIMEOUTS)
    assert await resp.read() == b"ok"
    resp.release()
    assert seen[0] == [("Host", f"127.0.0.1:{peer.port}"), ("X-A", "1"), ("Connection", "close")]
    await wait_for(lambda: client.stats.closed_total.get("connection_close") == 1)


async def test_interim_responses_are_skipped(serve, clients):
    """100 Continue and 103 Early Hints are never the answer; the final 200 is, with only
    its own headers, and the connection stays reusable."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    peer = await serve(scripted(interim + response(b"final", "200 OK", "X-Final: 1"), response()))
    client = clients(peer.url)
    resp = await client.request("POST", "/", [], b"x", **TIMEOUTS)
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.headers == [("Content-Length", "5"), ("X-Final", "1")]
    assert await resp.read() == b"final"
    resp.release()
    assert await get(client) == (200, b"ok")
    assert client.stats.reused_total == 1


BAD_ANSWERS = {
    "unsolicited-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
    b"Connection: upgrade\r\n\r\n",
    "bad-status-line": b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "status-999": b"HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n",
    "status-42": b"HTTP/1.1 42 Weird\r\nContent-Length: 0\r\n\r\n",
    "status-099": b"HTTP/1.1 099 Weird\r\nContent-Length: 0\r\n\r\n",
    "http-2.0": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "cr-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "control-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
    "space-in-name": b"HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
    "length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "length-list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
}


@pytest.mark.parametrize("answer", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
async def test_unusable_heads_are_bad_responses(serve, clients, answer):
    """Every malformed or forbidden head raises BadResponse (sent=True), never another
    exception, and the connection is closed as an error."""
    peer = await serve(scripted(answer))
    client = clients(peer.url)
    with pytest.raises(BadResponse) as caught:
        await client.request("GET", "/", [], **TIMEOUTS)
    assert caught.value.sent is True
    assert caught.value.kind == "bad_response"
    await wait_for(lambda: client.stats.closed_total.get("error") == 1)
    assert client.stats.active == 0


async def test_oversized_header_section_is_a_bad_response(serve, clients):
    """A header section over max_header_bytes (here sent in many small segments) fails."""

    async def huge(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(1000):
            writer.write(f"X-Filler-{n}: {'a' * 60}\r\n".encode())
            await writer.drain()
        await reader.read()

    peer = await serve(huge)
    client = clients(peer.url, max_header_bytes=8192)
    with pytest.raises(BadResponse, match="too large"):
        await client.request("GET", "/", [], **TIMEOUTS)


async def test_oversized_header_section_in_one_segment_is_a_bad_response(serve, clients):
    """The same bound holds when the whole oversized head arrives complete at once."""
    filler = "".join(f"X-Filler-{n}: {'a' * 60}\r\n" for n in range(200))
    answer = f"HTTP/1.1 200 OK\r\n{filler}Content-Length: 0\r\n\r\n".encode()
    peer = await serve(scripted(answer))
    client = clients(peer.url, max_header_bytes=8192)
    with pytest.raises(BadResponse, match="too large"):
        await client.request("GET", "/", [], **TIMEOUTS)


async def test_endless_trailers_are_bounded(serve, clients):
    """A chunked body whose trailer section never ends fails instead of growing forever."""

    async def trailers(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        for _ in range(2000):
            writer.write(b"X-T: " + b"t" * 100)
            await writer.drain()
        await reader.read()

    peer = await serve(trailers)
    client = clients(peer.url, max_header_bytes=8192)
    resp = await client.request("GET", "/", [], **TIMEOUTS)
    with pytest.raises(BadResponse, match="trailers"):
        await resp.read()
    resp.close()


async def test_obs_text_header_value_keeps_its_bytes(serve, clients):
    """Bytes 0x80-0xFF in a value (obs-text) are allowed and decoded as aiohttp decodes them
    (UTF-8, surrogateescape), so they encode back to the very bytes received; in wire order
    with the names as received."""
    answer = b"HTTP/1.1 200 OK\r\nX-Name: Caf\xe9 \xff Zo\xc3\xab\r\ncontent-LENGTH: 2\r\n\r\nok"
    peer = await serve(scripted(answer))
    client = clients(peer.url)
    resp = await client.request("GET", "/", [], **TIMEOUTS)
    assert resp.headers == [("X-Name", "Caf\udce9 \udcff Zo\xeb"), ("content-LENGTH", "2")]
    assert resp.headers[0][1].encode("utf-8", "surrogateescape") == b"Caf\xe9 \xff Zo\xc3\xab"
    assert await resp.read() == b"ok"
    resp.release()
    assert client.stats.idle == 1


async def test_release_before_the_body_was_read_closes_the_connection(serve, clients):
    """A caller that stops reading early cannot leave unread bytes for the next caller."""
    rest = asyncio.Event()

    async def two_parts(reader, writer, index):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            await writer.drain()
            if index == 0:
                await rest.wait()
            writer.write(b"world")
            await writer.drain()

    peer = await serve(two_parts)
    client = clients(peer.url)
    resp = await client.request("GET", "/", [], **TIMEOUTS)
    assert await resp.__anext__() == b"hello"
    resp.release()
    rest.set()
    await wait_for(lambda: client.stats.closed_total.get("unread") == 1)
    assert await get(client) == (200, b"helloworld")
    assert peer.accepted == 2


async def test_close_abandons_the_connection(serve, clients):
    """close() closes even a fully read connection, and iterating afterwards is an error."""
    peer = await serve(scripted(response()))
    client = clients(peer.url)
    resp = await client.request("GET", "/", [], **TIMEOUTS)
    assert await resp.read() == b"ok"
    resp.close()
    await wait_for(lambda: client.stats.closed_total.get("abandoned") == 1)
    assert (client.stats.idle, client.stats.active) == (0, 0)
    with pytest.raises(RuntimeError):
        await resp.read()
