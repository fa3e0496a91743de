"""The upstream edge at the proxy level: a gateway in front of raw scripted upstreams.

Each test's EXACT is a raw asyncio server (tests/raw_peers.py) that writes exactly the bytes
the test scripts, including answers no HTTP library would write; tokens come from the
ordinary scripted identity server. Callers talk to the gateway over real sockets with
aiohttp's client. What is checked is what a caller gets, and what the gateway's pool and
metrics say about the connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from prometheus_client import generate_latest

from gateway.app import Gateway
from tests.fakes import GatewayFactory, ScriptedUpstream, gateway_settings, proxy_url, wait_until
from tests.raw_peers import Peer, Request, read_request

PATIENCE = 10.0
DETAILS = "/v1/Practices/UKEDGE1/details"
# One answer per request: the bytes to write (None: close without answering).
Script = Callable[[Request, int], bytes | None]


def ok(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\n" + head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def echo(request: Request, _: int) -> bytes | None:
    """Each request is answered with its own target: a caller can see whose answer it got."""
    return ok(request.target.encode(), "Content-Type: text/plain")


@pytest.fixture
async def raw_gateway(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> AsyncIterator[Callable[[Script], Awaitable[tuple[Gateway, Peer]]]]:
    peers: list[Peer] = []

    async def start(script: Script) -> tuple[Gateway, Peer]:
        async def handler(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
        ) -> None:
            while True:
                request = await read_request(reader)
                answer = script(request, index)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()

        peer = await Peer(handler).start()
        peers.append(peer)
        settings = gateway_settings(
            peer.url, token_url=f"{upstream.url}/connect/token", attempt_timeout_seconds=5
        )
        return await start_gateway(settings), peer

    yield start
    for peer in peers:
        await peer.stop()


def closed(gateway: Gateway, cause: str) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "exact_gateway_upstream_connections_closed_total", {"cause": cause}
    )
    return value or 0.0


async def get(
    client: aiohttp.ClientSession, gateway: Gateway, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    async with client.request(method, proxy_url(gateway, path)) as resp:
        return resp.status, dict(resp.headers), await resp.read()


# -- the desync guard ------------------------------------------------------------------------

STRAYS = {
    # More bytes than Content-Length said, in a later segment: a whole second answer.
    "surplus after Content-Length": ("GET", ok(b"/first"), ok(b"/first")),
    # A body after an answer to HEAD (which never has one).
    "body after HEAD": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", b"/first"),
    # A body after a 204.
    "body after 204": ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", ok(b"/first")),
}


@pytest.mark.parametrize("case", list(STRAYS), ids=list(STRAYS))
async def test_a_stray_answer_never_reaches_another_caller(
    raw_gateway: Callable[[Script], Awaitable[tuple[Gateway, Peer]]], case: str
) -> None:
    """The first connection answers the first request, then writes stray bytes shaped like
    an answer to it. That connection is closed (counted as stray_bytes); every later caller,
    one after another, gets the answer to its own request."""
    method, answer, stray = STRAYS[case]
    strays_sent = asyncio.Event()

    def script(request: Request, connection: int) -> bytes | None:
        if connection == 0 and request.target == "/v1/Practices/UKEDGE1/first":
            asyncio.get_running_loop().call_soon(strays_sent.set)
            return answer
        return echo(request, connection)

    gateway, peer = await raw_gateway(script)
    async with aiohttp.ClientSession() as client:
        status, _, _ = await get(client, gateway, "/v1/Practices/UKEDGE1/first", method)
        assert status in {200, 204}
        await asyncio.wait_for(strays_sent.wait(), PATIENCE)
        for writer in peer.writers[:1]:
            writer.write(stray)  # a later segment, after the answer went out

        async def stray_seen() -> bool:
            return closed(gateway, "stray_bytes") == 1

        await wait_until(stray_seen, PATIENCE)
        for n in range(5):
            path = f"/v1/Practices/UKEDGE1/Patients/p{n}"
            status, _, body = await get(client, gateway, path)
            assert (status, body) == (200, path.encode())
    assert peer.accepted == 2  # the poisoned connection was replaced, the new one reused
    exposition = generate_latest(gateway.metrics.registry).decode()
    assert 'exact_gateway_upstream_connections_closed_total{cause="stray_bytes"} 1.0' in exposition


# -- correct HTTP ----------------------------------------------------------------------------


async def test_chunked_answer_is_passed_whole_and_trailers_dropped(
    raw_gateway: Callable[[Script], Awaitable[tuple[Gateway, Peer]]],
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Digest\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Digest: abc\r\n\r\n"
    )
    gateway, peer = await raw_gateway(lambda r, i: chunked if r.target == DETAILS else echo(r, i))
    async with aiohttp.ClientSession() as client:
        status, headers, body = await get(client, gateway, DETAILS)
        assert (status, body) == (200, b"hello world")
        assert "X-Digest" not in headers
        status, _, body = await get(client, gateway, "/v1/Practices/UKEDGE1/next")
        assert (status, body) == (200, b"/v1/Practices/UKEDGE1/next")
    assert peer.accepted == 1  # the chunked answer ended cleanly: the connection was reused


@pytest.mark.parametrize(
    ("method", "answer", "status"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", 200),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", 204),
        ("GET", b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n', 304),
    ],
    ids=["HEAD", "204", "304"],
)
async def test_answers_without_a_body_end_at_their_head_and_the_connection_is_reused(
    raw_gateway: Callable[[Script], Awaitable[tuple[Gateway, Peer]]],
    method: str,
    answer: bytes,
    status: int,
) -> None:
    gateway, peer = await raw_gateway(lambda r, i: answer if r.target == DETAILS else echo(r, i))
    async with aiohttp.ClientSession() as client:
        got, headers, body = await get(client, gateway, DETAILS, method)
        assert (got, body) == (status, b"")
        if method == "HEAD":
            assert headers["Content-Length"] == "1234"  # EXACT's length, for the GET
        got, _, body = await get(client, gateway, "/v1/Practices/UKEDGE1/next")
        assert (got, body) == (200, b"/v1/Practices/UKEDGE1/next")
    assert peer.accepted == 1


async def test_read_until_close_is_passed_whole_and_never_reused(
    raw_gateway: Callable[[Script], Awaitable[tuple[Gateway, Peer]]],
) -> None:
    """No length and not chunked: the close ends the body; the connection is not reused."""
    body = b"x" * 100_000

    def script(request: Request, connection: int) -> bytes | None:
        if request.target == DETAILS:
            return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body
        return echo(request, connection)

    # The peer answers and waits for a next request that never comes: the test closes the
    # connection, and the close is what ends the body.
    gateway, peer = await raw_gateway(script)

    async with aiohttp.ClientSession() as client:
        request = asyncio.create_task(get(client, gateway, DETAILS))

        async def answered() -> bool:
            return len(peer.writers) == 1 and peer.writers[0].transport.get_write_buffer_size() == 0

        await wait_until(answered, PATIENCE)
        peer.writers[0].close()  # the close is the framing
        status, _, got = await asyncio.wait_for(request, PATIENCE)
        assert (status, got) == (200, body)
        status, _, got = await get(client, gateway, "/v1/Practices/UKEDGE1/next")
        assert status == 200
    assert peer.accepted == 2
    assert closed(gateway, "framing") == 1


async def test_interim_1xx_heads_are_skipped(
    raw_gateway: Callable[[Script], Awaitable[tuple[Gateway, Peer]]],
) -> None:
    early = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
    )
    gateway, _ = await raw_gateway(lambda r, i: early + ok(b"final"))
    async with aiohttp.ClientSession() as client:
        status, headers, body = await get(client, gateway, DETAILS)
    assert (status, body) == (200, b"final")
    assert "Link" not in headers


BAD_ANSWERS = {
    "101 not asked for": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
    b"Connection: Upgrade\r\n\r\n",
    "status above 599": b"HTTP/1.1 600 Strange\r\nContent-Length: 0\r\n\r\n",
    "status below 100": b"HTTP/1.1 099 Early\r\nContent-Length: 0\r\n\r\n",
    "status not a number": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "oversized header section": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 1000) for n in range(70))
    + b"Content-Length: 0\r\n\r\n",
    "space in a header name": b"HTTP/1.1 200 OK\r\nBad Name: v\r\nContent-Length: 0\r\n\r\n",
    "NUL in a header value": b"HTTP/1.1 200 OK\r\nX-V: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "two different lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS), ids=list(BAD_ANSWERS))
async def test_an_unusable_answer_is_a_502_upstream_bad_response(
    raw_gateway: Callable[[Script], Awaitable[tuple[Gateway, Peer]]], case: str
) -> None:
    """Never a 500, never EXACT's bytes passed on: 502 upstream_bad_response, in the
    contract's format; the connection is closed and the next request works."""
    answer = BAD_ANSWERS[case]
    gateway, _ = await raw_gateway(lambda r, i: answer if r.target == DETAILS else echo(r, i))
    async with aiohttp.ClientSession() as client:
        status, headers, body = await get(client, gateway, DETAILS)
        assert status == 502
        assert headers["X-Gateway-Error"] == "upstream_bad_response"
        problem = json.loads(body)
        assert problem["reason"] == "upstream_bad_response"
        assert problem["request_id"] == headers["X-Request-ID"]
        status, _, body = await get(client, gateway, "/v1/Practices/UKEDGE1/next")
        assert (status, body) == (200, b"/v1/Practices/UKEDGE1/next")
    attempts = gateway.metrics.registry.get_sample_value(
        "exact_gateway_upstream_attempts_total",
        {"route": "/v1/Practices/{practiceId}/details", "outcome": "upstream_bad_response"},
    )
    assert attempts == 1  # not retried: an unusable answer is not a transient failure


async def test_a_connection_closed_mid_body_cuts_the_callers_answer(
    raw_gateway: Callable[[Script], Awaitable[tuple[Gateway, Peer]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The status line is already sent: the caller sees a short body and a closed
    connection, never a silently complete-looking answer; the access line says why."""
    gateway, peer = await raw_gateway(
        lambda r, i: b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"y" * 300_000
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, DETAILS)) as resp:
            assert resp.status == 200

            async def all_sent() -> bool:
                writers = peer.writers
                return len(writers) == 1 and writers[0].transport.get_write_buffer_size() == 0

            await wait_until(all_sent, PATIENCE)
            peer.writers[0].transport.abort()
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()

    async def logged() -> bool:
        return any(
            getattr(r, "fields", {}).get("error") == "stream_aborted:ConnectionLost"
            for r in caplog.records
        )

    await wait_until(logged, PATIENCE)
