"""The admin port's edge over real sockets: hostile and broken callers meet their bounds there too.

The proxy port runs on the gateway's own HTTP/1.1 server; the admin port (probes, metrics,
the status page, pauses) still runs aiohttp's low-level server through
:class:`~gateway.caller.server.Listener` and :class:`~gateway.caller.connection.CallerConnection`.
Raw asyncio sockets play the callers no HTTP client would be (slowloris, a stalled body, a
reader that never reads, a flood of connections), against a gateway in-process with short
limits. The one admin endpoint that reads a body, ``PUT /pauses/{id}``, needs the fleet's
Redis: those tests run a real ``redis-server``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.pauses import MAX_ENTRY_BYTES
from gateway.status_page import PAGE
from tests.fakes import GatewayFactory, ScriptedUpstream, gateway_settings, wait_until
from tests.fleet.conftest import RedisServer
from tests.integration.test_caller_edge import (
    FAST,
    PATIENCE,
    answer_while_trickling,
    assert_problem,
    read_answer,
    read_to_eof,
)

PAUSE = b'{"pause_until": "2099-01-01T00:00:00Z", "note": "migration"}'

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def admin() -> AsyncIterator[AdminCallers]:
    """Open raw connections to gateways' admin ports; all are closed after the test."""
    callers = AdminCallers()
    yield callers
    callers.close()


class AdminCallers:
    """Raw caller connections to a gateway's admin port."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, gateway: Gateway, *, rcvbuf: int | None = None) -> Connection:
        """A new connection (``rcvbuf``: a small receive buffer, set before connecting so the
        window the gateway sees stays small)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gateway.admin_port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        self.writers.append(writer)
        return reader, writer

    async def status_of(self, gateway: Gateway, path: str = "/healthz") -> int:
        """The status of one GET on a new connection (503 when the port is full)."""
        reader, writer = await self.open(gateway)
        writer.write(get(path, "Connection: close"))
        status, _, _ = await read_answer(reader)
        writer.close()
        return status

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def get(path: str, *extra: str) -> bytes:
    fields = "".join(f"{line}\r\n" for line in ("Host: 127.0.0.1", *extra))
    return f"GET {path} HTTP/1.1\r\n{fields}\r\n".encode()


def put_pause(practice_id: str, length: int, *extra: str) -> bytes:
    """The head of a pause request promising ``length`` body bytes."""
    fields = "".join(
        f"{line}\r\n"
        for line in (
            "Host: 127.0.0.1",
            "Content-Type: application/json",
            f"Content-Length: {length}",
            *extra,
        )
    )
    return f"PUT /pauses/{practice_id} HTTP/1.1\r\n{fields}\r\n".encode()


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The admin listener's 'request refused' lines, as their fields."""
    return [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "exact_gateway.listener"
        and getattr(r, "fields", {}).get("listener") == "admin"
        and r.fields.get("event") == "request"  # type: ignore[attr-defined]
    ]


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
async def fast_gateway(upstream: ScriptedUpstream, start_gateway: GatewayFactory) -> Gateway:
    return await start_gateway(gateway_settings(upstream.url, **FAST))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pausing_gateway(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory, redis_server: RedisServer
) -> Gateway:
    """A gateway whose fleet pauses are on (so PUT /pauses/{id} reads its body), once its
    Redis link is up."""
    settings = gateway_settings(upstream.url, redis_url=redis_server.url, **FAST)
    gateway = await start_gateway(settings)

    async def link_up() -> bool:
        pauses = gateway.fleet.pauses if gateway.fleet is not None else None
        return pauses is not None and pauses.available

    await wait_until(link_up, PATIENCE)
    return gateway


# -- heads ---------------------------------------------------------------------------------


async def test_a_head_trickling_in_gets_408_then_the_connection_closes(
    fast_gateway: Gateway, admin: AdminCallers, caplog: pytest.LogCaptureFixture
) -> None:
    """A head arriving byte by byte never completes within REQUEST_HEAD_TIMEOUT_SECONDS:
    408 request_timeout as problem+json, Connection: close, then the connection closes."""
    reader, writer = await admin.open(fast_gateway)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    status, headers, body = await answer_while_trickling(reader, writer)
    assert status == 408
    assert headers["connection"] == "close"
    assert_problem(status, headers, body, "request_timeout")
    assert await read_to_eof(reader) == b""
    (line,) = refusal_lines(caplog)
    assert (line["status"], line["error"]) == (408, "request_timeout")
    assert line["request_id"] == headers["x-request-id"]
    assert no_errors_logged(caplog)


