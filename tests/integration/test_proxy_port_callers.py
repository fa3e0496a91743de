"""The proxy port's own HTTP/1.1 server against callers that misuse a connection.

Answers in order on a pipelined connection, no body bytes read as a request, every answer for
a caller that half-closes, and a connection count that returns to zero whatever a caller does
(leaving mid-upload, mid-answer). Each test writes raw bytes on a real socket; the scripted
upstream plays EXACT and records what reached it.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.caller.limits import LINGER_SECONDS, MAX_PIPELINED
from gateway.caller.phases import Phase
from tests.fakes import ScriptedUpstream, wait_until
from tests.integration.test_caller_edge import PATIENCE, answered
from tests.integration.wire import (
    POST_HEAD,
    PRACTICE,
    Connect,
    chunked,
    closed_after,
    echo,
    get,
    read_reply,
    seen_targets,
    settled,
    still_serves,
)

# -- pipelining --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3, 50])
async def test_pipelined_requests_are_answered_in_order_behind_a_slow_one(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream, count: int
) -> None:
    """Requests sent in one segment, the first held at EXACT: each answer comes back in
    order, with its own request id and body; the later ones reach EXACT only after it."""
    gate = asyncio.Event()

    async def first_is_slow(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/slow"):
            await gate.wait()
        return await echo(request)

    upstream.handler = first_is_slow
    paths = [f"{PRACTICE}/slow"] + [f"{PRACTICE}/fast-{index}" for index in range(1, count)]
    reader, writer = await connect(gateway)
    writer.write(b"".join(get(path, f"X-Request-ID: pipe-{i}") for i, path in enumerate(paths)))

    async def slow_one_arrived() -> bool:
        return seen_targets(upstream) == paths[:1]

    await wait_until(slow_one_arrived, PATIENCE)
    gate.set()
    for index, path in enumerate(paths):
        reply = await read_reply(reader)
        assert reply.status == 200
        assert reply.all("x-request-id") == [f"pipe-{index}"]
        assert reply.body == f"GET {path}\n".encode()
        assert reply.header("connection") is None  # still kept alive
    assert seen_targets(upstream) == paths
    writer.close()


async def test_a_pipeline_deeper_than_the_bound_is_cut_after_the_bound(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream
) -> None:
    """2,000 tiny requests in one go (36 KiB) would otherwise become 2,000 queued request
    objects per connection, times a thousand connections. Past MAX_PIPELINED waiting behind
    the one in progress, parsing stops: those queued are answered in order, then the
    connection closes, and no request beyond them reaches EXACT (a pipelining client retries
    the unanswered ones, RFC 9112 section 9.3.2)."""
    gate = asyncio.Event()

    async def first_is_slow(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/slow"):
            await gate.wait()
        return await echo(request)

    upstream.handler = first_is_slow
    paths = [f"{PRACTICE}/slow"] + [f"{PRACTICE}/p{index}" for index in range(1, 2000)]
    reader, writer = await connect(gateway)
    writer.write(b"".join(get(path) for path in paths))

    async def slow_one_arrived() -> bool:
        return seen_targets(upstream) == paths[:1]

    await wait_until(slow_one_arrived, PATIENCE)
    (connection,) = gateway.listener.connections
    assert connection.queued <= MAX_PIPELINED
    gate.set()
    answered = 0
    while (head := await closed_after_head(reader)) is not None:
        reply = await read_reply(reader, head=head)
        assert reply.body == f"GET {paths[answered]}\n".encode()
        answered += 1
    assert answered == MAX_PIPELINED + 1
    assert reply.header("connection") == "close"
    assert seen_targets(upstream) == paths[:answered]
    await settled(gateway)


async def closed_after_head(reader: asyncio.StreamReader) -> bytes | None:
    """The next answer's head, or None once the gateway has closed the connection."""
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    except asyncio.IncompleteReadError as end:
        partial = end.partial
    assert partial == b""  # closed between answers, never in the middle of one
    return None


