"""The composition root over real sockets: a failed start leaves nothing behind, and every
place that reports requests in flight reads the same number."""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.app import Gateway
from tests.fakes import GatewayFactory, ScriptedUpstream, admin_url, gateway_settings, proxy_url


def open_sockets() -> int:
    return sum(
        1 for obj in gc.get_objects() if isinstance(obj, socket.socket) and obj.fileno() >= 0
    )


def client_sessions() -> list[aiohttp.ClientSession]:
    return [
        obj for obj in gc.get_objects() if isinstance(obj, aiohttp.ClientSession) and not obj.closed
    ]


async def test_a_failed_start_leaves_no_task_socket_or_session(upstream: ScriptedUpstream) -> None:
    """The proxy port is taken (it binds after the admin port): the start fails, and every
    socket, client session and task it had begun is gone again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gc.collect()
        sockets, sessions = open_sockets(), len(client_sessions())
        tasks = {t for t in asyncio.all_tasks() if not t.done()}
        settings = gateway_settings(upstream.url, admin_port=0, port=port)
        with pytest.raises(OSError, match="in use"):
            await Gateway.start(settings, registry=CollectorRegistry())
        await asyncio.sleep(0)
        gc.collect()
        assert open_sockets() == sockets
        assert len(client_sessions()) == sessions
        assert {t for t in asyncio.all_tasks() if not t.done()} <= tasks | {asyncio.current_task()}


async def test_a_start_that_fails_after_the_clients_are_open_closes_them(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure late in the start (the admin runner cannot set up) unwinds the sessions, the
    token task and both sockets that were already open."""
    gc.collect()
    sockets, sessions = open_sockets(), len(client_sessions())

    async def broken_setup(self: web.AppRunner) -> None:
        raise RuntimeError("admin runner could not start")

    monkeypatch.setattr(web.AppRunner, "setup", broken_setup)
    with pytest.raises(RuntimeError, match="admin runner"):
        await Gateway.start(gateway_settings(upstream.url), registry=CollectorRegistry())
    await asyncio.sleep(0)
    gc.collect()
    assert open_sockets() == sockets
    assert len(client_sessions()) == sessions
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "token-refresh"]


async def test_status_breakers_and_the_gauge_report_one_in_flight_number(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """Under load (12 requests held at EXACT), /status, /breakers and the
    inflight_requests gauge all say 12; afterwards all say 0."""
    release = asyncio.Event()
    arrived = 0

    async def held(request: web.Request) -> web.StreamResponse:
        nonlocal arrived
        arrived += 1
        await release.wait()
        return web.json_response({})

    upstream.handler = held
    gateway = await start_gateway(gateway_settings(upstream.url))

    async def numbers() -> tuple[Any, Any, Any]:
        async with aiohttp.ClientSession() as client:
            async with client.get(admin_url(gateway, "/status")) as resp:
                status = (await resp.json())["inflight"]
            async with client.get(admin_url(gateway, "/breakers")) as resp:
                breakers = (await resp.json())["inflight"]
        gauge = gateway.metrics.registry.get_sample_value("exact_gateway_inflight_requests")
        return status, breakers, gauge

    async with aiohttp.ClientSession() as client:

        async def call(i: int) -> int:
            async with client.get(proxy_url(gateway, f"/v1/Practices/UKP{i}/details")) as r:
                await r.read()
                return r.status

        calls = [asyncio.create_task(call(i)) for i in range(12)]
        while arrived < 12:
            await asyncio.sleep(0.01)
        assert await numbers() == (12, 12, 12.0)
        release.set()
        assert await asyncio.gather(*calls) == [200] * 12
    assert await numbers() == (0, 0, 0.0)
