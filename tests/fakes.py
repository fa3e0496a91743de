"""Fakes shared by the tests and benchmarks: real things with a knob, never mocks.

- :class:`FakeClock`: the :class:`gateway.clock.Clock` the pure parts take, moved by hand.
- :class:`ScriptedUpstream`: a real aiohttp server standing in for EXACT's identity server
  and API; it records every request as it arrived and answers as the test scripts.
- :func:`spawn_gateway`: ``python -m gateway serve`` as a child process (a gateway in a
  process), with its ports read from its "listening" log line.
- helpers to build settings, address a gateway, drive the sandbox's control API and wait
  on a condition (never on a fixed sleep).

``tests/conftest.py`` holds only fixtures and hooks; everything else lives here, so tests,
fixtures and benchmarks import one module.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.settings import Settings, load_settings
from gateway.tokens import TokenPolicy
from tests.audit import AUDIT

CLIENT_ID = "test-client"
# A fake secret, distinctive so that log and metric searches can look for it.


CLIENT_SECRET = "s3cr3t-test-value-9f2c"


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


@dataclass
class ScriptedUpstream:
    """A real HTTP server standing in for EXACT; ``handler`` decides each API answer."""

    server: TestServer | None = None
    handler: Handler = _ok
    seen: list[Seen] = field(default_factory=list)
    tokens_issued: list[str] = field(default_factory=list)
    token_lifetime: int = 3600
    token_auth: list[str] = field(default_factory=list)  # Authorization headers received
    refuse_credentials: bool = False
    record_bodies: bool = True
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def _discovery(self, request: web.Request) -> web.Response:
        # A non-standard token path: the gateway must use whatever discovery names.
        return web.json_response(
            {"issuer": self.url, "token_endpoint": f"{self.url}/oauth2/v2.0/token"}
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.token_auth.append(request.headers.get("Authorization", ""))
        if (
            self.refuse_credentials
            or request.headers.get("Authorization") is None
            or form.get("grant_type") != "client_credentials"
        ):
            return web.json_response(
                {"error": "invalid_client", "error_description": "bad secret"}, status=400
            )
        token = f"upstream-token-{next(self._counter)}-{secrets.token_hex(6)}"
        self.tokens_issued.append(token)
        AUDIT.tokens.add(token)
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    async def _api(self, request: web.Request) -> web.StreamResponse:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = await request.read() if self.record_bodies else b""
        self.seen.append(Seen(request.method, request.raw_path, headers, body))
        return await self.handler(request)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/connect/token", self._token)
        app.router.add_post("/oauth2/v2.0/token", self._token)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_route("*", "/{tail:.*}", self._api)
        return app


def gateway_settings(api_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "qa",
        "api_url": api_url,
        "token_url": f"{api_url}/connect/token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": "practice.get appointment.list",
        "host": "127.0.0.1",
        "port": 0,
        "admin_host": "127.0.0.1",
        "admin_port": 0,
        "shutdown_grace_seconds": 0,
        "drain_seconds": 2,
    }
    values.update(overrides)
    return load_settings(**values)


GatewayFactory = Callable[..., Awaitable[Gateway]]


def proxy_url(gateway: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gateway.proxy_port}{path}"


def admin_url(gateway: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gateway.admin_port}{path}"


async def admin_json(gateway: Gateway, path: str) -> Any:
    """GET a JSON document from the gateway's admin port (``/breakers``, ``/token``...)."""
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, path)) as resp:
            return await resp.json()


async def is_ready(gateway: Gateway) -> bool:
    """Whether ``/readyz`` answers 200."""
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/readyz")) as resp:
            return resp.status == 200


