"""The proxy port's own HTTP/1.1 server: how answers are framed, and framing it refuses.

HTTP/1.0 keep-alive and read-to-close bodies, chunked answers, no request smuggled past the
parser, no tunnel, no body on HEAD, 204 or 304, one Date and no Server. Each test writes raw
bytes on a real socket and reads the answer bytes as they come; the scripted upstream (or a
raw asyncio peer, for answers no library would write) plays EXACT and records what reached
it, which is how a smuggled request would show.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.app import Gateway
from tests.fakes import GatewayFactory, ScriptedUpstream, gateway_settings
from tests.integration.test_caller_edge import PATIENCE, sample
from tests.integration.wire import (
    POST_HEAD,
    PRACTICE,
    Connect,
    chunked,
    closed_after,
    echo,
    get,
    pieces,
    read_reply,
    seen_targets,
)
from tests.raw_peers import Peer, read_request

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


@pytest.mark.parametrize("version", ["2.0", "0.9", "1.2", "3.0"])
async def test_a_request_line_claiming_another_http_version_is_refused(
    gateway: Gateway, connect: Connect, upstream: ScriptedUpstream, version: str
) -> None:
    """Only HTTP/1.0 and 1.1 are spoken: any other version on a request line is refused with
    400 and the connection closed, never passed on to EXACT as 1.1."""
    reader, writer = await connect(gateway)
    writer.write(f"GET {PRACTICE}/details HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    reply = await read_reply(reader)
    assert reply.status == 400
    reply.problem("bad_request")
    assert await closed_after(reader) == b""
    assert upstream.seen == []
