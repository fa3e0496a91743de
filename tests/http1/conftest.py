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

import pytest

from gateway.http1 import UpstreamClient
from tests.raw_peers import Handler, Peer, Request, read_request

__all__ = ["Handler", "Peer", "Request", "read_request"]


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