async def test_a_pipelined_request_with_a_body_keeps_its_own_bytes(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream
) -> None:
    """A POST whose body spells a request, then a GET, in one segment: the body reaches EXACT
    as the POST's body, and only the two real requests are made."""
    upstream.handler = echo
    hidden = get(f"{PRACTICE}/smuggled")
    reader, writer = await connect(gateway)
    writer.write(
        f"POST {PRACTICE}/Patients/p/Contact HTTP/1.1\r\nHost: x\r\nX-Request-ID: post-1\r\n"
        f"Content-Length: {len(hidden)}\r\n\r\n".encode()
        + hidden
        + get(f"{PRACTICE}/details", "X-Request-ID: get-2")
    )
    first = await read_reply(reader)
    second = await read_reply(reader)
    writer.close()
    assert (first.status, first.header("x-request-id")) == (200, "post-1")
    assert first.body == f"POST {PRACTICE}/Patients/p/Contact\n".encode() + hidden
    assert (second.status, second.header("x-request-id")) == (200, "get-2")
    assert second.body == f"GET {PRACTICE}/details\n".encode()
    assert seen_targets(upstream) == [f"{PRACTICE}/Patients/p/Contact", f"{PRACTICE}/details"]
    assert upstream.seen[0].body == hidden


async def test_garbage_pipelined_behind_a_good_request_ends_the_connection_after_it(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream
) -> None:
    """The good request is answered (saying Connection: close), then the connection closes;
    nothing after the garbage is read as a request."""
    upstream.handler = echo
    reader, writer = await connect(gateway)
    writer.write(
        get(f"{PRACTICE}/details", "X-Request-ID: good-1")
        + b"\x16\x03\x01\x02\x00garbage\r\n\r\n"
        + get(f"{PRACTICE}/after-garbage")
    )
    reply = await read_reply(reader)
    assert (reply.status, reply.header("x-request-id")) == (200, "good-1")
    assert reply.body == f"GET {PRACTICE}/details\n".encode()
    assert reply.header("connection") == "close"
    assert await closed_after(reader) == b""
    writer.close()
    assert seen_targets(upstream) == [f"{PRACTICE}/details"]


# -- answered before the body was read --------------------------------------------------------

# 200 KiB of body that spells requests: if any of it were read as HTTP, EXACT would see them.
REQUESTS_IN_BODY = get(f"{PRACTICE}/in-body") * (200 * 1024 // len(get(f"{PRACTICE}/in-body")))


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: %d\r\n\r\n" % len(REQUESTS_IN_BODY) + REQUESTS_IN_BODY,
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked(REQUESTS_IN_BODY),
    ],
    ids=["length", "chunked"],
)
@pytest.mark.parametrize(
    "refused",
    [
        (f"POST {PRACTICE}//details HTTP/1.1", 400, "bad_request"),
        (f"PROPFIND {PRACTICE}/details HTTP/1.1", 405, "method_not_allowed"),
    ],
    ids=["bad target", "bad method"],
)
async def test_a_body_never_read_is_never_parsed_as_requests(
    gateway: Gateway,
    connect: Connect,
    upstream: ScriptedUpstream,
    framing: bytes,
    refused: tuple[str, int, str],
) -> None:
    """A 200 KiB body refused on its head alone, with a request pipelined behind it: the
    refusal arrives, then the next request is answered (or the connection closes); no
    request spelled inside the body reaches EXACT."""
    line, status, reason = refused
    upstream.handler = echo
    reader, writer = await connect(gateway)
    writer.write(
        f"{line}\r\nHost: x\r\n".encode() + framing + get(f"{PRACTICE}/next", "X-Request-ID: nx")
    )
    reply = await read_reply(reader)
    assert reply.status == status
    reply.problem(reason)
    start = await asyncio.wait_for(reader.read(5), PATIENCE)
    if start == b"":  # closed between answers (never mid-answer: read_reply checked)
        assert upstream.seen == []
    else:
        head = start + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
        after = await read_reply(reader, head=head)
        assert (after.status, after.header("x-request-id")) == (200, "nx")
        assert after.body == f"GET {PRACTICE}/next\n".encode()
        assert seen_targets(upstream) == [f"{PRACTICE}/next"]


async def test_a_broken_chunk_in_a_body_being_dropped_closes_the_connection_at_once(
    gateway: Gateway, connect: Connect
) -> None:
    """A refused request's chunked body, read and dropped after the answer, turns out
    malformed: nothing more can be read as HTTP, so the connection closes then, instead of
    lingering for the rest of LINGER_SECONDS (the wait below is shorter than that, and
    generous for a close on loopback)."""
    reader, writer = await connect(gateway)
    writer.write(
        f"POST {PRACTICE}//details HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
    )
    reply = await read_reply(reader)
    assert reply.status == 400
    (connection,) = gateway.listener.connections
    writer.write(b"zz\r\nnot a chunk\r\n")

    async def closed() -> bool:
        return connection not in gateway.listener.connections

    await wait_until(closed, LINGER_SECONDS * 0.8)
    assert await closed_after(reader) == b""


