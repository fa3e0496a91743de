"""The token lifecycle cannot stall: random histories of 401s, identity-server outages, slow
answers and recoveries, driven through the real background loop on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from gateway.credentials import TokenConfig
from gateway.errors import TokenEndpointError, TokenUnavailable
from gateway.metrics import build_metrics
from gateway.tokens import Grant, TokenPolicy, TokenSource
from tests.fakes import FakeClock, settle

CONFIG = TokenConfig(
    client_id="c",
    client_secret=None,
    client_secret_file=None,
    scopes=("practice.get",),
    authority_url="http://127.0.0.1:9",
    token_url="http://127.0.0.1:9/token",
    timeout=1,
)
MAX_LATENCY = 8.0
MAX_STEP = 5.0


@dataclass
class MoodyIdentity:
    """An identity server that is up or down and answers after a latency, on fake time."""

    clock: FakeClock
    lifetime: float = 3600.0
    up: bool = True
    latency: float = 0.0
    calls: list[float] = field(default_factory=list)
    config: TokenConfig = CONFIG

    @property
    def token_endpoint(self) -> str | None:
        return self.config.token_url

    async def request_token(self) -> Grant:
        self.calls.append(self.clock.now)
        if self.latency:
            await self.clock.sleep(self.latency)
        if not self.up:
            raise TokenEndpointError("unreachable", "identity server down")
        return Grant(f"token-{len(self.calls)}", self.lifetime)


def source_for(identity: MoodyIdentity, clock: FakeClock, seed: int) -> TokenSource:
    return TokenSource(
        identity,
        build_metrics("test", CollectorRegistry()),
        TokenPolicy(retry_base=1.0, retry_cap=60.0),
        clock=clock,
        rng=random.Random(seed),
    )


async def quietly(call: Awaitable[object]) -> None:
    with contextlib.suppress(TokenUnavailable):
        await call


@pytest.mark.parametrize("seed", range(40))
async def test_random_histories_always_recover_without_traffic(seed: int) -> None:
    """Whatever happened before, once the identity server has been up for longer than the
    backoff cap (plus one slow answer and one step), a usable token is held, except just
    after a 401 dropped it (then within one slow answer); and with no fetch in flight and no
    usable token, a next try is always scheduled."""
    rng = random.Random(seed)
    clock = FakeClock()
    identity = MoodyIdentity(clock, up=rng.random() < 0.5)
    source = source_for(identity, clock, seed)
    policy = source.policy
    loop = asyncio.create_task(source.run())
    tasks: set[asyncio.Task[None]] = set()
    up_since = clock.now if identity.up else None
    one_fetch = MAX_LATENCY + policy.min_fetch_interval + MAX_STEP + 1.0
    bound = policy.retry_cap + one_fetch
    last_401 = float("-inf")
    checked = 0
    try:
        for _ in range(1500):
            event = rng.random()
            if event < 0.03:
                identity.up = not identity.up
                up_since = clock.now if identity.up else None
            elif event < 0.06:
                identity.latency = rng.choice([0.0, 0.5, 2.0, MAX_LATENCY])
            elif event < 0.12 and source.has_usable_token():
                # EXACT answers 401 to the current token (revoked): the request path's call.
                current = await source.get()
                tasks.add(asyncio.create_task(quietly(source.replace(current))))
                last_401 = clock.now
            elif event < 0.15:
                tasks.add(asyncio.create_task(quietly(source.get(wait=30.0))))
            clock.advance(rng.choice([0.1, 0.5, 1.0, MAX_STEP]))
            await settle()
            assert source.schedule_invariant_holds(clock.now)
            up_for = clock.now - up_since if up_since is not None else 0.0
            if up_for > bound and clock.now - last_401 > one_fetch:
                checked += 1
                assert source.has_usable_token(), (
                    f"identity up for {up_for:.1f} s and still no token: {source.status()}"
                )
    finally:
        loop.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(loop, *tasks, return_exceptions=True)
    assert checked > 0  # the history did reach the state the property is about


async def test_a_failed_fetch_after_a_401_is_retried_without_any_traffic() -> None:
    """The first defect, exactly: a 401 drops an hour-long token, the fetch it triggers
    fails, the identity server recovers, nobody calls: a token is held within the cap."""
    clock = FakeClock()
    identity = MoodyIdentity(clock)
    source = source_for(identity, clock, 1)
    loop = asyncio.create_task(source.run())
    try:
        await settle()
        assert source.has_usable_token()
        clock.advance(60)
        await settle()
        identity.up = False
        with pytest.raises(TokenUnavailable):
            await source.replace(await source.get())
        identity.up = True
        waited = 0.0
        while not source.has_usable_token():
            clock.advance(0.5)
            waited += 0.5
            await settle()
            assert waited <= source.policy.retry_cap + 1
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_token_requests_are_rate_limited_and_tiny_lifetimes_floored() -> None:
    """``expires_in: 0.001`` for a simulated minute: at most three token requests (the 30 s
    floor refreshes at 80% of it), and /token says the lifetime was floored."""
    clock = FakeClock()
    identity = MoodyIdentity(clock, lifetime=0.001)
    source = source_for(identity, clock, 2)
    loop = asyncio.create_task(source.run())
    try:
        for _ in range(600):
            clock.advance(0.1)
            await settle()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert 1 <= len(identity.calls) <= 3, identity.calls
    assert source.status()["lifetime_floored"] is True


async def test_refused_fresh_tokens_back_off_to_a_handful_a_minute() -> None:
    """EXACT answers 401 to every token, every 0.2 s for a simulated minute: the 401
    refreshes back off (5, 10, 20, 40 s apart), so at most five token requests in all."""
    clock = FakeClock()
    identity = MoodyIdentity(clock)
    source = source_for(identity, clock, 3)
    loop = asyncio.create_task(source.run())
    tasks: list[asyncio.Task[None]] = []
    try:
        await settle()
        for _ in range(300):
            if source.has_usable_token():
                current = await source.get()
                tasks.append(asyncio.create_task(quietly(source.replace(current))))
            clock.advance(0.2)
            await settle()
    finally:
        loop.cancel()
        await asyncio.gather(loop, *tasks, return_exceptions=True)
    assert len(identity.calls) <= 5, identity.calls


async def test_token_requests_never_start_closer_than_the_minimum_interval() -> None:
    """Back-to-back failures and 401s: consecutive token requests start at least
    ``min_fetch_interval`` apart, whatever asked for them."""
    clock = FakeClock()
    identity = MoodyIdentity(clock, up=False)
    source = source_for(identity, clock, 4)
    loop = asyncio.create_task(source.run())
    tasks: list[asyncio.Task[None]] = []
    try:
        for step in range(400):
            if step % 3 == 0:
                tasks.append(asyncio.create_task(quietly(source.get(wait=5.0))))
            if step == 200:
                identity.up = True
            clock.advance(0.1)
            await settle()
    finally:
        loop.cancel()
        await asyncio.gather(loop, *tasks, return_exceptions=True)
    gaps = [b - a for a, b in zip(identity.calls, identity.calls[1:], strict=False)]
    assert gaps, identity.calls
    assert min(gaps) >= source.policy.min_fetch_interval - 1e-9