async def test_a_silent_connection_and_an_idle_keep_alive_one_are_closed(
    fast_gateway: Gateway, admin: AdminCallers, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that says nothing is closed after the head time-out, without an answer
    (there was no request); a keep-alive one is closed after KEEPALIVE_IDLE_SECONDS."""
    silent_reader, _ = await admin.open(fast_gateway)
    idle_reader, idle = await admin.open(fast_gateway)
    idle.write(get("/healthz"))
    status, headers, _ = await read_answer(idle_reader)
    assert status == 200
    assert headers.get("connection") != "close"  # kept alive...
    assert await read_to_eof(idle_reader) == b""  # ...until idle too long
    assert await read_to_eof(silent_reader) == b""
    assert refusal_lines(caplog) == []


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(130))
            + b"\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (
            # Within every per-line limit, over the total, in one piece.
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 4000) for i in range(10))
            + b"\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: dddd\r\n\r\n", 400, "bad_request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03eeee\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \x01ffff\r\n\r\n", 400, "bad_request"),
    ],
)
async def test_refusals_come_out_in_the_contract_format(
    fast_gateway: Gateway,
    admin: AdminCallers,
    caplog: pytest.LogCaptureFixture,
    *,
    head: bytes,
    status: int,
    reason: str,
) -> None:
    """Oversized targets, fields and heads, too many fields, malformed heads and TLS bytes:
    problem+json with X-Request-ID, no Server banner, none of the caller's bytes quoted,
    the connection closed, one refusal logged at info and nothing at error."""
    reader, writer = await admin.open(fast_gateway)
    writer.write(head)
    got, headers, body = await read_answer(reader)
    assert got == status
    assert_problem(got, headers, body, reason)
    for quoted in (b"aaaa", b"bbbb", b"cccc", b"dddd", b"eeee", b"ffff", b"X-1", b"\x16"):
        assert quoted not in body
    assert await read_to_eof(reader) == b""
    (line,) = refusal_lines(caplog)
    assert (line["status"], line["error"]) == (status, reason)
    assert no_errors_logged(caplog)
    # The port still answers everyone else.
    assert await admin.status_of(fast_gateway) == 200


async def test_a_head_growing_in_pieces_past_the_cap_gets_431(
    fast_gateway: Gateway, admin: AdminCallers
) -> None:
    """Header lines each within limits, sent one at a time: refused with 431 once the total
    passes MAX_REQUEST_HEAD_BYTES, before the parser holds more, and closed."""
    reader, writer = await admin.open(fast_gateway)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for index in range(20):
        writer.write(b"X-%d: %s\r\n" % (index, b"d" * 4000))
        await writer.drain()
    status, headers, body = await read_answer(reader)
    assert status == 431
    assert_problem(status, headers, body, "request_header_fields_too_large")
    assert await read_to_eof(reader) == b""


# -- bodies --------------------------------------------------------------------------------


async def test_a_body_nobody_reads_that_stops_arriving_does_not_hold_the_connection(
    fast_gateway: Gateway, admin: AdminCallers
) -> None:
    """PUT /pauses/X with the fleet off is answered on its head alone; the rest of the body
    never comes, and the connection is closed (by the body-idle limit) instead of hanging."""
    reader, writer = await admin.open(fast_gateway)
    writer.write(put_pause("UKTEST1", 1000) + b"{")
    status, _, body = await read_answer(reader)
    assert status == 409
    assert json.loads(body)["reason"] == "fleet_pauses_off"
    assert await read_to_eof(reader) == b""
    assert await admin.status_of(fast_gateway) == 200


async def test_a_body_sent_after_its_answer_is_dropped_and_the_connection_kept(
    fast_gateway: Gateway, admin: AdminCallers
) -> None:
    """A body the handler did not need, arriving whole after the answer, is read and
    dropped, and the same connection serves the next request (never parsed as one)."""
    reader, writer = await admin.open(fast_gateway)
    writer.write(put_pause("UKTEST1", len(PAUSE)))
    status, headers, _ = await read_answer(reader)
    assert status == 409
    assert headers.get("connection") != "close"
    writer.write(PAUSE)
    writer.write(get("/healthz"))
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)) == (200, {"status": "ok"})


async def test_a_pause_body_that_stops_arriving_gets_408(
    pausing_gateway: Gateway, admin: AdminCallers, caplog: pytest.LogCaptureFixture
) -> None:
    """A pause whose body never arrives (a Content-Length and nothing after the head) is cut
    off after REQUEST_BODY_IDLE_SECONDS while the handler waits to read it: 408
    request_timeout, never a 500, nothing logged at error."""
    reader, writer = await admin.open(pausing_gateway)
    writer.write(put_pause("UKTEST1", len(PAUSE)))
    status, headers, body = await read_answer(reader)
    assert status == 408
    assert_problem(status, headers, body, "request_timeout")
    assert headers["connection"] == "close"
    assert await read_to_eof(reader) == b""
    assert no_errors_logged(caplog)
    # Nothing was paused.
    assert pausing_gateway.fleet is not None
    breakers = await admin_get_json(admin, pausing_gateway, "/breakers")
    assert breakers["paused"] == []


async def test_expect_100_continue_then_a_body_that_never_comes_gets_408(
    pausing_gateway: Gateway, admin: AdminCallers, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller told 100 Continue that then sends nothing is held to the body-idle limit
    like any other: 408, closed, never a connection held for ever."""
    reader, writer = await admin.open(pausing_gateway)
    writer.write(put_pause("UKTEST1", len(PAUSE), "Expect: 100-continue"))
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    status, headers, body = await read_answer(reader)
    assert status == 408
    assert_problem(status, headers, body, "request_timeout")
    assert await read_to_eof(reader) == b""
    assert no_errors_logged(caplog)


async def test_expect_100_continue_then_the_body_is_stored_and_the_connection_kept(
    pausing_gateway: Gateway, admin: AdminCallers
) -> None:
    """A careful client waits for 100 Continue, then sends the pause: stored, and the
    connection stays open for its next request (it sent everything it promised)."""
    reader, writer = await admin.open(pausing_gateway)
    writer.write(put_pause("UKTEST1", len(PAUSE), "Expect: 100-continue"))
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(PAUSE)
    status, headers, body = await read_answer(reader)
    assert status == 200, body
    assert json.loads(body)["practice_id"] == "UKTEST1"
    assert headers.get("connection") != "close"
    writer.write(get("/healthz"))
    assert (await read_answer(reader))[0] == 200


async def test_a_pause_body_arriving_in_two_pieces_is_read_whole(
    pausing_gateway: Gateway, admin: AdminCallers
) -> None:
    """A body split across TCP segments (a slow link, a proxy) is read to its end before it
    is parsed: the pause is stored, not refused as half a JSON document."""
    reader, writer = await admin.open(pausing_gateway)
    half = len(PAUSE) // 2
    writer.write(put_pause("UKTEST1", len(PAUSE)) + PAUSE[:half])
    await writer.drain()
    # Not a wait for a condition: the pause makes the rest a segment of its own, which the
    # gateway has started reading before it arrives.
    await asyncio.sleep(0.1)
    writer.write(PAUSE[half:])
    status, _, body = await read_answer(reader)
    assert status == 200, body
    assert json.loads(body)["practice_id"] == "UKTEST1"


async def test_a_chunked_pause_body_past_the_bound_gets_413(
    pausing_gateway: Gateway, admin: AdminCallers
) -> None:
    """Without a Content-Length the bound is enforced while reading: a chunked body larger
    than a pause can be is refused 413, not parsed (and nothing is paused)."""
    reader, writer = await admin.open(pausing_gateway)
    body = b'{"pause_until": "2030-01-01T00:00:00Z", "note": "' + b"n" * (2 * MAX_ENTRY_BYTES)
    head = (
        b"PUT /pauses/UKTEST1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(head + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body))
    status, _, answer = await read_answer(reader)
    assert status == 413
    assert json.loads(answer)["reason"] == "pause_invalid"
    breakers = await admin_get_json(admin, pausing_gateway, "/breakers")
    assert "UKTEST1" not in json.dumps(breakers)


async def admin_get_json(admin: AdminCallers, gateway: Gateway, path: str) -> dict[str, object]:
    reader, writer = await admin.open(gateway)
    writer.write(get(path, "Connection: close"))
    status, _, body = await read_answer(reader)
    writer.close()
    assert status == 200
    document: dict[str, object] = json.loads(body)
    return document


# -- answers the caller does not read -------------------------------------------------------


async def test_a_caller_that_never_reads_is_cut_off_and_its_connection_released(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory, admin: AdminCallers
) -> None:
    """Status pages asked for in a pipeline by a caller that reads nothing: once the kernel
    takes no more for RESPONSE_WRITE_IDLE_SECONDS the connection is aborted (the caller
    never gets all its pages), and the port, allowed one connection, serves again."""
    gateway = await start_gateway(gateway_settings(upstream.url, admin_max_connections=1, **FAST))
    reader, writer = await admin.open(gateway, rcvbuf=4096)
    pages = 400  # 17 KiB each: far more than the two sockets' buffers hold
    writer.write(get("/") * pages)

    async def released() -> bool:
        return await admin.status_of(gateway) == 200

    await wait_until(released, PATIENCE)
    received = 0
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), PATIENCE):
            received += len(chunk)
    except ConnectionResetError:
        pass  # the abort, once the kernel's buffers are read
    assert received < pages * len(PAGE)