# -- callers that leave --------------------------------------------------------------------------


def reset(writer: asyncio.StreamWriter) -> None:
    """Leave with a reset, as a killed client does (no FIN, unread bytes dropped)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("leave", ["close", "reset"])
@pytest.mark.parametrize(
    ("upload", "streamed"),
    [
        (b"Content-Length: 1000\r\n\r\n" + b"{" * 300, False),  # buffered for a replay
        (b"Content-Length: 10000000\r\n\r\n" + b"{" * 300_000, True),
        (b"Transfer-Encoding: chunked\r\n\r\n" + b"ffff\r\n" + b"{" * 30_000, True),
    ],
    ids=["buffered", "streamed", "chunked"],
)
async def test_a_caller_that_leaves_mid_upload_costs_nothing_after(
    gateway: Gateway, connect: Connect, upload: bytes, streamed: bool, leave: str
) -> None:
    """Half a body, then the caller is gone (while the gateway reads it, or while it streams
    to EXACT): the request is logged 499, its connection, slot and in-flight count are given
    back, and the next caller is served."""
    _reader, writer = await connect(gateway)
    writer.write(POST_HEAD + upload)
    await writer.drain()

    async def arrived() -> bool:
        reading = any(c.phase is Phase.BODY for c in gateway.listener.connections)
        return reading and (not streamed or gateway.inflight == 1)

    await wait_until(arrived, PATIENCE)
    if leave == "reset":
        reset(writer)
    else:
        writer.close()
    await settled(gateway)

    async def counted() -> bool:
        return answered(gateway, 499) == 1

    await wait_until(counted, PATIENCE)
    await still_serves(gateway, connect)


async def test_a_caller_that_leaves_mid_answer_costs_nothing_after(
    gateway: Gateway, connect: Connect, streaming: asyncio.Event
) -> None:
    """A caller resets its connection while a 128 MiB answer streams to it: the upstream
    exchange is dropped, the request logged 499, and everything is given back."""
    reader, writer = await connect(gateway)
    writer.write(get(f"{PRACTICE}/Appointments", "X-Pieces: 2000:65536"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    streaming.set()
    await asyncio.wait_for(reader.readexactly(200_000), PATIENCE)
    reset(writer)
    await settled(gateway)

    async def counted() -> bool:
        return answered(gateway, 499) == 1

    await wait_until(counted, PATIENCE)
    await still_serves(gateway, connect)


@pytest.mark.parametrize("count", [1, 3])
async def test_a_caller_that_half_closes_after_its_requests_gets_every_answer(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream, count: int
) -> None:
    """Requests sent in full, then the caller shuts its sending side (``shutdown(SHUT_WR)``,
    as ``nc -N`` and some scripts do): each request is answered in order, the last saying
    Connection: close, then the connection closes. Before, the half-close closed the
    connection at once: a POST was carried out at EXACT and its answer never written."""
    upstream.handler = echo
    paths = [f"{PRACTICE}/Patients/p/Contact-{index}" for index in range(count)]
    reader, writer = await connect(gateway)
    writer.write(
        b"".join(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode()
            for path in paths
        )
    )
    writer.write_eof()
    for index, path in enumerate(paths):
        reply = await read_reply(reader)
        assert (reply.status, reply.body) == (200, f"POST {path}\n{{}}".encode())
        last = index == count - 1
        assert (reply.header("connection") == "close") is last
    assert await closed_after(reader) == b""
    assert seen_targets(upstream) == paths
    await settled(gateway)


async def test_a_half_close_mid_body_ends_the_request_as_gone(
    gateway: Gateway, connect: Connect
) -> None:
    """A body that can never be completed: the request is logged 499 and the connection
    closes, unanswered."""
    reader, writer = await connect(gateway)
    writer.write(POST_HEAD + b"Content-Length: 100\r\n\r\n{")
    writer.write_eof()
    assert await closed_after(reader) == b""
    await settled(gateway)

    async def counted() -> bool:
        return answered(gateway, 499) == 1

    await wait_until(counted, PATIENCE)
