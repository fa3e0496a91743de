"""The proxy port's own HTTP/1.1 server against callers that break the protocol's rules.

``gateway/caller/http11.py`` parses with httptools and frames every answer itself, so each
rule an HTTP library used to keep for us is now ours: answers in order on a pipelined
connection, HTTP/1.0 keep-alive and read-to-close bodies, chunked answers, no request
smuggled past the parser, no tunnel, no body bytes read as a request, no body on HEAD, 204 or
304, and a connection count that returns to zero whatever a caller does. Each test writes
raw bytes on a real socket and reads the answer bytes as they come; the scripted upstream
(or a raw asyncio peer, for answers no library would write) plays EXACT and records what
reached it, which is how a smuggled request would show.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.caller.phases import Phase
from tests.fakes import GatewayFactory, ScriptedUpstream, gateway_settings, wait_until
from tests.integration.test_caller_edge import PATIENCE, answered, assert_problem, sample
from tests.raw_peers import Peer, read_request

PRACTICE = "/v1/Practices/UKTEST1"


@dataclass
class Reply:
    """One answer as it came off the wire: fields in order (names lower case) and how its
    body was delimited (``length``, ``chunked``, ``close`` or ``none``)."""

    status: int
    fields: list[tuple[str, str]]
    body: bytes
    framing: str
    chunks: int = 0

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name]

    def problem(self, reason: str) -> None:
        headers = dict(self.fields)
        assert_problem(self.status, headers, self.body, reason)


async def read_reply(
    reader: asyncio.StreamReader, method: str = "GET", head: bytes | None = None
) -> Reply:
    """One answer, skipping 100 Continue, with its body read the way its head says
    (``head``: the head, when the test has read it already)."""
    while True:
        if head is None:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), lines[0]
        status = int(lines[0].split()[1])
        fields = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                fields.append((name.strip().lower(), value.strip()))
        if status >= 200:
            break
        head = None
    reply = Reply(status, fields, b"", "none")
    if method == "HEAD" or status in {204, 304}:
        return reply
    if reply.header("transfer-encoding") is not None:
        assert reply.header("transfer-encoding") == "chunked"
        assert reply.header("content-length") is None
        reply.framing = "chunked"
        parts = []
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), PATIENCE)
            size = int(size_line.strip(), 16)
            if size == 0:
                assert await asyncio.wait_for(reader.readuntil(b"\r\n"), PATIENCE) == b"\r\n"
                break
            parts.append(await asyncio.wait_for(reader.readexactly(size), PATIENCE))
            assert await asyncio.wait_for(reader.readexactly(2), PATIENCE) == b"\r\n"
            reply.chunks += 1
        reply.body = b"".join(parts)
    elif (length := reply.header("content-length")) is not None:
        reply.framing = "length"
        reply.body = await asyncio.wait_for(reader.readexactly(int(length)), PATIENCE)
    else:
        reply.framing = "close"
        reply.body = await asyncio.wait_for(reader.read(), PATIENCE)
    return reply


async def closed_after(reader: asyncio.StreamReader) -> bytes:
    """What the gateway still sends before it closes the connection (a reset counts)."""
    try:
        return await asyncio.wait_for(reader.read(), PATIENCE)
    except ConnectionResetError:
        return b""


Connect = Callable[[Gateway], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open caller connections to a gateway's proxy port; all are closed after the test."""
    writers: list[asyncio.StreamWriter] = []

    async def open_one(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
        writers.append(writer)
        return reader, writer

    yield open_one
    for writer in writers:
        writer.close()


def get(path: str, *extra: str, version: str = "1.1") -> bytes:
    fields = "".join(f"{line}\r\n" for line in ("Host: x", *extra))
    return f"GET {path} HTTP/{version}\r\n{fields}\r\n".encode()


async def echo(request: web.Request) -> web.StreamResponse:
    """EXACT that answers each request with its method, target and body: a caller sees
    whose answer it got."""
    body = await request.read()
    return web.Response(body=f"{request.method} {request.raw_path}\n".encode() + body)


def seen_targets(upstream: ScriptedUpstream) -> list[str]:
    return [seen.raw_path for seen in upstream.seen]


async def settled(gateway: Gateway) -> None:
    """No caller connection open and nothing in flight: every resource was given back."""

    async def released() -> bool:
        return (
            gateway.listener.open_connections == 0
            and gateway.inflight == 0
            and gateway.resilience.bulkhead.inflight == 0
        )

    await wait_until(released, PATIENCE)


async def still_serves(gateway: Gateway, connect: Connect) -> None:
    """A new caller on a new connection is answered normally."""
    reader, writer = await connect(gateway)
    writer.write(get(f"{PRACTICE}/afterwards", "Connection: close"))
    reply = await read_reply(reader)
    writer.close()
    assert reply.status == 200


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


# -- HTTP/1.0 ----------------------------------------------------------------------------------


async def test_http10_without_keep_alive_is_answered_then_closed(
    gateway: Gateway, connect: Connect
) -> None:
    """HTTP/1.0 closes by default: the answer says Connection: close, then it closes."""
    reader, writer = await connect(gateway)
    writer.write(get(f"{PRACTICE}/details", version="1.0"))
    reply = await read_reply(reader)
    assert reply.status == 200
    assert reply.framing == "length"
    assert reply.header("connection") == "close"
    assert await closed_after(reader) == b""
    writer.close()


async def test_http10_keep_alive_is_honoured_and_said(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream
) -> None:
    """``Connection: keep-alive`` from a 1.0 caller: the answer says so (1.0 closes by
    default) and a second request on the same connection is answered."""
    upstream.handler = echo
    reader, writer = await connect(gateway)
    for name in ("first", "second"):
        writer.write(get(f"{PRACTICE}/{name}", "Connection: keep-alive", version="1.0"))
        reply = await read_reply(reader)
        assert reply.status == 200
        assert reply.header("connection") == "keep-alive"
        assert reply.body == f"GET {PRACTICE}/{name}\n".encode()
    writer.close()


def pieces(count: int, size: int) -> list[bytes]:
    """Distinct pseudo-random pieces, so a lost, repeated or reordered byte shows."""
    rng = random.Random(count * 7919 + size)
    return [rng.randbytes(size) for _ in range(count)]


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


@pytest.mark.parametrize("keep_alive", [False, True], ids=["plain", "keep-alive"])
async def test_an_answer_of_unknown_length_to_http10_ends_with_the_close(
    gateway: Gateway, connect: Connect, streaming: asyncio.Event, keep_alive: bool
) -> None:
    """HTTP/1.0 has no chunked coding: the body is delimited by the close, intact, and the
    answer says Connection: close even when the caller asked to keep the connection."""
    extra = ("X-Pieces: 8:3000", *(["Connection: keep-alive"] if keep_alive else []))
    reader, writer = await connect(gateway)
    writer.write(get(f"{PRACTICE}/Appointments", *extra, version="1.0"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    streaming.set()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in head
    assert b"Transfer-Encoding" not in head
    assert b"Content-Length" not in head
    assert await closed_after(reader) == b"".join(pieces(8, 3000))
    writer.close()


@pytest.mark.parametrize(("count", "size"), [(6, 1000), (80, 65536)], ids=["small", "5MiB"])
async def test_an_answer_of_unknown_length_to_http11_is_chunked_exactly(
    gateway: Gateway, connect: Connect, streaming: asyncio.Event, count: int, size: int
) -> None:
    """The chunked coding decodes to EXACT's bytes, and the connection carries a next
    request afterwards (so the last chunk was framed right)."""
    reader, writer = await connect(gateway)
    writer.write(get(f"{PRACTICE}/Appointments", f"X-Pieces: {count}:{size}"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    streaming.set()
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    reply = await read_reply(reader, head=head)
    assert reply.framing == "chunked"
    assert reply.chunks > 1
    assert reply.body == b"".join(pieces(count, size))
    writer.write(get(f"{PRACTICE}/Appointments", "X-Pieces: 2:10"))
    again = await read_reply(reader)
    assert again.body == b"".join(pieces(2, 10))
    writer.close()


# -- request smuggling -------------------------------------------------------------------------

HIDDEN = get(f"{PRACTICE}/smuggled")
POST_HEAD = f"POST {PRACTICE}/Patients/p/Contact HTTP/1.1\r\nHost: x\r\n".encode()
GET_HEAD = f"GET {PRACTICE}/details HTTP/1.1\r\nHost: x".encode()  # no line end yet
CHUNKED_HIDING = b"0\r\n\r\n" + HIDDEN  # chunked: the body ends at once and HIDDEN follows


@pytest.mark.parametrize(
    "message",
    [
        POST_HEAD
        + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(CHUNKED_HIDING)
        + CHUNKED_HIDING,
        POST_HEAD
        + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n" % len(CHUNKED_HIDING)
        + CHUNKED_HIDING,
        POST_HEAD + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
        POST_HEAD
        + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(HIDDEN), len(HIDDEN))
        + HIDDEN,
        POST_HEAD + b"Content-Length: %d, 0\r\n\r\n" % len(HIDDEN) + HIDDEN,
        POST_HEAD + b"Content-Length: +%d\r\n\r\n" % len(HIDDEN) + HIDDEN,
        POST_HEAD + b"Content-Length: 99999999999999999999999\r\n\r\n" + HIDDEN,
        POST_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + CHUNKED_HIDING,
        POST_HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n" + CHUNKED_HIDING,
        POST_HEAD + b"Transfer-Encoding: chunked, chunked\r\n\r\n" + CHUNKED_HIDING,
        POST_HEAD
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        + CHUNKED_HIDING,
        POST_HEAD + b"Transfer-Encoding: xchunked\r\n\r\n" + CHUNKED_HIDING,
        POST_HEAD + b"Transfer-Encoding: identity\r\n\r\n" + HIDDEN,
        POST_HEAD + b"Transfer-Encoding : chunked\r\n\r\n" + CHUNKED_HIDING,
        POST_HEAD + b"Transfer-Encoding: \x0bchunked\r\n\r\n" + CHUNKED_HIDING,
        POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;\nx\r\nhello\r\n" + CHUNKED_HIDING,
        POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n" + HIDDEN,
        # HTTP/1.0 has no chunked coding: a 1.0 parser would read HIDDEN as the next request.
        f"POST {PRACTICE}/Patients/p/Contact HTTP/1.0\r\nHost: x\r\n".encode()
        + b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        + CHUNKED_HIDING,
        # obs-fold: a parser that unfolds sees one X-A field; one that does not, a TE field.
        POST_HEAD
        + b"X-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n" % len(HIDDEN)
        + HIDDEN,
        get(f"{PRACTICE}/details", "X-A: a", " folded"),
        # Bare LF and bare CR line endings: parsers that disagree on lines disagree on fields.
        f"GET {PRACTICE}/details HTTP/1.1\nHost: x\n\n".encode() + HIDDEN,
        GET_HEAD + b"\nContent-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
        GET_HEAD + b"\rContent-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    ],
    ids=[
        "CL then TE",
        "TE then CL",
        "two Content-Lengths",
        "two equal Content-Lengths",
        "Content-Length list",
        "Content-Length sign",
        "Content-Length overflow",
        "TE gzip, chunked",
        "TE chunked, gzip",
        "TE chunked twice",
        "TE two fields",
        "TE xchunked",
        "TE identity",
        "TE space before colon",
        "TE vertical tab",
        "chunk size bare LF",
        "chunk size overflow",
        "TE in HTTP/1.0",
        "obs-fold hides TE",
        "obs-fold",
        "bare LF",
        "bare LF in a field",
        "bare CR in a field",
    ],
)
async def test_ambiguous_framing_is_refused_and_nothing_hidden_reaches_exact(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream, message: bytes
) -> None:
    """Each way to make two parsers disagree on where a request ends: 400 problem+json,
    the connection closed, and neither the request nor the one hidden in it forwarded."""
    reader, writer = await connect(gateway)
    writer.write(message)
    reply = await read_reply(reader)
    assert reply.status == 400
    reply.problem("bad_request")
    assert reply.header("connection") == "close"
    assert await closed_after(reader) == b""
    writer.close()
    assert upstream.seen == []
    assert sample(gateway, "exact_gateway_rejected_requests_total", {"reason": "bad_request"}) == 1


# -- CONNECT and Upgrade: never a tunnel ---------------------------------------------------------

# What a tunnel would carry: a TLS ClientHello's first bytes, then a request in the clear.
TUNNELLED = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + HIDDEN


@pytest.mark.parametrize(
    "head",
    [
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nContent-Length: 5\r\n\r\nhello",
        f"CONNECT {PRACTICE}/details HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    ],
    ids=["authority", "with a body", "origin-form"],
)
async def test_connect_is_refused_and_never_tunnelled(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream, head: bytes
) -> None:
    """CONNECT gets 400 and a close; the bytes after it are neither relayed nor parsed."""
    reader, writer = await connect(gateway)
    writer.write(head + TUNNELLED)
    reply = await read_reply(reader)
    assert reply.status == 400
    reply.problem("bad_request")
    assert reply.header("connection") == "close"
    assert await closed_after(reader) == b""
    assert upstream.seen == []


@pytest.mark.parametrize(
    "upgrade",
    [
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__",
    ],
    ids=["websocket", "h2c"],
)
async def test_an_upgrade_is_forwarded_without_it_and_never_tunnelled(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream, upgrade: str
) -> None:
    """An upgrade request is answered as a plain request (EXACT never sees the Upgrade), not
    101; the connection closes after the answer, so the frames that follow are never read as
    HTTP."""
    upstream.handler = echo
    reader, writer = await connect(gateway)
    writer.write(
        f"GET {PRACTICE}/details HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n\r\n".encode()
        + b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked websocket text frame
        + HIDDEN
    )
    reply = await read_reply(reader)
    assert reply.status == 200
    assert reply.body == f"GET {PRACTICE}/details\n".encode()
    assert reply.header("upgrade") is None
    assert reply.header("connection") == "close"
    assert await closed_after(reader) == b""
    assert seen_targets(upstream) == [f"{PRACTICE}/details"]
    assert upstream.seen[0].header("upgrade") is None
    assert upstream.seen[0].header("http2-settings") is None


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 11\r\n\r\nhello world",
        b"Transfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    ],
    ids=["length", "chunked"],
)
async def test_an_upgrade_request_with_a_body_is_refused_not_sent_without_it(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream, framing: bytes
) -> None:
    """The parser stops at the head of an upgrade request and never delivers its body: such
    a POST must be refused, not forwarded with its body silently dropped."""
    reader, writer = await connect(gateway)
    writer.write(POST_HEAD + b"Upgrade: websocket\r\nConnection: Upgrade\r\n" + framing + HIDDEN)
    reply = await read_reply(reader)
    assert reply.status == 400
    reply.problem("bad_request")
    assert reply.header("connection") == "close"
    assert await closed_after(reader) == b""
    assert upstream.seen == []


# -- answered before the body was read --------------------------------------------------------

# 200 KiB of body that spells requests: if any of it were read as HTTP, EXACT would see them.
REQUESTS_IN_BODY = get(f"{PRACTICE}/in-body") * (200 * 1024 // len(get(f"{PRACTICE}/in-body")))


def chunked(body: bytes, size: int = 8192) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


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


# -- answers without a body ------------------------------------------------------------------


async def test_head_gets_the_head_only_with_exacts_length(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream
) -> None:
    """HEAD, pipelined with a GET: the HEAD answer keeps EXACT's Content-Length and has no
    body bytes (the GET's answer starts right after its head); the gateway's own refusal of
    a HEAD has none either."""
    upstream.handler = echo
    reader, writer = await connect(gateway)
    writer.write(
        f"HEAD {PRACTICE}/details HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        + f"HEAD {PRACTICE}//details HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        + get(f"{PRACTICE}/next")
    )
    head = await read_reply(reader, "HEAD")
    assert head.status == 200
    assert head.header("content-length") == str(len(f"HEAD {PRACTICE}/details\n"))
    refused = await read_reply(reader, "HEAD")
    assert refused.status == 400
    assert int(refused.header("content-length") or 0) > 0
    after = await read_reply(reader)  # would fail on a stray body byte before its head
    assert (after.status, after.body) == (200, f"GET {PRACTICE}/next\n".encode())


# What a misbehaving EXACT sends, by the target's last segment (raw bytes, no library).
MISBEHAVING = {
    "no-content": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    "not-modified": b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nTransfer-Encoding: chunked\r\n'
    b"\r\n5\r\nhello\r\n0\r\n\r\n",
    "two-dates": b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Date: Tue, 02 Jan 2024 00:00:00 GMT\r\nContent-Length: 2\r\n\r\n{}",
    "no-date": b"HTTP/1.1 200 OK\r\nServer: nginx/1.25.3\r\nContent-Length: 2\r\n\r\n{}",
    "streamed-no-date": b"HTTP/1.1 200 OK\r\nServer: nginx/1.25.3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"x" * 300_000, 65536),
}


@pytest.fixture
async def raw_exact(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> AsyncIterator[Gateway]:
    """A gateway in front of a raw EXACT that answers with MISBEHAVING's bytes (an echo of
    the target otherwise); tokens come from the scripted identity server."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            request = await read_request(reader)
            name = request.target.rsplit("/", 1)[-1]
            body = request.target.encode()
            writer.write(
                MISBEHAVING.get(name)
                or b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
            )
            await writer.drain()

    peer = await Peer(serve).start()
    settings = gateway_settings(peer.url, token_url=f"{upstream.url}/connect/token")
    yield await start_gateway(settings)
    await peer.stop()


@pytest.mark.parametrize("name", ["no-content", "not-modified"])
async def test_204_and_304_never_carry_a_body_even_when_exact_sends_one(
    raw_exact: Gateway, connect: Connect, name: str
) -> None:
    """EXACT sends body bytes after a 204 or 304: the caller gets the head alone (and no
    framing field that promises a body), and the next answer on its connection is intact."""
    reader, writer = await connect(raw_exact)
    writer.write(get(f"{PRACTICE}/{name}") + get(f"{PRACTICE}/next"))
    reply = await read_reply(reader)
    assert reply.status in {204, 304}
    assert reply.header("transfer-encoding") is None
    if reply.status == 204:
        assert reply.header("content-length") is None  # RFC 9110 8.6: never on a 204
    after = await read_reply(reader)  # would fail on a stray body byte before its head
    assert (after.status, after.body) == (200, f"{PRACTICE}/next".encode())


@pytest.mark.parametrize("name", ["no-date", "streamed-no-date", "two-dates"])
async def test_an_answer_from_exact_without_date_or_with_two_gets_one(
    raw_exact: Gateway, connect: Connect, name: str
) -> None:
    """EXACT's relay names its software and sends no Date, or two: the caller gets one
    Date and no Server, whether the answer is written whole or streamed."""
    reader, writer = await connect(raw_exact)
    writer.write(get(f"{PRACTICE}/{name}"))
    reply = await read_reply(reader)
    assert reply.status == 200
    assert len(reply.all("date")) == 1
    assert reply.all("server") == []


async def test_exacts_server_field_is_dropped_and_each_answer_has_one_date(
    gateway: Gateway, connect: Connect, streaming: asyncio.Event
) -> None:
    """EXACT (aiohttp here) sends Server and Date: whole, streamed and refused answers alike
    carry one Date and no Server, on one keep-alive connection."""
    reader, writer = await connect(gateway)
    writer.write(get(f"{PRACTICE}/details"))
    whole = await read_reply(reader)
    writer.write(get(f"{PRACTICE}/Appointments", "X-Pieces: 4:20000"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    streaming.set()
    streamed = await read_reply(reader, head=head)
    writer.write(f"PROPFIND {PRACTICE}/details HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    refused = await read_reply(reader)
    assert (whole.status, whole.framing) == (200, "length")
    assert (streamed.status, streamed.framing) == (200, "chunked")
    assert refused.status == 405
    for reply in (whole, streamed, refused):
        assert len(reply.all("date")) == 1
        assert reply.all("server") == []
