"""Token handling over real sockets against the sandbox's identity server and API."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.sandbox import DEMO_CLIENT_SECRET
from gateway.tokens import TokenPolicy
from tests.fakes import (
    FAST_TOKENS,
    GatewayFactory,
    SandboxFactory,
    SandboxGatewayFactory,
    ScriptedUpstream,
    admin_url,
    control,
    gateway_settings,
    is_ready,
    proxy_url,
    wait_until,
)

DETAILS = "/v1/Practices/UKTEST1/details"
FAST = FAST_TOKENS


async def token_requests(sandbox: TestServer) -> int:
    identity = await control(sandbox, "GET", "/identity")
    return int(identity["token_requests"]["total"])


async def ready(gateway: Gateway) -> bool:
    return await is_ready(gateway)


async def test_cold_start_1000_concurrent_requests_one_token_request(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """1,000 requests at once on a cold gateway: all answered, one token request in all."""
    sandbox = await make_sandbox()
    await control(sandbox, "PUT", "/identity", {"mode": "slow", "latency_s": 0.3})
    gateway = await start_on_sandbox(sandbox)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one() -> int:
            # Partner-wide: one practice would (rightly) cap this at 10 in flight.
            async with client.get(proxy_url(gateway, "/v1/Subscriptions/active")) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(1000)))
    assert statuses.count(200) == 1000
    assert await token_requests(sandbox) == 1


async def test_short_lived_tokens_never_reach_exact_expired(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """Steady traffic with 3 s tokens: every request 200 (no expired token seen by EXACT),
    and refreshes come at about 80% of the lifetime."""
    sandbox = await make_sandbox(token_lifetime_s=3)
    gateway = await start_on_sandbox(sandbox)
    statuses: list[int] = []
    started = time.monotonic()
    async with aiohttp.ClientSession() as client:
        while time.monotonic() - started < 7.5:
            async with client.get(proxy_url(gateway, DETAILS)) as resp:
                statuses.append(resp.status)
            await asyncio.sleep(0.02)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # 7.5 s / (0.8 x 3 s) = about 3 refreshes, plus the first token.
    assert 3 <= await token_requests(sandbox) <= 5


async def test_revoked_token_costs_callers_nothing(
    make_sandbox: SandboxFactory,
    start_on_sandbox: SandboxGatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Revocation mid-traffic: one refresh, every request replayed to success."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox)
    statuses: list[int] = []
    async with aiohttp.ClientSession() as client:

        async def caller() -> None:
            for _ in range(40):
                async with client.get(proxy_url(gateway, DETAILS)) as resp:
                    statuses.append(resp.status)
                await asyncio.sleep(0.01)

        callers = [asyncio.create_task(caller()) for _ in range(10)]

        async def under_way() -> bool:
            return len(statuses) >= 20

        await wait_until(under_way, timeout=5)
        await control(sandbox, "POST", "/identity/revoke")
        await asyncio.gather(*callers)
    assert statuses.count(200) == len(statuses) == 400
    assert await token_requests(sandbox) == 2
    rejected = [
        r for r in caplog.records if getattr(r, "fields", {}).get("event") == "token_rejected"
    ]
    assert len(rejected) == 1


async def test_identity_down_from_start_then_recovers(
    make_sandbox: SandboxFactory,
    start_on_sandbox: SandboxGatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Identity server failing: 503 token_unavailable with Retry-After, retries back off;
    when it recovers the gateway does too, without a restart."""
    sandbox = await make_sandbox()
    await control(sandbox, "PUT", "/identity", {"mode": "failing"})
    gateway = await start_on_sandbox(sandbox)

    async def backed_off_a_few_times() -> bool:
        return int(gateway.tokens.status()["consecutive_failures"]) >= 3

    await wait_until(backed_off_a_few_times, timeout=10)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, DETAILS)) as resp:
            assert resp.status == 503
            assert resp.headers["X-Gateway-Error"] == "token_unavailable"
            assert int(resp.headers["Retry-After"]) >= 1
            problem = await resp.json(content_type=None)
    assert problem["reason"] == "token_unavailable"
    assert not await ready(gateway)
    failures = [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "fields", {}).get("event") == "token_failed"
    ]
    schedule = [f["retry_in"] for f in failures]
    print(f"token retry schedule (s): {schedule}")
    for f in failures:
        assert f["retry_in"] <= FAST.retry_ceiling(f["consecutive_failures"], False) + 1e-6
    # Waits grow to a 1 s cap: three failures cost three requests, not a tight loop.
    attempts = await token_requests(sandbox)
    assert 3 <= attempts <= 5
    await control(sandbox, "PUT", "/identity", {"mode": "normal"})
    await wait_until(lambda: ready(gateway), timeout=3)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, DETAILS)) as resp:
            assert resp.status == 200


