"""The caller edge on a real gateway process: descriptor limits, memory, signals.

Each test runs ``python -m gateway serve`` as a child process (see ``spawn_gateway``), the way
it runs in a pod, and attacks it from raw sockets.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal

import aiohttp
import pytest
from aiohttp import web

from tests.fakes import ScriptedUpstream, process_env, spawn_gateway, wait_until

MIB = 1024 * 1024
CHART_MEMORY_LIMIT_MIB = 256  # helm/exact-gateway values: resources.limits.memory


async def answers(url: str) -> int:
    async with aiohttp.ClientSession() as client:
        async with client.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            await resp.read()
            return resp.status


async def gauge(admin: str, name: str) -> float:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin}/metrics") as resp:
            text = await resp.text()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


@pytest.mark.slow
async def test_fd_limit_256_keeps_the_admin_port_and_the_log_quiet(
    upstream: ScriptedUpstream,
) -> None:
    """Under ulimit -n 256, 300 connections: /healthz answers, the log stays small (under
    1 MB, no error lines), and the proxy serves again once they close."""

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    child = await spawn_gateway(
        process_env(upstream, request_head_timeout_seconds="60"), preexec_fn=low_fd_limit
    )
    proxy = f"http://127.0.0.1:{child.proxy_port}"
    admin = f"http://127.0.0.1:{child.admin_port}"
    held: list[asyncio.StreamWriter] = []
    try:
        assert await answers(f"{proxy}/v1/Subscriptions/active") == 200
        for _ in range(300):
            _, writer = await asyncio.open_connection("127.0.0.1", child.proxy_port)
            held.append(writer)
        refused = await gauge(admin, "exact_gateway_caller_connections_refused_total")
        assert refused > 0  # the cap (lowered to fit 256 descriptors) was reached
        for _ in range(20):
            assert await answers(f"{admin}/healthz") == 200
            assert await answers(f"{admin}/readyz") == 200
        assert await answers(f"{proxy}/v1/Subscriptions/active") == 503  # gateway_busy
        for writer in held:
            writer.close()
        held.clear()

        async def recovered() -> bool:
            return await answers(f"{proxy}/v1/Subscriptions/active") == 200

        await wait_until(recovered, 20)
    finally:
        for writer in held:
            writer.close()
        child.process.send_signal(signal.SIGTERM)
        assert await child.wait() == 0
    log_bytes = sum(len(line) + 1 for line in child.log_lines)
    print(f"fd limit 256, 300 connections: {refused:.0f} refused, log {log_bytes} bytes")
    assert log_bytes < MIB
    levels = [json.loads(line)["level"] for line in child.log_lines if line.startswith("{")]
    assert "error" not in levels
    events = [json.loads(line).get("event") for line in child.log_lines if line.startswith("{")]
    assert "connection_limit_lowered" in events
    assert events.count("connection_limit") == 1


@pytest.mark.slow
async def test_500_hostile_heads_stay_under_the_chart_memory_limit(
    upstream: ScriptedUpstream,
) -> None:
    """500 connections each holding a head just under MAX_REQUEST_HEAD_BYTES (the most a
    head may hold), plus 500 trying to send 1 MB of headers: RSS stays under 256 MiB."""
    child = await spawn_gateway(process_env(upstream, request_head_timeout_seconds="120"))
    admin = f"http://127.0.0.1:{child.admin_port}"
    held: list[asyncio.StreamWriter] = []
    line = b"X-Filler: " + b"f" * 990 + b"\r\n"  # 1,002 bytes
    try:
        baseline = child.rss_kib()
        for _ in range(500):
            _, writer = await asyncio.open_connection("127.0.0.1", child.proxy_port)
            writer.write(b"GET /v1/Subscriptions/active HTTP/1.1\r\nHost: x\r\n")
            held.append(writer)
        for _ in range(31):  # 31 KiB each, sent line by line
            for writer in held:
                writer.write(line)
            await asyncio.gather(*(writer.drain() for writer in held))

        async def all_open() -> bool:
            return await gauge(admin, "exact_gateway_caller_connections") >= 500

        await wait_until(all_open, 30)

        async def megabyte_head() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", child.proxy_port)
            writer.write(b"GET /v1/Subscriptions/active HTTP/1.1\r\nHost: x\r\n")
            try:
                for _ in range(1000):
                    writer.write(line)
                    await writer.drain()
            except ConnectionError:
                pass
            status_line = await asyncio.wait_for(reader.readline(), 30)
            writer.close()
            return status_line

        refused = await asyncio.gather(*(megabyte_head() for _ in range(50)))
        assert all(b" 431 " in status for status in refused)
        rss_mib = child.rss_kib() / 1024
        peak_mib = child.rss_kib("VmHWM") / 1024
        assert await answers(f"http://127.0.0.1:{child.proxy_port}/v1/Subscriptions/active") == 200
    finally:
        for writer in held:
            writer.close()
        child.process.send_signal(signal.SIGTERM)
        await child.wait()
    print(
        f"500 held 31 KiB heads + 50 x 1 MB heads refused: RSS {baseline / 1024:.1f} MiB before,"
        f" {rss_mib:.1f} MiB with them, peak {peak_mib:.1f} MiB"
    )
    assert peak_mib < CHART_MEMORY_LIMIT_MIB


@pytest.mark.slow
async def test_sigterm_loses_no_keepalive_callers_request(upstream: ScriptedUpstream) -> None:
    """50 keep-alive callers posting in a loop during SIGTERM: every request sent gets its
    answer; each caller is told Connection: close, and only then finds the listener gone."""

    async def slowish(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.05)
        return web.json_response({"ok": True})

    upstream.handler = slowish
    child = await spawn_gateway(
        process_env(upstream, shutdown_grace_seconds="1", drain_seconds="10")
    )
    url = f"http://127.0.0.1:{child.proxy_port}/v1/Subscriptions/active"
    started = asyncio.Event()
    first_answers = 0
    outcomes: list[tuple[int, int, bool]] = []  # (answered, lost, told to close)

    async def caller() -> None:
        nonlocal first_answers
        answered = lost = 0
        told = False
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as client:
            while not told:
                try:
                    # POST: aiohttp never re-sends it by itself, so a loss would show.
                    async with client.post(url, data=b"{}") as resp:
                        assert resp.status == 200, resp.status
                        await resp.read()
                        answered += 1
                        told = resp.headers.get("Connection", "").lower() == "close"
                except aiohttp.ClientConnectorError:
                    break  # a new connection refused: the listener is closed, nothing was sent
                except aiohttp.ClientError:
                    lost += 1
                    break
                if answered == 1:
                    first_answers += 1
                    if first_answers == 50:
                        started.set()
        outcomes.append((answered, lost, told))

    callers = [asyncio.create_task(caller()) for _ in range(50)]
    await asyncio.wait_for(started.wait(), 30)
    child.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*callers), 60)
    assert await child.wait() == 0
    succeeded = [outcome for outcome in outcomes if outcome[1] == 0]
    print(f"SIGTERM with 50 keep-alive callers: {len(succeeded)} of 50 lost nothing")
    assert len(succeeded) == 50
    assert all(told for _, _, told in outcomes)


async def test_sighup_is_logged_and_ignored(upstream: ScriptedUpstream) -> None:
    """SIGHUP no longer kills the gateway: one log line, and it keeps serving."""
    child = await spawn_gateway(process_env(upstream))
    proxy = f"http://127.0.0.1:{child.proxy_port}/v1/Subscriptions/active"
    try:
        assert await answers(proxy) == 200
        child.process.send_signal(signal.SIGHUP)

        async def logged() -> bool:
            return any('"event":"sighup"' in line for line in child.log_lines)

        await wait_until(logged, 10)
        assert child.process.returncode is None
        assert await answers(proxy) == 200
    finally:
        child.process.send_signal(signal.SIGTERM)
    assert await child.wait() == 0
