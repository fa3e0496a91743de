"""The gateway as a real process: bounded memory while streaming, and graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
from aiohttp import web

from tests.fakes import CLIENT_SECRET, ScriptedUpstream, process_env, spawn_gateway, wait_until

MIB = 1024 * 1024


async def test_50_mb_response_streams_with_bounded_memory(upstream: ScriptedUpstream) -> None:
    """A 50 MB answer passes through whole while the gateway's peak memory grows < 20 MB."""
    chunk = bytes(range(256)) * 256  # 64 KiB, generated: the upstream holds no 50 MB either
    total = 50 * MIB

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = total
        await response.prepare(request)
        for _ in range(total // len(chunk)):
            await response.write(chunk)
        await response.write_eof()
        return response

    upstream.handler = big
    child = await spawn_gateway(process_env(upstream))
    try:
        base = f"http://127.0.0.1:{child.proxy_port}"
        async with aiohttp.ClientSession() as client:
            # Warm up (token, pools, imports) so the baseline is the steady state.
            async with client.get(f"{base}/v1/Subscriptions/active") as resp:
                await resp.read()
            upstream.handler = big
            before = child.rss_kib("VmRSS")
            received = 0
            async with client.get(f"{base}/v1/Practices/UKTEST1/Appointments") as resp:
                assert resp.status == 200
                async for piece in resp.content.iter_chunked(256 * 1024):
                    received += len(piece)
                    # A slow reader: the gateway must apply backpressure, not buffer.
                    await asyncio.sleep(0)
            peak = child.rss_kib("VmHWM")
        grown_mib = (peak - before) / 1024
        print(
            f"50 MB stream: RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB,"
            f" growth {grown_mib:.1f} MiB"
        )
        assert received == total
        assert grown_mib < 20
    finally:
        child.process.send_signal(signal.SIGTERM)
        await child.wait()


async def test_sigterm_drains_inflight_then_exits_zero(upstream: ScriptedUpstream) -> None:
    """SIGTERM: /readyz says draining at once, in-flight requests finish, exit code 0."""
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        started.set()
        await asyncio.sleep(1.5)
        return web.json_response({"slow": True})

    upstream.handler = slow
    child = await spawn_gateway(
        process_env(upstream, shutdown_grace_seconds="0.5", drain_seconds="10")
    )
    base = f"http://127.0.0.1:{child.proxy_port}"
    admin = f"http://127.0.0.1:{child.admin_port}"
    async with aiohttp.ClientSession() as client:
        inflight = asyncio.create_task(client.get(f"{base}/v1/Practices/UKSLOW1/details"))
        await asyncio.wait_for(started.wait(), 10)
        child.process.send_signal(signal.SIGTERM)

        async def draining() -> bool:
            async with client.get(f"{admin}/readyz") as resp:
                return resp.status == 503 and (await resp.json())["reason"] == "draining"

        await wait_until(draining, timeout=5)

        async def listener_closed() -> bool:
            # After the grace period new connections are refused.
            try:
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.get(f"{base}/v1/Subscriptions/active") as resp,
                ):
                    await resp.read()
            except aiohttp.ClientConnectionError:
                return True
            return False

        await wait_until(listener_closed, timeout=5)
        async with await inflight as resp:
            assert resp.status == 200
            assert await resp.json() == {"slow": True}
    assert await child.wait() == 0
    events = [json.loads(line).get("event") for line in child.log_lines if line.startswith("{")]
    assert "drain" in events
    assert "stop" in events
    assert not any(CLIENT_SECRET in line for line in child.log_lines)
