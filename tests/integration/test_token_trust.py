"""Token trust and readiness over real sockets: the secret goes only where it should, only a
usable bearer token is accepted, and readiness neither stalls nor empties the Service."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from tests.fakes import (
    FAST_TOKENS,
    GatewayFactory,
    SandboxFactory,
    SandboxGatewayFactory,
    admin_json,
    admin_url,
    control,
    gateway_settings,
    is_ready,
    proxy_url,
    wait_until,
)

DETAILS = "/v1/Practices/UKTEST1/details"


@dataclass
class Peer:
    """A scripted identity server (or a foreign origin) that records every request."""

    discovery: Callable[[str], dict[str, Any]] = lambda url: {
        "issuer": url,
        "token_endpoint": f"{url}/connect/token",
    }
    token: Callable[[web.Request], web.StreamResponse] = lambda request: web.json_response(
        {"access_token": "good-token", "expires_in": 3600, "token_type": "Bearer"}
    )
    api: Callable[[web.Request], web.StreamResponse] = lambda request: web.json_response({})
    discovery_redirect: Callable[[web.Request], web.StreamResponse] | None = None
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, request.headers.get("Authorization")))
        if request.path == "/.well-known/openid-configuration":
            if self.discovery_redirect is not None:
                return self.discovery_redirect(request)
            return web.json_response(self.discovery(self.url))
        if request.path == "/connect/token":
            return self.token(request)
        return self.api(request)

    def token_requests(self) -> int:
        return sum(1 for _, path, _ in self.seen if path == "/connect/token")


@pytest.fixture
async def peers() -> AsyncIterator[Callable[[], Any]]:
    started: list[Peer] = []

    async def make() -> Peer:
        peer = Peer()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", peer._handle)
        peer.server = TestServer(app)
        await peer.server.start_server()
        started.append(peer)
        return peer

    yield make
    for peer in started:
        assert peer.server is not None
        await peer.server.close()


async def token_status(gateway: Gateway) -> dict[str, Any]:
    result: dict[str, Any] = await admin_json(gateway, "/token")
    return result


async def failed_with(gateway: Gateway, words: str) -> None:
    async def check() -> bool:
        error = (await token_status(gateway))["last_error"]
        return error is not None and words in error

    await wait_until(check, 10)


async def start_with_discovery(
    start_gateway: GatewayFactory, identity: Peer, **extra: Any
) -> Gateway:
    settings = gateway_settings(identity.url, authority_url=identity.url, token_url=None, **extra)
    return await start_gateway(settings, FAST_TOKENS)


async def get_status(gateway: Gateway, path: str = DETAILS) -> tuple[int, str | None, str | None]:
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, path)) as resp:
            await resp.read()
            return resp.status, resp.headers.get("X-Gateway-Error"), resp.headers.get("Retry-After")


async def test_discovery_naming_a_foreign_issuer_is_refused(
    peers: Callable[[], Any], start_gateway: GatewayFactory
) -> None:
    """A discovery document whose issuer is not the authority: no token request anywhere,
    a clear error in /token, callers get 503 token_unavailable (never a 500)."""
    identity: Peer = await peers()
    identity.discovery = lambda url: {
        "issuer": "https://login.evil.example",
        "token_endpoint": f"{url}/connect/token",
    }
    gateway = await start_with_discovery(start_gateway, identity)
    await failed_with(gateway, "issuer")
    assert identity.token_requests() == 0
    assert (await get_status(gateway))[:2] == (503, "token_unavailable")


async def test_discovery_naming_a_token_endpoint_on_another_origin_is_refused(
    peers: Callable[[], Any], start_gateway: GatewayFactory
) -> None:
    """The secret is never sent to a token endpoint on another origin than the authority."""
    identity: Peer = await peers()
    foreign: Peer = await peers()
    identity.discovery = lambda url: {
        "issuer": url,
        "token_endpoint": f"{foreign.url}/connect/token",
    }
    gateway = await start_with_discovery(start_gateway, identity)
    await failed_with(gateway, "another origin")
    assert foreign.seen == []
    assert identity.token_requests() == 0


async def test_a_token_endpoint_on_another_origin_is_used_when_named_explicitly(
    peers: Callable[[], Any], start_gateway: GatewayFactory
) -> None:
    """TOKEN_URL is the operator's explicit choice: it is used as configured."""
    identity: Peer = await peers()
    gateway = await start_gateway(
        gateway_settings(identity.url, token_url=f"{identity.url}/connect/token"), FAST_TOKENS
    )
    assert (await get_status(gateway))[0] == 200
    assert identity.token_requests() == 1