@dataclass
class GatewayProcess:
    """``python -m gateway`` in a child process; ports are read from its 'listening' log line."""

    process: asyncio.subprocess.Process
    proxy_port: int
    admin_port: int
    log_lines: list[str]
    pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self, field_name: str = "VmRSS") -> int:
        """Resident memory (VmRSS) or its peak (VmHWM) from /proc, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
        raise AssertionError(f"{field_name} not in /proc/{self.pid}/status")

    async def _pump(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.log_lines.append(line)
            AUDIT.log_lines.append(line)

    async def wait(self, timeout: float = 30) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)


async def spawn_gateway(
    env: dict[str, str], *args: str, preexec_fn: Callable[[], None] | None = None
) -> GatewayProcess:
    """Start ``python -m gateway serve`` with ``env`` (EXACT_GATEWAY_* settings); ``preexec_fn``
    runs in the child before it starts (for example to lower its resource limits)."""
    full_env = {
        key: value for key, value in os.environ.items() if not key.startswith("EXACT_GATEWAY_")
    }
    full_env.update(
        {
            "EXACT_GATEWAY_PORT": "0",
            "EXACT_GATEWAY_ADMIN_PORT": "0",
            "EXACT_GATEWAY_ADMIN_HOST": "127.0.0.1",
        }
    )
    full_env.update(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        *args,
        env=full_env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    assert process.stderr is not None
    lines: list[str] = []
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        raw = await asyncio.wait_for(process.stderr.readline(), max(remaining, 0.1))
        if not raw:
            raise AssertionError("gateway exited before listening:\n" + "\n".join(lines))
        line = raw.decode(errors="replace").rstrip("\n")
        lines.append(line)
        AUDIT.log_lines.append(line)
        if '"event":"start"' in line:
            entry = json.loads(line)
            break
    child = GatewayProcess(
        process,
        int(entry["proxy"].rsplit(":", 1)[1]),
        int(entry["admin"].rsplit(":", 1)[1]),
        lines,
    )
    child.pump = asyncio.create_task(child._pump())
    return child


def process_env(upstream: ScriptedUpstream, **extra: str) -> dict[str, str]:
    env = {
        "EXACT_GATEWAY_ENVIRONMENT": "qa",
        "EXACT_GATEWAY_API_URL": upstream.url,
        "EXACT_GATEWAY_TOKEN_URL": f"{upstream.url}/connect/token",
        "EXACT_GATEWAY_CLIENT_ID": CLIENT_ID,
        "EXACT_GATEWAY_CLIENT_SECRET": CLIENT_SECRET,
        "EXACT_GATEWAY_SCOPES": "practice.get,appointment.list",
    }
    env.update({f"EXACT_GATEWAY_{key.upper()}": value for key, value in extra.items()})
    return env


FAST_TOKENS = TokenPolicy(
    retry_base=0.2,
    retry_cap=1.0,
    min_retry=0.1,
    secret_poll=0.1,
    min_fetch_interval=0.05,
    min_lifetime=1.0,
)


SandboxFactory = Callable[..., Awaitable[TestServer]]


SandboxGatewayFactory = Callable[..., Awaitable[Gateway]]


async def control(sandbox: TestServer, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as client:
        async with client.request(method, sandbox.make_url(f"/_sandbox{path}"), json=body) as r:
            assert r.status in {200, 201}, await r.text()
            return await r.json()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


# 2026-01-01T00:00:00Z: wall times in tests look like real ones.
WALL_EPOCH = 1767225600.0


@dataclass
class FakeClock:
    """A :class:`gateway.clock.Clock` that moves only when told, with a ``sleep`` that
    follows it.

    ``sleep(s)`` returns once :meth:`advance` has moved time past its end; until then it is
    an ordinary pending future, so cancelling it (as ``asyncio.wait`` does) is harmless.
    """

    now: float = 1000.0
    _sleepers: list[tuple[float, int, asyncio.Future[None]]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        """Wall time moves with the monotonic time, from a fixed epoch offset."""
        return WALL_EPOCH + self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), waiter))
        await waiter

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)

    @property
    def next_wake(self) -> float | None:
        """When the earliest pending sleeper wakes, if any."""
        pending = [at for at, _, waiter in self._sleepers if not waiter.done()]
        return min(pending) if pending else None


async def settle(turns: int = 10) -> None:
    """Let every task that can run do so (a few event-loop turns)."""
    for _ in range(turns):
        await asyncio.sleep(0)
