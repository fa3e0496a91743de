"""The admin port over real sockets: health, readiness, token status and metrics."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.app import Gateway
from tests.fakes import (
    CLIENT_SECRET,
    GatewayFactory,
    ScriptedUpstream,
    admin_url,
    gateway_settings,
    proxy_url,
)


async def scrape(gateway: Gateway) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/metrics")) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_healthz(gateway: Gateway) -> None:
    """/healthz answers while the process and its loop are alive."""
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/healthz")) as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}


async def test_readyz_ready_once_a_token_is_held(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """/readyz turns 200 once the start-up token fetch has succeeded (one token request)."""
    await asyncio.wait_for(gateway.tokens.ready_event.wait(), 5)
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/readyz")) as resp:
            assert resp.status == 200
            assert await resp.json() == {"ready": True}
    assert len(upstream.tokens_issued) == 1


async def test_readyz_not_ready_without_token(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """Identity server unreachable: /readyz is 503 and says why."""
    gateway = await start_gateway(
        gateway_settings(upstream.url, token_url="http://127.0.0.1:9/connect/token")
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/readyz")) as resp:
            assert resp.status == 503
            body = await resp.json()
    assert body["ready"] is False
    assert "token" in body["reason"]


async def test_token_status_never_shows_token_or_secret(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """/token reports timings and counts, never the token or the secret."""
    async with aiohttp.ClientSession() as client:
        await (await client.get(proxy_url(gateway, "/v1/Subscriptions/active"))).read()
        async with client.get(admin_url(gateway, "/token")) as resp:
            text = await resp.text()
            status = await resp.json()
    assert status["usable"] is True
    assert status["refresh_count"] == 1
    assert 3500 < status["expires_in_seconds"] <= 3600
    assert upstream.tokens_issued[0] not in text
    assert CLIENT_SECRET not in text


async def test_metrics_count_what_callers_saw(gateway: Gateway, upstream: ScriptedUpstream) -> None:
    """requests_total and the duration histogram carry method, route template and status."""
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            await (
                await client.get(
                    proxy_url(gateway, "/v1/Practices/UKTEST1/Patients/abc-123?name=Smith")
                )
            ).read()
        refused_url = URL(proxy_url(gateway, "/v1/Practices/%2e%2e/x"), encoded=True)
        await (await client.get(refused_url)).read()
    samples = await scrape(gateway)
    route = "/v1/Practices/{practiceId}/Patients/{id}"
    key = (("method", "GET"), ("route", route), ("status_code", "200"))
    assert samples["exact_gateway_requests_total"][key] == 3
    assert samples["exact_gateway_request_duration_seconds_count"][key] == 3
    refused = (("method", "GET"), ("route", "other"), ("status_code", "400"))
    assert samples["exact_gateway_requests_total"][refused] == 1
    attempts = (("outcome", "200"), ("route", route))
    assert samples["exact_gateway_upstream_attempts_total"][attempts] == 3
    assert samples["exact_gateway_inflight_requests"][()] == 0
    (build,) = samples["exact_gateway_build_info"]
    assert dict(build)["environment"] == "qa"
    assert samples["exact_gateway_token_requests_total"][(("result", "success"),)] == 1
    assert samples["exact_gateway_token_expiry_timestamp_seconds"][()] > 0
    text = repr(samples)
    assert "abc-123" not in text
    assert "Smith" not in text
    assert "UKTEST1" not in text


async def test_scrape_after_mixed_traffic_counts_every_request_exactly(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """After 17 proxied answers, 5 refused targets and 3 refused methods, the per-request
    families (plain tallies read at scrape time) hold exactly those counts: counter, histogram
    count, +Inf bucket, attempts and rejections agree, and the buckets are cumulative."""
    route = "/v1/Practices/{practiceId}/details"
    async with aiohttp.ClientSession() as client:
        for _ in range(17):
            await (await client.get(proxy_url(gateway, "/v1/Practices/UKTEST1/details"))).read()
        for _ in range(5):
            refused = URL(proxy_url(gateway, "/v1/Practices/%2e%2e/details"), encoded=True)
            await (await client.get(refused)).read()
        for _ in range(3):
            await (await client.request("TRACE", proxy_url(gateway, "/v1/x"))).read()
    samples = await scrape(gateway)
    proxied = (("method", "GET"), ("route", route), ("status_code", "200"))
    bad_target = (("method", "GET"), ("route", "other"), ("status_code", "400"))
    bad_method = (("method", "other"), ("route", "other"), ("status_code", "405"))
    expected = {proxied: 17, bad_target: 5, bad_method: 3}
    assert samples["exact_gateway_requests_total"] == expected
    assert samples["exact_gateway_request_duration_seconds_count"] == expected
    for key, count in expected.items():
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for labels, value in samples["exact_gateway_request_duration_seconds_bucket"].items()
            if tuple(item for item in labels if item[0] != "le") == key
        )
        assert len(buckets) == 16
        assert buckets[-1] == (float("inf"), count)
        assert [value for _, value in buckets] == sorted(value for _, value in buckets)
        assert samples["exact_gateway_request_duration_seconds_sum"][key] > 0
    assert samples["exact_gateway_upstream_attempts_total"] == {
        (("outcome", "200"), ("route", route)): 17
    }
    assert samples["exact_gateway_upstream_attempt_duration_seconds_count"] == {
        (("route", route),): 17
    }
    assert samples["exact_gateway_rejected_requests_total"] == {
        (("reason", "bad_request"),): 5,
        (("reason", "method_not_allowed"),): 3,
    }
    assert len(samples["exact_gateway_rejected_requests_created"]) == 2


async def test_breakers_endpoint_and_breaker_metrics(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """/breakers lists the open practice breaker; metrics export it by practice, closed ones
    only as a count."""

    async def offline_for_one(request: web.Request) -> web.StreamResponse:
        if "UKDOWN" in request.path:
            return web.Response(status=503, text="unreachable")
        return web.json_response({})

    upstream.handler = offline_for_one
    gateway = await start_gateway(
        gateway_settings(upstream.url, retry_max_attempts=1, breaker_consecutive_failures=2)
    )
    async with aiohttp.ClientSession() as client:
        for practice in ("UKDOWN", "UKDOWN", "UKUP1", "UKUP2"):
            await (await client.get(proxy_url(gateway, f"/v1/Practices/{practice}/details"))).read()
        async with client.get(admin_url(gateway, "/breakers")) as resp:
            state = await resp.json()
    (entry,) = state["practices"]
    assert entry["practice_id"] == "UKDOWN"
    assert entry["state"] == "open"
    assert 0 < entry["next_probe_in_seconds"] <= 30
    assert state["counts"] == {"closed": 2, "open": 1, "half_open": 0}
    assert state["upstream"]["state"] == "closed"
    assert "practice_id" not in state["upstream"]
    samples = await scrape(gateway)
    assert samples["exact_gateway_circuit_breaker_state"] == {(("practice_id", "UKDOWN"),): 1}
    assert samples["exact_gateway_circuit_breakers"][(("state", "closed"),)] == 2
    assert samples["exact_gateway_upstream_circuit_breaker_state"][()] == 0
    opened = (("scope", "practice"), ("state", "open"))
    assert samples["exact_gateway_circuit_breaker_transitions_total"][opened] == 1