@pytest.mark.parametrize("where", ["discovery", "token"])
async def test_redirects_are_never_followed(
    peers: Callable[[], Any], start_gateway: GatewayFactory, where: str
) -> None:
    """A redirecting discovery document or token endpoint is refused; the target of the
    redirect never sees a request (so never the secret)."""
    identity: Peer = await peers()
    foreign: Peer = await peers()

    def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{foreign.url}{request.path}")

    if where == "token":
        identity.token = redirect
    else:
        identity.discovery_redirect = redirect
    gateway = await start_with_discovery(start_gateway, identity)
    await failed_with(gateway, "redirect")
    assert foreign.seen == []


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ({"access_token": "abc\r\nX-Injected: 1", "token_type": "Bearer"}, "not a valid bearer"),
        ({"access_token": "abc def", "token_type": "Bearer"}, "not a valid bearer"),
        ({"access_token": "x" * 9000, "token_type": "Bearer"}, "not a valid bearer"),
        ({"access_token": "abc", "token_type": "MAC"}, "token_type"),
        ({"access_token": "abc"}, "token_type"),
    ],
)
async def test_unusable_tokens_are_refused_at_the_identity_boundary(
    peers: Callable[[], Any], start_gateway: GatewayFactory, answer: dict[str, Any], words: str
) -> None:
    """A token a header cannot carry, or one that is not a bearer token, is refused once:
    /token says why, /readyz is not ready, callers get 503 token_unavailable, never 500,
    and EXACT never sees it."""
    identity: Peer = await peers()
    identity.token = lambda request: web.json_response({**answer, "expires_in": 3600})
    gateway = await start_with_discovery(start_gateway, identity)
    await failed_with(gateway, words)
    status, reason, retry_after = await get_status(gateway)
    assert (status, reason) == (503, "token_unavailable")
    assert retry_after is not None
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/readyz")) as resp:
            assert resp.status == 503
    assert [path for _, path, _ in identity.seen if path.startswith("/v1")] == []


async def test_a_tiny_lifetime_under_traffic_costs_a_handful_of_token_requests(
    peers: Callable[[], Any], start_gateway: GatewayFactory
) -> None:
    """``expires_in: 0.001`` and EXACT answering 401 to every token, under steady traffic
    for 3 s: at most two token requests (first round: about 118 a second)."""
    identity: Peer = await peers()
    identity.token = lambda request: web.json_response(
        {"access_token": f"t{time.monotonic_ns()}", "expires_in": 0.001, "token_type": "Bearer"}
    )
    identity.api = lambda request: web.Response(status=401)
    gateway = await start_gateway(
        gateway_settings(identity.url, token_url=f"{identity.url}/connect/token")
    )
    started = time.monotonic()
    async with aiohttp.ClientSession() as client:
        while time.monotonic() - started < 3:
            async with client.get(proxy_url(gateway, DETAILS)) as resp:
                assert resp.status in {401, 503}
    assert 1 <= identity.token_requests() <= 2
    assert (await token_status(gateway))["lifetime_floored"] is True


async def test_readiness_survives_an_identity_outage_longer_than_the_token(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """Once a first token was held, an identity outage outliving it leaves /readyz 200
    (the replica stays in its Service); callers get 503 token_unavailable with Retry-After;
    /token shows the outage."""
    sandbox = await make_sandbox(token_lifetime_s=2)
    gateway = await start_on_sandbox(sandbox)
    assert (await get_status(gateway))[0] == 200
    await control(sandbox, "PUT", "/identity", {"mode": "failing"})

    async def token_unusable() -> bool:
        return (await token_status(gateway))["usable"] is False

    await wait_until(token_unusable, 10)
    status, reason, retry_after = await get_status(gateway)
    assert (status, reason) == (503, "token_unavailable")
    assert retry_after is not None
    assert int(retry_after) >= 1
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/readyz")) as resp:
            assert resp.status == 200
        async with client.get(admin_url(gateway, "/status")) as resp:
            assert (await resp.json())["token"]["last_error"] is not None


async def test_the_old_readiness_rule_is_a_setting(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """READY_REQUIRES_USABLE_TOKEN=true: readiness follows the token as in the first round."""
    sandbox = await make_sandbox(token_lifetime_s=2)
    gateway = await start_on_sandbox(sandbox, ready_requires_usable_token=True)
    assert (await get_status(gateway))[0] == 200
    await control(sandbox, "PUT", "/identity", {"mode": "failing"})

    async def not_ready() -> bool:
        async with aiohttp.ClientSession() as client:
            async with client.get(admin_url(gateway, "/readyz")) as resp:
                return resp.status == 503 and "access token" in (await resp.json())["reason"]

    await wait_until(not_ready, 10)


async def test_a_failed_fetch_after_a_401_recovers_with_no_traffic(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """EXACT refuses the token, the fetch that triggers fails, the identity server comes
    back, nobody calls: /readyz (following the token) is 200 again within the backoff cap.
    In the first round the background loop slept until the old token's refresh time."""
    sandbox = await make_sandbox()  # hour-long tokens: their refresh is far away
    gateway = await start_on_sandbox(sandbox, ready_requires_usable_token=True)
    assert (await get_status(gateway))[0] == 200
    await control(sandbox, "PUT", "/identity", {"mode": "failing"})
    await control(sandbox, "POST", "/identity/revoke")
    status, reason, _ = await get_status(gateway)
    assert (status, reason) == (503, "token_unavailable")
    await control(sandbox, "PUT", "/identity", {"mode": "normal"})

    cap = FAST_TOKENS.retry_cap
    await wait_until(lambda: is_ready(gateway), cap + 5)
    assert (await get_status(gateway))[0] == 200
