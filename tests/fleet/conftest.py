"""A real ``redis-server`` per test, a TCP proxy that can hold Redis's answers, and a wait.

Each test gets its own ``redis-server`` (the Debian package, installed by
``tests/system-deps.sh``) on a free loopback port, with persistence off, in the test's tmp
directory; it is stopped (or killed, or restarted on the same port) by the test and always
stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.fleet.redis_link import LinkPolicy, RedisLink

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1:<port>; start, kill and start again."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            # DEBUG SLEEP is refused by default since Redis 7; the slow-Redis test uses it.
            "--enable-debug-command",
            "local",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn,
            ):
                conn.sendall(b"PING\r\n")
                answer = conn.recv(64)
                if answer.startswith((b"+PONG", b"-NOAUTH")):
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 30 s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word, as a crashed node does."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class HoldingProxy:
    """A loopback TCP proxy in front of Redis that can hold Redis's answers (a slow or
    frozen Redis, seen from the client): while ``hold`` is set, bytes from Redis are kept
    back; clearing it lets them through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.held_bytes = 0
        self._release = asyncio.Event()
        self._release.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        tasks = {
            asyncio.create_task(self._pipe(reader, up_writer, held=False)),
            asyncio.create_task(self._pipe(up_reader, writer, held=True)),
        }
        self._tasks |= tasks
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            self._tasks -= tasks
            writer.close()
            up_writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, held: bool
    ) -> None:
        while data := await reader.read(65536):
            if held and not self._release.is_set():
                self.held_bytes += len(data)
                await self._release.wait()
            writer.write(data)
            await writer.drain()


@pytest.fixture
async def holding_proxy(redis_server: RedisServer) -> AsyncIterator[HoldingProxy]:
    proxy = HoldingProxy(redis_server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def eventually(predicate: Callable[[], bool], *, within: float = 20.0) -> None:
    """Wait until ``predicate()`` holds (checked every 10 ms); fail after ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# Fast reconnects so the tests do not wait for the production backoff; a time-out wider than
# production's 50 ms so that a loaded 2-core machine does not make a healthy Redis look slow.
TEST_POLICY = LinkPolicy(timeout=0.25, reconnect_base=0.05, reconnect_max=0.2)


@pytest.fixture
async def make_link() -> AsyncIterator[Callable[..., RedisLink]]:
    """Links closed at the end of the test, each with its own registry."""
    links: list[RedisLink] = []

    def make(
        url: str, policy: LinkPolicy = TEST_POLICY, registry: CollectorRegistry | None = None
    ) -> RedisLink:
        link = RedisLink(url, registry=registry or CollectorRegistry(), policy=policy)
        links.append(link)
        return link

    yield make
    for link in links:
        await link.close()
