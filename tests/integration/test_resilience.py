"""Resilience over real sockets, faults injected through the sandbox's control endpoint."""

from __future__ import annotations

import asyncio
import itertools
import socket
import statistics
import time
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from tests.fakes import (
    GatewayFactory,
    SandboxFactory,
    SandboxGatewayFactory,
    ScriptedUpstream,
    admin_json,
    control,
    gateway_settings,
    proxy_url,
    wait_until,
)

# Small numbers so the policy plays out in seconds; the shape is the defaults' shape.
FAST = {
    "retry_backoff_base_seconds": 0.2,
    "retry_backoff_max_seconds": 1.0,
    "breaker_open_seconds": 1.0,
    "breaker_open_jitter": 0.0,
    # These tests pin the caller probe: what a gateway without practice.get still does
    # (the synthetic probes are tested in tests/integration/test_practices.py).
    "synthetic_probes": False,
}


async def get(
    client: aiohttp.ClientSession, gateway: Gateway, path: str, **kw: Any
) -> tuple[int, dict[str, str], Any]:
    async with client.get(proxy_url(gateway, path), **kw) as resp:
        text = await resp.text()
        body: Any = text
        if resp.content_type.endswith("json"):
            body = await resp.json(content_type=None)
        return resp.status, dict(resp.headers), body


async def attempts_at(sandbox: TestServer, practice: str) -> list[dict[str, Any]]:
    log = await control(sandbox, "GET", f"/practices/{practice}/requests")
    return [entry for entry in log["requests"] if entry["relayed"]]


async def probe_due(gateway: Gateway) -> bool:
    """Every open practice breaker is due for its probe (its open time has passed)."""
    entries = (await breakers(gateway))["practices"]
    return bool(entries) and all(e["next_probe_in_seconds"] == 0 for e in entries)


async def breakers(gateway: Gateway) -> dict[str, Any]:
    result: dict[str, Any] = await admin_json(gateway, "/breakers")
    return result


