"""Scripted upstreams for the HTTP/1.1 client: raw asyncio servers on 127.0.0.1.

Each test scripts what its upstream writes, byte for byte, so that malformed, stray and
hostile answers can be produced at will; no HTTP library stands between the test and the
socket. ``Peer`` runs one handler per accepted connection and records them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.http1 import UpstreamClient


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


async def read_request(reader: asyncio.StreamReader) -> Request:
    """One request as the upstream receives it (Content-Length or chunked body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [(k, v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if line)]
    req = Request(method, target, headers, b"")
    if (length := req.header("content-length")) is not None:
        req.body = await reader.readexactly(int(length))
    elif (req.header("transfer-encoding") or "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        req.body = b"".join(parts)
    return req


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class Peer:
    """A listening socket whose connections are served by ``handler`` (with their index)."""

    handler: Handler
    ssl: ssl.SSLContext | None = None
    server: asyncio.Server | None = None
    accepted: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.accepted
        self.accepted += 1
        self.writers.append(writer)
        try:
            await self.handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up (what several tests are about), or the test ended
        finally:
            writer.close()

    async def start(self) -> Peer:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.append(task)
            await self._serve(reader, writer)

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.ssl)
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Peer]]]:
    peers: list[Peer] = []

    async def start(handler: Handler, ssl: ssl.SSLContext | None = None) -> Peer:
        peer = await Peer(handler, ssl).start()
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        await peer.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., UpstreamClient]]:
    """Build clients (connect time-out 5 s unless told) that are closed after the test."""
    made: list[UpstreamClient] = []

    def make(base_url: str, **options: object) -> UpstreamClient:
        options.setdefault("connect_timeout", 5.0)
        client = UpstreamClient(base_url, **options)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds (polling the loop), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def response(body: bytes = b"ok", status: str = "200 OK", *extra: str) -> bytes:
    """A well-framed response with Content-Length."""
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


TIMEOUTS = {"header_timeout": 10.0, "read_timeout": 10.0}


async def get(client: UpstreamClient, target: str = "/", method: str = "GET") -> tuple[int, bytes]:
    """One request, body read, connection released: (status, body)."""
    resp = await client.request(
        method,
        target,
        [],
        header_timeout=TIMEOUTS["header_timeout"],
        read_timeout=TIMEOUTS["read_timeout"],
    )
    body = await resp.read()
    resp.release()
    return resp.status, body
