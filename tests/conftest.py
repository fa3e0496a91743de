"""Shared fixtures: a scripted upstream over a real socket, and gateways started against it.

The scripted upstream plays both EXACT's identity server (``/connect/token``) and its API: it
records every request exactly as it arrived and answers with whatever the test scripts. It is
a fake built from a real aiohttp server, never a mock of our own code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest

from gateway.app import Gateway
from gateway.sandbox import (
    DEMO_CLIENT_SECRET,
    LIMITED_CLIENT_SECRET,
    SandboxConfig,
    build_sandbox_app,
)
from gateway.sandbox_mode import with_sandbox_defaults
from gateway.settings import Settings, load_settings
from gateway.tokens import TokenPolicy
from tests.audit import AUDIT

CLIENT_ID = "test-client"
# A fake secret, distinctive so that log and metric searches can look for it.
CLIENT_SECRET = "s3cr3t-test-value-9f2c"


def pytest_configure(config: pytest.Config) -> None:
    AUDIT.secrets.update({CLIENT_SECRET, DEMO_CLIENT_SECRET, LIMITED_CLIENT_SECRET})
    logging.getLogger().addHandler(AUDIT.handler())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any log line or metric of any gateway held a secret or a token."""
    leaks = AUDIT.leaks()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"leak audit: {len(AUDIT.log_lines)} log lines and {len(AUDIT.expositions)} metric"
            f" expositions searched for {len(AUDIT.secrets)} secrets and"
            f" {len(AUDIT.tokens)} issued tokens, any JWT, record id or query string:"
            f" {len(leaks)} found"
        )
        for leak in leaks[:20]:
            reporter.write_line(f"  LEAK {leak}")
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never see the developer's EXACT_GATEWAY_* variables or a stray .env file."""
    for name in list(os.environ):
        if name.startswith("EXACT_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


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

    async def start(settings: Settings, token_policy: TokenPolicy | None = None) -> Gateway:
        gateway = await Gateway.start(
            settings, registry=CollectorRegistry(), token_policy=token_policy
        )
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.proxy_port and not gateway.draining:
            await gateway.shutdown()
        AUDIT.expositions.append(generate_latest(gateway.metrics.registry).decode())


@pytest.fixture
async def gateway(upstream: ScriptedUpstream, start_gateway: GatewayFactory) -> Gateway:
    return await start_gateway(gateway_settings(upstream.url))


def proxy_url(gateway: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gateway.proxy_port}{path}"


def admin_url(gateway: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gateway.admin_port}{path}"


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


@pytest.fixture
async def sandbox() -> AsyncIterator[TestServer]:
    """The EXACT simulator on a real loopback socket."""
    server = TestServer(build_sandbox_app(SandboxConfig()))
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def sandbox_gateway(sandbox: TestServer, start_on_sandbox: SandboxGatewayFactory) -> Gateway:
    """A gateway in front of the sandbox, with the sandbox's demo credentials."""
    return await start_on_sandbox(
        sandbox, retry_backoff_base_seconds=0.01, retry_backoff_max_seconds=0.05
    )


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


@pytest.fixture
async def make_sandbox() -> AsyncIterator[SandboxFactory]:
    servers: list[TestServer] = []

    async def make(**config: Any) -> TestServer:
        server = TestServer(build_sandbox_app(SandboxConfig(**config)))
        await server.start_server()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def start_on_sandbox(start_gateway: GatewayFactory) -> SandboxGatewayFactory:
    """Start gateways in front of a sandbox, with a fast token policy unless told otherwise."""

    async def start(
        sandbox: TestServer, policy: TokenPolicy = FAST_TOKENS, **overrides: Any
    ) -> Gateway:
        settings = load_settings(
            environment="sandbox",
            api_url=str(sandbox.make_url("")).rstrip("/"),
            host="127.0.0.1",
            port=0,
            admin_host="127.0.0.1",
            admin_port=0,
            shutdown_grace_seconds=0,
            **overrides,
        )
        return await start_gateway(with_sandbox_defaults(settings), policy)

    return start


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
