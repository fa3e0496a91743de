"""Fixtures and run-wide hooks only; the fakes and helpers they use live in ``tests/fakes.py``."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
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
from tests.fakes import (
    CLIENT_SECRET,
    FAST_TOKENS,
    GatewayFactory,
    SandboxFactory,
    SandboxGatewayFactory,
    ScriptedUpstream,
    gateway_settings,
)


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
    """Tests never see the developer's EXACT_GATEWAY_* or OTEL_* variables (tracing stays
    off unless a test turns it on) or a stray .env file."""
    for name in list(os.environ):
        if name.startswith(("EXACT_GATEWAY_", "OTEL_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    scripted = ScriptedUpstream()
    scripted.server = TestServer(scripted.app())
    await scripted.server.start_server()
    yield scripted
    await scripted.server.close()


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