# -- connections ---------------------------------------------------------------------------


async def test_past_the_admin_cap_new_connections_get_503_and_service_resumes(
    upstream: ScriptedUpstream,
    start_gateway: GatewayFactory,
    admin: AdminCallers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past ADMIN_MAX_CONNECTIONS a new connection gets 503 gateway_busy and is closed; the
    proxy port is untouched; two log lines in all; the admin port serves again once the
    held connections close."""
    gateway = await start_gateway(gateway_settings(upstream.url, admin_max_connections=3))
    held = [await admin.open(gateway) for _ in range(3)]
    for _, writer in held:  # each proves it was let in
        writer.write(get("/healthz"))
    for reader, _ in held:
        assert (await read_answer(reader))[0] == 200
    for _ in range(10):
        reader, writer = await admin.open(gateway)
        status, headers, body = await read_answer(reader)
        assert status == 503
        assert_problem(status, headers, body, "gateway_busy")
        assert headers["retry-after"] == "1"
        assert await read_to_eof(reader) == b""
    assert gateway.listener.open_connections == 0  # the proxy port's count is its own
    for _, writer in held:
        writer.close()

    async def served() -> bool:
        return await admin.status_of(gateway) == 200

    await wait_until(served, PATIENCE)
    events = [
        getattr(r, "fields", {}).get("event")
        for r in caplog.records
        if r.name == "exact_gateway.listener"
        and getattr(r, "fields", {}).get("listener") == "admin"
    ]
    assert events == ["connection_limit", "connection_limit_cleared"]


async def test_draining_closes_idle_connections_and_answers_the_request_under_way(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory, admin: AdminCallers
) -> None:
    """When the admin port closes, an idle keep-alive connection is closed at once, one that
    has said nothing is closed too, and a request whose head is still arriving is let
    finish: its answer says Connection: close. (Limits far longer than the test: any closing
    seen is the drain's.)"""
    gateway = await start_gateway(gateway_settings(upstream.url, **dict.fromkeys(FAST, 60)))
    idle_reader, idle = await admin.open(gateway)
    idle.write(get("/healthz"))
    assert (await read_answer(idle_reader))[0] == 200
    silent_reader, _ = await admin.open(gateway)
    busy_reader, busy = await admin.open(gateway)
    busy.write(b"GET /readyz HTTP/1.1\r\n")
    await busy.drain()
    stopping = asyncio.create_task(gateway.shutdown())
    assert await read_to_eof(idle_reader) == b""
    busy.write(b"Host: 127.0.0.1\r\n\r\n")
    status, headers, body = await read_answer(busy_reader)
    assert status == 503
    assert json.loads(body)["reason"] == "draining"
    assert headers["connection"] == "close"
    assert await read_to_eof(busy_reader) == b""
    assert await read_to_eof(silent_reader) == b""
    await stopping
