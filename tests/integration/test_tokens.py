"""Token source over real sockets: discovery, refused credentials, secret file re-read."""

from __future__ import annotations

import base64

import aiohttp

from gateway.tokens import TokenPolicy
from tests.fakes import (
    CLIENT_ID,
    CLIENT_SECRET,
    GatewayFactory,
    ScriptedUpstream,
    admin_url,
    gateway_settings,
    proxy_url,
    wait_until,
)


def basic(secret: str) -> str:
    return "Basic " + base64.b64encode(f"{CLIENT_ID}:{secret}".encode()).decode()


async def test_token_endpoint_found_by_discovery(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """Without TOKEN_URL the endpoint comes from the authority's OpenID configuration."""
    gateway = await start_gateway(
        gateway_settings(upstream.url, token_url=None, authority_url=upstream.url)
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Subscriptions/active")) as resp:
            assert resp.status == 200
        async with client.get(admin_url(gateway, "/token")) as resp:
            status = await resp.json()
    assert status["token_endpoint"] == f"{upstream.url}/oauth2/v2.0/token"
    assert upstream.token_auth == [basic(CLIENT_SECRET)]
    assert upstream.seen[0].header("authorization") == f"Bearer {upstream.tokens_issued[0]}"


async def test_refused_credentials_are_reported_not_401(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """invalid_client: callers get 503 token_unavailable; /readyz and /token say why."""
    upstream.refuse_credentials = True
    gateway = await start_gateway(gateway_settings(upstream.url))
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Subscriptions/active")) as resp:
            assert resp.status == 503
            assert resp.headers["X-Gateway-Error"] == "token_unavailable"
            assert "refused" in (await resp.json(content_type=None))["detail"]
        async with client.get(admin_url(gateway, "/readyz")) as resp:
            assert resp.status == 503
            assert "invalid_client" in (await resp.json())["reason"]
        async with client.get(admin_url(gateway, "/token")) as resp:
            assert "invalid_client" in (await resp.json())["last_error"]
    assert upstream.seen == []


async def test_short_lived_token_is_replaced_before_expiry(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """A token inside its safety margin is not sent; a new one is fetched instead."""
    upstream.token_lifetime = 1  # usable for 0.9 s
    # The default floor would schedule a 1 s token as a 30 s one (tested on its own).
    policy = TokenPolicy(min_lifetime=1.0, min_fetch_interval=0.0)
    gateway = await start_gateway(gateway_settings(upstream.url), policy)
    async with aiohttp.ClientSession() as client:
        await (await client.get(proxy_url(gateway, "/v1/Subscriptions/active"))).read()
        first = upstream.seen[-1].header("authorization")

        async def first_unusable() -> bool:
            return not gateway.tokens.has_usable_token() or len(upstream.tokens_issued) >= 2

        await wait_until(first_unusable, timeout=5)
        await (await client.get(proxy_url(gateway, "/v1/Subscriptions/active"))).read()
        second = upstream.seen[-1].header("authorization")
    assert first != second
    assert len(upstream.tokens_issued) >= 2
