"""Fault semantics over real sockets: never a duplicate side effect, never the wrong culprit,
and a caller always told what happened to its own request."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import aiohttp
from aiohttp import web

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

CONTACT = "/v1/Practices/UKTEST1/Patients/000005ff-1300-0000-0000-008034ec7256/Contact"
MESSAGE = {"type": "Sms", "subject": "", "body": "Your appointment is tomorrow"}
FAST = {
    "retry_backoff_base_seconds": 0.01,
    "retry_backoff_max_seconds": 0.05,
    "breaker_open_seconds": 1.0,
    "breaker_open_jitter": 0.0,
}


def posts(upstream: ScriptedUpstream) -> int:
    return sum(1 for seen in upstream.seen if seen.method == "POST")


async def post(
    client: aiohttp.ClientSession, gateway: Gateway, key: str | None, body: Any = MESSAGE
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    async with client.post(proxy_url(gateway, CONTACT), json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def breakers(gateway: Gateway) -> dict[str, Any]:
    result: dict[str, Any] = await admin_json(gateway, "/breakers")
    return result


# -- never a duplicate side effect ------------------------------------------------------------


async def test_a_keyed_post_that_got_a_504_reaches_the_practice_once(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """A keyed POST answered 504 (it may have been carried out) is never retried by the
    gateway; the caller's own retry with the same key gets the stored 504, replayed, and
    the practice sees one message in all."""

    async def timed_out(request: web.Request) -> web.StreamResponse:
        return web.Response(status=504, text="practice did not answer in time")

    upstream.handler = timed_out
    gateway = await start_gateway(gateway_settings(upstream.url, **FAST))
    async with aiohttp.ClientSession() as client:
        status, headers, body = await post(client, gateway, "sms-1")
        assert status == 504
        assert "Idempotent-Replayed" not in headers
        assert posts(upstream) == 1
        again, replay_headers, replay_body = await post(client, gateway, "sms-1")
    assert (again, replay_body) == (504, body)
    assert replay_headers["Idempotent-Replayed"] == "true"
    assert replay_headers["X-Request-ID"] != headers["X-Request-ID"]
    assert posts(upstream) == 1


async def test_a_duplicate_while_the_first_is_in_flight_gets_409(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """Same key while the first request is still at the practice: 409 at once; after it
    completes, the stored 202 is replayed; the practice got one message."""
    release = asyncio.Event()

    async def slow_accept(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=202)

    upstream.handler = slow_accept
    gateway = await start_gateway(gateway_settings(upstream.url, **FAST))
    async with aiohttp.ClientSession() as client:
        first = asyncio.create_task(post(client, gateway, "sms-2"))
        await wait_until(lambda: _true(posts(upstream) == 1), 5)
        status, headers, _ = await post(client, gateway, "sms-2")
        assert status == 409
        assert headers["X-Gateway-Error"] == "idempotency_key_in_use"
        release.set()
        assert (await first)[0] == 202
        status, headers, _ = await post(client, gateway, "sms-2")
    assert status == 202
    assert headers["Idempotent-Replayed"] == "true"
    assert posts(upstream) == 1


async def test_a_key_reused_for_another_request_gets_422(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """The same key with a different body is a client bug: 422, nothing sent."""
    gateway = await start_gateway(gateway_settings(upstream.url, **FAST))
    async with aiohttp.ClientSession() as client:
        assert (await post(client, gateway, "sms-3"))[0] == 200
        status, headers, _ = await post(client, gateway, "sms-3", {**MESSAGE, "body": "other"})
    assert status == 422
    assert headers["X-Gateway-Error"] == "idempotency_key_mismatch"
    assert posts(upstream) == 1


async def test_a_503_releases_the_key_because_nothing_reached_the_practice(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """EXACT's 503 means the practice was not reached: a keyed POST is retried by the
    gateway, and the caller's later retry with the same key is a new first attempt."""
    offline = True

    async def maybe_offline(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503 if offline else 202)

    upstream.handler = maybe_offline
    gateway = await start_gateway(gateway_settings(upstream.url, **FAST))
    async with aiohttp.ClientSession() as client:
        assert (await post(client, gateway, "sms-4"))[0] == 503
        assert posts(upstream) == 3  # the gateway's own retries: provably not delivered
        offline = False
        status, headers, _ = await post(client, gateway, "sms-4")
    assert status == 202
    assert "Idempotent-Replayed" not in headers
    assert posts(upstream) == 4