async def test_rotated_secret_file_is_used_without_restart(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory, tmp_path: Path
) -> None:
    """Wrong secret in the mounted file: refused; the file is replaced: the gateway recovers."""
    sandbox = await make_sandbox()
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("an-old-secret")
    gateway = await start_on_sandbox(sandbox, client_secret_file=str(secret_file))

    async def refused() -> bool:
        return bool(gateway.tokens.status()["credentials_refused"])

    await wait_until(refused, timeout=5)
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/readyz")) as resp:
            assert resp.status == 503
            assert "invalid_client" in (await resp.json())["reason"]
    rotated = tmp_path / "client-secret.new"
    rotated.write_text(DEMO_CLIENT_SECRET + "\n")
    rotated.replace(secret_file)
    await wait_until(lambda: ready(gateway), timeout=3)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, DETAILS)) as resp:
            assert resp.status == 200


async def test_refused_credentials_are_not_retried_in_a_tight_loop(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """invalid_client: one token request, then a long wait (the default 30 s base)."""
    sandbox = await make_sandbox()
    await control(sandbox, "PUT", "/identity", {"mode": "refusing"})
    gateway = await start_on_sandbox(sandbox, policy=TokenPolicy())

    async def refused() -> bool:
        return bool(gateway.tokens.status()["credentials_refused"])

    await wait_until(refused, timeout=5)
    async with aiohttp.ClientSession() as client:
        for _ in range(20):
            async with client.get(proxy_url(gateway, DETAILS)) as resp:
                assert resp.status == 503
        async with client.get(admin_url(gateway, "/token")) as resp:
            status = await resp.json()
    assert status["credentials_refused"] is True
    assert "invalid_client" in status["last_error"]
    assert await token_requests(sandbox) <= 2


async def scripted_401_for_first_token(upstream: ScriptedUpstream) -> None:
    """EXACT refuses the first token issued and accepts any later one."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") == f"Bearer {upstream.tokens_issued[0]}":
            return web.Response(status=401, text="token revoked")
        return web.json_response({"body": (await request.read()).decode()})

    upstream.handler = handler


async def test_401_replays_a_buffered_body_once(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """A POST with a small body: 401 on the old token, replayed once with the same body."""
    await scripted_401_for_first_token(upstream)
    gateway = await start_gateway(gateway_settings(upstream.url))
    async with aiohttp.ClientSession() as client:
        async with client.post(
            proxy_url(gateway, "/v1/Practices/UKTEST1/Patients/p/Contact"), data=b'{"x": 1}'
        ) as resp:
            assert resp.status == 200
            assert await resp.json() == {"body": '{"x": 1}'}
    assert [seen.body for seen in upstream.seen] == [b'{"x": 1}', b'{"x": 1}']
    assert len(upstream.tokens_issued) == 2


async def test_401_with_a_streamed_body_is_returned_and_the_token_replaced(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """A body too big to buffer cannot be replayed: the caller gets EXACT's 401 unchanged,
    and the next request goes out with a new token."""
    await scripted_401_for_first_token(upstream)
    gateway = await start_gateway(gateway_settings(upstream.url, replay_buffer_bytes=4))
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy_url(gateway, "/v1/x"), data=b"0123456789") as resp:
            assert resp.status == 401
            assert await resp.text() == "token revoked"
            assert "X-Gateway-Error" not in resp.headers
        async with client.post(proxy_url(gateway, "/v1/x"), data=b"0123456789") as resp:
            assert resp.status == 200
    assert len(upstream.seen) == 2
    assert len(upstream.tokens_issued) == 2


async def test_persistent_401_goes_back_unchanged_after_one_replay(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """EXACT refuses every token: one refresh, one replay, then its 401 reaches the caller."""

    async def always_401(request: web.Request) -> web.StreamResponse:
        return web.Response(status=401, text="nope", headers={"WWW-Authenticate": "Bearer"})

    upstream.handler = always_401
    gateway = await start_gateway(gateway_settings(upstream.url))
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, DETAILS)) as resp:
            assert resp.status == 401
            assert await resp.text() == "nope"
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        # Within the refresh interval, a fresh token's 401 stands: no refresh storm.
        for _ in range(5):
            async with client.get(proxy_url(gateway, DETAILS)) as resp:
                assert resp.status == 401
    assert len(upstream.seen) == 2 + 5
    assert len(upstream.tokens_issued) == 2
