"""Raw-socket helpers for the proxy port's HTTP/1.1 tests: write bytes, read answers off the
wire as they come (fields in order, how the body was delimited), and check that a gateway gave
every resource back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from gateway.app import Gateway
from tests.fakes import ScriptedUpstream, wait_until
from tests.integration.test_caller_edge import PATIENCE, assert_problem

PRACTICE = "/v1/Practices/UKTEST1"
POST_HEAD = f"POST {PRACTICE}/Patients/p/Contact HTTP/1.1\r\nHost: x\r\n".encode()


def chunked(body: bytes, size: int = 8192) -> bytes:
    """``body`` in chunked transfer coding, ``size`` bytes a chunk."""
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


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


@asynccontextmanager
async def connections() -> AsyncIterator[Connect]:
    """Open caller connections to a gateway's proxy port; all are closed at the end."""
    writers: list[asyncio.StreamWriter] = []

    async def open_one(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
        writers.append(writer)
        return reader, writer

    try:
        yield open_one
    finally:
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


def pieces(count: int, size: int) -> list[bytes]:
    """Distinct pseudo-random pieces, so a lost, repeated or reordered byte shows."""
    rng = random.Random(count * 7919 + size)
    return [rng.randbytes(size) for _ in range(count)]
