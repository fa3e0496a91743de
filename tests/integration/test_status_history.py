"""``/status`` after real traffic through a gateway on the sandbox: the 15-minute history,
errors split by who made them, the token's fetches, the EXACT breaker's changes and the
practices failing now, and nothing secret in any of it."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.sandbox import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from tests.fakes import (
    SandboxFactory,
    SandboxGatewayFactory,
    admin_url,
    control,
    proxy_url,
    wait_until,
)

OUTAGE = [f"UKREL{i}" for i in range(25)]


async def status_of(client: aiohttp.ClientSession, gateway: Any) -> dict[str, Any]:
    async with client.get(admin_url(gateway, "/status")) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        document: dict[str, Any] = await resp.json()
        return document


async def fetch(client: aiohttp.ClientSession, gateway: Any, practice: str) -> int:
    async with client.get(proxy_url(gateway, f"/v1/Practices/{practice}/details")) as resp:
        await resp.read()
        return resp.status


async def test_status_carries_the_history_after_traffic(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """200s, EXACT's 503s, the gateway's circuit_open 503s and an EXACT-wide outage all show
    up in /status: counts by maker in the current bucket and the window, latency, the token's
    first fetch, the partner-wide breaker opened for 'correlated' and closed again, the
    offline practice listed as failing; no secret, client id or token anywhere."""
    sandbox = await make_sandbox()
    for practice in OUTAGE:
        await control(sandbox, "PUT", f"/practices/{practice}", {"behaviour": "offline"})
    gateway = await start_on_sandbox(
        sandbox,
        retry_max_attempts=1,
        upstream_breaker_practices=20,
        upstream_breaker_open_seconds=0.3,
        breaker_open_seconds=60.0,
    )
    async with aiohttp.ClientSession() as client:
        await asyncio.wait_for(gateway.tokens.ready_event.wait(), 10)
        for _ in range(3):
            for practice in OUTAGE:
                await fetch(client, gateway, practice)

        async def breaker_recovered() -> bool:
            # Healthy traffic probes the partner-wide breaker closed after its short open time.
            await fetch(client, gateway, "UKTEST1")
            events = (await status_of(client, gateway))["breakers"]["upstream"]["events"]
            return bool(events) and events[0]["state"] == "closed"

        await wait_until(breaker_recovered, 10)
        statuses = [await fetch(client, gateway, "UKTEST1") for _ in range(20)]

        async def practice_open() -> bool:
            statuses.append(await fetch(client, gateway, "UKOFFLINE1"))
            return bool((await status_of(client, gateway))["breakers"]["practices"])

        await wait_until(practice_open, 10)
        statuses.append(await fetch(client, gateway, "UKOFFLINE1"))  # circuit_open now
        async with client.get(admin_url(gateway, "/status")) as resp:
            text = await resp.text()
        document = await status_of(client, gateway)

    for secret in (DEMO_CLIENT_SECRET, DEMO_CLIENT_ID, "eyJ", "Bearer"):
        assert secret not in text
    traffic = document["traffic"]
    window = traffic["window"]
    assert len(traffic["series"]["requests"]) == traffic["buckets"] == 90
    assert sum(v or 0 for v in traffic["series"]["requests"]) == window["requests"]
    assert window["requests"] >= len(statuses) + 3 * len(OUTAGE)
    assert window["exact_errors"] >= 1  # the offline practices' own 503s, passed through
    # upstream_circuit_open for the outage, circuit_open for the offline practice
    assert window["gateway_errors"] >= 2
    assert statuses.count(200) >= 20
    assert 0 < window["p50_ms"] <= window["p99_ms"]
    assert traffic["start_unix"] < traffic["running_since_unix"] <= traffic["now_unix"]

    upstream = document["breakers"]["upstream"]
    assert [e["state"] for e in upstream["events"]][-2:] == ["half_open", "open"]
    assert upstream["events"][-1]["cause"] == "correlated"
    assert upstream["events"][-1]["open_for_seconds"] > 0
    assert upstream["events"][0]["state"] == "closed"
    assert upstream["events"][0]["cause"] is None
    assert [p["practice_id"] for p in document["breakers"]["practices"]] == ["UKOFFLINE1"]
    assert document["breakers"]["practices"][0]["state"] == "open"

    token = document["token"]
    assert token["usable"] is True
    assert token["expires_in_seconds"] > 0
    assert token["events"][-1]["result"] == "success"
    assert token["events"][-1]["lifetime_seconds"] > 0
    assert "client_id" not in token
