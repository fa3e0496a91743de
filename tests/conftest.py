"""Shared fixtures: a scripted upstream over a real socket, and gateways started against it.

The scripted upstream plays both EXACT's identity server (``/connect/token``) and its API: it
records every request exactly as it arrived and answers with whatever the test scripts. It is
a fake built from a real aiohttp server, never a mock of our own code.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from gateway.app import Gateway
from gateway.settings import Settings, load_settings

CLIENT_ID = "test-client"
CLIENT_SECRET = "s3cr3t-test-value-9f2c"  # noqa: S105 - a fake secret the log tests search for


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Tests never see the developer's EXACT_GATEWAY_* variables or a stray .env file."""
    for name in list(os.environ):
        if name.startswith("EXACT_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


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
    record_bodies: bool = True
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.headers.get("Authorization") is None or form.get("grant_type") != (
            "client_credentials"
        ):
            return web.json_response({"error": "invalid_client"}, status=400)
        token = f"upstream-token-{next(self._counter)}"
        self.tokens_issued.append(token)
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
        app.router.add_route("*", "/{tail:.*}", self._api)
        return app


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    scripted = ScriptedUpstream()
    scripted.server = TestServer(scripted.app())
    await scripted.server.start_server()
    yield scripted
    await scripted.server.close()


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


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    """Start gateways on free loopback ports; each is drained and stopped after the test."""
    started: list[Gateway] = []

    async def start(settings: Settings) -> Gateway:
        gateway = Gateway(settings, registry=CollectorRegistry())
        await gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.proxy_port and not gateway.draining:
            await gateway.shutdown()


@pytest.fixture
async def gateway(upstream: ScriptedUpstream, start_gateway: GatewayFactory) -> Gateway:
    return await start_gateway(gateway_settings(upstream.url))


def proxy_url(gateway: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gateway.proxy_port}{path}"


def admin_url(gateway: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gateway.admin_port}{path}"