async def test_offline_practice_retries_then_breaker_opens_then_one_probe(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """GET to an offline practice: 3 attempts with backoff, the upstream 503; the breaker
    opens during the second request; then circuit_open with no upstream call; after the open
    time exactly one probe reaches the practice."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox, **FAST)
    path = "/v1/Practices/UKOFFLINE1/details"
    async with aiohttp.ClientSession() as client:
        status, headers, body = await get(client, gateway, path)
        assert status == 503
        assert "X-Gateway-Error" not in headers  # EXACT's own 503, passed through
        first = await attempts_at(sandbox, "UKOFFLINE1")
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(first)]
        print(f"attempts: {len(first)}, waits between them (s): {[round(g, 3) for g in gaps]}")
        assert len(first) == 3
        assert gaps[0] <= 0.2 + 0.1  # full jitter under base
        assert gaps[1] <= 0.4 + 0.1  # ... and under 2 x base

        # Attempts 4 and 5 make five failures in a row and open the breaker: no third
        # attempt. This caller tried, so it hears its own outcome (EXACT's 503), not the
        # breaker's; callers after it are refused without trying and hear circuit_open.
        status, headers, body = await get(client, gateway, path)
        assert status == 503
        assert "X-Gateway-Error" not in headers
        assert len(await attempts_at(sandbox, "UKOFFLINE1")) == 5
        status, headers, body = await get(client, gateway, path)
        assert headers["X-Gateway-Error"] == "circuit_open"
        assert body["practice_id"] == "UKOFFLINE1"
        assert 1 <= int(headers["Retry-After"]) <= 1

        timings = []
        for _ in range(50):
            started = time.perf_counter()
            status, headers, body = await get(client, gateway, path)
            timings.append((time.perf_counter() - started) * 1000)
            assert headers["X-Gateway-Error"] == "circuit_open"
        timings.sort()
        print(
            f"circuit_open answers: p50 {statistics.median(timings):.2f} ms,"
            f" max {timings[-1]:.2f} ms (50 requests, client-side, loopback)"
        )
        assert len(await attempts_at(sandbox, "UKOFFLINE1")) == 5
        state = await breakers(gateway)
        (entry,) = state["practices"]
        assert entry["practice_id"] == "UKOFFLINE1"
        assert entry["state"] == "open"

        await wait_until(lambda: probe_due(gateway), timeout=5)
        results = await asyncio.gather(*(get(client, gateway, path) for _ in range(20)))
        assert len(await attempts_at(sandbox, "UKOFFLINE1")) == 6  # exactly one probe
        # The probe failed and re-opened the breaker: its caller hears EXACT's 503, the
        # other 19 were refused without trying.
        reasons = [headers.get("X-Gateway-Error") for _, headers, _ in results]
        assert reasons.count("circuit_open") == 19
        assert reasons.count(None) == 1


async def test_breaker_closes_when_the_practice_comes_back(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """The probe after recovery succeeds and the breaker closes; traffic flows again."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox, **FAST)
    path = "/v1/Practices/UKTEST2/details"
    await control(sandbox, "PUT", "/practices/UKTEST2", {"behaviour": "offline"})
    async with aiohttp.ClientSession() as client:
        await get(client, gateway, path)
        await get(client, gateway, path)
        assert (await breakers(gateway))["counts"]["open"] == 1
        await control(sandbox, "PUT", "/practices/UKTEST2", {"behaviour": "healthy"})
        await wait_until(lambda: probe_due(gateway), timeout=5)
        status, _, _ = await get(client, gateway, path)
        assert status == 200
        assert (await breakers(gateway))["practices"] == []


async def test_post_without_idempotency_key_reaches_a_503_practice_once(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """POST …/Contact (an SMS) is never sent twice: without a key, a 503 is not retried;
    with an Idempotency-Key it is."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox, **FAST)
    path = "/v1/Practices/UKOFFLINE1/Patients/000005ff-1300-0000-0000-008034ec7256/Contact"
    message = {"type": "Sms", "subject": "", "body": "Your appointment is tomorrow"}
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy_url(gateway, path), json=message) as resp:
            assert resp.status == 503
        assert len(await attempts_at(sandbox, "UKOFFLINE1")) == 1
        async with client.post(
            proxy_url(gateway, path), json=message, headers={"Idempotency-Key": "k-1"}
        ) as resp:
            assert resp.status == 503
        assert len(await attempts_at(sandbox, "UKOFFLINE1")) == 1 + 3


async def test_502_is_returned_after_one_attempt_and_never_opens_the_breaker(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """502: the practice answered; passed through at once, no retry, breaker stays closed."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox, **FAST)
    async with aiohttp.ClientSession() as client:
        for _ in range(12):
            status, headers, body = await get(client, gateway, "/v1/Practices/UKERROR1/details")
            assert status == 502
            assert "X-Gateway-Error" not in headers
            assert "failed to handle" in body
    assert len(await attempts_at(sandbox, "UKERROR1")) == 12
    assert (await breakers(gateway))["practices"] == []


async def test_offline_practice_under_load_costs_a_healthy_one_nothing(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """200 concurrent callers keep calling an offline practice; a healthy practice sees zero
    errors. Latencies are printed, not asserted: everything here shares one event loop, so
    the latency figure comes from tests/benchmarks/bench_isolation.py instead."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox, **FAST)
    healthy = "/v1/Practices/UKTEST1/details"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def sample(n: int) -> list[float]:
            timings = []
            for _ in range(n):
                started = time.perf_counter()
                status, _, _ = await get(client, gateway, healthy)
                timings.append((time.perf_counter() - started) * 1000)
                assert status == 200
            return timings

        baseline = await sample(100)
        stop = asyncio.Event()
        hammered: list[str | None] = []

        async def hammer() -> None:
            while not stop.is_set():
                _, headers, _ = await get(client, gateway, "/v1/Practices/UKOFFLINE1/details")
                hammered.append(headers.get("X-Gateway-Error"))
                await asyncio.sleep(0.05)  # each caller about 20 requests/s

        callers = [asyncio.create_task(hammer()) for _ in range(200)]

        async def hammering() -> bool:
            return len(hammered) >= 200

        await wait_until(hammering, timeout=10)
        during = await sample(100)
        stop.set()
        await asyncio.gather(*callers)
    print(
        f"healthy practice p50: baseline {statistics.median(baseline):.2f} ms, with 200"
        f" callers on an offline practice {statistics.median(during):.2f} ms;"
        f" offline callers got {len(hammered)} answers:"
        f" {sorted({r or 'upstream' for r in hammered})}"
    )
    assert set(hammered) <= {None, "circuit_open", "practice_busy"}


async def test_exact_host_refusing_connections_opens_no_practice_breaker(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """EXACT unreachable: upstream_unreachable, then upstream_circuit_open; no practice
    breaker opens; when the host is back the gateway recovers by itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = await start_gateway(
        gateway_settings(
            f"http://127.0.0.1:{port}",
            token_url=f"{upstream.url}/connect/token",
            upstream_breaker_open_seconds=0.5,
            **FAST,
        )
    )
    practices = [f"UKP{i}" for i in range(12)]
    reasons = []
    async with aiohttp.ClientSession() as client:
        for practice in practices:
            _, headers, _ = await get(client, gateway, f"/v1/Practices/{practice}/details")
            reasons.append(headers["X-Gateway-Error"])
        state = await breakers(gateway)
        assert reasons[0] == "upstream_unreachable"
        assert "upstream_circuit_open" in reasons
        assert state["practices"] == []
        assert state["upstream"]["state"] == "open"

        async def ok(request: web.Request) -> web.StreamResponse:
            return web.json_response({"back": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:

            async def recovered() -> bool:
                status, _, _ = await get(client, gateway, "/v1/Practices/UKP1/details")
                return status == 200

            await wait_until(recovered, timeout=5)
            assert (await breakers(gateway))["upstream"]["state"] == "closed"
        finally:
            await runner.cleanup()


async def test_broad_outage_stays_within_the_retry_budget(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """Every practice answering 503: upstream attempts stay within requests + budget."""
    sandbox = await make_sandbox()
    practices = [f"UKDOWN{i}" for i in range(10)]
    for practice in practices:
        await control(sandbox, "PUT", f"/practices/{practice}", {"behaviour": "offline"})
    gateway = await start_on_sandbox(
        sandbox,
        retry_backoff_base_seconds=0.01,
        retry_backoff_max_seconds=0.02,
        breaker_consecutive_failures=1000,  # keep breakers out of it: the budget is tested
        breaker_min_calls=100000,
        upstream_breaker_practices=1000,
    )
    requests = 150
    async with aiohttp.ClientSession() as client:
        for i in range(requests):
            status, _, _ = await get(client, gateway, f"/v1/Practices/{practices[i % 10]}/details")
            assert status == 503
    total = sum([len(await attempts_at(sandbox, p)) for p in practices])
    print(
        f"broad outage: {requests} requests made {total} upstream attempts"
        f" (without a budget: {3 * requests})"
    )
    assert total <= requests + max(3, 0.2 * requests) + 1
    samples = gateway.metrics.registry.get_sample_value(
        "exact_gateway_retries_skipped_total", {"reason": "budget"}
    )
    assert samples is not None
    assert samples > 0


async def test_many_practices_failing_together_is_one_upstream_problem(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """EXACT's relay failing every practice: the partner-wide breaker opens (cause
    'correlated') and no practice breaker is left open."""
    sandbox = await make_sandbox()
    practices = [f"UKREL{i}" for i in range(25)]
    for practice in practices:
        await control(sandbox, "PUT", f"/practices/{practice}", {"behaviour": "offline"})
    gateway = await start_on_sandbox(
        sandbox, retry_max_attempts=1, upstream_breaker_practices=20, **FAST
    )
    reasons = []
    async with aiohttp.ClientSession() as client:
        for _ in range(6):
            for practice in practices:
                _, headers, _ = await get(client, gateway, f"/v1/Practices/{practice}/details")
                reasons.append(headers.get("X-Gateway-Error"))
    state = await breakers(gateway)
    assert state["upstream"]["state"] == "open"
    assert state["upstream"]["cause"] == "correlated"
    assert state["practices"] == []
    assert "upstream_circuit_open" in reasons
    assert "circuit_open" not in reasons


async def test_bulkhead_answers_practice_busy_quickly(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """More than 10 in flight for one practice: the rest get 503 practice_busy at once."""
    sandbox = await make_sandbox()
    await control(sandbox, "PUT", "/practices/UKSLOW1", {"latency_s": 0.5})
    gateway = await start_on_sandbox(sandbox, **FAST)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        results = await asyncio.gather(
            *(get(client, gateway, "/v1/Practices/UKSLOW1/details") for _ in range(25))
        )
    statuses = [status for status, _, _ in results]
    busy = [h for _, h, _ in results if h.get("X-Gateway-Error") == "practice_busy"]
    assert statuses.count(200) == 10
    assert len(busy) == 15
    assert all(h["Retry-After"] == "1" for h in busy)


async def test_caller_deadline_header(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """X-Gateway-Timeout shortens the deadline (504 deadline_exceeded); garbage is a 400."""
    sandbox = await make_sandbox()
    await control(sandbox, "PUT", "/practices/UKSLOW1", {"latency_s": 2.0})
    gateway = await start_on_sandbox(sandbox, **FAST)
    async with aiohttp.ClientSession() as client:
        started = time.perf_counter()
        status, headers, _ = await get(
            client, gateway, "/v1/Practices/UKSLOW1/details", headers={"X-Gateway-Timeout": "0.3"}
        )
        elapsed = time.perf_counter() - started
        assert status == 504
        assert headers["X-Gateway-Error"] == "deadline_exceeded"
        assert elapsed < 1.5
        status, headers, _ = await get(
            client, gateway, "/v1/Practices/UKTEST1/details", headers={"X-Gateway-Timeout": "-1"}
        )
        assert status == 400
    assert (await breakers(gateway))["practices"] == []  # the caller's hurry is not a failure


@pytest.mark.parametrize("hint", ["3", "http-date"])
async def test_retry_after_longer_than_the_deadline_fails_at_once(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory, hint: str
) -> None:
    """EXACT says 'come back in 3 s' but only 1 s is left: no wait, its 503 goes back now."""
    if hint == "http-date":
        hint = formatdate(time.time() + 3, usegmt=True)

    async def busy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="later", headers={"Retry-After": hint})

    upstream.handler = busy
    gateway = await start_gateway(gateway_settings(upstream.url, deadline_seconds=1, **FAST))
    async with aiohttp.ClientSession() as client:
        started = time.perf_counter()
        status, headers, body = await get(client, gateway, "/v1/Practices/UKTEST1/details")
        elapsed = time.perf_counter() - started
    assert status == 503
    assert body == "later"
    assert "Retry-After" in headers
    assert len(upstream.seen) == 1
    assert elapsed < 0.9
