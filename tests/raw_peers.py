"""Raw scripted upstreams: asyncio servers on 127.0.0.1 that write exactly the bytes a test
scripts, so that malformed, stray and hostile answers can be produced at will (no HTTP library
stands between the test and the socket). Used by the client's tests (tests/http1) and by the
proxy-level tests of the upstream edge."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


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