async def test_a_key_stripped_by_the_callers_connection_header_is_no_key(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """``Connection: Idempotency-Key`` strips the key on its way upstream, so the POST is
    not keyed: a 503 is not retried and nothing is remembered."""

    async def unreachable(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503)

    upstream.handler = unreachable
    gateway = await start_gateway(gateway_settings(upstream.url, **FAST))
    async with aiohttp.ClientSession() as client:
        headers = {"Idempotency-Key": "sms-5", "Connection": "Idempotency-Key"}
        async with client.post(proxy_url(gateway, CONTACT), json=MESSAGE, headers=headers) as r:
            assert r.status == 503
    assert posts(upstream) == 1
    assert upstream.seen[0].header("idempotency-key") is None


async def test_a_keyed_post_to_the_sandbox_sends_one_message(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """End to end with the sandbox: the same keyed POST three times, one message queued."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox, **FAST)
    before = (await control(sandbox, "GET", "/messages"))["total"]
    async with aiohttp.ClientSession() as client:
        answers = [await post(client, gateway, "sms-6") for _ in range(3)]
    assert [status for status, _, _ in answers] == [202, 202, 202]
    assert [h.get("Idempotent-Replayed") for _, h, _ in answers] == [None, "true", "true"]
    assert (await control(sandbox, "GET", "/messages"))["total"] == before + 1


async def test_a_keyed_post_the_practice_carried_out_behind_a_504_is_not_sent_again(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """End to end with the sandbox: the practice queues the SMS but the relay answers 504
    (behaviour ``late``). The gateway does not retry; the caller's own retry with the same
    key gets the stored 504, replayed; the sandbox's message log shows one message."""
    sandbox = await make_sandbox()
    await control(sandbox, "PUT", "/practices/UKTEST1", {"behaviour": "late"})
    gateway = await start_on_sandbox(sandbox, **FAST)
    before = (await control(sandbox, "GET", "/messages"))["total"]
    async with aiohttp.ClientSession() as client:
        first = await post(client, gateway, "sms-late")
        again = await post(client, gateway, "sms-late")
    assert first[0] == again[0] == 504
    assert "Idempotent-Replayed" not in first[1]
    assert again[1]["Idempotent-Replayed"] == "true"
    assert (await control(sandbox, "GET", "/messages"))["total"] == before + 1
    log = await control(sandbox, "GET", "/practices/UKTEST1/requests")
    assert log["attempts"] == 1


# -- the right culprit ----------------------------------------------------------------------


async def test_a_batch_over_offline_practices_never_cuts_off_healthy_ones(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """20 offline practices touched once each, among 100 healthy ones at steady traffic:
    the partner-wide breaker stays closed and every healthy caller gets 200."""
    sandbox = await make_sandbox()
    healthy = [f"UKOK{i}" for i in range(100)]
    offline = [f"UKSHUT{i}" for i in range(20)]
    for practice in healthy:
        await control(sandbox, "PUT", f"/practices/{practice}", {"behaviour": "healthy"})
    for practice in offline:
        await control(sandbox, "PUT", f"/practices/{practice}", {"behaviour": "offline"})
    gateway = await start_on_sandbox(sandbox, **FAST)
    rng = random.Random(5)
    healthy_statuses: list[int] = []
    async with aiohttp.ClientSession() as client:

        async def steady() -> None:
            for _ in range(300):
                practice = rng.choice(healthy)
                async with client.get(proxy_url(gateway, f"/v1/Practices/{practice}/details")) as r:
                    await r.read()
                    healthy_statuses.append(r.status)

        async def batch() -> None:
            for practice in offline:
                async with client.get(proxy_url(gateway, f"/v1/Practices/{practice}/details")) as r:
                    await r.read()

        await asyncio.gather(steady(), steady(), batch())
    state = await breakers(gateway)
    assert state["upstream"]["state"] == "closed"
    assert set(healthy_statuses) == {200}, {s: healthy_statuses.count(s) for s in healthy_statuses}


async def test_exacts_relay_failing_everyone_still_opens_the_partner_wide_breaker(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """The same 120 practices all failing (EXACT's relay down): it opens, cause correlated."""
    sandbox = await make_sandbox()
    practices = [f"UKALL{i}" for i in range(120)]
    for practice in practices:
        await control(sandbox, "PUT", f"/practices/{practice}", {"behaviour": "offline"})
    gateway = await start_on_sandbox(sandbox, retry_max_attempts=1, **FAST)
    async with aiohttp.ClientSession() as client:
        for practice in practices:
            async with client.get(proxy_url(gateway, f"/v1/Practices/{practice}/details")) as r:
                await r.read()
    state = await breakers(gateway)
    assert state["upstream"]["state"] == "open"
    assert state["upstream"]["cause"] == "correlated"


async def test_exacts_retry_after_keeps_the_practice_breaker_open_that_long(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """EXACT says Retry-After: 120 with its 503s: the breaker that opens waits at least
    that long before probing, not its own (jittered) second."""

    async def unreachable(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": "120"})

    upstream.handler = unreachable
    gateway = await start_gateway(
        gateway_settings(upstream.url, retry_max_attempts=1, retry_after_max_seconds=1, **FAST)
    )
    async with aiohttp.ClientSession() as client:
        for _ in range(5):
            async with client.get(proxy_url(gateway, "/v1/Practices/UKP1/details")) as r:
                await r.read()
    (entry,) = (await breakers(gateway))["practices"]
    assert entry["state"] == "open"
    assert entry["next_probe_in_seconds"] > 100


async def test_a_stalled_upload_is_the_callers_fault_not_the_practices(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """Five callers that stop sending their chunked bodies: each gets 408 request_timeout,
    the practice's breaker counts nothing, and its concurrency slots are free again."""
    gateway = await start_gateway(
        gateway_settings(upstream.url, attempt_timeout_seconds=0.5, practice_concurrency=5)
    )

    async def stalled_upload() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
        writer.write(
            b"POST /v1/Practices/UKSLOWCALLER/Patients/x/Contact HTTP/1.1\r\n"
            b"Host: gw\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
            b'\r\n5\r\n{"a":\r\n'
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
        return answer

    answers = await asyncio.gather(*(stalled_upload() for _ in range(5)))
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"request_timeout" in answer
    state = await breakers(gateway)
    assert state["practices"] == []
    breaker = gateway.resilience.breakers.get("UKSLOWCALLER")
    assert breaker.consecutive_failures == 0
    assert breaker.window_counts(gateway.resilience.clock.monotonic()) == (0, 0)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Practices/UKSLOWCALLER/details")) as r:
            assert r.status == 200


# -- the right reason -----------------------------------------------------------------------


async def test_a_failed_connection_is_reported_as_such_when_the_budget_refuses_a_retry(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """EXACT's host refuses connections and retries are at their budget: the caller hears
    upstream_unreachable (what happened to it), not retry_budget_exhausted."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = await start_gateway(
        gateway_settings(
            f"http://127.0.0.1:{port}",
            token_url=f"{upstream.url}/connect/token",
            retry_budget_ratio=0,
            retry_budget_min_retries=0,
            **FAST,
        )
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Practices/UKP1/details")) as r:
            body = await r.json()
            assert (r.status, r.headers["X-Gateway-Error"]) == (502, "upstream_unreachable")
    assert "budget" in body["detail"]


async def test_a_time_out_is_reported_as_such_when_the_budget_refuses_a_retry(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """A practice that never answers and no retry budget left: upstream_timeout (504)."""

    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response()

    upstream.handler = hang
    gateway = await start_gateway(
        gateway_settings(
            upstream.url,
            attempt_timeout_seconds=0.3,
            retry_budget_ratio=0,
            retry_budget_min_retries=0,
            **FAST,
        )
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Practices/UKP1/details")) as r:
            assert (r.status, r.headers["X-Gateway-Error"]) == (504, "upstream_timeout")


async def _true(value: bool) -> bool:
    return value


async def test_a_retry_refused_by_a_breaker_opened_meanwhile_returns_the_callers_own_answer(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """A waits to retry (EXACT said Retry-After: 1); meanwhile B's failure opens the breaker.
    A's retry is refused, and A hears its own first answer (EXACT's 503 and body), not the
    breaker's circuit_open: it did try."""

    async def unreachable(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="practice unreachable", headers={"Retry-After": "1"})

    upstream.handler = unreachable
    gateway = await start_gateway(
        gateway_settings(upstream.url, breaker_consecutive_failures=2, retry_max_attempts=3)
    )
    path = "/v1/Practices/UKP1/details"
    async with aiohttp.ClientSession() as client:

        async def call() -> tuple[int, str | None, str]:
            async with client.get(proxy_url(gateway, path)) as resp:
                return resp.status, resp.headers.get("X-Gateway-Error"), await resp.text()

        first = asyncio.create_task(call())
        await wait_until(lambda: _true(len(upstream.seen) == 1), 5)
        second = await call()
        assert second == (503, None, "practice unreachable")  # its attempt opened it
        assert await first == (503, None, "practice unreachable")
    assert len(upstream.seen) == 2


async def test_a_retry_refused_after_a_failed_connection_hears_the_connection_failure(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """Two requests fail to connect to EXACT's host at once; the second failure opens the
    partner-wide breaker, so the first one's retry is refused. Both tried: both hear
    upstream_unreachable (what happened to them), never upstream_circuit_open."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = await start_gateway(
        gateway_settings(
            f"http://127.0.0.1:{port}",
            token_url=f"{upstream.url}/connect/token",
            upstream_breaker_failures=2,
            **FAST,
        )
    )
    async with aiohttp.ClientSession() as client:

        async def call(practice: str) -> str | None:
            async with client.get(proxy_url(gateway, f"/v1/Practices/{practice}/details")) as r:
                return r.headers.get("X-Gateway-Error")

        reasons = await asyncio.gather(call("UKP1"), call("UKP2"))
    assert reasons == ["upstream_unreachable", "upstream_unreachable"]
    assert (await breakers(gateway))["upstream"]["state"] == "open"
